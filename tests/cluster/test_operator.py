"""The operator against a real control plane (kube-apiserver + etcd + kube-controller-manager),
running as its own process with the operator's RBAC (tests/plugins/operator.py).

There is no kubelet, scheduler or Kubeflow controller: the tests patch pod and PyTorchJob status
as those would (the Job, ReplicaSet, Deployment and garbage-collector controllers are real).

    .venv/bin/python -m pytest tests/cluster/test_operator.py -q
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
import yaml

from devops_model.contract import CONTROLLER
from devops_workloads.runner import TERMINATION_MESSAGE_LIMIT

pytestmark = pytest.mark.cluster

API = "devops-model.io/v1alpha1"


# --------------------------------------------------------------------------- resources


def sft(name, model=None, launcher="PyTorchJob", **spec):
    return {"apiVersion": API, "kind": "SFTRun", "metadata": {"name": name},
            "spec": {"model": model or {"uri": "pvc://models/base"},
                     "data": {"datasets": [{"uri": "pvc://data/sft.jsonl"}]},
                     "training": {"maxSteps": 5}, "launcher": launcher,
                     "output": {"uri": f"pvc://models/{name}"}, **spec}}


def pretrain(name, launcher="PyTorchJob"):
    return {"apiVersion": API, "kind": "PretrainRun", "metadata": {"name": name},
            "spec": {"model": {"uri": "hf://Qwen/Qwen2.5-7B"}, "data": {"datasets": [{"uri": "pvc://data/corpus.txt"}]},
                     "training": {"maxSteps": 5}, "launcher": launcher, "output": {"uri": f"pvc://models/{name}"}}}


def evalrun(name, model=None):
    return {"apiVersion": API, "kind": "EvalRun", "metadata": {"name": name},
            "spec": {"model": model or {"uri": "pvc://models/base"}, "exams": {"uri": "pvc://data/exams"}, "shots": [0]}}


def quantize(name, model=None):
    return {"apiVersion": API, "kind": "QuantizeRun", "metadata": {"name": name},
            "spec": {"model": model or {"uri": "pvc://models/base"}, "output": {"uri": f"pvc://models/{name}"}}}


def chat(name, model=None, replicas=1):
    return {"apiVersion": API, "kind": "ChatDeployment", "metadata": {"name": name},
            "spec": {"model": model or {"uri": "pvc://models/base"}, "engine": {"name": "builtin"}, "replicas": replicas}}


# --------------------------------------------------------------------------- what the kubelet would do


def patch_status(cp, kind, name, ns, status):
    cp.kubectl("patch", kind, name, "-n", ns, "--subresource=status", "--type=merge",
               "-p", json.dumps({"status": status}))


def job_pod(cp, ns, job):
    pods = cp.get("pods", namespace=ns)["items"]
    found = [p for p in pods if p["metadata"].get("labels", {}).get("job-name") == job]
    return found[0]["metadata"]["name"] if found else None


def terminated(code, message="", reason=None, finished="2026-01-01T00:10:00Z"):
    return {"name": "worker", "image": "img", "imageID": "", "ready": False, "restartCount": 0,
            "state": {"terminated": {"exitCode": code, "reason": reason or ("Completed" if code == 0 else "Error"),
                                     "message": message, "startedAt": "2026-01-01T00:00:00Z", "finishedAt": finished}}}


def running_container(name="worker", ready=True):
    return {"name": name, "image": "img", "imageID": "", "ready": ready, "restartCount": 0, "started": True,
            "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}


def result_message(**status) -> str:
    return json.dumps({"status": status})


def state_of(cp, kind, name, ns):
    obj = cp.get(kind, name, ns) or {}
    return (obj.get("status") or {}).get("state")


def wait_state(cp, op, kind, name, ns, want, timeout=45):
    return cp.wait_for(lambda: state_of(cp, kind, name, ns) == want and cp.get(kind, name, ns), timeout=timeout,
                       message=lambda: f"{kind}/{name} state {want}; status: "
                       f"{json.dumps((cp.get(kind, name, ns) or {}).get('status'), indent=1)}\noperator log:\n{op.tail(30)}")


def wait_reason(cp, op, kind, name, ns, state, cond, reason, timeout=45):
    """``status.state`` is the phase; why is the reason of a condition (devops_model.contract)."""
    def seen():
        obj = cp.get(kind, name, ns)
        c = condition(obj, cond) if obj and obj.get("status") else None
        return obj if state_of(cp, kind, name, ns) == state and c and c["reason"] == reason else None
    return cp.wait_for(seen, timeout=timeout, message=lambda: f"{kind}/{name} state {state}, {cond} reason {reason}; "
                       f"status: {json.dumps((cp.get(kind, name, ns) or {}).get('status'), indent=1)}\n{op.tail(30)}")


def condition(obj, type_):
    return next((c for c in obj["status"].get("conditions", []) if c["type"] == type_), None)


def master_pod(cp, ns, job_obj, message, code=0, reason=None):
    """What the Kubeflow controller + kubelet do for a PyTorchJob's Master: a pod from its template,
    which then terminates with the worker's termination message."""
    tpl = job_obj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    name = f"{job_obj['metadata']['name']}-master-0"
    # Owned by the PyTorchJob, as Kubeflow's controller makes it: the operator takes a run's outcome
    # only from pods its child owns.
    owner = {"apiVersion": job_obj["apiVersion"], "kind": job_obj["kind"], "name": job_obj["metadata"]["name"],
             "uid": job_obj["metadata"]["uid"], "controller": True}
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": ns, "labels": tpl["metadata"]["labels"], "ownerReferences": [owner]},
           "spec": tpl["spec"]}
    cp.apply(pod, namespace=ns)
    patch_status(cp, "pod", name, ns, {"phase": "Succeeded" if code == 0 else "Failed",
                                       "containerStatuses": [{**terminated(code, message, reason), "name": "pytorch"}]})
    return name


