"""PretrainRun and SFTRun: continued pretraining and instruction tuning of a causal LM.

Defaults follow the seed (CodeFuse DevOps-Model, ``SEED_SPEC.md`` §1): LoRA rank 8 / alpha 32 /
dropout 0.1, DeepSpeed ZeRO-2 with the optimizer offloaded to CPU, bf16, warmup 5 %.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias, Any, Literal, Optional

from pydantic import Field

from .base import ApiModel, ObjectMeta, Rule
from .common import (
    Artifact,
    CommonStatus,
    DataSpec,
    FailurePolicy,
    Image,
    ModelSource,
    OutputSpec,
    ShortStr,
    Resources,
    TrainingProgress,
    decimal_range,
    root_rules,
)

if TYPE_CHECKING:  # decimal strings with a checked range; to the type checker, strings
    LearningRate: TypeAlias = str
    Fraction: TypeAlias = str
    WeightDecay: TypeAlias = str
    GradNorm: TypeAlias = str
else:
    LearningRate = decimal_range(0, 1, lo_open=True, hi_open=True, example="5e-5", what="a learning rate")
    Fraction = decimal_range(0, 1, hi_open=True, example="0.05", what="a fraction below 1")
    WeightDecay = decimal_range(0, 1, example="0.01")
    #: 0 turns clipping off (as in transformers' Trainer).
    GradNorm = decimal_range(0, 1000, example="1.0")


class LoraSpec(ApiModel):
    """LoRA adapter settings (peft)."""

    rank: int = Field(default=8, ge=1, le=256, description="LoRA rank r (seed: 8).")
    alpha: int = Field(default=32, ge=1, le=1024, description="LoRA alpha; the update is scaled by alpha/rank (seed: 32).")
    dropout: Fraction = Field(default="0.1", description='Dropout on the LoRA input, a fraction below 1 (seed: "0.1").')
    target_modules: Optional[list[ShortStr]] = Field(
        default=None,
        max_length=64,
        description="Module names to adapt. Default per architecture: Qwen-1 c_attn; Qwen2/Qwen3/Llama "
        "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj.",
    )
    merge: bool = Field(
        default=False,
        description="Also write the adapter merged into the base weights (for serving and quantization).",
    )


class FreezeSpec(ApiModel):
    """Freeze all but the last layers (seed: last 3 layers, MLP only)."""

    trainable_layers: int = Field(default=3, ge=1, le=1024, description="Number of last decoder layers to train.")
    trainable_modules: list[ShortStr] = Field(default_factory=lambda: ["mlp"], min_length=1, max_length=16, description="Module names within those layers to train (seed: mlp).")


class FinetuningSpec(ApiModel):
    """Which weights are trained."""

    type: Literal["full", "lora", "freeze"] = Field(default="lora", description="full: all weights; lora: a LoRA adapter; freeze: only the last layers.")
    lora: Optional[LoraSpec] = Field(default=None, description="LoRA settings; only with type: lora (defaults apply when omitted).")
    freeze: Optional[FreezeSpec] = Field(default=None, description="Freeze settings; only with type: freeze.")

    rules = (
        Rule(
            cel="!has(self.lora) || self.type == 'lora'",
            message="lora settings are only allowed with type: lora",
            check=lambda m: m.lora is None or m.type == "lora",
            field=".lora",
        ),
        Rule(
            cel="!has(self.freeze) || self.type == 'freeze'",
            message="freeze settings are only allowed with type: freeze",
            check=lambda m: m.freeze is None or m.type == "freeze",
            field=".freeze",
        ),
    )


class DeepSpeedSpec(ApiModel):
    """DeepSpeed ZeRO settings; the config file is generated from these."""

    zero_stage: int = Field(default=2, ge=0, le=3, description="ZeRO stage 0-3 (seed: 2).")
    offload_optimizer: Literal["none", "cpu"] = Field(default="cpu", description="Where optimizer state lives (seed: cpu, pinned).")
    offload_params: Literal["none", "cpu"] = Field(default="none", description="Offload parameters to CPU (ZeRO-3 only).")

    rules = (
        Rule(
            cel="self.offloadParams == 'none' || self.zeroStage == 3",
            message="offloadParams needs zeroStage 3",
            check=lambda m: m.offload_params == "none" or m.zero_stage == 3,
            field=".offloadParams",
        ),
        Rule(
            cel="self.offloadOptimizer == 'none' || self.zeroStage >= 1",
            message="offloadOptimizer needs zeroStage 1 or higher",
            check=lambda m: m.offload_optimizer == "none" or m.zero_stage >= 1,
            field=".offloadOptimizer",
        ),
    )


class DistributedSpec(ApiModel):
    """How the work is spread over processes."""

    backend: Literal["ddp", "deepspeed"] = Field(default="ddp", description="ddp: plain torch DistributedDataParallel; deepspeed: ZeRO (see deepspeed).")
    deepspeed: Optional[DeepSpeedSpec] = Field(default=None, description="ZeRO settings; only with backend: deepspeed (defaults: the seed's ZeRO-2 + CPU optimizer offload).")

    rules = (
        Rule(
            cel="!has(self.deepspeed) || self.backend == 'deepspeed'",
            message="deepspeed settings are only allowed with backend: deepspeed",
            check=lambda m: m.deepspeed is None or m.backend == "deepspeed",
            field=".deepspeed",
        ),
    )


class TrainingSpec(ApiModel):
    """Hyper-parameters. Numbers that are not integers are strings ("5e-5")."""

    learning_rate: LearningRate = Field(default="5e-5", description='Peak learning rate, e.g. "5e-5".')
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(default="cosine", description="Learning-rate schedule after warmup (seed: cosine).")
    warmup_ratio: Fraction = Field(default="0.05", description='Share of steps spent warming up, below 1 (seed: "0.05").')
    weight_decay: WeightDecay = Field(default="0", description='AdamW weight decay, e.g. "0.01".')
    max_grad_norm: GradNorm = Field(default="1.0", description='Gradient clipping norm; "0" turns clipping off.')
    epochs: Optional[int] = Field(default=None, ge=1, le=1000, description="Passes over the data (ignored when maxSteps is set).")
    max_steps: Optional[int] = Field(default=None, ge=1, le=100_000_000, description="Optimizer steps; takes precedence over epochs.")
    per_device_batch_size: int = Field(default=1, ge=1, le=4096, description="Sequences per device per micro-step.")
    gradient_accumulation_steps: int = Field(default=1, ge=1, le=4096, description="Micro-steps per optimizer step; tokens per step = nodes × gpusPerNode × perDeviceBatchSize × this × maxLength.")
    max_length: int = Field(
        default=2048, ge=16, le=1_048_576,
        description="Tokens per sequence: the block size for pretraining, the packed sequence length for SFT.",
    )
    max_source_length: Optional[int] = Field(default=None, ge=1, le=1_048_576, description="SFT: cap on the prompt tokens of one turn; unset: no cap beyond maxLength (the seed's scripts set 2048).")
    max_target_length: Optional[int] = Field(default=None, ge=1, le=1_048_576, description="SFT: cap on the response tokens of one turn; unset: no cap beyond maxLength (the seed's default is 512).")
    packing: bool = Field(default=True, description="SFT: pack several samples into one sequence without attention across them (no padding).")
    template: Literal["chatml", "default", "auto"] = Field(
        default="chatml",
        description="Prompt template: chatml and default exactly as the seed; auto uses the tokenizer's own chat template.",
    )
    precision: Literal["bf16", "fp16", "fp32"] = Field(default="bf16", description="Training precision (fp32 on CPU regardless).")
    gradient_checkpointing: bool = Field(default=True, description="Recompute activations in the backward pass to save memory (seed: on).")
    seed: int = Field(default=42, ge=0, le=2**31 - 1, description="Random seed (data order, initialisation of LoRA, validation split).")
    save_steps: int = Field(default=500, ge=1, le=100_000_000, description="Save a checkpoint every N steps (also on SIGTERM).")
    save_total_limit: int = Field(default=3, ge=1, le=1000, description="Keep at most this many checkpoints.")
    logging_steps: int = Field(default=10, ge=1, le=100_000, description="Report loss and learning rate every N steps (seed: 10).")
    eval_steps: Optional[int] = Field(default=None, ge=1, le=100_000_000, description="Evaluate on the held-out split every N steps.")

    rules = (
        Rule(
            cel="has(self.epochs) || has(self.maxSteps)",
            message="set epochs or maxSteps",
            check=lambda m: m.epochs is not None or m.max_steps is not None,
        ),
    )


class _RunSpecBase(ApiModel):
    model: ModelSource = Field(description="The model to train.")
    data: DataSpec = Field(description="Training data.")
    training: TrainingSpec = Field(description="Hyper-parameters.")
    finetuning: FinetuningSpec = Field(default_factory=FinetuningSpec, description="Which weights are trained.")
    distributed: DistributedSpec = Field(default_factory=DistributedSpec, description="DDP or DeepSpeed ZeRO.")
    resources: Resources = Field(default_factory=Resources, description="Nodes, GPUs, CPU, memory and scheduling.")
    launcher: Literal["PyTorchJob", "TrainJob", "Job"] = Field(
        default="PyTorchJob",
        description="Child workload: Kubeflow PyTorchJob (default), Kubeflow Trainer v2 TrainJob, or a plain Job (one node).",
    )
    output: OutputSpec = Field(description="Where checkpoints and the final model go.")
    failure_policy: FailurePolicy = Field(default_factory=FailurePolicy, description="Restarts, stall watchdog and resume.")
    image: Optional[Image] = Field(default=None, description="Override the workload image from the operator's configuration.")

    rules = (
        Rule(
            cel="self.launcher != 'Job' || !has(self.resources) || self.resources.nodes == 1",
            message="launcher Job runs on one node; use PyTorchJob or TrainJob for resources.nodes > 1",
            check=lambda m: m.launcher != "Job" or m.resources.nodes == 1,
            field=".launcher",
        ),
    )


class PretrainSpec(_RunSpecBase):
    """Continued pretraining on a text corpus (seed stage pt)."""

    finetuning: FinetuningSpec = Field(
        default_factory=lambda: FinetuningSpec(type="full"),
        description="Which weights are trained (seed pretraining: full).",
    )


class SFTSpec(_RunSpecBase):
    """Instruction tuning on Q&A data (seed stage sft)."""


class RunStatus(CommonStatus):
    """Status of a PretrainRun or SFTRun."""

    progress: Optional[TrainingProgress] = Field(default=None, description="Training progress from the worker.")
    artifact: Optional[Artifact] = Field(default=None, description="The output model, once succeeded.")
    resolved_model: Optional[str] = Field(default=None, description="The model URI after resolving fromRun.")
    children: Optional[list[str]] = Field(default=None, description="kind/name of the objects created for this run.")


class PretrainRun(ApiModel):
    """Continued pretraining of a causal LM on a DevOps corpus."""

    api_version: Literal["devops-model.io/v1alpha1"] = "devops-model.io/v1alpha1"
    kind: Literal["PretrainRun"] = "PretrainRun"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: PretrainSpec
    status: Optional[RunStatus] = None

    rules = root_rules("PretrainRun")


class SFTRun(ApiModel):
    """Supervised fine-tuning (instruction tuning) of a causal LM, full, LoRA or freeze."""

    api_version: Literal["devops-model.io/v1alpha1"] = "devops-model.io/v1alpha1"
    kind: Literal["SFTRun"] = "SFTRun"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: SFTSpec
    status: Optional[RunStatus] = None

    rules = root_rules("SFTRun")
