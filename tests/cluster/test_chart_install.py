"""The Helm chart on a real control plane (kube-apiserver + etcd + controller-manager, tests/plugins/cluster.py).

    .venv/bin/python -m pytest tests/cluster/test_chart_install.py -q

- `helm install` adopts CRDs that were applied with kubectl (the documented migration), installs the
  release, and `helm upgrade` with a changed CRD (an extra printer column) updates the CRD in place
  while existing runs survive; `helm uninstall` keeps the CRDs and the runs (resource-policy keep).
- The chart's RBAC, bound to real ServiceAccounts, in both modes: the operator cannot read Secrets
  (SelfSubjectAccessReview and a real 403); it can create a run's own identity (the API server's RBAC
  escalation check passes because it holds what the Role grants), and that identity cannot create
  pods, read Secrets, change a spec or touch another run's status, but can patch its own run's status.
- The operator running with exactly the chart's RBAC and the chart's rendered configuration
  reconciles a PretrainRun into its children.
There is no kubelet or scheduler: pods never run, which none of these tests need.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml

from devops_model.yamlio import dump
from tests.api.api_cases import base
from tests.plugins.chart import CHART, render_chart

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

CRD_NAMES = ["pretrainruns", "sftruns", "evalruns", "quantizeruns", "chatdeployments"]


@pytest.fixture
def fresh_namespace(control_plane):
    """fresh_namespace(prefix) -> a new namespace, deleted after the test. Request it BEFORE chart_rbac:
    fixtures are torn down in reverse, so the releases are uninstalled (cluster-scoped objects too)
    while their namespace and Helm's release record still exist."""
    made: list[str] = []

    def make(prefix: str) -> str:
        made.append(control_plane.namespace(prefix))
        return made[-1]

    yield make
    for ns in made:
        control_plane.delete_namespace(ns)


def _crd(cp, plural: str) -> dict:
    return cp.get("customresourcedefinition", f"{plural}.devops-model.io")


def _printer_columns(cp, plural: str) -> list[str]:
    return [c["name"] for c in _crd(cp, plural)["spec"]["versions"][0]["additionalPrinterColumns"]]


def _adopt_crds(cp, release: str, namespace: str) -> None:
    """CRDs applied by `kubectl apply` (as the control-plane fixture does, and as a user may have
    done before the chart existed) become the release's: Helm adopts objects with its ownership
    metadata. docs/install.md shows the same two commands."""
    names = [f"{p}.devops-model.io" for p in CRD_NAMES]
    cp.kubectl("label", "--overwrite", "customresourcedefinition", *names, "app.kubernetes.io/managed-by=Helm")
    cp.kubectl("annotate", "--overwrite", "customresourcedefinition", *names,
               f"meta.helm.sh/release-name={release}", f"meta.helm.sh/release-namespace={namespace}")


