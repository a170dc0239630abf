"""The test control plane itself: a real kube-apiserver (RBAC on), etcd and kube-controller-manager.

These use the `control_plane` and `k8s_namespace` fixtures of tests/plugins/cluster.py. They fail (never
skip) when the binaries are missing: run `make cluster-build`.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KUBEFLOW_CRDS = [
    "pytorchjobs.kubeflow.org",
    "trainjobs.trainer.kubeflow.org",
    "trainingruntimes.trainer.kubeflow.org",
    "clustertrainingruntimes.trainer.kubeflow.org",
]


def test_readyz_ok(control_plane):
    r = control_plane.kubectl("get", "--raw", "/readyz")
    assert r.stdout.strip() == "ok"
    version = json.loads(control_plane.kubectl("version", "-o", "json").stdout)["serverVersion"]
    assert version["gitVersion"].startswith("v1."), version


def test_only_loopback(control_plane):
    assert control_plane.server.startswith("https://127.0.0.1:")


def test_anonymous_requests_are_rejected(control_plane):
    """Authentication is real: without credentials the server answers 401."""
    import ssl
    import urllib.error
    import urllib.request

    ctx = ssl.create_default_context(cafile=str(control_plane.ca_file))
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(control_plane.server + "/api/v1/namespaces", context=ctx, timeout=10)
    assert e.value.code == 401


@pytest.mark.parametrize("crd", KUBEFLOW_CRDS)
def test_kubeflow_crd_established(control_plane, crd):
    assert control_plane.crd_established(crd), f"{crd} is not Established"


def test_pytorchjob_accepted(control_plane, k8s_namespace):
    """The PyTorchJob schema from the training-operator module is served: a minimal job is stored."""
    job = {
        "apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
        "metadata": {"name": "smoke", "namespace": k8s_namespace},
        "spec": {"pytorchReplicaSpecs": {"Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": {
            "spec": {"containers": [{"name": "pytorch", "image": "busybox", "command": ["true"]}]}}}}},
    }
    control_plane.apply(job)
    got = control_plane.get("pytorchjob", "smoke", k8s_namespace)
    assert got["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] == 1


def test_project_crds_established(control_plane):
    """Every CRD in crds/ was accepted by the real server (schemas, CEL cost) and reached Established."""
    files = sorted((REPO / "crds").glob("*.y*ml"))
    assert len(files) == 5, "crds/ must hold the five generated CRDs (devops-model crds --write crds/)"
    names = []
    for f in files:
        out = control_plane.kubectl("apply", "--server-side", "--force-conflicts", "--dry-run=server",
                                    "-f", str(f), "-o", "json").stdout
        doc = json.loads(out)
        for item in doc.get("items", [doc]):
            if item.get("kind") == "CustomResourceDefinition":
                names.append(item["metadata"]["name"])
    assert names, f"no CustomResourceDefinition in {', '.join(map(str, files))}"
    for name in names:
        assert control_plane.crd_established(name), f"{name} is not Established"


def test_garbage_collection_removes_owned_children(control_plane, k8s_namespace):
    ns = k8s_namespace
    control_plane.apply({"apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": {"name": "owner", "namespace": ns}, "data": {"role": "owner"}})
    owner = control_plane.get("configmap", "owner", ns)
    child = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "child", "namespace": ns, "ownerReferences": [{
            "apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"],
            "controller": True, "blockOwnerDeletion": True}]},
        "data": {"role": "child"},
    }
    control_plane.apply(child)
    assert control_plane.get("configmap", "child", ns) is not None
    control_plane.delete("configmap", "owner", ns)
    control_plane.wait_for(
        lambda: control_plane.get("configmap", "child", ns) is None, timeout=90,
        message=lambda: f"the garbage collector to delete configmap {ns}/child after its owner was deleted "
                        f"(kube-controller-manager log:\n{control_plane.log_tail('kube-controller-manager', 20)})")


def test_foreground_deletion_waits_for_children(control_plane, k8s_namespace):
    """blockOwnerDeletion is honoured: a foreground delete of the owner completes only after the child is gone."""
    ns = k8s_namespace
    control_plane.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner", "namespace": ns}})
    uid = control_plane.get("configmap", "owner", ns)["metadata"]["uid"]
    control_plane.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
        "name": "child", "namespace": ns, "ownerReferences": [{
            "apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid, "blockOwnerDeletion": True}]}})
    control_plane.kubectl("delete", "configmap", "owner", "-n", ns, "--cascade=foreground", "--wait=false")
    control_plane.wait_for(
        lambda: control_plane.get("configmap", "owner", ns) is None and control_plane.get("configmap", "child", ns) is None,
        timeout=90, message=f"foreground deletion of configmap {ns}/owner and its child")


def test_job_controller_runs(control_plane, k8s_namespace):
    """The Job controller is on: it creates the Job's pod (which never runs: there is no kubelet)."""
    ns = k8s_namespace
    control_plane.apply({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "namespace": ns},
                         "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [
                             {"name": "c", "image": "busybox", "command": ["true"]}]}}}})

    def pods():
        return (control_plane.get("pods", namespace=ns) or {}).get("items", [])

    created = control_plane.wait_for(pods, timeout=90, message=f"the Job controller to create a pod in {ns}")
    assert created[0]["metadata"]["ownerReferences"][0]["kind"] == "Job"


def test_rbac_is_enforced(control_plane, k8s_namespace):
    ns = k8s_namespace
    kc = control_plane.service_account_kubeconfig(ns, "reader")
    denied = control_plane.kubectl("get", "pods", "-n", ns, kubeconfig=kc, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower(), denied.stderr
    assert f"system:serviceaccount:{ns}:reader" in denied.stderr, denied.stderr

    control_plane.kubectl("create", "role", "pod-reader", "-n", ns, "--verb=get,list,watch", "--resource=pods")
    control_plane.kubectl("create", "rolebinding", "reader-pods", "-n", ns, "--role=pod-reader",
                          f"--serviceaccount={ns}:reader")
    control_plane.wait_for(
        lambda: control_plane.kubectl("get", "pods", "-n", ns, kubeconfig=kc, check=False).returncode == 0,
        timeout=30, message=f"serviceaccount {ns}:reader to be allowed to list pods after the RoleBinding")
    # ...and nothing more than the binding grants.
    assert not control_plane.can_i("list", "pods", "kube-system", kubeconfig=kc)
    assert not control_plane.can_i("create", "pods", ns, kubeconfig=kc)
    assert control_plane.can_i("list", "pods", ns, kubeconfig=kc)


def test_helm_is_available(control_plane):
    r = control_plane.helm("version", "--short")
    assert r.stdout.strip().startswith("v3."), r.stdout
