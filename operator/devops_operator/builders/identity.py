"""The identity of one run's pods: a ServiceAccount, a Role and a RoleBinding per run.

    from devops_operator.builders.identity import build_identity, identity_name
    sa, role, binding = build_identity(sft_run, OperatorConfig())

Why one per run: a workload pod reports its progress by patching its run's status. With one
ServiceAccount shared by every workload, any pod (any run's code, any Python package it imports)
could patch *every* run's status: mark another run Succeeded with an artifact of its choice, or
forge an EvalRun's scores to open a ChatDeployment's gate. Here the Role grants exactly
``get``/``patch`` on ``<plural>/status`` of this one run (``resourceNames``), nothing else; a pod of
run A asking for run B's status gets 403 from the API server.

All three objects share one name, ``<run>-<stage>-worker`` (``sft-v2-sft-worker``,
``ev-eval-worker``), cut to 63 characters with a hash by :func:`naming.child_name`: the stage
keeps a PretrainRun and an SFTRun of the same name apart. They are owned by the run, so the
garbage collector deletes them with it.

Kubernetes' RBAC escalation check lets the operator create this Role only because it holds the
same permission itself (get/patch on the kinds' status); it needs no ``escalate`` or ``bind`` verb.
Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

from devops_model.api import GROUP, Resource

from ..config import OperatorConfig
from ..naming import PLURALS, STAGES, child_metadata, child_name, run_labels

RBAC_API = "rbac.authorization.k8s.io/v1"
COMPONENT = "identity"
#: What a worker does with its own run: read it back and merge-patch ``status.progress``.
VERBS = ["get", "patch"]


def identity_name(resource: Resource) -> str:
    """``<run>-<stage>-worker``: unique per kind and run, at most 63 characters."""
    return child_name(resource.metadata.name, f"{STAGES[resource.kind]}-worker")


def identity_rules(resource: Resource) -> list[dict[str, Any]]:
    """get/patch on this run's status subresource and nothing else."""
    return [{
        "apiGroups": [GROUP],
        "resources": [f"{PLURALS[resource.kind]}/status"],
        "resourceNames": [resource.metadata.name],
        "verbs": list(VERBS),
    }]


def build_service_account(resource: Resource, config: OperatorConfig) -> dict[str, Any]:
    meta = child_metadata(resource, identity_name(resource), run_labels(resource, COMPONENT))
    if config.workloads.service_account_annotations:
        # e.g. eks.amazonaws.com/role-arn (IRSA) or iam.gke.io/gcp-service-account: cloud storage access.
        meta["annotations"] = dict(sorted(config.workloads.service_account_annotations.items()))
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta}


def build_role(resource: Resource) -> dict[str, Any]:
    return {"apiVersion": RBAC_API, "kind": "Role",
            "metadata": child_metadata(resource, identity_name(resource), run_labels(resource, COMPONENT)),
            "rules": identity_rules(resource)}


def build_role_binding(resource: Resource) -> dict[str, Any]:
    name = identity_name(resource)
    meta = child_metadata(resource, name, run_labels(resource, COMPONENT))
    return {"apiVersion": RBAC_API, "kind": "RoleBinding", "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": meta["namespace"]}]}


def build_identity(resource: Resource, config: OperatorConfig) -> list[dict[str, Any]]:
    """ServiceAccount, Role, RoleBinding, in the order they must be created (a pod cannot start
    before its ServiceAccount exists)."""
    return [build_service_account(resource, config), build_role(resource), build_role_binding(resource)]
