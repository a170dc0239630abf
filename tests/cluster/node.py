#!/usr/bin/env python3
"""One Kubernetes node on this machine, joined to the control plane of controlplane.py.

    python3 tests/cluster/controlplane.py up --node      # make cluster-up NODE=1
    python3 tests/cluster/controlplane.py down           # make cluster-down (the node too)

Parts (binaries from `tests/cluster/build.sh --node`, Debian packages from the set-up):

    containerd + runc   Debian's; CRI plugin with restrict_oom_score_adj (root here lacks CAP_SYS_RESOURCE),
                        cgroupfs; image store kept in ~/.cache/devops-model/node/containerd so loaded
                        images survive a cluster-down; every registry is 127.0.0.1:9 (nothing is pulled)
    bridge CNI          Debian's containernetworking-plugins: bridge `dmnode0` = POD_GATEWAY, pods in
                        POD_CIDR, no masquerade, no default route: a pod's only routes are the pod range
                        (on the bridge) and the Service range (through the bridge)
    kube-scheduler      leader election off, 127.0.0.1
    kubelet             cgroup v1 (failCgroupV1: false); node IP and serving address = POD_GATEWAY (the
                        kubelet refuses a loopback node IP; the INPUT guard keeps the address local)
    kube-proxy          iptables mode, no sysctl changes (conntrack and localhost node ports off)
    coredns             on POD_GATEWAY:53, cluster.local only and no forwarder
    Kubeflow training-operator   PyTorchJob controller, webhook serving cert made here

The network rule -- nothing leaves the machine -- is enforced twice: pods have no route but the pod
and Service ranges, and the chain DEVOPS-MODEL-NODE (filter FORWARD and INPUT) drops anything forwarded
between the bridge and another interface, and anything from another interface to the pod range or to
the API server's port. The API server listens on all addresses only because pods must reach it at the
bridge address; INPUT admits its port from lo and the bridge alone.

Clean-up (stop) leaves no process, mount, network device or iptables rule: pods are deleted through the
API first (so the kubelet tears down their networks), then leftover containers are killed through
containerd, network namespaces and mounts made since start are removed, the kubelet's and kube-proxy's
iptables chains and ours are deleted, sysctls the kubelet changes are restored, and kubepods cgroups
are removed (cgroups themselves are never remounted or reorganised).
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import controlplane as cpm  # noqa: E402  (controlplane.py registers itself under this name)

NODE_NAME = "devops-model-node"
POD_CIDR = "10.244.0.0/24"
POD_GATEWAY = "10.244.0.1"  # the bridge's address: pods reach the API server and DNS here
BRIDGE = "dmnode0"
CHAIN = "DEVOPS-MODEL-NODE"
# Short paths: unix sockets live here (a socket path must be shorter than 108 bytes).
RUN_DIR = Path(os.environ.get("CLUSTER_NODE_RUN_DIR", "/run/devops-model-node"))
LOCK_FILE = Path("/run/devops-model-node.lock")
CNI_BIN = Path(os.environ.get("CLUSTER_CNI_BIN", "/usr/lib/cni"))
# What the kubelet writes when protectKernelDefaults is off; restored on stop.
KERNEL_SYSCTLS = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
                  "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes", "net/ipv4/ip_forward")
NODE_COMPONENTS = ("containerd", "kube-scheduler", "coredns", "kubelet", "kube-proxy", "training-operator")
PAUSE_IMAGE = "localhost/devops-model/busybox:local"
TRAINING_OPERATOR_NAMESPACE = "kubeflow"
STORAGE_CLASS = "local-node"


class NodeError(cpm.ControlPlaneError):
    pass


#: The open lock file of the node this process runs (one per machine; see Node._take_lock).
_LOCK_FD: int | None = None


def _state_sysctl_before(node: "Node", name: str) -> str | None:
    """The value a sysctl had before the node started (restored by stop())."""
    return (node._state().get("sysctls") or {}).get(name)


def node_cache() -> Path:
    root = os.environ.get("DEVOPS_MODEL_NODE_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "devops-model" / "node"


def containerd_root() -> Path:
    return node_cache() / "containerd"


def containerd_socket() -> Path:
    return RUN_DIR / "containerd.sock"


def _run(*cmd: str, check: bool = True, input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    r = subprocess.run(list(cmd), capture_output=True, text=True, input=input, timeout=timeout)
    if check and r.returncode != 0:
        raise NodeError(f"`{' '.join(cmd)}` failed (exit {r.returncode}): {r.stderr.strip() or r.stdout.strip()}")
    return r


def ctr(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    return _run("ctr", "--address", str(containerd_socket()), "-n", "k8s.io", *args, check=check, timeout=timeout)


def preflight() -> list[str]:
    """What this machine lacks for a node, as fixes a person can run; empty when all is there."""
    problems = []
    if os.geteuid() != 0:
        problems.append("the node needs root (containerd, the kubelet and the bridge network)")
    for cmd, pkg in (("containerd", "containerd"), ("runc", "runc"), ("ctr", "containerd"), ("iptables", "iptables"),
                     ("ip", "iproute2"), ("buildah", "buildah")):
        if not shutil.which(cmd):
            problems.append(f"`{cmd}` is missing: apt-get install {pkg}  (or run `make node-deps`)")
    for plugin in ("bridge", "host-local", "loopback"):
        if not (CNI_BIN / plugin).exists():
            problems.append(f"CNI plugin {CNI_BIN / plugin} is missing: apt-get install containernetworking-plugins")
    missing = [b for b in ("kubelet", "kube-proxy", "kube-scheduler", "coredns", "training-operator")
               if not os.access(cpm.bin_dir() / b, os.X_OK)]
    if missing:
        problems.append(f"node binaries missing in {cpm.bin_dir()}: {', '.join(missing)}: run `make cluster-build NODE=1`")
    return problems


def _read_sysctl(name: str) -> str | None:
    try:
        return Path("/proc/sys", name).read_text().strip()
    except OSError:
        return None


def _write_sysctl(name: str, value: str) -> None:
    try:
        Path("/proc/sys", name).write_text(value + "\n")
    except OSError:
        pass


def _mounts() -> list[str]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mp = line.split()[4].encode().decode("unicode_escape")
        out.append(mp)
    return out


def _pids_with(arg: str) -> list[int]:
    """Processes whose command line contains `arg` (our unique socket or state path)."""
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if arg in cmd:
            pids.append(int(p.name))
    return pids


class Node:
    """The node of a ControlPlane (its state lives in <control-plane state>/node)."""

    def __init__(self, cp: "cpm.ControlPlane"):
        self.cp = cp
        self.dir = cp.state_dir / "node"

    # -- paths -----------------------------------------------------------------------------------
    @property
    def pki(self) -> Path:
        return self.cp.pki

    @property
    def kubelet_root(self) -> Path:
        return self.dir / "kubelet"

    @property
    def state_file(self) -> Path:
        return self.dir / "node.json"

    def _state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def _save_state(self, **kw) -> None:
        st = self._state()
        st.update(kw)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(st, indent=2) + "\n")

    def exists(self) -> bool:
        return self.state_file.exists()

    # -- start -----------------------------------------------------------------------------------
    def _take_lock(self) -> None:
        global _LOCK_FD
        if _LOCK_FD is not None:
            raise NodeError(f"this process already runs a node (lock {LOCK_FILE}); one node per machine")
        fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = LOCK_FILE.read_text().strip() if LOCK_FILE.exists() else "?"
            raise NodeError(f"another node is running on this machine (lock {LOCK_FILE}, held for {holder}); "
                            "one node per machine: stop it first (`make cluster-down` in its checkout)")
        os.ftruncate(fd, 0)
        os.write(fd, f"{self.cp.state_dir}\n".encode())
        _LOCK_FD = fd

    def start(self, timeout: float = 240) -> float:
        t0 = time.monotonic()
        problems = preflight()
        if problems:
            raise NodeError("this machine cannot run the node yet:\n  " + "\n  ".join(problems))
        self._take_lock()
        leftovers = [c for c in self._kube_chains() if c]
        if leftovers:
            raise NodeError(f"iptables already holds Kubernetes chains ({', '.join(sorted(set(leftovers))[:6])}): "
                            "another node ran here and was not cleaned up; run `make cluster-down` "
                            "(or `python3 tests/cluster/controlplane.py down --dir <its state dir>`)")
        self.dir.mkdir(parents=True, exist_ok=True)
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        self._save_state(sysctls={k: _read_sysctl(k) for k in KERNEL_SYSCTLS},
                         netns_before=sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else [],
                         started=time.time())
        try:
            self._make_pki()
            self._network_up()
            self._start_containerd()
            self._ensure_pause_image()
            self._start_scheduler()
            self._start_coredns()
            self._start_kubelet()
            self._start_kube_proxy()
            self._wait_ready(timeout)
            self._storage()
            self._start_training_operator()
        except BaseException:
            # Keep the logs for a post-mortem: the state directory goes with the clean-up.
            kept = self.cp.state_dir.with_name(self.cp.state_dir.name + ".failed-logs")
            shutil.rmtree(kept, ignore_errors=True)
            shutil.copytree(self.cp.logs, kept, dirs_exist_ok=True)
            self.stop()
            print(f"[node] start failed; logs kept in {kept}", file=sys.stderr)
            raise
        return time.monotonic() - t0

    def _kubeconfig(self, name: str, cn: str, org: str | None = None) -> Path:
        subj = (f"/O={org}" if org else "") + f"/CN={cn}"
        cpm._issue(self.pki, name, subj, "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n")
        return cpm.write_kubeconfig(self.dir / f"{name}.kubeconfig", self.cp.server, self.pki / "ca.crt",
                                    cert=self.pki / f"{name}.crt", key=self.pki / f"{name}.key", user=cn)

    def _make_pki(self) -> None:
        self.kubelet_kubeconfig = self._kubeconfig("kubelet", f"system:node:{NODE_NAME}", "system:nodes")
        self.proxy_kubeconfig = self._kubeconfig("kube-proxy", "system:kube-proxy")
        self.scheduler_kubeconfig = self._kubeconfig("kube-scheduler", "system:kube-scheduler")
        self.coredns_kubeconfig = self._kubeconfig("coredns", "system:devops-model:coredns")
        self.training_operator_kubeconfig = self._kubeconfig("training-operator", "system:devops-model:training-operator")
        cpm._issue(self.pki, "kubelet-serving", f"/O=system:nodes/CN=system:node:{NODE_NAME}",
                   f"subjectAltName=IP:{POD_GATEWAY},IP:127.0.0.1,DNS:{NODE_NAME}\nextendedKeyUsage=serverAuth\n"
                   "keyUsage=critical,digitalSignature,keyEncipherment\n")
        svc = f"training-operator.{TRAINING_OPERATOR_NAMESPACE}.svc"
        cpm._issue(self.pki, "training-operator-webhook", f"/CN={svc}",
                   f"subjectAltName=DNS:{svc},DNS:{svc}.cluster.local,IP:{POD_GATEWAY},IP:127.0.0.1\n"
                   "extendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n")

    # network ---------------------------------------------------------------------------------------
    def _network_up(self) -> None:
        if _run("ip", "link", "show", BRIDGE, check=False).returncode != 0:
            _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "addr", "replace", f"{POD_GATEWAY}/{POD_CIDR.split('/')[1]}", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        # The Service range is on the bridge too: a host packet to a ClusterIP that kube-proxy has not
        # (yet) translated stays on this machine instead of following the default route.
        _run("ip", "route", "replace", cpm.SERVICE_CIDR, "dev", BRIDGE)
        # Pod -> Service -> pod is routed through the host: forwarding on (restored on stop), and the
        # guard chain keeps every forwarded packet between bridge ports.
        _write_sysctl("net/ipv4/ip_forward", "1")
        api = str(self.cp.ports.apiserver)
        for ipt in ("iptables",):
            _run(ipt, "-w", "-N", CHAIN, check=False)
            _run(ipt, "-w", "-F", CHAIN)
            rules = [
                ["-i", BRIDGE, "!", "-o", BRIDGE, "-m", "comment", "--comment", "pods reach nothing off the bridge",
                 "-j", "DROP"],
                ["!", "-i", BRIDGE, "-o", BRIDGE, "-m", "comment", "--comment", "nothing from outside reaches pods",
                 "-j", "DROP"],
            ]
            for r in rules:
                _run(ipt, "-w", "-A", CHAIN, *r)
            _run(ipt, "-w", "-N", CHAIN + "-IN", check=False)
            _run(ipt, "-w", "-F", CHAIN + "-IN")
            for r in (["-i", "lo", "-j", "RETURN"], ["-i", BRIDGE, "-j", "RETURN"],
                      ["-p", "tcp", "--dport", api, "-m", "comment", "--comment", "API server: loopback and pods only",
                       "-j", "DROP"],
                      ["-p", "tcp", "--dport", "9443", "-m", "comment", "--comment",
                       "training-operator webhook: loopback and pods only", "-j", "DROP"],
                      ["-d", POD_CIDR, "-m", "comment", "--comment", "pod range: loopback and pods only", "-j", "DROP"]):
                _run(ipt, "-w", "-A", CHAIN + "-IN", *r)
            _run(ipt, "-w", "-I", "FORWARD", "1", "-j", CHAIN)
            _run(ipt, "-w", "-I", "INPUT", "1", "-j", CHAIN + "-IN")
        net_d = self.dir / "cni" / "net.d"
        net_d.mkdir(parents=True, exist_ok=True)
        conflist = {
            "cniVersion": "0.4.0", "name": "devops-model",
            "plugins": [
                {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "isDefaultGateway": False,
                 "ipMasq": False, "hairpinMode": True,
                 "ipam": {"type": "host-local", "dataDir": str(self.dir / "cni" / "ipam"),
                          "ranges": [[{"subnet": POD_CIDR, "gateway": POD_GATEWAY}]],
                          # Only the Service range, through the bridge; no default route.
                          "routes": [{"dst": cpm.SERVICE_CIDR}]}},
            ],
        }
        (net_d / "10-devops-model.conflist").write_text(json.dumps(conflist, indent=2) + "\n")

    # containerd ------------------------------------------------------------------------------------
    def _start_containerd(self) -> None:
        root = containerd_root()
        root.mkdir(parents=True, exist_ok=True)
        hosts = self.dir / "containerd" / "certs.d" / "_default"
        hosts.mkdir(parents=True, exist_ok=True)
        # Every registry is a closed local port: an image that is not loaded fails at once, never downloads.
        (hosts / "hosts.toml").write_text('server = "http://127.0.0.1:9"\n\n[host."http://127.0.0.1:9"]\n'
                                          '  capabilities = ["pull", "resolve"]\n')
        cfg = f"""version = 2