def test_install_upgrade_with_changed_crd_and_uninstall(control_plane, k8s_namespace, tmp_path):
    # Not "devops-model": cluster-scoped names (ClusterRoles) must not clash with other tests' objects.
    cp, ns, release = control_plane, k8s_namespace, "dm-install"
    _adopt_crds(cp, release, ns)
    r = cp.helm("install", release, str(CHART), "--namespace", ns, "--wait=false")
    notes = r.stdout
    assert f"kubectl -n {ns} rollout status deployment/dm-install-devops-model-operator" in notes
    assert f"kubectl -n {ns} get sftruns -w" in notes
    # The control plane serves Kubeflow's CRDs (the pinned TRAINER_VERSION has spec.runtimePatches):
    # NOTES looked them up and has nothing to warn about; it names the release's `helm test`.
    assert "WARNING" not in notes, notes
    assert f"helm test {release} -n {ns}" in notes

    for plural in CRD_NAMES:
        crd = _crd(cp, plural)
        assert crd["metadata"]["labels"]["helm.sh/chart"] == "devops-model-0.1.0"
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    dep = cp.get("deployment", "dm-install-devops-model-operator", ns)
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == "dm-install-devops-model"
    assert cp.get("customresourcedefinition", "clusterkopfpeerings.kopf.dev"), "crds/ of the chart installed"
    assert cp.get("clusterrole", "dm-install-devops-model-workload") is None, "no shared workload ClusterRole"

    # A run that exists before the upgrade must survive it.
    sft = base("SFTRun")
    cp.apply(sft, ns)

    # A new chart version whose SFTRun CRD has one more printer column.
    changed = tmp_path / "devops-model"
    shutil.copytree(CHART, changed)
    crd_file = changed / "files" / "crds" / "devops-model.io_sftruns.yaml"
    # A text edit, not a YAML round trip: PyYAML would write the string default '5e-5' unquoted, and
    # Go's YAML (helm) reads that as a number.
    text = crd_file.read_text()
    marker = "    additionalPrinterColumns:\n"
    assert text.count(marker) == 1
    crd_file.write_text(text.replace(marker, marker + "    - name: Upgraded\n      type: string\n"
                                     "      jsonPath: .spec.finetuning.type\n      description: test column\n"))
    assert "Upgraded" not in _printer_columns(cp, "sftruns")
    cp.helm("upgrade", release, str(changed), "--namespace", ns, "--wait=false")
    assert "Upgraded" in _printer_columns(cp, "sftruns"), "helm upgrade did not upgrade the CRD"
    table = cp.kubectl("get", "sftruns", "-n", ns).stdout
    assert "UPGRADED" in table.splitlines()[0] and "lora" in table
    assert cp.get("sftrun", "sft", ns) is not None

    # Back to the repository's chart: the column goes away again (and other tests see crds/ as committed).
    cp.helm("upgrade", release, str(CHART), "--namespace", ns, "--wait=false")
    assert "Upgraded" not in _printer_columns(cp, "sftruns")
    history = cp.helm("history", release, "--namespace", ns, "-o", "json").stdout
    assert [h["revision"] for h in json.loads(history)] == [1, 2, 3]

    cp.helm("uninstall", release, "--namespace", ns)
    assert cp.get("deployment", "dm-install-devops-model-operator", ns) is None
    assert all(_crd(cp, p) for p in CRD_NAMES), "CRDs must be kept on uninstall (crds.keep)"
    assert cp.get("sftrun", "sft", ns) is not None, "runs must survive helm uninstall"


def _can(cp, kubeconfig: Path, verb: str, resource: str, namespace: str | None, subresource: str | None = None) -> bool:
    args = ["auth", "can-i", verb, resource] + (["-n", namespace] if namespace else ["--all-namespaces"])
    if subresource:
        args.append(f"--subresource={subresource}")
    r = cp.kubectl(*args, check=False, kubeconfig=kubeconfig)
    assert r.stdout.strip() in ("yes", "no"), r.stderr
    return r.stdout.strip() == "yes"


