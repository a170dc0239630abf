"""The EvalRun worker: ``devops-model run -f examples/local/eval.yaml`` (locally) or the Job's
``python -m devops_workloads.runner -f /etc/devops-model/resource.yaml`` (in a pod).

Reads ``spec`` (model, exams, shots, styles, chatTemplate, scoring, batchSize, precision), runs
:func:`evaluator.evaluate`, writes ``results.json``, ``predictions.jsonl`` and ``artifact.json``
(format ``eval-results``) into ``spec.output`` (default: the run's work dir), and returns the
status fields: ``scores`` (per exam and overall, per shots/style), ``summary`` for the printer
column, ``artifact``, and with ``spec.baseline.evalRun`` the change against that run's overall
scores (``overall[].delta``, in accuracy points), read from the run registry
(``$DEVOPS_MODEL_HOME/runs/evalrun/<name>.json``). A baseline that has not run is noted in the
message, not an error: the scores are still worth having. (In a pod there is no registry: the
operator adds the deltas from the baseline EvalRun's status.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from devops_model.api.evaluation import EvalSpec, EvalStatus
from devops_model.contract import ExitCode, Reason, State
from devops_model.registry import read_entry
from devops_model.scores import summary_line, with_deltas
from devops_model.uris import local_path

from ..runner import RunContext, WorkloadError
from .evaluator import EvalConfig, evaluate

FORMAT = "eval-results"


def output_dir(ctx: RunContext) -> tuple[Path, str]:
    """(local directory, URI) where the results go."""
    spec = ctx.resource.spec
    if spec.output:
        return local_path(spec.output), spec.output
    path = (ctx.workdir / "results").resolve()
    return path, f"file://{path}"


def baseline_overall(ctx: RunContext) -> tuple[list[dict[str, Any]] | None, str | None]:
    """(the baseline EvalRun's overall scores, a note when they could not be had)."""
    ref = ctx.resource.spec.baseline
    if ref is None or not ref.eval_run:
        return None, None
    name = ref.eval_run
    entry = read_entry("EvalRun", name)
    status = entry.get("status") if entry else None
    if not status:
        return None, f"baseline EvalRun/{name} has not run here; no change is reported"
    overall = (status.get("scores") or {}).get("overall")
    if not overall:
        return None, f"baseline EvalRun/{name} has no scores (state {status.get('state')!r}); no change is reported"
    return overall, None


def config_from_spec(spec: EvalSpec, model_path: Path, model_label: str | None, *, engine: str = "fast",
                     chat_template: str | None = None) -> EvalConfig:
    """The evaluator's configuration from an EvalRun's spec: the one place its defaults come from
    (``devops-model eval`` builds an EvalRun from its flags and comes through here too)."""
    ex = spec.exams
    return EvalConfig(
        model=str(model_path),
        model_label=model_label or spec.model.uri or str(model_path),
        exams_root=str(local_path(ex.uri)),
        layout=ex.layout,
        preset=ex.preset,
        exams=list(ex.exams) if ex.exams else None,
        shots=list(spec.shots),
        styles=list(spec.styles),
        chat_template=chat_template or spec.chat_template,
        scoring=spec.scoring,
        batch_size=spec.batch_size,
        precision=spec.precision,
        trust_remote_code=spec.model.trust_remote_code,
        sha1=ex.sha1,
        engine=engine,
    )


def _chat_template(ctx: RunContext, asked: str) -> str:
    """Chat style follows the run: a model tuned with the seed's ``default`` template is prompted
    with it (its tokenizer carries it, conventions.py), not with chatml it never saw."""
    trained = (((ctx.parent or {}).get("status") or {}).get("artifact") or {}).get("template")
    if asked == "chatml" and trained == "default":
        print("note: the model was tuned with template default; chat style uses it (the tokenizer's chat template)", flush=True)
        return "tokenizer"
    return asked


def run(ctx: RunContext) -> EvalStatus:
    from ..sources import materialize_model

    spec = ctx.resource.spec
    model_uri = ctx.resolved_model or spec.model.uri
    if not model_uri:
        raise WorkloadError("spec.model: no model to evaluate (set uri or fromRun)", reason=Reason.INVALID_MODEL_SOURCE, exit_code=ExitCode.BAD_INPUT)
    if spec.exams.uri.startswith(("hf://", "modelscope://", "s3://")):
        raise WorkloadError(f"spec.exams.uri: {spec.exams.uri} must be a pvc:// or file:// folder; copy the exams to a claim first",
                            reason=Reason.BAD_EXAM_DATA, exit_code=ExitCode.BAD_INPUT)
    model_path = materialize_model(model_uri)
    out_path, out_uri = output_dir(ctx)
    cfg = config_from_spec(spec, model_path, ctx.resolved_model or spec.model.uri,
                           chat_template=_chat_template(ctx, spec.chat_template))
    print(f"EvalRun/{ctx.name}: model {model_uri}, exams {spec.exams.uri} "
          f"({spec.exams.preset or ', '.join(spec.exams.exams or []) or 'all'}), shots {cfg.shots}, styles {cfg.styles}, "
          f"scoring {cfg.scoring} -> {out_uri}", flush=True)
    try:
        results = evaluate(cfg, out_path)
    except ValueError as exc:  # bad style/template for this tokenizer and the like
        raise WorkloadError(f"spec: {exc}", reason=Reason.BAD_SPEC, exit_code=ExitCode.BAD_INPUT) from None
    baseline, note = baseline_overall(ctx)
    overall = with_deltas(results["overall"], baseline)
    artifact = {"uri": out_uri, "format": FORMAT, "baseModel": model_uri}
    if spec.model.from_run is not None:
        artifact["parent"] = f"{spec.model.from_run.kind}/{spec.model.from_run.name}"
    (out_path / "artifact.json").write_text(json.dumps(artifact, indent=2) + "\n", encoding="utf-8")
    if baseline:
        data = json.loads((out_path / "results.json").read_text(encoding="utf-8"))
        data["overall"] = overall
        data["baseline"] = {"evalRun": spec.baseline.eval_run, "overall": baseline}
        (out_path / "results.json").write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    timing = results["timing"]
    message = f"{timing['questions']} questions scored in {timing['scoringSeconds']:.1f}s"
    return EvalStatus.model_validate({
        "state": State.SUCCEEDED.value,
        "scores": {"exams": results["exams"], "overall": overall},
        "summary": summary_line(overall),
        "artifact": artifact,
        "message": message + (f"; {note}" if note else ""),
    })
