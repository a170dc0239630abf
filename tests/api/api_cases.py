"""Valid base resources of each kind, the table of bad resources and the table of valid but
unusual ones, shared by the local validation tests (tests/api/test_api.py) and the API-server
tests (tests/cluster/test_api_server.py): both must refuse every bad case naming the same field,
and accept every unusual one.

Each bad case is (id, kind, mutation, field) where ``mutation(obj)`` breaks a valid resource and
``field`` is the path both the local validator and the API server must name. A value wrapped in
:class:`Raw` is written into the YAML text as is (unquoted numbers, ``yes``, tags), so the case
also tests how the file is read: both sides get the same YAML text (:func:`case_yaml`).
"""

from __future__ import annotations

import copy
from typing import Any, Callable

BASE: dict[str, dict[str, Any]] = {
    "PretrainRun": {
        "apiVersion": "devops-model.io/v1alpha1",
        "kind": "PretrainRun",
        "metadata": {"name": "pt"},
        "spec": {
            "model": {"uri": "hf://Qwen/Qwen2.5-0.5B"},
            "data": {"registry": "pvc://data/devops", "datasets": [{"name": "devops_corpus"}]},
            "training": {"maxSteps": 100, "learningRate": "5e-6"},
            "output": {"uri": "pvc://runs/pt"},
        },
    },
    "SFTRun": {
        "apiVersion": "devops-model.io/v1alpha1",
        "kind": "SFTRun",
        "metadata": {"name": "sft"},
        "spec": {
            "model": {"fromRun": {"kind": "PretrainRun", "name": "pt"}},
            "data": {"datasets": [{"uri": "pvc://data/sft.jsonl", "sha1": "0" * 40}]},
            "training": {"epochs": 3, "learningRate": "5e-5"},
            "finetuning": {"type": "lora", "lora": {"rank": 8, "alpha": 32}},
            "distributed": {"backend": "deepspeed", "deepspeed": {"zeroStage": 2}},
            "resources": {"nodes": 2, "gpusPerNode": 8},
            "output": {"uri": "pvc://runs/sft"},
        },
    },
    "EvalRun": {
        "apiVersion": "devops-model.io/v1alpha1",
        "kind": "EvalRun",
        "metadata": {"name": "ev"},
        "spec": {
            "model": {"fromRun": {"kind": "SFTRun", "name": "sft"}},
            "exams": {"uri": "pvc://data/exams", "preset": "devops-574"},
            "shots": [0, 5],
        },
    },
    "QuantizeRun": {
        "apiVersion": "devops-model.io/v1alpha1",
        "kind": "QuantizeRun",
        "metadata": {"name": "q"},
        "spec": {
            "model": {"fromRun": {"kind": "SFTRun", "name": "sft"}},
            "bits": 4,
            "groupSize": 128,
            "output": {"uri": "pvc://runs/q"},
        },
    },
    "ChatDeployment": {
        "apiVersion": "devops-model.io/v1alpha1",
        "kind": "ChatDeployment",
        "metadata": {"name": "chat"},
        "spec": {
            "model": {"fromRun": {"kind": "QuantizeRun", "name": "q"}},
            "engine": {"name": "vllm"},
            "resources": {"gpusPerNode": 1},
        },
    },
}


def base(kind: str) -> dict[str, Any]:
    return copy.deepcopy(BASE[kind])


class Raw(str):
    """A scalar written into the YAML text exactly as given (e.g. ``5e-5`` unquoted)."""


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def mutate(obj: dict) -> None:
        cur = obj
        parts = path.split(".")
        for p in parts[:-1]:
            cur = cur[int(p)] if isinstance(cur, list) else cur.setdefault(p, {})
        last = parts[-1]
        if isinstance(cur, list):
            cur[int(last)] = value
        else:
            cur[last] = value
    return mutate


def _del(path: str) -> Callable[[dict], None]:
    def mutate(obj: dict) -> None:
        cur = obj
        parts = path.split(".")
        for p in parts[:-1]:
            cur = cur[int(p)] if isinstance(cur, list) else cur[p]
        del cur[parts[-1]]
    return mutate


def _both(*ms: Callable[[dict], None]) -> Callable[[dict], None]:
    def mutate(obj: dict) -> None:
        for m in ms:
            m(obj)
    return mutate


def _name(name: str) -> Callable[[dict], None]:
    return _set("metadata.name", name)


def _extra(*args: str) -> Callable[[dict], None]:
    return _set("spec.engine.extraArgs", list(args))


