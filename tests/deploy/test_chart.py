"""The Helm chart (charts/devops-model), rendered without a cluster.

    .venv/bin/python -m pytest tests/deploy/test_chart.py -q

Uses the helm that tests/cluster/build.sh builds (missing: the tests fail and say `make cluster-build`).
Covers: `helm lint --strict`, `helm template` with the default values and every ci/*-values.yaml,
the operator's RBAC rules (no wildcards, no secrets, exactly what the operator needs; no shared workload
identity: the operator gives each run its own),
labels and names, the operator Deployment, the operator ConfigMap against OperatorConfig, CRDs that
match crds/, values.schema.json refusals, and that every value in values.yaml is commented.
On a real control plane: tests/cluster/test_chart_install.py.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.plugins.chart import CHART, CI_VALUES, find, helm_binary, helm_template, render_chart

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "operator"))
from devops_operator.config import OperatorConfig  # noqa: E402

KINDS = ["pretrainruns", "sftruns", "evalruns", "quantizeruns", "chatdeployments"]
SCENARIOS = [pytest.param((), id="default")] + [pytest.param((f,), id=f.stem) for f in CI_VALUES]
STANDARD_LABELS = ["helm.sh/chart", "app.kubernetes.io/name", "app.kubernetes.io/instance",
                   "app.kubernetes.io/version", "app.kubernetes.io/managed-by", "app.kubernetes.io/part-of"]

# What the operator must be able to do (docs/operator.md "RBAC the operator needs"):
# (apiGroup, resource) -> verbs that must be granted.
OPERATOR_NEEDS = {
    **{("devops-model.io", k): {"get", "list", "watch", "patch"} for k in KINDS},
    **{("devops-model.io", f"{k}/status"): {"get", "patch"} for k in KINDS},
    ("", "configmaps"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "services"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "pods"): {"get", "list", "watch"},
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("batch", "jobs"): {"get", "list", "watch", "create", "patch", "delete"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "patch", "delete"},
    ("networking.k8s.io", "networkpolicies"): {"get", "list", "watch", "create", "patch", "delete"},
    ("kubeflow.org", "pytorchjobs"): {"get", "list", "watch", "create", "patch", "delete"},
    ("trainer.kubeflow.org", "trainjobs"): {"get", "list", "watch", "create", "patch", "delete"},
    # Each run's own identity (ServiceAccount + Role + RoleBinding).
    ("", "serviceaccounts"): {"get", "create"},
    ("rbac.authorization.k8s.io", "roles"): {"get", "create"},
    ("rbac.authorization.k8s.io", "rolebindings"): {"get", "create"},
}
# Reading pods is all the operator does with them; creating pods would let it run anything.
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection", "escalate", "bind", "impersonate"}


def grants(rules: list[dict]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for r in rules:
        for g in r.get("apiGroups", []):
            for res in r.get("resources", []):
                out.setdefault((g, res), set()).update(r.get("verbs", []))
    return out


def operator_roles(objects: list[dict]) -> list[dict]:
    return [o for o in objects if o["kind"] in ("Role", "ClusterRole")
            and o["metadata"]["labels"].get("app.kubernetes.io/component") == "operator"]


def workload_objects(objects: list[dict]) -> list[dict]:
    return [o for o in objects if (o["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == "workload"]


# -- lint and render -------------------------------------------------------------------------------

@pytest.mark.parametrize("values_files", SCENARIOS)
def test_helm_lint_strict(values_files):
    args = [str(helm_binary()), "lint", "--strict", str(CHART)]
    for f in values_files:
        args += ["-f", str(f)]
    r = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 chart(s) failed" in r.stdout


@pytest.mark.parametrize("values_files", SCENARIOS)
def test_every_object_has_standard_labels_and_valid_names(values_files):
    objects = render_chart(values_files)
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "ServiceAccount", "ConfigMap"} <= kinds and kinds & {"RoleBinding", "ClusterRoleBinding"}
    for o in objects:
        meta = o["metadata"]
        ident = f"{o['kind']}/{meta['name']}"
        missing = [k for k in STANDARD_LABELS if k not in meta.get("labels", {})]
        assert not missing, f"{ident} lacks labels {missing}"
        assert meta["labels"]["app.kubernetes.io/instance"] == "rel"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        assert len(meta["name"]) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", meta["name"]), ident
        for v in meta["labels"].values():
            assert len(str(v)) <= 63, f"{ident}: label value {v!r} is longer than 63"


def test_long_release_names_are_cut_to_63_characters():
    release = "a-very-long-release-name-for-the-platform-team-prod1"  # helm allows up to 53
    objects = render_chart(release=release)
    names = [o["metadata"]["name"] for o in objects]
    assert all(len(n) <= 63 and not n.endswith("-") for n in names), names
    dep = find(objects, "Deployment")[0]
    assert dep["metadata"]["name"].startswith(release[:40])


def test_release_name_containing_the_chart_name_is_not_repeated():
    objects = render_chart(release="devops-model")
    assert find(objects, "ServiceAccount", "devops-model"), "fullname should be the release name alone"
    assert find(objects, "Deployment", "devops-model-operator")
    objects = render_chart(set_values=("fullnameOverride=platform",))
    assert find(objects, "Deployment", "platform-operator")


# -- CRDs ------------------------------------------------------------------------------------------

def test_chart_crds_do_not_drift_from_crds_dir():
    r = subprocess.run([sys.executable, str(CHART / "generate.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_rendered_crds_equal_crds_dir_with_labels_and_keep_policy():
    rendered = {o["metadata"]["name"]: o for o in find(render_chart(), "CustomResourceDefinition")}
    committed = {}
    for f in sorted((REPO / "crds").glob("*.yaml")):
        doc = yaml.safe_load(f.read_text())
        committed[doc["metadata"]["name"]] = doc
    assert set(rendered) == set(committed) and len(rendered) == 5
    for name, doc in committed.items():
        got = rendered[name]
        assert got["spec"] == doc["spec"], f"{name}: the chart renders a different spec than crds/"
        assert got["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        for k, v in doc["metadata"].get("labels", {}).items():
            assert got["metadata"]["labels"][k] == v


def test_crds_can_be_left_out_or_deleted_on_uninstall():
    assert find(render_chart(set_values=("crds.install=false",)), "CustomResourceDefinition") == []
    crds = find(render_chart(set_values=("crds.keep=false",)), "CustomResourceDefinition")
    assert crds and all("helm.sh/resource-policy" not in (c["metadata"].get("annotations") or {}) for c in crds)


def test_kopf_peering_crds_live_in_the_crds_folder():
    docs = list(yaml.safe_load_all((CHART / "crds" / "kopf-peerings.yaml").read_text()))
    assert {d["metadata"]["name"] for d in docs} == {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}


# -- RBAC ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("values_files", SCENARIOS)
def test_no_wildcards_anywhere(values_files):
    for role in [o for o in render_chart(values_files) if o["kind"] in ("Role", "ClusterRole")]:
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                assert "*" not in rule.get(key, []), f"{role['kind']}/{role['metadata']['name']}: wildcard in {key}"


@pytest.mark.parametrize("values_files", SCENARIOS)
def test_operator_gets_what_it_needs_and_no_secrets(values_files):
    objects = render_chart(values_files)
    granted = grants([r for role in operator_roles(objects) for r in role["rules"]])
    for key, verbs in OPERATOR_NEEDS.items():
        assert verbs <= granted.get(key, set()), f"operator lacks {sorted(verbs - granted.get(key, set()))} on {key}"
    assert not any(res == "secrets" or res.startswith("secrets/") for _, res in granted), "the operator must not read Secrets"
    assert granted[("", "pods")] == {"get", "list", "watch"}, "the operator only reads pods"
    assert not any(res in ("clusterroles", "clusterrolebindings") for _, res in granted), \
        "the operator must not manage cluster-wide roles"
    # Each run's own identity: the operator creates a ServiceAccount, a Role and a RoleBinding, and
    # nothing more (no update/delete: the garbage collector removes them with the run). It holds no
    # escalate or bind verb: the API server accepts the Role only because the operator itself holds
    # get/patch on the kinds' status.
    assert granted[("", "serviceaccounts")] == {"get", "create"}
    assert granted[("rbac.authorization.k8s.io", "roles")] == {"get", "create"}
    assert granted[("rbac.authorization.k8s.io", "rolebindings")] == {"get", "create"}
    assert not any({"bind", "escalate", "impersonate"} & verbs for verbs in granted.values()), granted
    crd_verbs = granted.get(("apiextensions.k8s.io", "customresourcedefinitions"), set())
    assert crd_verbs == {"get", "list", "watch"}, crd_verbs


def test_cluster_mode_uses_cluster_roles_and_can_follow_namespaces():
    objects = render_chart()
    roles = operator_roles(objects)
    assert [r["kind"] for r in roles] == ["ClusterRole"]
    binding = find(objects, "ClusterRoleBinding", "rel-devops-model")[0]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "rel-devops-model"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "rel-devops-model", "namespace": "devops-model"}]
    granted = grants(roles[0]["rules"])
    assert granted[("", "namespaces")] == {"get", "list", "watch"}
    assert ("kopf.dev", "clusterkopfpeerings") not in granted, "peering rules only when peering is on"
    # The operator creates each run's identity in whatever namespace the run is in.
    assert granted[("", "serviceaccounts")] == {"get", "create"}
    assert granted[("rbac.authorization.k8s.io", "roles")] == {"get", "create"}
    assert granted[("rbac.authorization.k8s.io", "rolebindings")] == {"get", "create"}
    assert not find(objects, "ClusterRole", "rel-devops-model-workload"), "no shared workload ClusterRole"


def test_cluster_mode_covers_every_rule_the_operator_declares():
    """devops_operator/rbac.py keeps the operator's own list of rules; the chart must grant all of them
    (peering on, so the kopf.dev rule is rendered)."""
    from devops_operator.rbac import OPERATOR_RULES

    objects = render_chart(set_values=("operator.peering.enabled=true",))
    granted = grants([r for role in operator_roles(objects) for r in role["rules"]])
    for rule in OPERATOR_RULES:
        for g in rule["apiGroups"]:
            for res in rule["resources"]:
                if res == "kopfpeerings":
                    continue  # namespaced mode's peering; cluster mode uses clusterkopfpeerings
                assert set(rule["verbs"]) <= granted.get((g, res), set()), f"chart lacks {rule['verbs']} on {g}/{res}"


def test_namespaced_mode_uses_a_role_in_the_release_namespace():
    objects = render_chart(set_values=("scope.mode=namespaced",), namespace="team-a")
    roles = operator_roles(objects)
    role = [r for r in roles if r["kind"] == "Role"]
    assert len(role) == 1 and role[0]["metadata"]["namespace"] == "team-a"
    assert ("", "namespaces") not in grants(role[0]["rules"]), "namespaces are cluster-scoped: the discovery ClusterRole grants them"
    # Each run's identity is created in the release namespace, which is where its runs are.
    for key in [("", "serviceaccounts"), ("rbac.authorization.k8s.io", "roles"), ("rbac.authorization.k8s.io", "rolebindings")]:
        assert grants(role[0]["rules"])[key] == {"get", "create"}, key
    # The only cluster-wide grant: read CRDs and namespaces (kopf's discovery), nothing else.
    cluster = [r for r in roles if r["kind"] == "ClusterRole"]
    assert len(cluster) == 1 and grants(cluster[0]["rules"]) == {
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
        ("", "namespaces"): {"get", "list", "watch"}}
    rb = find(objects, "RoleBinding", "rel-devops-model")[0]
    assert rb["metadata"]["namespace"] == "team-a" and rb["roleRef"]["kind"] == "Role"
    assert not find(objects, "ClusterRoleBinding", "rel-devops-model")
    assert not find(render_chart(set_values=("scope.mode=namespaced", "rbac.crdDiscovery=false")), "ClusterRole")


@pytest.mark.parametrize("mode,kind", [("cluster", "clusterkopfpeerings"), ("namespaced", "kopfpeerings")])
def test_peering_with_several_replicas(mode, kind):
    objects = render_chart(set_values=(f"scope.mode={mode}", "operator.replicas=3"))
    granted = grants([r for role in operator_roles(objects) for r in role["rules"]])
    assert granted[("kopf.dev", kind)] == {"get", "list", "watch", "patch"}
    peering_kind = "ClusterKopfPeering" if mode == "cluster" else "KopfPeering"
    assert find(objects, peering_kind, "rel-devops-model"), "the chart must create the peering object kopf joins"
    config = yaml.safe_load(find(objects, "ConfigMap", "rel-devops-model-config")[0]["data"]["operator.yaml"])
    assert config["reconcile"]["peering"] == "rel-devops-model"
    assert find(objects, "Deployment")[0]["spec"]["replicas"] == 3
    (pdb,) = find(objects, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == find(objects, "Deployment")[0]["spec"]["selector"]["matchLabels"]
    assert not find(render_chart(), "PodDisruptionBudget"), "one replica: a PDB would block every drain"


@pytest.mark.parametrize("values_files", SCENARIOS)
def test_the_chart_has_no_shared_workload_identity(values_files):
    """No ServiceAccount, Role or binding that every workload pod would share (one that may patch
    every run's status is how a pod could forge another run's outcome): the operator gives each run
    its own (operator/devops_operator/builders/identity.py)."""
    objects = render_chart(values_files)
    assert workload_objects(objects) == []
    assert [o["metadata"]["name"] for o in find(objects, "ServiceAccount")] == ["rel-devops-model"], \
        "the operator's is the only ServiceAccount the chart creates"


def test_the_progress_only_policy_covers_every_status_field_but_progress():
    """RBAC cannot limit a status patch to some fields; the chart's ValidatingAdmissionPolicy does, for
    the runs' own ServiceAccounts. A status field missing from its list would be writable by a pod."""
    from devops_model.contract import OPERATOR_OWNED_STATUS, PROGRESS_FIELDS
    from devops_operator.reconcile.common import status_fields

    objects = render_chart()
    (policy,) = find(objects, "ValidatingAdmissionPolicy")
    (binding,) = find(objects, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == policy["metadata"]["name"] and binding["spec"]["validationActions"] == ["Deny"]
    fields = set().union(*(status_fields(k) for k in ("PretrainRun", "SFTRun", "EvalRun", "QuantizeRun", "ChatDeployment")))
    want = (fields | OPERATOR_OWNED_STATUS) - PROGRESS_FIELDS
    covered = {re.search(r"has\(object\.status\.(\w+)\)", v["expression"]).group(1) for v in policy["spec"]["validations"]}
    assert covered == want, f"missing {sorted(want - covered)}, extra {sorted(covered - want)}"
    assert "progress" not in covered
    (cond,) = policy["spec"]["matchConditions"]
    assert "endsWith('-worker')" in cond["expression"], "it limits the runs' identities (<run>-<stage>-worker)"
    assert not find(render_chart(set_values=("statusPolicy.enabled=false",)), "ValidatingAdmissionPolicy")


def test_old_workload_values_are_refused_with_the_key_named():
    r = helm_template(set_values=("workloads.serviceAccount.name=devops-model-workload",))
    assert r.returncode != 0 and "workloads" in r.stderr, r.stderr


def test_service_account_annotations_reach_the_operator_config():
    objects = render_chart((CHART / "ci" / "cluster-wide-values.yaml",))
    text = find(objects, "ConfigMap", "rel-devops-model-config")[0]["data"]["operator.yaml"]
    config = OperatorConfig.model_validate(yaml.safe_load(text))
    assert config.workloads.service_account_annotations["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")


# -- the operator Deployment and its configuration ----------------------------------------------------

def test_operator_deployment():
    objects = render_chart()
    dep = find(objects, "Deployment", "rel-devops-model-operator")[0]
    pod = dep["spec"]["template"]["spec"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    (c,) = pod["containers"]
    assert c["image"] == "ghcr.io/devops-model/operator:0.1.0"
    assert c["command"] == ["devops-model", "operator"]
    assert "--health-port=8080" in c["args"] and "--metrics-port=9090" in c["args"]
    assert not any(a.startswith("--namespace") for a in c["args"]), "cluster scope watches every namespace"
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"health": 8080, "metrics": 9090}
    assert c["resources"]["requests"] == {"cpu": "100m", "memory": "256Mi"} and c["resources"]["limits"]["memory"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsUser"] == 10001 and pod["securityContext"]["runAsNonRoot"] is True
    assert {m["mountPath"] for m in c["volumeMounts"]} == {"/etc/devops-model", "/tmp"}
    assert pod["serviceAccountName"] == "rel-devops-model"
    assert {"name": "DEVOPS_MODEL_OPERATOR_CONFIG", "value": "/etc/devops-model/operator.yaml"} in c["env"]
    assert any(e["name"] == "POD_ID" for e in c["env"]), "kopf's peer identity"


def test_namespaced_operator_watches_its_namespace_only():
    objects = render_chart(set_values=("scope.mode=namespaced",), namespace="team-a")
    c = find(objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    assert "--namespace=team-a" in c["args"]
    config = yaml.safe_load(find(objects, "ConfigMap")[0]["data"]["operator.yaml"])
    assert config["scope"] == "namespaced" and config["namespace"] == "team-a"


def test_image_digest_wins_over_tag():
    digest = "sha256:" + "a" * 64
    objects = render_chart(set_values=(f"operator.image.digest={digest}", "operator.image.tag=9.9.9"))
    assert find(objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["image"] == \
        f"ghcr.io/devops-model/operator@{digest}"


@pytest.mark.parametrize("values_files", SCENARIOS)
def test_operator_config_is_a_valid_operator_config(values_files):
    objects = render_chart(values_files)
    text = find(objects, "ConfigMap", "rel-devops-model-config")[0]["data"]["operator.yaml"]
    config = OperatorConfig.model_validate(yaml.safe_load(text))
    # The chart's defaults are the operator's defaults: one place to read them (docs/operator.md).
    defaults = OperatorConfig().model_dump(by_alias=True)
    chosen: dict = {}  # what a scenario sets on purpose (local-node-values: its own images and sizes)
    for f in values_files:
        for section, value in ((yaml.safe_load(f.read_text()) or {}).get("operator", {}).get("config") or {}).items():
            chosen.setdefault(section, {}).update(value)
    for section in ("images", "storage", "serving", "trainer"):
        want = {**defaults[section], **chosen.get(section, {})}
        assert getattr(config, section).model_dump(by_alias=True) == want, section


def test_chart_values_file_is_accepted_by_render():
    # `devops-model render --values charts/devops-model/values.yaml` reads the operator.config section.
    config = OperatorConfig.from_values_file(CHART / "values.yaml")
    assert config.images.workload == "ghcr.io/devops-model/workload:0.1.0"


def test_a_changed_config_rolls_the_operator():
    def checksum(*s):
        return find(render_chart(set_values=s), "Deployment")[0]["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert checksum() != checksum("operator.config.reconcile.requeueSeconds=30")


def test_monitoring_and_network_policy():
    objects = render_chart((CHART / "ci" / "monitoring-values.yaml",))
    (sm,) = find(objects, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]
    (svc,) = find(objects, "Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    (np,) = find(objects, "NetworkPolicy")
    assert np["spec"]["policyTypes"] == ["Ingress", "Egress"]
    metrics_rule = [r for r in np["spec"]["ingress"] if r["ports"][0]["port"] == "metrics"][0]
    assert metrics_rule["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    assert not find(render_chart(), "ServiceMonitor") and not find(render_chart(), "NetworkPolicy")


def test_service_monitor_without_metrics_service_is_refused():
    r = helm_template(set_values=("monitoring.serviceMonitor.enabled=true", "metrics.service.enabled=false"))
    assert r.returncode != 0 and "metrics.service.enabled=true" in r.stderr


# -- values.schema.json ----------------------------------------------------------------------------

BAD_VALUES = [
    ("typo in a key", "operator.replica=2", "/operator", "'replica' not allowed"),
    ("unknown scope", "scope.mode=global", "/scope/mode", "one of 'cluster', 'namespaced'"),
    ("negative replicas", "operator.replicas=-1", "/operator/replicas", "minimum"),
    ("root operator", "operator.runAsUser=0", "/operator/runAsUser", "minimum"),
    ("bad digest", "operator.image.digest=latest", "/operator/image/digest", "does not match pattern"),
    ("bad pull policy", "operator.image.pullPolicy=Sometimes", "/operator/image/pullPolicy", "one of"),
    ("typo in operator config", "operator.config.images.workolad=x", "/operator/config/images", "'workolad' not allowed"),
    ("operator config range", "operator.config.workloads.reportIntervalSeconds=0", "/operator/config/workloads/reportIntervalSeconds", "minimum"),
    ("operator config enum", "operator.config.serving.serviceType=Ingress", "/operator/config/serving/serviceType", "one of"),
    ("name not a DNS label", "serviceAccount.name=Bad_Name", "/serviceAccount/name", "does not match pattern"),
    ("interval without unit", "monitoring.serviceMonitor.interval=30", "/monitoring/serviceMonitor/interval", "string"),
    ("port out of range", "operator.healthPort=70000", "/operator/healthPort", "maximum"),
]


@pytest.mark.parametrize("setting,path,detail", [pytest.param(s, p, d, id=i) for i, s, p, d in BAD_VALUES])
def test_schema_refuses_bad_values(setting, path, detail):
    r = helm_template(set_values=(setting,))
    assert r.returncode != 0, f"--set {setting} was accepted"
    assert "values don't meet the specifications of the schema" in r.stderr
    assert f"'{path}'" in r.stderr and detail in r.stderr, r.stderr


def test_schema_is_generated_from_operator_config():
    import json
    schema = json.loads((CHART / "values.schema.json").read_text())
    config = schema["properties"]["operator"]["properties"]["config"]
    assert set(config["properties"]) == {f.alias or n for n, f in OperatorConfig.model_fields.items()}


# -- values.yaml documentation ---------------------------------------------------------------------

def _undocumented_values(text: str) -> list[str]:
    """Dotted paths of leaf values with neither their own comment nor a commented ancestor key.
    A comment counts when it is on the line(s) right above the key."""
    stack: list[tuple[int, str, bool]] = []  # (indent, key, documented)
    missing = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z0-9_.-]+):(.*)$", line)
        if not m or line.lstrip().startswith("#"):
            continue
        indent, key, rest = len(m.group(1)), m.group(2), m.group(3).strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        j = i - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        documented = j >= 0 and lines[j].strip().startswith("#") or any(d for _, _, d in stack)
        is_leaf = rest != "" and not rest.startswith("#")
        if is_leaf and not documented:
            missing.append(".".join([k for _, k, _ in stack] + [key]))
        stack.append((indent, key, documented))
    return missing


def test_every_value_is_commented():
    assert _undocumented_values((CHART / "values.yaml").read_text()) == []
    # The checker itself catches an undocumented key.
    assert _undocumented_values("a:\n  # doc\n  b: 1\n  c: 2\n") == ["a.c"]


def test_packaged_chart_carries_the_crds_and_not_the_generator(tmp_path):
    import tarfile

    r = subprocess.run([str(helm_binary()), "package", str(CHART), "--destination", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    (archive,) = tmp_path.glob("devops-model-*.tgz")
    names = tarfile.open(archive).getnames()
    assert sum(n.startswith("devops-model/files/crds/") for n in names) == 5
    assert "devops-model/generate.py" not in names and "devops-model/values.schema.json" in names
    rendered = subprocess.run([str(helm_binary()), "template", "rel", str(archive)], capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    assert len(find([d for d in yaml.safe_load_all(rendered.stdout) if d], "CustomResourceDefinition")) == 5


# --------------------------------------------------------------------------- helm test


def _test_pod(objects):
    pods = [o for o in find(objects, "Pod") if (o["metadata"].get("annotations") or {}).get("helm.sh/hook") == "test"]
    return pods[0] if pods else None


def test_helm_test_pod_asks_the_operator_through_its_service():
    objects = render_chart()
    pod = _test_pod(objects)
    assert pod is not None and pod["metadata"]["name"] == "rel-devops-model-test"
    assert pod["metadata"]["annotations"]["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never" and spec["automountServiceAccountToken"] is False
    (c,) = spec["containers"]
    assert c["image"] == "ghcr.io/devops-model/operator:0.1.0", "the operator image by default"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["READY_URL"] == "http://rel-devops-model-metrics.devops-model.svc:8080/readyz"
    assert env["METRICS_URL"] == "http://rel-devops-model-metrics.devops-model.svc:9090/metrics"
    (svc,) = find(objects, "Service")
    assert svc["metadata"]["name"] == "rel-devops-model-metrics"
    assert {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} == {
        "metrics": (9090, "metrics"), "health": (8080, "health")}
    assert spec["securityContext"]["runAsUser"] == 10001
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    # The image comes from values; no metrics Service or no operator: nothing to test.
    other = _test_pod(render_chart(set_values=("tests.image=registry.example.com/tools/python:3.12",)))
    assert other["spec"]["containers"][0]["image"] == "registry.example.com/tools/python:3.12"
    assert _test_pod(render_chart(set_values=("metrics.service.enabled=false",))) is None
    assert _test_pod(render_chart(set_values=("operator.replicas=0",))) is None
    assert _test_pod(render_chart(set_values=("tests.enabled=false",))) is None


def _serve(routes):
    """A local HTTP server answering GET path -> (status, body); returns (server, base URL)."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            status, body = routes.get(self.path, (404, "not found"))
            self.send_response(status)
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.mark.parametrize(("routes", "ok", "says"), [
    ({"/readyz": (200, "ok"), "/metrics": (200, "devops_model_operator_runs 1\n")}, True, "ok: "),
    ({"/readyz": (503, "starting"), "/metrics": (200, "devops_model_operator_runs 1\n")}, False, "/readyz"),
    ({"/readyz": (200, "ok"), "/metrics": (200, "python_gc_objects_collected_total 1\n")}, False, "no devops_model_operator_ series"),
])
def test_the_helm_test_script_passes_only_a_ready_operator_with_its_metrics(routes, ok, says):
    """The test pod's own script, run here against a stand-in operator (the same python3 -c)."""
    import os
    import sys

    (c,) = _test_pod(render_chart())["spec"]["containers"]
    assert c["command"] == ["python3", "-c"]
    server, base = _serve(routes)
    try:
        env = {**os.environ, "READY_URL": f"{base}/readyz", "METRICS_URL": f"{base}/metrics", "TIMEOUT_SECONDS": "1"}
        r = subprocess.run([sys.executable, "-c", c["args"][0]], env=env, capture_output=True, text=True, timeout=30)
    finally:
        server.shutdown()
    assert (r.returncode == 0) is ok, r.stdout + r.stderr
    assert says in r.stdout + r.stderr


def _notes(tmp_path, *args: str) -> str:
    """NOTES.txt rendered by `helm template` (which never prints NOTES, and `helm install --dry-run`
    needs a cluster): a copy of the chart carries NOTES.txt as a named template and a ConfigMap
    holding its text. Discovery is helm's default (no Kubeflow kinds) unless --api-versions says."""
    import shutil

    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "_notes_probe.tpl").write_text('{{- define "notes-probe" -}}\n' + notes + "{{- end -}}\n")
    (chart / "templates" / "notes-probe.yaml").write_text(
        'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: {{ include "notes-probe" . | toJson }}\n')
    r = helm_template(chart=chart, extra=("--show-only", "templates/notes-probe.yaml", *args))
    assert r.returncode == 0, r.stderr
    return yaml.safe_load(r.stdout)["data"]["notes"]


KUBEFLOW_SERVED = ("--api-versions", "kubeflow.org/v1/PyTorchJob", "--api-versions", "trainer.kubeflow.org/v1alpha1/TrainJob")


def test_notes_warn_when_kubeflow_kinds_are_not_served_and_name_helm_test(tmp_path):
    notes = _notes(tmp_path)
    assert "WARNING: the PyTorchJob CRD (pytorchjobs.kubeflow.org) is not installed" in notes
    assert "WARNING: the TrainJob CRD (trainjobs.trainer.kubeflow.org) is not installed" in notes
    assert "Kubeflow Trainer v2.2 or later" in notes
    assert "helm test rel -n devops-model" in notes
    assert "WARNING" not in _notes(tmp_path / "served", *KUBEFLOW_SERVED)
    only_pytorch = _notes(tmp_path / "pytorch", "--api-versions", "kubeflow.org/v1/PyTorchJob")
    assert "PyTorchJob CRD" not in only_pytorch and "TrainJob CRD" in only_pytorch
    # Without Kubeflow RBAC the launchers are not used: nothing to warn about.
    assert "WARNING" not in _notes(tmp_path / "no-kubeflow", "--set", "rbac.kubeflow=false")
    assert "helm test" not in _notes(tmp_path / "no-tests", "--set", "tests.enabled=false")
