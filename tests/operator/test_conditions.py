"""Condition logic and status derivation from children and pods (pure, no cluster)."""

from __future__ import annotations

import json

import pytest

from devops_operator import conditions as C
from devops_operator.status import deployment_state, parse_termination_message, workload_state

T0, T1, T2 = "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z", "2026-01-01T00:02:00Z"


def test_new_condition_gets_now():
    conds = C.set_condition(None, "Succeeded", "Unknown", "Pending", "waiting", now=T0, observed_generation=1)
    assert conds == [{"type": "Succeeded", "status": "Unknown", "reason": "Pending", "message": "waiting",
                      "lastTransitionTime": T0, "observedGeneration": 1}]


def test_same_status_keeps_the_transition_time_even_when_reason_changes():
    a = C.set_condition(None, "Running", False, "Pending", "x", now=T0)
    b = C.set_condition(a, "Running", False, "Unschedulable", "0/3 nodes", now=T1)
    assert b[0]["lastTransitionTime"] == T0 and b[0]["reason"] == "Unschedulable"


def test_a_flip_changes_the_transition_time_and_leaves_the_input_alone():
    a = C.set_condition(None, "Running", False, "Pending", now=T0)
    b = C.set_condition(a, "Running", True, "Running", now=T1)
    assert b[0]["lastTransitionTime"] == T1 and a[0]["status"] == "False"


def test_other_conditions_are_kept_in_order():
    a = C.set_condition(None, "ParentReady", True, "Resolved", now=T0)
    a = C.set_condition(a, "Running", False, "Pending", now=T0)
    b = C.set_condition(a, "ParentReady", True, "Resolved", now=T2)
    assert [c["type"] for c in b] == ["ParentReady", "Running"] and b[0]["lastTransitionTime"] == T0


def test_bad_status_is_refused():
    with pytest.raises(ValueError, match="True, False or Unknown"):
        C.set_condition(None, "Ready", "yes", "X", now=T0)


def pod(name="p", role="master", phase="Pending", conditions=None, waiting=None, terminated=None):
    cs = {}
    if waiting:
        cs = {"state": {"waiting": waiting}, "image": "img:1"}
    if terminated:
        cs = {"state": {"terminated": terminated}}
    return {"metadata": {"name": name, "labels": {"devops-model.io/role": role}},
            "status": {"phase": phase, "conditions": conditions or [], "containerStatuses": [cs] if cs else []}}


JOB_RUNNING = {"status": {"active": 1, "startTime": T0}}
JOB_FAILED = {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                         "message": "Job has reached the specified backoff limit"}]}}
JOB_DONE = {"status": {"conditions": [{"type": "Complete", "status": "True"}], "startTime": T0}}
PTJ_DONE = {"status": {"conditions": [{"type": "Created", "status": "True"}, {"type": "Succeeded", "status": "True"}]}}

