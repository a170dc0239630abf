"""Forged lineage (issue 14, item 1) on a real API server, with the operator running as the chart's
operator ServiceAccount and exactly the chart's RBAC (tests/plugins/operator.py).

    .venv/bin/python -m pytest tests/cluster/test_identity.py -q

The attack that used to work: every workload pod ran as one ServiceAccount allowed to patch the
status of every run, so any pod could set ``victim-sft`` to Succeeded with the artifact
``pvc://attacker/backdoored``, and a ChatDeployment ``fromRun: victim-sft`` rolled it out. Now each
run's pods get their own identity (ServiceAccount + Role with ``resourceNames: [<run>]``), which the
operator creates with the chart's RBAC (the API server's escalation check passes because the operator
holds what it grants), and the chart's ValidatingAdmissionPolicy keeps that identity to
``status.progress`` (RBAC cannot limit a patch to some fields). The tests take the token a pod would get (TokenRequest for the pod's
ServiceAccount) and try: another run's status is a 403, the old shared identity is a 403, the
run's own state/artifact/scores are refused by admission, the worker's own reporting code sends
progress only, and the ChatDeployment that follows the victim
never sees the forged artifact: it serves only what the victim's own pod reported in its
termination message.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from devops_workloads.progress import StatusPatcher

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

API = "devops-model.io/v1alpha1"
FORGED = {"state": "Succeeded", "message": "forged",
          "artifact": {"uri": "pvc://attacker/backdoored", "format": "hf-full"}}


def sft(name):
    return {"apiVersion": API, "kind": "SFTRun", "metadata": {"name": name},
            "spec": {"model": {"uri": "pvc://models/base"}, "data": {"datasets": [{"uri": "pvc://data/sft.jsonl"}]},
                     "training": {"maxSteps": 5}, "launcher": "Job", "output": {"uri": f"pvc://models/{name}"}}}


def evalrun(name):
    return {"apiVersion": API, "kind": "EvalRun", "metadata": {"name": name},
            "spec": {"model": {"uri": "pvc://models/base"}, "exams": {"uri": "pvc://data/exams"}, "shots": [0]}}


def chat_from(name, run):
    return {"apiVersion": API, "kind": "ChatDeployment", "metadata": {"name": name},
            "spec": {"model": {"fromRun": {"kind": "SFTRun", "name": run}}, "engine": {"name": "builtin"}}}


def job_pod(cp, ns, job):
    pods = [p for p in cp.get("pods", namespace=ns)["items"] if p["metadata"].get("labels", {}).get("job-name") == job]
    return pods[0] if pods else None


def forge(cp, kubeconfig, kind, name, ns, status=FORGED):
    """What a compromised pod would do with its token: merge-patch a run's status."""
    return cp.kubectl("patch", kind, name, "-n", ns, "--subresource=status", "--type=merge",
                      "-p", json.dumps({"status": status}), check=False, kubeconfig=kubeconfig)


def pod_token_dir(cp, ns, service_account, tmp_path: Path) -> Path:
    """/var/run/secrets/kubernetes.io/serviceaccount as the kubelet would mount it for the pod."""
    d = tmp_path / f"sa-{service_account}"
    d.mkdir()
    (d / "token").write_text(cp.kubectl("create", "token", service_account, "-n", ns).stdout.strip())
    (d / "ca.crt").write_bytes(Path(cp.ca_file).read_bytes())
    return d


def status_of(cp, kind, name, ns):
    return (cp.get(kind, name, ns) or {}).get("status") or {}


