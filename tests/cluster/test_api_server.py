"""The same API, enforced by a real kube-apiserver: the generated CRDs are accepted (schemas and
the cost of every CEL rule), valid resources are admitted, every bad resource of the shared
table is rejected with a message that names the same field as the local validator (the same
YAML text, applied with kubectl), every valid-but-unusual one is admitted, kubectl reads YAML
scalars exactly as the local loader does, and a run's spec becomes immutable once it has started."""

from __future__ import annotations

import json

import pytest

from devops_model.api import KINDS
from devops_model.yamlio import load_all, to_json_value
from tests.api.api_cases import BAD_CASES, BASE, GOOD_CASES, bad_resource, base, case_yaml, good_resource

pytestmark = pytest.mark.cluster


def test_crds_established(control_plane):
    for info in KINDS.values():
        assert control_plane.crd_established(f"{info.plural}.devops-model.io")


def test_category_lists_all_kinds(control_plane, k8s_namespace):
    for kind in BASE:
        control_plane.apply(base(kind), namespace=k8s_namespace)
    out = control_plane.kubectl("get", "devops-model", "-n", k8s_namespace, "-o", "name").stdout.split()
    assert sorted(o.split("/")[0].split(".")[0] for o in out) == sorted(i.kind.lower() for i in KINDS.values())
    # short names work too
    for info in KINDS.values():
        r = control_plane.kubectl("get", info.short_name, "-n", k8s_namespace)
        assert r.stdout.splitlines()[0].split()[:2] == ["NAME", "STATE"]


@pytest.mark.parametrize("case", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_server_rejects_bad_resource_naming_the_field(control_plane, case):
    r = control_plane.apply(case_yaml(bad_resource(case)), namespace="default", check=False)
    assert r.returncode != 0, f"the API server accepted {case[0]}"
    field = case[3]
    msg = r.stderr
    assert field in msg or field.split("[")[0] in msg, f"server message does not name {field}:\n{msg}"


@pytest.mark.parametrize("case", GOOD_CASES, ids=[c[0] for c in GOOD_CASES])
def test_server_accepts_unusual_resource(control_plane, k8s_namespace, case):
    r = control_plane.apply(case_yaml(good_resource(case)), namespace=k8s_namespace, check=False)
    assert r.returncode == 0, f"the API server refused {case[0]}:\n{r.stderr}"


#: Plain scalars whose meaning differs between YAML readers (PyYAML, YAML 1.2, go-yaml v2).
SCALARS = ["5e-5", "1e999", "1e-400", "yes", "Yes", "NO", "on", "off", "y", "n", "0755", "08", "0o17", "0b11",
           "1_000", "0x1F", "100.0", "1e2", ".5", "+5", "-0", "2026-01-01", "2026-01-01T10:00:00Z", "1:30", "~",
           "null", "", "9223372036854775807", "9223372036854775808", "1.5e+3", "-.5", "._5", "1__0", "0.1e1"]


def test_kubectl_reads_yaml_like_the_local_loader(control_plane, tmp_path):
    """kubectl's own reading of a file (client-side dry run, no server involved in the values)
    equals devops_model.yamlio.load_all, scalar by scalar and for keys, tags and merges."""
    lines = [f"  s{i}: {text}" for i, text in enumerate(SCALARS)]
    text = "\n".join([
        "apiVersion: v1", "kind: ConfigMap", "metadata: {name: yaml-probe, namespace: default}", "data:",
        *lines, "  y: key-y", "  1: key-1", "  tagged: !!str 12", "  custom: !thing 5", "  <<: {merged: 1}",
        "  dup: first", "  dup: last", "",
    ])
    f = tmp_path / "probe.yaml"
    f.write_text(text)
    r = control_plane.kubectl("create", "--dry-run=client", "--validate=false", "-o", "json", "-f", str(f))
    theirs = to_json_value(json.loads(r.stdout)["data"])
    ours = load_all(text)[0]["data"]
    assert set(theirs) == set(ours), (sorted(theirs), sorted(ours))
    # json.dumps tells 100 from 100.0 and "100" from 100.
    diffs = {k: (theirs[k], ours[k]) for k in theirs if json.dumps(theirs[k]) != json.dumps(ours[k])}
    assert not diffs, diffs
    # .inf has no JSON form: kubectl refuses the file, and so does the local loader.
    f.write_text(text.replace("  s0: 5e-5", "  s0: .inf"))
    r = control_plane.kubectl("create", "--dry-run=client", "--validate=false", "-o", "json", "-f", str(f), check=False)
    assert r.returncode != 0 and "unsupported value" in r.stderr, r.stderr
    with pytest.raises(ValueError, match="data.s0"):
        load_all(f.read_text())


def test_spec_immutable_once_started(control_plane, k8s_namespace):
    obj = base("SFTRun")
    control_plane.apply(obj, namespace=k8s_namespace)
    # before the run starts, the spec may still change
    obj["spec"]["training"]["epochs"] = 2
    control_plane.apply(obj, namespace=k8s_namespace)
    # the operator records the start; from then on the spec is frozen
    patch = {"status": {"startTime": "2026-01-01T00:00:00Z"}}
    control_plane.kubectl("patch", "sftrun", "sft", "-n", k8s_namespace, "--subresource=status",
                          "--type=merge", "-p", json.dumps(patch))
    obj["spec"]["training"]["epochs"] = 5
    r = control_plane.apply(obj, namespace=k8s_namespace, check=False)
    assert r.returncode != 0
    assert "spec is immutable once the run has started" in r.stderr


def test_chat_deployment_spec_can_change(control_plane, k8s_namespace):
    obj = base("ChatDeployment")
    control_plane.apply(obj, namespace=k8s_namespace)
    obj["spec"]["replicas"] = 3
    control_plane.apply(obj, namespace=k8s_namespace)
    got = control_plane.get("chatdeployment", "chat", k8s_namespace)
    assert got["spec"]["replicas"] == 3


def _example_files():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "examples"
    # examples/kind/setup holds the cluster's own objects (Namespace, PVC, the tiny-model Job): no run
    return sorted(p for p in root.rglob("*.yaml") if "devops-model.io/" in p.read_text())


@pytest.mark.parametrize("path", _example_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_server_accepts_every_example(control_plane, k8s_namespace, path):
    from devops_model.api.resource import load_documents

    docs = [d for d in load_documents(path) if isinstance(d, dict) and d.get("apiVersion", "").startswith("devops-model.io/")]
    assert docs, f"{path} holds no devops-model.io resource"
    for d in docs:  # an example may name its namespace (examples/kind: ml); here it goes to the test's
        d.get("metadata", {}).pop("namespace", None)
    r = control_plane.apply(docs, namespace=k8s_namespace, check=False)
    assert r.returncode == 0, f"the API server refused {path}:\n{r.stderr}"