# --------------------------------------------------------------------------- tests


def test_each_kind_creates_its_children(control_plane, k8s_namespace, run_operator):
    cp, ns = control_plane, k8s_namespace
    op = run_operator(ns)
    cp.apply([pretrain("pt"), sft("sft-v2", launcher="TrainJob"), sft("sft-job", launcher="Job"),
              evalrun("ev"), quantize("q"), chat("bot")], namespace=ns)
    expected = [("configmap", "pt-spec"), ("pytorchjob", "pt-train"), ("trainjob", "sft-v2-train"),
                ("job", "sft-job-train"), ("job", "ev-eval"), ("job", "q-quantize"),
                ("configmap", "bot-spec"), ("deployment", "bot"), ("service", "bot")]
    for kind, name in expected:
        obj = cp.wait_for(lambda: cp.get(kind, name, ns), timeout=45,
                          message=lambda: f"{kind}/{name}; operator log:\n{op.tail()}")
        (owner,) = obj["metadata"]["ownerReferences"]
        assert owner["controller"] is True
        assert obj["metadata"]["labels"]["devops-model.io/run"] == owner["name"]
    # The pinned Trainer CRD (versions.env TRAINER_VERSION) keeps the operator's runtime patch: an
    # older CRD would prune it silently, and the pods would lose their volumes and identity.
    trainjob = cp.get("trainjob", "sft-v2-train", ns)
    (patch,) = trainjob["spec"]["runtimePatches"]
    assert patch["manager"] == "devops-model-operator"
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod_spec = node["template"]["spec"]["template"]["spec"]
    assert node["name"] == "node" and pod_spec["serviceAccountName"] == "sft-v2-sft-worker"
    assert {"spec", "tmp", "cache", "pvc-models", "pvc-data"} <= {v["name"] for v in pod_spec["volumes"]}
    (container,) = pod_spec["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True and container["volumeMounts"]
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    # The real Job controller made a pod from our template, as the run's own ServiceAccount.
    pod = cp.wait_for(lambda: job_pod(cp, ns, "ev-eval"), timeout=30, message="the Job controller's pod")
    assert cp.get("pod", pod, ns)["spec"]["serviceAccountName"] == "ev-eval-worker"  # the run's own identity
    st = cp.get("evalrun", "ev", ns)["status"]
    assert st["children"] == ["ConfigMap/ev-spec", "ServiceAccount/ev-eval-worker", "Role/ev-eval-worker",
                              "RoleBinding/ev-eval-worker", "Job/ev-eval"] and st["observedGeneration"] == 1
    # The spec the worker reads is the resource itself.
    cm = cp.get("configmap", "ev-spec", ns)
    assert yaml.safe_load(cm["data"]["resource.yaml"])["spec"]["exams"]["uri"] == "pvc://data/exams"
    # Metrics: runs by state and reconcile latency.
    metrics = op.metrics()
    assert 'devops_model_operator_runs{kind="EvalRun"' in metrics
    assert "devops_model_operator_reconcile_seconds_count" in metrics


def test_job_status_follows_pods_to_scores(control_plane, k8s_namespace, run_operator):
    """Unschedulable -> Running -> Succeeded with the scores from the termination message.

    The watchdog interval is long here: pod-level news (the Job does not change when its pod is
    unschedulable) must come from the quick look at starting runs, every requeueSeconds."""
    cp, ns = control_plane, k8s_namespace
    op = run_operator(ns, {"reconcile": {"watchdogIntervalSeconds": 600, "requeueSeconds": 1}},
                      env={"POD_NAME": "devops-model-5d8f7-x2x9q"})
    cp.apply(evalrun("ev"), namespace=ns)
    pod = cp.wait_for(lambda: job_pod(cp, ns, "ev-eval"), timeout=45, message=lambda: op.tail())
    patch_status(cp, "pod", pod, ns, {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                                      "message": "0/8 nodes are available: 8 Insufficient nvidia.com/gpu."}]})
    obj = wait_reason(cp, op, "evalrun", "ev", ns, "Pending", "Running", "Unschedulable")
    assert "Insufficient nvidia.com/gpu" in condition(obj, "Running")["message"]
    patch_status(cp, "pod", pod, ns, {"phase": "Running", "conditions": [{"type": "PodScheduled", "status": "True"}],
                                      "containerStatuses": [running_container()]})
    obj = wait_state(cp, op, "evalrun", "ev", ns, "Running")
    assert obj["status"]["startTime"] and condition(obj, "Running")["status"] == "True"
    scores = {"overall": [{"shots": 0, "style": "base", "correct": 3, "total": 4, "accuracy": 0.75}]}
    patch_status(cp, "pod", pod, ns, {"phase": "Succeeded", "containerStatuses": [
        terminated(0, result_message(state="Succeeded", scores=scores, summary="0-shot 75.0%"))]})
    obj = wait_state(cp, op, "evalrun", "ev", ns, "Succeeded")
    assert obj["status"]["scores"] == scores and obj["status"]["summary"] == "0-shot 75.0%"
    assert condition(obj, "Succeeded")["status"] == "True" and obj["status"]["completionTime"]
    events = [e for e in cp.get("events", namespace=ns)["items"] if e["involvedObject"]["name"] == "ev"]
    reasons = {e["reason"] for e in events}
    assert {"Created", "Unschedulable", "Running", "Succeeded"} <= reasons, reasons
    # The Events name this operator and its pod (POD_NAME, set by the chart), not kopf's "kopf"/"dev".
    assert {(e["reportingComponent"], e["source"]["component"], e["reportingInstance"]) for e in events} == {
        (CONTROLLER, CONTROLLER, "devops-model-5d8f7-x2x9q")}


