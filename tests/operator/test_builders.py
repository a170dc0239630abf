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


def render_case_resource(case: str):
    spec = yaml.safe_load((GOLDEN / case / "input.yaml").read_text())
    # The builders cope with any name (hash cut), also one longer than the API now allows
    # (long-name-restart): validate the spec, but not the name rules of parse_resource.
    return KINDS[spec["resource"]["kind"]].model.model_validate(spec["resource"])


def render_case(case: str) -> list[dict]:
    spec = yaml.safe_load((GOLDEN / case / "input.yaml").read_text())
    res = render_case_resource(case)
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
    if kind == "TrainJob":  # the operator's runtime patch of the runtime's pod template (Trainer v2.2+)
        return [job["template"]["spec"]["template"]["spec"] for patch in obj["spec"]["runtimePatches"]
                for job in patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]]
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
    cm, *_, job = render_case("sft-pytorchjob-multinode")
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


def test_a_trainjob_gets_the_credentials_secret_as_optional_env_entries():
    """Trainer's spec.trainer has env but no envFrom: the Secret's keys that the sources read come one by
    one, optional (a Secret with only HF_TOKEN must not keep the pods from starting)."""
    *_, job = render_case("sft-trainjob")
    env = {e["name"]: e for e in job["spec"]["trainer"]["env"]}
    for key in ("HF_TOKEN", "MODELSCOPE_API_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "modelscope-token", "key": key, "optional": True}
    assert "value" not in env["HF_TOKEN"]


def test_vllm_gets_tensor_parallel_flags():
    _, deploy, svc, netpol = render_case("chat-vllm-gptq")
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--tensor-parallel-size") + 1] == "2"
    assert args[args.index("--model") + 1] == "/mnt/storage/models/devops-int4"
    assert svc["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]
    assert netpol["kind"] == "NetworkPolicy"


def test_builtin_engine_runs_the_worker_entry_point_without_a_token():
    cm, deploy, _ = render_case("chat-builtin-cpu")
    pod = deploy["spec"]["template"]["spec"]
    c = pod["containers"][0]
    # The same entry point as every other pod: the worker reads the spec and materialises the model.
    assert c["command"] == ["devops-model", "run", "-f", "/etc/devops-model/resource.yaml"] and "args" not in c
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["DEVOPS_MODEL_SERVE_HOST"] == "0.0.0.0" and env["DEVOPS_MODEL_SERVE_PORT"] == "8080"
    assert {"resource.yaml", "lineage.json"} <= set(cm["data"])
    # Chat pods never report to the API server: no token, not the workloads' ServiceAccount.
    assert pod["automountServiceAccountToken"] is False and pod["serviceAccountName"] == "default"
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 1800


@pytest.mark.parametrize("engine,key_env", [("vllm", "VLLM_API_KEY"), ("tgi", "API_KEY"), ("builtin", "DEVOPS_MODEL_API_KEY")])
def test_each_engine_gets_the_api_key_where_it_reads_it(engine, key_env):
    from devops_model.engines import ENGINES

    spec = {"model": {"uri": "pvc://models/m"}, "engine": {"name": engine},
            "auth": {"apiKeySecret": {"name": "s", "key": "k"}}}
    if engine != "builtin":
        spec["resources"] = {"gpusPerNode": 1}
    chat = parse_resource({"apiVersion": "devops-model.io/v1alpha1", "kind": "ChatDeployment",
                           "metadata": {"name": "c", "namespace": "ns"}, "spec": spec})
    c = render_children(chat)[1]["spec"]["template"]["spec"]["containers"][0]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "valueFrom" in e}
    assert refs == {key_env: {"name": "s", "key": "k"}} and ENGINES[engine].api_key_env == (key_env,)


def test_vllm_chooses_its_gptq_kernel_and_tgi_is_told_the_format():
    from devops_model.engines import ENGINES

    _, deploy, *_ = render_case("chat-vllm-gptq")
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--quantization" not in args  # vLLM picks gptq_marlin from quantize_config.json
    spec = parse_resource({"apiVersion": "devops-model.io/v1alpha1", "kind": "ChatDeployment",
                           "metadata": {"name": "c"}, "spec": {"model": {"uri": "pvc://m/x"}, "engine": {"name": "tgi"},
                                                               "resources": {"gpusPerNode": 1}}}).spec
    tgi = ENGINES["tgi"].args(spec, "/m", "c", "gptq-int4")
    assert tgi[tgi.index("--quantize") + 1] == "gptq"


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
    cm, *_, job = render_case("long-name-restart")
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


# -- each run's own identity ---------------------------------------------------------------------------

RUN_CASES = [c for c in CASES if not c.startswith("chat")]


@pytest.mark.parametrize("case", RUN_CASES)
def test_a_runs_pods_run_as_its_own_identity_that_may_patch_only_its_status(case):
    cm, sa, role, binding, workload = render_case(case)
    run = cm["metadata"]["ownerReferences"][0]
    assert [sa["kind"], role["kind"], binding["kind"]] == ["ServiceAccount", "Role", "RoleBinding"]
    name = sa["metadata"]["name"]
    assert role["metadata"]["name"] == binding["metadata"]["name"] == name and len(name) <= 63
    plural = {"PretrainRun": "pretrainruns", "SFTRun": "sftruns", "EvalRun": "evalruns",
              "QuantizeRun": "quantizeruns"}[run["kind"]]
    assert role["rules"] == [{"apiGroups": ["devops-model.io"], "resources": [f"{plural}/status"],
                              "resourceNames": [run["name"]], "verbs": ["get", "patch"]}]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": cm["metadata"]["namespace"]}]
    for obj in (sa, role, binding):
        assert obj["metadata"]["ownerReferences"] == [run], "garbage-collected with the run"
    pods = _pod_specs(workload)
    assert pods
    for pod in pods:
        assert pod["serviceAccountName"] == name
        assert pod.get("automountServiceAccountToken", True) is True, "the worker reports progress with it"


def test_two_kinds_with_one_run_name_get_different_identities():
    from devops_operator.builders import identity_name

    names = set()
    for kind in ("PretrainRun", "SFTRun", "EvalRun", "QuantizeRun"):
        res = parse_resource({"apiVersion": "devops-model.io/v1alpha1", "kind": kind, "metadata": {"name": "x"},
                              "spec": _minimal_spec(kind)})
        names.add(identity_name(res))
    assert len(names) == 4, names
    long = "r" * 63  # the longest name an EvalRun may have
    res = parse_resource({"apiVersion": "devops-model.io/v1alpha1", "kind": "EvalRun", "metadata": {"name": long},
                          "spec": _minimal_spec("EvalRun")})
    assert len(identity_name(res)) <= 63 and identity_name(res).endswith("-worker")


def _minimal_spec(kind):
    model = {"uri": "pvc://models/base"}
    return {
        "PretrainRun": {"model": model, "data": {"datasets": [{"uri": "pvc://data/c.txt"}]},
                        "training": {"maxSteps": 5}, "output": {"uri": "pvc://m/o"}},
        "SFTRun": {"model": model, "data": {"datasets": [{"uri": "pvc://data/s.jsonl"}]},
                   "training": {"maxSteps": 5}, "output": {"uri": "pvc://m/o"}},
        "EvalRun": {"model": model, "exams": {"uri": "pvc://data/exams"}},
        "QuantizeRun": {"model": model, "output": {"uri": "pvc://m/o"}},
    }[kind]


def test_service_account_annotations_come_from_the_operator_config():
    from devops_operator.builders import build_identity

    config = OperatorConfig.model_validate({"workloads": {"serviceAccountAnnotations": {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/x"}}})
    res = parse_resource({"apiVersion": "devops-model.io/v1alpha1", "kind": "EvalRun",
                          "metadata": {"name": "ev", "namespace": "t", "uid": "u"}, "spec": _minimal_spec("EvalRun")})
    sa, role, binding = build_identity(res, config)
    assert sa["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/x"}
    assert "annotations" not in build_identity(res, OperatorConfig())[0]["metadata"]


def test_vllm_and_tgi_carry_the_tuned_template_stop_ids_and_the_hub_revision():
    """The chat conventions the model was tuned with reach vLLM/TGI (devops_model.conventions)."""
    chat = parse_resource({"apiVersion": "devops-model.io/v1alpha1", "kind": "ChatDeployment",
                           "metadata": {"name": "c", "namespace": "ns"},
                           "spec": {"model": {"fromRun": {"kind": "SFTRun", "name": "sft"}}, "engine": {"name": "vllm"},
                                    "resources": {"gpusPerNode": 1}}})
    parent = {"kind": "SFTRun", "metadata": {"name": "sft"}, "spec": {},
              "status": {"artifact": {"uri": "pvc://m/sft", "mergedUri": "pvc://m/sft/merged", "format": "hf-lora",
                                      "template": "chatml"}}}
    args = render_children(chat, resolved_model="pvc://m/sft/merged", parent=parent)[1]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "<|im_start|>" in args[args.index("--chat-template") + 1]
    assert args[args.index("--generation-config") + 1] == "auto"
    for engine, flag in (("vllm", "--revision"), ("tgi", "--revision")):
        hub = parse_resource({"apiVersion": "devops-model.io/v1alpha1", "kind": "ChatDeployment", "metadata": {"name": "h"},
                              "spec": {"model": {"uri": "hf://Qwen/Qwen2.5-7B-Instruct@v1.1"}, "engine": {"name": engine},
                                       "resources": {"gpusPerNode": 1}}})
        a = render_children(hub)[1]["spec"]["template"]["spec"]["containers"][0]["args"]
        assert a[a.index(flag) + 1] == "v1.1", (engine, a)


# ----------------------------------------------------------------------------- vLLM and TGI as their CLIs define them

ENGINE_CLI = yaml.safe_load((Path(__file__).parent / "engine_cli.yaml").read_text())


def _engine_chats() -> list:
    """ChatDeployments that exercise every flag and variable the operator may give vLLM or TGI."""
    out = []
    for engine in ("vllm", "tgi"):
        for model in ("hf://Qwen/Qwen2.5-7B-Instruct@v1.1", "modelscope://codefuse-ai/CodeFuse-DevOps-Model-7B-Chat",
                      "pvc://models/int4"):
            if engine == "tgi" and model.startswith("modelscope"):
                continue  # refused by the API (test_api)
            spec = {"model": {"uri": model, "trustRemoteCode": True}, "engine": {"name": engine},
                    "resources": {"gpusPerNode": 2}, "auth": {"apiKeySecret": {"name": "s", "key": "k"}}}
            if engine == "vllm":
                spec["engine"]["toolCallParser"] = "hermes"
            out.append((parse_resource({"apiVersion": "devops-model.io/v1alpha1", "kind": "ChatDeployment",
                                        "metadata": {"name": "c", "namespace": "ns"}, "spec": spec}), model))
    return out


@pytest.mark.parametrize("case", ["chat-vllm-gptq", "chat-tgi", "engines"])
def test_every_rendered_engine_flag_and_variable_exists_in_that_engines_cli(case):
    """Each flag the operator passes to vLLM/TGI is one their own argument parsers define
    (tests/operator/engine_cli.yaml, extracted from their sources), and so is each variable they read."""
    deploys = ([render_case(case)[1]] if case != "engines" else
               [render_children(chat, artifact_format="gptq" if uri.startswith("pvc") else None)[1]
                for chat, uri in _engine_chats()])
    checked = 0
    for deploy in deploys:
        server = deploy["spec"]["template"]["spec"]["containers"][0]
        engine = "vllm" if "vllm" in " ".join(server["command"]) else "tgi"
        cli = ENGINE_CLI[engine]
        for arg in server["args"]:
            if arg.startswith("--"):
                assert arg.split("=", 1)[0] in cli["flags"], f"{engine} has no flag {arg}"
                checked += 1
        if "--quantize" in server["args"]:
            assert server["args"][server["args"].index("--quantize") + 1] in cli["quantize"]
        read = {e["name"] for e in server["env"]} - {e["name"] for e in server["env"] if e["name"].startswith(("DEVOPS_MODEL_", "HF_", "XDG_", "TORCH", "GPTQMODEL", "TRITON", "MODELSCOPE_", "PYTHON", "HOME"))}
        assert read <= set(cli["env"]), f"{engine} reads none of {read - set(cli['env'])}"
    assert checked >= 7


def test_vllm_gets_its_tool_call_flags_only_when_the_spec_names_a_parser():
    def args(engine: dict) -> list[str]:
        chat = parse_resource({"apiVersion": "devops-model.io/v1alpha1", "kind": "ChatDeployment", "metadata": {"name": "c"},
                               "spec": {"model": {"uri": "pvc://m/x"}, "engine": engine, "resources": {"gpusPerNode": 1}}})
        return render_children(chat)[1]["spec"]["template"]["spec"]["containers"][0]["args"]

    with_tools = args({"name": "vllm", "toolCallParser": "hermes"})
    assert "--enable-auto-tool-choice" in with_tools and with_tools[with_tools.index("--tool-call-parser") + 1] == "hermes"
    assert "--enable-auto-tool-choice" not in args({"name": "vllm"})


def test_vllm_and_tgi_get_the_web_chat_sidecar_in_front_of_them():
    """ui: enabled (the default) with vLLM/TGI: the sidecar owns the Service's port and serves the page and
    the lineage, the engine moves to the next port inside the pod; ui: disabled leaves the engine alone."""
    for case in ("chat-vllm-gptq", "chat-tgi"):
        cm, deploy, svc, *_ = render_case(case)
        pod = deploy["spec"]["template"]["spec"]
        server, web = pod["containers"]
        port = svc["spec"]["ports"][0]["port"]
        assert svc["spec"]["ports"][0]["targetPort"] == "http"
        assert web["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
        assert server["ports"] == [{"name": "engine", "containerPort": port + 1, "protocol": "TCP"}]
        assert server["args"][server["args"].index("--port") + 1] == str(port + 1)
        cmd = web["command"]
        assert cmd[:2] == ["devops-model", "serve"] and cmd[cmd.index("--upstream") + 1] == f"http://127.0.0.1:{port + 1}"
        assert cmd[cmd.index("--lineage-file") + 1] == "/etc/devops-model/lineage.json" and "lineage.json" in cm["data"]
        assert web["image"] == OperatorConfig().images.serve
        # restricted like every container; no claims, no token, a small fixed budget
        assert web["securityContext"]["readOnlyRootFilesystem"] and web["securityContext"]["runAsNonRoot"]
        assert {m["name"] for m in web["volumeMounts"]} == {"spec", "tmp"}
        assert web["resources"]["requests"]["memory"] == web["resources"]["limits"]["memory"]
        assert web["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}  # ready when the engine is
        assert web["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}  # not killed when it is not
    chat = parse_resource({"apiVersion": "devops-model.io/v1alpha1", "kind": "ChatDeployment", "metadata": {"name": "c"},
                           "spec": {"model": {"uri": "pvc://m/x"}, "engine": {"name": "vllm"}, "ui": "disabled",
                                    "resources": {"gpusPerNode": 1}}})
    (server,) = render_children(chat)[1]["spec"]["template"]["spec"]["containers"]
    assert server["ports"][0] == {"name": "http", "containerPort": 8000, "protocol": "TCP"}
    from devops_operator.builders.chat import endpoint
    assert "ui" not in endpoint(chat)
    assert endpoint(render_case_resource("chat-tgi"))["ui"].endswith(":8000/")
