"""The Kubernetes "restricted" Pod Security Standard, checked on every pod this project creates.

    .venv/bin/python -m pytest tests/deploy/test_pod_security.py -q

What is checked: every pod template rendered by the Helm chart (default values and each
charts/devops-model/ci/*-values.yaml) and every child that `devops-model render` prints for every
example in examples/local and examples/cluster, plus one resource of each kind and each launcher /
engine variant (tests/api/api_cases.py), rendered with the chart's own operator configuration.

`restricted_violations(pod_spec)` implements the profile's controls
(https://kubernetes.io/docs/concepts/security/pod-security-standards/, baseline + restricted) and the
project's extra rule that every container has a read-only root file system. A pod spec is any object
with a `containers` list: Deployment/Job templates, PyTorchJob replica templates, bare Pods.
A TrainJob (Kubeflow Trainer v2.2+) has its pod spec in `spec.runtimePatches[].trainingRuntimeSpec`:
the operator's patch sets the restricted security context (pod and the `node` container), volumes
and service account on top of the ClusterTrainingRuntime's template, and is checked like any pod
spec (the runtime's own template is the cluster admin's, docs/install.md).
"""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from devops_model.yamlio import dump
from tests.api.api_cases import base
from tests.plugins.chart import CHART, CI_VALUES, render_chart

REPO = Path(__file__).resolve().parents[2]
DEVOPS_MODEL = REPO / ".venv" / "bin" / "devops-model"

