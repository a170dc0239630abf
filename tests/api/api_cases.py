"""Valid base resources of each kind and the table of bad resources, shared by the local
validation tests (tests/api/test_api.py) and the API-server tests (tests/cluster/test_api_server.py).

Each bad case is (id, kind, mutation, field) where ``mutation(obj)`` breaks a valid resource and
``field`` is the path both the local validator and the API server must name.
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


#: (id, kind, mutation, field path that must appear in the error)
BAD_CASES: list[tuple[str, str, Callable[[dict], None], str]] = [
    # --- model source (shared by all kinds)
    ("pt-model-both-uri-and-fromRun", "PretrainRun", _set("spec.model.fromRun", {"kind": "SFTRun", "name": "x"}), "spec.model"),
    ("pt-model-neither", "PretrainRun", _set("spec.model", {}), "spec.model"),
    ("pt-model-bad-scheme", "PretrainRun", _set("spec.model.uri", "http://example.com/m"), "spec.model.uri"),
    ("sft-fromRun-bad-kind", "SFTRun", _set("spec.model.fromRun.kind", "ChatDeployment"), "spec.model.fromRun.kind"),
    ("sft-fromRun-bad-name", "SFTRun", _set("spec.model.fromRun.name", "Not_A_Name"), "spec.model.fromRun.name"),
    # --- data
    ("pt-data-no-datasets", "PretrainRun", _set("spec.data.datasets", []), "spec.data.datasets"),
    ("pt-dataset-name-and-uri", "PretrainRun", _set("spec.data.datasets.0.uri", "pvc://d/x.jsonl"), "spec.data.datasets[0]"),
    ("pt-dataset-name-without-registry", "PretrainRun", _del("spec.data.registry"), "spec.data.registry"),
    ("sft-dataset-bad-sha1", "SFTRun", _set("spec.data.datasets.0.sha1", "xyz"), "spec.data.datasets[0].sha1"),
    ("sft-dataset-bad-format", "SFTRun", _set("spec.data.datasets.0.format", "csv"), "spec.data.datasets[0].format"),
    ("sft-val-size-not-number", "SFTRun", _set("spec.data.valSize", "ten"), "spec.data.valSize"),
    # --- training
    ("sft-lr-float-not-string", "SFTRun", _set("spec.training.learningRate", 0.00005), "spec.training.learningRate"),
    ("sft-lr-garbage", "SFTRun", _set("spec.training.learningRate", "fast"), "spec.training.learningRate"),
    ("sft-lr-too-large", "SFTRun", _set("spec.training.learningRate", "5"), "spec.training.learningRate"),
    ("sft-no-epochs-no-steps", "SFTRun", _del("spec.training.epochs"), "spec.training"),
    ("sft-warmup-ratio-1", "SFTRun", _set("spec.training.warmupRatio", "1.5"), "spec.training.warmupRatio"),
    ("sft-batch-zero", "SFTRun", _set("spec.training.perDeviceBatchSize", 0), "spec.training.perDeviceBatchSize"),
    ("sft-bad-template", "SFTRun", _set("spec.training.template", "llama2"), "spec.training.template"),
    ("sft-bad-precision", "SFTRun", _set("spec.training.precision", "int8"), "spec.training.precision"),
    ("sft-unknown-field", "SFTRun", _set("spec.training.learnignRate", "5e-5"), "spec.training.learnignRate"),
    # --- finetuning
    ("sft-lora-with-full", "SFTRun", _set("spec.finetuning.type", "full"), "spec.finetuning.lora"),
    ("sft-lora-rank-too-big", "SFTRun", _set("spec.finetuning.lora.rank", 512), "spec.finetuning.lora.rank"),
    ("sft-lora-dropout-1", "SFTRun", _set("spec.finetuning.lora.dropout", "1.0"), "spec.finetuning.lora.dropout"),
    ("sft-freeze-with-lora", "SFTRun", _set("spec.finetuning.freeze", {"trainableLayers": 2}), "spec.finetuning.freeze"),
    ("sft-bad-finetuning-type", "SFTRun", _both(_set("spec.finetuning.type", "qlora"), _del("spec.finetuning.lora")), "spec.finetuning.type"),
    # --- distributed / resources / launcher
    ("sft-zero-stage-4", "SFTRun", _set("spec.distributed.deepspeed.zeroStage", 4), "spec.distributed.deepspeed.zeroStage"),
    ("sft-offload-params-zero2", "SFTRun", _set("spec.distributed.deepspeed.offloadParams", "cpu"), "spec.distributed.deepspeed.offloadParams"),
    ("sft-deepspeed-with-ddp", "SFTRun", _set("spec.distributed.backend", "ddp"), "spec.distributed.deepspeed"),
    ("sft-job-launcher-multinode", "SFTRun", _set("spec.launcher", "Job"), "spec.launcher"),
    ("sft-bad-launcher", "SFTRun", _set("spec.launcher", "MPIJob"), "spec.launcher"),
    ("sft-gpus-17", "SFTRun", _set("spec.resources.gpusPerNode", 17), "spec.resources.gpusPerNode"),
    ("sft-bad-memory", "SFTRun", _set("spec.resources.memory", "lots"), "spec.resources.memory"),
    ("sft-bad-queue-name", "SFTRun", _set("spec.resources.queueName", "Team_A"), "spec.resources.queueName"),
    ("sft-bad-stall-timeout", "SFTRun", _set("spec.failurePolicy", {"stallTimeout": "thirty minutes"}), "spec.failurePolicy.stallTimeout"),
    ("pt-missing-output", "PretrainRun", _del("spec.output"), "spec.output"),
    # --- eval
    ("eval-shots-6", "EvalRun", _set("spec.shots", [0, 6]), "spec.shots"),
    ("eval-preset-and-exams", "EvalRun", _set("spec.exams.exams", ["cmmlu/computer_science"]), "spec.exams"),
    ("eval-bad-preset", "EvalRun", _set("spec.exams.preset", "mmlu"), "spec.exams.preset"),
    ("eval-bad-style", "EvalRun", _set("spec.styles", ["instruct"]), "spec.styles[0]"),
    ("eval-bad-scoring", "EvalRun", _set("spec.scoring", "generate"), "spec.scoring"),
    ("eval-missing-exams", "EvalRun", _del("spec.exams"), "spec.exams"),
    # --- quantize
    ("quant-bits-5", "QuantizeRun", _set("spec.bits", 5), "spec.bits"),
    ("quant-group-100", "QuantizeRun", _set("spec.groupSize", 100), "spec.groupSize"),
    ("quant-llmcompressor-8bit", "QuantizeRun", _both(_set("spec.backend", "llmcompressor"), _set("spec.bits", 8)), "spec.backend"),
    ("quant-bad-method", "QuantizeRun", _set("spec.method", "awq"), "spec.method"),
    ("quant-samples-zero", "QuantizeRun", _set("spec.calibration", {"samples": 0}), "spec.calibration.samples"),
    ("quant-max-drop-text", "QuantizeRun", _set("spec.verification", {"maxAccuracyDrop": "a lot"}), "spec.verification.maxAccuracyDrop"),
    # --- chat
    ("chat-vllm-without-gpu", "ChatDeployment", _set("spec.resources.gpusPerNode", 0), "spec.engine.name"),
    ("chat-bad-engine", "ChatDeployment", _set("spec.engine.name", "ollama"), "spec.engine.name"),
    ("chat-negative-replicas", "ChatDeployment", _set("spec.replicas", -1), "spec.replicas"),
    ("chat-gate-accuracy-2", "ChatDeployment", _set("spec.gate", {"evalRun": "ev", "minAccuracy": "2"}), "spec.gate.minAccuracy"),
    ("chat-auth-secret-missing-key", "ChatDeployment", _set("spec.auth", {"apiKeySecret": {"name": "k"}}), "spec.auth.apiKeySecret.key"),
    ("chat-bad-ui", "ChatDeployment", _set("spec.ui", "yes"), "spec.ui"),
    ("chat-multi-node", "ChatDeployment", _set("spec.resources.nodes", 2), "spec.resources.nodes"),
]


def bad_resource(case) -> dict[str, Any]:
    _id, kind, mutate, _field = case
    obj = base(kind)
    obj["metadata"]["name"] = _id[:63]
    mutate(obj)
    return obj
