"""The typed API: valid resources parse, bad ones are refused with the field path, CRDs are
generated (and committed) from the types, and the CLI prints exactly the committed files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from devops_model.api import KINDS
from devops_model.api.base import ApiModel
from devops_model.api.crdgen import build_crd, crd_files
from devops_model.api.resource import InvalidResource, load_documents, parse_resource
from tests.api.api_cases import BAD_CASES, BASE, bad_resource, base

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("kind", sorted(BASE))
def test_base_resources_are_valid(kind):
    res = parse_resource(base(kind))
    assert res.kind == kind
    # defaults are applied on the Python side too
    assert res.to_dict()["spec"]


def _examples():
    return sorted((ROOT / "examples").rglob("*.yaml"))


def test_examples_exist_for_every_kind():
    kinds = {doc["kind"] for p in _examples() for doc in load_documents(p) if isinstance(doc, dict)}
    assert set(KINDS) <= kinds, f"examples/ lacks {set(KINDS) - kinds}"


@pytest.mark.parametrize("path", _examples(), ids=lambda p: str(p.relative_to(ROOT)))
def test_example_resources_validate(path):
    docs = load_documents(path)
    assert docs, f"{path} holds no resource"
    # examples/kind/ also holds the plain Kubernetes objects a chain needs (Namespace, PVC, Job, Secret).
    ours = [d for d in docs if str(d.get("apiVersion", "")).startswith("devops-model.io/")]
    assert ours or path.parts[-3:-1] == ("kind", "setup"), f"{path} holds no devops-model.io resource"
    for doc in ours:
        parse_resource(doc, str(path))


def test_at_least_30_bad_cases_across_all_kinds():
    assert len(BAD_CASES) >= 30
    assert {c[1] for c in BAD_CASES} == set(KINDS)
    assert len({c[0] for c in BAD_CASES}) == len(BAD_CASES), "case ids must be unique"


@pytest.mark.parametrize("case", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_resource_is_refused_with_field_path(case):
    obj = bad_resource(case)
    with pytest.raises(InvalidResource) as info:
        parse_resource(obj)
    paths = [e.path for e in info.value.errors]
    field = case[3]
    assert any(p == field or p.startswith(field + ".") or p.startswith(field + "[") for p in paths), (
        f"expected an error at {field}, got {paths}: {info.value}"
    )


def test_error_message_names_field_value_and_fix():
    obj = base("SFTRun")
    obj["spec"]["finetuning"]["lora"]["rank"] = 512
    obj["spec"]["training"]["learnignRate"] = "5e-5"
    with pytest.raises(InvalidResource) as info:
        parse_resource(obj)
    text = str(info.value)
    assert "spec.finetuning.lora.rank: input should be less than or equal to 256 (got 512)" in text
    assert "spec.training.learnignRate: unknown field; did you mean learningRate?" in text


def test_unknown_kind_suggests_the_closest():
    obj = base("SFTRun")
    obj["kind"] = "SftRun"
    with pytest.raises(InvalidResource, match="did you mean SFTRun"):
        parse_resource(obj)


def test_bad_metadata_name():
    obj = base("EvalRun")
    obj["metadata"]["name"] = "Bad_Name"
    with pytest.raises(InvalidResource, match="metadata.name: must be a DNS label"):
        parse_resource(obj)


# ----------------------------------------------------------------------------- CRDs


def test_crds_are_committed_and_up_to_date():
    files = crd_files()
    committed = {p.name: p.read_text() for p in (ROOT / "crds").glob("*.yaml")}
    assert set(files) == set(committed), "crds/ has extra or missing files: run devops-model crds --write crds/"
    for name, text in files.items():
        assert committed[name] == text, f"crds/{name} drifted from the types: run devops-model crds --write crds/"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_crd_shape(kind):
    info = KINDS[kind]
    crd = build_crd(info)
    names = crd["spec"]["names"]
    assert names["shortNames"] == [info.short_name]
    assert names["categories"] == ["devops-model"]
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    cols = [c["name"] for c in version["additionalPrinterColumns"]]
    assert cols[0] == "State" and cols[-1] == "Age"
    schema = version["schema"]["openAPIV3Schema"]
    # every spec field is described (kubectl explain)
    missing = []

    def walk(node, path):
        for key, sub in node.get("properties", {}).items():
            if "description" not in sub:
                missing.append(f"{path}.{key}")
            walk(sub, f"{path}.{key}")
        if "items" in node:
            walk(node["items"], path + "[*]")

    walk(schema["properties"]["spec"], "spec")
    assert not missing, f"fields without description: {missing}"
    # structural: no $ref, no anyOf, no preserve-unknown-fields in spec
    text = yaml.safe_dump(schema["properties"]["spec"])
    assert "$ref" not in text and "anyOf" not in text and "x-kubernetes-preserve-unknown-fields" not in text
    conds = schema["properties"]["status"]["properties"]["conditions"]
    assert conds["x-kubernetes-list-type"] == "map" and conds["x-kubernetes-list-map-keys"] == ["type"]


def test_every_rule_has_a_cel_and_a_python_half():
    seen = set()
    stack = [info.model for info in KINDS.values()]
    while stack:
        model = stack.pop()
        if model in seen:
            continue
        seen.add(model)
        for rule in getattr(model, "rules", ()):
            assert rule.cel and rule.message
            assert rule.transition or rule.check is not None, f"{model.__name__}: {rule.cel} has no local check"
        for field in model.model_fields.values():
            import typing

            todo = [field.annotation]
            while todo:
                ann = todo.pop()
                if isinstance(ann, type) and issubclass(ann, ApiModel):
                    stack.append(ann)
                todo.extend(typing.get_args(ann))
    assert len(seen) > 20


# ----------------------------------------------------------------------------- CLI


def _cli(*args, **kw):
    return subprocess.run([str(ROOT / ".venv" / "bin" / "devops-model"), *args], capture_output=True, text=True, **kw)


def test_cli_help_lists_subcommands():
    out = _cli("--help")
    assert out.returncode == 0
    for cmd in ("crds", "render", "run", "validate", "dev"):
        assert f"    {cmd} " in out.stdout or f"    {cmd}\n" in out.stdout, out.stdout


def test_cli_crds_equals_committed_files():
    out = _cli("crds")
    assert out.returncode == 0
    committed = "---\n".join((ROOT / "crds" / n).read_text() for n in sorted(p.name for p in (ROOT / "crds").glob("*.yaml")))
    assert out.stdout == committed
    assert len([d for d in yaml.safe_load_all(out.stdout) if d]) == 5


def test_cli_validate_reports_field_paths(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(base("QuantizeRun")))
    bad = tmp_path / "bad.yaml"
    obj = base("QuantizeRun")
    obj["spec"]["bits"] = 5
    bad.write_text(yaml.safe_dump(obj))
    assert _cli("validate", "-f", str(good)).returncode == 0
    out = _cli("validate", "-f", str(bad))
    assert out.returncode == 1
    assert "spec.bits: bits must be 3, 4 or 8" in out.stderr


def test_cli_run_refuses_bad_file_before_running(tmp_path):
    obj = base("SFTRun")
    obj["spec"]["finetuning"]["type"] = "full"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(obj))
    out = _cli("run", "-f", str(bad))
    assert out.returncode == 3
    assert "spec.finetuning.lora: lora settings are only allowed with type: lora" in out.stderr


def test_api_reference_is_up_to_date():
    from devops_model.api.reference import render_reference

    assert (ROOT / "docs" / "api.md").read_text() == render_reference(), "run make crds (regenerates docs/api.md)"
