"""Child events: when a Job, PyTorchJob, TrainJob or Deployment of ours changes, reconcile
its owner right away (the timers would notice too, only later). The owner is found from the
child's labels (devops-model.io/kind, devops-model.io/run)."""

from __future__ import annotations

from typing import Any

import kopf

from devops_model.api import API_VERSION
from devops_model.contract import TERMINAL_STATES

from ..naming import KIND_LABEL, RUN_LABEL
from .common import post_events, run_pass
from .resources import MANAGED_BY


def _owner_changed(body: Any, memo: Any, logger: Any, **_: Any) -> None:
    labels = body.get("metadata", {}).get("labels") or {}
    kind, name = labels.get(KIND_LABEL), labels.get(RUN_LABEL)
    ns = body.get("metadata", {}).get("namespace")
    if not kind or not name or not ns:
        return
    meta = body.get("metadata", {})
    if memo.observed.get(f"{body.get('kind')}/{ns}/{meta.get('name')}") == meta.get("resourceVersion"):
        return  # the pass that created or last read this child already saw this version
    owner = memo.kube.get(API_VERSION, kind, ns, name)
    if owner is None or (owner.get("metadata") or {}).get("deletionTimestamp"):
        return
    if (owner.get("status") or {}).get("state") in TERMINAL_STATES and kind != "ChatDeployment":
        return
    outcome = run_pass(owner, memo, logger)  # writes the owner's status
    post_events(owner, outcome)


def register(registry: kopf.OperatorRegistry) -> None:
    # Pods are not watched (kopf filters labels client-side, and a cluster has many pods): each pass
    # reads a run's pods itself, and the Jobs/Deployments change when their pods do.
    for group, version, plural in (("batch", "v1", "jobs"), ("apps", "v1", "deployments"),
                                   ("kubeflow.org", "v1", "pytorchjobs"), ("trainer.kubeflow.org", "v1alpha1", "trainjobs")):
        kopf.on.event(group, version, plural, labels=MANAGED_BY, id=f"child-{plural}", registry=registry)(_owner_changed)
