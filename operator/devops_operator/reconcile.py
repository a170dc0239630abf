"""One reconcile pass of a resource: lineage, children (create-if-absent), the failure policy, and
the status that follows from what the children say.

    outcome = reconcile(body, kube, config, now=now_rfc3339())
    # outcome.status: fields to merge into status; outcome.events: (type, reason, message);
    # outcome.requeue: seconds until the next look (None: nothing more to do)

Everything here is deterministic given the API's answers and ``now``; all I/O goes through the
:class:`~devops_operator.kube.Kube` passed in (tests pass the real one against a real API server).
"""

from __future__ import annotations

import calendar
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from devops_model.api import API_VERSION, KINDS
from devops_model.api.common import FailurePolicy, duration_seconds
from devops_model.api.resource import InvalidResource, parse_resource
from devops_model.scores import summary_line, with_deltas

from . import conditions as C
from .builders import render_children
from .builders.chat import endpoint
from .config import OperatorConfig
from .naming import ATTEMPT_LABEL, KIND_LABEL, RUN_LABEL, namespace_of, selector_labels
from .status import deployment_state, workload_state

#: Restarts for EvalRun and QuantizeRun, which have no spec.failurePolicy (a preempted exam or
#: quantization simply runs again; OOM or bad data does not).
SHORT_RUN_RESTARTS = 2
#: Fields of status that the operator owns; everything else a worker may write (progress, ...).
RESULT_EXCLUDE = {"conditions", "state", "observedGeneration", "children", "restarts", "startTime",
                  "completionTime", "resolvedModel", "durationSeconds", "reason", "kopf"}
#: Kinds whose success must leave an artifact in status.
NEEDS_ARTIFACT = {"PretrainRun", "SFTRun", "QuantizeRun"}


@dataclass
class Outcome:
    status: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    requeue: Optional[float] = None
    #: "Kind/namespace/name" -> resourceVersion of the children this pass has seen (a child event
    #: carrying one of these versions brings nothing new and needs no pass).
    observed: dict[str, str] = field(default_factory=dict)


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


#: How long after an attempt's child was created its pods are looked at every requeueSeconds: the
#: scheduler's verdict, image pulls and first crashes happen in this window. A run still pending
#: after it (queued by Kueue, waiting for GPUs) is looked at every watchdogIntervalSeconds, so
#: hundreds of queued runs do not poll the API server every few seconds.
QUICK_LOOK_SECONDS = 600


def _starting_requeue(workload: dict[str, Any], config: Any, now: str) -> float:
    created = _epoch((workload.get("metadata") or {}).get("creationTimestamp"))
    if created is not None and (_epoch(now) or 0) - created > QUICK_LOOK_SECONDS:
        return float(config.reconcile.watchdog_interval_seconds)
    return float(config.reconcile.requeue_seconds)


def _epoch(ts: Optional[str]) -> Optional[float]:
    if not ts:
        return None
    try:
        return calendar.timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def _clean(body: dict[str, Any]) -> dict[str, Any]:
    """The body as the typed model accepts it (status keys it does not know are dropped)."""
    meta = body.get("metadata", {})
    status = {k: v for k, v in (body.get("status") or {}).items() if k != "kopf"}
    status_fields = _status_fields(body["kind"])
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body["kind"],
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "labels", "generation") if k in meta},
        "spec": body.get("spec") or {},
        "status": {k: v for k, v in status.items() if k in status_fields} or None,
    }


def model_uri_from_artifact(kind: str, artifact: dict[str, Any]) -> str:
    """Which URI of a parent's artifact a dependent uses: the merged model for evaluation,
    quantization and serving (a LoRA adapter alone is not servable), the artifact itself for training."""
    if kind in ("QuantizeRun", "ChatDeployment", "EvalRun"):
        return artifact.get("mergedUri") or artifact["uri"]
    return artifact["uri"]


def _status_fields(kind: str) -> set[str]:
    status_type = KINDS[kind].model.model_fields["status"].annotation
    for arg in getattr(status_type, "__args__", (status_type,)):
        if hasattr(arg, "model_fields"):
            return {f.alias or n for n, f in arg.model_fields.items()}
    return set()


