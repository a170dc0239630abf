"""One reconcile pass of a run (PretrainRun, SFTRun, EvalRun, QuantizeRun): lineage, the child
(create-if-absent), the failure policy, and the status that follows from what the child says.

The run's outcome (artifact, scores, summary) is taken from the rank-0 pod's termination message
— written by the kubelet from the run's own container, which no other pod can forge — of a pod that
belongs to this attempt's child (checked through its owner references), never from a status patch.
"""

from __future__ import annotations

from typing import Any, Union, cast

from devops_model.api import API_VERSION, EvalRun, PretrainRun, QuantizeRun, SFTRun
from devops_model.api.common import FailurePolicy, duration_seconds
from devops_model.contract import KINDS_WITH_ARTIFACT, TERMINAL_STATES, Reason, State, outcome_fields
from devops_model.contract import ConditionType as T
from devops_model.lineage import ParentState, resolve_parent
from devops_model.scores import summary_line, with_deltas

from .. import conditions as C
from ..builders import SpecRefused, render_children
from ..config import OperatorConfig
from ..kubeapi import ChildRejected, KubeApi, Obj
from ..naming import ATTEMPT_LABEL, KIND_LABEL, RUN_LABEL, namespace_of
from ..status import ChildState, workload_state
from .common import KubeRunStore, Outcome, Pass, epoch, parse_or_fail, status_fields

#: The kinds this module reconciles.
RunResource = Union[PretrainRun, SFTRun, EvalRun, QuantizeRun]

#: Restarts for EvalRun and QuantizeRun, which have no spec.failurePolicy (a preempted exam or
#: quantization simply runs again; OOM or bad data does not).
SHORT_RUN_RESTARTS = 2

#: How long after an attempt's child was created its pods are looked at every requeueSeconds: the
#: scheduler's verdict, image pulls and first crashes happen in this window. A run still pending
#: after it (queued by Kueue, waiting for GPUs) is looked at every watchdogIntervalSeconds, so
#: hundreds of queued runs do not poll the API server every few seconds.
QUICK_LOOK_SECONDS = 600


def _starting_requeue(workload: Obj, config: OperatorConfig, now: str) -> float:
    created = epoch((workload.get("metadata") or {}).get("creationTimestamp"))
    if created is not None and (epoch(now) or 0) - created > QUICK_LOOK_SECONDS:
        return float(config.reconcile.watchdog_interval_seconds)
    return float(config.reconcile.requeue_seconds)


def _failure_policy(res: Any) -> FailurePolicy:
    fp = getattr(res.spec, "failure_policy", None)
    return fp if fp is not None else FailurePolicy.model_validate({"maxRestarts": SHORT_RUN_RESTARTS})


def _terminal(p: Pass, reason: Reason | str, message: str, *, also_parent: bool = False) -> Outcome:
    if also_parent:
        p.cond(T.PARENT_READY, False, reason, message)
    p.cond(T.SUCCEEDED, False, reason, message)
    p.state(State.FAILED, message)
    p.status["completionTime"] = p.now
    return p.outcome(None)


def dropped_spec_fields(manifest: Obj, created: Obj) -> list[str]:
    """Top-level ``spec`` fields of ``manifest`` that the API server dropped on create: a structural
    CRD schema prunes fields it does not know, silently."""
    return sorted(set(manifest.get("spec") or {}) - set(created.get("spec") or {}))


#: What each child kind's fields need, for the message when an older CRD dropped them.
SUPPORTED_CONTROLLERS = {"TrainJob": "Kubeflow Trainer v2.2 or later (spec.runtimePatches)"}


def unsupported_version_message(child: Obj, dropped: list[str]) -> str:
    kind = child["kind"]
    need = SUPPORTED_CONTROLLERS.get(kind, f"a newer version of the controller of {child['apiVersion']}")
    fields = ", ".join(f"spec.{f}" for f in dropped)
    return (f"the API server dropped {fields} of {kind} {child['metadata']['name']}: the installed {kind} CRD "
            f"does not know {'it' if len(dropped) == 1 else 'them'}; the operator needs {need} "
            "(docs/operator.md, 'Supported Kubeflow versions'); upgrade it, then create the run again")