root = "{root}"
state = "{RUN_DIR / 'containerd'}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.internal.v1.opt", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{containerd_socket()}"

[ttrpc]
  address = "{RUN_DIR / 'containerd.ttrpc.sock'}"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # Root here lacks CAP_SYS_RESOURCE: runc cannot lower oom_score_adj below the parent's.
  restrict_oom_score_adj = true
  enable_selinux = false
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{self.dir / 'cni' / 'net.d'}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{self.dir / 'containerd' / 'certs.d'}"
"""
        cfg_path = self.dir / "containerd" / "config.toml"
        cfg_path.write_text(cfg)
        self._spawn("containerd", ["containerd", "--config", str(cfg_path)])
        self._wait("containerd", lambda: ctr("version", check=False).returncode == 0, 60, "its socket to answer")

    def _ensure_pause_image(self) -> None:
        import images  # tests/cluster/images.py
        images.load(["busybox"], socket=containerd_socket())

    # control-plane components on the host ------------------------------------------------------------
    def _start_scheduler(self) -> None:
        port = cpm.free_port()
        self._save_state(scheduler_port=port)
        self._spawn("kube-scheduler", [
            str(cpm.bin_dir() / "kube-scheduler"), f"--kubeconfig={self.scheduler_kubeconfig}",
            f"--authentication-kubeconfig={self.scheduler_kubeconfig}",
            f"--authorization-kubeconfig={self.scheduler_kubeconfig}",
            "--leader-elect=false", f"--bind-address={cpm.LOOPBACK}", f"--secure-port={port}",
            f"--cert-dir={self.dir / 'scheduler-certs'}", "--profiling=false", "--v=1"])

    def _start_coredns(self) -> None:
        # Its identity may read Services, EndpointSlices, Namespaces and Pods: nothing else.
        self.cp.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
             "metadata": {"name": "devops-model:coredns"},
             "rules": [{"apiGroups": [""], "resources": ["services", "pods", "namespaces"], "verbs": ["list", "watch"]},
                       {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": "devops-model:coredns"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "devops-model:coredns"},
             "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:devops-model:coredns"}]},
        ]}))
        health, ready = cpm.free_port(), cpm.free_port()
        self._save_state(coredns_ready_port=ready)
        corefile = self.dir / "Corefile"
        corefile.write_text(f""".:53 {{
    bind {POD_GATEWAY}
    ready {cpm.LOOPBACK}:{ready}
    health {cpm.LOOPBACK}:{health}
    errors
    cache 5
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {self.coredns_kubeconfig} devops-model
        pods insecure
        ttl 5
    }}
}}
""")
        self._spawn("coredns", [str(cpm.bin_dir() / "coredns"), "-conf", str(corefile)])

    def _start_kubelet(self) -> None:
        port, healthz = cpm.free_port(), cpm.free_port()
        self._save_state(kubelet_port=port, kubelet_healthz_port=healthz)
        resolv = self.dir / "resolv.conf"
        resolv.write_text("# pods with dnsPolicy Default get no resolver: nothing is resolved off the machine\n")
        self.kubelet_root.mkdir(parents=True, exist_ok=True)
        cfg = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "failCgroupV1": False, "cgroupDriver": "cgroupfs", "failSwapOn": False,
            # The node's address is the bridge's (the kubelet refuses a loopback node IP): the API server
            # reaches the kubelet there for logs and exec, and nothing off the machine can (INPUT guard).
            "address": POD_GATEWAY, "port": port, "readOnlyPort": 0,
            "healthzBindAddress": cpm.LOOPBACK, "healthzPort": healthz,
            "tlsCertFile": str(self.pki / "kubelet-serving.crt"),
            "tlsPrivateKeyFile": str(self.pki / "kubelet-serving.key"),
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(self.pki / "ca.crt")}},
            "authorization": {"mode": "Webhook"},
            "clusterDomain": "cluster.local", "clusterDNS": [POD_GATEWAY],
            "resolvConf": str(resolv),
            "containerRuntimeEndpoint": f"unix://{containerd_socket()}",
            "podLogsDir": str(self.dir / "pod-logs"),
            "staticPodPath": "",
            "serializeImagePulls": False,
            # Images are loaded, never pulled; do not garbage-collect them on a busy disk.
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            # No disk-based eviction (as kind): under disk pressure the kubelet deletes unused images to
            # reclaim space, and a loaded image (the sandbox image too) cannot be pulled back; the machine's
            # disk is shared with the image builds, so a transient dip would also taint the node for 5 min.
            "evictionHard": {"memory.available": "200Mi", "nodefs.available": "0%", "imagefs.available": "0%",
                             "nodefs.inodesFree": "0%", "imagefs.inodesFree": "0%"},
            "maxPods": 50, "podPidsLimit": 4096,
            "registerNode": True,
            "rotateCertificates": False, "serverTLSBootstrap": False,
            "protectKernelDefaults": False,
            "makeIPTablesUtilChains": True,
            "shutdownGracePeriod": "0s",
            "volumeStatsAggPeriod": "0s",
        }
        cfg_path = self.dir / "kubelet-config.json"
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
        self._spawn("kubelet", [
            str(cpm.bin_dir() / "kubelet"), f"--config={cfg_path}", f"--kubeconfig={self.kubelet_kubeconfig}",
            f"--root-dir={self.kubelet_root}", f"--hostname-override={NODE_NAME}", f"--node-ip={POD_GATEWAY}",
            f"--cert-dir={self.dir / 'kubelet-certs'}", "--v=1"])

    def _start_kube_proxy(self) -> None:
        healthz, metrics = cpm.free_port(), cpm.free_port()
        cfg = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "mode": "iptables", "clusterCIDR": POD_CIDR,
            "clientConnection": {"kubeconfig": str(self.proxy_kubeconfig)},
            "bindAddress": cpm.LOOPBACK,
            "healthzBindAddress": f"{cpm.LOOPBACK}:{healthz}", "metricsBindAddress": f"{cpm.LOOPBACK}:{metrics}",
            "hostnameOverride": NODE_NAME,
            # Change no sysctl of the machine: no conntrack tuning, no route_localnet.
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s",
                          "udpTimeout": "0s", "udpStreamTimeout": "0s"},
            "iptables": {"localhostNodePorts": False, "masqueradeAll": False},
            "nodePortAddresses": [f"{POD_GATEWAY}/32"],
        }
        cfg_path = self.dir / "kube-proxy-config.json"
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
        self._spawn("kube-proxy", [str(cpm.bin_dir() / "kube-proxy"), f"--config={cfg_path}", "--v=1"])

    def _node_ready(self) -> bool:
        r = self.cp.kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
        if r.returncode != 0:
            return False
        conds = json.loads(r.stdout).get("status", {}).get("conditions", [])
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)

    def _wait_ready(self, timeout: float) -> None:
        self._wait("kubelet", self._node_ready, timeout, f"node {NODE_NAME} Ready")
        ready_port = self._state()["coredns_ready_port"]

        self._wait("coredns", lambda: cpm.http_ok(f"http://{cpm.LOOPBACK}:{ready_port}/ready"), 60, "its /ready")

    def _storage(self, count: int = 8, size: str = "20Gi") -> None:
        """Static hostPath PersistentVolumes under the node's state directory, of the default StorageClass
        `local-node`: a claim without a class binds to one. Owned by UID/GID 1000, the workloads' user
        (hostPath volumes are not chowned for fsGroup). Removed with the node."""
        items: list[dict] = [{
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": STORAGE_CLASS, "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "Immediate", "reclaimPolicy": "Retain"}]
        for i in range(count):
            d = self.dir / "volumes" / f"pv-{i}"
            d.mkdir(parents=True, exist_ok=True)
            os.chown(d, 1000, 1000)
            d.chmod(0o775)
            items.append({
                "apiVersion": "v1", "kind": "PersistentVolume",
                "metadata": {"name": f"{STORAGE_CLASS}-{i}"},
                "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce", "ReadWriteMany"],
                         "persistentVolumeReclaimPolicy": "Retain", "storageClassName": STORAGE_CLASS,
                         "hostPath": {"path": str(d), "type": "Directory"},
                         "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                             {"key": "kubernetes.io/hostname", "operator": "In", "values": [NODE_NAME]}]}]}}}})
        self.cp.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))

    def _start_training_operator(self) -> None:
        """Kubeflow's controller runs on the host with an identity that has its chart's rights; its
        validating webhook serves on the bridge address, so the API server can call it."""
        import training_operator
        training_operator.start(self)

    # -- processes -------------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], env: dict | None = None) -> None:
        logs = self.cp.logs
        logs.mkdir(parents=True, exist_ok=True)
        (self.cp.state_dir / "pids").mkdir(parents=True, exist_ok=True)
        log = open(logs / f"{name}.log", "ab")
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True, cwd=self.dir, env=env,
                             preexec_fn=cpm._die_with_parent if self.cp.die_with_parent else None)
        log.close()
        self.cp._popen[name] = p
        (self.cp.state_dir / "pids" / f"{name}.pid").write_text(f"{p.pid}\n")

    def _wait(self, name: str, check, timeout: float, what: str) -> None:
        self.cp._wait(name, check, timeout, what)

    def running(self) -> dict[str, bool]:
        out = {}
        for name in NODE_COMPONENTS:
            pid = self.cp.pid(name)
            out[name] = bool(pid) and cpm._is_ours(pid, name) and cpm._proc_alive(pid)
        return out

    # -- stop ------------------------------------------------------------------------------------
    def _kube_chains(self) -> list[str]:
        chains = []
        for ipt in ("iptables", "ip6tables"):
            if not shutil.which(ipt):
                continue
            r = _run(f"{ipt}-save", check=False)
            chains += re.findall(r"^:((?:KUBE-|CNI-|" + CHAIN + r")[A-Za-z0-9_-]*)", r.stdout, re.M)
        return chains

    def _drain(self, timeout: float = 60) -> list[str]:
        """Deletes every pod through the API (controllers stopped first, so none comes back) and waits
        for the kubelet to stop their sandboxes, which also tears down their network."""
        if not (self.cp.readyz() and self.running().get("kubelet")):
            return []
        stopped = [name for name in ("training-operator", "kube-scheduler") if self._kill(name)]
        self.cp.kubectl("delete", "pods", "--all", "--all-namespaces", "--grace-period=0", "--force",
                        "--wait=false", check=False, timeout=60)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = ctr("tasks", "ls", "-q", check=False)
            if r.returncode != 0 or not r.stdout.strip():
                break
            time.sleep(1)
        return stopped

    def _kill(self, name: str, timeout: float = 15) -> bool:
        pid = self.cp.pid(name)
        popen = self.cp._popen.get(name)
        if not (pid and cpm._is_ours(pid, name) and cpm._proc_alive(pid)):
            return False
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while cpm._proc_alive(pid) and time.monotonic() < deadline:
                if popen is not None:
                    popen.poll()
                time.sleep(0.05)
            if not cpm._proc_alive(pid):
                break
        if popen is not None:
            try:
                popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        return True

    def stop(self) -> list[str]:
        """Stops the node and removes everything it added to the machine; returns what it stopped."""
        if not self.dir.exists():
            return []
        st = self._state()
        stopped = self._drain()
        stopped += [n for n in ("training-operator", "kube-proxy", "kubelet", "coredns", "kube-scheduler") if self._kill(n)]
        # Containers the kubelet did not stop (it was gone, or too slow).
        if self.running().get("containerd"):
            r = ctr("tasks", "ls", "-q", check=False)
            for cid in r.stdout.split():
                ctr("tasks", "kill", "-s", "SIGKILL", cid, check=False)
            for cid in r.stdout.split():
                ctr("tasks", "delete", "-f", cid, check=False, timeout=30)
            r = ctr("containers", "ls", "-q", check=False)
            for cid in r.stdout.split():
                ctr("containers", "delete", cid, check=False)
        if self._kill("containerd"):
            stopped.append("containerd")
        # Shims outlive containerd by design; ours name our socket on their command line.
        for pid in _pids_with(str(containerd_socket())):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # Network namespaces made since start (containerd's cni-*), then our veths and the bridge.
        before = set(st.get("netns_before") or [])
        if os.path.isdir("/run/netns"):
            for ns in os.listdir("/run/netns"):
                if ns.startswith("cni-") and ns not in before:
                    _run("umount", f"/run/netns/{ns}", check=False)
                    try:
                        os.unlink(f"/run/netns/{ns}")
                    except OSError:
                        pass
        r = _run("ip", "-o", "link", "show", "master", BRIDGE, check=False)
        for m in re.finditer(r"^\d+: ([^@:]+)", r.stdout, re.M):
            _run("ip", "link", "del", m.group(1), check=False)
        _run("ip", "link", "del", BRIDGE, check=False)
        # Mounts under our directories (the kubelet's volumes, containerd's rootfs), deepest first.
        ours = (str(self.dir), str(RUN_DIR), str(containerd_root()))
        for mp in sorted((m for m in _mounts() if m.startswith(ours)), key=len, reverse=True):
            _run("umount", "-l", mp, check=False)
        self._iptables_cleanup()
        import training_operator
        training_operator.cleanup()
        for k, v in (st.get("sysctls") or {}).items():
            if v is not None:
                _write_sysctl(k, v)
        self._cgroups_cleanup()
        shutil.rmtree(RUN_DIR, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)
        global _LOCK_FD
        if _LOCK_FD is not None:
            os.close(_LOCK_FD)
            _LOCK_FD = None
        return stopped

    def _iptables_cleanup(self) -> None:
        """Deletes every rule that jumps to a KUBE-*, CNI-* or our chain, then those chains, in every table."""
        pat = re.compile(r"^(KUBE-|CNI-|" + CHAIN + ")")
        for ipt in ("iptables", "ip6tables"):
            if not shutil.which(ipt):
                continue
            dump = _run(f"{ipt}-save", check=False).stdout
            table = None
            chains: dict[str, list[str]] = {}
            rules: list[tuple[str, str]] = []
            for line in dump.splitlines():
                if line.startswith("*"):
                    table = line[1:]
                elif line.startswith(":") and table:
                    name = line[1:].split()[0]
                    if pat.match(name):
                        chains.setdefault(table, []).append(name)
                elif line.startswith("-A ") and table:
                    parts = line.split()
                    chain = parts[1]
                    target = parts[parts.index("-j") + 1] if "-j" in parts else ""
                    if not pat.match(chain) and pat.match(target):
                        rules.append((table, line[3:]))
            for table, rule in rules:
                _run("sh", "-c", f"{ipt} -w -t {table} -D {rule}", check=False)
            for table, names in chains.items():
                for n in names:
                    _run(ipt, "-w", "-t", table, "-F", n, check=False)
                for n in names:
                    _run(ipt, "-w", "-t", table, "-X", n, check=False)

    @staticmethod
    def _cgroups_cleanup() -> None:
        root = Path("/sys/fs/cgroup")
        for ctrl in root.iterdir() if root.is_dir() else []:
            top = ctrl / "kubepods"
            if not top.is_dir():
                continue
            dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
            for d in [*dirs, top]:
                try:
                    d.rmdir()
                except OSError:
                    pass
