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
from devops_model.api.resource import InvalidResource, load_documents, parse_documents, parse_resource
from devops_model.yamlio import dump
from tests.api.api_cases import BAD_CASES, BASE, GOOD_CASES, bad_resource, base, case_yaml, good_resource

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


def test_at_least_100_bad_and_10_unusual_cases_across_all_kinds():
    assert len(BAD_CASES) >= 100 and len(GOOD_CASES) >= 10
    assert {c[1] for c in BAD_CASES} == set(KINDS) and {c[1] for c in GOOD_CASES} == set(KINDS)
    ids = [c[0] for c in BAD_CASES] + [c[0] for c in GOOD_CASES]
    assert len(set(ids)) == len(ids), "case ids must be unique"
    names = [(c[1], bad_resource(c)["metadata"]["name"]) for c in BAD_CASES]
    assert len(set(names)) == len(names), "case names must be unique (the server test applies them all)"


def _names_field(paths: list[str], field: str) -> bool:
    return any(p == field or p.startswith(field + ".") or p.startswith(field + "[") for p in paths)


@pytest.mark.parametrize("case", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_resource_is_refused_with_field_path(case):
    """The YAML text the API server test applies, read and validated here as for the server."""
    text = case_yaml(bad_resource(case))
    with pytest.raises(InvalidResource) as info:
        for doc in parse_documents(text, case[0]):
            parse_resource(doc, case[0], cluster=True)
    paths = [e.path for e in info.value.errors]
    assert _names_field(paths, case[3]), f"expected an error at {case[3]}, got {paths}: {info.value}"


@pytest.mark.parametrize("case", GOOD_CASES, ids=[c[0] for c in GOOD_CASES])
def test_unusual_resource_is_accepted(case):
    for doc in parse_documents(case_yaml(good_resource(case)), case[0]):
        parse_resource(doc, case[0], cluster=True)


def test_cli_validate_refuses_every_bad_case_naming_its_field(tmp_path):
    """One `devops-model validate` over all bad cases: each document gets its own error naming its
    field (and nothing else is reported valid)."""
    docs = "---\n".join(case_yaml(bad_resource(c)) for c in BAD_CASES)
    good = "---\n".join(case_yaml(good_resource(c)) for c in GOOD_CASES)
    (tmp_path / "bad.yaml").write_text(docs)
    (tmp_path / "good.yaml").write_text(good)
    out = _cli("validate", "-f", str(tmp_path / "bad.yaml"))
    assert out.returncode == 1 and "is valid" not in out.stdout, out.stdout
    blocks = {}
    for block in out.stderr.split("error: ")[1:]:
        head = block.split(": invalid resource", 1)[0]
        blocks[head.rsplit("/", 1)[-1]] = block
    missing = []
    for c in BAD_CASES:
        name = bad_resource(c)["metadata"]["name"]
        block = blocks.get(name, "")
        if f"  - {c[3]}" not in block and f"  - {c[3].split('[')[0]}" not in block:
            missing.append((c[0], c[3], block[:300]))
    assert not missing, missing
    ok = _cli("validate", "-f", str(tmp_path / "good.yaml"))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.count("is valid") == len(GOOD_CASES)


@pytest.mark.parametrize("text,field,needle", [
    ("learningRate: 5e-5", "spec.training.learningRate", 'write it as a string: "5e-5"'),
    ("learningRate: 1e-4", "spec.training.learningRate", 'write it as a string: "1e-4"'),
    ("maxSteps: \"100\"", "spec.training.maxSteps", "write it without quotes: 100"),
    ("packing: \"true\"", "spec.training.packing", "write it without quotes: true"),
    ("learningRate: \"1e999\"", "spec.training.learningRate", "exponents have at most 2 digits"),
    ("learningRate: 1e999", "spec.training.learningRate", "exponents have at most 2 digits"),
])
def test_number_hints_name_the_field_and_the_fix(text, field, needle):
    obj = base("SFTRun")
    obj["spec"]["training"] = {"epochs": 3, "RAW": 0}
    doc = case_yaml(obj).replace("RAW: 0", text)
    with pytest.raises(InvalidResource) as info:
        parse_resource(parse_documents(doc)[0], cluster=True)
    errs = [e for e in info.value.errors if e.path == field]
    assert errs and needle in str(errs[0]), str(info.value)


def test_file_uris_are_for_local_runs_only():
    obj = base("PretrainRun")
    obj["spec"]["model"]["uri"] = "file:///data/models/qwen"
    parse_resource(obj)  # devops-model run: fine
    with pytest.raises(InvalidResource, match="file:// URIs are only for runs on this machine"):
        parse_resource(obj, cluster=True)


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


def test_run_name_limits_follow_the_children():
    """The longest PretrainRun/SFTRun name keeps <name>-train-r100 plus Kubeflow's derived names
    (PyTorchJob <job>-worker-511, JobSet <job>-node-0-511-abcde) within 63 characters."""
    from devops_model.api.common import MAX_NAME_LENGTH

    for kind in ("PretrainRun", "SFTRun"):
        job = "x" * MAX_NAME_LENGTH[kind] + "-train-r100"
        assert len(job + "-node-0-511-abcde") <= 63 and len(job + "-worker-511") <= 63
    for kind, limit in MAX_NAME_LENGTH.items():
        obj = base(kind)
        obj["metadata"]["name"] = "a" * limit
        parse_resource(obj)
        obj["metadata"]["name"] = "a" * (limit + 1)
        with pytest.raises(InvalidResource, match=f"have at most {limit} characters"):
            parse_resource(obj)


def test_bad_metadata_name():
    obj = base("EvalRun")
    obj["metadata"]["name"] = "Bad_Name"
    with pytest.raises(InvalidResource, match="metadata.name: must start with a lowercase letter"):
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
    good.write_text(dump(base("QuantizeRun")))
    bad = tmp_path / "bad.yaml"
    obj = base("QuantizeRun")
    obj["spec"]["bits"] = 5
    bad.write_text(dump(obj))
    assert _cli("validate", "-f", str(good)).returncode == 0
    out = _cli("validate", "-f", str(bad))
    assert out.returncode == 1
    assert "spec.bits: bits must be 3, 4 or 8" in out.stderr


def test_cli_run_refuses_bad_file_before_running(tmp_path):
    obj = base("SFTRun")
    obj["spec"]["finetuning"]["type"] = "full"
    bad = tmp_path / "bad.yaml"
    bad.write_text(dump(obj))
    out = _cli("run", "-f", str(bad))
    assert out.returncode == 3
    assert "spec.finetuning.lora: lora settings are only allowed with type: lora" in out.stderr


@pytest.mark.parametrize("command, code", [("validate", 1), ("render", 3), ("run", 3)])
def test_cli_missing_file_is_one_line_not_a_traceback(tmp_path, command, code):
    """validate exits 1 (its problems), render and run 3 (bad input, contract.ExitCode.BAD_INPUT)."""
    out = _cli(command, "-f", "nope.yaml", cwd=tmp_path)
    assert (out.returncode, out.stdout, out.stderr) == (code, "", "error: nope.yaml: no such file\n")
    out = _cli(command, "-f", str(tmp_path), cwd=tmp_path)
    assert (out.returncode, out.stderr) == (code, f"error: {tmp_path}: is a directory, not a YAML file\n")


def test_cli_validate_reports_a_missing_file_and_still_checks_the_others(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(dump(base("QuantizeRun")))
    out = _cli("validate", "-f", "nope.yaml", "-f", str(good), cwd=tmp_path)
    assert out.returncode == 1
    assert out.stderr == "error: nope.yaml: no such file\n"
    assert out.stdout == f"{good}: QuantizeRun/{base('QuantizeRun')['metadata']['name']} is valid\n"


def test_api_reference_is_up_to_date():
    from devops_model.api.reference import render_reference

    assert (ROOT / "docs" / "api.md").read_text() == render_reference(), "run make crds (regenerates docs/api.md)"


def test_cli_render_refuses_an_image_outside_the_allow_list(tmp_path):
    values = tmp_path / "values.yaml"
    values.write_text("operator:\n  config:\n    images:\n      allowed: ['registry.example.com/*']\n")
    res = tmp_path / "eval.yaml"
    res.write_text(yaml.safe_dump({"apiVersion": "devops-model.io/v1alpha1", "kind": "EvalRun", "metadata": {"name": "e"},
                                   "spec": {"model": {"uri": "pvc://m/x"}, "exams": {"uri": "pvc://e/x"},
                                            "image": "evil.io/x:1", "output": "pvc://r/e"}}))
    out = _cli("render", "-f", str(res), "--values", str(values))
    assert out.returncode == 3 and out.stdout == ""
    assert out.stderr.startswith("error: EvalRun/e: spec.image: image 'evil.io/x:1' is not allowed"), out.stderr
    res.write_text(res.read_text().replace("evil.io/x:1", "registry.example.com/x:1"))
    assert _cli("render", "-f", str(res), "--values", str(values)).returncode == 0


def test_metadata_is_typed_and_a_server_round_trip_keeps_every_field():
    from devops_model.api import ObjectMeta

    obj = {**base("SFTRun")}
    obj["metadata"] = {"name": "s", "namespace": "team-a", "uid": "1234", "generation": 3, "labels": {"team": "a"},
                       "resourceVersion": "42", "creationTimestamp": "2026-01-01T00:00:00Z",
                       "managedFields": [{"manager": "kubectl", "operation": "Update"}],
                       "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "9"}]}
    res = parse_resource(obj)
    assert isinstance(res.metadata, ObjectMeta)
    assert (res.metadata.name, res.metadata.namespace, res.metadata.uid, res.metadata.generation) == ("s", "team-a", "1234", 3)
    assert res.metadata.labels == {"team": "a"} and res.metadata.creation_timestamp == "2026-01-01T00:00:00Z"
    assert res.to_dict()["metadata"] == obj["metadata"]  # fields the platform does not read are kept as they came
    with pytest.raises(InvalidResource, match="metadata.labels"):
        parse_resource({**obj, "metadata": {"name": "s", "labels": {"team": 7}}})
