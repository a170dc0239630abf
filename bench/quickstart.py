"""Benchmark: does the quickstart visibly learn, and within its time budget?

    .venv/bin/python bench/quickstart.py     # writes bench/results/quickstart.json (~3-5 minutes on 2 cores)

Runs `devops-model quickstart --fresh` as a newcomer does (a process of its own, in a scratch work dir)
and reads what it wrote: the run registry (loss at the first and last logged step of pretraining and
SFT) and answers.json (how much of the taught answer each model reproduces: the share of the taught
answer's word pairs found in the answer, greedy decoding, the same chat prompt for every model). The
anchors are the same run's own before-states (the loss before training, the base model's answer) and,
for the wall time, the README's promise of at most 4 minutes after the first set-up.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchenv import REPO, write_result  # noqa: E402  (offline hubs, the repository on sys.path)

from devops_workloads.quickstart import QUESTION
BUDGET_S = 240.0  # the README's "≤ 4 minutes on 2 cores after the first set-up"


def _loss_span(workdir: Path, kind: str) -> tuple[float, float] | None:
    for p in (workdir / "home" / "runs" / kind.lower()).glob("*.json"):
        status = json.loads(p.read_text()).get("status") or {}
        m = re.search(r"loss ([\d.]+) → ([\d.]+)", str(status.get("message") or ""))
        if m:
            return float(m.group(1)), float(m.group(2))
    return None


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="quickstart-bench-") as tmp:
        workdir = Path(tmp) / "work"
        exe = Path(sys.executable).parent / "devops-model"
        cmd = [str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else ["-m", "devops_cli"]),
               "quickstart", "--workdir", str(workdir), "--fresh"]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, cwd=REPO, env={**os.environ, "DEVOPS_MODEL_NO_PROGRESS": "1"},
                           capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            print(r.stdout[-3000:] + r.stderr[-3000:], file=sys.stderr)
            print(f"error: the quickstart failed (exit {r.returncode})", file=sys.stderr)
            return 1
        answers = json.loads((workdir / "answers.json").read_text())
        pt, sft = _loss_span(workdir, "PretrainRun"), _loss_span(workdir, "SFTRun")
    if pt is None or sft is None:
        print("error: no 'loss A → B' in the runs' status messages", file=sys.stderr)
        return 1
    base, tuned, served = (answers[k]["bigrams"] for k in ("base", "tuned", "served"))
    rows = [
        {"figure": "quickstart, whole process (`--fresh`: tiny model built anew; venv and GPTQModel's compiled CPU extensions from the first run)",
         "ours": round(wall, 1), "anchor_name": "the README's budget", "anchor": BUDGET_S,
         "ratio": round(BUDGET_S / wall, 3), "unit": "s (lower is better)",
         "notes": "`devops-model quickstart --fresh`: tiny model, pretrain, LoRA SFT, 3 exams, GPTQ, answers, server"},
        {"figure": "pretraining loss, last logged step vs first", "ours": pt[1], "anchor_name": "first logged step",
         "anchor": pt[0], "ratio": round(pt[0] / pt[1], 3), "unit": "loss (lower is better)",
         "notes": "examples/local/pretrain.yaml on the bundled corpus"},
        {"figure": "SFT loss, last logged step vs first", "ours": sft[1], "anchor_name": "first logged step",
         "anchor": sft[0], "ratio": round(sft[0] / sft[1], 3), "unit": "loss (lower is better)",
         "notes": "examples/local/sft-lora.yaml: LoRA on the three bundled quickstart Q&As"},
        {"figure": "taught answer reproduced by the tuned model (share of its word pairs)", "ours": tuned,
         "anchor_name": "the base model, same prompt", "anchor": base,
         "ratio": round(tuned / base, 3) if base else None, "unit": "share (higher is better)",
         "notes": f"greedy; the int4 model behind the built-in server: {served}; "
                  + ("the base reproduces none, so no ratio" if not base else "")},
    ]
    summary = (f"The question: {QUESTION!r}. Tuned answer: {answers['tuned']['answer'][:160]!r}. "
               f"Base answer: {answers['base']['answer'][:80]!r}.")
    write_result("quickstart", rows, REPO / "bench" / "results" / "quickstart.json", summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