class _Pass:
    """Accumulates the status of one pass and the Events of its transitions."""

    def __init__(self, body: dict[str, Any], now: str):
        self.body = body
        self.now = now
        self.old = dict(body.get("status") or {})
        self.conditions = list(self.old.get("conditions") or [])
        self.status: dict[str, Any] = {}
        self.events: list[tuple[str, str, str]] = []
        self.generation = body["metadata"].get("generation")
        self.observed: dict[str, str] = {}

    def cond(self, type_: str, status: bool | str, reason: str, message: str = "") -> None:
        before = C.get_condition(self.conditions, type_)
        self.conditions = C.set_condition(self.conditions, type_, status, reason, message, now=self.now,
                                          observed_generation=self.generation)
        after = C.get_condition(self.conditions, type_)
        if before is None or (before.get("status"), before.get("reason")) != (after["status"], after["reason"]):
            if not (type_ == C.RUNNING and reason in (C.PENDING, C.CREATED) and before is None):
                warn = reason in (C.FAILED, C.UNSCHEDULABLE, C.IMAGE_PULL_BACKOFF, C.OOM_KILLED, C.CRASH_LOOP_BACKOFF,
                                  C.NCCL_TIMEOUT, C.STALLED_REASON, C.BAD_DATA, C.RESTARTING, C.PARENT_FAILED,
                                  C.NO_ARTIFACT, C.SPEC_CHANGED, C.GATE_NOT_MET, C.PREEMPTED) or (
                    type_ in (C.SUCCEEDED, C.READY) and after["status"] == "False" and reason not in (C.DEPLOYING, C.WAITING_FOR_GATE, C.SCALED_TO_ZERO))
                self.events.append(("Warning" if warn else "Normal", reason, message or f"{type_}={after['status']}"))

    def state(self, state: str, message: str) -> None:
        self.status["state"] = state
        self.status["message"] = message

    def outcome(self, requeue: Optional[float]) -> Outcome:
        self.status["conditions"] = self.conditions
        return Outcome(self.status, self.events, requeue, self.observed)

    def saw(self, obj: Optional[dict[str, Any]]) -> None:
        meta = (obj or {}).get("metadata") or {}
        if meta.get("resourceVersion"):
            self.observed[f"{obj['kind']}/{meta.get('namespace')}/{meta['name']}"] = meta["resourceVersion"]


def reconcile(body: dict[str, Any], kube: Any, config: OperatorConfig, now: Optional[str] = None) -> Outcome:
    now = now or now_rfc3339()
    if body["kind"] == "ChatDeployment":
        return reconcile_chat(body, kube, config, now)
    return reconcile_run(body, kube, config, now)


# --------------------------------------------------------------------------- lineage


@dataclass
class Lineage:
    waiting: bool = False
    failed: bool = False
    message: str = ""
    resolved: Optional[str] = None
    parent: Optional[dict[str, Any]] = None
    artifact_format: Optional[str] = None


def resolve_lineage(res: Any, kube: Any) -> Lineage:
    ref = res.spec.model.from_run
    if ref is None:
        return Lineage(resolved=None)
    ns = namespace_of(res)
    parent = kube.get(API_VERSION, ref.kind, ns, ref.name)
    label = f"{ref.kind}/{ref.name}"
    if parent is None:
        return Lineage(waiting=True, message=f"waiting for {label} to be created (spec.model.fromRun)")
    pst = parent.get("status") or {}
    state = pst.get("state") or "Pending"
    if state == "Failed":
        return Lineage(failed=True, message=f"{label} failed: {pst.get('message') or 'see kubectl describe'}")
    art = pst.get("artifact")
    if state != "Succeeded" or not art or not art.get("uri"):
        prog = pst.get("progress") or {}
        where = f", step {prog.get('step')}/{prog.get('totalSteps')}" if prog.get("totalSteps") else ""
        return Lineage(waiting=True, message=f"waiting for {label} to succeed (state {state}{where})")
    return Lineage(resolved=model_uri_from_artifact(res.kind, art), parent=parent, artifact_format=art.get("format"),
                   message=f"{label} succeeded; using {model_uri_from_artifact(res.kind, art)}")


def lineage_chain(res: Any, kube: Any, limit: int = 8) -> list[str]:
    """kind/name of every run that led to the model, oldest first."""
    chain: list[str] = []
    ref = res.spec.model.from_run
    ns = namespace_of(res)
    while ref is not None and len(chain) < limit:
        chain.insert(0, f"{ref.kind}/{ref.name}")
        parent = kube.get(API_VERSION, ref.kind, ns, ref.name)
        from_run = ((parent or {}).get("spec", {}).get("model") or {}).get("fromRun")
        ref = type("Ref", (), from_run) if from_run else None
    return chain


# --------------------------------------------------------------------------- runs


def _failure_policy(res: Any) -> FailurePolicy:
    fp = getattr(res.spec, "failure_policy", None)
    return fp if fp is not None else FailurePolicy(maxRestarts=SHORT_RUN_RESTARTS)