# Restricted profile: the only volume types allowed.
ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                   "projected", "secret"}
# Baseline: sysctls allowed without a privileged namespace.
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def restricted_violations(pod_spec: dict[str, Any], where: str = "spec") -> list[str]:
    """Every way `pod_spec` breaks the restricted profile (empty when it meets it), each as
    'PATH: what is wrong (fix)'."""
    out: list[str] = []
    psc = pod_spec.get("securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(key):
            out.append(f"{where}.{key}: must be unset or false")
    for i, v in enumerate(pod_spec.get("volumes") or []):
        kinds = set(v) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            out.append(f"{where}.volumes[{i}] ({v.get('name')}): type {sorted(kinds - ALLOWED_VOLUMES)} "
                       f"is not allowed (use one of {sorted(ALLOWED_VOLUMES)})")
    for s in psc.get("sysctls") or []:
        if s.get("name") not in SAFE_SYSCTLS:
            out.append(f"{where}.securityContext.sysctls: {s.get('name')} is not a safe sysctl")
    if psc.get("runAsUser") == 0:
        out.append(f"{where}.securityContext.runAsUser: must not be 0")
    if psc.get("windowsOptions", {}).get("hostProcess"):
        out.append(f"{where}.securityContext.windowsOptions.hostProcess: must not be true")
    out += _selinux(psc.get("seLinuxOptions"), f"{where}.securityContext.seLinuxOptions")
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if pod_seccomp not in (None, "RuntimeDefault", "Localhost"):
        out.append(f"{where}.securityContext.seccompProfile.type: {pod_seccomp} is not allowed (RuntimeDefault)")
    pod_non_root = psc.get("runAsNonRoot") is True

    groups = [("initContainers", pod_spec.get("initContainers") or []),
              ("containers", pod_spec.get("containers") or []),
              ("ephemeralContainers", pod_spec.get("ephemeralContainers") or [])]
    if not pod_spec.get("containers"):
        out.append(f"{where}.containers: no containers")
    for group, containers in groups:
        for i, c in enumerate(containers):
            p = f"{where}.{group}[{i}] ({c.get('name')})"
            sc = c.get("securityContext") or {}
            if sc.get("privileged"):
                out.append(f"{p}.securityContext.privileged: must not be true")
            if sc.get("allowPrivilegeEscalation") is not False:
                out.append(f"{p}.securityContext.allowPrivilegeEscalation: must be false")
            caps = sc.get("capabilities") or {}
            if "ALL" not in (caps.get("drop") or []):
                out.append(f"{p}.securityContext.capabilities.drop: must contain ALL")
            extra = set(caps.get("add") or []) - {"NET_BIND_SERVICE"}
            if extra:
                out.append(f"{p}.securityContext.capabilities.add: {sorted(extra)} not allowed (only NET_BIND_SERVICE)")
            if sc.get("runAsNonRoot") is False or not (pod_non_root or sc.get("runAsNonRoot") is True):
                out.append(f"{p}.securityContext.runAsNonRoot: must be true (here or in the pod's securityContext)")
            if sc.get("runAsUser") == 0:
                out.append(f"{p}.securityContext.runAsUser: must not be 0")
            seccomp = (sc.get("seccompProfile") or {}).get("type")
            if seccomp not in (None, "RuntimeDefault", "Localhost") or (seccomp is None and pod_seccomp is None):
                out.append(f"{p}.securityContext.seccompProfile.type: must be RuntimeDefault or Localhost "
                           "(here or in the pod's securityContext)")
            if sc.get("procMount", "Default") != "Default":
                out.append(f"{p}.securityContext.procMount: must be Default")
            out += _selinux(sc.get("seLinuxOptions"), f"{p}.securityContext.seLinuxOptions")
            if sc.get("windowsOptions", {}).get("hostProcess"):
                out.append(f"{p}.securityContext.windowsOptions.hostProcess: must not be true")
            for j, port in enumerate(c.get("ports") or []):
                if port.get("hostPort"):
                    out.append(f"{p}.ports[{j}].hostPort: must be unset or 0")
            # The project's own rule on top of the profile: nothing writes outside its volumes.
            if group != "ephemeralContainers" and sc.get("readOnlyRootFilesystem") is not True:
                out.append(f"{p}.securityContext.readOnlyRootFilesystem: must be true (mount an emptyDir where it writes)")
    return out


def _selinux(opts: dict | None, path: str) -> list[str]:
    if not opts:
        return []
    out = []
    if opts.get("type", "") not in SELINUX_TYPES:
        out.append(f"{path}.type: {opts['type']} not allowed")
    for k in ("user", "role"):
        if opts.get(k):
            out.append(f"{path}.{k}: must be unset")
    return out


def pod_specs(obj: Any, path: str = "") -> Iterator[tuple[str, dict]]:
    """(path, pod spec) for every object with a `containers` list anywhere inside `obj`."""
    if isinstance(obj, dict):
        if isinstance(obj.get("containers"), list):
            yield path or ".", obj
            return
        for k, v in obj.items():
            yield from pod_specs(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from pod_specs(v, f"{path}[{i}]")


def check_manifest(obj: dict) -> list[str]:
    """Violations of every pod template in one manifest (named by kind/name and path)."""
    name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    out = []
    for path, spec in pod_specs(obj):
        out += [f"{name} {v}" for v in restricted_violations(spec, path)]
    return out


# -- the checker itself: each control catches what it should --------------------------------------

GOOD_POD = {
    "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
    "containers": [{"name": "c", "image": "x", "securityContext": {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]}}}],
    "volumes": [{"name": "tmp", "emptyDir": {}}],
}


def _mut(path: str, value: Any):
    def apply(pod: dict) -> dict:
        pod = copy.deepcopy(pod)
        node = pod
        keys = path.split(".")
        for k in keys[:-1]:
            node = node[int(k)] if k.isdigit() else node.setdefault(k, {})
        last = keys[-1]
        if value is _DELETE:
            node.pop(last, None)
        else:
            node[last] = value
        return pod
    return apply