def reconcile_run(body: Obj, kube: KubeApi, config: OperatorConfig, now: str) -> Outcome:
    p = Pass(body, now)
    old = p.old
    kind, meta = body["kind"], body["metadata"]
    ns, name = meta.get("namespace") or "default", meta["name"]
    parsed, invalid = parse_or_fail(p, body, T.SUCCEEDED)
    if invalid is not None:
        return invalid
    res = cast(RunResource, parsed)

    started = bool(old.get("startTime"))
    spec_changed = started and old.get("observedGeneration") is not None and p.generation != old.get("observedGeneration")
    if spec_changed:
        # The CRD's CEL rule refuses this; if it slipped through (rule disabled), say so loudly.
        p.cond(T.SPEC_CHANGED, True, Reason.SPEC_CHANGED,
               f"spec changed after the run started (generation {p.generation}, run started with "
               f"{old.get('observedGeneration')}); the running child keeps the old spec: create a new run instead")
    else:
        p.status["observedGeneration"] = p.generation
    if old.get("state") in TERMINAL_STATES:
        return p.outcome(None)

    # Lineage: wait for (or fail with) the parent.
    parent = resolve_parent(kind, name, res.spec.model.to_dict(), KubeRunStore(kube, ns))
    if parent.state == ParentState.CYCLE:
        return _terminal(p, Reason.LINEAGE_CYCLE, parent.message, also_parent=True)
    if parent.state == ParentState.FAILED:
        return _terminal(p, Reason.PARENT_FAILED, parent.message, also_parent=True)
    if parent.state in (ParentState.MISSING, ParentState.WAITING):
        message = f"waiting: {parent.message}"
        p.cond(T.PARENT_READY, False, Reason.WAITING_FOR_PARENT, message)
        p.state(State.WAITING, message)
        return p.outcome(config.reconcile.requeue_seconds)
    resolved = parent.uri if parent.state == ParentState.RESOLVED else None
    if resolved is not None:
        p.cond(T.PARENT_READY, True, Reason.RESOLVED, parent.message)
        p.status["resolvedModel"] = resolved

    restarts = int(old.get("restarts") or 0)
    fp = _failure_policy(res)
    if old.get("state") == State.RESTARTING:
        running = C.get_condition(p.conditions, T.RUNNING)
        since = epoch((running or {}).get("lastTransitionTime")) or 0.0
        wait = restarts * config.reconcile.restart_backoff_seconds - ((epoch(now) or 0.0) - since)
        if wait > 0:
            return p.outcome(min(wait, config.reconcile.requeue_seconds))

    try:
        children = render_children(res, config, resolved_model=resolved, parent=dict(parent.run) if parent.run else None,
                                   artifact_format=parent.artifact_format, attempt=restarts)
    except SpecRefused as exc:
        return _terminal(p, Reason.INVALID_SPEC, f"{exc} — fix the run's spec and create it again")
    names: list[str] = []
    workload: Obj = {}
    for child in children:
        try:
            obj, created = kube.create_if_absent(child)
        except ChildRejected as exc:
            return _terminal(p, Reason.INVALID_SPEC, f"{exc} — fix the run's spec and create it again")
        dropped = dropped_spec_fields(child, obj) if created else []
        if dropped:
            # The installed CRD does not know these fields (an older controller, e.g. Kubeflow
            # Trainer before v2.2 for spec.runtimePatches): a child without them would run without
            # its volumes, identity or security context, so it goes and the run fails, saying why.
            kube.delete(child["apiVersion"], child["kind"], ns, child["metadata"]["name"])
            return _terminal(p, Reason.INVALID_SPEC, unsupported_version_message(child, dropped))
        names.append(f"{child['kind']}/{child['metadata']['name']}")
        if child is children[-1]:
            workload = obj
            if created:
                p.events.append(("Normal", "Created", f"created {child['kind']} {child['metadata']['name']}"
                                 + (f" (restart {restarts})" if restarts else "")))
    p.status["children"] = names
    p.saw(workload)
    wl = children[-1]
    if wl["kind"] == "TrainJob":
        selector = f"jobset.sigs.k8s.io/jobset-name={wl['metadata']['name']}"
    else:
        selector = f"{RUN_LABEL}={name},{KIND_LABEL}={kind},{ATTEMPT_LABEL}={restarts}"
    pods = _own_pods(workload, kube.list("v1", "Pod", ns, selector))
    obs = workload_state(workload, pods)

    if obs.phase == "Succeeded":
        return _succeeded(p, kind, obs, kube, res)
    if obs.phase == "Failed":
        return _failed(p, kube, config, wl, obs.reason, obs.message, obs.retryable, restarts, fp)
    if obs.phase == "Running":
        p.status["startTime"] = old.get("startTime") or obs.start_time or now
        # Stall watchdog: no progress report for failurePolicy.stallTimeout.
        if getattr(res.spec, "failure_policy", None) is not None:
            # The stall clock starts with this attempt's child (a restarted run gets a fresh one).
            last = max(filter(None, (epoch((old.get("progress") or {}).get("updated")), epoch(p.status["startTime"]),
                                     epoch((workload.get("metadata") or {}).get("creationTimestamp")))), default=None)
            limit = duration_seconds(fp.stall_timeout)
            if last is not None and (epoch(now) or 0.0) - last > limit:
                p.cond(T.STALLED, True, Reason.STALLED, f"no progress reported for more than {fp.stall_timeout}")
                return _failed(p, kube, config, wl, Reason.STALLED,
                               f"no progress for {fp.stall_timeout} (stall watchdog; a hung rank or NCCL)", True,
                               restarts, fp)
            if C.get_condition(p.conditions, T.STALLED):
                p.cond(T.STALLED, False, Reason.PROGRESSING, "progress is being reported")
        if obs.reason == Reason.CRASH_LOOP_BACKOFF:
            p.cond(T.RUNNING, False, obs.reason, obs.message)
            p.cond(T.SUCCEEDED, "Unknown", obs.reason, obs.message)
            p.state(State.RUNNING, obs.message)
            return p.outcome(config.reconcile.watchdog_interval_seconds)
        p.cond(T.RUNNING, True, Reason.RUNNING, f"{wl['kind']} {wl['metadata']['name']} is running")
        prog = old.get("progress") or {}
        where = f" step {prog.get('step')}/{prog.get('totalSteps')}" if prog.get("totalSteps") else ""
        p.state(State.RUNNING, f"running{where}")
        p.cond(T.SUCCEEDED, "Unknown", Reason.RUNNING, "the run has not finished")
        return p.outcome(config.reconcile.watchdog_interval_seconds)
    # Pending (with its reason: Unschedulable, ImagePullBackOff, Queued, waiting for pods...)
    p.cond(T.RUNNING, False, obs.reason, obs.message)
    p.cond(T.SUCCEEDED, "Unknown", obs.reason, obs.message)
    p.state(State.PENDING, obs.message)
    return p.outcome(_starting_requeue(workload, config, p.now))


