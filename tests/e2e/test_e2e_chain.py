"""End to end: the whole chain pretrain -> SFT (LoRA, merged) -> exam -> GPTQ int4 -> chat, applied
at once to a real API server with the operator running; the test plays the kubelet.

For every pod the Job/ReplicaSet controllers create from the operator's templates, the test runs
the pod's container command locally, as a kubelet would: the ConfigMap volume becomes a folder with
its files, each PVC mount becomes $STORAGE/<claim>, emptyDirs become temp folders, the container's
env is passed (paths mapped the same way), and the termination message file is copied into the pod
status with the exit code. The operator takes it from there (lineage, results, next stage). The
chat pod's command (the worker entry point, ``devops-model run -f ...``) runs as a background server on 127.0.0.1, the pod is
marked Ready, and the test asks the endpoint a question.

    .venv/bin/python -m pytest tests/test_e2e_chain.py -q      (tiny model, CPU, ~2-3 minutes)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from devops_workloads.processes import free_port

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
API = "devops-model.io/v1alpha1"
CHAIN_TIMEOUT = 900
#: operator storage.cacheClaim for this test (hub downloads and compiled kernels).
CACHE_CLAIM = "model-cache"


def chain() -> list[dict]:
    """examples/local's chain, shortened for a test (few steps, one shots setting)."""
    train = {"learningRate": "1e-3", "maxSteps": 3, "perDeviceBatchSize": 2, "maxLength": 128, "precision": "fp32",
             "gradientCheckpointing": False, "saveSteps": 2, "loggingSteps": 1}
    return [
        {"apiVersion": API, "kind": "PretrainRun", "metadata": {"name": "e2e-pt"},
         "spec": {"model": {"uri": "pvc://models/tiny-qwen"},
                  "data": {"registry": "pvc://samples", "datasets": [{"name": "devops_corpus"}]},
                  "training": train, "finetuning": {"type": "full"}, "launcher": "Job",
                  "output": {"uri": "pvc://runs/e2e-pt"}}},
        {"apiVersion": API, "kind": "SFTRun", "metadata": {"name": "e2e-sft"},
         "spec": {"model": {"fromRun": {"kind": "PretrainRun", "name": "e2e-pt"}},
                  "data": {"registry": "pvc://samples", "datasets": [{"name": "devops_qa_alpaca"}]},
                  "training": {**train, "maxLength": 256}, "launcher": "Job",
                  "finetuning": {"type": "lora", "lora": {"rank": 8, "alpha": 32, "merge": True}},
                  "output": {"uri": "pvc://runs/e2e-sft"}}},
        {"apiVersion": API, "kind": "EvalRun", "metadata": {"name": "e2e-eval"},
         "spec": {"model": {"fromRun": {"kind": "SFTRun", "name": "e2e-sft"}},
                  "exams": {"uri": "pvc://samples/exams"}, "shots": [0], "styles": ["base"],
                  "output": "pvc://results/e2e-eval"}},
        {"apiVersion": API, "kind": "QuantizeRun", "metadata": {"name": "e2e-int4"},
         "spec": {"model": {"fromRun": {"kind": "SFTRun", "name": "e2e-sft"}}, "bits": 4, "groupSize": 128,
                  "calibration": {"samples": 16, "minLength": 8, "maxLength": 256},
                  "verification": {"maxPerplexityIncrease": "10"},
                  "output": {"uri": "pvc://models/e2e-int4"}}},
        {"apiVersion": API, "kind": "ChatDeployment", "metadata": {"name": "e2e-chat"},
         "spec": {"model": {"fromRun": {"kind": "QuantizeRun", "name": "e2e-int4"}},
                  "engine": {"name": "builtin", "maxModelLength": 512, "maxConcurrency": 4},
                  "gate": {"evalRun": "e2e-eval", "minAccuracy": "0.0", "shots": 0}}},
    ]