_DELETE = object()
BAD_PODS = [
    ("hostNetwork", _mut("hostNetwork", True), "hostNetwork"),
    ("hostPath volume", _mut("volumes", [{"name": "h", "hostPath": {"path": "/"}}]), "volumes[0]"),
    ("privileged", _mut("containers.0.securityContext.privileged", True), "privileged"),
    ("privilege escalation", _mut("containers.0.securityContext.allowPrivilegeEscalation", True), "allowPrivilegeEscalation"),
    ("capabilities not dropped", _mut("containers.0.securityContext.capabilities", {}), "capabilities.drop"),
    ("SYS_ADMIN added", _mut("containers.0.securityContext.capabilities.add", ["SYS_ADMIN"]), "capabilities.add"),
    ("runAsNonRoot missing", _mut("securityContext.runAsNonRoot", _DELETE), "runAsNonRoot"),
    ("root user", _mut("securityContext.runAsUser", 0), "runAsUser"),
    ("seccomp missing", _mut("securityContext.seccompProfile", _DELETE), "seccompProfile"),
    ("seccomp unconfined", _mut("securityContext.seccompProfile", {"type": "Unconfined"}), "seccompProfile"),
    ("writable root fs", _mut("containers.0.securityContext.readOnlyRootFilesystem", False), "readOnlyRootFilesystem"),
    ("hostPort", _mut("containers.0.ports", [{"containerPort": 80, "hostPort": 80}]), "hostPort"),
    ("unsafe sysctl", _mut("securityContext.sysctls", [{"name": "kernel.msgmax", "value": "1"}]), "sysctls"),
]


def test_checker_accepts_a_restricted_pod():
    assert restricted_violations(GOOD_POD) == []


@pytest.mark.parametrize("mutate,field", [pytest.param(m, f, id=i) for i, m, f in BAD_PODS])
def test_checker_catches(mutate, field):
    violations = restricted_violations(mutate(GOOD_POD))
    assert violations and any(field in v for v in violations), violations


# -- the chart -----------------------------------------------------------------------------------

CHART_SCENARIOS = [pytest.param((), id="default")] + [pytest.param((f,), id=f.stem) for f in CI_VALUES]


@pytest.mark.parametrize("values_files", CHART_SCENARIOS)
def test_every_chart_pod_is_restricted(values_files):
    objects = render_chart(values_files)
    pods = [(o, p) for o in objects for p in pod_specs(o)]
    assert pods, "the chart rendered no pod template"
    problems = [v for o in objects for v in check_manifest(o)]
    assert problems == []


# -- the operator's children ---------------------------------------------------------------------

def _variants() -> list[tuple[str, dict]]:
    """One resource of each kind, and each launcher and engine (they build different pod specs)."""
    out = []
    for kind in ("PretrainRun", "SFTRun", "EvalRun", "QuantizeRun", "ChatDeployment"):
        out.append((kind, base(kind)))
    for launcher in ("PyTorchJob", "Job"):
        r = base("PretrainRun")
        r["spec"]["launcher"] = launcher
        out.append((f"PretrainRun-{launcher}", r))
    for engine in ("tgi", "builtin"):
        r = base("ChatDeployment")
        r["spec"]["engine"] = {"name": engine}
        r["spec"]["networkPolicy"] = "namespace"
        out.append((f"ChatDeployment-{engine}", r))
    return out


def _examples() -> list[Path]:
    return sorted(p for d in ("examples/local", "examples/cluster") for p in (REPO / d).glob("*.y*ml"))