def reconcile_run(body: dict[str, Any], kube: Any, config: OperatorConfig, now: str) -> Outcome:
    p = _Pass(body, now)
    old = p.old
    kind, meta = body["kind"], body["metadata"]
    ns, name = meta.get("namespace") or "default", meta["name"]
    try:
        res = parse_resource(_clean(body))
    except InvalidResource as exc:
        p.cond(C.SUCCEEDED, False, C.INVALID_SPEC, str(exc))
        p.state("Failed", str(exc))
        return p.outcome(None)

    started = bool(old.get("startTime"))
    spec_changed = started and old.get("observedGeneration") is not None and p.generation != old.get("observedGeneration")
    if spec_changed:
        # The CRD's CEL rule refuses this; if it slipped through (rule disabled), say so loudly.
        p.cond("SpecChanged", True, C.SPEC_CHANGED,
               f"spec changed after the run started (generation {p.generation}, run started with "
               f"{old.get('observedGeneration')}); the running child keeps the old spec: create a new run instead")
    else:
        p.status["observedGeneration"] = p.generation
    if old.get("state") in C.TERMINAL_STATES:
        return p.outcome(None)

    # Lineage: wait for (or fail with) the parent.
    lin = resolve_lineage(res, kube)
    if res.spec.model.from_run is not None:
        if lin.failed:
            p.cond(C.PARENT_READY, False, C.PARENT_FAILED, lin.message)
            p.cond(C.SUCCEEDED, False, C.PARENT_FAILED, lin.message)
            p.state("Failed", lin.message)
            p.status["completionTime"] = now
            return p.outcome(None)
        if lin.waiting:
            p.cond(C.PARENT_READY, False, C.WAITING_FOR_PARENT, lin.message)
            p.state("Waiting", lin.message)
            return p.outcome(config.reconcile.requeue_seconds)
        p.cond(C.PARENT_READY, True, C.RESOLVED, lin.message)
        p.status["resolvedModel"] = lin.resolved

    restarts = int(old.get("restarts") or 0)
    fp = _failure_policy(res)
    if old.get("state") == "Restarting":
        running = C.get_condition(p.conditions, C.RUNNING)
        since = _epoch((running or {}).get("lastTransitionTime")) or 0
        wait = restarts * config.reconcile.restart_backoff_seconds - (_epoch(now) - since)
        if wait > 0:
            return p.outcome(min(wait, config.reconcile.requeue_seconds))

    if config.workloads.manage_service_account:
        kube.ensure_workload_identity(ns, config.workloads.service_account, config.workloads.cluster_role)
    children = render_children(res, config, resolved_model=lin.resolved, parent=lin.parent,
                               artifact_format=lin.artifact_format, attempt=restarts)
    names: list[str] = []
    workload: dict[str, Any] = {}
    for child in children:
        obj, created = kube.create_if_absent(child)
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
    pods = kube.list("v1", "Pod", ns, selector)
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
            last = max(filter(None, (_epoch((old.get("progress") or {}).get("updated")), _epoch(p.status["startTime"]),
                                     _epoch((workload.get("metadata") or {}).get("creationTimestamp")))), default=None)
            limit = duration_seconds(fp.stall_timeout)
            if last is not None and _epoch(now) - last > limit:
                p.cond(C.STALLED, True, C.STALLED_REASON, f"no progress reported for more than {fp.stall_timeout}")
                return _failed(p, kube, config, wl, C.STALLED_REASON,
                               f"no progress for {fp.stall_timeout} (stall watchdog; a hung rank or NCCL)", True,
                               restarts, fp)
            if C.get_condition(p.conditions, C.STALLED):
                p.cond(C.STALLED, False, C.PROGRESSING, "progress is being reported")
        if obs.reason == C.CRASH_LOOP_BACKOFF:
            p.cond(C.RUNNING, False, obs.reason, obs.message)
            p.state(obs.reason, obs.message)
        else:
            p.cond(C.RUNNING, True, C.RUNNING_REASON, f"{wl['kind']} {wl['metadata']['name']} is running")
            prog = old.get("progress") or {}
            where = f" step {prog.get('step')}/{prog.get('totalSteps')}" if prog.get("totalSteps") else ""
            p.state("Running", f"running{where}")
        p.cond(C.SUCCEEDED, "Unknown", C.RUNNING_REASON, "the run has not finished")
        return p.outcome(config.reconcile.watchdog_interval_seconds)
    # Pending (with its reason: Unschedulable, ImagePullBackOff, waiting for pods...)
    p.cond(C.RUNNING, False, obs.reason, obs.message)
    p.cond(C.SUCCEEDED, "Unknown", obs.reason, obs.message)
    p.state("Pending" if obs.reason in (C.PENDING, C.CREATED) else obs.reason, obs.message)
    return p.outcome(_starting_requeue(workload, config, now))


