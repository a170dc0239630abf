"""Lineage and the serve gate, written once for the cluster and for this machine.

A run names its model either by URI or by ``spec.model.fromRun`` (another run whose artifact it
uses once that run has succeeded). A ChatDeployment may also have a gate (``spec.gate``): an EvalRun
whose overall accuracy must reach a minimum before anything is served. The rules are the same
wherever they are applied; only where the runs are looked up differs:

* the operator backs :class:`RunStore` with the API server (``devops_operator.kube``),
* local runs back it with the run registry (:class:`devops_model.registry.LocalRegistry`).

Both hand back a run as the API does: a mapping with ``kind``, ``metadata.name``, ``spec`` and
``status``. Everything here is pure given the store's answers.

The gate's one semantic: the EvalRun must have succeeded, and its best overall accuracy at
``spec.gate.shots`` over the prompt styles it ran (base, chat) must be at least ``minAccuracy``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

from .contract import Reason, State, model_uri_from_artifact

#: A run as the API returns it (kind, metadata, spec, status).
Run = Mapping[str, Any]

#: How many links a lineage chain may have (a longer chain is a configuration error).
MAX_CHAIN = 16


class RunStore(Protocol):
    """Where runs are looked up: the API server (operator) or the local run registry."""

    def get_run(self, kind: str, name: str) -> Optional[Run]:
        """The run with its status, or None when it does not exist (yet)."""
        ...

    def eval_runs(self) -> Iterable[Run]:
        """Every EvalRun of the namespace (or of this machine)."""
        ...


def _name(run: Run) -> str:
    return str((run.get("metadata") or {}).get("name") or "")


def _from_run(run: Run) -> Optional[tuple[str, str]]:
    ref = ((run.get("spec") or {}).get("model") or {}).get("fromRun")
    return (str(ref["kind"]), str(ref["name"])) if ref else None


def _model_uri(run: Run) -> Optional[str]:
    uri = ((run.get("spec") or {}).get("model") or {}).get("uri")
    return str(uri) if uri else None


# --------------------------------------------------------------------------- the parent


class ParentState(str, enum.Enum):
    NONE = "None"          # the model is a URI: no parent
    MISSING = "Missing"    # the parent does not exist (yet)
    WAITING = "Waiting"    # the parent exists and has not succeeded yet
    FAILED = "Failed"      # the parent failed: this run cannot start
    CYCLE = "Cycle"        # fromRun leads back to this run
    RESOLVED = "Resolved"  # the parent succeeded: ``uri`` is the model to use


@dataclass
class Parent:
    state: ParentState
    message: str = ""
    #: The model URI to use (RESOLVED only).
    uri: Optional[str] = None
    #: The parent run with its status (RESOLVED only).
    run: Optional[Run] = None

    @property
    def artifact(self) -> Optional[Mapping[str, Any]]:
        return ((self.run or {}).get("status") or {}).get("artifact")

    @property
    def artifact_format(self) -> Optional[str]:
        return (self.artifact or {}).get("format")


def find_cycle(kind: str, name: str, ref: Optional[tuple[str, str]], store: RunStore) -> Optional[list[str]]:
    """The fromRun chain ``kind/name → … → kind/name`` when following ``ref`` comes back to the run
    itself (or loops elsewhere); None when the chain ends."""
    path = [f"{kind}/{name}"]
    seen = {(kind, name)}
    while ref is not None and len(path) <= MAX_CHAIN:
        path.append(f"{ref[0]}/{ref[1]}")
        if ref in seen:
            return path
        seen.add(ref)
        run = store.get_run(*ref)
        ref = _from_run(run) if run is not None else None
    return None


def resolve_parent(kind: str, name: str, model: Mapping[str, Any], store: RunStore) -> Parent:
    """Where the model of run ``kind/name`` (``spec.model`` as a dict) comes from, right now."""
    ref = model.get("fromRun")
    if not ref:
        return Parent(ParentState.NONE, uri=model.get("uri"))
    pkind, pname = str(ref["kind"]), str(ref["name"])
    label = f"{pkind}/{pname}"
    cycle = find_cycle(kind, name, (pkind, pname), store)
    if cycle is not None:
        return Parent(ParentState.CYCLE, f"spec.model.fromRun makes a cycle: {' → '.join(cycle)}; "
                                         "point one of them at a model URI")
    parent = store.get_run(pkind, pname)
    if parent is None:
        return Parent(ParentState.MISSING, f"{label} does not exist (spec.model.fromRun)")
    st = parent.get("status") or {}
    state = st.get("state") or State.PENDING.value
    if state == State.FAILED:
        return Parent(ParentState.FAILED, f"{label} failed: {st.get('message') or 'see kubectl describe'}")
    artifact = st.get("artifact") or {}
    if state != State.SUCCEEDED or not artifact.get("uri"):
        prog = st.get("progress") or {}
        where = f", step {prog.get('step')}/{prog.get('totalSteps')}" if prog.get("totalSteps") else ""
        return Parent(ParentState.WAITING, f"{label} has not succeeded yet (state {state}{where})")
    uri = model_uri_from_artifact(kind, artifact)
    return Parent(ParentState.RESOLVED, f"{label} succeeded; using {uri}", uri=uri, run=parent)


# --------------------------------------------------------------------------- the chain


def lineage_chain(run: Run, store: RunStore) -> list[str]:
    """The runs that led to ``run``'s model, oldest first, starting with the base model's URI:
    ``["hf://Qwen/Qwen2.5-7B", "PretrainRun/pt", "SFTRun/sft", "QuantizeRun/int4"]``.
    A parent that cannot be looked up ends the chain with its name."""
    chain: list[str] = []
    seen: set[tuple[str, str]] = set()
    ref = _from_run(run)
    current: Optional[Run] = run
    while ref is not None and ref not in seen and len(chain) < MAX_CHAIN:
        seen.add(ref)
        chain.append(f"{ref[0]}/{ref[1]}")
        current = store.get_run(*ref)
        ref = _from_run(current) if current is not None else None
    base = _model_uri(current) if current is not None else None
    if base:
        chain.append(base)
    chain.reverse()
    return chain


# --------------------------------------------------------------------------- the gate


@dataclass
class Gate:
    #: None when the gate is open (or there is none); else WaitingForGate or GateNotMet.
    reason: Optional[Reason]
    message: str = ""
    #: The gating EvalRun's scores (shown by the web chat and /v1/info).
    scores: Optional[Mapping[str, Any]] = None
    eval_run: Optional[str] = None

    @property
    def open(self) -> bool:
        return self.reason is None


def best_overall(scores: Mapping[str, Any], shots: int) -> Optional[tuple[float, str]]:
    """(accuracy, style) of the best overall row at ``shots``, over the styles that were run."""
    rows = [o for o in (scores or {}).get("overall") or [] if o.get("shots") == shots]
    if not rows:
        return None
    best = max(rows, key=lambda o: float(o.get("accuracy") or 0.0))
    return float(best.get("accuracy") or 0.0), str(best.get("style") or "base")


def check_gate(gate: Optional[Mapping[str, Any]], store: RunStore) -> Gate:
    """``spec.gate`` (as a dict: evalRun, minAccuracy, shots) against the store, right now."""
    if not gate:
        return Gate(None)
    name, shots, need = str(gate["evalRun"]), int(gate.get("shots") or 0), float(gate["minAccuracy"])
    where = f"EvalRun/{name} (spec.gate.evalRun)"
    run = store.get_run("EvalRun", name)
    st = (run or {}).get("status") or {}
    if run is None or st.get("state") != State.SUCCEEDED:
        have = "does not exist" if run is None else f"has not succeeded (state {st.get('state') or State.PENDING})"
        return Gate(Reason.WAITING_FOR_GATE, f"waiting for {where}: it {have}", eval_run=name)
    scores = st.get("scores") or {}
    best = best_overall(scores, shots)
    if best is None:
        return Gate(Reason.GATE_NOT_MET, f"{where} has no overall score at {shots} shots (spec.gate.shots)",
                    scores, name)
    acc, style = best
    if acc < need:
        return Gate(Reason.GATE_NOT_MET, f"{where} scored {acc:.3f} at {shots} shots ({style}), below "
                                         f"spec.gate.minAccuracy {gate['minAccuracy']}; not serving", scores, name)
    return Gate(None, f"{where} scored {acc:.3f} at {shots} shots ({style}) ≥ {gate['minAccuracy']}", scores, name)


# --------------------------------------------------------------------------- what the chat shows


@dataclass
class LineageRecord:
    """What a ChatDeployment shows about its model (``lineage.json``, /v1/info, the web chat)."""

    lineage: list[str]
    artifact: Optional[Mapping[str, Any]] = None
    scores: Optional[Mapping[str, Any]] = None
    scores_from: Optional[str] = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"lineage": list(self.lineage)}
        if self.artifact:
            out["artifact"] = dict(self.artifact)
        if self.scores:
            out["scores"] = dict(self.scores)
            out["scoresFrom"] = self.scores_from
        out.update(self.extra)
        return out


def scores_for(chain: list[str], gate: Gate, store: RunStore) -> tuple[Optional[Mapping[str, Any]], Optional[str]]:
    """The gating EvalRun's scores, else those of the EvalRun that examined the closest run of the
    chain (the served model first, then its ancestors)."""
    if gate.scores:
        return gate.scores, f"EvalRun/{gate.eval_run}"
    examined: dict[str, Run] = {}
    for ev in store.eval_runs():
        st = ev.get("status") or {}
        ref = _from_run(ev)
        if st.get("state") == State.SUCCEEDED and st.get("scores") and ref is not None:
            examined.setdefault(f"{ref[0]}/{ref[1]}", ev)
    for link in reversed(chain):
        if link in examined:
            ev = examined[link]
            return (ev.get("status") or {}).get("scores"), f"EvalRun/{_name(ev)}"
    return None, None


def lineage_record(run: Run, parent: Parent, gate: Gate, store: RunStore) -> LineageRecord:
    chain = lineage_chain(run, store)
    scores, source = scores_for(chain, gate, store)
    return LineageRecord(chain, parent.artifact, scores, source)