def _tol(**t: Any) -> Callable[[dict], None]:
    return _set("spec.resources.tolerations", [t])


_Q = "QuantizeRun"
_E = "EvalRun"
_C = "ChatDeployment"
_S = "SFTRun"
_P = "PretrainRun"

#: (id, kind, mutation, field path that must appear in the error)
BAD_CASES: list[tuple[str, str, Callable[[dict], None], str]] = [
    # --- model source (shared by all kinds)
    ("pt-model-both-uri-and-fromRun", _P, _set("spec.model.fromRun", {"kind": "SFTRun", "name": "x"}), "spec.model"),
    ("pt-model-neither", _P, _set("spec.model", {}), "spec.model"),
    ("pt-model-bad-scheme", _P, _set("spec.model.uri", "http://example.com/m"), "spec.model.uri"),
    ("sft-fromRun-bad-kind", _S, _set("spec.model.fromRun.kind", "ChatDeployment"), "spec.model.fromRun.kind"),
    ("sft-fromRun-bad-name", _S, _set("spec.model.fromRun.name", "Not_A_Name"), "spec.model.fromRun.name"),
    # --- data
    ("pt-data-no-datasets", _P, _set("spec.data.datasets", []), "spec.data.datasets"),
    ("pt-dataset-name-and-uri", _P, _set("spec.data.datasets.0.uri", "pvc://d/x.jsonl"), "spec.data.datasets[0]"),
    ("pt-dataset-name-without-registry", _P, _del("spec.data.registry"), "spec.data.registry"),
    ("sft-dataset-bad-sha1", _S, _set("spec.data.datasets.0.sha1", "xyz"), "spec.data.datasets[0].sha1"),
    ("sft-dataset-bad-format", _S, _set("spec.data.datasets.0.format", "csv"), "spec.data.datasets[0].format"),
    ("sft-val-size-not-number", _S, _set("spec.data.valSize", "ten"), "spec.data.valSize"),
    # --- training
    ("sft-lr-float-not-string", _S, _set("spec.training.learningRate", 0.00005), "spec.training.learningRate"),
    ("sft-lr-garbage", _S, _set("spec.training.learningRate", "fast"), "spec.training.learningRate"),
    ("sft-lr-too-large", _S, _set("spec.training.learningRate", "5"), "spec.training.learningRate"),
    ("sft-no-epochs-no-steps", _S, _del("spec.training.epochs"), "spec.training"),
    ("sft-warmup-ratio-1", _S, _set("spec.training.warmupRatio", "1.5"), "spec.training.warmupRatio"),
    ("sft-batch-zero", _S, _set("spec.training.perDeviceBatchSize", 0), "spec.training.perDeviceBatchSize"),
    ("sft-bad-template", _S, _set("spec.training.template", "llama2"), "spec.training.template"),
    ("sft-bad-precision", _S, _set("spec.training.precision", "int8"), "spec.training.precision"),
    ("sft-unknown-field", _S, _set("spec.training.learnignRate", "5e-5"), "spec.training.learnignRate"),
    # --- finetuning
    ("sft-lora-with-full", _S, _set("spec.finetuning.type", "full"), "spec.finetuning.lora"),
    ("sft-lora-rank-too-big", _S, _set("spec.finetuning.lora.rank", 512), "spec.finetuning.lora.rank"),
    ("sft-lora-dropout-1", _S, _set("spec.finetuning.lora.dropout", "1.0"), "spec.finetuning.lora.dropout"),
    ("sft-freeze-with-lora", _S, _set("spec.finetuning.freeze", {"trainableLayers": 2}), "spec.finetuning.freeze"),
    ("sft-bad-finetuning-type", _S, _both(_set("spec.finetuning.type", "qlora"), _del("spec.finetuning.lora")), "spec.finetuning.type"),
    # --- distributed / resources / launcher
    ("sft-zero-stage-4", _S, _set("spec.distributed.deepspeed.zeroStage", 4), "spec.distributed.deepspeed.zeroStage"),
    ("sft-offload-params-zero2", _S, _set("spec.distributed.deepspeed.offloadParams", "cpu"), "spec.distributed.deepspeed.offloadParams"),
    ("sft-deepspeed-with-ddp", _S, _set("spec.distributed.backend", "ddp"), "spec.distributed.deepspeed"),
    ("sft-job-launcher-multinode", _S, _set("spec.launcher", "Job"), "spec.launcher"),
    ("sft-bad-launcher", _S, _set("spec.launcher", "MPIJob"), "spec.launcher"),
    ("sft-gpus-17", _S, _set("spec.resources.gpusPerNode", 17), "spec.resources.gpusPerNode"),
    ("sft-bad-memory", _S, _set("spec.resources.memory", "lots"), "spec.resources.memory"),
    ("sft-bad-queue-name", _S, _set("spec.resources.queueName", "Team_A"), "spec.resources.queueName"),
    ("sft-bad-stall-timeout", _S, _set("spec.failurePolicy", {"stallTimeout": "thirty minutes"}), "spec.failurePolicy.stallTimeout"),
    ("pt-missing-output", _P, _del("spec.output"), "spec.output"),
    # --- eval
    ("eval-shots-6", _E, _set("spec.shots", [0, 6]), "spec.shots"),
    ("eval-preset-and-exams", _E, _set("spec.exams.exams", ["cmmlu/computer_science"]), "spec.exams"),
    ("eval-bad-preset", _E, _set("spec.exams.preset", "mmlu"), "spec.exams.preset"),
    ("eval-bad-style", _E, _set("spec.styles", ["instruct"]), "spec.styles[0]"),
    ("eval-bad-scoring", _E, _set("spec.scoring", "generate"), "spec.scoring"),
    ("eval-missing-exams", _E, _del("spec.exams"), "spec.exams"),
    # --- quantize
    ("quant-bits-5", _Q, _set("spec.bits", 5), "spec.bits"),
    ("quant-group-100", _Q, _set("spec.groupSize", 100), "spec.groupSize"),
    ("quant-llmcompressor-8bit", _Q, _both(_set("spec.backend", "llmcompressor"), _set("spec.bits", 8)), "spec.backend"),
    ("quant-bad-method", _Q, _set("spec.method", "awq"), "spec.method"),
    ("quant-samples-zero", _Q, _set("spec.calibration", {"samples": 0}), "spec.calibration.samples"),
    ("quant-max-drop-text", _Q, _set("spec.verification", {"maxAccuracyDrop": "a lot"}), "spec.verification.maxAccuracyDrop"),
    # --- chat
    ("chat-vllm-without-gpu", _C, _set("spec.resources.gpusPerNode", 0), "spec.engine.name"),
    ("chat-bad-engine", _C, _set("spec.engine.name", "ollama"), "spec.engine.name"),
    ("chat-negative-replicas", _C, _set("spec.replicas", -1), "spec.replicas"),
    ("chat-gate-accuracy-2", _C, _set("spec.gate", {"evalRun": "ev", "minAccuracy": "2"}), "spec.gate.minAccuracy"),
    ("chat-auth-secret-missing-key", _C, _set("spec.auth", {"apiKeySecret": {"name": "k"}}), "spec.auth.apiKeySecret.key"),
    ("chat-bad-ui", _C, _set("spec.ui", "yes"), "spec.ui"),
    ("chat-multi-node", _C, _set("spec.resources.nodes", 2), "spec.resources.nodes"),

    # ===== issue 14: escape from storage (every URI field, both validators)
    ("i14-output-escapes-claim", _S, _set("spec.output.uri", "pvc://runs/../../escaped-out"), "spec.output.uri"),
    ("i14-model-uri-escapes-claim", _P, _set("spec.model.uri", "pvc://models/../../etc"), "spec.model.uri"),
    ("i14-registry-escapes-claim", _P, _set("spec.data.registry", "pvc://data/../../x"), "spec.data.registry"),
    ("i14-file-dotdot", _S, _set("spec.data.datasets.0.uri", "file:///../../etc/shadow"), "spec.data.datasets[0].uri"),
    ("i14-file-uri-in-cluster", _P, _set("spec.model.uri", "file:///etc/passwd"), "spec.model.uri"),
    ("i14-file-output-in-cluster", _S, _set("spec.output.uri", "file:///tmp/out"), "spec.output.uri"),
    ("uri-pvc-dot-segment", _S, _set("spec.output.uri", "pvc://runs/./sft"), "spec.output.uri"),
    ("uri-pvc-empty-segment", _S, _set("spec.output.uri", "pvc://runs//sft"), "spec.output.uri"),
    ("uri-pvc-trailing-dotdot", _S, _set("spec.output.uri", "pvc://runs/sft/.."), "spec.output.uri"),
    ("uri-pvc-space", _S, _set("spec.output.uri", "pvc://runs/my sft"), "spec.output.uri"),
    ("uri-pvc-backslash", _S, _set("spec.output.uri", "pvc://runs/..\\..\\x"), "spec.output.uri"),
    ("uri-no-scheme", _S, _set("spec.output.uri", "runs/sft"), "spec.output.uri"),
    ("uri-exams-escape", _E, _set("spec.exams.uri", "pvc://data/exams/../../../etc"), "spec.exams.uri"),
    ("uri-eval-output-escape", _E, _set("spec.output", "pvc://runs/../x"), "spec.output"),
    ("uri-calibration-registry-escape", _Q, _set("spec.calibration", {"registry": "pvc://data/..", "datasets": [{"name": "x"}]}), "spec.calibration.registry"),
    ("uri-perplexity-text-file", _Q, _set("spec.verification", {"perplexityText": "file:///etc/hosts"}), "spec.verification.perplexityText"),
    ("uri-chat-model-escape", _C, _set("spec.model", {"uri": "pvc://models/../secrets"}), "spec.model.uri"),
    ("uri-s3-key-escape", _P, _set("spec.model.uri", "s3://bucket/models/../../other"), "spec.model.uri"),
    ("uri-s3-bad-bucket", _P, _set("spec.model.uri", "s3://Bucket_X/m"), "spec.model.uri"),
    ("eval-exam-name-escapes", _E, _both(_del("spec.exams.preset"), _set("spec.exams.exams", ["cmmlu/../../etc"])), "spec.exams.exams[0]"),
    # ===== issue 14: accepted, then nothing (the child's create failed)
    ("i14-cpu-1.2.3", _S, _set("spec.resources.cpu", "1.2.3"), "spec.resources.cpu"),
    ("i14-shm-8Gii", _S, _set("spec.resources.sharedMemory", "8Gii"), "spec.resources.sharedMemory"),
    ("i14-node-selector-bad-key", _S, _set("spec.resources.nodeSelector", {"bad key!": "x"}), "spec.resources.nodeSelector"),
    ("i14-toleration-exists-with-value", _S, _tol(key="gpu", operator="Exists", value="a100"), "spec.resources.tolerations[0].value"),
    ("i14-output-bad-claim", _S, _set("spec.output.uri", "pvc://Bad_Claim/x"), "spec.output.uri"),
    ("i14-name-starts-with-digit", _S, _name("7b-sft"), "metadata.name"),
    ("i14-name-49-chars", _S, _name("s" * 49), "metadata.name"),
    ("name-sft-36-chars", _S, _name("a" * 36), "metadata.name"),
    ("name-pretrain-36-chars", _P, _name("p" * 36), "metadata.name"),
    ("quantity-negative-memory", _S, _set("spec.resources.memory", "-1Gi"), "spec.resources.memory"),
    ("quantity-zero-cpu", _S, _set("spec.resources.cpu", "0"), "spec.resources.cpu"),
    ("quantity-GB-suffix", _S, _set("spec.resources.memory", "64GB"), "spec.resources.memory"),
    ("quantity-overflow", _S, _set("spec.resources.memory", "1e999"), "spec.resources.memory"),
    ("quantity-chat-shm", _C, _set("spec.resources.sharedMemory", "1..5Gi"), "spec.resources.sharedMemory"),
    ("node-selector-bad-value", _S, _set("spec.resources.nodeSelector", {"disk": "fast ssd"}), "spec.resources.nodeSelector"),
    ("node-selector-bad-prefix", _S, _set("spec.resources.nodeSelector", {"Bad_Prefix/zone": "a"}), "spec.resources.nodeSelector"),
    ("node-selector-long-name", _S, _set("spec.resources.nodeSelector", {"x" * 64: "a"}), "spec.resources.nodeSelector"),
    ("toleration-no-key-equal", _S, _tol(operator="Equal", value="x"), "spec.resources.tolerations[0].operator"),
    ("toleration-seconds-noschedule", _S, _tol(key="k", operator="Exists", effect="NoSchedule", tolerationSeconds=60), "spec.resources.tolerations[0].tolerationSeconds"),
    ("toleration-bad-key", _E, _tol(key="bad key", operator="Exists"), "spec.resources.tolerations[0].key"),
    ("toleration-bad-value", _Q, _tol(key="k", value="not ok!"), "spec.resources.tolerations[0].value"),
    ("gpu-resource-no-domain", _S, _set("spec.resources.gpuResourceName", "gpu/x"), "spec.resources.gpuResourceName"),
    ("gpu-resource-double-dot", _S, _set("spec.resources.gpuResourceName", "nvidia..com/gpu"), "spec.resources.gpuResourceName"),
    ("gpu-resource-kubernetes-io", _S, _set("spec.resources.gpuResourceName", "gpu.kubernetes.io/a100"), "spec.resources.gpuResourceName"),
    ("queue-name-64", _S, _set("spec.resources.queueName", "q" * 64), "spec.resources.queueName"),
    ("priority-class-upper", _S, _set("spec.resources.priorityClassName", "High"), "spec.resources.priorityClassName"),
    ("image-with-space", _S, _set("spec.image", "my image:1"), "spec.image"),
    ("chat-engine-image-shell", _C, _set("spec.engine.image", "vllm;rm -rf /"), "spec.engine.image"),
    # ===== issue 14: accepted, then a traceback (numeric ranges, shapes)
    ("i14-damp-percent-5", _Q, _set("spec.dampPercent", "5"), "spec.dampPercent"),
    ("i14-val-size-overflow", _S, _set("spec.data.valSize", "1e999"), "spec.data.valSize"),
    ("i14-stall-timeout-0s", _S, _set("spec.failurePolicy", {"stallTimeout": "0s"}), "spec.failurePolicy.stallTimeout"),
    ("i14-weight-decay-inf", _S, _set("spec.training.weightDecay", "1e999"), "spec.training.weightDecay"),
    ("i14-max-grad-norm-inf", _S, _set("spec.training.maxGradNorm", "9e999"), "spec.training.maxGradNorm"),
    ("i14-calibration-min-over-max", _Q, _set("spec.calibration", {"minLength": 512, "maxLength": 256}), "spec.calibration.minLength"),
    ("i14-hf-without-name", _P, _set("spec.model.uri", "hf://Qwen"), "spec.model.uri"),
    ("i14-pvc-without-claim", _P, _set("spec.model.uri", "pvc:///x"), "spec.model.uri"),
    ("i14-fromRun-self-sft", _S, _set("spec.model.fromRun", {"kind": "SFTRun", "name": "i14-fromrun-self-sft"}), "spec.model.fromRun"),
    ("fromRun-self-pretrain", _P, _set("spec.model", {"fromRun": {"kind": "PretrainRun", "name": "fromrun-self-pretrain"}}), "spec.model.fromRun"),
    ("fromRun-self-quantize", _Q, _set("spec.model.fromRun", {"kind": "QuantizeRun", "name": "fromrun-self-quantize"}), "spec.model.fromRun"),
    ("eval-baseline-self", _E, _set("spec.baseline", {"evalRun": "eval-baseline-self"}), "spec.baseline.evalRun"),
    ("hf-three-parts", _P, _set("spec.model.uri", "hf://Qwen/Qwen2.5-7B/extra"), "spec.model.uri"),
    ("hf-bad-revision", _P, _set("spec.model.uri", "hf://Qwen/Qwen2.5-7B@../main"), "spec.model.uri"),
    ("hf-double-dash", _P, _set("spec.model.uri", "hf://Qwen/Qwen--7B"), "spec.model.uri"),
    ("modelscope-without-name", _E, _set("spec.model", {"uri": "modelscope://codefuse-ai"}), "spec.model.uri"),
    ("lr-zero", _S, _set("spec.training.learningRate", "0"), "spec.training.learningRate"),
    ("lr-negative", _S, _set("spec.training.learningRate", "-1e-5"), "spec.training.learningRate"),
    ("lr-three-digit-exponent", _S, _set("spec.training.learningRate", "5e-100"), "spec.training.learningRate"),
    ("warmup-ratio-exactly-1", _S, _set("spec.training.warmupRatio", "1"), "spec.training.warmupRatio"),
    ("weight-decay-2", _S, _set("spec.training.weightDecay", "2"), "spec.training.weightDecay"),
    ("max-grad-norm-huge", _S, _set("spec.training.maxGradNorm", "1e10"), "spec.training.maxGradNorm"),
    ("lora-dropout-exactly-1", _S, _set("spec.finetuning.lora.dropout", "1"), "spec.finetuning.lora.dropout"),
    ("val-size-fraction-over-1", _S, _set("spec.data.valSize", "1.5"), "spec.data.valSize"),
    ("val-size-negative", _S, _set("spec.data.valSize", "-1"), "spec.data.valSize"),
    ("damp-percent-zero", _Q, _set("spec.dampPercent", "0"), "spec.dampPercent"),
    ("perplexity-increase-inf", _Q, _set("spec.verification", {"maxPerplexityIncrease": "1e999"}), "spec.verification.maxPerplexityIncrease"),
    ("accuracy-drop-2", _Q, _set("spec.verification", {"maxAccuracyDrop": "2"}), "spec.verification.maxAccuracyDrop"),
    ("stall-timeout-59s", _S, _set("spec.failurePolicy", {"stallTimeout": "59s"}), "spec.failurePolicy.stallTimeout"),
    ("stall-timeout-days", _S, _set("spec.failurePolicy", {"stallTimeout": "1d"}), "spec.failurePolicy.stallTimeout"),
    ("stall-timeout-huge", _S, _set("spec.failurePolicy", {"stallTimeout": "99999999999h"}), "spec.failurePolicy.stallTimeout"),
    ("calibration-max-length-8", _Q, _set("spec.calibration", {"maxLength": 8, "minLength": 1}), "spec.calibration.maxLength"),
    ("fromRun-name-starts-with-digit", _S, _set("spec.model.fromRun.name", "7b"), "spec.model.fromRun.name"),
    ("gate-eval-run-dotted", _C, _set("spec.gate", {"evalRun": "ev.v2", "minAccuracy": "0.5"}), "spec.gate.evalRun"),
    # ===== issue 14: local and server disagree (strings for numbers, YAML 1.1 vs kubectl)
    ("i14-max-steps-string", _P, _set("spec.training.maxSteps", "100"), "spec.training.maxSteps"),
    ("i14-packing-string", _S, _set("spec.training.packing", "true"), "spec.training.packing"),
    ("i14-bits-string", _Q, _set("spec.bits", "4"), "spec.bits"),
    ("i14-lr-unquoted", _S, _set("spec.training.learningRate", Raw("5e-5")), "spec.training.learningRate"),
    ("i14-lr-overflow-string", _S, _set("spec.training.learningRate", "1e999"), "spec.training.learningRate"),
    ("i14-lr-overflow-unquoted", _S, _set("spec.training.learningRate", Raw("1e999")), "spec.training.learningRate"),
    ("i14-name-64-chars", _E, _name("e" * 64), "metadata.name"),
    ("i14-name-253-chars", _C, _name("c" * 253), "metadata.name"),
    ("i14-name-dotted", _C, _name("chat.v2"), "metadata.name"),
    ("name-uppercase", _E, _name("EvalRun1"), "metadata.name"),
    ("name-trailing-dash", _Q, _name("quant-"), "metadata.name"),
    ("epochs-string", _S, _set("spec.training.epochs", "3"), "spec.training.epochs"),
    ("replicas-string", _C, _set("spec.replicas", "2"), "spec.replicas"),
    ("max-steps-fraction", _P, _set("spec.training.maxSteps", Raw("1.5")), "spec.training.maxSteps"),
    ("max-steps-boolean", _P, _set("spec.training.maxSteps", Raw("yes")), "spec.training.maxSteps"),
    ("bits-fraction", _Q, _set("spec.bits", Raw("4.5")), "spec.bits"),
    ("lr-boolean-on", _S, _set("spec.training.learningRate", Raw("on")), "spec.training.learningRate"),
    ("ui-unquoted-no", _C, _set("spec.ui", Raw("no")), "spec.ui"),
    ("packing-quoted-yes", _S, _set("spec.training.packing", "yes"), "spec.training.packing"),
    ("val-size-unquoted", _S, _set("spec.data.valSize", Raw("0.1")), "spec.data.valSize"),
    ("min-accuracy-unquoted", _C, _set("spec.gate", {"evalRun": "ev", "minAccuracy": Raw("0.5")}), "spec.gate.minAccuracy"),
    ("shots-string-item", _E, _set("spec.shots", [0, "5"]), "spec.shots[1]"),
    ("max-steps-over-int64", _P, _set("spec.training.maxSteps", Raw("9223372036854775808")), "spec.training.maxSteps"),
    # ===== issue 14: overrides that undo safety
    ("i14-extra-args-trust-remote-code", _C, _extra("--trust-remote-code"), "spec.engine.extraArgs[0]"),
    ("i14-extra-args-port", _C, _extra("--port", "9999"), "spec.engine.extraArgs[0]"),
    ("extra-args-model-equals", _C, _extra("--model=/mnt/other"), "spec.engine.extraArgs[0]"),
    ("extra-args-underscore", _C, _extra("--enable-prefix-caching", "--served_model_name", "x"), "spec.engine.extraArgs[1]"),
    ("extra-args-abbreviation", _C, _extra("--trust-remote"), "spec.engine.extraArgs[0]"),
    ("extra-args-negated", _C, _extra("--no-trust-remote-code"), "spec.engine.extraArgs[0]"),
    ("extra-args-short-port", _C, _extra("-p9999"), "spec.engine.extraArgs[0]"),
    ("extra-args-host", _C, _extra("--host", "127.0.0.1"), "spec.engine.extraArgs[0]"),
    ("extra-args-api-key", _C, _extra("--api-key", "open-sesame"), "spec.engine.extraArgs[0]"),
    ("extra-args-config-file", _C, _extra("--config", "/mnt/x.yaml"), "spec.engine.extraArgs[0]"),
    ("extra-args-tp", _C, _extra("-tp", "8"), "spec.engine.extraArgs[0]"),
    ("extra-args-tgi-model-id", _C, _extra("--model-id", "other"), "spec.engine.extraArgs[0]"),
    ("extra-args-builtin", _C, _both(_set("spec.engine.name", "builtin"), _extra("--dtype", "float32")), "spec.engine.extraArgs"),
    ("tool-parser-tgi", _C, _both(_set("spec.engine.name", "tgi"), _set("spec.engine.toolCallParser", "hermes")), "spec.engine.toolCallParser"),
    ("tool-parser-builtin-mistral", _C, _both(_set("spec.engine.name", "builtin"), _set("spec.engine.toolCallParser", "mistral")), "spec.engine.toolCallParser"),
    ("tool-parser-bad-chars", _C, _set("spec.engine.toolCallParser", "Hermes Parser"), "spec.engine.toolCallParser"),
    ("tgi-modelscope", _C, _both(_set("spec.engine.name", "tgi"), _set("spec.model", {"uri": "modelscope://codefuse-ai/CodeFuse-DevOps-Model-7B-Chat"})), "spec.model.uri"),
    # ===== more shapes and bounds
    ("chat-port-80", _C, _set("spec.port", 80), "spec.port"),
    ("chat-served-name-space", _C, _set("spec.servedModelName", "my model"), "spec.servedModelName"),
    ("chat-max-model-length-100", _C, _set("spec.engine.maxModelLength", 100), "spec.engine.maxModelLength"),
    ("chat-api-key-bad-key", _C, _set("spec.auth", {"apiKeySecret": {"name": "k", "key": "a key"}}), "spec.auth.apiKeySecret.key"),
    ("credentials-secret-bad", _P, _set("spec.model.credentialsSecret", "Bad_Secret"), "spec.model.credentialsSecret"),
    ("eval-shots-negative", _E, _set("spec.shots", [0, -1]), "spec.shots"),
    ("sha1-uppercase", _S, _set("spec.data.datasets.0.sha1", "A" * 40), "spec.data.datasets[0].sha1"),
    ("dataset-name-space", _P, _set("spec.data.datasets.0.name", "devops corpus"), "spec.data.datasets[0].name"),
    ("dataset-max-samples-0", _S, _set("spec.data.datasets.0.maxSamples", 0), "spec.data.datasets[0].maxSamples"),
    ("freeze-no-modules", _S, _both(_set("spec.finetuning", {"type": "freeze", "freeze": {"trainableModules": []}})), "spec.finetuning.freeze.trainableModules"),
    ("nodes-zero", _P, _set("spec.resources.nodes", 0), "spec.resources.nodes"),
    ("nodes-513", _P, _set("spec.resources.nodes", 513), "spec.resources.nodes"),
    ("max-restarts-101", _S, _set("spec.failurePolicy", {"maxRestarts": 101}), "spec.failurePolicy.maxRestarts"),
    ("seed-negative", _S, _set("spec.training.seed", -1), "spec.training.seed"),
    ("save-total-limit-0", _S, _set("spec.training.saveTotalLimit", 0), "spec.training.saveTotalLimit"),
]


