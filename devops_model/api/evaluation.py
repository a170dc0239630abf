"""EvalRun: multiple-choice exams (CMMLU / C-Eval layout, DevOps-Eval), zero- and few-shot.

The method is the seed's (codefuse-devops-eval, ``SEED_SPEC.md`` §2): its header and answer
format, k-shot from the first k dev rows, the raw logit of the letters A-D at the last position,
micro-averaged accuracy.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field

from .base import ApiModel, ObjectMeta, Rule
from .common import Artifact, CommonStatus, ExamName, Image, ModelSource, Resources, RunName, TrainingProgress, Uri, root_rules

#: The six exams of the seed's table (574 questions): CMMLU test + C-Eval val.
PRESETS: dict[str, list[str]] = {
    "devops-574": [
        "cmmlu/computer_science",
        "cmmlu/computer_security",
        "cmmlu/machine_learning",
        "ceval/computer_network",
        "ceval/college_programming",
        "ceval/computer_architecture",
    ],
}


class ExamSource(ApiModel):
    """Where the exams are and which ones to take."""

    uri: Uri = Field(description="Root folder in the CMMLU/C-Eval layout: ROOT/BENCHMARK/SPLIT/SUBJECT.csv (dev split for shots).")
    layout: Literal["cmmlu", "devopseval"] = Field(default="cmmlu", description="cmmlu: the CMMLU/C-Eval CSV layout; devopseval: the DevOps-Eval layout.")
    preset: Optional[Literal["devops-574"]] = Field(default=None, description="A named set of exams: devops-574 = the six exams of the seed's table.")
    exams: Optional[list[ExamName]] = Field(
        default=None,
        max_length=256,
        description='Exams as BENCHMARK/SUBJECT, e.g. "cmmlu/computer_science". All exams under the root when neither preset nor exams is given.',
    )
    sha1: Optional[str] = Field(default=None, pattern=r"^[0-9a-f]{40}$", max_length=40, description="Expected SHA-1 over the exam files (see results.json), checked before scoring.")

    rules = (
        Rule(
            cel="!(has(self.preset) && has(self.exams))",
            message="set preset or exams, not both",
            check=lambda m: not (m.preset is not None and m.exams is not None),
        ),
    )


class BaselineRef(ApiModel):
    """A model or run to compare the scores with."""

    eval_run: Optional[RunName] = Field(default=None, description="Name of an EvalRun whose scores are the baseline (not this one).")


def _base_style() -> list[Literal["base", "chat"]]:
    return ["base"]


class EvalSpec(ApiModel):
    """An exam evaluation of one model."""

    model: ModelSource = Field(description="The model to evaluate.")
    exams: ExamSource = Field(description="Which exams.")
    shots: list[int] = Field(default_factory=lambda: [0, 5], min_length=1, max_length=6, description="Few-shot settings to run, each 0-5 (seed: 0 and 5).")
    styles: list[Literal["base", "chat"]] = Field(default_factory=_base_style, min_length=1, max_length=2, description="base: raw text; chat: chatml with the seed's system prompt.")
    chat_template: Literal["chatml", "tokenizer"] = Field(default="chatml", description="For style chat: the seed's chatml prompt, or the tokenizer's own chat template.")
    scoring: Literal["seed", "loglikelihood"] = Field(default="seed", description="seed: raw logit of A-D at the last position; loglikelihood: log-likelihood of ' A'..' D' (lm-evaluation-harness).")
    batch_size: int = Field(default=16, ge=1, le=1024, description="Questions per forward pass.")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(default="auto", description="auto: bf16 on GPU, fp32 on CPU.")
    baseline: Optional[BaselineRef] = Field(default=None, description="Report the change against this baseline.")
    output: Optional[Uri] = Field(default=None, description="Where results.json and predictions.jsonl go (default: next to the model, or a local work dir).")
    resources: Resources = Field(default_factory=Resources)
    image: Optional[Image] = Field(default=None, description="Override the workload image from the operator's configuration.")

    rules = (
        Rule(
            cel="!has(self.shots) || self.shots.all(s, s >= 0 && s <= 5)",
            message="each shots value must be between 0 and 5",
            check=lambda m: all(0 <= s <= 5 for s in m.shots),
            field=".shots",
        ),
        Rule(
            cel="!has(self.resources) || self.resources.nodes == 1",
            message="an EvalRun runs on one node",
            check=lambda m: m.resources.nodes == 1,
            field=".resources.nodes",
        ),
    )


class ExamScore(ApiModel):
    """Accuracy on one exam for one shots/style setting."""

    exam: str
    shots: int
    style: str
    correct: int = Field(ge=0)
    total: int = Field(ge=0)
    accuracy: float


class OverallScore(ApiModel):
    """Micro-averaged accuracy over all exams (weighted by question count, as the seed)."""

    shots: int
    style: str
    correct: int = Field(ge=0)
    total: int = Field(ge=0)
    accuracy: float
    delta: Optional[float] = Field(default=None, description="Change against the baseline, in accuracy points.")


class Scores(ApiModel):
    exams: list[ExamScore] = Field(default_factory=list)
    overall: list[OverallScore] = Field(default_factory=list)


class EvalStatus(CommonStatus):
    progress: Optional[TrainingProgress] = Field(default=None, description="Questions scored (step) of totalSteps.")
    scores: Optional[Scores] = None
    summary: Optional[str] = Field(default=None, description='Short score line for printer columns, e.g. "0-shot 61.2% / 5-shot 63.9%".')
    resolved_model: Optional[str] = None
    artifact: Optional[Artifact] = Field(default=None, description="Where results.json and predictions.jsonl are.")
    children: Optional[list[str]] = None


class EvalRun(ApiModel):
    """Exam evaluation of a model: CMMLU/C-Eval-style multiple choice, zero/few-shot."""

    api_version: Literal["devops-model.io/v1alpha1"] = "devops-model.io/v1alpha1"
    kind: Literal["EvalRun"] = "EvalRun"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: EvalSpec
    status: Optional[EvalStatus] = None

    rules = root_rules("EvalRun")
