"""One reconcile pass of a ChatDeployment: lineage, the serve gate, the Deployment and Service
(server-side apply, so a new model rolls the pods), and readiness from the Deployment's pods."""

from __future__ import annotations

from typing import cast

from devops_model.api.chat import ChatDeployment
from devops_model.contract import ConditionType as T
from devops_model.contract import Reason, State
from devops_model.lineage import ParentState, check_gate, lineage_record, resolve_parent

from .. import conditions as C
from ..builders import SpecRefused, render_children
from ..builders.chat import endpoint
from ..config import OperatorConfig
from ..kubeapi import ChildRejected, KubeApi, Obj
from ..naming import selector_labels
from ..status import deployment_state
from .common import KubeRunStore, Outcome, Pass, parse_or_fail


def reconcile_chat(body: Obj, kube: KubeApi, config: OperatorConfig, now: str) -> Outcome:
    p = Pass(body, now)
    meta = body["metadata"]
    ns, name = meta.get("namespace") or "default", meta["name"]
    parsed, invalid = parse_or_fail(p, body, T.READY)
    if invalid is not None:
        return invalid
    res = cast(ChatDeployment, parsed)
    p.status["observedGeneration"] = p.generation
    store = KubeRunStore(kube, ns)
    parent = resolve_parent("ChatDeployment", name, res.spec.model.to_dict(), store)
    if parent.state != ParentState.NONE and parent.state != ParentState.RESOLVED:
        failed = parent.state in (ParentState.FAILED, ParentState.CYCLE)
        reason = {ParentState.FAILED: Reason.PARENT_FAILED, ParentState.CYCLE: Reason.LINEAGE_CYCLE}.get(
            parent.state, Reason.WAITING_FOR_PARENT)
        message = parent.message if failed else f"waiting: {parent.message}"
        p.cond(T.PARENT_READY, False, reason, message)
        if C.get_condition(p.conditions, T.READY) is None or failed:
            p.cond(T.READY, False, reason, message)
        p.state(State.FAILED if failed else State.WAITING, message)
        return p.outcome(config.reconcile.requeue_seconds)
    if parent.state == ParentState.RESOLVED:
        p.cond(T.PARENT_READY, True, Reason.RESOLVED, parent.message)
    gate = check_gate(res.spec.gate.to_dict() if res.spec.gate is not None else None, store)
    if not gate.open:
        assert gate.reason is not None
        p.cond(T.READY, False, gate.reason, gate.message)
        # GateNotMet: the exams said no (a new EvalRun of that name may say yes: keep looking).
        p.state(State.WAITING if gate.reason == Reason.WAITING_FOR_GATE else State.FAILED, gate.message)
        return p.outcome(config.reconcile.requeue_seconds)
    model_uri = parent.uri or res.spec.model.uri
    p.status["resolvedModel"] = model_uri
    record = lineage_record(body, parent, gate, store)
    p.status["lineage"] = record.lineage
    try:
        children = render_children(res, config, resolved_model=parent.uri, parent=dict(parent.run) if parent.run else None,
                                   artifact_format=parent.artifact_format, lineage=record.to_dict())
    except SpecRefused as exc:
        return _invalid(p, exc)
    names = []
    for child in children:
        try:
            kube.apply(child)
        except ChildRejected as exc:
            return _invalid(p, exc)
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
        ep = endpoint(res)
        p.status["endpoint"] = ep
        p.status.setdefault("startTime", p.old.get("startTime") or now)
        p.cond(T.READY, True, ds.reason, f"{ds.message}; {ep['url']}/v1 serves {ep['model']}")
        p.state(State.READY, ds.message)
        return p.outcome(config.reconcile.watchdog_interval_seconds)
    p.cond(T.READY, False, ds.reason, ds.message)
    p.state(State.PENDING, ds.message)
    return p.outcome(config.reconcile.requeue_seconds)


def _invalid(p: Pass, exc: Exception) -> Outcome:
    """The spec cannot be served (an image the configuration refuses, a child the API server
    rejects): Failed with InvalidSpec and the reason; nothing is retried until the spec changes."""
    message = f"{exc} — fix the ChatDeployment's spec"
    p.cond(T.READY, False, Reason.INVALID_SPEC, message)
    p.state(State.FAILED, message)
    return p.outcome(None)