CASES = [
    ("no child yet", None, [], "Pending", "Pending", True),
    ("unschedulable", JOB_RUNNING, [pod(conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                                     "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."}])],
     "Pending", "Unschedulable", True),
    ("image pull", JOB_RUNNING, [pod(waiting={"reason": "ImagePullBackOff", "message": "Back-off pulling image"})],
     "Pending", "ImagePullBackOff", True),
    ("crash loop", JOB_RUNNING, [pod(phase="Running", waiting={"reason": "CrashLoopBackOff"})], "Running", "CrashLoopBackOff", True),
    ("running", JOB_RUNNING, [pod(phase="Running")], "Running", "Running", True),
    ("oom", JOB_FAILED, [pod(phase="Failed", terminated={"exitCode": 137, "reason": "OOMKilled"})], "Failed", "OOMKilled", True),
    ("bad data", JOB_FAILED, [pod(phase="Failed", terminated={"exitCode": 3, "reason": "Error", "message": json.dumps(
        {"status": {"state": "Failed", "reason": "BadData", "message": "data.datasets[0]: sha1 mismatch"}})})],
     "Failed", "BadData", False),
    ("nccl", JOB_FAILED, [pod(phase="Failed", terminated={"exitCode": 1, "reason": "Error", "message":
        "[rank3]: Watchdog caught collective operation timeout: WorkNCCL(SeqNum=1, OpType=ALLREDUCE) ran for 600000 milliseconds before timing out"})],
     "Failed", "NCCLTimeout", True),
    ("preempted", JOB_FAILED, [pod(phase="Failed", terminated={"exitCode": 143, "reason": "Error"})], "Failed", "Preempted", True),
    ("job done", JOB_DONE, [pod(phase="Succeeded", terminated={"exitCode": 0, "reason": "Completed", "message": json.dumps(
        {"status": {"artifact": {"uri": "pvc://m/x", "format": "hf-lora"}, "summary": "ok"}})})], "Succeeded", "Succeeded", True),
    ("pytorchjob done", PTJ_DONE, [], "Succeeded", "Succeeded", True),
    # Kueue: suspended until admitted -> Queued, whatever the pods say (checked before them).
    ("job queued", {"spec": {"suspend": True}, "status": {}}, [], "Pending", "Queued", True),
    ("trainjob queued", {"kind": "TrainJob", "spec": {"suspend": True}}, [], "Pending", "Queued", True),
    ("pytorchjob queued", {"spec": {"runPolicy": {"suspend": True}}}, [pod(conditions=[
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/4 nodes"}])],
     "Pending", "Queued", True),
    ("preempted by kueue, pods stopping", {"spec": {"suspend": True}, "status": {"active": 1, "startTime": T0}},
     [pod(phase="Running")], "Pending", "Queued", True),
    ("suspended condition", {"status": {"conditions": [{"type": "Suspended", "status": "True", "reason": "JobSuspended"}]}},
     [], "Pending", "Queued", True),
    ("resumed after admission", {"spec": {"suspend": False}, "status": {"active": 1, "conditions": [
        {"type": "Suspended", "status": "False", "reason": "JobResumed"}]}}, [pod(phase="Running")], "Running", "Running", True),
    ("finished before a suspension", {"spec": {"suspend": True}, **JOB_DONE}, [], "Succeeded", "Succeeded", True),
]


@pytest.mark.parametrize("what,child,pods,phase,reason,retryable", CASES, ids=[c[0] for c in CASES])
def test_workload_state(what, child, pods, phase, reason, retryable):
    st = workload_state(child, pods)
    assert (st.phase, st.reason, st.retryable) == (phase, reason, retryable), st.message


def test_queued_names_the_queue_and_never_waits_for_the_launcher():
    child = {"metadata": {"labels": {"kueue.x-k8s.io/queue-name": "team-a"}}, "spec": {"suspend": True}}
    st = workload_state(child, [pod(phase="Running")])
    assert st.reason == "Queued" and "team-a" in st.message and "launcher" not in st.message
    assert "1 pod(s) of the last admission stopping" in st.message


def test_unschedulable_carries_the_schedulers_message():
    st = workload_state(JOB_RUNNING, CASES[1][2])
    assert "Insufficient nvidia.com/gpu" in st.message


def test_result_comes_from_the_masters_termination_message():
    worker = pod("w", role="worker", phase="Succeeded", terminated={"exitCode": 0, "message": "{}"})
    master = pod("m", phase="Succeeded", terminated={"exitCode": 0, "message": json.dumps({"status": {"summary": "s"}})})
    assert workload_state(JOB_DONE, [worker, master]).result == {"summary": "s"}


def test_a_log_tail_fallback_becomes_the_message():
    fields, text = parse_termination_message("Traceback ...\nRuntimeError: CUDA error: out of memory\n")
    assert fields == {} and text == "RuntimeError: CUDA error: out of memory"


def test_deployment_states():
    dep = {"metadata": {"generation": 2}, "status": {"observedGeneration": 2, "readyReplicas": 2, "updatedReplicas": 2}}
    assert deployment_state(dep, [], 2).reason == "Available"
    rolling = {"metadata": {"generation": 3}, "status": {"observedGeneration": 2, "readyReplicas": 2, "updatedReplicas": 2}}
    assert deployment_state(rolling, [], 2).reason == "Progressing"
    loading = {"metadata": {"generation": 1}, "status": {"observedGeneration": 1}}
    assert deployment_state(loading, [], 1).reason == "Deploying"
    pulling = [pod(waiting={"reason": "ErrImagePull", "message": "not found"})]
    st = deployment_state(loading, pulling, 1)
    assert (st.ready, st.reason) == (False, "ImagePullBackOff")


def test_a_vllm_pod_whose_model_check_fails_says_so():
    """The init container of a vLLM/TGI pod (the parent artifact's digests) fails before the engine starts:
    the ChatDeployment shows its message, not "loading the model"."""
    loading = {"metadata": {"generation": 1}, "status": {"observedGeneration": 1}}
    msg = json.dumps({"status": {"state": "Failed", "reason": "ArtifactMismatch", "message":
                                 "QuantizeRun/devops-int4's artifact pvc://models/devops-int4: model.safetensors was changed"}})
    p = pod(phase="Pending")
    p["status"]["initContainerStatuses"] = [{"name": "verify-model", "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                                             "lastState": {"terminated": {"exitCode": 3, "message": msg}}}]
    st = deployment_state(loading, [p], 1)
    assert (st.ready, st.reason) == (False, "CrashLoopBackOff")
    assert st.message.endswith("keeps crashing (QuantizeRun/devops-int4's artifact pvc://models/devops-int4: "
                               "model.safetensors was changed)"), st.message
