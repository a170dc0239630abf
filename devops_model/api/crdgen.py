"""Generate the CustomResourceDefinitions in ``crds/`` from the typed models.

The pydantic JSON schema is turned into a Kubernetes *structural* schema: ``$ref``s inlined,
``Optional`` as ``nullable``, titles dropped, descriptions kept (they become ``kubectl explain``
text), each model's :class:`~devops_model.api.base.Rule`s as ``x-kubernetes-validations``, and
``conditions`` as a list-map keyed by ``type``. Every string, list and map in ``spec`` must carry
a bound (the API server estimates the cost of CEL rules from them); the generator refuses a spec
type without one.

Never edit ``crds/`` by hand: run ``devops-model crds --write crds/``; a test fails on drift.
"""

from __future__ import annotations

import copy
from typing import Any, get_args

from pydantic import BaseModel

from ..yamlio import dump

from . import CATEGORY, GROUP, KINDS, VERSION, KindInfo
from .base import ApiModel


class UnboundedField(ValueError):
    pass


def _collect_models(model: type[BaseModel], seen: dict[str, type[BaseModel]]) -> None:
    name = model.__name__
    if name in seen:
        if seen[name] is not model:
            raise ValueError(f"two API types share the name {name}; rename one")
        return
    seen[name] = model
    for field in model.model_fields.values():
        stack = [field.annotation]
        while stack:
            ann = stack.pop()
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                _collect_models(ann, seen)
            stack.extend(get_args(ann))


def _convert(node: Any, defs: dict[str, Any], models: dict[str, type[BaseModel]], path: str) -> dict[str, Any]:
    node = copy.deepcopy(node)
    description = node.pop("description", None)
    default = node.pop("default", None)
    node.pop("title", None)
    # Rules on a field itself (devops_model.api.base.Checked): the server then names that field.
    field_rules = node.pop("x-kubernetes-validations", None)

    if "$ref" in node:
        name = node.pop("$ref").split("/")[-1]
        out = _convert(defs[name], defs, models, path)
        out = _with_rules(out, models.get(name))
    elif "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        nullable = len(options) != len(node["anyOf"])
        if len(options) != 1:
            raise ValueError(f"{path}: unions other than Optional[X] are not supported")
        out = _convert(options[0], defs, models, path)
        if nullable:
            out["nullable"] = True
    elif "const" in node:
        out = {"type": "string", "enum": [node["const"]]}
    elif "enum" in node:
        values = node["enum"]
        out = {"type": "integer" if all(isinstance(v, int) for v in values) else "string", "enum": values}
    elif node.get("type") == "object":
        out = {"type": "object"}
        if "properties" in node:
            props = {}
            for key, sub in node["properties"].items():
                props[key] = _convert(sub, defs, models, f"{path}.{key}")
            out["properties"] = props
            if node.get("required"):
                out["required"] = list(node["required"])
        elif isinstance(node.get("additionalProperties"), dict):
            out["additionalProperties"] = _convert(node["additionalProperties"], defs, models, f"{path}[*]")
            out["maxProperties"] = node.get("maxProperties", 64)
        else:
            out["x-kubernetes-preserve-unknown-fields"] = True
    elif node.get("type") == "array":
        out = {"type": "array", "items": _convert(node["items"], defs, models, f"{path}[*]")}
        for k in ("minItems", "maxItems"):
            if k in node:
                out[k] = node[k]
    elif node.get("type") in ("string", "integer", "number", "boolean"):
        out = {"type": node["type"]}
        for k in ("pattern", "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            if k in node:
                out[k] = node[k]
        if out["type"] == "integer":
            out["format"] = "int64"
    else:
        raise ValueError(f"{path}: cannot map schema {node!r}")

    if field_rules:
        out["x-kubernetes-validations"] = out.get("x-kubernetes-validations", []) + field_rules
    if description:
        out["description"] = " ".join(description.split())
    if default is not None and out.get("type") in ("string", "integer", "boolean") and not isinstance(default, (dict, list)):
        out["default"] = default
    if path.rsplit(".", 1)[-1] == "conditions" and out.get("type") == "array":
        out["x-kubernetes-list-type"] = "map"
        out["x-kubernetes-list-map-keys"] = ["type"]
    return out


def _with_rules(schema: dict[str, Any], model: type[BaseModel] | None) -> dict[str, Any]:
    if model is None or not issubclass(model, ApiModel) or not model.rules:
        if model is not None and model.__doc__ and "description" not in schema:
            schema["description"] = " ".join(model.__doc__.split())
        return schema
    schema["x-kubernetes-validations"] = schema.get("x-kubernetes-validations", []) + [r.to_schema() for r in model.rules]
    return schema


def _check_bounded(schema: dict[str, Any], path: str) -> None:
    """Refuse unbounded strings, lists and maps in spec: the CEL cost estimator needs bounds."""
    t = schema.get("type")
    if t == "string" and "maxLength" not in schema and "enum" not in schema:
        raise UnboundedField(f"{path}: a string in spec needs max_length (CEL cost estimation)")
    if t == "array":
        if "maxItems" not in schema:
            raise UnboundedField(f"{path}: a list in spec needs max_length (CEL cost estimation)")
        _check_bounded(schema["items"], path + "[*]")
    if t == "object":
        for key, sub in schema.get("properties", {}).items():
            _check_bounded(sub, f"{path}.{key}")
        if isinstance(schema.get("additionalProperties"), dict):
            _check_bounded(schema["additionalProperties"], path + "[*]")


def openapi_schema(info: KindInfo) -> dict[str, Any]:
    model = info.model
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    models: dict[str, type[BaseModel]] = {}
    _collect_models(model, models)
    spec = _convert(raw["properties"]["spec"], defs, models, "spec")
    spec.pop("nullable", None)
    _check_bounded(spec, "spec")
    status = _convert(raw["properties"]["status"], defs, models, "status")
    status.pop("nullable", None)
    root: dict[str, Any] = {
        "type": "object",
        "description": " ".join((model.__doc__ or info.description).split()),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "devops-model.io/v1alpha1"},
            "kind": {"type": "string", "description": info.kind},
            # Only metadata.name may be described; it is, so that the name rules can point at it.
            "metadata": {"type": "object", "properties": {"name": {"type": "string"}}},
            "spec": spec,
            "status": status,
        },
    }
    transition_rules = [r.to_schema() for r in model.rules]
    if transition_rules:
        root["x-kubernetes-validations"] = transition_rules
    return root


def build_crd(info: KindInfo) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind, as a dict."""
    columns = []
    for c in info.columns:
        col: dict[str, Any] = {"name": c.name, "type": c.type, "jsonPath": c.json_path}
        if c.description:
            col["description"] = c.description
        if c.priority:
            col["priority"] = c.priority
        columns.append(col)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{info.plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "devops-model"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": info.plural,
                "singular": info.kind.lower(),
                "shortNames": [info.short_name],
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": openapi_schema(info)},
                }
            ],
        },
    }


def crd_files() -> dict[str, str]:
    """File name -> YAML text for every kind, exactly as committed in ``crds/``."""
    header = "# Generated by `devops-model crds --write crds/` from devops_model/api. Do not edit.\n"
    out = {}
    for info in KINDS.values():
        text = dump(build_crd(info))
        out[f"{GROUP}_{info.plural}.yaml"] = header + text
    return out
