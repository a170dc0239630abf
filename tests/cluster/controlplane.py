#!/usr/bin/env python3
"""A real Kubernetes control plane on loopback: etcd + kube-apiserver + kube-controller-manager.

The binaries come from tests/cluster/build.sh (built from the Go module proxy, cached outside the
checkout). This module only starts, checks and stops them; it uses the standard library alone (plus the
`openssl` command for certificates), so `make cluster-up` works without the project's virtualenv.

    python3 tests/cluster/controlplane.py up   [--dir .cluster]   # make cluster-up
    python3 tests/cluster/controlplane.py down [--dir .cluster]   # make cluster-down
    python3 tests/cluster/controlplane.py status [--dir .cluster]

Ports (127.0.0.1 only) default to CLUSTER_ETCD_PORT=22379, CLUSTER_ETCD_PEER_PORT=22380,
CLUSTER_APISERVER_PORT=16443, CLUSTER_CONTROLLER_MANAGER_PORT=20257. The pytest plugin
(tests/plugins/cluster.py) starts its own instance on free ports in a temporary directory.

State directory layout: pki/ (CA, serving and client certificates, service-account keys),
kubeconfig (admin, system:masters), controller-manager.kubeconfig, etcd/ (data), logs/*.log,
pids/*.pid, state.json (ports, binaries).
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

# node.py, images.py and training_operator.py `import controlplane`: let them get this very module, whether
# it runs as a script or was loaded by the pytest plugin under another name (one ControlPlaneError class).
sys.modules.setdefault("controlplane", sys.modules[__name__])

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
BUILD_SH = HERE / "build.sh"
MARKER = "state.json"
LOOPBACK = "127.0.0.1"
SERVICE_CIDR = "10.0.0.0/24"  # ClusterIPs; without a node never contacted, with one kube-proxy's
NODE_GATEWAY = "10.244.0.1"   # the node's bridge address (node.py), where pods reach the API server
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager")  # start order; stop is reversed


class ControlPlaneError(RuntimeError):
    pass


def read_versions() -> dict[str, str]:
    out = {}
    for line in (HERE / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def cache_dir() -> Path:
    """~/.cache/devops-model/k8s/<version> (or $DEVOPS_MODEL_K8S_CACHE/<version>), as build.sh uses."""
    root = os.environ.get("DEVOPS_MODEL_K8S_CACHE")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = str(Path(xdg) / "devops-model" / "k8s")
    return Path(root) / read_versions()["K8S_VERSION"]


def bin_dir() -> Path:
    return cache_dir() / "bin"


def kubeflow_crd_dir() -> Path:
    """The Kubeflow CRDs fetched by build.sh (PyTorchJob; TrainJob, TrainingRuntime, ClusterTrainingRuntime),
    in a directory keyed by the pinned versions (versions.env), as build.sh names it."""
    v = read_versions()
    return cache_dir() / "kubeflow-crds" / f"training-operator-{v['TRAINING_OPERATOR_VERSION']}.trainer-{v['TRAINER_VERSION']}"


def kubeflow_crd_files() -> list[Path]:
    return sorted(kubeflow_crd_dir().glob("*.yaml"))


def project_crd_files() -> list[Path]:
    d = REPO / "crds"
    return sorted(p for p in d.glob("*.y*ml") if p.is_file()) if d.is_dir() else []


def binaries_missing() -> str | None:
    """None when build.sh has everything cached, else build.sh's explanation of what is missing."""
    r = subprocess.run(["bash", str(BUILD_SH), "--check"], capture_output=True, text=True)
    return None if r.returncode == 0 else (r.stderr.strip() or r.stdout.strip() or "binaries missing")


def build(quiet: bool = False) -> None:
    """Runs build.sh (a no-op taking well under a second when everything is cached)."""
    r = subprocess.run(["bash", str(BUILD_SH)], capture_output=quiet, text=True)
    if r.returncode != 0:
        raise ControlPlaneError(f"tests/cluster/build.sh failed (exit {r.returncode}):\n{r.stderr if quiet else ''}")


