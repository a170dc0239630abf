"""One reconcile pass against an in-memory API (no cluster): the decisions that the control-plane
tests cannot provoke because the API server refuses the input (a spec changed after start), plus
the result rules (no artifact, worker-patched results, restart bookkeeping)."""

from __future__ import annotations

import copy
import json

from devops_operator.config import OperatorConfig
from devops_operator.reconcile import reconcile

NOW = "2026-01-01T01:00:00Z"


class FakeKube:
    """The few calls reconcile makes, on dicts keyed by (kind, namespace, name)."""

    def __init__(self):
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.deleted: list[str] = []

    def get(self, api_version, kind, ns, name):
        obj = self.objects.get((kind, ns, name))
        return copy.deepcopy(obj) if obj else None

    def list(self, api_version, kind, ns, selector):
        want = dict(kv.split("=", 1) for kv in selector.split(",")) if selector else {}
        return [copy.deepcopy(o) for (k, n, _), o in self.objects.items() if k == kind and n == ns
                and all(o["metadata"].get("labels", {}).get(a) == b for a, b in want.items())]

    def create_if_absent(self, manifest):
        key = (manifest["kind"], manifest["metadata"]["namespace"], manifest["metadata"]["name"])
        if key in self.objects:
            return copy.deepcopy(self.objects[key]), False
        self.objects[key] = copy.deepcopy(manifest)
        return copy.deepcopy(manifest), True

    def apply(self, manifest):
        self.objects[(manifest["kind"], manifest["metadata"]["namespace"], manifest["metadata"]["name"])] = manifest
        return manifest

    def delete(self, api_version, kind, ns, name):
        self.deleted.append(f"{kind}/{name}")
        return self.objects.pop((kind, ns, name), None) is not None

    def patch_status(self, api_version, kind, ns, name, status):
        self.objects[(kind, ns, name)].setdefault("status", {}).update(copy.deepcopy(status))


def sft(status=None, generation=1):
    return {"apiVersion": "devops-model.io/v1alpha1", "kind": "SFTRun",
            "metadata": {"name": "s", "namespace": "ns", "uid": "u1", "generation": generation},
            "spec": {"model": {"uri": "pvc://m/base"}, "data": {"datasets": [{"uri": "pvc://d/x.jsonl"}]},
                     "training": {"maxSteps": 5}, "launcher": "Job", "output": {"uri": "pvc://m/out"}},
            "status": status or {}}


def test_first_pass_creates_the_children_and_says_pending():
    kube = FakeKube()
    out = reconcile(sft(), kube, OperatorConfig(), now=NOW)
    assert {k[0] for k in kube.objects} == {"ConfigMap", "ServiceAccount", "Role", "RoleBinding", "Job"}
    # The run's own identity exists before its Job (a pod cannot start without its ServiceAccount).
    assert list(kube.objects).index(("ServiceAccount", "ns", "s-sft-worker")) < list(kube.objects).index(("Job", "ns", "s-train"))
    assert kube.objects[("Job", "ns", "s-train")]["spec"]["template"]["spec"]["serviceAccountName"] == "s-sft-worker"
    assert out.status["state"] == "Pending" and out.status["observedGeneration"] == 1
    assert ("Normal", "Created", "created Job s-train") in out.events


def test_a_starting_run_is_looked_at_soon_and_a_long_queued_one_at_the_watchdog_interval():
    kube, config = FakeKube(), OperatorConfig()
    first = reconcile(sft(), kube, config, now=NOW)
    assert first.requeue == config.reconcile.requeue_seconds  # just created: pod news within seconds
    job = kube.objects[("Job", "ns", "s-train")]
    job["metadata"]["creationTimestamp"] = "2026-01-01T00:55:00Z"  # 5 min ago: still the quick looks
    again = reconcile(sft(first.status), kube, config, now=NOW)
    assert again.status["state"] == "Pending" and again.requeue == config.reconcile.requeue_seconds
    job["metadata"]["creationTimestamp"] = "2026-01-01T00:30:00Z"  # 30 min: queued, no need to poll
    later = reconcile(sft(again.status), kube, config, now=NOW)
    assert later.status["state"] == "Pending"
    assert later.requeue == config.reconcile.watchdog_interval_seconds > config.reconcile.requeue_seconds


