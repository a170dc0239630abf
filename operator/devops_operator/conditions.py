"""Conditions per the Kubernetes API conventions: a list keyed by ``type``, one-word CamelCase
reasons (named constants below), a human message, ``lastTransitionTime`` that changes only when
the status flips, and ``observedGeneration``.

Pure functions: the caller passes ``now``.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

from devops_model.contract import ConditionType, Reason

#: Reasons whose transition is posted as a Warning Event (the rest are Normal).
WARNING_REASONS = frozenset({
    Reason.FAILED, Reason.UNSCHEDULABLE, Reason.IMAGE_PULL_BACKOFF, Reason.OOM_KILLED, Reason.CRASH_LOOP_BACKOFF,
    Reason.NCCL_TIMEOUT, Reason.STALLED, Reason.BAD_DATA, Reason.RESTARTING, Reason.PARENT_FAILED,
    Reason.NO_ARTIFACT, Reason.SPEC_CHANGED, Reason.GATE_NOT_MET, Reason.PREEMPTED, Reason.INVALID_SPEC,
    Reason.LINEAGE_CYCLE, Reason.ARTIFACT_MISMATCH,
})
#: Ready/Succeeded=False reasons that are expected on the way up (Normal, not Warning).
_ON_THE_WAY = frozenset({Reason.DEPLOYING, Reason.WAITING_FOR_GATE, Reason.SCALED_TO_ZERO})


def event_type(type_: str, status: str, reason: str) -> str:
    """"Warning" or "Normal" for the Event of a condition's transition."""
    if reason in WARNING_REASONS:
        return "Warning"
    if type_ in (ConditionType.SUCCEEDED, ConditionType.READY) and status == "False" and reason not in _ON_THE_WAY:
        return "Warning"
    return "Normal"


def get_condition(conditions: Optional[list[dict[str, Any]]], type_: str) -> Optional[dict[str, Any]]:
    for c in conditions or []:
        if c.get("type") == type_:
            return c
    return None


def set_condition(conditions: Optional[list[dict[str, Any]]], type_: str, status: str | bool, reason: str,
                  message: str = "", *, now: str, observed_generation: Optional[int] = None) -> list[dict[str, Any]]:
    """A new list with condition ``type_`` set. ``lastTransitionTime`` is ``now`` only when the
    condition is new or its status flips; a changed reason or message keeps the old time."""
    if isinstance(status, bool):
        status = "True" if status else "False"
    # Plain strings in the stored status (the contract's enums are str subclasses; YAML dumpers
    # and equality with what the API server returns both want plain str).
    type_, reason = str(type_), str(reason)
    if status not in ("True", "False", "Unknown"):
        raise ValueError(f"condition status must be True, False or Unknown (got {status!r})")
    out = copy.deepcopy(list(conditions or []))
    new: dict[str, Any] = {"type": type_, "status": status, "reason": reason, "message": message,
                           "lastTransitionTime": now}
    if observed_generation is not None:
        new["observedGeneration"] = observed_generation
    for i, c in enumerate(out):
        if c.get("type") == type_:
            if c.get("status") == status and c.get("lastTransitionTime"):
                new["lastTransitionTime"] = c["lastTransitionTime"]
            out[i] = new
            return out
    out.append(new)
    return out


def is_true(conditions: Optional[list[dict[str, Any]]], type_: str) -> bool:
    c = get_condition(conditions, type_)
    return c is not None and c.get("status") == "True"
