"""What a child and its pods say, in words a person understands (pure; no API calls).

``workload_state(child, pods)`` reads a Job, PyTorchJob or TrainJob and its pods:
Unschedulable (with the scheduler's message), ImagePullBackOff, CrashLoopBackOff, OOMKilled,
NCCL timeouts, bad data (exit code 3) and preemption, plus the worker's final report from the
rank-0 pod's termination message (docs/operator.md). ``deployment_state`` does the same for a
ChatDeployment's Deployment.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from devops_model.contract import EXIT_KILLED, FINAL_REASONS, ExitCode, Reason, State

from .naming import ROLE_LABEL

_NCCL_RE = re.compile(r"NCCL|c10d|collective operation", re.I)
_TIMEOUT_RE = re.compile(r"time ?out|timed out|timing out|Watchdog caught", re.I)


@dataclass
class ChildState:
    """One observation of a workload child."""

    phase: str  # Pending | Running | Succeeded | Failed
    reason: str
    message: str = ""
    #: Whether a restart (a new child resuming from the checkpoint) can help.
    retryable: bool = True
    #: Status fields the worker reported in its termination message.
    result: dict[str, Any] = field(default_factory=dict[str, Any])
    start_time: Optional[str] = None


def _true(conds: list[dict[str, Any]], type_: str) -> Optional[dict[str, Any]]:
    for c in conds or []:
        if c.get("type") == type_ and c.get("status") == "True":
            return c
    return None


def parse_termination_message(text: Optional[str]) -> tuple[dict[str, Any], str]:
    """(status fields, plain text). The runner writes ``{"status": {...}}``; anything else is the
    log tail the kubelet fell back to."""
    if not text:
        return {}, ""
    try:
        data = json.loads(text)
    except ValueError:
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        return {}, lines[-1][:1000] if lines else ""
    if isinstance(data, dict) and isinstance(data.get("status"), dict):
        status: dict[str, Any] = data["status"]
        return status, str(status.get("message") or "")
    return {}, text[:1000]


def _rank0(pods: list[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """The pod whose report counts: the master (our role label), else completion index 0, else the
    first one by name."""
    if not pods:
        return None
    for p in pods:
        if (p.get("metadata", {}).get("labels") or {}).get(ROLE_LABEL) == "master":
            return p
    for p in pods:
        if (p.get("metadata", {}).get("labels") or {}).get("batch.kubernetes.io/job-completion-index") == "0":
            return p
    return sorted(pods, key=lambda p: p["metadata"]["name"])[0]


def _terminated(pod: dict[str, Any]) -> Optional[dict[str, Any]]:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
        if term:
            return dict(term)
    return None


def pod_problem(pods: list[dict[str, Any]]) -> Optional[ChildState]:
    """The most telling problem among the pods, if any (worst first)."""
    found: list[tuple[int, ChildState]] = []
    for pod in pods:
        name = pod["metadata"]["name"]
        status = pod.get("status") or {}
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
                found.append((3, ChildState("Pending", Reason.UNSCHEDULABLE,
                                            f"pod {name} cannot be scheduled: {cond.get('message', '')}".strip())))
        if status.get("reason") in ("Evicted", "Preempting", "Preempted"):
            found.append((2, ChildState("Failed", Reason.PREEMPTED, f"pod {name}: {status.get('message') or status['reason']}")))
        # Init containers first in the pod's life (a vLLM/TGI pod's model check), so in its problems too.
        for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
            waiting = (cs.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            if reason in ("ImagePullBackOff", "ErrImagePull", "InvalidImageName"):
                found.append((4, ChildState("Pending", Reason.IMAGE_PULL_BACKOFF,
                                            f"pod {name} cannot pull image {cs.get('image', '')}: {waiting.get('message', reason)}")))
            elif reason == "CrashLoopBackOff":
                last = (cs.get("lastState") or {}).get("terminated") or {}
                fields, text = parse_termination_message(last.get("message"))
                why = "OOMKilled: raise resources.memory" if last.get("reason") == "OOMKilled" else (
                    fields.get("message") or text or f"exit code {last.get('exitCode')}")
                found.append((5, ChildState("Running", Reason.CRASH_LOOP_BACKOFF, f"pod {name} keeps crashing ({why})")))
            term = (cs.get("state") or {}).get("terminated")
            if term and term.get("exitCode", 0) != 0:
                found.append((6, classify_exit(name, term)))
    if not found:
        return None
    found.sort(key=lambda x: -x[0])
    return found[0][1]


def classify_exit(pod_name: str, term: dict[str, Any]) -> ChildState:
    """A failed container, in words: OOM, NCCL timeout, bad data, preempted, or the worker's reason."""
    code = term.get("exitCode")
    fields, text = parse_termination_message(term.get("message"))
    msg = fields.get("message") or text or f"exit code {code}"
    if term.get("reason") == "OOMKilled" or code == EXIT_KILLED and "OOM" in (term.get("message") or ""):
        return ChildState("Failed", Reason.OOM_KILLED,
                          f"pod {pod_name} ran out of memory (OOMKilled); raise spec.resources.memory or lower "
                          "spec.training.perDeviceBatchSize / maxLength", retryable=True, result=fields)
    if code == ExitCode.BAD_INPUT:
        return ChildState("Failed", fields.get("reason") or Reason.BAD_DATA, msg, retryable=False, result=fields)
    text_all = term.get("message") or ""
    if _NCCL_RE.search(text_all) and _TIMEOUT_RE.search(text_all):
        return ChildState("Failed", Reason.NCCL_TIMEOUT,
                          f"pod {pod_name}: NCCL collective timed out (a rank hung or the network failed): {msg}",
                          retryable=True, result=fields)
    if code in (ExitCode.PREEMPTED, EXIT_KILLED):
        return ChildState("Failed", Reason.PREEMPTED, f"pod {pod_name} was stopped (exit {code}); resuming from the checkpoint",
                          retryable=True, result=fields)
    return ChildState("Failed", fields.get("reason") or Reason.FAILED, f"pod {pod_name}: {msg}", retryable=True, result=fields)