def test_oom_restarts_a_new_child_then_succeeds_with_the_artifact(control_plane, k8s_namespace, run_operator):
    cp, ns = control_plane, k8s_namespace
    op = run_operator(ns)
    cp.apply(sft("s", failurePolicy={"maxRestarts": 1}), namespace=ns)
    job = cp.wait_for(lambda: cp.get("pytorchjob", "s-train", ns), timeout=45, message=lambda: op.tail())
    master_pod(cp, ns, job, "", code=137, reason="OOMKilled")
    patch_status(cp, "pytorchjob", "s-train", ns, {"conditions": [
        {"type": "Failed", "status": "True", "reason": "PyTorchJobFailed", "message": "master failed",
         "lastUpdateTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z"}]})
    retry = cp.wait_for(lambda: cp.get("pytorchjob", "s-train-r1", ns), timeout=45,
                        message=lambda: f"restart child; {cp.get('sftrun', 's', ns).get('status')}\n{op.tail()}")
    obj = cp.get("sftrun", "s", ns)
    assert obj["status"]["restarts"] == 1
    last = obj["status"]["lastRestart"]  # stays after the Event expires
    assert last["attempt"] == 1 and last["reason"] == "OOMKilled" and last["time"]
    events = [e for e in cp.get("events", namespace=ns)["items"] if e["involvedObject"]["name"] == "s"]
    restarting = [e for e in events if e["reason"] == "Restarting"]
    assert restarting and "OOMKilled" in restarting[0]["message"] and restarting[0]["type"] == "Warning"
    cp.wait_for(lambda: cp.get("pytorchjob", "s-train", ns) is None, timeout=30, message="the failed child deleted")
    artifact = {"uri": "pvc://models/s/final", "format": "hf-lora", "baseModel": "pvc://models/base"}
    master_pod(cp, ns, retry, result_message(state="Succeeded", artifact=artifact))
    patch_status(cp, "pytorchjob", "s-train-r1", ns, {"conditions": [
        {"type": "Succeeded", "status": "True", "reason": "PyTorchJobSucceeded", "message": "done",
         "lastUpdateTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z"}]})
    obj = wait_state(cp, op, "sftrun", "s", ns, "Succeeded")
    assert obj["status"]["artifact"] == artifact