def test_a_kueue_suspended_run_is_queued_even_with_pods():
    """Kueue suspends the child until its queue admits it (and again on preemption, pods still there):
    the run is Pending with the Queued reason, not "waiting for the launcher to create pods"."""
    kube, config = FakeKube(), OperatorConfig()
    first = reconcile(sft(), kube, config, now=NOW)
    job = kube.objects[("Job", "ns", "s-train")]
    job["spec"]["suspend"] = True
    kube.objects[("Pod", "ns", "s-train-x")] = {
        "metadata": {"name": "s-train-x", "labels": job["spec"]["template"]["metadata"]["labels"],
                     "ownerReferences": [{"uid": job["metadata"].get("uid")}]},
        "status": {"phase": "Running"}}
    out = reconcile(sft(first.status), kube, config, now=NOW)
    assert out.status["state"] == "Pending"
    running = next(c for c in out.status["conditions"] if c["type"] == "Running")
    assert (running["status"], running["reason"]) == ("False", "Queued") and "Kueue" in running["message"]
    assert "launcher" not in out.status["message"]


class OldTrainerKube(FakeKube):
    """An API server whose TrainJob CRD predates Trainer v2.2: it prunes spec.runtimePatches."""

    def create_if_absent(self, manifest):
        if manifest["kind"] == "TrainJob":
            manifest = copy.deepcopy(manifest)
            manifest["spec"].pop("runtimePatches", None)
        return super().create_if_absent(manifest)


def trainjob_pass(kube):
    """One reconcile pass of an SFTRun launched as a TrainJob."""
    body = sft()
    body["spec"]["launcher"] = "TrainJob"
    return reconcile(body, kube, OperatorConfig(), now=NOW)


def test_a_trainjob_whose_runtime_patch_the_crd_drops_is_deleted_and_the_run_fails_saying_why():
    kube = OldTrainerKube()
    out = trainjob_pass(kube)
    assert out.status["state"] == "Failed"
    cond = next(c for c in out.status["conditions"] if c["type"] == "Succeeded")
    assert cond["reason"] == "InvalidSpec"
    assert "spec.runtimePatches" in cond["message"] and "Kubeflow Trainer v2.2 or later" in cond["message"]
    assert kube.deleted == ["TrainJob/s-train"] and ("TrainJob", "ns", "s-train") not in kube.objects


def test_a_trainjob_child_carries_the_runtime_patch():
    kube = FakeKube()
    out = trainjob_pass(kube)
    assert out.status["state"] == "Pending"
    (patch,) = kube.objects[("TrainJob", "ns", "s-train")]["spec"]["runtimePatches"]
    assert patch["manager"] == "devops-model-operator"


def test_a_spec_change_after_start_is_reported_and_not_adopted():
    kube = FakeKube()
    out = reconcile(sft({"startTime": NOW, "observedGeneration": 1, "state": "Running"}, generation=2), kube,
                    OperatorConfig(), now=NOW)
    cond = next(c for c in out.status["conditions"] if c["type"] == "SpecChanged")
    assert cond["status"] == "True" and cond["reason"] == "SpecChangedAfterStart" and "new run" in cond["message"]
    assert "observedGeneration" not in out.status
    assert any(e[1] == "SpecChangedAfterStart" and e[0] == "Warning" for e in out.events)


def _complete(kube, message=""):
    job = kube.objects[("Job", "ns", "s-train")]
    job["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    kube.objects[("Pod", "ns", "s-train-x")] = {
        "metadata": {"name": "s-train-x", "labels": job["spec"]["template"]["metadata"]["labels"]},
        "status": {"phase": "Succeeded", "containerStatuses": [
            {"state": {"terminated": {"exitCode": 0, "message": message}}}]}}


def test_success_without_any_artifact_fails_with_no_artifact():
    kube = FakeKube()
    reconcile(sft(), kube, OperatorConfig(), now=NOW)
    _complete(kube)
    out = reconcile(sft({"observedGeneration": 1}), kube, OperatorConfig(), now=NOW)
    assert out.status["state"] == "Failed"
    assert next(c for c in out.status["conditions"] if c["type"] == "Succeeded")["reason"] == "NoArtifact"