def workload_state(child: Optional[dict[str, Any]], pods: list[dict[str, Any]]) -> ChildState:
    """Observation of a Job / PyTorchJob / TrainJob and its pods."""
    if child is None:
        return ChildState("Pending", Reason.PENDING, "the child does not exist yet")
    st = child.get("status") or {}
    conds = st.get("conditions") or []
    rank0 = _rank0(pods)
    result: dict[str, Any] = {}
    if rank0 is not None:
        term = _terminated(rank0)
        if term:
            result, _ = parse_termination_message(term.get("message"))
    if _true(conds, "Complete") or _true(conds, "Succeeded"):
        return ChildState("Succeeded", Reason.SUCCEEDED, "the workload finished", result=result,
                          start_time=st.get("startTime"))
    failed = _true(conds, "Failed")
    if failed:
        problem = pod_problem(pods)
        if problem is not None and problem.phase == "Failed":
            return problem
        if result.get("state") == State.FAILED:
            code_bad = result.get("reason") in FINAL_REASONS
            return ChildState("Failed", result.get("reason") or Reason.FAILED, result.get("message") or failed.get("message", ""),
                              retryable=not code_bad, result=result)
        bad = failed.get("reason") == "PodFailurePolicy"
        return ChildState("Failed", Reason.BAD_DATA if bad else (failed.get("reason") or Reason.FAILED),
                          failed.get("message") or "the workload failed", retryable=not bad, result=result)
    if _suspended(child):
        # Before the pods: Kueue suspends a job until its queue admits it, and suspends an admitted
        # one again when it is preempted, whose pods are then still being stopped.
        queue = ((child.get("metadata") or {}).get("labels") or {}).get("kueue.x-k8s.io/queue-name")
        stopping = f"; {len(pods)} pod(s) of the last admission stopping" if pods else ""
        return ChildState("Pending", Reason.QUEUED, f"queued by Kueue{f' in {queue}' if queue else ''}: "
                          f"the job starts when its queue admits it (kubectl get workloads){stopping}")
    problem = pod_problem(pods)
    if problem is not None and problem.phase == "Pending":
        return problem
    if problem is not None and problem.reason == Reason.CRASH_LOOP_BACKOFF:
        return problem
    running = any((p.get("status") or {}).get("phase") == "Running" for p in pods) or _true(conds, "Running") \
        or (st.get("active") or 0) > 0 and any((p.get("status") or {}).get("phase") == "Running" for p in pods)
    if running:
        return ChildState("Running", Reason.RUNNING, "the workload is running", start_time=st.get("startTime"))
    if pods:
        return ChildState("Pending", Reason.PENDING, f"waiting for {len(pods)} pod(s) to start")
    return ChildState("Pending", Reason.CHILD_CREATED, "waiting for the launcher to create pods")


def _suspended(child: dict[str, Any]) -> bool:
    """Job and TrainJob: spec.suspend; PyTorchJob: spec.runPolicy.suspend (Kueue sets it until
    admission); or the controller's ``Suspended`` condition (Job, TrainJob, PyTorchJob), should the
    spec have been read before the suspension."""
    spec = child.get("spec") or {}
    return bool(spec.get("suspend") or (spec.get("runPolicy") or {}).get("suspend")
                or _true((child.get("status") or {}).get("conditions") or [], "Suspended"))


@dataclass
class DeploymentState:
    ready: bool
    reason: str
    message: str
    replicas: int = 0
    ready_replicas: int = 0


def deployment_state(deploy: Optional[dict[str, Any]], pods: list[dict[str, Any]], want: int) -> DeploymentState:
    if deploy is None:
        return DeploymentState(False, Reason.DEPLOYING, "the Deployment does not exist yet")
    st = deploy.get("status") or {}
    ready = int(st.get("readyReplicas") or 0)
    updated = int(st.get("updatedReplicas") or 0)
    if want == 0:
        return DeploymentState(False, Reason.SCALED_TO_ZERO, "spec.replicas is 0", 0, 0)
    rolling = (deploy.get("metadata", {}).get("generation") or 0) > (st.get("observedGeneration") or 0) or updated < want
    if ready >= want and not rolling:
        return DeploymentState(True, Reason.AVAILABLE, f"{ready}/{want} replicas ready", want, ready)
    problem = pod_problem(pods)
    if ready > 0:
        why = f"; {problem.message}" if problem else ""
        return DeploymentState(True, Reason.DEGRADED if not rolling else Reason.PROGRESSING,
                               f"{ready}/{want} replicas ready" + (" (rolling out)" if rolling else "") + why, want, ready)
    if problem is not None:
        return DeploymentState(False, problem.reason, problem.message, want, 0)
    for c in st.get("conditions") or []:
        if c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded":
            return DeploymentState(False, Reason.PROGRESS_DEADLINE_EXCEEDED, c.get("message", ""), want, 0)
    return DeploymentState(False, Reason.DEPLOYING, f"0/{want} replicas ready (loading the model)", want, 0)
