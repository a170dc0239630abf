"""Exams as a user runs them: `devops-model eval` as a whole process vs the loops a user would write.

    .venv/bin/python bench/eval_process.py           # writes bench/results/eval_process.json (~5 min on 2 cores)

Same machine, same run, the tiny Qwen2 model with the real Qwen tokenizer (151k vocabulary, built
offline), the seed's six exams (``../shared/data/exams``, preset devops-574) at 0 and 5 shots,
base style, seed scoring (the raw logit of A..D at the last position): 1,148 scored prompts.
Each contender is a fresh process, timed from its start to its exit (imports, model load, data,
prompting, scoring and writing included), one after the other, ``--rounds`` times interleaved;
the best round of each counts:

* ours: ``devops-model eval --preset devops-574 --shots 0,5`` (batched, prefix-KV-cached, only the
  A..D rows of the output head; the tokenized exams cached on disk and the plain Qwen2 checkpoint
  run without transformers' model code, docs/evaluation.md). Its token cache is a fresh folder of
  this run, so round 1 tokenizes (what a first evaluation of these exams costs) and later rounds
  reuse it (every evaluation after that); both are reported;
* the careful loop: the script below a careful user writes: the same prompt text, one question per
  forward pass, ``logits_to_keep=1`` so the 151k-wide head runs at the last position only;
* the seed's loop: the same with the head at every position (``model(ids).logits[0, -1]``), as
  codefuse-devops-eval ran it.

The bench fails unless all three predict the same letter for every question. Time to the first
scored question (ours) comes from results.json (``timing.firstScoredSeconds``, counted from the
start of the evaluation) plus the process's time before it (wall − ``timing.seconds``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchenv import HERE, REPO, write_result  # noqa: E402  (offline hubs, the repository on sys.path)

SHARED_EXAMS = REPO.parent / "shared" / "data" / "exams"

#: What a user writes: our exam reader and the seed's prompt text (pure Python, no torch), then the
#: plainest transformers loop. FULL=1 computes the head at every position, as the seed did.
LOOP = r'''
import json, os, sys
from pathlib import Path
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from devops_workloads.evaluate.exams import load_exams
from devops_workloads.evaluate.prompts import render_query

model_dir, root, out, full = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
letters = {x: tok.convert_tokens_to_ids(x) for x in "ABCD"}
preds = []
with torch.inference_mode():
    for shots in (0, 5):
        for exam in load_exams(root, preset="devops-574", max_shots=5):
            for q in exam.questions:
                ids = torch.tensor([tok.encode(render_query(q, exam.dev[:shots]))])
                logits = model(input_ids=ids).logits if full else model(input_ids=ids, logits_to_keep=1).logits
                row = logits[0, -1]
                opts = [x for x in "ABCD" if x in q.options]
                preds.append({"exam": exam.name, "index": q.index, "shots": shots,
                              "prediction": max(opts, key=lambda x: (float(row[letters[x]]), -ord(x)))})
Path(out).write_text(json.dumps(preds))
'''


def _run(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd[:3])} … exited {proc.returncode}:\n{proc.stdout[-3000:]}")
    return wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--exams", type=Path, default=SHARED_EXAMS, help="exam root (default: ../shared/data/exams)")
    ap.add_argument("--model", type=Path, default=None, help="model dir (default: build the tiny Qwen2 model)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the best of each counts (default 2)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "eval_process.json")
    args = ap.parse_args()

    from devops_workloads.tiny import build_tiny_model

    work = Path(tempfile.mkdtemp(prefix="bench-eval-process-"))
    model = args.model or build_tiny_model(work / "tiny-qwen", "qwen", seed=0)
    (work / "loop.py").write_text(LOOP)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(REPO / p) for p in ("", "workloads")),
           "DEVOPS_MODEL_EVAL_TOKEN_CACHE": str(work / "eval-tokens")}
    py = sys.executable
    cli = [str(Path(py).parent / "devops-model")]
    load_start = os.getloadavg()[0]
    times: dict[str, list[float]] = {"ours": [], "careful": [], "seed": []}
    ours_timing: list[dict] = []
    impls: list[str] = []
    for r in range(args.rounds):
        out = work / f"ours-{r}"
        times["ours"].append(_run([*cli, "eval", "--model", str(model), "--exams", str(args.exams), "--preset", "devops-574",
                                   "--shots", "0,5", "--out", str(out)], env))
        res = json.loads((out / "results.json").read_text())
        ours_timing.append(res["timing"])
        impls.append(res["reproducibility"].get("modelImplementation", "transformers"))
        times["careful"].append(_run([py, str(work / "loop.py"), str(model), str(args.exams), str(work / f"careful-{r}.json"), "0"], env))
        times["seed"].append(_run([py, str(work / "loop.py"), str(model), str(args.exams), str(work / f"seed-{r}.json"), "1"], env))
        print(f"round {r + 1}: ours {times['ours'][-1]:.1f}s, careful loop {times['careful'][-1]:.1f}s, "
              f"seed loop {times['seed'][-1]:.1f}s", flush=True)

    ours_preds = {(p["exam"], p["index"], p["shots"]): p["prediction"]
                  for p in map(json.loads, (work / "ours-0" / "predictions.jsonl").read_text().splitlines())}
    mismatch = {}
    for r in range(1, args.rounds):  # later rounds read the token cache: the same predictions
        again = {(p["exam"], p["index"], p["shots"]): p["prediction"]
                 for p in map(json.loads, (work / f"ours-{r}" / "predictions.jsonl").read_text().splitlines())}
        mismatch[f"ours round {r + 1}"] = sum(again[k] != v for k, v in ours_preds.items())
    for name in ("careful", "seed"):
        preds = json.loads((work / f"{name}-0.json").read_text())
        mismatch[name] = sum(ours_preds[(p["exam"], p["index"], p["shots"])] != p["prediction"] for p in preds)
        assert len(preds) == len(ours_preds), (name, len(preds), len(ours_preds))
    best = {k: min(v) for k, v in times.items()}
    i_best = times["ours"].index(best["ours"])
    t = ours_timing[i_best]
    before_eval = best["ours"] - t["seconds"]
    first = before_eval + t["firstScoredSeconds"]
    cold, t_cold = times["ours"][0], ours_timing[0]  # round 1: an empty token cache
    n = len(ours_preds)
    impl = impls[i_best]

    def _cache(timing: dict) -> str:
        c = timing.get("tokenCache")
        return f"{c['hits']} hits, {c['misses']} misses" if isinstance(c, dict) else str(c)

    load = f"load average {load_start:.1f} at start, {os.getloadavg()[0]:.1f} at end on {os.cpu_count()} cores"
    import torch  # only to find its folder: are its modules compiled ahead (as pip does) or at every start?

    if not (Path(torch.__file__).parent / "__pycache__").is_dir() and not sys.pycache_prefix:
        load += ("; the venv holds no compiled bytecode (uv installs without it; PYTHONDONTWRITEBYTECODE="
                 f"{os.environ.get('PYTHONDONTWRITEBYTECODE', '')!s}), so every process compiles the modules it imports")
    setup = (f"tiny Qwen2 (hidden 128, 2 layers, real Qwen tokenizer, 151k vocab), fp32, CPU; devops-574 at 0 and 5 shots "
             f"({n} scored prompts), base style, seed scoring; each a fresh process timed start to exit, best of {args.rounds} "
             f"interleaved rounds ({load})")
    same = f"predictions identical to ours: careful {n - mismatch['careful']}/{n}, seed {n - mismatch['seed']}/{n}"
    rows = [
        {"figure": "devops-574, 0+5 shots, whole process: `devops-model eval` vs a careful last-logit loop",
         "ours": round(best["ours"], 2), "anchor_name": "careful loop (transformers, one question per forward, logits_to_keep=1)",
         "anchor": round(best["careful"], 2), "ratio": round(best["careful"] / best["ours"], 2), "unit": "s (lower is better)",
         "notes": f"{setup}; ours (best round, token cache {_cache(t)}, model {impl}): reading the prompts' "
                  f"ids {t['tokenizeSeconds']:.2f}s, importing torch and loading the weights {t['modelLoadSeconds']:.2f}s, "
                  f"scoring {t['scoringSeconds']:.2f}s, outside the evaluation (interpreter, CLI and typed API, exit) "
                  f"{before_eval:.2f}s; round 1 (token cache {_cache(t_cold)}: loads the tokenizer, tokenizes) {cold:.2f}s, "
                  f"{best['careful'] / cold:.2f}× (tokenizing {t_cold['tokenizeSeconds']:.2f}s); {same}; goal ≥ 2.5×"},
        {"figure": "devops-574, 0+5 shots, whole process: `devops-model eval` vs the seed's full-logit loop",
         "ours": round(best["ours"], 2), "anchor_name": "seed loop (model(ids).logits[0, -1], head at every position)",
         "anchor": round(best["seed"], 2), "ratio": round(best["seed"] / best["ours"], 2), "unit": "s (lower is better)",
         "notes": f"{setup}; goal ≥ 20×"},
        {"figure": "time to the first scored question, whole process (ours)", "ours": round(first, 2),
         "anchor_name": "our whole process", "anchor": round(best["ours"], 2), "ratio": None, "unit": "s",
         "notes": "process start to the first question's logits (best round): interpreter, imports, exam reading, the "
                  "prompts' token ids, model load and the first exam's prefix; "
                  f"{t.get('head_columns', -1)} head rows computed per question"},
    ]
    fixed = best["ours"] - t["scoringSeconds"]
    tok = ("the tokenizer was loaded (transformers imported)" if t.get("tokenizerLoaded")
           else "neither the tokenizer nor transformers was loaded")
    summary = (f"{fixed:.1f} s of our {best['ours']:.1f} s are not scoring: outside the evaluation (interpreter, the CLI "
               f"with the typed API, exit) {before_eval:.1f} s, reading the prompts' ids {t['tokenizeSeconds']:.2f} s "
               f"(token cache {_cache(t)}: {tok}), importing torch and reading the weights {t['modelLoadSeconds']:.1f} s "
               f"(model: {impl}). The careful loop pays importing transformers and its model code, loading the "
               "151k-token tokenizer and tokenizing every prompt whole. "
               f"Scoring itself: {t['scoringSeconds']:.2f} s. The first evaluation of these exams (round 1, empty token "
               f"cache) took {cold:.1f} s, {best['careful'] / cold:.2f}× the careful loop: it imports transformers and "
               f"loads the tokenizer ({t_cold['tokenizeSeconds']:.1f} s with tokenizing).")
    write_result("eval_process", rows, args.out, summary)
    if any(mismatch.values()):
        print(f"error: predictions differ: {mismatch}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
