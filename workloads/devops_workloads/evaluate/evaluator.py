"""One exam evaluation from start to end: load, prompt, score, aggregate, write the results.

    from devops_workloads.evaluate.evaluator import EvalConfig, evaluate
    results = evaluate(EvalConfig(model="/models/qwen", exams_root="../shared/data/exams",
                                  preset="devops-574", shots=[0, 5]), out_dir=Path("out"))

Used by ``devops-model eval`` and by the EvalRun worker (``entry.run``). Writes into ``out_dir``:

* ``results.json``: ``model``, ``exams`` (per exam, shots and style: correct/total/accuracy),
  ``overall`` (micro-averaged per shots and style, weighted by question count as the seed),
  and ``reproducibility`` (prompt version, template, scoring, dtype, device, package versions,
  SHA-1 of every exam file and of all of them together);
* ``predictions.jsonl``: one line per question and setting: ``exam``, ``index`` (0-based row of
  the scored split), ``shots``, ``style``, ``prediction``, ``answer``, ``logits`` (the option
  scores: raw logits in ``seed`` mode, log-likelihoods in ``loglikelihood`` mode).
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..models import prepare_model_dir
from ..models.loading import load_tokenizer, tokenizer_source
from ..progress import ProgressReporter
from .engine import Request, run_fast, run_plain
from .exams import Exam, combined_sha1, data_sha1s, load_exams
from .prompts import PROMPT_VERSION, SYSTEM_PROMPT, encode_prompts, prompt_text, render_body, render_shots
from .scoring import Scorer, pick, seed_letter_ids
from .tokcache import LazyTokenizer, TokenCache, setting_key

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


@dataclass
class EvalConfig:
    """What to evaluate and how (the EvalRun spec, flattened; the CLI builds the same)."""

    model: str
    exams_root: str
    layout: str = "cmmlu"
    preset: str | None = None
    exams: list[str] | None = None
    shots: list[int] = field(default_factory=lambda: [0, 5])
    styles: list[str] = field(default_factory=lambda: ["base"])
    chat_template: str = "chatml"
    scoring: str = "seed"
    batch_size: int = 16
    precision: str = "auto"
    trust_remote_code: bool = False
    #: fast (batched, prefix-cached) or plain (the seed's one-question loop; for checking).
    engine: str = "fast"
    #: Expected combined SHA-1 of the exam files (``spec.exams.sha1``).
    sha1: str | None = None
    #: Shown as results.json "model" (the URI the user gave); defaults to ``model``.
    model_label: str | None = None
    #: Reuse tokenized prompts from the on-disk cache (tokcache.py; DEVOPS_MODEL_EVAL_TOKEN_CACHE=0 also turns it off).
    token_cache: bool = True


def scoring_model(model_dir: Path, precision: str = "auto", trust_remote_code: bool = False,
                  engine: str = "fast") -> tuple[Any, str, str]:
    """(model, dtype name, implementation) for scoring. The fast engine runs a plain Qwen2
    safetensors checkpoint with native.py (the weights read straight from the files, no transformers
    import); everything else, and the plain engine always, loads with the loader serving uses
    (models/loading.py: adapters merged, GPTQ, Qwen-1 converted; bf16 on GPU, fp32 on CPU). The
    implementation names the one used and, for transformers under the fast engine, why the native
    one did not apply."""
    from ..models.loading import load_causal_lm

    why = "the plain engine is the reference loop"
    if engine == "fast":
        from .native import NATIVE, load_native

        native, why_not = load_native(model_dir, precision)
        if native is not None:
            return native, str(native.dtype).removeprefix("torch."), NATIVE
        why = why_not or "not applicable"
    model, _ = load_causal_lm(model_dir, dtype=precision, trust_remote_code=trust_remote_code, tokenizer=False)
    return model, str(model.dtype).removeprefix("torch."), f"transformers ({why})"


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("devops-model", "torch", "transformers", "tokenizers", "safetensors", "peft"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


@dataclass
class _Item:
    exam: Exam
    shots: int
    style: str
    q_index: int
    text: str
    requests: list[int]


def build_items(exams: list[Exam], tokenizer: Any, scorer: Scorer, shots: list[int], styles: list[str],
                chat_template: str, cache: TokenCache | None = None,
                exam_sha1s: dict[str, list[str]] | None = None) -> tuple[list[_Item], list[Request]]:
    """Every (exam, shots, style, question) with the forward requests it needs. With ``cache``
    (and ``exam_sha1s``: each exam's file SHA-1s) a setting tokenized before is read back instead."""
    items: list[_Item] = []
    requests: list[Request] = []
    for exam in exams:
        for k in shots:
            dev = exam.dev[:k]
            prefix = render_shots(dev)
            bodies = [render_body(q) for q in exam.questions]
            for style in styles:
                group = (exam.name, k, style)
                key = all_ids = None
                if cache is not None:
                    key = setting_key(cache.tokenizer, (exam_sha1s or {}).get(exam.name, []), PROMPT_VERSION, k, style,
                                      chat_template, [prefix, *bodies])
                    all_ids = cache.get(key, len(bodies))
                if all_ids is None:
                    # The few-shot block tokenized once per setting, the questions in one call (same
                    # ids as tokenizing each whole prompt: prompts.encode_queries checks the seam).
                    all_ids, _shared = encode_prompts(tokenizer, prefix, bodies, style, chat_template)
                    if cache is not None and key is not None:
                        cache.put(key, all_ids, exam=exam.name, shots=k, style=style, chatTemplate=chat_template)
                for qi, (q, body, ids) in enumerate(zip(exam.questions, bodies, all_ids)):
                    query = prefix + body
                    text = prompt_text(tokenizer, query, style, chat_template)
                    reqs = scorer.requests(ids, text, list(q.options), group)
                    items.append(_Item(exam, k, style, qi, text, list(range(len(requests), len(requests) + len(reqs)))))
                    requests.extend(reqs)
    return items, requests


def aggregate(predictions: list[dict[str, Any]], exam_order: list[str], shots: list[int], styles: list[str]) -> tuple[list[dict], list[dict]]:
    """Per-exam and overall (micro) accuracy per shots/style, in the order of the settings."""
    per: dict[tuple[str, int, str], list[int]] = {}
    for p in predictions:
        c = per.setdefault((p["exam"], p["shots"], p["style"]), [0, 0])
        c[0] += p["prediction"] == p["answer"]
        c[1] += 1
    exams_out, overall = [], []
    for k in shots:
        for style in styles:
            tc = tt = 0
            for name in exam_order:
                correct, total = per.get((name, k, style), (0, 0))
                exams_out.append({"exam": name, "shots": k, "style": style, "correct": correct, "total": total,
                                  "accuracy": round(correct / total, 6) if total else 0.0})
                tc, tt = tc + correct, tt + total
            overall.append({"shots": k, "style": style, "correct": tc, "total": tt, "accuracy": round(tc / tt, 6) if tt else 0.0})
    return exams_out, overall


def evaluate(cfg: EvalConfig, out_dir: Path, model_path: Path | None = None, progress_bar: bool | None = None) -> dict[str, Any]:
    """Run the evaluation and write results.json + predictions.jsonl into ``out_dir``."""
    from .exams import ExamError

    started = time.time()
    root = Path(cfg.exams_root)
    exams = load_exams(root, cfg.layout, cfg.preset, cfg.exams, max_shots=max(cfg.shots))
    sha1s = data_sha1s(exams, root)
    combined = combined_sha1(sha1s)
    if cfg.sha1 and cfg.sha1 != combined:
        raise ExamError(f"spec.exams.sha1: the exam files under {root} hash to {combined}, not {cfg.sha1}; "
                        "the data changed (see results.json reproducibility.data.files of the earlier run) or the sha1 is wrong")
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)} (got {cfg.precision!r})")
    model_dir = prepare_model_dir(Path(model_path or cfg.model))  # a Qwen-1 folder: its converted copy
    t_tok = time.time()
    # Loaded on first use only: with every prompt's ids in the token cache, never.
    tokenizer = LazyTokenizer(lambda: load_tokenizer(model_dir, trust_remote_code=cfg.trust_remote_code))
    cache = TokenCache.open(tokenizer_source(model_dir), cfg.trust_remote_code) if cfg.token_cache else None
    letter_ids = cache.letter_ids(lambda: seed_letter_ids(tokenizer)) if cache else None
    scorer = Scorer(tokenizer, cfg.scoring, letter_ids=letter_ids)
    exam_sha1s = {e.name: [sha1s[p.relative_to(root).as_posix()] for p in e.files()] for e in exams}
    items, requests = build_items(exams, tokenizer, scorer, cfg.shots, cfg.styles, cfg.chat_template, cache, exam_sha1s)
    t_model = time.time()
    model, dtype, implementation = scoring_model(model_dir, cfg.precision, cfg.trust_remote_code, cfg.engine)
    t_loaded = time.time()

    logits_of: list[Any] = [None] * len(requests)
    # The fast engine applies only the head rows scoring reads (seed: A..D) and hands over just those.
    narrow = cfg.engine == "fast" and scorer.columns is not None
    first_scored: list[float] = []

    def keep(i: int, rows: Any) -> None:
        # Keep only what scoring needs (a few floats), not a 151k-wide row per question.
        if not first_scored:
            first_scored.append(time.time())
        logits_of[i] = scorer.reduce(rows, narrow=narrow)

    out_dir.mkdir(parents=True, exist_ok=True)
    reporter = ProgressReporter(out_dir, "exam questions", total=len(requests), unit="q", enable_bar=progress_bar)
    t0 = time.time()
    stats: dict[str, int] = {}
    try:
        if cfg.engine == "plain":
            run_plain(model, requests, keep, progress=lambda n: reporter.update(advance=n))
        elif cfg.engine == "fast":
            stats = run_fast(model, requests, keep, cfg.batch_size, progress=lambda n: reporter.update(advance=n),
                             columns=scorer.columns if narrow else None)
        else:
            raise ValueError(f"engine must be fast or plain (got {cfg.engine!r})")
    finally:
        reporter.close()
    scoring_seconds = time.time() - t0

    predictions = []
    for it in items:
        q = it.exam.questions[it.q_index]
        letters = list(q.options)
        scores = scorer.scores(it.text, letters, [logits_of[r] for r in it.requests])
        predictions.append({"exam": it.exam.name, "index": q.index, "shots": it.shots, "style": it.style,
                            "prediction": pick(scores), "answer": q.answer, "logits": scores})
    exams_out, overall = aggregate(predictions, [e.name for e in exams], cfg.shots, cfg.styles)

    chat_desc = None
    if "chat" in cfg.styles:
        chat_desc = (f"chatml, system prompt {SYSTEM_PROMPT!r} (the seed's QwenChatContextBuilder)"
                     if cfg.chat_template == "chatml" else f"the tokenizer's chat template: {tokenizer.chat_template}")
    results = {
        "model": cfg.model_label or str(cfg.model),
        "exams": exams_out,
        "overall": overall,
        "reproducibility": {
            "promptVersion": PROMPT_VERSION,
            "styles": cfg.styles,
            "shots": cfg.shots,
            "template": chat_desc or "none (base: raw text, tokenizer.encode(query))",
            "chatTemplate": cfg.chat_template,
            "scoring": cfg.scoring,
            "scoringDetail": ("raw logit of the single tokens A..D at the last position, ties to the earlier letter"
                              if cfg.scoring == "seed" else
                              "log-likelihood of ' A'..' D' as lm-evaluation-harness multiple_choice"),
            "letterTokenIds": scorer.letter_ids,
            "dtype": dtype,
            "device": str(next(model.parameters()).device),
            "engine": cfg.engine,
            "modelImplementation": implementation,
            "batchSize": cfg.batch_size,
            "packages": package_versions(),
            "data": {"root": str(root), "layout": cfg.layout, "preset": cfg.preset,
                     "splits": {e.name: e.split for e in exams}, "files": sha1s, "sha1": combined},
        },
        "timing": {
            "seconds": round(time.time() - started, 3),
            # from the start of evaluate() (the process's imports not included) to the first answer scored
            "firstScoredSeconds": round(first_scored[0] - started, 3) if first_scored else None,
            # reading the exams' prompts into token ids (tokenizer load included when it was needed)
            "tokenizeSeconds": round(t_model - t_tok, 3),
            "modelLoadSeconds": round(t_loaded - t_model, 3),
            "scoringSeconds": round(scoring_seconds, 3),
            "tokenCache": ({"hits": cache.hits, "misses": cache.misses, "dir": str(cache.root)} if cache
                           else "off"),
            "tokenizerLoaded": tokenizer.loaded,
            "questions": len(items),
            "questionsPerSecond": round(len(items) / scoring_seconds, 3) if scoring_seconds > 0 else None,
            **stats,
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    with open(out_dir / "predictions.jsonl", "w", encoding="utf-8") as fh:
        for p in predictions:
            fh.write(json.dumps(p, ensure_ascii=False) + "\n")
    return results