def test_bad_data_fails_without_restarting(control_plane, k8s_namespace, run_operator):
    cp, ns = control_plane, k8s_namespace
    op = run_operator(ns)
    cp.apply(sft("bad", launcher="Job"), namespace=ns)
    pod = cp.wait_for(lambda: job_pod(cp, ns, "bad-train"), timeout=45, message=lambda: op.tail())
    msg = "data.datasets[0]: sha1 mismatch: expected 0123..., got 89ab..."
    patch_status(cp, "pod", pod, ns, {"phase": "Failed", "containerStatuses": [
        terminated(3, result_message(state="Failed", reason="BadData", message=msg))]})
    obj = wait_state(cp, op, "sftrun", "bad", ns, "Failed")
    cond = condition(obj, "Succeeded")
    assert (cond["status"], cond["reason"]) == ("False", "BadData") and "sha1 mismatch" in cond["message"]
    assert not obj["status"].get("restarts") and cp.get("job", "bad-train-r1", ns) is None


def test_stall_watchdog_restarts_a_silent_run(control_plane, k8s_namespace, run_operator):
    cp, ns = control_plane, k8s_namespace
    op = run_operator(ns)
    # 1m is the shortest stall timeout the API accepts (issue 14: "0s" restarted a run at once).
    cp.apply(sft("quiet", launcher="Job", failurePolicy={"maxRestarts": 2, "stallTimeout": "1m"}), namespace=ns)
    pod = cp.wait_for(lambda: job_pod(cp, ns, "quiet-train"), timeout=45, message=lambda: op.tail())
    patch_status(cp, "pod", pod, ns, {"phase": "Running", "containerStatuses": [running_container()]})
    # A worker that reported once, long ago.
    patch_status(cp, "sftrun", "quiet", ns, {"progress": {"step": 3, "totalSteps": 5, "updated": "2026-01-01T00:00:00Z"}})
    cp.wait_for(lambda: cp.get("job", "quiet-train-r1", ns), timeout=150,
                message=lambda: f"restart after stall; {cp.get('sftrun', 'quiet', ns).get('status')}\n{op.tail()}")
    obj = cp.get("sftrun", "quiet", ns)
    assert condition(obj, "Stalled")["status"] == "True"
    restarting = [e for e in cp.get("events", namespace=ns)["items"]
                  if e["involvedObject"]["name"] == "quiet" and e["reason"] == "Restarting"]
    assert restarting and "stall" in restarting[0]["message"].lower()
    # The new attempt gets a fresh stall clock (its own start), so it is not restarted at once.
    pod = cp.wait_for(lambda: job_pod(cp, ns, "quiet-train-r1"), timeout=45, message=lambda: op.tail())
    patch_status(cp, "pod", pod, ns, {"phase": "Running", "containerStatuses": [running_container()]})
    wait_state(cp, op, "sftrun", "quiet", ns, "Running")
    assert cp.get("sftrun", "quiet", ns)["status"]["restarts"] == 1


