"""The same API, enforced by a real kube-apiserver: the generated CRDs are accepted (schemas and
the cost of every CEL rule), valid resources are admitted, every bad resource of the shared
table is rejected with a message that names the same field as the local validator, and a run's
spec becomes immutable once it has started."""

from __future__ import annotations

import json

import pytest

from devops_model.api import KINDS
from tests.api.api_cases import BAD_CASES, BASE, bad_resource, base

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
    obj = bad_resource(case)
    obj["metadata"]["namespace"] = "default"
    r = control_plane.apply(obj, check=False)
    assert r.returncode != 0, f"the API server accepted {case[0]}"
    field = case[3]
    msg = r.stderr
    assert field in msg or field.replace("[0]", "") in msg, f"server message does not name {field}:\n{msg}"


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
    return sorted(root.rglob("*.yaml"))


@pytest.mark.parametrize("path", _example_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_server_accepts_every_example(control_plane, k8s_namespace, path):
    from devops_model.api.resource import load_documents

    docs = [d for d in load_documents(path) if isinstance(d, dict) and d.get("apiVersion", "").startswith("devops-model.io/")]
    assert docs, f"{path} holds no devops-model.io resource"
    r = control_plane.apply(docs, namespace=k8s_namespace, check=False)
    assert r.returncode == 0, f"the API server refused {path}:\n{r.stderr}"