def _own_pods(workload: Obj, pods: list[Obj]) -> list[Obj]:
    """The pods this attempt's child owns (their ownerReferences name its uid). Labels alone are not
    proof: anyone allowed to create pods could label one as this run's and forge its report.
    TrainJob pods are owned through JobSet's Jobs, so for it the JobSet label selector decides."""
    uid = (workload.get("metadata") or {}).get("uid")
    if not uid or workload.get("kind") == "TrainJob":
        return pods
    return [pod for pod in pods
            if any(o.get("uid") == uid for o in (pod.get("metadata") or {}).get("ownerReferences") or [])]


def _succeeded(p: Pass, kind: str, obs: ChildState, kube: KubeApi, res: Any) -> Outcome:
    # The outcome comes from the termination message only (obs.result); what a pod may have patched
    # into the status is progress and is never taken for an artifact or scores.
    allowed = outcome_fields(status_fields(kind))
    result = {k: v for k, v in obs.result.items() if k in allowed}
    p.status.update(result)
    for stale in allowed:
        if stale not in result and p.old.get(stale) is not None:
            p.status[stale] = None  # a forged patch must not survive as the outcome
    artifact = result.get("artifact")
    scores = result.get("scores")
    p.status["completionTime"] = p.now
    p.status.setdefault("startTime", p.old.get("startTime") or obs.start_time or p.now)
    if (kind in KINDS_WITH_ARTIFACT and not artifact) or (kind == "EvalRun" and not (scores or artifact)):
        msg = ("the workload finished but its pod reported no result (no termination message); "
               "check the pod's log and that the image runs the worker contract")
        p.cond(T.SUCCEEDED, False, Reason.NO_ARTIFACT, msg)
        p.cond(T.RUNNING, False, Reason.COMPLETED, "the workload finished")
        p.state(State.FAILED, msg)
        return p.outcome(None)
    if kind == "EvalRun":
        _baseline_deltas(p, kube, res)
    summary = p.status.get("summary") or obs.result.get("message")
    msg = summary or (f"artifact {artifact['uri']}" if artifact else "done")
    p.cond(T.RUNNING, False, Reason.COMPLETED, "the workload finished")
    p.cond(T.SUCCEEDED, True, Reason.SUCCEEDED, msg)
    p.state(State.SUCCEEDED, msg)
    return p.outcome(None)