def http_ok(url: str, timeout: float = 2) -> bool:
    """Whether a plain-HTTP health route answers 200 (readiness of the node's helpers)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Go servers do: TIME_WAIT is not "taken"
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return True
        return False


def _port_owner(port: int) -> str:
    if not shutil.which("ss"):
        return ""
    r = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True)
    return r.stdout.strip()


@dataclass
class Ports:
    etcd: int = 22379
    etcd_peer: int = 22380
    apiserver: int = 16443
    controller_manager: int = 20257

    ENV = {
        "etcd": "CLUSTER_ETCD_PORT",
        "etcd_peer": "CLUSTER_ETCD_PEER_PORT",
        "apiserver": "CLUSTER_APISERVER_PORT",
        "controller_manager": "CLUSTER_CONTROLLER_MANAGER_PORT",
    }

    @classmethod
    def from_env(cls) -> "Ports":
        p = cls()
        for field, var in cls.ENV.items():
            if os.environ.get(var):
                setattr(p, field, int(os.environ[var]))
        return p

    @classmethod
    def free(cls) -> "Ports":
        ports: set[int] = set()
        while len(ports) < 4:
            ports.add(free_port())
        a, b, c, d = sorted(ports)
        return cls(etcd=a, etcd_peer=b, apiserver=c, controller_manager=d)


# ----------------------------------------------------------------------------------------------
# PKI (openssl)
# ----------------------------------------------------------------------------------------------

def _openssl(*args: str, input: bytes | None = None) -> None:
    r = subprocess.run(["openssl", *args], input=input, capture_output=True)
    if r.returncode != 0:
        raise ControlPlaneError(f"openssl {' '.join(args)} failed:\n{r.stderr.decode(errors='replace')}")


def _issue(pki: Path, name: str, subject: str, ext: str, ca: str = "ca") -> None:
    """An EC P-256 key and a certificate signed by pki/<ca>.crt, valid for ten years."""
    key, csr, crt, extfile = (pki / f"{name}.{s}" for s in ("key", "csr", "crt", "ext"))
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", subject)
    extfile.write_text(ext)
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(pki / f"{ca}.crt"), "-CAkey", str(pki / f"{ca}.key"),
             "-CAcreateserial", "-days", "3650", "-sha256", "-extfile", str(extfile), "-out", str(crt))
    csr.unlink()
    extfile.unlink()


def make_pki(pki: Path) -> None:
    pki.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(pki / "ca.key"), "-out", str(pki / "ca.crt"), "-days", "3650", "-sha256",
             "-subj", "/CN=devops-model-test-ca",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature")
    sans = ",".join([
        "IP:127.0.0.1", "DNS:localhost", "IP:10.0.0.1", f"IP:{NODE_GATEWAY}", "DNS:kubernetes", "DNS:kubernetes.default",
        "DNS:kubernetes.default.svc", "DNS:kubernetes.default.svc.cluster.local",
    ])
    server = f"subjectAltName={sans}\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
    client = "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
    _issue(pki, "apiserver", "/CN=kube-apiserver", server)
    _issue(pki, "admin", "/O=system:masters/CN=devops-model-admin", client)
    _issue(pki, "controller-manager", "/CN=system:kube-controller-manager", client)
    _issue(pki, "apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client", client)
    # Front-proxy (aggregation layer) CA and client: lets controller-manager and aggregated servers read
    # a complete kube-system/extension-apiserver-authentication ConfigMap.
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(pki / "front-proxy-ca.key"), "-out", str(pki / "front-proxy-ca.crt"), "-days", "3650",
             "-sha256", "-subj", "/CN=devops-model-front-proxy-ca",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature")
    _issue(pki, "front-proxy-client", "/CN=front-proxy-client", client, ca="front-proxy-ca")
    # Service-account token signing key (RS256).
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(pki / "sa.key"))
    _openssl("pkey", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))
    for p in pki.iterdir():
        if p.suffix == ".key":
            p.chmod(0o600)


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, server: str, ca: Path, *, cert: Path | None = None, key: Path | None = None,
                     token: str | None = None, user: str = "admin", namespace: str | None = None) -> Path:
    """A self-contained kubeconfig (JSON, which kubectl and client libraries read as YAML)."""
    auth: dict = {}
    if cert and key:
        auth = {"client-certificate-data": _b64(cert), "client-key-data": _b64(key)}
    if token:
        auth = {"token": token}
    ctx: dict = {"cluster": "devops-model", "user": user}
    if namespace:
        ctx["namespace"] = namespace
    cfg = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "devops-model", "cluster": {"server": server, "certificate-authority-data": _b64(ca)}}],
        "users": [{"name": user, "user": auth}],
        "contexts": [{"name": "devops-model", "context": ctx}],
        "current-context": "devops-model",
    }
    path.write_text(json.dumps(cfg, indent=2) + "\n")
    path.chmod(0o600)
    return path


# ----------------------------------------------------------------------------------------------
# Processes
# ----------------------------------------------------------------------------------------------

def _proc_alive(pid: int) -> bool:
    """Some thread of the process still runs. A killed multi-threaded process shows its leader as a zombie
    (with an empty cmdline) while its other threads still exit and still hold its sockets."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except (FileNotFoundError, ProcessLookupError):
        return False
    for task in tasks:
        try:
            if (task / "stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                return True
        except (FileNotFoundError, ProcessLookupError, IndexError):
            pass
    return False


def _is_ours(pid: int, binary: str) -> bool:
    """The pid runs that binary (a recycled pid is not ours to signal)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return False
    return os.path.basename(cmd) == binary


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the process that started it dies (Linux prctl). SIGKILL, not
    SIGTERM: kube-apiserver's graceful shutdown waits on an etcd that is dying too."""
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


class ControlPlane:
    """One control plane instance with its state in `state_dir`."""

    def __init__(self, state_dir: Path | str, ports: Ports | None = None, bins: Path | None = None,
                 die_with_parent: bool = False, node: bool = False):
        self.state_dir = Path(state_dir).resolve()
        # With a node (node.py): the API server is also reachable from pods, at the bridge address.
        self.with_node = node or (self.state_dir / "node").is_dir()
        # For the pytest fixture: a killed test run must not leave a control plane behind.
        self.die_with_parent = die_with_parent
        self.ports = ports or Ports.from_env()
        self.bin_dir = Path(bins) if bins else bin_dir()
        self._popen: dict[str, subprocess.Popen] = {}
        saved = self.state_dir / MARKER
        if ports is None and saved.exists():  # an existing instance: adopt its ports
            try:
                self.ports = Ports(**json.loads(saved.read_text())["ports"])
            except (ValueError, KeyError, TypeError):
                pass

    # paths
    @property
    def pki(self) -> Path:
        return self.state_dir / "pki"

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://{LOOPBACK}:{self.ports.apiserver}"

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    def bin(self, name: str) -> Path:
        return self.bin_dir / name

    def _pidfile(self, name: str) -> Path:
        return self.state_dir / "pids" / f"{name}.pid"

    def pid(self, name: str) -> int | None:
        try:
            return int(self._pidfile(name).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def running(self) -> dict[str, bool]:
        out = {}
        for name in COMPONENTS:
            pid = self.pid(name)
            out[name] = bool(pid) and _is_ours(pid, name) and _proc_alive(pid)
        return out

    # health
    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return ctx

    def get_raw(self, path: str, timeout: float = 5) -> tuple[int, str]:
        """GET on the API server as the admin user: (status, body)."""
        try:
            with urllib.request.urlopen(self.server + path, context=self._ssl_context(), timeout=timeout) as r:
                return r.status, r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def readyz(self) -> bool:
        try:
            status, body = self.get_raw("/readyz")
            return status == 200 and body.strip() == "ok"
        except (OSError, ssl.SSLError):
            return False

    def _controller_manager_healthy(self) -> bool:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # its serving certificate is self-signed; /healthz needs no auth
        try:
            url = f"https://{LOOPBACK}:{self.ports.controller_manager}/healthz"
            with urllib.request.urlopen(url, context=ctx, timeout=5) as r:
                return r.status == 200
        except (OSError, ssl.SSLError, urllib.error.HTTPError):
            return False

    def is_up(self) -> bool:
        return all(self.running().values()) and self.readyz()

    # start / stop
    def _check_ports(self, grace: float = 3) -> None:
        deadline = time.monotonic() + grace  # a process that just exited may need a moment to let go
        while any(port_in_use(getattr(self.ports, f)) for f in Ports.ENV) and time.monotonic() < deadline:
            time.sleep(0.2)
        taken = []
        for field, var in Ports.ENV.items():
            port = getattr(self.ports, field)
            if port_in_use(port):
                owner = _port_owner(port)
                taken.append(f"  port {port} ({field.replace('_', '-')}, {var}) on {LOOPBACK} is taken"
                             + (f": {owner}" if owner else ""))
        if taken:
            raise ControlPlaneError(
                "cannot start the control plane, ports already in use:\n" + "\n".join(taken)
                + "\nStop whatever holds them (`make cluster-down` if it is an earlier cluster), "
                  "or choose other ports with the variables above, e.g. `CLUSTER_APISERVER_PORT=17443 make cluster-up`.")

    def _spawn(self, name: str, args: list[str]) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "pids").mkdir(parents=True, exist_ok=True)
        log = open(self.logs / f"{name}.log", "ab")
        p = subprocess.Popen([str(self.bin(name)), *args], stdin=subprocess.DEVNULL, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True, cwd=self.state_dir,
                             preexec_fn=_die_with_parent if self.die_with_parent else None)
        log.close()
        self._popen[name] = p
        self._pidfile(name).write_text(f"{p.pid}\n")

    def _wait(self, name: str, check, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            p = self._popen.get(name)
            if p is not None and p.poll() is not None:
                raise ControlPlaneError(f"{name} exited with {p.returncode} before {what}; "
                                        f"last lines of {self.logs / (name + '.log')}:\n{_tail(self.logs / (name + '.log'))}")
            time.sleep(0.2)
        raise ControlPlaneError(f"{name}: timed out after {timeout:.0f}s waiting for {what}; "
                                f"last lines of {self.logs / (name + '.log')}:\n{_tail(self.logs / (name + '.log'))}")

    def start(self, timeout: float = 180) -> float:
        """Starts etcd, kube-apiserver and kube-controller-manager; returns seconds until /readyz was ok."""
        t0 = time.monotonic()
        missing = [n for n in (*COMPONENTS, "kubectl") if not os.access(self.bin(n), os.X_OK)]
        if missing:
            raise ControlPlaneError(f"control-plane binaries missing in {self.bin_dir}: {', '.join(missing)}. "
                                    "Run `make cluster-build` (tests/cluster/build.sh) first.")
        self._check_ports()
        if self.state_dir.exists():
            shutil.rmtree(self.state_dir)
        self.state_dir.mkdir(parents=True)
        (self.state_dir / MARKER).write_text(json.dumps(
            {"ports": asdict(self.ports), "bin_dir": str(self.bin_dir), "server": self.server}, indent=2) + "\n")
        make_pki(self.pki)
        pki = self.pki
        write_kubeconfig(self.kubeconfig, self.server, pki / "ca.crt", cert=pki / "admin.crt", key=pki / "admin.key")
        cm_kubeconfig = write_kubeconfig(self.state_dir / "controller-manager.kubeconfig", self.server, pki / "ca.crt",
                                         cert=pki / "controller-manager.crt", key=pki / "controller-manager.key",
                                         user="system:kube-controller-manager")
        try:
            etcd_url = f"http://{LOOPBACK}:{self.ports.etcd}"
            peer_url = f"http://{LOOPBACK}:{self.ports.etcd_peer}"
            self._spawn("etcd", [
                "--name=devops-model", f"--data-dir={self.state_dir / 'etcd'}",
                f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=devops-model={peer_url}", "--initial-cluster-state=new",
                "--unsafe-no-fsync=true",  # test data: durability does not matter, speed does
                "--quota-backend-bytes=2147483648", "--log-level=warn",
            ])
            self._wait("etcd", lambda: self._etcd_healthy(etcd_url), 60, f"etcd /health on {etcd_url}")
            if self.with_node:
                # Pods reach the API server through the `kubernetes` Service, whose endpoint is the
                # bridge address; node.py's INPUT guard admits this port from loopback and the bridge only.
                where = ["--bind-address=0.0.0.0", f"--advertise-address={NODE_GATEWAY}",
                         "--kubelet-preferred-address-types=InternalIP"]
            else:
                where = [f"--bind-address={LOOPBACK}", f"--advertise-address={LOOPBACK}",
                         # The `kubernetes` Service's endpoints would be 127.0.0.1, which Endpoints reject:
                         # there is no node network here, so do not reconcile them.
                         "--endpoint-reconciler-type=none"]
            self._spawn("kube-apiserver", [
                f"--etcd-servers={etcd_url}",
                *where,
                f"--secure-port={self.ports.apiserver}",
                f"--cert-dir={pki}",
                f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
                f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
                f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
                "--authorization-mode=Node,RBAC",
                "--anonymous-auth=false",
                f"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
            ])
            self._wait("kube-apiserver", self.readyz, timeout, f"{self.server}/readyz = ok")
            self._spawn("kube-controller-manager", [
                f"--kubeconfig={cm_kubeconfig}",
                f"--authentication-kubeconfig={cm_kubeconfig}",
                f"--authorization-kubeconfig={cm_kubeconfig}",
                f"--bind-address={LOOPBACK}", f"--secure-port={self.ports.controller_manager}",
                f"--cert-dir={self.state_dir / 'controller-manager-certs'}",
                "--leader-elect=false",
                "--controllers=*",  # the defaults: garbage collector, job, deployment, replicaset, namespace, ...
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                "--use-service-account-credentials=true",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--profiling=false",
                "--v=1",
            ])
            self._wait("kube-controller-manager", self._controller_manager_healthy, 60,
                       f"controller-manager /healthz on {LOOPBACK}:{self.ports.controller_manager}")
        except BaseException:
            self.stop(remove_state=False)
            raise
        return time.monotonic() - t0

    @staticmethod
    def _etcd_healthy(url: str) -> bool:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                return r.status == 200 and json.loads(r.read()).get("health") == "true"
        except (OSError, ValueError):
            return False

    def start_node(self, timeout: float = 300) -> float:
        """Joins a node to this (running) control plane: node.py. Returns seconds until it was Ready."""
        return self.node().start(timeout=timeout)

    def node(self):
        import importlib
        sys.path.insert(0, str(HERE))
        return importlib.import_module("node").Node(self)

    def stop(self, remove_state: bool = True, timeout: float = 10) -> list[str]:
        """Stops every process of this instance (SIGTERM, then SIGKILL), removes the state; returns what it stopped.
        A node goes first, while the API server can still tell its kubelet to stop the pods."""
        stopped = []
        if (self.state_dir / "node").is_dir():
            stopped += self.node().stop()
        for name in reversed(COMPONENTS):
            pid = self.pid(name)
            popen = self._popen.get(name)
            if pid and _is_ours(pid, name) and _proc_alive(pid):
                for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10)):
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        break
                    deadline = time.monotonic() + wait
                    while _proc_alive(pid) and time.monotonic() < deadline:
                        if popen is not None:
                            popen.poll()
                        time.sleep(0.05)
                    if not _proc_alive(pid):
                        break
                stopped.append(name)
            if popen is not None:
                try:
                    popen.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
        if remove_state and self.state_dir.exists():
            if (self.state_dir / MARKER).exists() or not any(self.state_dir.iterdir()):
                shutil.rmtree(self.state_dir, ignore_errors=True)
            else:
                print(f"not removing {self.state_dir}: it has no {MARKER}, so it is not a control-plane state directory",
                      file=sys.stderr)
        return stopped

    # kubectl
    def kubectl(self, *args: str, check: bool = True, input: str | bytes | None = None,
                kubeconfig: Path | str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [str(self.bin("kubectl")), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args]
        text = not isinstance(input, bytes)
        r = subprocess.run(cmd, input=input, capture_output=True, text=text, timeout=timeout)
        if check and r.returncode != 0:
            raise ControlPlaneError(f"`kubectl {' '.join(args)}` failed (exit {r.returncode}):\n{r.stderr}{r.stdout}")
        return r

    def apply_files(self, files: list[Path], wait_established: float = 60, server_side: bool = True) -> None:
        """Applies CRD files and waits until each CRD is Established. Server-side by default: the large
        Kubeflow schemas exceed the 256 KiB last-applied annotation of a client-side apply."""
        if not files:
            return
        args = ["apply", "--server-side", "--force-conflicts"] if server_side else ["apply"]
        for f in files:
            args += ["-f", str(f)]
        out = self.kubectl(*args, "-o", "name").stdout.split()
        crds = [n for n in out if n.startswith("customresourcedefinition")]
        if not crds:
            return
        # kubectl v1.37's `wait` fails at once ("accessor error: <nil>") on a CRD whose status has no
        # conditions yet, instead of waiting: ask again until the server has written them.
        deadline = time.monotonic() + wait_established
        while True:
            r = self.kubectl("wait", "--for=condition=Established", f"--timeout={int(wait_established)}s", *crds,
                             check=False)
            if r.returncode == 0:
                return
            if "accessor error" not in r.stderr or time.monotonic() > deadline:
                raise ControlPlaneError(f"`kubectl wait --for=condition=Established {' '.join(crds)}` failed "
                                        f"(exit {r.returncode}):\n{r.stderr}{r.stdout}")
            time.sleep(0.5)


def _print_usage_hint(cp: ControlPlane) -> None:
    rel = os.path.relpath(cp.kubeconfig)
    print(f"  server:     {cp.server}\n  kubeconfig: {rel}\n  logs:       {os.path.relpath(cp.logs)}/\n"
          f"  try:        {cp.bin('kubectl')} --kubeconfig {rel} get --raw /readyz\n"
          f"  stop:       make cluster-down")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["up", "down", "status"])
    ap.add_argument("--dir", default=os.environ.get("CLUSTER_DIR", str(REPO / ".cluster")),
                    help="state directory (default: .cluster in the repository)")
    ap.add_argument("--timeout", type=float, default=180, help="seconds to wait for /readyz")
    ap.add_argument("--no-crds", action="store_true", help="do not apply the Kubeflow and project CRDs")
    ap.add_argument("--node", action="store_true",
                    help="up: also start a node (node.py: containerd, kubelet, kube-proxy, kube-scheduler, CoreDNS, "
                         "Kubeflow training-operator); needs root and `build.sh --node`")
    a = ap.parse_args(argv)
    cp = ControlPlane(a.dir, node=a.command == "up" and a.node)
    tag = "[cluster]"
    if a.command == "status":
        state = cp.running()
        print(f"{tag} {cp.state_dir}: " + ", ".join(f"{k} {'running' if v else 'stopped'}" for k, v in state.items())
              + (f"; readyz ok at {cp.server}" if any(state.values()) and cp.readyz() else ""))
        return 0 if all(state.values()) else 1
    if a.command == "down":
        had_state = cp.state_dir.exists()
        stopped = cp.stop()
        if stopped:
            print(f"{tag} stopped {', '.join(stopped)}; removed {cp.state_dir}")
        else:
            print(f"{tag} nothing running" + (f"; removed {cp.state_dir}" if had_state else ""))
        return 0
    # up
    state = cp.running()
    has_node = (cp.state_dir / "node").is_dir()
    if all(state.values()) and cp.readyz() and has_node == a.node:
        print(f"{tag} already up{' with its node' if has_node else ''} (pids in {cp.state_dir / 'pids'})")
        _print_usage_hint(cp)
        return 0
    if any(state.values()) or cp.state_dir.exists():
        alive = [k for k, v in state.items() if v]
        print(f"{tag} found a stale or partial instance in {cp.state_dir}"
              + (f" ({', '.join(alive)} running)" if alive else "") + "; restarting it from scratch")
        cp.stop()
        cp = ControlPlane(a.dir, node=a.node)
    try:
        secs = cp.start(timeout=a.timeout)
        print(f"{tag} control plane up in {secs:.1f}s (etcd :{cp.ports.etcd}, kube-apiserver :{cp.ports.apiserver}, "
              f"kube-controller-manager :{cp.ports.controller_manager}; RBAC on)")
        if not a.no_crds:
            t = time.monotonic()
            cp.apply_files(kubeflow_crd_files())
            print(f"{tag} Kubeflow CRDs established ({', '.join(p.stem for p in kubeflow_crd_files())}) "
                  f"in {time.monotonic() - t:.1f}s")
            # With a node the chart is what installs them (helm refuses to adopt CRDs it did not create).
            project = project_crd_files() if not a.node else []
            if project:
                try:
                    # Client-side, as a developer's later `kubectl apply -f crds/` will be: no field-manager warnings.
                    cp.apply_files(project, server_side=False)
                    print(f"{tag} project CRDs from crds/ established ({len(project)} files)")
                except ControlPlaneError as e:
                    print(f"{tag} WARNING: applying crds/ failed; the cluster is up anyway:\n{e}", file=sys.stderr)
        if a.node:
            print(f"{tag} starting the node (containerd, kube-scheduler, CoreDNS, kubelet, kube-proxy, training-operator)")
            try:
                secs = cp.start_node()
            except ControlPlaneError:
                cp.stop()  # the node cleaned up after itself; a cluster without its node is not what was asked
                raise
            print(f"{tag} node Ready in {secs:.1f}s; load the images with `make images`")
    except ControlPlaneError as e:
        print(f"{tag} ERROR: {e}", file=sys.stderr)
        return 1
    _print_usage_hint(cp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
