"""QuantizeRun's workload: GPTQ, then proof that the quantized model still works.

    devops-model run -f examples/local/quantize.yaml          # the resource (locally or in a pod)
    devops-model quantize --model DIR --out DIR --bits 4 --group-size 128 --calibration URI

Steps (each a step of the progress bar and of ``status.progress``):

1. calibration data: ``spec.calibration.datasets``, or the parent SFTRun's ``spec.data``; rendered with
   the chat template, ``samples`` rows of at least ``minLength`` tokens, plus disjoint held-out rows;
2. perplexity of the original model on the held-out text;
3. GPTQ with GPTQModel (``bits``, ``groupSize``, ``symmetric``, ``actOrder``, ``dampPercent``);
4. perplexity of the quantized checkpoint, loaded as users load it (``AutoModelForCausalLM``);
5. optionally the exams (``verification.exams``) on both models;
6. ``artifact.json`` and ``quantize.json`` (all figures) in the output folder.

A quantized model whose perplexity rose more than ``verification.maxPerplexityIncrease`` (relative)
or whose accuracy dropped more than ``verification.maxAccuracyDrop`` fails the run with reason
``VerificationFailed`` and both numbers in the message; the checkpoint stays for inspection.
"""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path
from typing import Any

from devops_model.api.common import decimal_value
from devops_model.api.quantization import QuantizeStatus
from devops_model.contract import ExitCode, Reason, State
from devops_model.uris import UriError, local_path

from ..runner import RunContext, WorkloadError
from .calibration import build_calibration, collect_texts, read_text_uri, resolve_datasets
from .gptq import GptqSettings, configure_environment, quantize_gptq
from .measure import checkpoint_bytes, linear_bytes, load_for_eval, perplexity

#: Held-out rows (disjoint from calibration) used for perplexity when no perplexityText is given.
HELDOUT_ROWS = 32
STEPS = ("calibration data", "perplexity before", "quantize", "perplexity after", "exams", "write")


def output_dir(uri: str) -> Path:
    try:
        return local_path(uri)
    except UriError as exc:
        raise WorkloadError(f"spec.output.uri: {exc}; quantized models are written to pvc:// (cluster) "
                            "or file:// (local)", reason=Reason.BAD_OUTPUT, exit_code=ExitCode.BAD_INPUT) from None


def calibration_sources(spec: Any, parent: dict[str, Any] | None):
    """(datasets, registry, field path) of the calibration data, defaulting to the parent SFT data."""
    cal = spec.calibration
    if cal.datasets:
        return cal.datasets, cal.registry, "spec.calibration"
    if parent and parent.get("kind") == "SFTRun" and (parent.get("spec") or {}).get("data"):
        data = parent["spec"]["data"]
        return data["datasets"], data.get("registry"), f"SFTRun/{parent['metadata']['name']} spec.data"
    origin = f"{parent.get('kind')}/{parent['metadata']['name']}" if parent else "a model URI"
    raise WorkloadError(
        f"spec.calibration.datasets: no calibration data. The default (the parent SFTRun's spec.data) "
        f"applies only when spec.model.fromRun is an SFTRun, and this model comes from {origin}; "
        "set spec.calibration.datasets, e.g. [{uri: file:///data/devops-chat.jsonl}]",
        reason=Reason.BAD_DATA, exit_code=ExitCode.BAD_INPUT)


def exam_accuracy(model_dir: Path, exams: Any, shots: int, out_dir: Path, trust_remote_code: bool = False) -> float:
    """Micro-averaged exam accuracy of one model, with the EvalRun workload's own evaluator (the
    seed's prompt and scoring); its results.json and predictions.jsonl land in ``out_dir``."""
    try:
        from ..evaluate.evaluator import EvalConfig, evaluate
    except ImportError as exc:
        raise WorkloadError(f"spec.verification.exams needs the eval workload (devops_workloads.evaluate): {exc}",
                            reason=Reason.MISSING_DEPENDENCY) from exc
    if not exams.uri.startswith(("pvc://", "file://")):
        raise WorkloadError(f"spec.verification.exams.uri: {exams.uri} must be a pvc:// or file:// folder",
                            reason=Reason.BAD_EXAM_DATA, exit_code=ExitCode.BAD_INPUT)
    cfg = EvalConfig(model=str(model_dir), exams_root=str(local_path(exams.uri)), layout=exams.layout,
                     preset=exams.preset, exams=list(exams.exams) if exams.exams else None, shots=[shots],
                     styles=["base"], trust_remote_code=trust_remote_code, sha1=exams.sha1)
    results = evaluate(cfg, out_dir)
    return float(results["overall"][0]["accuracy"])


