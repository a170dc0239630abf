"""The pure builders: golden manifests for every kind and launcher, and properties every child
must have (restricted Pod Security Standard, names within 63 characters, labels, owner references).

    .venv/bin/python -m pytest tests/operator/test_builders.py -q                    # compare
    .venv/bin/python -m pytest tests/operator/test_builders.py -q --update-golden    # rewrite output.yaml

Each case is tests/golden/builders/<case>/input.yaml: ``resource`` plus the optional ``config``
(operator configuration), ``resolvedModel``, ``parent``, ``artifactFormat``, ``lineage`` and
``attempt`` that the reconciler would pass; output.yaml is what ``render_children`` returns.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from devops_model.api import KINDS
from devops_model.api.resource import parse_resource
from devops_model.yamlio import dump_all
from devops_operator.builders import render_children
from devops_operator.config import OperatorConfig
from devops_operator.naming import child_name

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "builders"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "input.yaml").exists())


def render_case(case: str) -> list[dict]:
    spec = yaml.safe_load((GOLDEN / case / "input.yaml").read_text())
    # The builders cope with any name (hash cut), also one longer than the API now allows
    # (long-name-restart): validate the spec, but not the name rules of parse_resource.
    res = KINDS[spec["resource"]["kind"]].model.model_validate(spec["resource"])
    config = OperatorConfig.model_validate(spec.get("config") or {})
    return render_children(res, config, resolved_model=spec.get("resolvedModel"), parent=spec.get("parent"),
                           artifact_format=spec.get("artifactFormat"), lineage=spec.get("lineage"),
                           attempt=spec.get("attempt", 0))


@pytest.mark.parametrize("case", CASES)
def test_golden(case, request):
    out = dump_all(render_case(case))
    path = GOLDEN / case / "output.yaml"
    if request.config.getoption("--update-golden") or not path.exists():
        path.write_text(out)
        if not request.config.getoption("--update-golden"):
            pytest.fail(f"{path} did not exist; written now, review and commit it")
    assert out == path.read_text(), f"{case}: rendered manifests differ from {path} (run with --update-golden to accept)"


def test_render_is_deterministic():
    for case in CASES:
        assert dump_all(render_case(case)) == dump_all(render_case(case))


def _pod_specs(obj: dict) -> list[dict]:
    kind = obj["kind"]
    if kind == "PyTorchJob":
        return [r["template"]["spec"] for r in obj["spec"]["pytorchReplicaSpecs"].values()]
    if kind in ("Job", "Deployment"):
        return [obj["spec"]["template"]["spec"]]
    return []


ALL_CHILDREN = [(case, child) for case in CASES for child in render_case(case)]


@pytest.mark.parametrize("case,child", ALL_CHILDREN, ids=[f"{c}-{o['kind']}" for c, o in ALL_CHILDREN])
def test_every_child_is_labelled_owned_and_named_within_63(case, child):
    meta = child["metadata"]
    assert len(meta["name"]) <= 63
    for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/managed-by",
                "devops-model.io/run", "devops-model.io/kind", "devops-model.io/stage"):
        assert key in meta["labels"], f"{meta['name']} lacks label {key}"
    (owner,) = meta["ownerReferences"]
    assert owner["controller"] is True and owner["uid"]


@pytest.mark.parametrize("case,child", [(c, o) for c, o in ALL_CHILDREN if _pod_specs(o)],
                         ids=[f"{c}-{o['kind']}" for c, o in ALL_CHILDREN if _pod_specs(o)])
def test_pods_meet_the_restricted_pod_security_standard(case, child):
    for pod in _pod_specs(child):
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["seccompProfile"]["type"] == "RuntimeDefault"
        mounts = set()
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert sc["readOnlyRootFilesystem"] is True
            mounts |= {m["mountPath"] for m in c["volumeMounts"]}
        # A read-only root needs writable scratch and cache.
        assert {"/tmp", "/var/cache/devops-model"} <= mounts
        assert not any("hostPath" in v for v in pod["volumes"])


def test_multinode_pytorchjob_has_master_workers_and_torchrun():
    cm, job = render_case("sft-pytorchjob-multinode")
    assert job["kind"] == "PyTorchJob" and job["spec"]["nprocPerNode"] == "8"
    reps = job["spec"]["pytorchReplicaSpecs"]
    assert reps["Master"]["replicas"] == 1 and reps["Worker"]["replicas"] == 1
    c = reps["Master"]["template"]["spec"]["containers"][0]
    assert c["command"][:2] == ["torchrun", "--nproc-per-node=8"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/mnt/storage/data", "/mnt/storage/models", "/dev/shm", "/etc/devops-model"} <= mounts
    assert c["envFrom"] == [{"secretRef": {"name": "hf-token"}}]
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    # The worker reads the resolved parent model from the ConfigMap.
    doc = yaml.safe_load(cm["data"]["resource.yaml"])
    assert doc["status"]["resolvedModel"] == "pvc://models/devops-pt/final"
    assert yaml.safe_load(cm["data"]["parent.yaml"])["status"]["artifact"]["uri"] == "pvc://models/devops-pt/final"


def test_vllm_gets_gptq_and_tensor_parallel_flags():
    _, deploy, svc, netpol = render_case("chat-vllm-gptq")
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--quantization") + 1] == "gptq"
    assert args[args.index("--tensor-parallel-size") + 1] == "2"
    assert args[args.index("--model") + 1] == "/mnt/storage/models/devops-int4"
    assert svc["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]
    assert netpol["kind"] == "NetworkPolicy"


def test_builtin_engine_command_matches_docs_serving():
    _, deploy, _ = render_case("chat-builtin-cpu")
    c = deploy["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["devops-model", "serve"]
    a = c["args"]
    assert a[a.index("--host") + 1] == "0.0.0.0" and a[a.index("--port") + 1] == "8080"
    assert "--no-ui" in a and a[a.index("--lineage-file") + 1] == "/etc/devops-model/lineage.json"
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 1800


def test_a_new_model_changes_the_pod_template_so_the_deployment_rolls():
    spec = yaml.safe_load((GOLDEN / "chat-builtin-cpu" / "input.yaml").read_text())["resource"]
    a = render_children(parse_resource(spec))[1]
    spec["spec"]["model"]["uri"] = "pvc://models/tiny-int4-v2"
    b = render_children(parse_resource(spec))[1]
    assert a["spec"]["template"]["metadata"]["annotations"] != b["spec"]["template"]["metadata"]["annotations"]


@pytest.mark.parametrize("base,suffix", [("x", "train"), ("a" * 63, "train"), ("a" * 58, "spec"), ("b" * 70, "")])
def test_child_names_are_cut_to_63_with_a_hash(base, suffix):
    name = child_name(base, suffix)
    assert len(name) <= 63
    assert name.endswith(suffix)
    assert child_name(base, suffix) == name
    if len(f"{base}-{suffix}") > 63:
        assert child_name(base[:-1] + "z", suffix) != name


def test_restart_attempts_get_their_own_child():
    cm, job = render_case("long-name-restart")
    assert job["metadata"]["name"].endswith("-train-r2") and len(job["metadata"]["name"]) <= 63
    assert job["metadata"]["labels"]["devops-model.io/attempt"] == "2"
    env = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["DEVOPS_MODEL_ATTEMPT"] == "2"
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][:2] == ["torchrun", "--standalone"]


def test_render_without_a_cluster_marks_an_unresolved_from_run():
    spec = yaml.safe_load((GOLDEN / "chat-vllm-gptq" / "input.yaml").read_text())["resource"]
    spec["metadata"].pop("uid")
    _, deploy, *_ = render_children(parse_resource(spec))
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "QuantizeRun/devops-int4" in args[args.index("--model") + 1]
    assert "ownerReferences" not in deploy["metadata"]
