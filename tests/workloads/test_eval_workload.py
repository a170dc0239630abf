"""Exam evaluation on the tiny Qwen2 model with the real Qwen tokenizer: the fast path (batched,
length-sorted, prefix-KV-cached) predicts exactly what the plain one-question-at-a-time loop
predicts, on real exam prompts and the bundled sample; the EvalRun worker and the command line
write the promised files and status."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from devops_model.api.evaluation import Scores
from devops_workloads.evaluate.evaluator import EvalConfig, evaluate

REPO = Path(__file__).resolve().parents[2]


def _predictions(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]


def _compare(fast: Path, plain: Path, atol: float) -> int:
    a, b = _predictions(fast), _predictions(plain)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert (x["exam"], x["index"], x["shots"], x["style"]) == (y["exam"], y["index"], y["shots"], y["style"])
        assert x["prediction"] == y["prediction"], (x, y)
        assert x["logits"].keys() == y["logits"].keys()
        for k in x["logits"]:
            assert x["logits"][k] == pytest.approx(y["logits"][k], abs=atol)
    return len(a)


def _run_both(model: Path, root: Path, tmp: Path, **kw) -> tuple[dict, dict]:
    results = {}
    for engine in ("fast", "plain"):
        cfg = EvalConfig(model=str(model), exams_root=str(root), engine=engine, **kw)
        results[engine] = evaluate(cfg, tmp / engine)
    return results["fast"], results["plain"]


def test_fast_path_equals_plain_path_on_seed_exam_prompts(tiny_qwen, seed_exam_subset, tmp_path):
    # One CMMLU and one C-Eval exam (both header styles), 0 and 5 shots, base and chat; batches of
    # 4 so that several right-padded batches of different lengths run on one expanded prefix cache.
    fast, plain = _run_both(tiny_qwen, seed_exam_subset, tmp_path, shots=[0, 5], styles=["base", "chat"], batch_size=4)
    assert _compare(tmp_path / "fast", tmp_path / "plain", atol=1e-4) == 2 * 5 * 2 * 2
    assert fast["exams"] == plain["exams"] and fast["overall"] == plain["overall"]
    t = fast["timing"]
    assert t["prefixes"] == 8  # one shared prefix per (exam, shots, style)
    # five-shot prefixes are long and computed once: most prompt tokens never run per question
    assert t["prefix_tokens"] + t["suffix_tokens"] < 0.5 * t["prompt_tokens"]
    repro = fast["reproducibility"]
    assert repro["scoring"] == "seed" and repro["dtype"] == "float32" and repro["engine"] == "fast"
    assert set(repro["data"]["files"]) == {"cmmlu/test/computer_science.csv", "cmmlu/dev/computer_science.csv",
                                           "ceval/val/computer_network.csv", "ceval/dev/computer_network.csv"}
    assert repro["packages"]["transformers"] and repro["packages"]["torch"]
    assert repro["letterTokenIds"] == {"A": 32, "B": 33, "C": 34, "D": 35}  # Qwen's single-letter tokens


def test_fast_path_equals_plain_path_on_the_sample_exam(tiny_qwen, sample_exams, tmp_path):
    # one of its two subjects keeps the plain loop's cost down; the worker test below runs both
    fast, plain = _run_both(tiny_qwen, sample_exams, tmp_path, exams=["devops/containers"], shots=[0, 5],
                            styles=["base", "chat"], batch_size=16)
    assert _compare(tmp_path / "fast", tmp_path / "plain", atol=1e-4) == 20 * 4
    assert [o["total"] for o in fast["overall"]] == [20, 20, 20, 20]
    assert fast["overall"] == plain["overall"]


def test_loglikelihood_mode_and_tokenizer_template_fast_equals_plain(tiny_qwen, seed_exam_subset, tmp_path):
    fast, _ = _run_both(tiny_qwen, seed_exam_subset, tmp_path, exams=["ceval/computer_network"], shots=[0, 5],
                        styles=["base", "chat"], chat_template="tokenizer", scoring="loglikelihood", batch_size=5)
    _compare(tmp_path / "fast", tmp_path / "plain", atol=1e-4)
    preds = _predictions(tmp_path / "fast")
    # log-likelihoods of " A".." D": negative, and a probability distribution's share at most 1
    assert all(v < 0 for p in preds for v in p["logits"].values())
    assert all(sum(2.718281828 ** v for v in p["logits"].values()) <= 1.0 for p in preds)
    assert fast["reproducibility"]["scoring"] == "loglikelihood"
    assert "tokenizer's chat template" in fast["reproducibility"]["template"]


def test_chat_prompt_tokens_are_the_seeds_chatml(tiny_qwen):
    from transformers import AutoTokenizer

    from devops_workloads.evaluate.prompts import chatml_text, encode_prompt

    tok = AutoTokenizer.from_pretrained(tiny_qwen)
    query = "以下是关于开发运维领域的单项选择题。\n问题：x\nA. 1\n答案："
    ids = encode_prompt(tok, query, "chat", "chatml")
    assert tok.decode(ids) == chatml_text(query)
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>") and ids.count(tok.convert_tokens_to_ids("<|im_end|>")) == 2
    assert encode_prompt(tok, query, "base") == tok.encode(query)


@pytest.mark.parametrize("style,template", [("base", "chatml"), ("chat", "chatml"), ("chat", "tokenizer")])
def test_prefix_tokenized_once_gives_the_ids_of_each_whole_prompt(tiny_qwen, seed_exams, style, template):
    """encode_prompts (the few-shot block once per exam setting, the questions in one batched call)
    equals encode_prompt of every whole prompt on all 574 questions at 0 and 5 shots, with the real
    Qwen tokenizer; it shares the prefix wherever the seam allows (base and chatml)."""
    from transformers import AutoTokenizer

    from devops_workloads.evaluate.exams import load_exams
    from devops_workloads.evaluate.prompts import encode_prompt, encode_prompts, render_body, render_shots

    tok = AutoTokenizer.from_pretrained(tiny_qwen)
    exams = load_exams(seed_exams, preset="devops-574", max_shots=5)
    n = 0
    for exam in exams:
        for k in (0, 5):
            prefix, bodies = render_shots(exam.dev[:k]), [render_body(q) for q in exam.questions]
            ids, shared = encode_prompts(tok, prefix, bodies, style, template)
            assert ids == [encode_prompt(tok, prefix + b, style, template) for b in bodies], (exam.name, k)
            assert shared == (template == "chatml"), (exam.name, k, style, template)
            n += len(bodies)
    assert n == 2 * 574


def test_prefix_sharing_falls_back_where_the_tokenizer_merges_across_the_seam(tiny_bpe):
    """A seam inside a word (BPE merges across it): every prompt is encoded whole, ids unchanged."""
    from transformers import AutoTokenizer

    from devops_workloads.evaluate.prompts import encode_prompts, encode_queries

    tok = AutoTokenizer.from_pretrained(tiny_bpe)
    prefix, bodies = "Kuberne", ["tes schedules pods", "tes", "tes Deployment rolls out"]
    assert tok.encode(prefix + bodies[1]) != tok.encode(prefix) + tok.encode(bodies[1], add_special_tokens=False)
    ids, shared = encode_queries(tok, prefix, bodies, add_special_tokens=True)
    assert not shared and ids == [tok.encode(prefix + b) for b in bodies]
    ids, shared = encode_prompts(tok, "kubectl get pods\n", ["问题：x", "问题：yy"], "base")
    assert ids == [tok.encode("kubectl get pods\n" + b) for b in ("问题：x", "问题：yy")]


def _install(local_home: Path, tiny_qwen: Path) -> Path:
    from devops_workloads.sample_data import install

    storage = local_home / "storage"
    install(storage)
    shutil.copytree(tiny_qwen, storage / "models" / "tiny-qwen")
    return storage


def test_evalrun_worker_scores_status_artifact_and_baseline_delta(tiny_qwen, local_home):
    from devops_model.registry import read_entry as read_registry
    from devops_workloads.runner import run_file

    storage = _install(local_home, tiny_qwen)
    assert run_file(REPO / "examples/local/eval-base.yaml") == 0
    base = read_registry("EvalRun", "base-eval")["status"]
    assert base["state"] == "Succeeded"
    scores = Scores.model_validate(base["scores"])  # the status is the API's Scores shape
    assert {(o.shots, o.style) for o in scores.overall} == {(0, "base"), (0, "chat"), (5, "base"), (5, "chat")}
    assert all(o.total == 40 for o in scores.overall)
    assert {e.exam for e in scores.exams} == {"devops/containers", "devops/ci_cd"}
    assert base["artifact"] == {"uri": "pvc://results/base-eval", "format": "eval-results", "baseModel": "pvc://models/tiny-qwen"}
    assert base["summary"].startswith("0-shot base ") and "5-shot chat" in base["summary"]

    # The tuned model's exam: fromRun SFTRun/sft-lora (recorded here as if it had run, on the same
    # weights) with the base exam as baseline -> every delta is 0.0.
    reg = local_home / "home" / "runs" / "sftrun"
    reg.mkdir(parents=True)
    (reg / "sft-lora.json").write_text(json.dumps({
        "resource": {"apiVersion": "devops-model.io/v1alpha1", "kind": "SFTRun", "metadata": {"name": "sft-lora"}},
        "status": {"state": "Succeeded", "artifact": {"uri": "pvc://models/tiny-qwen", "format": "hf-full"}},
    }))
    assert run_file(REPO / "examples/local/eval.yaml") == 0
    tuned = read_registry("EvalRun", "sft-lora-eval")["status"]
    assert [o["delta"] for o in tuned["scores"]["overall"]] == [0.0, 0.0, 0.0, 0.0]
    assert "(+0.0)" in tuned["summary"] and tuned["artifact"]["parent"] == "SFTRun/sft-lora"

    out = storage / "results" / "sft-lora-eval"
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["model"] == "pvc://models/tiny-qwen"
    assert results["baseline"]["evalRun"] == "base-eval"
    assert json.loads((out / "artifact.json").read_text())["format"] == "eval-results"
    preds = _predictions(out)
    assert len(preds) == 160
    assert set(preds[0]) == {"exam", "index", "shots", "style", "prediction", "answer", "logits"}
    assert set(preds[0]["logits"]) == {"A", "B", "C", "D"}
    assert sorted({p["index"] for p in preds if p["exam"] == "devops/ci_cd"}) == list(range(20))
    progress = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    assert progress[-1]["step"] == progress[-1]["total_steps"] == 160


def test_evalrun_sha1_mismatch_fails_before_scoring(tiny_qwen, local_home, tmp_path):
    from devops_model.registry import read_entry as read_registry
    from devops_workloads.runner import run_file

    _install(local_home, tiny_qwen)
    spec = (REPO / "examples/local/eval-base.yaml").read_text().replace(
        "    uri: pvc://samples/exams\n", "    uri: pvc://samples/exams\n    sha1: '" + "0" * 40 + "'\n")
    f = tmp_path / "bad.yaml"
    f.write_text(spec)
    assert run_file(f) == 3
    status = read_registry("EvalRun", "base-eval")["status"]
    assert status["state"] == "Failed" and status["reason"] == "BadExamData"
    assert "spec.exams.sha1: the exam files under" in status["message"]


def test_devops_model_eval_command(tiny_qwen, sample_exams, tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "devops_cli", "eval", "--model", str(tiny_qwen), "--exams", str(sample_exams),
                        "--exam", "devops/ci_cd", "--shots", "0,5", "--style", "base", "--out", str(out)],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "devops/ci_cd" in r.stdout and "0-shot" in r.stdout and "5-shot" in r.stdout
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert [(e["exam"], e["shots"], e["total"]) for e in results["exams"]] == [("devops/ci_cd", 0, 20), ("devops/ci_cd", 5, 20)]
    assert len(_predictions(out)) == 40


def test_engine_multi_position_requests_and_mixed_groups_match_plain(tiny_qwen):
    # Multi-token continuations need logits at several trailing positions; requests of one group
    # share a prefix, a group of one keeps all but its scored tokens as prefix, and a group whose
    # members share nothing runs without a cache.
    import torch
    from transformers import AutoModelForCausalLM

    from devops_workloads.evaluate.engine import Request, run_fast, run_plain

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen, dtype=torch.float32).eval()
    shared = tuple(range(100, 160))
    reqs = [Request(shared + tuple(range(200, 200 + n)), "g", k) for n, k in ((3, 1), (9, 3), (5, 2), (12, 4), (1, 1))]
    reqs += [Request(tuple(range(300, 340)), "solo", 2)]
    reqs += [Request((7, 8, 9, 10), "disjoint", 1), Request((11, 12, 13), "disjoint", 2)]
    fast, plain = {}, {}
    stats = run_fast(model, reqs, lambda i, r: fast.__setitem__(i, r.clone()), batch_size=2)
    run_plain(model, reqs, lambda i, r: plain.__setitem__(i, r.clone()))
    for i, r in enumerate(reqs):
        assert fast[i].shape == plain[i].shape == (r.n_last, model.config.vocab_size)
        torch.testing.assert_close(fast[i], plain[i], atol=1e-4, rtol=1e-4)
    assert stats["prefixes"] == 2 and stats["prefix_tokens"] == 60 + 38


def test_engine_applies_only_the_head_rows_that_are_scored(tiny_qwen):
    """columns: the seed's scoring reads A..D only; the fast engine computes those head rows alone and
    they equal the same columns of the full logits (also when the head cannot be split off)."""
    import torch
    from transformers import AutoModelForCausalLM

    from devops_workloads.evaluate.engine import Request, run_fast, run_plain

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen, dtype=torch.float32).eval()
    reqs = [Request(tuple(range(100, 130)) + tuple(range(200, 200 + n)), "g", 1) for n in (1, 4, 9)]
    cols = [32, 33, 34, 35]
    narrow, plain = {}, {}
    stats = run_fast(model, reqs, lambda i, r: narrow.__setitem__(i, r.clone()), batch_size=2, columns=cols)
    run_plain(model, reqs, lambda i, r: plain.__setitem__(i, r.clone()))
    assert stats["head_columns"] == 4
    for i in range(len(reqs)):
        assert narrow[i].shape == (1, 4)
        torch.testing.assert_close(narrow[i], plain[i][:, cols], atol=1e-4, rtol=1e-4)
    import devops_workloads.evaluate.engine as engine

    whole = {}
    original = engine._decoder_and_head
    engine._decoder_and_head = lambda m: None  # a model whose head cannot be split off
    try:
        stats = run_fast(model, reqs, lambda i, r: whole.__setitem__(i, r.clone()), batch_size=2, columns=cols)
    finally:
        engine._decoder_and_head = original
    assert stats["head_columns"] == -1
    for i in range(len(reqs)):
        torch.testing.assert_close(whole[i], plain[i][:, cols], atol=1e-4, rtol=1e-4)