@pytest.mark.parametrize("scope", ["namespaced", "cluster"])
def test_operator_cannot_read_secrets_and_workloads_cannot_create_pods(scope, control_plane, fresh_namespace, chart_rbac):
    cp = control_plane
    ns = fresh_namespace("rbac")
    other = fresh_namespace("other")
    ids = chart_rbac(ns, scope=scope)
    cp.kubectl("create", "secret", "generic", "hub-token", "-n", ns, "--from-literal=token=hf_secret")
    op = ids.operator_kubeconfig

    # The operator: everything it needs, in its namespace ...
    for verb, res in [("create", "jobs.batch"), ("create", "configmaps"), ("watch", "sftruns.devops-model.io"),
                      ("create", "pytorchjobs.kubeflow.org"), ("list", "pods"), ("create", "events")]:
        assert _can(cp, op, verb, res, ns), f"operator cannot {verb} {res}"
    assert _can(cp, op, "patch", "sftruns.devops-model.io", ns, subresource="status")
    # ... and no Secrets, no pods of its own, in any mode.
    for verb in ("get", "list", "watch"):
        assert not _can(cp, op, verb, "secrets", ns), f"operator can {verb} secrets"
    assert not _can(cp, op, "create", "pods", ns)
    denied = cp.kubectl("get", "secret", "hub-token", "-n", ns, "-o", "json", check=False, kubeconfig=op)
    assert denied.returncode != 0 and "Forbidden" in denied.stderr and "secrets" in denied.stderr
    # Namespaced mode stays in its namespace; cluster mode reaches the others (still without Secrets).
    assert _can(cp, op, "create", "jobs.batch", other) is (scope == "cluster")
    assert not _can(cp, op, "get", "secrets", other)
    assert _can(cp, op, "list", "namespaces", None), "kopf follows namespaces in both modes"
    assert not _can(cp, op, "delete", "namespaces", None)

    # Each run's own identity, created with the operator's credentials exactly as the operator does
    # (the builder's manifests): the API server accepts the Role only if the operator holds
    # everything it grants (RBAC escalation check), in both modes, without escalate or bind verbs.
    from devops_model.api.resource import parse_resource
    from devops_operator.builders import build_identity, identity_name
    from devops_operator.config import OperatorConfig

    runs = {}
    for name in ("ev", "ev-other"):
        body = base("EvalRun")
        body["metadata"]["name"] = name
        cp.apply(body, ns)
        stored = cp.get("evalrun", name, ns)
        runs[name] = parse_resource({k: stored[k] for k in ("apiVersion", "kind", "metadata", "spec")})
    for obj in build_identity(runs["ev"], OperatorConfig()):
        created = cp.kubectl("create", "-f", "-", input=json.dumps(obj), check=False, kubeconfig=op)
        assert created.returncode == 0, f"the operator could not create {obj['kind']}: {created.stderr}"
    # The control: the escalation check is on, and a Role granting what the operator lacks is refused.
    greedy = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "greedy", "namespace": ns},
              "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]}
    refused = cp.kubectl("create", "-f", "-", input=json.dumps(greedy), check=False, kubeconfig=op)
    assert refused.returncode != 0 and "attempting to grant RBAC permissions not currently held" in refused.stderr, \
        refused.stderr
    wl = cp.service_account_kubeconfig(ns, identity_name(runs["ev"]))
    assert not _can(cp, wl, "create", "pods", ns)
    assert not _can(cp, wl, "get", "secrets", ns)
    assert not _can(cp, wl, "patch", "evalruns.devops-model.io", ns), "workloads must not change a spec"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "escape", "namespace": ns},
           "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    denied = cp.apply(pod, ns, check=False, kubeconfig=wl)
    assert denied.returncode != 0 and "Forbidden" in denied.stderr and "pods" in denied.stderr
    patched = cp.kubectl("patch", "evalrun", "ev", "-n", ns, "--subresource=status", "--type=merge",
                         "-p", json.dumps({"status": {"progress": {"step": 1}}}), check=False, kubeconfig=wl)
    assert patched.returncode == 0, patched.stderr
    assert cp.get("evalrun", "ev", ns)["status"]["progress"] == {"step": 1}
    other = cp.kubectl("patch", "evalrun", "ev-other", "-n", ns, "--subresource=status", "--type=merge",
                       "-p", json.dumps({"status": {"progress": {"step": 1}}}), check=False, kubeconfig=wl)
    assert other.returncode != 0 and "Forbidden" in other.stderr, other.stderr
    assert "status" not in cp.get("evalrun", "ev-other", ns) or \
        "progress" not in cp.get("evalrun", "ev-other", ns)["status"]