def test_an_artifact_patched_into_the_status_never_counts():
    """Only the run's own pod's termination message carries the outcome: a status patch (which any
    identity with patch rights could forge) is removed, and without a message the run fails."""
    kube = FakeKube()
    reconcile(sft(), kube, OperatorConfig(), now=NOW)
    _complete(kube, message="")
    forged = {"uri": "pvc://attacker/backdoored", "format": "hf-full"}
    out = reconcile(sft({"observedGeneration": 1, "artifact": forged}), kube, OperatorConfig(), now=NOW)
    assert out.status["state"] == "Failed" and out.status["artifact"] is None
    assert next(c for c in out.status["conditions"] if c["type"] == "Succeeded")["reason"] == "NoArtifact"


def test_the_outcome_comes_from_the_termination_message():
    kube = FakeKube()
    reconcile(sft(), kube, OperatorConfig(), now=NOW)
    art = {"uri": "pvc://m/out/final", "format": "hf-lora"}
    _complete(kube, message=json.dumps({"status": {"state": "Succeeded", "artifact": art}}))
    out = reconcile(sft({"observedGeneration": 1, "artifact": {"uri": "pvc://attacker/x"}}), kube, OperatorConfig(), now=NOW)
    assert out.status["state"] == "Succeeded" and out.status["artifact"] == art


def test_a_pod_that_the_child_does_not_own_cannot_report_the_outcome():
    def finish(owned: bool):
        kube = FakeKube()
        reconcile(sft(), kube, OperatorConfig(), now=NOW)
        art = {"uri": "pvc://m/out/final", "format": "hf-full"}
        _complete(kube, message=json.dumps({"status": {"state": "Succeeded", "artifact": art}}))
        kube.objects[("Job", "ns", "s-train")]["metadata"]["uid"] = "job-uid"
        if owned:
            kube.objects[("Pod", "ns", "s-train-x")]["metadata"]["ownerReferences"] = [
                {"apiVersion": "batch/v1", "kind": "Job", "name": "s-train", "uid": "job-uid", "controller": True}]
        return reconcile(sft({"observedGeneration": 1}), kube, OperatorConfig(), now=NOW)

    # A pod with the run's labels that the child does not own (anyone who may create pods could
    # make one) is not the run's pod: its termination message is not the run's outcome.
    assert finish(owned=False).status["state"] == "Failed"
    assert finish(owned=True).status["state"] == "Succeeded"


def test_terminal_runs_are_left_alone():
    kube = FakeKube()
    out = reconcile(sft({"state": "Succeeded", "observedGeneration": 1}), kube, OperatorConfig(), now=NOW)
    assert kube.objects == {} and out.requeue is None


def evalrun(name, status=None, baseline=None):
    spec = {"model": {"uri": "pvc://m/base"}, "exams": {"uri": "pvc://d/exams"}, "shots": [0]}
    if baseline:
        spec["baseline"] = {"evalRun": baseline}
    return {"apiVersion": "devops-model.io/v1alpha1", "kind": "EvalRun",
            "metadata": {"name": name, "namespace": "ns", "uid": f"u-{name}", "generation": 1},
            "spec": spec, "status": status or {}}


