"""The spec ConfigMap: the resource itself (what ``devops-model run -f`` reads in the pod), the
parent run with its status (``parent.yaml``) and, for chat, the lineage file."""

from __future__ import annotations

import json
from typing import Any

from devops_model.api import Resource
from devops_model.yamlio import dump

from ..naming import child_metadata, namespace_of, run_labels
from .pods import spec_configmap_name


def resource_document(resource: Resource, resolved_model: str | None) -> dict[str, Any]:
    """The resource as the worker sees it: metadata reduced to what is stable (no uid,
    resourceVersion or managedFields, so the ConfigMap does not change when they do), the spec,
    and ``status.resolvedModel`` when ``fromRun`` was resolved by the operator."""
    doc: dict[str, Any] = {
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "metadata": {"name": resource.metadata.name, "namespace": namespace_of(resource)},
        "spec": resource.spec.to_dict(),
    }
    if resolved_model:
        doc["status"] = {"resolvedModel": resolved_model}
    return doc


def build_spec_configmap(resource: Resource, *, resolved_model: str | None = None,
                         parent: dict[str, Any] | None = None,
                         lineage: dict[str, Any] | None = None) -> dict[str, Any]:
    data = {"resource.yaml": dump(resource_document(resource, resolved_model))}
    if parent is not None:
        data["parent.yaml"] = dump(parent)
    if lineage is not None:
        data["lineage.json"] = json.dumps(lineage, indent=2, ensure_ascii=False, sort_keys=True) + "\n"
    meta = child_metadata(resource, spec_configmap_name(resource), run_labels(resource, "spec"))
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}


def parent_document(parent: dict[str, Any]) -> dict[str, Any]:
    """A parent resource reduced to apiVersion/kind/name/spec/status for ``parent.yaml``."""
    meta = parent.get("metadata", {})
    status = {k: v for k, v in (parent.get("status") or {}).items() if k not in ("kopf", "conditions")}
    return {
        "apiVersion": parent.get("apiVersion"),
        "kind": parent.get("kind"),
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace")},
        "spec": parent.get("spec", {}),
        "status": status,
    }
