"""Deterministic names, labels and owner references of the children the operator creates.

A child's name is derived from its owner only (``<run>-<suffix>``), never from a timestamp or a
random suffix: re-running a handler after a crash finds the same child instead of creating a
second one. Kubernetes names of most objects are DNS labels of at most 63 characters; a longer
name keeps its start, and a short hash of the full name replaces the cut tail so that two long
names that differ only at the end still get different children.
"""

from __future__ import annotations

import hashlib
from typing import Any

from devops_model.api import API_VERSION, Resource
from devops_model.contract import CONTROLLER

MAX_NAME = 63
GROUP_LABEL = "devops-model.io"

#: kind -> stage label value (what the run does in the life cycle).
STAGES = {
    "PretrainRun": "pretrain",
    "SFTRun": "sft",
    "EvalRun": "eval",
    "QuantizeRun": "quantize",
    "ChatDeployment": "chat",
}

PLURALS = {
    "PretrainRun": "pretrainruns",
    "SFTRun": "sftruns",
    "EvalRun": "evalruns",
    "QuantizeRun": "quantizeruns",
    "ChatDeployment": "chatdeployments",
}

RUN_LABEL = f"{GROUP_LABEL}/run"
KIND_LABEL = f"{GROUP_LABEL}/kind"
STAGE_LABEL = f"{GROUP_LABEL}/stage"
ROLE_LABEL = f"{GROUP_LABEL}/role"
ATTEMPT_LABEL = f"{GROUP_LABEL}/attempt"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


def short_hash(text: str, n: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def child_name(base: str, suffix: str = "", max_len: int = MAX_NAME) -> str:
    """``base-suffix`` when it fits in ``max_len``; else the cut base, a hash of the full name and
    the suffix (``a-very-long-run-na-1f3a9c2e-train``). The suffix survives so that the kind of
    child stays readable in ``kubectl get``."""
    full = f"{base}-{suffix}" if suffix else base
    if len(full) <= max_len:
        return full
    tail = f"-{short_hash(full)}" + (f"-{suffix}" if suffix else "")
    head = base[: max_len - len(tail)].rstrip("-")
    return head + tail


def service_name(base: str) -> str:
    """Service names are DNS-1035 labels: they must start with a letter."""
    name = child_name(base)
    return name if name[0].isalpha() else child_name(f"chat-{base}")


def run_labels(resource: Resource, component: str) -> dict[str, str]:
    """The labels every child of ``resource`` carries: the standard app.kubernetes.io/* set and
    the project's own (which run, which kind, which stage)."""
    name = resource.metadata.name
    return {
        "app.kubernetes.io/name": "devops-model",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "devops-model",
        "app.kubernetes.io/managed-by": CONTROLLER,
        RUN_LABEL: name,
        KIND_LABEL: resource.kind,
        STAGE_LABEL: STAGES[resource.kind],
    }


def selector_labels(resource: Resource) -> dict[str, str]:
    """The subset of labels that selects a run's pods (stable across spec changes)."""
    return {RUN_LABEL: resource.metadata.name, KIND_LABEL: resource.kind}


def child_metadata(resource: Resource, name: str, labels: dict[str, str]) -> dict[str, Any]:
    """metadata of a child: its name, the owner's namespace, labels, and the owner reference."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace_of(resource), "labels": labels}
    owners = owner_references(resource)
    if owners:
        meta["ownerReferences"] = owners
    return meta


def owner_references(resource: Resource) -> list[dict[str, Any]]:
    """Owner reference to the resource (garbage collection deletes the children with it).
    Empty when the resource has no uid yet (``devops-model render`` without a cluster)."""
    uid = resource.metadata.uid
    if not uid:
        return []
    return [{
        "apiVersion": API_VERSION,
        "kind": resource.kind,
        "name": resource.metadata.name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }]


def owner_path(resource: Resource) -> str:
    """``plural/namespace/name``: the DEVOPS_MODEL_OWNER a worker patches its progress into."""
    return f"{PLURALS[resource.kind]}/{namespace_of(resource)}/{resource.metadata.name}"


def namespace_of(resource: Resource) -> str:
    return resource.metadata.namespace or "default"
