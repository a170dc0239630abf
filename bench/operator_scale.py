"""Operator benchmark: 200 resources applied at once to a real control plane.

    .venv/bin/python bench/operator_scale.py            # writes bench/results/operator.json

Starts its own kube-apiserver + etcd + kube-controller-manager (tests/cluster, binaries from
`make cluster-build`), runs `devops-model operator` as a separate process with the default
configuration, applies 200 resources in one `kubectl apply` (40 each of PretrainRun, SFTRun,
EvalRun, QuantizeRun and ChatDeployment), and measures:

* the time until every child (ConfigMap + PyTorchJob/Job/Deployment/Service) exists, against the
  anchor: `kubectl apply` of the very same 400+ child manifests rendered beforehand (what a user
  without the operator would apply by hand; the floor of what the API server can take);
* p50 / p99 of one reconcile pass (the operator's own histogram, interpolated as Prometheus'
  histogram_quantile does);
* the operator's peak memory (VmHWM), next to kube-controller-manager's on the same cluster.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

from devops_model.yamlio import dump_all
from devops_workloads.processes import free_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
N_PER_KIND = 40
API = "devops-model.io/v1alpha1"


def _load_controlplane():
    spec = importlib.util.spec_from_file_location("bench_controlplane", REPO / "tests" / "cluster" / "controlplane.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the module executes
    spec.loader.exec_module(mod)
    return mod


def resources(prefix: str) -> list[dict]:
    out = []
    for i in range(N_PER_KIND):
        n = f"{prefix}{i:03d}"
        data = {"datasets": [{"uri": "pvc://data/sft.jsonl"}]}
        out += [
            {"apiVersion": API, "kind": "PretrainRun", "metadata": {"name": f"pt-{n}"},
             "spec": {"model": {"uri": "hf://Qwen/Qwen2.5-7B"}, "data": data, "training": {"maxSteps": 10},
                      "resources": {"nodes": 2, "gpusPerNode": 8}, "output": {"uri": f"pvc://models/pt-{n}"}}},
            {"apiVersion": API, "kind": "SFTRun", "metadata": {"name": f"sft-{n}"},
             "spec": {"model": {"uri": "pvc://models/base"}, "data": data, "training": {"maxSteps": 10},
                      "launcher": "Job", "output": {"uri": f"pvc://models/sft-{n}"}}},
            {"apiVersion": API, "kind": "EvalRun", "metadata": {"name": f"ev-{n}"},
             "spec": {"model": {"uri": "pvc://models/base"}, "exams": {"uri": "pvc://data/exams"}}},
            {"apiVersion": API, "kind": "QuantizeRun", "metadata": {"name": f"q-{n}"},
             "spec": {"model": {"uri": "pvc://models/base"}, "output": {"uri": f"pvc://models/q-{n}"}}},
            {"apiVersion": API, "kind": "ChatDeployment", "metadata": {"name": f"chat-{n}"},
             "spec": {"model": {"uri": "pvc://models/base"}, "engine": {"name": "builtin"}}},
        ]
    return out


def children_count(cp, ns: str) -> int:
    r = cp.kubectl("get", "configmaps,jobs.batch,pytorchjobs.kubeflow.org,deployments.apps,services", "-n", ns,
                   "-l", "app.kubernetes.io/managed-by=devops-model-operator", "-o", "name", check=False)
    return len([ln for ln in r.stdout.splitlines() if ln.strip()])


def expected_children(res: list[dict]) -> int:
    # ConfigMap + workload per run; ConfigMap + Deployment + Service per chat.
    return sum(3 if r["kind"] == "ChatDeployment" else 2 for r in res)


def histogram_quantile(q: float, metrics: str, name: str) -> float:
    buckets: dict[float, float] = {}
    for m in re.finditer(rf'^{name}_bucket\{{[^}}]*le="([^"]+)"[^}}]*\}} ([0-9.e+]+)$', metrics, re.M):
        le = float("inf") if m[1] == "+Inf" else float(m[1])
        buckets[le] = buckets.get(le, 0.0) + float(m[2])
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    rank = q * total
    prev_b, prev_c = 0.0, 0.0
    for b in bounds:
        if buckets[b] >= rank:
            if b == float("inf"):
                return prev_b
            return prev_b + (b - prev_b) * (rank - prev_c) / max(buckets[b] - prev_c, 1e-9)
        prev_b, prev_c = b, buckets[b]
    return bounds[-2]


def rss_mib(pid: int, key: str = "VmHWM") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")



def main() -> int:
    import argparse

    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    sys.path.insert(0, str(REPO))
    from devops_model.api.resource import parse_resource
    from devops_operator.builders import render_children

    cpm = _load_controlplane()
    if cpm.binaries_missing():
        print("the control-plane binaries are missing: run `make cluster-build` first", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="bench-operator-"))
    cp = cpm.ControlPlane(work / "state", ports=cpm.Ports.free())
    cp.start()
    op = None
    try:
        cp.apply_files(cpm.kubeflow_crd_files())
        cp.apply_files(cpm.project_crd_files())
        for ns in ("anchor", "bench", "noop"):
            cp.kubectl("create", "namespace", ns)
            cp.kubectl("create", "serviceaccount", "devops-model-workload", "-n", ns)

        # Anchor: the same children, rendered beforehand, applied by hand.
        anchor_children = []
        for r in resources("a"):
            res = parse_resource({**r, "metadata": {**r["metadata"], "namespace": "anchor"}})
            anchor_children += render_children(res)
        anchor_file = work / "anchor.yaml"
        anchor_file.write_text(yaml.safe_dump_all(anchor_children))
        t0 = time.perf_counter()
        cp.kubectl("apply", "-f", str(anchor_file), "-n", "anchor", timeout=600)
        anchor_s = time.perf_counter() - t0
        print(f"anchor: kubectl apply of {len(anchor_children)} rendered children: {anchor_s:.1f}s")

        # For reference: the same 200 resources applied with no operator watching (the API server's
        # schema and CEL validation of the five kinds, nothing else).
        noop_file = work / "noop.yaml"
        noop_file.write_text(dump_all(resources("n")))
        t0 = time.perf_counter()
        cp.kubectl("apply", "-f", str(noop_file), "-n", "noop", timeout=600)
        noop_s = time.perf_counter() - t0
        print(f"reference: kubectl apply of the 200 resources, no operator: {noop_s:.1f}s")

        # Ours: the operator creates them from 200 resources.
        cfg = work / "operator.yaml"
        cfg.write_text(yaml.safe_dump({}))
        metrics_port, health_port = free_port(), free_port()
        env = {**os.environ, "KUBECONFIG": str(cp.kubeconfig), "DEVOPS_MODEL_OPERATOR_CONFIG": str(cfg)}
        log = open(work / "operator.log", "wb")
        op = subprocess.Popen([str(REPO / ".venv" / "bin" / "devops-model"), "operator", "--namespace", "bench",
                               "--metrics-port", str(metrics_port), "--health-port", str(health_port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        res = resources("b")
        want = expected_children(res)
        res_file = work / "resources.yaml"
        res_file.write_text(dump_all(res))
        t0 = time.perf_counter()
        cp.kubectl("apply", "-f", str(res_file), "-n", "bench", timeout=600)
        applied_s = time.perf_counter() - t0
        n = 0
        while time.perf_counter() - t0 < 900:
            n = children_count(cp, "bench")
            if n >= want:
                break
            time.sleep(0.5)
        ours_s = time.perf_counter() - t0
        print(f"ours: {len(res)} resources applied in {applied_s:.1f}s; {n}/{want} children after {ours_s:.1f}s")
        time.sleep(5)  # a few timer passes on top, for the latency histogram
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
            metrics = r.read().decode()
        p50 = histogram_quantile(0.5, metrics, "devops_model_operator_reconcile_seconds")
        p99 = histogram_quantile(0.99, metrics, "devops_model_operator_reconcile_seconds")
        passes = sum(float(m[1]) for m in re.finditer(r"^devops_model_operator_reconcile_seconds_count\{[^}]*\} ([0-9.e+]+)$",
                                                       metrics, re.M))
        op_mem = rss_mib(op.pid)
        kcm_pid = cp.pid("kube-controller-manager")
        kcm_mem = rss_mib(kcm_pid) if kcm_pid else None
        print(f"reconcile p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms over {passes:.0f} passes; "
              f"operator peak {op_mem:.0f} MiB, kube-controller-manager {kcm_mem:.0f} MiB")
    finally:
        if op is not None:
            op.send_signal(signal.SIGTERM)
            try:
                op.wait(timeout=20)
            except subprocess.TimeoutExpired:
                op.kill()
        cp.stop()

    rows = [
        {"figure": f"{len(res)} resources applied at once: time until all {want} children exist",
         "ours": round(ours_s, 2), "anchor_name": f"kubectl apply of the same {want} rendered children (no operator)",
         "anchor": round(anchor_s, 2), "ratio": round(anchor_s / ours_s, 3), "unit": "s",
         "notes": f"complete={n >= want}; 40 each of the five kinds; includes applying the 200 resources themselves "
                  f"({applied_s:.1f}s with the operator busy; {noop_s:.1f}s with no operator); the operator also reads "
                  "pods, patches status and posts Events for every resource in that time"},
        {"figure": "children complete after the last resource was accepted", "ours": round(ours_s - applied_s, 2),
         "anchor_name": f"kubectl apply of the {want} rendered children", "anchor": round(anchor_s, 2),
         "ratio": round(anchor_s / max(ours_s - applied_s, 1e-9), 3), "unit": "s",
         "notes": "how far the operator lags behind the API server accepting the resources"},
        {"figure": "reconcile pass latency p50", "ours": round(p50 * 1000, 2),
         "anchor_name": "kubectl apply time per child object (anchor above / children)",
         "anchor": round(anchor_s / want * 1000, 2), "ratio": round(anchor_s / want / max(p50, 1e-9), 3), "unit": "ms",
         "notes": f"{passes:.0f} passes (create, child events, timers); a pass reads the run, its child and pods and "
                  "creates what is missing; interpolated from the Prometheus histogram"},
        {"figure": "reconcile pass latency p99", "ours": round(p99 * 1000, 2),
         "anchor_name": "kubectl apply time per child object", "anchor": round(anchor_s / want * 1000, 2),
         "ratio": round(anchor_s / want / max(p99, 1e-9), 3), "unit": "ms",
         "notes": "tail under 200 simultaneous creations on 2 cores shared with the API server and etcd"},
        {"figure": "operator peak memory (VmHWM) with 200 resources", "ours": round(op_mem, 1),
         "anchor_name": "kube-controller-manager on the same cluster", "anchor": round(kcm_mem, 1) if kcm_mem else None,
         "ratio": round(kcm_mem / op_mem, 3) if kcm_mem else None, "unit": "MiB",
         "notes": "Python (kopf + kubernetes client) vs. the Go controller manager running every built-in controller"},
    ]
    out = {"area": "operator", "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.system()} (CPU only)",
           "date": time.strftime("%Y-%m-%d"), "rows": rows}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "operator.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {HERE / 'results' / 'operator.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