def _unusual_yaml_tag(obj: dict) -> None:
    obj["spec"]["training"]["learningRate"] = Raw("!!str 5e-5")


#: Valid but unusual resources: (id, kind, mutation). Both sides must accept them.
GOOD_CASES: list[tuple[str, str, Callable[[dict], None]]] = [
    ("sft-name-35-chars", _S, _name("s" * 35)),
    ("pretrain-name-35-chars", _P, _name("p" * 35)),
    ("chat-name-63-chars", _C, _name("c" * 63)),
    ("eval-name-double-dash", _E, _name("e--v2")),
    ("packing-yaml-yes", _S, _set("spec.training.packing", Raw("yes"))),
    ("max-steps-1e2", _P, _set("spec.training.maxSteps", Raw("1e2"))),
    ("max-steps-100.0", _P, _set("spec.training.maxSteps", Raw("100.0"))),
    ("max-steps-hex", _P, _set("spec.training.maxSteps", Raw("0x64"))),
    ("lr-uppercase-exponent", _S, _set("spec.training.learningRate", "5E-5")),
    ("lr-explicit-str-tag", _S, _unusual_yaml_tag),
    ("quantities-unusual", _S, _both(_set("spec.resources.cpu", "500m"), _set("spec.resources.memory", "1e3"),
                                     _set("spec.resources.sharedMemory", ".5Gi"))),
    ("toleration-exists-without-key", _S, _tol(operator="Exists")),
    ("toleration-noexecute-seconds", _E, _tol(key="node.kubernetes.io/unreachable", operator="Exists", effect="NoExecute", tolerationSeconds=300)),
    ("node-selector-prefixed-empty-value", _S, _set("spec.resources.nodeSelector", {"topology.kubernetes.io/zone": "", "gpu.example.com/Model_A.1": "H100"})),
    ("uris-unusual-but-inside", _S, _both(_set("spec.output.uri", "pvc://runs/sft/"),
                                          _set("spec.data.datasets.0.uri", "pvc://data/.cache/.../运维问答.jsonl"))),
    ("hf-revision-pr-ref", _P, _set("spec.model.uri", "hf://Qwen/Qwen2.5-0.5B@refs/pr/1")),
    ("stall-timeout-minimum", _S, _set("spec.failurePolicy", {"stallTimeout": "1m"})),
    ("stall-timeout-1h30m", _S, _set("spec.failurePolicy", {"stallTimeout": "1h30m"})),
    ("damp-percent-1", _Q, _set("spec.dampPercent", "1")),
    ("val-size-rows", _S, _set("spec.data.valSize", "200")),
    ("max-grad-norm-off", _S, _set("spec.training.maxGradNorm", "0")),
    ("extra-args-legit", _C, _extra("--enable-prefix-caching", "--gpu-memory-utilization=0.9", "-pp", "1", "--model-impl", "auto")),
    ("fromRun-same-name-other-kind", _S, _both(_name("shared"), _set("spec.model.fromRun", {"kind": "PretrainRun", "name": "shared"}))),
    ("tool-parser-vllm-hermes", _C, _set("spec.engine.toolCallParser", "hermes")),
    ("tool-parser-builtin-hermes", _C, _both(_set("spec.engine.name", "builtin"), _set("spec.engine.toolCallParser", "hermes"))),
    ("vllm-modelscope", _C, _set("spec.model", {"uri": "modelscope://codefuse-ai/CodeFuse-DevOps-Model-7B-Chat"})),
    ("calibration-min-equals-max", _Q, _set("spec.calibration", {"minLength": 256, "maxLength": 256})),
]


