"""Conditions per the Kubernetes API conventions: a list keyed by ``type``, one-word CamelCase
reasons (named constants below), a human message, ``lastTransitionTime`` that changes only when
the status flips, and ``observedGeneration``.

Pure functions: the caller passes ``now``.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

# ---------------------------------------------------------------- types
SUCCEEDED = "Succeeded"   # runs: True when done, False with the failure reason
READY = "Ready"           # ChatDeployment: serving
RUNNING = "Running"       # the child is running (False with Pending/Restarting/... while not)
PARENT_READY = "ParentReady"  # fromRun resolved
STALLED = "Stalled"       # no progress for failurePolicy.stallTimeout

# ---------------------------------------------------------------- reasons
WAITING_FOR_PARENT = "WaitingForParent"
PARENT_FAILED = "ParentFailed"
PARENT_SUCCEEDED = "ParentSucceeded"
RESOLVED = "Resolved"
PENDING = "Pending"
CREATED = "ChildCreated"
RUNNING_REASON = "Running"
SUCCEEDED_REASON = "Succeeded"
FAILED = "Failed"
COMPLETED = "Completed"
UNSCHEDULABLE = "Unschedulable"
IMAGE_PULL_BACKOFF = "ImagePullBackOff"
OOM_KILLED = "OOMKilled"
CRASH_LOOP_BACKOFF = "CrashLoopBackOff"
NCCL_TIMEOUT = "NCCLTimeout"
STALLED_REASON = "Stalled"
PROGRESSING = "Progressing"
BAD_DATA = "BadData"
PREEMPTED = "Preempted"
RESTARTING = "Restarting"
RESTARTS_EXHAUSTED = "RestartsExhausted"
NO_ARTIFACT = "NoArtifact"
SPEC_CHANGED = "SpecChangedAfterStart"
INVALID_SPEC = "InvalidSpec"
AVAILABLE = "Available"
DEPLOYING = "Deploying"
DEGRADED = "Degraded"
SCALED_TO_ZERO = "ScaledToZero"
GATE_NOT_MET = "GateNotMet"
WAITING_FOR_GATE = "WaitingForGate"

TERMINAL_STATES = ("Succeeded", "Failed")


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
    if status not in ("True", "False", "Unknown"):
        raise ValueError(f"condition status must be True, False or Unknown (got {status!r})")
    out = copy.deepcopy(list(conditions or []))
    new = {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": now}
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
    return bool(c) and c.get("status") == "True"
