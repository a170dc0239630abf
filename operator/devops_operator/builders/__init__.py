"""Pure builders: a typed resource (+ the operator's configuration) -> the child manifests.

    from devops_operator.builders import render_children
    children = render_children(sft_run, OperatorConfig(), resolved_model="pvc://models/pt/final")

No I/O, no clock, no randomness: the same input renders the same manifests (golden-tested in
``tests/operator/test_builders.py``), so re-running a handler is harmless. ``devops-model render -f FILE``
prints what these functions return.

Children per kind:

| kind | children |
|---|---|
| PretrainRun, SFTRun | ConfigMap ``<run>-spec`` + identity + PyTorchJob / TrainJob / Job ``<run>-train`` |
| EvalRun | ConfigMap + identity + Job ``<run>-eval`` |
| QuantizeRun | ConfigMap + identity + Job ``<run>-quantize`` |
| ChatDeployment | ConfigMap + Deployment ``<run>`` + Service ``<run>`` (+ NetworkPolicy ``<run>-ingress``) |

The identity (:mod:`.identity`) is the run's own ServiceAccount, Role and RoleBinding
``<run>-<stage>-worker``: its pods may get/patch that run's status and nothing else. Chat pods get no
token at all. The workload comes last: the reconciler reads the last child as the one that runs.
"""

from __future__ import annotations

from typing import Any

from devops_model.api import Resource
from devops_model.api.chat import ChatDeployment

from ..config import OperatorConfig
from .chat import build_deployment, build_network_policy, build_service, config_hash
from .configmap import build_spec_configmap, parent_document
from .identity import build_identity, identity_name
from .pods import pvc_claims
from .training import build_job, build_pytorchjob, build_trainjob, build_workload, workload_child_name

__all__ = [
    "render_children", "render_spec_configmap", "SpecRefused", "check_allowed", "build_workload", "build_pytorchjob", "build_trainjob",
    "build_job", "workload_child_name", "unresolved_placeholder", "build_identity", "identity_name",
]


class SpecRefused(ValueError):
    """The spec asks for something the operator's configuration does not allow (an image outside
    ``images.allowed``); the run fails with reason InvalidSpec and no child is created."""


def check_allowed(resource: Resource, config: OperatorConfig) -> None:
    """Raise :class:`SpecRefused` naming the field when the resource names an image the operator's
    configuration does not allow."""
    spec = resource.spec
    engine = getattr(spec, "engine", None)
    field, image = ("spec.engine.image", engine.image) if engine is not None else ("spec.image", getattr(spec, "image", None))
    refusal = config.images.refusal(image) if image else None
    if refusal:
        raise SpecRefused(f"{field}: {refusal}")


def unresolved_placeholder(resource: Resource) -> str:
    ref = resource.spec.model.from_run
    return f"<fromRun {ref.kind}/{ref.name}: resolved by the operator once it has succeeded>"


def _model_uri(resource: Resource, resolved_model: str | None) -> str | None:
    model = getattr(resource.spec, "model", None)
    if model is None:
        return None
    return resolved_model or model.uri


def render_spec_configmap(resource: Resource, *, resolved_model: str | None = None, parent: dict[str, Any] | None = None,
                          lineage: dict[str, Any] | None = None) -> dict[str, Any]:
    return build_spec_configmap(
        resource,
        resolved_model=resolved_model,
        parent=parent_document(parent) if parent is not None else None,
        lineage=lineage,
    )


def render_children(resource: Resource, config: OperatorConfig | None = None, *, resolved_model: str | None = None,
                    parent: dict[str, Any] | None = None, artifact_format: str | None = None,
                    lineage: dict[str, Any] | None = None, attempt: int = 0) -> list[dict[str, Any]]:
    """Every child of ``resource``, ConfigMap first.

    ``resolved_model``: the URI ``spec.model.fromRun`` resolved to (the parent's artifact);
    ``parent``: the parent resource with its status (written as parent.yaml);
    ``artifact_format``: the parent's artifact format (GPTQ models need engine flags);
    ``lineage``: the chat's lineage file; ``attempt``: restart number (child name suffix -rN).
    Without a cluster (``devops-model render``) an unresolved fromRun renders a placeholder URI.
    Raises :class:`SpecRefused` when the spec names an image the configuration does not allow.
    """
    config = config or OperatorConfig()
    check_allowed(resource, config)
    model_uri = _model_uri(resource, resolved_model)
    if model_uri is None and getattr(resource.spec, "model", None) is not None:
        model_uri = unresolved_placeholder(resource)
    cm = render_spec_configmap(resource, resolved_model=resolved_model, parent=parent,
                               lineage=lineage if resource.kind == "ChatDeployment" else None)
    parent_artifact = ((parent or {}).get("status") or {}).get("artifact")
    claims = pvc_claims(resource.spec.to_dict(), resolved_model, parent_artifact)
    if isinstance(resource, ChatDeployment):
        if lineage is None:
            # The built-in server reads the lineage file; keep the key present for a stable mount.
            cm["data"]["lineage.json"] = "{}\n"
        assert model_uri is not None  # a ChatDeployment always names a model (URI or fromRun)
        children = [
            cm,
            build_deployment(resource, config, model_uri=model_uri, claims=claims,
                             artifact_format=artifact_format, config_hash=config_hash(cm),
                             artifact=parent_artifact),
            build_service(resource, config),
        ]
        if resource.spec.network_policy == "namespace":
            children.append(build_network_policy(resource))
        return children
    return [cm, *build_identity(resource, config), build_workload(resource, config, claims, attempt)]