def test_waiting_from_run_resumes_when_parent_succeeds(control_plane, k8s_namespace, run_operator):
    cp, ns = control_plane, k8s_namespace
    op = run_operator(ns)
    cp.apply(evalrun("ev", model={"fromRun": {"kind": "SFTRun", "name": "parent"}}), namespace=ns)
    obj = wait_state(cp, op, "evalrun", "ev", ns, "Waiting")
    cond = condition(obj, "ParentReady")
    assert (cond["status"], cond["reason"]) == ("False", "WaitingForParent") and "SFTRun/parent" in cond["message"]
    cp.apply(sft("parent", launcher="Job"), namespace=ns)
    pod = cp.wait_for(lambda: job_pod(cp, ns, "parent-train"), timeout=45, message=lambda: op.tail())
    assert cp.get("job", "ev-eval", ns) is None  # still waiting while the parent runs
    artifact = {"uri": "pvc://models/parent/adapter", "format": "hf-lora", "mergedUri": "pvc://models/parent/merged"}
    patch_status(cp, "pod", pod, ns, {"phase": "Succeeded", "containerStatuses": [
        terminated(0, result_message(state="Succeeded", artifact=artifact))]})
    wait_state(cp, op, "sftrun", "parent", ns, "Succeeded")
    cp.wait_for(lambda: cp.get("job", "ev-eval", ns), timeout=45, message=lambda: f"dependent's child\n{op.tail()}")
    obj = cp.get("evalrun", "ev", ns)
    assert condition(obj, "ParentReady")["status"] == "True"
    assert obj["status"]["resolvedModel"] == "pvc://models/parent/merged"
    doc = yaml.safe_load(cp.get("configmap", "ev-spec", ns)["data"]["resource.yaml"])
    assert doc["status"]["resolvedModel"] == "pvc://models/parent/merged"
    assert yaml.safe_load(cp.get("configmap", "ev-spec", ns)["data"]["parent.yaml"])["status"]["artifact"] == artifact


def test_a_failed_parent_fails_the_dependent(control_plane, k8s_namespace, run_operator):
    cp, ns = control_plane, k8s_namespace
    op = run_operator(ns)
    cp.apply([sft("p", launcher="Job", failurePolicy={"maxRestarts": 0}),
              quantize("q", model={"fromRun": {"kind": "SFTRun", "name": "p"}})], namespace=ns)
    pod = cp.wait_for(lambda: job_pod(cp, ns, "p-train"), timeout=45, message=lambda: op.tail())
    patch_status(cp, "pod", pod, ns, {"phase": "Failed", "containerStatuses": [terminated(1, "RuntimeError: boom")]})
    obj = wait_state(cp, op, "quantizerun", "q", ns, "Failed")
    assert condition(obj, "ParentReady")["reason"] == "ParentFailed"


