"""Real pods: the project's images, its chart and examples/kind/ on a one-node cluster of this machine.

The node (tests/cluster/node.py) is a kubelet with containerd + runc, kube-proxy, kube-scheduler, CoreDNS and
Kubeflow's training-operator, joined to the control plane of tests/cluster; the images are built from
images/ with buildah on a debootstrapped Debian base and loaded into the node's containerd (cached by input
hash, tests/cluster/images.py). Nothing is replayed by the test: every container runs in a pod.

    sudo .venv/bin/python -m pytest tests/e2e/test_real_pods.py -q    # root: the node needs it

What it checks, in order (one node for the module; the last test stops it and checks the clean-up):
1. a plain pod runs under `pod-security.kubernetes.io/enforce: restricted`, resolves Services through the
   cluster DNS, and reaches nothing off the machine;
2. a PyTorchJob becomes a master and a worker pod (Kubeflow's controller, its webhook and its init
   container under restricted) that rendezvous with torchrun over gloo;
3. `helm install` with charts/devops-model/ci/local-node-values.yaml into a restricted namespace, then
   examples/kind/: every stage Succeeded, the ChatDeployment Ready, scores in the EvalRun's status, the chat
   answering through its Service with the API key and refusing without it; faults on the way: the training
   master pod deleted mid-run (the operator replaces the attempt, which resumes from the checkpoint on the
   volume) and the operator pod killed (no duplicate children, the chain completes);
4. stopping the cluster leaves no process, mount, network device or iptables rule behind.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.node]

REPO = Path(__file__).resolve().parents[2]
KIND = REPO / "examples" / "kind"
VALUES = REPO / "charts" / "devops-model" / "ci" / "local-node-values.yaml"
CHAIN_NS = "ml"  # examples/kind's namespace
RELEASE_NS = "devops-model"
KINDS = ("pretrainrun", "sftrun", "evalrun", "quantizerun", "chatdeployment")
RESTRICTED = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
              "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


def restricted_namespace(fx, name: str) -> str:
    fx.apply({"apiVersion": "v1", "kind": "Namespace",
              "metadata": {"name": name, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    return name


def pod_phase(fx, ns: str, name: str) -> str | None:
    pod = fx.get("pod", name, ns)
    return (pod or {}).get("status", {}).get("phase")


# --- 1. a plain pod ---------------------------------------------------------------------------------

def run_busybox(fx, ns: str, name: str, script: str, timeout: float) -> tuple[str | None, str]:
    """Run ``script`` in a restricted busybox pod (UID 65534) to its end: (phase, logs)."""
    fx.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
              "spec": {"restartPolicy": "Never",
                       "securityContext": {"runAsNonRoot": True, "runAsUser": 65534, "seccompProfile": {"type": "RuntimeDefault"}},
                       "containers": [{"name": "c", "image": fx.image("busybox"), "imagePullPolicy": "Never",
                                       "command": ["sh", "-c", script],
                                       "securityContext": {k: v for k, v in RESTRICTED.items() if k != "seccompProfile"}}]}})
    fx.wait_for(lambda: pod_phase(fx, ns, name) in ("Succeeded", "Failed"), timeout,
                lambda: f"pod {name} to finish:\n{fx.describe('pods', ns)}")
    return pod_phase(fx, ns, name), fx.logs(ns, name)


def test_a_plain_pod_runs_restricted_resolves_services_and_reaches_nothing_outside(node_cluster):
    fx = node_cluster
    ns = restricted_namespace(fx, "plain")
    script = textwrap.dedent("""\
        echo "uid=$(id -u)"
        nslookup kubernetes.default.svc.cluster.local && echo DNS-OK
        nslookup example.com >/dev/null 2>&1 && echo EXTERNAL-NAME-RESOLVED || echo EXTERNAL-NAME-NOT-RESOLVED
        wget -T 3 -q -O /dev/null http://192.0.2.1/ 2>/dev/null && echo OFF-MACHINE-REACHED || echo OFF-MACHINE-UNREACHABLE
        touch /should-fail 2>/dev/null && echo ROOT-FS-WRITABLE || echo ROOT-FS-READ-ONLY
        """)
    phase, out = run_busybox(fx, ns, "plain", script, 120)
    assert phase == "Succeeded", out
    assert "uid=65534" in out
    assert "DNS-OK" in out and "10.0.0.1" in out, out  # the `kubernetes` Service's ClusterIP
    assert "EXTERNAL-NAME-NOT-RESOLVED" in out, out      # CoreDNS has no forwarder
    assert "OFF-MACHINE-UNREACHABLE" in out, out        # no route off the machine
    assert "ROOT-FS-READ-ONLY" in out, out


# --- 2. Kubeflow's PyTorchJob ------------------------------------------------------------------------

RDZV = """\
import os, torch, torch.distributed as dist
dist.init_process_group("gloo")
t = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(t)
print(f"rank={dist.get_rank()} world={dist.get_world_size()} sum={t.item():.0f} master={os.environ['MASTER_ADDR']}", flush=True)
dist.destroy_process_group()
"""


def test_a_pytorchjob_becomes_master_and_worker_pods_that_rendezvous_with_torchrun(node_cluster):
    fx = node_cluster
    ns = restricted_namespace(fx, "ptjob")
    fx.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "rdzv", "namespace": ns},
              "data": {"rdzv.py": RDZV}})

    def replica():
        return {"replicas": 1, "restartPolicy": "Never", "template": {"spec": {
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "pytorch", "image": fx.image("workload"), "imagePullPolicy": "Never",
                            "command": ["torchrun", "--nproc-per-node=1", "/opt/rdzv/rdzv.py"],
                            "env": [{"name": "HOME", "value": "/tmp"}],
                            "resources": {"requests": {"cpu": "100m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
                            "securityContext": {k: v for k, v in RESTRICTED.items() if k != "seccompProfile"},
                            "volumeMounts": [{"name": "rdzv", "mountPath": "/opt/rdzv"}, {"name": "tmp", "mountPath": "/tmp"}]}],
            "volumes": [{"name": "rdzv", "configMap": {"name": "rdzv"}}, {"name": "tmp", "emptyDir": {}}]}}}
    fx.apply({"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "rdzv", "namespace": ns},
              "spec": {"nprocPerNode": "1", "runPolicy": {"backoffLimit": 0},
                       "pytorchReplicaSpecs": {"Master": replica(), "Worker": replica()}}})

    def finished():
        job = fx.get("pytorchjob", "rdzv", ns) or {}
        conds = {c["type"]: c["status"] for c in job.get("status", {}).get("conditions", [])}
        return "Succeeded" if conds.get("Succeeded") == "True" else "Failed" if conds.get("Failed") == "True" else None
    fx.wait_for(finished, 600, lambda: f"PyTorchJob rdzv to finish:\n{fx.describe('pytorchjob,pods', ns)}")
    logs = {p: fx.logs(ns, p, "pytorch") for p in ("rdzv-master-0", "rdzv-worker-0")}
    assert finished() == "Succeeded", logs
    for pod, out in logs.items():
        assert re.search(r"world=2 sum=3 master=rdzv-master-0", out), f"{pod}: {out[-2000:]}"
    worker = fx.get("pod", "rdzv-worker-0", ns)
    init = worker["spec"].get("initContainers", [])
    assert init and init[0]["name"] == "init-pytorch", "training-operator's init container (waits for the master's DNS name)"


# --- 3. the chart and examples/kind ------------------------------------------------------------------

def _runs(fx) -> dict[str, dict]:
    out = {}
    for kind in KINDS:
        for item in (fx.get(kind, namespace=CHAIN_NS) or {}).get("items", []):
            out[f"{item['kind']}/{item['metadata']['name']}"] = item
    return out


def _cond(obj: dict, type_: str) -> str | None:
    for c in obj.get("status", {}).get("conditions", []) or []:
        if c.get("type") == type_:
            return c.get("status")
    return None


def _chain_state(fx) -> str:
    r = fx.kubectl("get", ",".join(KINDS), "-n", CHAIN_NS, check=False)
    p = fx.kubectl("get", "pods,pytorchjobs,jobs", "-n", CHAIN_NS, "-o", "wide", check=False)
    return r.stdout + r.stderr + "\n" + p.stdout + p.stderr


def _master_pods(fx) -> list[dict]:
    return [p for p in fx.pods(CHAIN_NS, "training.kubeflow.org/replica-type=master")]


def test_helm_install_and_examples_kind_run_every_stage_in_real_pods_through_faults(node_cluster):
    fx = node_cluster
    restricted_namespace(fx, RELEASE_NS)
    fx.helm("install", "devops-model", str(REPO / "charts" / "devops-model"), "-n", RELEASE_NS, "-f", str(VALUES),
            "--wait", "--timeout", "5m", timeout=400)
    operator_pods = fx.pods(RELEASE_NS)
    assert operator_pods and all(p["status"]["phase"] == "Running" for p in operator_pods), fx.describe("pods", RELEASE_NS)

    # Storage set-up, then the five stages, as docs/control-plane.md tells a user.
    fx.kubectl("apply", "-f", str(KIND / "setup"))
    fx.wait_for(lambda: (fx.get("job", "storage-setup", CHAIN_NS) or {}).get("status", {}).get("succeeded"), 600,
                lambda: f"the storage set-up Job:\n{fx.describe('jobs,pods', CHAIN_NS)}", interval=2)
    fx.kubectl("apply", "-f", str(KIND))

    # Fault 1: the training master pod is deleted after the first checkpoint.
    def past_checkpoint():
        pt = fx.get("pretrainrun", "kind-pt", CHAIN_NS) or {}
        prog = pt.get("status", {}).get("progress") or {}
        return prog.get("lastCheckpoint") and [p for p in _master_pods(fx) if p["status"].get("phase") == "Running"]
    masters = fx.wait_for(past_checkpoint, 1200, lambda: f"kind-pt's first checkpoint:\n{_chain_state(fx)}", interval=2)
    first = masters[0]["metadata"]["name"]
    fx.kubectl("delete", "pod", first, "-n", CHAIN_NS, "--wait=false")

    def replaced():
        pt = fx.get("pretrainrun", "kind-pt", CHAIN_NS) or {}
        return (pt.get("status", {}).get("restarts") or 0) >= 1 and \
            [p for p in _master_pods(fx) if p["metadata"]["name"] != first]
    new_masters = fx.wait_for(replaced, 600, lambda: f"a new attempt of kind-pt:\n{_chain_state(fx)}", interval=2)
    second = new_masters[0]["metadata"]["name"]
    fx.wait_for(lambda: "resuming from" in fx.logs(CHAIN_NS, second, "pytorch"), 600,
                lambda: f"the new attempt to resume from the checkpoint; its log:\n{fx.logs(CHAIN_NS, second, 'pytorch')[-3000:]}",
                interval=3)

    # Fault 2: the operator pod is killed while the chain runs.
    fx.wait_for(lambda: _cond(fx.get("pretrainrun", "kind-pt", CHAIN_NS) or {}, "Succeeded") == "True", 1200,
                lambda: f"kind-pt to succeed:\n{_chain_state(fx)}", interval=3)
    op = fx.pods(RELEASE_NS)[0]["metadata"]["name"]
    fx.kubectl("delete", "pod", op, "-n", RELEASE_NS, "--grace-period=0", "--force", "--wait=false")
    fx.wait_for(lambda: [p for p in fx.pods(RELEASE_NS) if p["metadata"]["name"] != op
                         and p["status"].get("phase") == "Running"], 300,
                lambda: f"a new operator pod:\n{fx.describe('pods', RELEASE_NS)}", interval=2)

    def done():
        runs = _runs(fx)
        if len(runs) < 5:
            return False
        failed = [k for k, r in runs.items() if _cond(r, "Failed") == "True"]
        assert not failed, f"{failed} failed:\n{_chain_state(fx)}\n{fx.describe(','.join(KINDS), CHAIN_NS)}"
        return all(_cond(r, "Ready" if k.startswith("ChatDeployment/") else "Succeeded") == "True" for k, r in runs.items())
    fx.wait_for(done, 2400, lambda: f"the chain to complete:\n{_chain_state(fx)}", interval=5)

    # No pod compiled anything: DeepSpeed's and GPTQModel's CPU ops come prebuilt in the images (a quantize
    # pod compiled GPTQModel's int4 kernel for more than ten minutes of its CPU, and the serve image has no
    # compiler at all).
    compiled = {}
    for pod in fx.pods(CHAIN_NS):
        name = pod["metadata"]["name"]
        out = fx.kubectl("logs", "-n", CHAIN_NS, name, "--all-containers", check=False).stdout
        hits = [m for m in ("Compiling extension", "Building extension module", "Emitting ninja build file") if m in out]
        if hits:
            compiled[name] = hits
    assert not compiled, f"pods compiled extensions at run time: {compiled}"

    # `kubectl get devops-model` lists the five runs (the category of the CRDs).
    listed = fx.kubectl("get", "devops-model", "-n", CHAIN_NS).stdout
    for name in ("kind-pt", "kind-sft", "kind-eval", "kind-int4", "kind-chat"):
        assert name in listed, listed

    # No duplicate children: one Job per attempt of each run, one Deployment for the chat.
    jobs = [j["metadata"]["name"] for j in fx.get("jobs", namespace=CHAIN_NS)["items"]]
    assert len(jobs) == len(set(jobs))
    # The operator deletes a failed attempt's child once its pods are done, so one PyTorchJob is left:
    # the last attempt's (kind-pt-train-r<restarts>).
    ptjobs = [j["metadata"]["name"] for j in fx.get("pytorchjobs", namespace=CHAIN_NS)["items"]]
    restarts = fx.get("pretrainrun", "kind-pt", CHAIN_NS)["status"].get("restarts") or 0
    assert ptjobs == [f"kind-pt-train-r{restarts}" if restarts else "kind-pt-train"], (restarts, ptjobs)
    deployments = fx.get("deployments", namespace=CHAIN_NS)["items"]
    assert len(deployments) == 1, [d["metadata"]["name"] for d in deployments]

    # Scores in the EvalRun's status.
    ev = fx.get("evalrun", "kind-eval", CHAIN_NS)
    scores = ev["status"].get("scores") or {}
    assert scores.get("overall"), ev["status"]
    overall = scores["overall"][0]
    assert overall["total"] > 0 and 0 <= float(overall["accuracy"]) <= 1, overall

    # The chat answers through its Service with the key, and refuses without it (from a client pod).
    chat = fx.get("chatdeployment", "kind-chat", CHAIN_NS)
    url = chat["status"]["endpoint"]["url"].rstrip("/")
    key = "kind-example-key-change-me"
    body = json.dumps({"model": "devops-model-tiny-int4", "max_tokens": 8,
                       "messages": [{"role": "user", "content": "What does kubectl apply do?"}]})
    script = (f"wget -q -O - --header 'Authorization: Bearer {key}' --header 'Content-Type: application/json' "
              f"--post-data '{body}' {url}/v1/chat/completions && echo; echo ===; "
              f"wget -S -O - {url}/v1/models 2>&1 | head -n 5; true")
    _, out = run_busybox(fx, CHAIN_NS, "chat-client", script, 180)
    answer, _, refused = out.partition("===")
    reply = json.loads(answer.strip().splitlines()[-1])
    assert reply["choices"][0]["message"]["content"] is not None, reply
    assert reply["model"] == "devops-model-tiny-int4"
    assert "401" in refused, refused


# --- 4. clean-up ---------------------------------------------------------------------------------------

def _leftovers(node_mod, state_dir: Path) -> list[str]:
    out = []
    mounts = Path("/proc/self/mountinfo").read_text()
    for d in (str(state_dir), str(node_mod.RUN_DIR), str(node_mod.containerd_root())):
        if d in mounts:
            out.append(f"mount under {d}")
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    if node_mod.BRIDGE in links:
        out.append(f"device {node_mod.BRIDGE}")
    for ipt in ("iptables-save", "ip6tables-save"):
        dump = subprocess.run([ipt], capture_output=True, text=True).stdout
        chains = re.findall(r"^:((?:KUBE-|CNI-|DEVOPS-MODEL-)\S*)", dump, re.M)
        if chains:
            out.append(f"{ipt}: {chains}")
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(state_dir) in cmd or str(node_mod.RUN_DIR) in cmd:
            out.append(f"process {pid}: {cmd[:200]}")
    return out


def test_stopping_the_cluster_leaves_no_process_mount_device_or_iptables_rule(node_cluster):
    import node as node_mod  # tests/cluster/node.py (on sys.path through the plugin)
    fx = node_cluster
    state_dir = fx._cp.state_dir
    forward_before = node_mod._state_sysctl_before(fx.node, "net/ipv4/ip_forward")
    fx._cp.stop()
    left = _leftovers(node_mod, state_dir)
    assert not left, left
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == forward_before
