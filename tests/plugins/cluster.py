"""pytest plugin: a real Kubernetes control plane (etcd + kube-apiserver + kube-controller-manager) for tests.

Fixtures
--------
control_plane  (session)   a ControlPlaneFixture: its own instance on free loopback ports, state in a
                           temporary directory (so it never clashes with `make cluster-up`), with the
                           Kubeflow CRDs and the repository's crds/*.yaml applied and Established.
k8s_namespace  (function)  a fresh namespace name, deleted after the test.

The binaries come from tests/cluster/build.sh (cached in ~/.cache/devops-model/k8s/<version>/). When
they are missing the fixture FAILS (never skips) and says to run `make cluster-build`; with
DEVOPS_MODEL_CLUSTER_BUILD=1 it runs build.sh itself instead. See docs/control-plane.md.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

import pytest

_CLUSTER_DIR = Path(__file__).resolve().parent.parent / "cluster"


def _load_controlplane():
    name = "devops_model_tests_controlplane"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _CLUSTER_DIR / "controlplane.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


cp_mod = _load_controlplane()
ControlPlaneError = cp_mod.ControlPlaneError


class ControlPlaneFixture:
    """What the `control_plane` fixture yields. Every helper talks to this instance only."""

    def __init__(self, cp, work_dir: Path):
        self._cp = cp
        self.work_dir = work_dir  # for kubeconfigs and files the helpers write
        self.work_dir.mkdir(parents=True, exist_ok=True)

    # -- where things are ------------------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig (system:masters)."""
        return self._cp.kubeconfig

    @property
    def server(self) -> str:
        """https://127.0.0.1:<port>"""
        return self._cp.server

    @property
    def bin_dir(self) -> Path:
        """Directory with kubectl, helm, kube-apiserver, kube-controller-manager, etcd."""
        return self._cp.bin_dir

    @property
    def ca_file(self) -> Path:
        return self._cp.pki / "ca.crt"

    @property
    def logs(self) -> Path:
        return self._cp.logs

    @property
    def kubeflow_crds(self) -> list[Path]:
        return cp_mod.kubeflow_crd_files()

    def env(self, kubeconfig: Path | str | None = None) -> dict[str, str]:
        """os.environ plus KUBECONFIG and PATH with bin_dir first: for running kubectl/helm/an operator."""
        e = dict(os.environ)
        e["KUBECONFIG"] = str(kubeconfig or self.kubeconfig)
        e["PATH"] = f"{self.bin_dir}{os.pathsep}{e.get('PATH', '')}"
        return e

    # -- commands --------------------------------------------------------------------------------
    def kubectl(self, *args: str, check: bool = True, input: str | bytes | None = None,
                kubeconfig: Path | str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        """Runs kubectl with this cluster's admin kubeconfig (or `kubeconfig`). With check=True a non-zero
        exit raises ControlPlaneError carrying kubectl's stderr; with check=False read .returncode/.stderr."""
        return self._cp.kubectl(*args, check=check, input=input, kubeconfig=kubeconfig, timeout=timeout)

    def helm(self, *args: str, check: bool = True, kubeconfig: Path | str | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess:
        """Runs the cached helm binary against this cluster."""
        cmd = [str(self.bin_dir / "helm"), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           env=self.env(kubeconfig))
        if check and r.returncode != 0:
            raise ControlPlaneError(f"`helm {' '.join(args)}` failed (exit {r.returncode}):\n{r.stderr}{r.stdout}")
        return r

    def apply(self, obj_or_yaml: Any, namespace: str | None = None, *, server_side: bool = True,
              check: bool = True, kubeconfig: Path | str | None = None) -> subprocess.CompletedProcess:
        """Applies a dict, a list of dicts, a YAML/JSON string, or a Path to a file/directory.

        Server-side apply by default (field managers; large CRDs). Use check=False to look at a rejection:
        the server's message is in .stderr."""
        args = ["apply"]
        if server_side:
            args += ["--server-side", "--force-conflicts"]
        if namespace:
            args += ["-n", namespace]
        data: str | None = None
        if isinstance(obj_or_yaml, Path):
            args += ["-f", str(obj_or_yaml)]
        elif isinstance(obj_or_yaml, (dict, list, tuple)):
            items = list(obj_or_yaml) if isinstance(obj_or_yaml, (list, tuple)) else [obj_or_yaml]
            doc = items[0] if len(items) == 1 else {"apiVersion": "v1", "kind": "List", "items": items}
            data = json.dumps(doc)
            args += ["-f", "-"]
        elif isinstance(obj_or_yaml, str):
            data = obj_or_yaml
            args += ["-f", "-"]
        else:
            raise TypeError(f"apply() takes a dict, list, YAML string or Path, not {type(obj_or_yaml).__name__}")
        return self.kubectl(*args, input=data, check=check, kubeconfig=kubeconfig)

    def get(self, kind: str, name: str | None = None, namespace: str | None = None, *,
            kubeconfig: Path | str | None = None) -> dict | None:
        """The object (or the list, without a name) as a dict; None when it does not exist."""
        args = ["get", kind] + ([name] if name else []) + (["-n", namespace] if namespace else []) + ["-o", "json"]
        r = self.kubectl(*args, check=False, kubeconfig=kubeconfig)
        if r.returncode != 0:
            if "NotFound" in r.stderr or "not found" in r.stderr:
                return None
            raise ControlPlaneError(f"`kubectl {' '.join(args)}` failed:\n{r.stderr}")
        return json.loads(r.stdout)

    def delete(self, kind: str, name: str, namespace: str | None = None, *, wait: bool = False,
               check: bool = True) -> subprocess.CompletedProcess:
        args = ["delete", kind, name, f"--wait={'true' if wait else 'false'}"]
        if namespace:
            args += ["-n", namespace]
        if not check:
            args.append("--ignore-not-found")
        return self.kubectl(*args, check=check)

    def apply_crds(self, files: Iterable[Path], timeout: float = 60) -> None:
        """Applies CRD files (server-side) and waits until every CRD is Established."""
        self._cp.apply_files(list(files), wait_established=timeout)

    def crd_established(self, name: str) -> bool:
        crd = self.get("customresourcedefinition", name)
        conds = (crd or {}).get("status", {}).get("conditions", [])
        return any(c.get("type") == "Established" and c.get("status") == "True" for c in conds)

    # -- namespaces and identities ---------------------------------------------------------------
    def namespace(self, prefix: str = "test") -> str:
        """Creates a fresh namespace (prefix-<random>) and returns its name."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"[:63]
        self.kubectl("create", "namespace", name)
        return name

    def delete_namespace(self, name: str) -> None:
        self.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")

    def service_account_kubeconfig(self, namespace: str, name: str, duration: str = "1h") -> Path:
        """Creates the ServiceAccount if needed, requests a token for it (TokenRequest API, through
        `kubectl create token`) and writes a kubeconfig that authenticates as it. Requests made with it
        are subject to exactly the RBAC bound to system:serviceaccount:<namespace>:<name>."""
        if self.get("serviceaccount", name, namespace) is None:
            self.kubectl("create", "serviceaccount", name, "-n", namespace)
        token = self.kubectl("create", "token", name, "-n", namespace, f"--duration={duration}").stdout.strip()
        path = self.work_dir / f"sa-{namespace}-{name}.kubeconfig"
        return cp_mod.write_kubeconfig(path, self.server, self.ca_file, token=token,
                                       user=f"system:serviceaccount:{namespace}:{name}", namespace=namespace)

    def can_i(self, verb: str, resource: str, namespace: str | None = None, *,
              kubeconfig: Path | str | None = None) -> bool:
        """`kubectl auth can-i` as the kubeconfig's identity (SelfSubjectAccessReview)."""
        args = ["auth", "can-i", verb, resource] + (["-n", namespace] if namespace else [])
        r = self.kubectl(*args, check=False, kubeconfig=kubeconfig)
        return r.stdout.strip() == "yes"

    # -- waiting ---------------------------------------------------------------------------------
    @staticmethod
    def wait_for(fn: Callable[[], Any], timeout: float = 60, message: str | Callable[[], str] = "condition",
                 interval: float = 0.25) -> Any:
        """Calls fn until it returns something truthy and returns that. On timeout fails the test with
        `message` (a string, or a callable evaluated then, for current state), fn's last result and the
        last exception fn raised."""
        deadline = time.monotonic() + timeout
        last: Any = None
        last_exc: BaseException | None = None
        t0 = time.monotonic()
        while True:
            try:
                last = fn()
                last_exc = None
                if last:
                    return last
            except Exception as e:  # noqa: BLE001 - reported below
                last_exc = e
            if time.monotonic() >= deadline:
                break
            time.sleep(interval)
        msg = message() if callable(message) else message
        detail = f"; last result: {last!r}"
        if last_exc is not None:
            detail += f"; last error: {type(last_exc).__name__}: {last_exc}"
        pytest.fail(f"timed out after {time.monotonic() - t0:.1f}s waiting for {msg}{detail}", pytrace=False)

    def log_tail(self, component: str = "kube-apiserver", lines: int = 40) -> str:
        return cp_mod._tail(self.logs / f"{component}.log", lines)


def _binaries_or_fail() -> None:
    missing = cp_mod.binaries_missing()
    if missing is None:
        return
    if os.environ.get("DEVOPS_MODEL_CLUSTER_BUILD") == "1":
        try:
            cp_mod.build()
        except ControlPlaneError as e:
            pytest.fail(str(e), pytrace=False)
        return
    pytest.fail(
        "the Kubernetes control-plane binaries are not built: run `make cluster-build` "
        "(tests/cluster/build.sh; the first build takes about 8 minutes on 2 cores, later runs reuse "
        f"{cp_mod.cache_dir()}), or set DEVOPS_MODEL_CLUSTER_BUILD=1 to let the tests build them.\n{missing}",
        pytrace=False)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory):
    """A running control plane for the whole session (see ControlPlaneFixture)."""
    _binaries_or_fail()
    base = tmp_path_factory.mktemp("control-plane")
    cp = cp_mod.ControlPlane(base / "state", ports=cp_mod.Ports.free(), die_with_parent=True)
    try:
        cp.start()
    except ControlPlaneError as e:
        pytest.fail(f"the control plane did not start: {e}", pytrace=False)
    fx = ControlPlaneFixture(cp, base / "work")
    try:
        fx.apply_crds(cp_mod.kubeflow_crd_files())
        project = cp_mod.project_crd_files()
        if project:
            fx.apply_crds(project)
    except ControlPlaneError as e:
        _stop(cp, base)
        pytest.fail(f"applying CRDs to the control plane failed: {e}", pytrace=False)
    yield fx
    _stop(cp, base)


def _stop(cp, base: Path) -> None:
    # Keep the logs next to the (removed) state for a post-mortem.
    if cp.logs.exists():
        shutil.copytree(cp.logs, base / "logs", dirs_exist_ok=True)
    cp.stop()


@pytest.fixture
def k8s_namespace(control_plane: ControlPlaneFixture):
    """A fresh namespace for one test; deleted (without waiting) afterwards."""
    name = control_plane.namespace()
    yield name
    control_plane.delete_namespace(name)


def pytest_report_header(config) -> str:
    v = cp_mod.read_versions()
    return (f"control plane: kubernetes {v['K8S_VERSION']}, etcd {v['ETCD_VERSION']}, helm {v['HELM_VERSION']} "
            f"(binaries: {cp_mod.bin_dir()})")
