"""The typed API of the five kinds (group ``devops-model.io``, version ``v1alpha1``).

One source of truth: the CRDs in ``crds/`` are generated from these models
(``devops-model crds --write crds/``), the operator reads resources through them, and the
workloads load the very spec the operator wrote.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import ApiModel, FieldError, ObjectMeta, Resource, Rule
from .chat import ChatDeployment, ChatSpec, ChatStatus
from .evaluation import PRESETS, EvalRun, EvalSpec, EvalStatus
from .quantization import QuantizeRun, QuantizeSpec, QuantizeStatus
from .training import PretrainRun, PretrainSpec, RunStatus, SFTRun, SFTSpec

GROUP = "devops-model.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "devops-model"


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0


@dataclass(frozen=True)
class KindInfo:
    """Everything the CRD generator and the operator need to know about one kind."""

    kind: str
    plural: str
    short_name: str
    model: type[ApiModel]
    columns: tuple[PrinterColumn, ...]
    description: str


_STATE = PrinterColumn("State", ".status.state", description="Summary of the conditions (reason of Succeeded or Ready).")
_AGE = PrinterColumn("Age", ".metadata.creationTimestamp", type="date")
_TRAIN_COLUMNS = (
    _STATE,
    PrinterColumn("Step", ".status.progress.step", type="integer", description="Optimizer step reached."),
    PrinterColumn("Total", ".status.progress.totalSteps", type="integer", description="Total optimizer steps."),
    PrinterColumn("Loss", ".status.progress.loss", type="number", description="Latest training loss."),
    PrinterColumn("Progress", ".status.progress.percent", type="integer", description="Percent done."),
    PrinterColumn("Artifact", ".status.artifact.uri", priority=1),
    _AGE,
)

KINDS: dict[str, KindInfo] = {
    info.kind: info
    for info in (
        KindInfo("PretrainRun", "pretrainruns", "ptr", PretrainRun, _TRAIN_COLUMNS,
                 "Continued pretraining of a causal LM on a text corpus."),
        KindInfo("SFTRun", "sftruns", "sft", SFTRun,
                 (_STATE, PrinterColumn("Type", ".spec.finetuning.type", description="full, lora or freeze."))
                 + _TRAIN_COLUMNS[1:],
                 "Instruction tuning (full, LoRA or freeze) on Q&A data."),
        KindInfo("EvalRun", "evalruns", "evr", EvalRun,
                 (_STATE,
                  PrinterColumn("Scoring", ".spec.scoring", priority=1),
                  PrinterColumn("Scores", ".status.summary", description="Overall accuracy per shots/style."),
                  _AGE),
                 "Multiple-choice exam evaluation (CMMLU/C-Eval layout), zero- and few-shot."),
        KindInfo("QuantizeRun", "quantizeruns", "qr", QuantizeRun,
                 (_STATE,
                  PrinterColumn("Bits", ".spec.bits", type="integer"),
                  PrinterColumn("Ratio", ".status.compressionRatio", type="number", description="Size before / after."),
                  PrinterColumn("PPL", ".status.perplexityAfter", type="number", description="Perplexity after quantization."),
                  _AGE),
                 "GPTQ quantization with verification."),
        KindInfo("ChatDeployment", "chatdeployments", "chat", ChatDeployment,
                 (_STATE,
                  PrinterColumn("Engine", ".spec.engine.name"),
                  PrinterColumn("Ready", ".status.readyReplicas", type="integer"),
                  PrinterColumn("Endpoint", ".status.endpoint.url"),
                  _AGE),
                 "An in-cluster chat service: OpenAI-compatible API and web chat."),
    )
}

__all__ = [
    "API_VERSION", "CATEGORY", "GROUP", "KINDS", "PRESETS", "VERSION",
    "ApiModel", "FieldError", "KindInfo", "ObjectMeta", "PrinterColumn", "Resource", "Rule",
    "ChatDeployment", "ChatSpec", "ChatStatus",
    "EvalRun", "EvalSpec", "EvalStatus",
    "PretrainRun", "PretrainSpec", "QuantizeRun", "QuantizeSpec", "QuantizeStatus",
    "RunStatus", "SFTRun", "SFTSpec",
]
