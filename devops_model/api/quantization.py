"""QuantizeRun: GPTQ weight-only quantization, then verification that the model still works."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias, Any, Literal, Optional

from pydantic import Field

from .base import ApiModel, ObjectMeta, Rule
from .common import (
    Artifact,
    CommonStatus,
    DatasetRef,
    Image,
    ModelSource,
    OutputSpec,
    Resources,
    TrainingProgress,
    Uri,
    decimal_range,
    root_rules,
)

#: GPTQ's Hessian dampening, a share of the mean diagonal: GPTQModel refuses values outside (0, 1].
if TYPE_CHECKING:  # decimal strings with a checked range; to the type checker, strings
    DampPercent: TypeAlias = str
    PerplexityIncrease: TypeAlias = str
    AccuracyDrop: TypeAlias = str
else:
    DampPercent = decimal_range(0, 1, lo_open=True, example="0.01")
    PerplexityIncrease = decimal_range(0, 100, example="0.25")
    AccuracyDrop = decimal_range(0, 1, example="0.05")
from .evaluation import ExamSource


class CalibrationSpec(ApiModel):
    """Calibration data. Default: the SFT data of the parent run when the model comes fromRun an
    SFTRun (Chinese calibration data matters for Chinese models)."""

    registry: Optional[Uri] = Field(default=None, description="Folder with a dataset_info.json, for datasets given by name.")
    datasets: Optional[list[DatasetRef]] = Field(default=None, max_length=16, description="Calibration datasets; the parent SFT run's data when omitted.")
    samples: int = Field(default=128, ge=1, le=100_000, description="Number of calibration samples.")
    min_length: int = Field(default=32, ge=1, le=1_048_576, description="Skip samples shorter than this many tokens.")
    max_length: int = Field(default=2048, ge=16, le=1_048_576, description="Cut samples to this many tokens.")
    apply_chat_template: bool = Field(default=True, description="Render conversational samples with the chat template first.")

    rules = (
        Rule(
            cel="self.minLength <= self.maxLength",
            message="minLength must not exceed maxLength (no sample could be used)",
            check=lambda m: m.min_length <= m.max_length,
            field=".minLength",
        ),
    )


class VerificationSpec(ApiModel):
    """Checks after quantization; a failed check fails the run with the numbers in its message."""

    perplexity_text: Optional[Uri] = Field(default=None, description="Held-out text for perplexity before/after (default: a held-out part of the calibration data).")
    max_perplexity_increase: PerplexityIncrease = Field(default="0.25", description='Allowed relative perplexity increase, e.g. "0.25" = +25 %.')
    exams: Optional[ExamSource] = Field(default=None, description="Also evaluate both models on these exams.")
    shots: int = Field(default=0, ge=0, le=5, description="Few-shot setting of the verification exam.")
    max_accuracy_drop: AccuracyDrop = Field(default="0.05", description='Allowed accuracy drop in points of accuracy (0-1), e.g. "0.05".')


class QuantizeSpec(ApiModel):
    """GPTQ quantization settings."""

    model: ModelSource = Field(description="The model to quantize (LoRA runs: the merged model is used).")
    method: Literal["gptq"] = Field(default="gptq", description="Quantization algorithm.")
    backend: Literal["gptqmodel", "llmcompressor"] = Field(default="gptqmodel", description="Implementation: GPTQModel (gptq format) or llm-compressor (compressed-tensors W4A16).")
    bits: int = Field(default=4, description="Weight bits: 3, 4 or 8.")
    group_size: int = Field(default=128, description="Columns sharing one scale: -1 (per channel), 32, 64 or 128.")
    symmetric: bool = Field(default=True, description="Symmetric quantization (no zero point); what vLLM's fast kernels expect.")
    act_order: bool = Field(default=False, description="Quantize columns in order of activation size (desc_act); better accuracy, slower kernels.")
    damp_percent: DampPercent = Field(default="0.01", description='Hessian dampening as a share of the mean diagonal, in (0, 1], e.g. "0.01".')
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    verification: Optional[VerificationSpec] = Field(default_factory=VerificationSpec, description="Checks after quantization.")
    output: OutputSpec
    resources: Resources = Field(default_factory=Resources)
    image: Optional[Image] = Field(default=None, description="Override the workload image from the operator's configuration.")

    rules = (
        Rule(
            cel="self.bits in [3, 4, 8]",
            message="bits must be 3, 4 or 8",
            check=lambda m: m.bits in (3, 4, 8),
            field=".bits",
        ),
        Rule(
            cel="self.groupSize in [-1, 32, 64, 128]",
            message="groupSize must be -1, 32, 64 or 128",
            check=lambda m: m.group_size in (-1, 32, 64, 128),
            field=".groupSize",
        ),
        Rule(
            cel="self.backend != 'llmcompressor' || self.bits == 4",
            message="the llmcompressor backend supports bits: 4 (W4A16) only",
            check=lambda m: m.backend != "llmcompressor" or m.bits == 4,
            field=".backend",
        ),
    )


class QuantizeStatus(CommonStatus):
    progress: Optional[TrainingProgress] = Field(default=None, description="Layers quantized (step) of totalSteps.")
    artifact: Optional[Artifact] = None
    resolved_model: Optional[str] = None
    size_before_bytes: Optional[int] = None
    size_after_bytes: Optional[int] = None
    compression_ratio: Optional[float] = None
    perplexity_before: Optional[float] = None
    perplexity_after: Optional[float] = None
    accuracy_before: Optional[float] = None
    accuracy_after: Optional[float] = None
    children: Optional[list[str]] = None


class QuantizeRun(ApiModel):
    """GPTQ int4 (or 3/8-bit) quantization with verification."""

    api_version: Literal["devops-model.io/v1alpha1"] = "devops-model.io/v1alpha1"
    kind: Literal["QuantizeRun"] = "QuantizeRun"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: QuantizeSpec
    status: Optional[QuantizeStatus] = None

    rules = root_rules("QuantizeRun")