def _render(path: Path) -> list[dict]:
    """`devops-model render -f PATH` with the chart's operator configuration, as a user would run it."""
    r = subprocess.run([str(DEVOPS_MODEL), "render", "-f", str(path), "--values", str(CHART / "values.yaml")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"devops-model render -f {path} failed:\n{r.stderr}"
    return [d for d in yaml.safe_load_all(r.stdout) if d]


@pytest.fixture(scope="module")
def variant_children(tmp_path_factory) -> dict[str, list[dict]]:
    """The children of every variant, rendered in one `devops-model render` call (one process start)."""
    d = tmp_path_factory.mktemp("variants")
    out = {}
    for name, res in _variants():
        res["metadata"]["name"] = name.lower()  # distinct names, so children can be told apart
        res["metadata"]["namespace"] = "team-a"
        (d / f"{name}.yaml").write_text(dump(res))
    every = d / "all.yaml"
    every.write_text("---\n".join((d / f"{name}.yaml").read_text() for name, _ in _variants()))
    children = _render(every)
    for name, _ in _variants():
        out[name] = [o for o in children if o["metadata"].get("labels", {}).get("devops-model.io/run") == name.lower()]
    return out


@pytest.mark.parametrize("variant", [name for name, _ in _variants()])
def test_children_of_every_kind_are_restricted(variant, variant_children):
    children = variant_children[variant]
    assert children, f"{variant}: rendered no children"
    assert any(True for o in children for _ in pod_specs(o)), f"{variant}: no pod template among {[o['kind'] for o in children]}"
    assert [v for o in children for v in check_manifest(o)] == []


@pytest.mark.parametrize("example", _examples(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_children_of_every_example_are_restricted(example):
    children = _render(example)
    assert children, f"{example}: rendered no children"
    assert [v for o in children for v in check_manifest(o)] == []


def _containers(obj: dict) -> Iterator[dict]:
    for _, spec in pod_specs(obj):
        yield from spec.get("containers", [])
    if obj.get("kind") == "TrainJob":
        yield obj["spec"]["trainer"]


def test_secrets_reach_pods_by_reference_only(variant_children):
    """No child carries secret material: credentials are secretKeyRef/secretRef names, and no Secret
    object is ever created by the operator."""
    for name, children in variant_children.items():
        for obj in children:
            assert obj["kind"] != "Secret", f"{name}: the operator must not create Secrets"
            for c in _containers(obj):
                for e in c.get("env") or []:
                    low = e["name"].lower()
                    if any(w in low for w in ("token", "secret", "password", "api_key", "apikey")):
                        assert "value" not in e, f"{name}: env {e['name']} carries a literal value; use valueFrom.secretKeyRef"


def _mentions_remote_code(obj: dict) -> bool:
    if obj.get("kind") == "ConfigMap":  # the worker entry point reads the spec itself (builtin chat, runs)
        spec = yaml.safe_load((obj.get("data") or {}).get("resource.yaml") or "{}") or {}
        return bool(((spec.get("spec") or {}).get("model") or {}).get("trustRemoteCode"))
    text = yaml.safe_dump([c.get("command", []) + c.get("args", []) for c in _containers(obj)]).lower()
    env = [e for c in _containers(obj) for e in c.get("env") or [] if "REMOTE_CODE" in e["name"].upper()]
    return "trust-remote-code" in text or "trust_remote_code" in text or any(e.get("value") in ("1", "true", "True") for e in env)


def test_trust_remote_code_only_when_the_resource_asks(variant_children, tmp_path):
    for name, children in variant_children.items():
        assert not any(_mentions_remote_code(o) for o in children), f"{name}: remote code trusted by default"
    # And the switch is honoured when asked for (so the check above can see it).
    chat = base("ChatDeployment")
    chat["spec"]["engine"] = {"name": "builtin"}
    chat["spec"]["model"]["trustRemoteCode"] = True
    (tmp_path / "chat.yaml").write_text(dump(chat))
    assert any(_mentions_remote_code(o) for o in _render(tmp_path / "chat.yaml"))


@pytest.mark.parametrize("engine", ["tgi", "builtin"])
def test_chat_network_policy_admits_only_its_namespace(engine, variant_children):
    """spec.networkPolicy: namespace puts a NetworkPolicy in front of the chat pods: only pods of the
    same namespace reach the server's port."""
    children = variant_children[f"ChatDeployment-{engine}"]
    (dep,) = [o for o in children if o["kind"] == "Deployment"]
    (np,) = [o for o in children if o["kind"] == "NetworkPolicy"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert np["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert np["spec"]["policyTypes"] == ["Ingress"]
    for rule in np["spec"]["ingress"]:
        assert rule.get("from"), "an ingress rule without `from` admits every pod in the cluster"
        for peer in rule["from"]:
            assert "namespaceSelector" not in peer and "ipBlock" not in peer, peer
    assert not [o for o in variant_children["ChatDeployment"] if o["kind"] == "NetworkPolicy"], \
        "networkPolicy: none (the default) creates none"