class Kubelet:
    """Runs the operator's pods on this machine (see the module docstring)."""

    def __init__(self, cp, ns: str, root: Path, storage: Path):
        self.cp, self.ns, self.root, self.storage = cp, ns, root, storage
        self.done: set[str] = set()
        self.servers: dict[str, tuple[subprocess.Popen, int]] = {}
        self.logs: dict[str, Path] = {}

    # -- volumes and paths ---------------------------------------------------------------------
    def _mounts(self, pod: dict) -> dict[str, Path]:
        """mountPath -> local folder, for the pod's first container."""
        spec = pod["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        base = self.root / pod["metadata"]["name"]
        out: dict[str, Path] = {}
        for m in spec["containers"][0]["volumeMounts"]:
            v = volumes[m["name"]]
            if "persistentVolumeClaim" in v and v["persistentVolumeClaim"]["claimName"] == CACHE_CLAIM:
                # The cache claim stands for this machine's cache (a node-local cache): compiled
                # GPTQ kernels built once here are reused, as a cache PVC does across pods.
                local = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
            elif "persistentVolumeClaim" in v:
                local = self.storage / v["persistentVolumeClaim"]["claimName"]
                # Claims are mounted at MOUNT_ROOT/<claim>: MOUNT_ROOT (DEVOPS_MODEL_STORAGE) is the storage root.
                out[str(Path(m["mountPath"]).parent)] = self.storage
            elif "configMap" in v:
                local = base / "configmaps" / m["name"]
                cm = self.cp.get("configmap", v["configMap"]["name"], self.ns)
                local.mkdir(parents=True, exist_ok=True)
                for key, text in cm["data"].items():
                    (local / key).write_text(text)
            elif m["mountPath"] == "/dev/shm":
                continue  # the host's /dev/shm serves
            else:
                local = base / "emptydirs" / m["name"]
            local.mkdir(parents=True, exist_ok=True)
            out[m["mountPath"]] = local
        return out

    @staticmethod
    def _map(value: str, mounts: dict[str, Path]) -> str:
        for mount in sorted(mounts, key=len, reverse=True):
            if value == mount or value.startswith(mount + "/"):
                return str(mounts[mount]) + value[len(mount):]
        return value

    def _command(self, pod: dict) -> tuple[list[str], dict[str, str], dict[str, Path]]:
        c = pod["spec"]["containers"][0]
        mounts = self._mounts(pod)
        argv = [self._map(a, mounts) for a in (c.get("command") or []) + (c.get("args") or [])]
        if argv[0] == "devops-model":
            argv[0] = str(REPO / ".venv" / "bin" / "devops-model")
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL") or k.endswith("_OFFLINE")
               or k.startswith(("TOKENIZERS_", "GPTQMODEL_", "OMP_", "OPENBLAS_", "DEVOPS_MODEL_NO_PROGRESS"))}
        for e in c.get("env") or []:
            if "value" in e:
                env[e["name"]] = self._map(e["value"], mounts)
        term = self.root / pod["metadata"]["name"] / "termination-log"
        env["DEVOPS_MODEL_TERMINATION_LOG"] = str(term)
        return argv, env, mounts

    def _patch(self, pod_name: str, status: dict) -> None:
        self.cp.kubectl("patch", "pod", pod_name, "-n", self.ns, "--subresource=status", "--type=merge",
                        "-p", json.dumps({"status": status}))

    # -- batch pods ----------------------------------------------------------------------------
    def run_pod(self, pod: dict) -> int:
        name = pod["metadata"]["name"]
        argv, env, _ = self._command(pod)
        container = pod["spec"]["containers"][0]["name"]
        self._patch(name, {"phase": "Running", "conditions": [{"type": "PodScheduled", "status": "True"}],
                           "containerStatuses": [{"name": container, "image": "img", "imageID": "", "ready": True,
                                                  "restartCount": 0, "started": True,
                                                  "state": {"running": {"startedAt": _now()}}}]})
        log = self.root / name / "log.txt"
        self.logs[name] = log
        with open(log, "wb") as fh:
            code = subprocess.run(argv, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=self.root / name,
                                  timeout=CHAIN_TIMEOUT).returncode
        term = Path(env["DEVOPS_MODEL_TERMINATION_LOG"])
        message = term.read_text() if term.exists() else ""
        if not message and code != 0:  # terminationMessagePolicy: FallbackToLogsOnError
            message = log.read_bytes()[-2048:].decode(errors="replace")
        self._patch(name, {"phase": "Succeeded" if code == 0 else "Failed", "containerStatuses": [{
            "name": container, "image": "img", "imageID": "", "ready": False, "restartCount": 0,
            "state": {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                     "message": message, "startedAt": _now(), "finishedAt": _now()}}}]})
        return code

    # -- serving pods --------------------------------------------------------------------------
    def start_server(self, pod: dict) -> int:
        name = pod["metadata"]["name"]
        argv, env, _ = self._command(pod)
        port = free_port()
        # The pod runs the worker entry point (`devops-model run -f .../resource.yaml`) like every
        # other pod; loopback only, on a free port: the pod's 0.0.0.0:8000 stands for the pod network.
        assert argv[1:3] == ["run", "-f"] and env["DEVOPS_MODEL_SERVE_HOST"] == "0.0.0.0", argv
        env["DEVOPS_MODEL_SERVE_HOST"] = "127.0.0.1"
        env["DEVOPS_MODEL_SERVE_PORT"] = str(port)
        log = self.root / name / "log.txt"
        self.logs[name] = log
        proc = subprocess.Popen(argv, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=self.root / name)
        self.servers[name] = (proc, port)
        return port

    def server_ready(self, name: str) -> bool:
        proc, port = self.servers[name]
        if proc.poll() is not None:
            raise AssertionError(f"chat server exited with {proc.returncode}:\n{self.logs[name].read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def mark_ready(self, name: str) -> None:
        self._patch(name, {"phase": "Running", "conditions": [
            {"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"},
            {"type": "ContainersReady", "status": "True"}],
            "containerStatuses": [{"name": "server", "image": "img", "imageID": "", "ready": True, "restartCount": 0,
                                   "started": True, "state": {"running": {"startedAt": _now()}}}]})

    def stop(self) -> None:
        for proc, _ in self.servers.values():
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()

    # -- one look at the namespace -------------------------------------------------------------
    def step(self) -> None:
        for pod in self.cp.get("pods", namespace=self.ns)["items"]:
            labels = pod["metadata"].get("labels", {})
            name = pod["metadata"]["name"]
            if "devops-model.io/run" not in labels or name in self.done or pod["metadata"].get("deletionTimestamp"):
                continue
            self.done.add(name)
            if labels.get("devops-model.io/kind") == "ChatDeployment":
                self.start_server(pod)
            else:
                self.run_pod(pod)
        for name in list(self.servers):
            if name not in getattr(self, "_ready", set()) and self.server_ready(name):
                self.mark_ready(name)
                self._ready = getattr(self, "_ready", set()) | {name}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@pytest.fixture
def storage(tmp_path, tiny_bpe):
    from devops_workloads.sample_data import install

    root = tmp_path / "storage"
    shutil.copytree(tiny_bpe, root / "models" / "tiny-qwen")
    install(root)
    return root


def test_whole_chain_applied_at_once(control_plane, k8s_namespace, run_operator, storage, tmp_path):
    cp, ns = control_plane, k8s_namespace
    op = run_operator(ns, {"storage": {"cacheClaim": CACHE_CLAIM}})
    cp.apply(chain(), namespace=ns)
    kubelet = Kubelet(cp, ns, tmp_path / "pods", storage)
    (tmp_path / "pods").mkdir()
    kinds = [("pretrainrun", "e2e-pt"), ("sftrun", "e2e-sft"), ("evalrun", "e2e-eval"), ("quantizerun", "e2e-int4")]

    def finished():
        kubelet.step()
        states = {name: (cp.get(kind, name, ns).get("status") or {}).get("state") for kind, name in kinds}
        failed = {n: s for n, s in states.items() if s == "Failed"}
        if failed:
            logs = "\n".join(f"--- {p}\n{log.read_text()[-2500:]}" for p, log in kubelet.logs.items())
            pytest.fail(f"failed: {failed}; statuses:\n" + "\n".join(
                json.dumps(cp.get(k, n, ns).get("status"), indent=1) for k, n in kinds if n in failed) + f"\n{logs}")
        chat_state = (cp.get("chatdeployment", "e2e-chat", ns).get("status") or {}).get("state")
        return all(s == "Succeeded" for s in states.values()) and chat_state == "Ready"

    try:
        cp.wait_for(finished, timeout=CHAIN_TIMEOUT, interval=1, message=lambda: "the chain; statuses: " + json.dumps(
            {n: (cp.get(k, n, ns).get("status") or {}).get("message") for k, n in kinds + [("chatdeployment", "e2e-chat")]})
            + f"\noperator:\n{op.tail(20)}")
        st = {name: cp.get(kind, name, ns)["status"] for kind, name in kinds + [("chatdeployment", "e2e-chat")]}
        # A trained adapter (merged for the next stages), scores, an int4 model and an endpoint.
        sft = st["e2e-sft"]["artifact"]
        assert sft["format"] == "hf-lora" and sft.get("mergedUri")
        assert st["e2e-sft"]["resolvedModel"] == st["e2e-pt"]["artifact"]["uri"]
        overall = st["e2e-eval"]["scores"]["overall"]
        assert overall and overall[0]["total"] > 0 and 0.0 <= overall[0]["accuracy"] <= 1.0
        assert st["e2e-eval"]["resolvedModel"] == sft["mergedUri"]
        assert "gptq" in st["e2e-int4"]["artifact"]["format"].lower()
        chat = st["e2e-chat"]
        assert chat["resolvedModel"] == st["e2e-int4"]["artifact"]["uri"]
        assert chat["lineage"] == ["pvc://models/tiny-qwen", "PretrainRun/e2e-pt", "SFTRun/e2e-sft", "QuantizeRun/e2e-int4"]
        assert chat["endpoint"]["url"] == f"http://e2e-chat.{ns}.svc:8000" and chat["endpoint"]["model"] == "e2e-chat"
        # The endpoint answers (the Service stands for the local server here).
        (name, (_, port)), = kubelet.servers.items()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", method="POST",
                                     headers={"Content-Type": "application/json"},
                                     data=json.dumps({"model": chat["endpoint"]["model"], "max_tokens": 8,
                                                      "messages": [{"role": "user", "content": "什么是 Kubernetes？"}]}).encode())
        with urllib.request.urlopen(req, timeout=60) as r:
            answer = json.loads(r.read())
        assert answer["choices"][0]["message"]["role"] == "assistant"
        assert answer["usage"]["completion_tokens"] >= 1
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/info", timeout=10) as r:
            info = json.loads(r.read())
        assert "QuantizeRun/e2e-int4" in json.dumps(info)

        # Content-addressed artifacts: the digests the operator took from each run's own pod are those
        # of the folders as the runs left them; a file changed afterwards fails its next consumer.
        from devops_model.artifacts import digest_of, manifest_text

        assert st["e2e-pt"]["artifact"]["digest"] == digest_of(manifest_text(storage / "runs" / "e2e-pt"))
        assert sft["digest"] == digest_of(manifest_text(storage / "runs" / "e2e-sft", skip=("merged",)))
        assert sft["mergedDigest"] == digest_of(manifest_text(storage / "runs" / "e2e-sft" / "merged"))
        assert st["e2e-int4"]["artifact"]["digest"] == digest_of(manifest_text(storage / "models" / "e2e-int4"))
        weights = next((storage / "runs" / "e2e-sft" / "merged").glob("*.safetensors"))
        weights.write_bytes(weights.read_bytes()[:-4] + b"\x00\x00\x00\x01")
        tampered = {**chain()[2], "metadata": {"name": "e2e-eval-tampered"}}
        tampered["spec"] = {**tampered["spec"], "output": "pvc://results/e2e-eval-tampered"}
        cp.apply([tampered], namespace=ns)

        def ended():
            kubelet.step()
            return (cp.get("evalrun", "e2e-eval-tampered", ns).get("status") or {}).get("state") in ("Succeeded", "Failed")

        cp.wait_for(ended, timeout=300, interval=1, message=lambda: "the EvalRun of the tampered model; status: "
                    + json.dumps(cp.get("evalrun", "e2e-eval-tampered", ns).get("status")) + f"\noperator:\n{op.tail(20)}")
        bad = cp.get("evalrun", "e2e-eval-tampered", ns)["status"]
        cond = next(c for c in bad["conditions"] if c["type"] == "Succeeded")
        assert bad["state"] == "Failed" and cond["reason"] == "ArtifactMismatch", bad
        assert f"{weights.name} was changed after the run that produced it finished" in cond["message"], cond
        assert "restarts" not in bad or not bad["restarts"]  # bad input: not retried
        assert not (storage / "results" / "e2e-eval-tampered").exists()
    finally:
        kubelet.stop()