def _succeeded(p: _Pass, kind: str, obs: Any, kube: Any, res: Any) -> Outcome:
    allowed = _status_fields(kind) - RESULT_EXCLUDE
    result = {k: v for k, v in obs.result.items() if k in allowed}
    p.status.update(result)
    artifact = result.get("artifact") or p.old.get("artifact")
    scores = result.get("scores") or p.old.get("scores")
    p.status["completionTime"] = p.now
    p.status.setdefault("startTime", p.old.get("startTime") or obs.start_time or p.now)
    if (kind in NEEDS_ARTIFACT and not artifact) or (kind == "EvalRun" and not (scores or artifact)):
        msg = ("the workload finished but reported no artifact (no termination message and no status patch); "
               "check the pod's log and that the image runs the worker contract")
        p.cond(C.SUCCEEDED, False, C.NO_ARTIFACT, msg)
        p.cond(C.RUNNING, False, C.COMPLETED, "the workload finished")
        p.state("Failed", msg)
        return p.outcome(None)
    if kind == "EvalRun":
        _baseline_deltas(p, kube, res)
    summary = p.status.get("summary") or p.old.get("summary") or result.get("message")
    msg = summary or (f"artifact {artifact['uri']}" if artifact else "done")
    p.cond(C.RUNNING, False, C.COMPLETED, "the workload finished")
    p.cond(C.SUCCEEDED, True, C.SUCCEEDED_REASON, msg)
    p.state("Succeeded", msg)
    return p.outcome(None)


def _baseline_deltas(p: _Pass, kube: Any, res: Any) -> None:
    """EvalRun scores against ``spec.baseline.evalRun``, in the cluster.

    A worker pod cannot see other runs (locally the worker reads the run registry itself), so the
    operator adds ``delta`` to ``scores.overall`` when this run succeeds and its baseline already
    has scores; and when a baseline succeeds, to the finished runs that compare with it (the two
    may finish in either order)."""
    ns, name = namespace_of(res), res.metadata["name"]
    scores = p.status.get("scores") or p.old.get("scores") or {}
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
        if ((other.get("spec") or {}).get("baseline") or {}).get("evalRun") != name or ost.get("state") != "Succeeded" \
                or not oscores.get("overall") or any(o.get("delta") is not None for o in oscores["overall"]):
            continue
        overall = with_deltas(oscores["overall"], mine)
        summary = summary_line(overall)
        kube.patch_status(API_VERSION, "EvalRun", ns, other["metadata"]["name"],
                          {"scores": {**oscores, "overall": overall}, "summary": summary, "message": summary})


def _failed(p: _Pass, kube: Any, config: OperatorConfig, wl: dict[str, Any], reason: str, message: str,
            retryable: bool, restarts: int, fp: FailurePolicy) -> Outcome:
    if retryable and restarts < fp.max_restarts:
        # The failed child's pods are done; delete it and let the next pass create attempt n+1,
        # which resumes from the latest checkpoint under spec.output.
        kube.delete(wl["apiVersion"], wl["kind"], wl["metadata"]["namespace"], wl["metadata"]["name"])
        restarts += 1
        msg = f"restart {restarts}/{fp.max_restarts} after {reason}: {message}"
        p.status["restarts"] = restarts
        p.status["lastRestart"] = {"attempt": restarts, "reason": reason, "message": message[:32768], "time": p.now}
        p.cond(C.RUNNING, False, C.RESTARTING, msg)
        p.state("Restarting", msg)
        return p.outcome(max(1, config.reconcile.restart_backoff_seconds * restarts))
    if retryable and fp.max_restarts:
        message = f"{message} (gave up after {restarts} restarts)"
    p.cond(C.RUNNING, False, reason, message)
    p.cond(C.SUCCEEDED, False, reason, message)
    p.state("Failed", message)
    p.status["completionTime"] = p.now
    return p.outcome(None)


# --------------------------------------------------------------------------- chat