def test_a_pod_cannot_forge_another_runs_outcome_and_the_chat_serves_only_what_the_run_reported(
        control_plane, k8s_namespace, run_operator, tmp_path):
    cp, ns = control_plane, k8s_namespace
    op = run_operator(ns)
    cp.apply([sft("victim-sft"), evalrun("attacker"), chat_from("bot", "victim-sft")], namespace=ns)

    # The operator (chart RBAC) created each run's identity, and the real Job controller made each
    # run's pod with it (the ServiceAccount admission plugin refuses a pod whose account is missing).
    victim_pod = cp.wait_for(lambda: job_pod(cp, ns, "victim-sft-train"), timeout=60, message=lambda: op.tail())
    attacker_pod = cp.wait_for(lambda: job_pod(cp, ns, "attacker-eval"), timeout=60, message=lambda: op.tail())
    assert victim_pod["spec"]["serviceAccountName"] == "victim-sft-sft-worker"
    assert attacker_pod["spec"]["serviceAccountName"] == "attacker-eval-worker"
    role = cp.get("role", "attacker-eval-worker", ns)
    assert role["rules"] == [{"apiGroups": ["devops-model.io"], "resources": ["evalruns/status"],
                              "resourceNames": ["attacker"], "verbs": ["get", "patch"]}]
    assert "Forbidden" not in op.tail(400), f"the chart's RBAC lacks something:\n{op.tail()}"
    cp.wait_for(lambda: status_of(cp, "chatdeployment", "bot", ns).get("state") == "Waiting", timeout=30,
                message=lambda: f"the chat waits for victim-sft: {status_of(cp, 'chatdeployment', 'bot', ns)}")

    # 1. The attacker's pod, with its own token, against the victim: 403 for the status, 403 for reading it.
    attacker = cp.service_account_kubeconfig(ns, "attacker-eval-worker")
    denied = forge(cp, attacker, "sftrun", "victim-sft", ns)
    assert denied.returncode != 0 and "Forbidden" in denied.stderr and "sftruns/status" in denied.stderr, denied.stderr
    read = cp.kubectl("get", "sftrun", "victim-sft", "-n", ns, check=False, kubeconfig=attacker)
    assert read.returncode != 0 and "Forbidden" in read.stderr
    # Another EvalRun's status (same kind, different name) is refused too: resourceNames, not the kind.
    cp.apply(evalrun("other-eval"), namespace=ns)
    cp.wait_for(lambda: cp.get("evalrun", "other-eval", ns), timeout=10, message="other-eval")
    assert "Forbidden" in forge(cp, attacker, "evalrun", "other-eval", ns, {"progress": {"step": 1}}).stderr

    # 2. The old attack path: the shared ServiceAccount every workload pod used to run as. The chart no
    # longer creates or binds it; one left over from an old install (made here by the admin) can do nothing.
    assert cp.get("clusterrole", "devops-model-workload") is None
    shared = cp.service_account_kubeconfig(ns, "devops-model-workload")
    denied = forge(cp, shared, "sftrun", "victim-sft", ns)
    assert denied.returncode != 0 and "Forbidden" in denied.stderr, denied.stderr

    # 3. The worker's own reporting code (StatusPatcher) with the pod's token: its own run's progress
    # goes through; the victim's URL is refused; an outcome in the patch is never sent.
    host, port = cp.server.removeprefix("https://").rsplit(":", 1)
    token_dir = pod_token_dir(cp, ns, "attacker-eval-worker", tmp_path)
    own = StatusPatcher(f"evalruns/{ns}/attacker", host, port, token_dir)
    assert own.patch({"progress": {"step": 3, "totalSteps": 10}, "state": "Succeeded",
                      "scores": {"overall": [{"shots": 0, "style": "base", "correct": 9, "total": 9, "accuracy": 1.0}]}})
    mine = status_of(cp, "evalrun", "attacker", ns)
    assert mine["progress"]["step"] == 3
    assert mine.get("state") != "Succeeded" and not mine.get("scores"), mine
    # The same token without the worker's code (raw PATCH): the chart's admission policy refuses any
    # status field but progress from a run's own identity, so a pod cannot mark its own run done.
    for field, value in [("state", "Succeeded"), ("artifact", FORGED["artifact"]),
                         ("scores", {"overall": [{"shots": 0, "style": "base", "correct": 9, "total": 9, "accuracy": 1.0}]})]:
        refused = forge(cp, attacker, "evalrun", "attacker", ns, {field: value})
        assert refused.returncode != 0 and f"status.{field} is written by the operator only" in refused.stderr, \
            refused.stderr
    assert forge(cp, attacker, "evalrun", "attacker", ns, {"progress": {"step": 4}}).returncode == 0
    assert status_of(cp, "evalrun", "attacker", ns)["progress"]["step"] == 4
    victim_url = StatusPatcher(f"sftruns/{ns}/victim-sft", host, port, token_dir)
    assert victim_url.patch({"progress": {"step": 99}}) is False
    assert "progress" not in status_of(cp, "sftrun", "victim-sft", ns)

    # The forgery never landed: the victim has no artifact, and the chat still waits without a
    # Deployment, pass after pass (requeue every second).
    for _ in range(3):
        cp.wait_for(lambda: status_of(cp, "chatdeployment", "bot", ns).get("state") == "Waiting", timeout=5,
                    message="the chat keeps waiting")
        assert cp.get("deployment", "bot", ns) is None
        assert not status_of(cp, "sftrun", "victim-sft", ns).get("artifact")

    # 4. The only way in: the victim's own pod terminates and the kubelet records its termination
    # message. The operator takes the outcome from there, and the chat serves exactly that artifact.
    artifact = {"uri": "pvc://models/victim-sft/merged", "format": "hf-full"}
    message = json.dumps({"status": {"state": "Succeeded", "artifact": artifact}})
    cp.kubectl("patch", "pod", victim_pod["metadata"]["name"], "-n", ns, "--subresource=status", "--type=merge",
               "-p", json.dumps({"status": {"phase": "Succeeded", "containerStatuses": [
                   {"name": "worker", "image": "img", "imageID": "", "ready": False, "restartCount": 0,
                    "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": message,
                                             "startedAt": "2026-01-01T00:00:00Z",
                                             "finishedAt": "2026-01-01T00:10:00Z"}}}]}}))
    cp.wait_for(lambda: status_of(cp, "sftrun", "victim-sft", ns).get("state") == "Succeeded", timeout=45,
                message=lambda: f"victim-sft Succeeded: {status_of(cp, 'sftrun', 'victim-sft', ns)}\n{op.tail()}")
    assert status_of(cp, "sftrun", "victim-sft", ns)["artifact"]["uri"] == artifact["uri"]
    dep = cp.wait_for(lambda: cp.get("deployment", "bot", ns), timeout=45, message=lambda: op.tail())
    pod = dep["spec"]["template"]["spec"]
    # The built-in server reads its model from the spec ConfigMap (status.resolvedModel), as the worker does.
    served = yaml.safe_load(cp.get("configmap", "bot-spec", ns)["data"]["resource.yaml"])
    assert served["status"]["resolvedModel"] == artifact["uri"]
    assert status_of(cp, "chatdeployment", "bot", ns)["resolvedModel"] == artifact["uri"]
    assert "attacker" not in json.dumps(dep) + json.dumps(cp.get("configmap", "bot-spec", ns))
    assert pod["automountServiceAccountToken"] is False, "chat pods never report: no token"
    assert {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v} == {"models"}
