"""Generate ``docs/api.md``, the reference of the five kinds, from the same schema as the CRDs.

    devops-model crds --docs docs/api.md

A test fails when the committed file drifts from the types.
"""

from __future__ import annotations

import json
from typing import Any

from ..uris import URI_HELP
from . import API_VERSION, KINDS
from .common import MAX_NAME_LENGTH
from .crdgen import build_crd

_NAME_WHY = {
    "PretrainRun": "35 + `-train-r100` + JobSet's `-node-0-511-abcde` (TrainJob) = 63; PyTorchJob's `-worker-511` fits too",
    "SFTRun": "as PretrainRun",
    "EvalRun": "its Job is cut with a hash when needed; the name is a label value",
    "QuantizeRun": "as EvalRun",
    "ChatDeployment": "the Service and Deployment carry the name itself",
}


def _type(node: dict[str, Any]) -> str:
    t = node.get("type", "object")
    if "enum" in node:
        return " \\| ".join(f"`{v}`" for v in node["enum"])
    if t == "array":
        return f"list of {_type(node['items'])}"
    if t == "object" and isinstance(node.get("additionalProperties"), dict):
        return "map of string"
    return str(t)


def _limits(node: dict[str, Any]) -> str:
    bits = []
    for key, label in (("minimum", "≥"), ("maximum", "≤"), ("minItems", "items ≥"), ("maxItems", "items ≤"),
                       ("maxLength", "length ≤")):
        if key in node:
            bits.append(f"{label} {node[key]}")
    if "pattern" in node:
        bits.append("pattern `" + node["pattern"].replace("|", "\\|") + "`")
    return ", ".join(bits)


def _rows(node: dict[str, Any], path: str, required: set[str], out: list[str]) -> None:
    for key, sub in node.get("properties", {}).items():
        p = f"{path}.{key}"
        default = f"`{json.dumps(sub['default'])}`" if "default" in sub else ""
        req = "yes" if key in required else ""
        desc = sub.get("description", "").replace("|", "\\|")
        rules = "; ".join(f"rule: {r['message']}" for r in sub.get("x-kubernetes-validations", []))
        limits = _limits(sub)
        extra = " ".join(x for x in (limits and f"({limits})", rules) if x)
        out.append(f"| `{p}` | {_type(sub)} | {req} | {default} | {desc} {extra} |".replace("  ", " "))
        if sub.get("type") == "object":
            _rows(sub, p, set(sub.get("required", [])), out)
        elif sub.get("type") == "array" and sub["items"].get("type") == "object":
            _rows(sub["items"], p + "[]", set(sub["items"].get("required", [])), out)


def render_reference() -> str:
    lines = [
        "# API reference (`devops-model.io/v1alpha1`)",
        "",
        "Generated from `devops_model/api` by `devops-model crds --docs docs/api.md`; do not edit.",
        "The same text is available in a cluster with `kubectl explain <kind>.spec`.",
        "",
        "## Names, URIs and numbers (all kinds)",
        "",
        "- **Names** start with a lowercase letter and hold lowercase letters, digits and `-` (a DNS-1035 label, "
        "as Kubeflow's jobs and Services require). The longest name per kind keeps every child the operator "
        "creates, and every name Kubeflow derives from it, within 63 characters:",
        "",
        "  | kind | longest name | why |",
        "  |---|---|---|",
        *[f"  | {k} | {n} | {_NAME_WHY[k]} |" for k, n in MAX_NAME_LENGTH.items()],
        "",
        f"- **URIs**: {URI_HELP}. No path segment may be `.` or `..` and none may be empty (`a//b`; one "
        "trailing `/` is fine), so a URI cannot leave its claim, bucket or root; claim names are DNS-1123 labels; "
        "hub repositories are `ORG/NAME[@REVISION]`. `file://` is refused by the API server: it is for "
        "`devops-model run` on one machine (`devops-model validate --local` accepts it).",
        "- **Numbers that are not integers are strings** (`learningRate: \"5e-5\"`), with at most two exponent "
        "digits, so every value is finite; each field states its range. An unquoted `5e-5` is a number in YAML "
        "and is refused, locally as by the server, with the hint to quote it. Integers and booleans are not "
        "strings: `maxSteps: \"100\"` is refused.",
        "- Files are read as kubectl reads them (go-yaml v2: `yes`/`no`/`on`/`off` are booleans, `0755` is octal), "
        "so `devops-model validate` gives the server's answer before `kubectl apply`.",
        "",
    ]
    for info in KINDS.values():
        crd = build_crd(info)
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        lines += [
            f"## {info.kind} (`{info.short_name}`)",
            "",
            " ".join(schema.get("description", "").split()),
            "",
            f"`apiVersion: {API_VERSION}`, `kind: {info.kind}`; `kubectl get {info.short_name}` shows "
            + ", ".join(c.name for c in info.columns) + ".",
            "",
        ]
        for r in schema.get("x-kubernetes-validations", []):
            lines.append(f"- Rule: {r['message']}")
        lines += ["", "| field | type | required | default | description |", "|---|---|---|---|---|"]
        rows: list[str] = []
        spec = schema["properties"]["spec"]
        for r in spec.get("x-kubernetes-validations", []):
            rows.append(f"| `spec` | object | yes | | rule: {r['message']} |")
        _rows(spec, "spec", set(spec.get("required", [])), rows)
        lines += rows
        lines += ["", "<details><summary>status</summary>", "", "| field | type | required | default | description |",
                  "|---|---|---|---|---|"]
        srows: list[str] = []
        _rows(schema["properties"]["status"], "status", set(), srows)
        lines += srows + ["", "</details>", ""]
    return "\n".join(lines) + "\n"
