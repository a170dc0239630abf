"""bench/gpu.sh --smoke: every section of the prepared GPU benchmark (SFT + MFU, exams, serving,
Qwen-1 conversion) runs its real code path on CPU with tiny shapes and writes rows that
bench/report.py renders. The GPU figures themselves need the device machine (bench/gpu.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_bench_smoke_writes_every_section(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "PYTHON": sys.executable,
           "PYTHONPATH": os.pathsep.join(str(REPO / d) for d in ("", "operator", "workloads", "cli"))}
    # The smoke run checks code paths, not speed: its time boxes are scaled up so that a busy 2-core
    # machine (the serve section ran out of its 60 s box once in CI) cannot fail it.
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu.sh"), "--smoke", "--box-scale", "4", "--out", str(out),
                           "--work", str(tmp_path / "work")],
                          env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    data = json.loads(out.read_text())
    assert data["area"] == "gpu" and data["smoke"] is True and data["machine"] and data["date"]
    assert {k: v["status"] for k, v in data["sections"].items()} == dict.fromkeys(("sft", "exam", "serve", "qwen1"), "ok")

    rows = {r["figure"]: r for r in data["rows"]}
    for keys in (("figure", "ours", "anchor_name", "anchor", "ratio", "unit", "notes"),):
        assert all(set(keys) <= set(r) for r in rows.values())
    sft = [r for f, r in rows.items() if f.startswith("SFT tokens/s")]
    exam = [r for f, r in rows.items() if f.startswith("exam ")]
    serve = [r for f, r in rows.items() if f.startswith("builtin serving throughput")]
    qwen1 = [r for f, r in rows.items() if f.startswith("Qwen-1 conversion")]
    assert len(sft) == 1 and len(exam) == 3 and len(serve) == 2 and len(qwen1) == 2, list(rows)
    assert [r["figure"].split(",")[1].strip() for r in serve] == ["16 concurrent clients (8 new tokens each)",
                                                                  "64 concurrent clients (8 new tokens each)"]
    for r in sft + exam + serve:
        assert r["ours"] > 0 and r["anchor"] > 0 and r["ratio"] > 0, r
    assert 0 < sft[0]["mfu"] == pytest.approx(sft[0]["ratio"], rel=1e-2) and "MFU" in sft[0]["notes"]
    fp32, bf16 = qwen1
    # the converted model equals the independent plain-torch Qwen-1 forward in fp32, and the
    # converted tokenizer equals tiktoken's ids on the exam prompts
    assert 0 <= fp32["ours"] < 1e-4 and fp32["anchor"] > 0 and fp32["ratio"] is None, fp32
    assert "token ids equal tiktoken's" in fp32["notes"] and "reference: " in fp32["notes"]
    assert 90 <= bf16["ours"] <= 100, bf16
    agreement = next(r for r in exam if "bf16 vs fp32" in r["figure"])
    assert 0 < agreement["ours"] <= 100

    spec = importlib.util.spec_from_file_location("bench_report", REPO / "bench" / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "gpu.json").write_text(out.read_text())
    text = report.render(tmp_path / "results")
    assert "## gpu" in text and data["machine"] in text and "Sections: sft ok" in text
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(rows)  # header, rule, one line per row
    assert all(line.count(" | ") == 6 for line in table[2:])  # 7 cells: a "|" inside a cell is escaped


def test_gpu_bench_records_a_section_out_of_time_and_runs_the_next(tmp_path):
    """A section past its time box is stopped and recorded (with its log tail); the next one still runs."""
    out = tmp_path / "gpu.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(REPO / d) for d in ("", "operator", "workloads", "cli"))}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu.py"), "--smoke", "--sections", "exam,qwen1",
                           "--box-scale", "0.02", "--out", str(out), "--work", str(tmp_path / "work")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, (proc.stdout + proc.stderr)[-3000:]
    data = json.loads(out.read_text())
    assert [(k, v["status"]) for k, v in data["sections"].items()] == [("exam", "timeout"), ("qwen1", "timeout")]
    assert [r["figure"] for r in data["rows"]] == ["exam: section timeout", "qwen1: section timeout"]
    assert all(r["ours"] is None and "time box" in r["notes"] for r in data["rows"])