def _baseline_deltas(p: Pass, kube: KubeApi, res: Any) -> None:
    """EvalRun scores against ``spec.baseline.evalRun``, in the cluster.

    A worker pod cannot see other runs (locally the worker reads the run registry itself), so the
    operator adds ``delta`` to ``scores.overall`` when this run succeeds and its baseline already
    has scores; and when a baseline succeeds, to the finished runs that compare with it (the two
    may finish in either order)."""
    ns, name = namespace_of(res), res.metadata.name
    scores = p.status.get("scores") or {}
    ref = res.spec.baseline
    if ref is not None and ref.eval_run and scores.get("overall") and \
            all(o.get("delta") is None for o in scores["overall"]):
        base = ((kube.get(API_VERSION, "EvalRun", ns, ref.eval_run) or {}).get("status") or {}).get("scores") or {}
        if base.get("overall"):
            overall = with_deltas(scores["overall"], base["overall"])
            p.status["scores"] = {**scores, "overall": overall}
            p.status["summary"] = summary_line(overall)  # the Succeeded message, with the deltas
    mine = (p.status.get("scores") or scores).get("overall")
    if not mine:
        return
    for other in kube.list(API_VERSION, "EvalRun", ns, ""):
        ost = other.get("status") or {}
        oscores = ost.get("scores") or {}
        if ((other.get("spec") or {}).get("baseline") or {}).get("evalRun") != name or ost.get("state") != State.SUCCEEDED \
                or not oscores.get("overall") or any(o.get("delta") is not None for o in oscores["overall"]):
            continue
        overall = with_deltas(oscores["overall"], mine)
        summary = summary_line(overall)
        kube.patch_status(API_VERSION, "EvalRun", ns, other["metadata"]["name"],
                          {"scores": {**oscores, "overall": overall}, "summary": summary, "message": summary})


def _failed(p: Pass, kube: KubeApi, config: OperatorConfig, wl: Obj, reason: str, message: str,
            retryable: bool, restarts: int, fp: FailurePolicy) -> Outcome:
    if retryable and restarts < fp.max_restarts:
        # The failed child's pods are done; delete it and let the next pass create attempt n+1,
        # which resumes from the latest checkpoint under spec.output.
        kube.delete(wl["apiVersion"], wl["kind"], wl["metadata"]["namespace"], wl["metadata"]["name"])
        restarts += 1
        msg = f"restart {restarts}/{fp.max_restarts} after {reason}: {message}"
        p.status["restarts"] = restarts
        p.status["lastRestart"] = {"attempt": restarts, "reason": str(reason), "message": message[:32768], "time": p.now}
        p.cond(T.RUNNING, False, Reason.RESTARTING, msg)
        p.state(State.RESTARTING, msg)
        return p.outcome(max(1, config.reconcile.restart_backoff_seconds * restarts))
    if retryable and fp.max_restarts:
        message = f"{message} (gave up after {restarts} restarts)"
    p.cond(T.RUNNING, False, reason, message)
    return _terminal(p, reason, message)