def _finish_eval(kube, name, accuracy, baseline=None):
    """Run the EvalRun's passes until its Job completed with these scores; returns the last outcome."""
    import json

    first = reconcile(evalrun(name, baseline=baseline), kube, OperatorConfig(), now=NOW)
    job = next(o for (k, _, n), o in kube.objects.items() if k == "Job" and n.startswith(name))
    job["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    overall = [{"shots": 0, "style": "base", "correct": int(40 * accuracy), "total": 40, "accuracy": accuracy}]
    msg = json.dumps({"status": {"state": "Succeeded", "scores": {"overall": overall, "exams": []},
                                 "artifact": {"uri": f"pvc://r/{name}", "format": "eval-results"}}})
    kube.objects[("Pod", "ns", f"{name}-x")] = {
        "metadata": {"name": f"{name}-x", "labels": job["spec"]["template"]["metadata"]["labels"]},
        "status": {"phase": "Succeeded", "containerStatuses": [{"state": {"terminated": {"exitCode": 0, "message": msg}}}]}}
    body = evalrun(name, {**first.status, "observedGeneration": 1}, baseline=baseline)
    out = reconcile(body, kube, OperatorConfig(), now=NOW)
    body["status"].update(out.status)
    kube.objects[("EvalRun", "ns", name)] = body
    return out


def test_eval_baseline_delta_when_the_baseline_finished_first():
    kube = FakeKube()
    assert _finish_eval(kube, "base", 0.25).status["state"] == "Succeeded"
    out = _finish_eval(kube, "tuned", 0.35, baseline="base")
    assert out.status["state"] == "Succeeded"
    assert out.status["scores"]["overall"][0]["delta"] == 10.0
    assert out.status["summary"] == "0-shot 35.0% (+10.0)"
    succeeded = next(c for c in out.status["conditions"] if c["type"] == "Succeeded")
    assert succeeded["message"] == out.status["message"] == "0-shot 35.0% (+10.0)"


def test_eval_baseline_delta_when_the_baseline_finished_last():
    kube = FakeKube()
    tuned = _finish_eval(kube, "tuned", 0.35, baseline="base")
    assert tuned.status["state"] == "Succeeded" and tuned.status["scores"]["overall"][0].get("delta") is None
    _finish_eval(kube, "base", 0.30)  # the baseline's success fills in the run that compares with it
    st = kube.objects[("EvalRun", "ns", "tuned")]["status"]
    assert st["scores"]["overall"][0]["delta"] == 5.0 and st["summary"] == "0-shot 35.0% (+5.0)"


def test_an_image_outside_the_allow_list_fails_the_run_and_creates_nothing():
    config = OperatorConfig.model_validate({"images": {"allowed": ["registry.example.com/ml/*"]}})
    run = sft()
    run["spec"]["image"] = "docker.io/attacker/miner:latest"
    kube = FakeKube()
    out = reconcile(run, kube, config, now=NOW)
    assert kube.objects == {}
    assert out.status["state"] == "Failed"
    cond = next(c for c in out.status["conditions"] if c["type"] == "Succeeded")
    assert cond["status"] == "False" and cond["reason"] == "InvalidSpec"
    assert cond["message"].startswith("spec.image: image 'docker.io/attacker/miner:latest' is not allowed by the "
                                      "operator's configuration (images.allowed: registry.example.com/ml/*)")
    # a matching image and the configured default are allowed
    run["spec"]["image"] = "registry.example.com/ml/workload:1.2"
    kube = FakeKube()
    assert reconcile(run, kube, config, now=NOW).status["state"] == "Pending"
    assert kube.objects[("Job", "ns", "s-train")]["spec"]["template"]["spec"]["containers"][0]["image"] == run["spec"]["image"]
    del run["spec"]["image"]
    assert reconcile(run, FakeKube(), config, now=NOW).status["state"] == "Pending"
    # no allow-list: any image (the documented default)
    run["spec"]["image"] = "docker.io/attacker/miner:latest"
    assert reconcile(run, FakeKube(), OperatorConfig(), now=NOW).status["state"] == "Pending"


def test_a_chat_engine_image_outside_the_allow_list_is_invalid_spec():
    config = OperatorConfig.model_validate({"images": {"allowed": ["registry.example.com/*"]}})
    chat = {"apiVersion": "devops-model.io/v1alpha1", "kind": "ChatDeployment",
            "metadata": {"name": "c", "namespace": "ns", "uid": "u2", "generation": 1},
            "spec": {"model": {"uri": "pvc://m/base"}, "engine": {"name": "builtin", "image": "evil.io/srv:1"}}}
    kube = FakeKube()
    out = reconcile(chat, kube, config, now=NOW)
    assert kube.objects == {} and out.status["state"] == "Failed"
    cond = next(c for c in out.status["conditions"] if c["type"] == "Ready")
    assert cond["reason"] == "InvalidSpec" and cond["message"].startswith("spec.engine.image: image 'evil.io/srv:1' is not allowed")