def test_operator_with_the_charts_rbac_reconciles_a_run(control_plane, fresh_namespace, chart_rbac, tmp_path):
    """`devops-model operator` authenticated as the chart's operator ServiceAccount (namespaced mode,
    no admin credentials) with the configuration file the chart renders: a PretrainRun becomes its spec
    ConfigMap and PyTorchJob, and the run's status says so."""
    from tests.plugins.operator import OperatorProcess

    cp = control_plane
    ns = fresh_namespace("reconcile")
    op = None
    try:
        ids = chart_rbac(ns, scope="namespaced")
        objects = render_chart(set_values=("scope.mode=namespaced",), namespace=ns, release=ids.release)
        config = yaml.safe_load(next(o for o in objects if o["kind"] == "ConfigMap")["data"]["operator.yaml"])
        # Only timing changes for the test: the reconcile loop looks every second.
        config["reconcile"].update({"requeueSeconds": 1, "watchdogIntervalSeconds": 5, "restartBackoffSeconds": 0})
        work = tmp_path / "operator"
        work.mkdir()
        op = OperatorProcess(cp, ids.operator_kubeconfig, ns, work, config).start()
        probes = {o["kind"]: o for o in objects}["Deployment"]["spec"]["template"]["spec"]["containers"][0]
        for probe in ("livenessProbe", "readinessProbe"):
            path = probes[probe]["httpGet"]["path"]
            with urllib.request.urlopen(f"http://127.0.0.1:{op.health_port}{path}", timeout=5) as r:
                assert r.status == 200, f"the chart's {probe} path {path} must answer 200"

        run = base("PretrainRun")
        cp.apply(run, ns)
        job = cp.wait_for(lambda: cp.get("pytorchjob", "pt-train", ns), timeout=90,
                          message=lambda: f"PyTorchJob pt-train; operator log:\n{op.tail()}")
        assert job["metadata"]["ownerReferences"][0]["kind"] == "PretrainRun"
        assert cp.get("configmap", "pt-spec", ns) is not None
        pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
        # The run's own identity, created by the operator with the chart's RBAC before the child.
        assert pod["serviceAccountName"] == "pt-pretrain-worker"
        role = cp.get("role", "pt-pretrain-worker", ns)
        assert role["rules"][0]["resourceNames"] == ["pt"] and role["metadata"]["ownerReferences"][0]["name"] == "pt"
        assert cp.get("serviceaccount", "pt-pretrain-worker", ns) and cp.get("rolebinding", "pt-pretrain-worker", ns)
        # The child as the API server stored it (after defaulting) still meets the restricted profile.
        from tests.deploy.test_pod_security import check_manifest
        assert check_manifest(job) == []
        status = cp.wait_for(lambda: (cp.get("pretrainrun", "pt", ns) or {}).get("status", {}).get("conditions"),
                             timeout=60, message="conditions on the PretrainRun")
        assert status, status
        assert "Forbidden" not in op.tail(400), f"the operator hit a permission the chart does not grant:\n{op.tail()}"
    finally:
        if op is not None:
            op.stop()


def test_two_replicas_with_peering_reconcile_exactly_once(control_plane, fresh_namespace, chart_rbac, tmp_path, monkeypatch):
    """Two operator replicas (the chart's peering config and KopfPeering object, its RBAC): both register
    as peers, one reconciles, and the run gets exactly one child; when the leader stops, the standby
    takes over.

    kopf pauses every peer that sees another of EQUAL priority, so this also proves the operator gives
    each replica its own priority (here fixed through DEVOPS_MODEL_PEERING_PRIORITY)."""
    from tests.plugins.operator import OperatorProcess

    cp = control_plane
    ns = fresh_namespace("peering")
    ops = []
    try:
        ids = chart_rbac(ns, scope="namespaced", set_values=("operator.peering.enabled=true",))
        peering_name = f"{ids.release}-devops-model"
        assert cp.get("kopfpeering", peering_name, ns) is not None, "the chart creates the peering object"
        objects = render_chart(set_values=("scope.mode=namespaced", "operator.peering.enabled=true"),
                               namespace=ns, release=ids.release)
        config = yaml.safe_load(next(o for o in objects if o["kind"] == "ConfigMap")["data"]["operator.yaml"])
        assert config["reconcile"]["peering"] == peering_name
        config["reconcile"].update({"requeueSeconds": 1, "watchdogIntervalSeconds": 5, "restartBackoffSeconds": 0})
        for i in range(2):
            work = tmp_path / f"operator-{i}"
            work.mkdir()
            # Each replica is a pod with its own name: the chart's POD_ID env (kopf's peer identity).
            monkeypatch.setenv("POD_ID", f"{ids.release}-operator-{i}")
            # Fixed priorities make the leader known: replica 0 (the operator draws random ones).
            monkeypatch.setenv("DEVOPS_MODEL_PEERING_PRIORITY", str(200 - 100 * i))
            ops.append(OperatorProcess(cp, ids.operator_kubeconfig, ns, work, config).start())
        cp.wait_for(lambda: len((cp.get("kopfpeering", peering_name, ns) or {}).get("status", {})) == 2,
                    timeout=30, message="both replicas registered in the peering object's status")
        cp.apply(base("PretrainRun"), ns)

        cp.wait_for(lambda: cp.get("pytorchjob", "pt-train", ns), timeout=60,
                    message=lambda: "\n".join(o.tail(20) for o in ops))
        for o in ops:
            assert "Forbidden" not in o.tail(400), o.tail()
            assert "conflicting operators with the same priority" not in o.tail(400), o.tail()
        assert len(cp.get("pytorchjobs", namespace=ns)["items"]) == 1

        # Fail-over: the leader stops (a drained node); the standby resumes and reconciles the next run.
        ops[0].stop()
        second = base("PretrainRun")
        second["metadata"]["name"] = "pt2"
        cp.apply(second, ns)
        cp.wait_for(lambda: cp.get("pytorchjob", "pt2-train", ns), timeout=60,
                    message=lambda: f"the standby taking over; its log:\n{ops[1].tail(30)}")
        assert len(cp.get("pytorchjobs", namespace=ns)["items"]) == 2
    finally:
        for o in ops:
            o.stop()