def case_name(case_id: str, kind: str) -> str:
    """The resource name of a case: its id, made a valid name of that kind (unless the case
    itself sets the name)."""
    from devops_model.api.common import MAX_NAME_LENGTH

    return case_id.lower().replace(".", "-")[: MAX_NAME_LENGTH[kind]].strip("-")


def bad_resource(case) -> dict[str, Any]:
    _id, kind, mutate, _field = case
    obj = base(kind)
    obj["metadata"]["name"] = case_name(_id, kind)
    mutate(obj)
    return obj


def good_resource(case) -> dict[str, Any]:
    _id, kind, mutate = case
    obj = base(kind)
    obj["metadata"]["name"] = case_name(_id, kind)
    mutate(obj)
    return obj


def case_yaml(obj: dict[str, Any]) -> str:
    """The YAML text of a case's resource, with :class:`Raw` values written as given."""
    from devops_model.yamlio import dump

    raws: dict[str, str] = {}

    def swap(v: Any) -> Any:
        if isinstance(v, Raw):
            key = f"RAWVALUE{len(raws)}X"
            raws[key] = str(v)
            return key
        if isinstance(v, dict):
            return {k: swap(x) for k, x in v.items()}
        if isinstance(v, list):
            return [swap(x) for x in v]
        return v

    text = dump(swap(obj))
    for key, raw in raws.items():
        text = text.replace(key, raw)
    return text
