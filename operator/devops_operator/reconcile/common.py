"""What a reconcile pass of any kind shares: the pass's status and Events, the clock helpers, the
resource as the typed model accepts it, and the API server as the lineage store."""

from __future__ import annotations

import calendar
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Optional

from devops_model.api import API_VERSION, KINDS
from devops_model.api.resource import InvalidResource, parse_resource
from devops_model.contract import ConditionType, Reason, State

from .. import conditions as C
from ..kubeapi import KubeApi, Obj


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


def epoch(ts: Optional[str]) -> Optional[float]:
    if not ts:
        return None
    try:
        return float(calendar.timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return None


def status_fields(kind: str) -> set[str]:
    """The camelCase fields of ``kind``'s status model."""
    status_type: Any = KINDS[kind].model.model_fields["status"].annotation
    for arg in getattr(status_type, "__args__", (status_type,)):
        if hasattr(arg, "model_fields"):
            return {f.alias or n for n, f in arg.model_fields.items()}
    return set()


def clean(body: Obj) -> Obj:
    """The body for the typed model: metadata, spec and no status. The status is read as data
    (``Pass.old``); validating it would let a malformed progress report make the spec look invalid."""
    meta = body.get("metadata", {})
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body["kind"],
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "labels", "generation") if k in meta},
        "spec": body.get("spec") or {},
    }


def parse_or_fail(p: "Pass", body: Obj, condition: ConditionType) -> tuple[Any, Optional[Outcome]]:
    """(the typed resource, None), or (None, a Failed outcome with reason InvalidSpec on ``condition``)
    when the body does not validate (a CRD older than the operator, a rule the server could not check)."""
    try:
        return parse_resource(clean(body)), None
    except InvalidResource as exc:
        p.cond(condition, False, Reason.INVALID_SPEC, str(exc))
        p.state(State.FAILED, str(exc))
        return None, p.outcome(None)


class KubeRunStore:
    """:class:`devops_model.lineage.RunStore` over the API server, in one namespace."""

    def __init__(self, kube: KubeApi, namespace: str):
        self.kube = kube
        self.namespace = namespace

    def get_run(self, kind: str, name: str) -> Optional[Obj]:
        if kind not in KINDS:
            return None
        return self.kube.get(API_VERSION, kind, self.namespace, name)

    def eval_runs(self) -> Iterator[Obj]:
        yield from self.kube.list(API_VERSION, "EvalRun", self.namespace, "")


class Pass:
    """Accumulates the status of one pass and the Events of its transitions."""

    def __init__(self, body: Obj, now: str):
        self.body = body
        self.now = now
        self.old: dict[str, Any] = dict(body.get("status") or {})
        self.conditions: list[dict[str, Any]] = list(self.old.get("conditions") or [])
        self.status: dict[str, Any] = {}
        self.events: list[tuple[str, str, str]] = []
        self.generation: Optional[int] = body["metadata"].get("generation")
        self.observed: dict[str, str] = {}

    def cond(self, type_: ConditionType, status: bool | str, reason: Reason | str, message: str = "") -> None:
        before = C.get_condition(self.conditions, type_)
        self.conditions = C.set_condition(self.conditions, type_, status, reason, message, now=self.now,
                                          observed_generation=self.generation)
        after = C.get_condition(self.conditions, type_)
        assert after is not None
        changed = before is None or (before.get("status"), before.get("reason")) != (after["status"], after["reason"])
        quiet_start = type_ == ConditionType.RUNNING and reason in (Reason.PENDING, Reason.CHILD_CREATED) and before is None
        if changed and not quiet_start:
            self.events.append((C.event_type(type_, after["status"], after["reason"]), after["reason"],
                                message or f"{type_}={after['status']}"))

    def state(self, state: State, message: str) -> None:
        self.status["state"] = state.value
        self.status["message"] = message

    def outcome(self, requeue: Optional[float]) -> Outcome:
        self.status["conditions"] = self.conditions
        return Outcome(self.status, self.events, requeue, self.observed)

    def saw(self, obj: Optional[Obj]) -> None:
        meta = (obj or {}).get("metadata") or {}
        if obj is not None and meta.get("resourceVersion"):
            self.observed[f"{obj['kind']}/{meta.get('namespace')}/{meta['name']}"] = meta["resourceVersion"]