def _gate(res: Any, kube: Any) -> tuple[Optional[str], str, Optional[dict]]:
    """(None | WaitingForGate | GateNotMet, message, the gate EvalRun's scores)."""
    gate = res.spec.gate
    if gate is None:
        return None, "", None
    ev = kube.get(API_VERSION, "EvalRun", namespace_of(res), gate.eval_run)
    st = (ev or {}).get("status") or {}
    if st.get("state") != "Succeeded":
        return C.WAITING_FOR_GATE, f"waiting for EvalRun/{gate.eval_run} to succeed (spec.gate)", None
    overall = [o for o in (st.get("scores") or {}).get("overall") or [] if o.get("shots") == gate.shots]
    if not overall:
        return C.GATE_NOT_MET, f"EvalRun/{gate.eval_run} has no {gate.shots}-shot score", st.get("scores")
    acc = max(o.get("accuracy", 0.0) for o in overall)
    if acc < float(gate.min_accuracy):
        return C.GATE_NOT_MET, (f"EvalRun/{gate.eval_run} scored {acc:.3f} at {gate.shots}-shot, below "
                                f"spec.gate.minAccuracy {gate.min_accuracy}; not serving"), st.get("scores")
    return None, f"EvalRun/{gate.eval_run} scored {acc:.3f} ≥ {gate.min_accuracy}", st.get("scores")


def reconcile_chat(body: dict[str, Any], kube: Any, config: OperatorConfig, now: str) -> Outcome:
    p = _Pass(body, now)
    meta = body["metadata"]
    ns, name = meta.get("namespace") or "default", meta["name"]
    try:
        res = parse_resource(_clean(body))
    except InvalidResource as exc:
        p.cond(C.READY, False, C.INVALID_SPEC, str(exc))
        p.state("Failed", str(exc))
        return p.outcome(None)
    p.status["observedGeneration"] = p.generation
    lin = resolve_lineage(res, kube)
    if res.spec.model.from_run is not None:
        if lin.failed or lin.waiting:
            reason = C.PARENT_FAILED if lin.failed else C.WAITING_FOR_PARENT
            p.cond(C.PARENT_READY, False, reason, lin.message)
            if C.get_condition(p.conditions, C.READY) is None or lin.failed:
                p.cond(C.READY, False, reason, lin.message)
            p.state("Failed" if lin.failed else "Waiting", lin.message)
            return p.outcome(config.reconcile.requeue_seconds)
        p.cond(C.PARENT_READY, True, C.RESOLVED, lin.message)
    gate_reason, gate_msg, scores = _gate(res, kube)
    if gate_reason is not None:
        p.cond(C.READY, False, gate_reason, gate_msg)
        p.state(gate_reason, gate_msg)
        return p.outcome(config.reconcile.requeue_seconds)
    model_uri = lin.resolved or res.spec.model.uri
    p.status["resolvedModel"] = model_uri
    chain = lineage_chain(res, kube)
    p.status["lineage"] = chain
    lineage_file: dict[str, Any] = {"lineage": chain}
    if lin.parent is not None and (lin.parent.get("status") or {}).get("artifact"):
        lineage_file["artifact"] = lin.parent["status"]["artifact"]
    if scores:
        lineage_file["scores"] = scores
    if config.workloads.manage_service_account:
        sa = config.serving.service_account or config.workloads.service_account
        kube.ensure_workload_identity(ns, sa, config.workloads.cluster_role)
    children = render_children(res, config, resolved_model=lin.resolved, parent=lin.parent,
                               artifact_format=lin.artifact_format, lineage=lineage_file)
    names = []
    for child in children:
        kube.apply(child)
        names.append(f"{child['kind']}/{child['metadata']['name']}")
    p.status["children"] = names
    deploy_manifest = children[1]
    deploy = kube.get("apps/v1", "Deployment", ns, deploy_manifest["metadata"]["name"])
    p.saw(deploy)
    sel = ",".join(f"{k}={v}" for k, v in selector_labels(res).items())
    pods = kube.list("v1", "Pod", ns, sel)
    ds = deployment_state(deploy, pods, res.spec.replicas)
    p.status["replicas"] = res.spec.replicas
    p.status["readyReplicas"] = ds.ready_replicas
    if ds.ready:
        p.status["endpoint"] = endpoint(res)
        p.status.setdefault("startTime", p.old.get("startTime") or now)
        p.cond(C.READY, True, ds.reason, f"{ds.message}; {endpoint(res)['url']}/v1 serves {endpoint(res)['model']}")
        p.state("Ready" if ds.reason == C.AVAILABLE else ds.reason, ds.message)
        return p.outcome(config.reconcile.watchdog_interval_seconds)
    p.cond(C.READY, False, ds.reason, ds.message)
    p.state(ds.reason, ds.message)
    return p.outcome(config.reconcile.requeue_seconds)