def verify(figures: dict[str, Any], verification: Any) -> list[str]:
    """Messages for every check that failed (empty: the quantized model passed)."""
    failed = []
    before, after = figures.get("perplexityBefore"), figures.get("perplexityAfter")
    limit = decimal_value(verification.max_perplexity_increase)
    if before is not None and after is not None:
        rise = after / before - 1.0
        if rise > limit:
            failed.append(f"perplexity rose from {before:.4f} to {after:.4f} (+{rise:.2%}), more than "
                          f"spec.verification.maxPerplexityIncrease {verification.max_perplexity_increase} "
                          f"(+{limit:.2%})")
    acc_b, acc_a = figures.get("accuracyBefore"), figures.get("accuracyAfter")
    drop_limit = decimal_value(verification.max_accuracy_drop)
    if acc_b is not None and acc_a is not None and acc_b - acc_a > drop_limit:
        failed.append(f"exam accuracy dropped from {acc_b:.4f} to {acc_a:.4f} ({acc_b - acc_a:.4f}), more than "
                      f"spec.verification.maxAccuracyDrop {verification.max_accuracy_drop}")
    return failed


def _free(*objs: Any) -> None:
    del objs
    gc.collect()


def run(ctx: RunContext) -> QuantizeStatus:
    configure_environment()
    from transformers import AutoTokenizer

    from ..progress import ProgressReporter
    from ..sources import materialize_model

    res = ctx.resource
    spec = res.spec
    if spec.backend != "gptqmodel":
        # llm-compressor pins an older transformers than this image has, so it needs its own
        # environment; until that image exists, say so instead of quantizing differently.
        raise WorkloadError("spec.backend: llmcompressor is not available in this workload image; "
                            "use backend: gptqmodel (the gptq format that vLLM and TGI load)",
                            reason=Reason.UNSUPPORTED_BACKEND, exit_code=ExitCode.BAD_INPUT)
    trust = spec.model.trust_remote_code
    model_uri = ctx.resolved_model or spec.model.uri
    model_dir = materialize_model(model_uri)
    out_dir = output_dir(spec.output.uri)
    if out_dir.resolve() == model_dir.resolve():
        raise WorkloadError("spec.output.uri: must differ from the model's folder (the original is kept for comparison)",
                            reason=Reason.BAD_OUTPUT, exit_code=ExitCode.BAD_INPUT)
    out_dir.mkdir(parents=True, exist_ok=True)
    verification = spec.verification
    progress = ProgressReporter(out_dir, f"quantize {ctx.name}", total=len(STEPS))
    figures: dict[str, Any] = {}
    t_start = time.time()

    # 1. calibration data
    tok = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust)
    datasets, registry, field = calibration_sources(spec, ctx.parent)
    sources = resolve_datasets(datasets, registry, field)
    texts = collect_texts(sources, tok, spec.calibration.apply_chat_template, field)
    want_heldout = HELDOUT_ROWS if verification is not None and verification.perplexity_text is None else 0
    cal = build_calibration(texts, tok, spec.calibration.samples, spec.calibration.min_length,
                            spec.calibration.max_length, want_heldout, field, [s.label for s in sources])
    heldout = cal.heldout
    if verification is not None and verification.perplexity_text:
        heldout = read_text_uri(verification.perplexity_text, "spec.verification.perplexityText")
    progress.update(step=1, stage=STEPS[0], samples=len(cal.samples), tokens=cal.tokens)

    # 2. perplexity of the original
    if verification is not None:
        model, _ = load_for_eval(model_dir, trust)
        figures["perplexityBefore"] = round(perplexity(model, tok, heldout), 4)
        _free(model)
    progress.update(step=2, stage=STEPS[1])

    # 3. GPTQ
    settings = GptqSettings(bits=spec.bits, group_size=spec.group_size, sym=spec.symmetric,
                            desc_act=spec.act_order, damp_percent=decimal_value(spec.damp_percent))
    timings = quantize_gptq(model_dir, out_dir, cal.samples, settings, trust_remote_code=trust,
                            log_dir=Path(ctx.workdir) / "gptq-logs")
    progress.update(step=3, stage=STEPS[2], seconds=timings["quantizeSeconds"])

    # 4. perplexity of the checkpoint as users load it
    if verification is not None:
        qmodel, _ = load_for_eval(out_dir, trust)
        figures["perplexityAfter"] = round(perplexity(qmodel, tok, heldout), 4)
        _free(qmodel)
    progress.update(step=4, stage=STEPS[3])

    # 5. exams on both models
    if verification is not None and verification.exams is not None:
        exams_dir = Path(ctx.workdir) / "verification-exams"
        figures["accuracyBefore"] = exam_accuracy(model_dir, verification.exams, verification.shots,
                                                  exams_dir / "before", trust)
        figures["accuracyAfter"] = exam_accuracy(out_dir, verification.exams, verification.shots,
                                                 exams_dir / "after", trust)
    progress.update(step=5, stage=STEPS[4])

    # 6. sizes, artifact, report
    size_before, size_after = checkpoint_bytes(model_dir), checkpoint_bytes(out_dir)
    lin_before, lin_after, n_layers = linear_bytes(model_dir, out_dir)
    parent_ref = spec.model.from_run
    parent_name = f"{parent_ref.kind}/{parent_ref.name}" if parent_ref else None
    template = ((ctx.parent or {}).get("status") or {}).get("artifact", {}).get("template")
    artifact = {"uri": spec.output.uri, "format": "gptq", "baseModel": model_uri, "parent": parent_name}
    if template:
        artifact["template"] = template
    figures.update(
        sizeBeforeBytes=size_before,
        sizeAfterBytes=size_after,
        compressionRatio=round(size_before / size_after, 3) if size_after else None,
    )
    report = {
        **figures,
        "linearBytesBefore": lin_before,
        "linearBytesAfter": lin_after,
        "linearRatio": round(lin_after / lin_before, 4) if lin_before else None,
        "quantizedLayers": n_layers,
        "bits": spec.bits, "groupSize": spec.group_size, "symmetric": spec.symmetric, "actOrder": spec.act_order,
        "calibration": {"sources": cal.sources, "samples": len(cal.samples), "tokens": cal.tokens,
                        "skippedShort": cal.skipped_short, "heldoutTexts": len(heldout)},
        "timings": timings,
        "totalSeconds": round(time.time() - t_start, 1),
        "artifact": artifact,
    }
    (out_dir / "artifact.json").write_text(json.dumps(artifact, indent=2, ensure_ascii=False) + "\n")
    (out_dir / "quantize.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    progress.update(step=6, stage=STEPS[5])
    progress.close()

    ppl = (f", perplexity {figures['perplexityBefore']:.3f} → {figures['perplexityAfter']:.3f}"
           if "perplexityAfter" in figures else "")
    acc = (f", accuracy {figures['accuracyBefore']:.4f} → {figures['accuracyAfter']:.4f}"
           if "accuracyAfter" in figures else "")
    summary = (f"GPTQ {spec.bits}-bit g{spec.group_size}: {size_before / 2**20:.1f} MiB → {size_after / 2**20:.1f} MiB "
               f"(×{figures['compressionRatio']}; quantized layers {report['linearRatio']:.1%} of their size){ppl}{acc}")
    if verification is not None:
        failed = verify(figures, verification)
        if failed:
            raise WorkloadError("verification failed: " + "; ".join(failed) + f". The checkpoint is kept at "
                                f"{spec.output.uri} for inspection; loosen the limit or calibrate with more data "
                                "(spec.calibration.samples) or more bits.", reason=Reason.VERIFICATION_FAILED)
    # The runner starts the status at Running; a workload that finished says so itself.
    return QuantizeStatus.model_validate({"state": State.SUCCEEDED.value, **figures, "artifact": artifact,
                                          "message": summary})