def test_operator_killed_midway_creates_no_duplicates(control_plane, k8s_namespace, run_operator):
    cp, ns = control_plane, k8s_namespace
    op = run_operator(ns)
    names = [f"run-{i}" for i in range(8)]
    cp.apply([sft(n, launcher="Job") for n in names], namespace=ns)
    cp.wait_for(lambda: any(cp.get("job", f"{n}-train", ns) for n in names), timeout=45, message=lambda: op.tail())
    op.stop(kill=True)  # SIGKILL mid-reconcile: no chance to clean up
    op.start()
    for n in names:
        cp.wait_for(lambda: cp.get("job", f"{n}-train", ns), timeout=45, message=lambda: op.tail())
    op.restart()  # and a clean restart on top: a resume pass over every run
    cp.wait_for(lambda: all(state_of(cp, "sftrun", n, ns) == "Pending" for n in names), timeout=30, message="states")
    for kind in ("job", "configmap"):
        items = cp.get(kind, namespace=ns)["items"]
        runs = [i["metadata"]["labels"]["devops-model.io/run"] for i in items
                if "devops-model.io/run" in i["metadata"].get("labels", {})]
        assert sorted(runs) == sorted(names), f"{kind}: {sorted(runs)}"


def test_deleting_a_run_removes_its_children(control_plane, k8s_namespace, run_operator):
    cp, ns = control_plane, k8s_namespace
    op = run_operator(ns)
    cp.apply([sft("gone"), chat("gone-chat")], namespace=ns)
    identity = [("serviceaccount", "gone-sft-worker"), ("role", "gone-sft-worker"), ("rolebinding", "gone-sft-worker")]
    for kind, name in [("pytorchjob", "gone-train"), ("configmap", "gone-spec"), ("deployment", "gone-chat"),
                       ("service", "gone-chat"), *identity]:
        cp.wait_for(lambda: cp.get(kind, name, ns), timeout=45, message=lambda: op.tail())
    cp.delete("sftrun", "gone", ns)
    cp.delete("chatdeployment", "gone-chat", ns)
    for kind, name in [("pytorchjob", "gone-train"), ("configmap", "gone-spec"), ("deployment", "gone-chat"),
                       ("service", "gone-chat"), ("configmap", "gone-chat-spec"), *identity]:
        cp.wait_for(lambda: cp.get(kind, name, ns) is None, timeout=60,
                    message=f"{kind}/{name} removed by the garbage collector")


def test_runs_carry_no_finalizer_and_delete_while_the_operator_is_down(control_plane, k8s_namespace, run_operator):
    """No kopf finalizer on runs (children go through owner references), so `kubectl delete --wait`
    of a run returns while no operator is running; the operator's periodic look (the sweeper) needs
    none either."""
    cp, ns = control_plane, k8s_namespace
    # A run left by an operator version that used kopf timers carries kopf's finalizer: the
    # operator removes it when it sees the run.
    old = sft("old", launcher="Job")
    old["metadata"]["finalizers"] = ["kopf.zalando.org/KopfFinalizerMarker"]
    cp.apply(old, namespace=ns)
    assert cp.get("sftrun", "old", ns)["metadata"]["finalizers"] == ["kopf.zalando.org/KopfFinalizerMarker"]
    op = run_operator(ns, {"reconcile": {"requeueSeconds": 1, "watchdogIntervalSeconds": 1}})
    cp.wait_for(lambda: not cp.get("sftrun", "old", ns)["metadata"].get("finalizers"), timeout=45,
                message=lambda: f"kopf's old finalizer removed\n{op.tail()}")
    cp.apply([sft("fin", launcher="Job"), chat("fin-chat")], namespace=ns)
    for kind, name in [("job", "fin-train"), ("deployment", "fin-chat")]:
        cp.wait_for(lambda: cp.get(kind, name, ns), timeout=45, message=lambda: op.tail())
    cp.wait_for(lambda: state_of(cp, "sftrun", "fin", ns) == "Pending", timeout=45, message=lambda: op.tail())
    for kind, name in [("sftrun", "fin"), ("chatdeployment", "fin-chat")]:
        assert not cp.get(kind, name, ns)["metadata"].get("finalizers"), cp.get(kind, name, ns)["metadata"]
    op.stop()
    started = time.monotonic()
    cp.kubectl("delete", "sftrun/fin", "chatdeployment/fin-chat", "-n", ns, "--wait=true", "--timeout=30s")
    assert time.monotonic() - started < 30
    assert cp.get("sftrun", "fin", ns) is None and cp.get("chatdeployment", "fin-chat", ns) is None
    for kind, name in [("job", "fin-train"), ("deployment", "fin-chat")]:
        cp.wait_for(lambda: cp.get(kind, name, ns) is None, timeout=60, message=f"{kind}/{name} garbage-collected")