def test_api_servers_pod_security_admission_accepts_every_pod(control_plane, fresh_namespace, tmp_path):
    """The real PodSecurity admission (enforce=restricted on the namespace) judges every pod template:
    the chart's (each scenario) and the children of every kind/launcher/engine variant and every
    example. Server-side dry run: admission runs, nothing is stored. A pod breaking the profile is the
    control that enforcement is on."""
    from tests.plugins.chart import CI_VALUES
    from tests.deploy.test_pod_security import _examples, _render, _variants, pod_specs

    cp = control_plane
    ns = fresh_namespace("restricted")
    cp.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted",
               "pod-security.kubernetes.io/enforce-version=latest")

    sources: list[tuple[str, list[dict]]] = [("chart default", render_chart())]
    sources += [(f"chart {f.name}", render_chart((f,))) for f in CI_VALUES]
    every = tmp_path / "variants.yaml"
    every.write_text("---\n".join(dump({**res, "metadata": {**res["metadata"], "name": name.lower()}})
                                  for name, res in _variants()))
    sources.append(("variants", _render(every)))
    sources += [(f"example {p.name}", _render(p)) for p in _examples()]

    pods, accounts, priority_classes = [], set(), set()
    pod_dir = tmp_path / "pods"
    pod_dir.mkdir()
    for label, objects in sources:
        for obj in objects:
            for path, spec in pod_specs(obj):
                name = f"p{len(pods)}"
                pods.append((f"{label}: {obj['kind']}/{obj['metadata']['name']} {path}", name))
                spec = dict(spec)
                accounts.add(spec.get("serviceAccountName", "default"))
                if spec.get("priorityClassName"):
                    priority_classes.add(spec["priorityClassName"])
                cp_pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns}, "spec": spec}
                (pod_dir / f"{name}.json").write_text(json.dumps(cp_pod))
    assert len(pods) >= 15, pods
    for sa in sorted(accounts - {"default"}):
        cp.kubectl("create", "serviceaccount", sa, "-n", ns)
    # Priority classes the examples name must exist (the Priority admission plugin checks); created
    # only when absent and removed afterwards.
    created_pcs = []
    for pc in sorted(priority_classes):
        if cp.get("priorityclass", pc) is None:
            cp.kubectl("create", "priorityclass", pc, "--value=1000")
            created_pcs.append(pc)

    try:
        r = cp.kubectl("create", "--dry-run=server", "-o", "name", "-f", str(pod_dir), check=False)
    finally:
        for pc in created_pcs:
            cp.kubectl("delete", "priorityclass", pc, "--ignore-not-found")
    refused = [line for line in r.stderr.splitlines() if "violates PodSecurity" in line or "forbidden" in line.lower()]
    assert r.returncode == 0 and not refused, r.stderr
    assert len(r.stdout.split()) == len(pods)

    # The control: the same admission refuses a pod that runs as root with default capabilities.
    bad = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "root", "namespace": ns},
           "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    r = cp.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(bad), check=False)
    assert r.returncode != 0 and "violates PodSecurity" in r.stderr