def test_chat_deployment_ready_endpoint_and_rollout(control_plane, k8s_namespace, run_operator):
    cp, ns = control_plane, k8s_namespace
    op = run_operator(ns)
    cp.apply(chat("bot"), namespace=ns)
    dep = cp.wait_for(lambda: cp.get("deployment", "bot", ns), timeout=45, message=lambda: op.tail())

    def make_pods_ready():
        for p in cp.get("pods", namespace=ns)["items"]:
            if p["metadata"].get("labels", {}).get("devops-model.io/run") == "bot" and \
                    (p.get("status") or {}).get("phase") != "Running" and not p["metadata"].get("deletionTimestamp"):
                patch_status(cp, "pod", p["metadata"]["name"], ns, {
                    "phase": "Running", "containerStatuses": [running_container("server")],
                    "conditions": [{"type": "Ready", "status": "True"}, {"type": "ContainersReady", "status": "True"}]})
        return state_of(cp, "chatdeployment", "bot", ns) == "Ready"

    cp.wait_for(make_pods_ready, timeout=60, message=lambda: f"{cp.get('chatdeployment', 'bot', ns).get('status')}\n{op.tail()}")
    obj = cp.get("chatdeployment", "bot", ns)
    assert obj["status"]["endpoint"]["url"] == f"http://bot.{ns}.svc:8000"
    assert obj["status"]["readyReplicas"] == 1
    hash_before = dep["spec"]["template"]["metadata"]["annotations"]["devops-model.io/config-hash"]
    # A new model and more replicas: the Deployment rolls to the new template and scales.
    cp.kubectl("patch", "chatdeployment", "bot", "-n", ns, "--type=merge",
               "-p", json.dumps({"spec": {"model": {"uri": "pvc://models/v2"}, "replicas": 2}}))

    def rolled():
        d = cp.get("deployment", "bot", ns)
        return d["spec"]["replicas"] == 2 and \
            d["spec"]["template"]["metadata"]["annotations"]["devops-model.io/config-hash"] != hash_before and d

    d = cp.wait_for(rolled, timeout=45, message=lambda: op.tail())
    # The builtin pod runs the worker entry point: the new model is in the spec it reads (its ConfigMap).
    assert d["spec"]["template"]["spec"]["containers"][0]["command"][:2] == ["devops-model", "run"]
    assert "pvc://models/v2" in cp.get("configmap", "bot-spec", ns)["data"]["resource.yaml"]
    cp.wait_for(lambda: make_pods_ready() and cp.get("chatdeployment", "bot", ns)["status"]["readyReplicas"] == 2,
                timeout=60, message=lambda: f"{cp.get('chatdeployment', 'bot', ns).get('status')}")
    assert cp.get("chatdeployment", "bot", ns)["status"]["observedGeneration"] == 2


def test_health_and_cli_help(control_plane, k8s_namespace, run_operator):
    op = run_operator(k8s_namespace)
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{op.health_port}/healthz", timeout=5) as r:
        assert r.status == 200
    out = subprocess.run([".venv/bin/devops-model", "operator", "--help"], capture_output=True, text=True, check=True).stdout
    assert "--all-namespaces" in out and "examples:" in out


def test_termination_message_keeps_the_essentials_within_4096_bytes(tmp_path, monkeypatch):
    from devops_workloads.runner import report_final

    log = tmp_path / "termination-log"
    monkeypatch.setenv("DEVOPS_MODEL_TERMINATION_LOG", str(log))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    exams = [{"exam": f"cmmlu/subject_{i}", "shots": 0, "style": "base", "correct": 1, "total": 2, "accuracy": 0.5}
             for i in range(200)]
    report_final({"state": "Succeeded", "summary": "0-shot 50.0%", "artifact": {"uri": "pvc://m/r", "format": "results"},
                  "scores": {"exams": exams, "overall": []}})
    text = log.read_text()
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT
    status = json.loads(text)["status"]
    # Per-exam rows go first: the overall scores (what the gate and the deltas read) stay.
    assert status["summary"] == "0-shot 50.0%" and status["artifact"]["uri"] == "pvc://m/r"
    assert status["scores"] == {"overall": []}


def test_two_replicas_with_peering_one_works_and_the_other_takes_over(control_plane, k8s_namespace, run_operator):
    """Leader election: the chart's peering CRDs and RBAC (peering enabled), two operator processes."""
    from tests.plugins.operator import REPO, render_chart_with

    cp, ns = control_plane, k8s_namespace
    cp.apply_crds([REPO / "charts" / "devops-model" / "crds" / "kopf-peerings.yaml"])
    # The operator here watches one namespace, so kopf peers through a KopfPeering in it: that is
    # the chart's namespaced mode, whose Role (with the kopfpeerings rule) is bound in this namespace.
    docs = render_chart_with(cp, "--set", "scope.mode=namespaced", "--set", "operator.peering.enabled=true")
    role = [d for d in docs if d["kind"] in ("Role", "RoleBinding") and d["metadata"]["name"] == "devops-model"]
    assert any("kopfpeerings" in r["resources"] for d in role if d["kind"] == "Role" for r in d["rules"])
    for d in role:
        d["metadata"]["namespace"] = ns
    cp.apply(role, namespace=ns)
    cp.apply({"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "devops-model"}}, namespace=ns)
    cfg = {"reconcile": {"peering": "devops-model", "peeringLifetimeSeconds": 10}}
    # Random priorities, as in the chart; POD_ID (set by the chart from the pod name) names each
    # replica in the peering object, so the test knows which one the election chose.
    a = run_operator(ns, cfg, env={"POD_ID": "replica-a"})
    b = run_operator(ns, cfg, env={"POD_ID": "replica-b"})

    def peers():
        status = cp.get("kopfpeering", "devops-model", ns).get("status") or {}
        return len(status) == 2 and status

    status = cp.wait_for(peers, timeout=60, message=lambda: f"both replicas in the peering\nA:\n{a.tail(15)}\nB:\n{b.tail(15)}")
    assert set(status) == {"replica-a", "replica-b"}
    leader, follower = (a, b) if status["replica-a"]["priority"] > status["replica-b"]["priority"] else (b, a)
    cp.apply([sft(f"p{i}", launcher="Job") for i in range(3)], namespace=ns)
    for i in range(3):
        cp.wait_for(lambda: state_of(cp, "sftrun", f"p{i}", ns) == "Pending", timeout=45, message=lambda: leader.tail())
    assert "Handler 'reconcile' succeeded" in leader.tail(400) and "Handler 'reconcile'" not in follower.tail(400)
    leader.stop(kill=True)
    cp.apply(sft("after", launcher="Job"), namespace=ns)
    cp.wait_for(lambda: cp.get("job", "after-train", ns), timeout=60,
                message=lambda: f"the follower takes over\n{follower.tail(20)}")
    jobs = [j["metadata"]["name"] for j in cp.get("jobs", namespace=ns)["items"]]
    assert sorted(jobs) == ["after-train", "p0-train", "p1-train", "p2-train"]
