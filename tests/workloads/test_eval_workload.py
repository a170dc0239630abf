"""Exam evaluation on the tiny Qwen2 model with the real Qwen tokenizer: the fast path (batched,
length-sorted, prefix-KV-cached) predicts exactly what the plain one-question-at-a-time loop
predicts, on real exam prompts and the bundled sample; the EvalRun worker and the command line
write the promised files and status."""

from __future__ import annotations

import json
import os
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


# --------------------------------------------------------------------------- native Qwen2 (evaluate/native.py)


def _qwen2_variant(path: Path, *, tied: bool = True, heads: int = 4, kv_heads: int = 2, legacy_rope: bool = False,
                   seed: int = 0) -> Path:
    """A small Qwen2 checkpoint whose every weight is random (biases and norms too, which a fresh
    model initialises to 0 and 1 and so would not test), saved as transformers saves it."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=384, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=heads,
                      num_key_value_heads=kv_heads, tie_word_embeddings=tied, max_position_embeddings=512,
                      rope_parameters={"rope_type": "default", "rope_theta": 50000.0})
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.2 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p))
    model.save_pretrained(path)
    if legacy_rope:  # as older transformers wrote Qwen2.5's config: rope_theta at the top, rope_scaling null
        data = json.loads((path / "config.json").read_text())
        data.pop("rope_parameters")
        data.update(rope_theta=50000.0, rope_scaling=None)
        (path / "config.json").write_text(json.dumps(data))
    return path


def _requests():
    from devops_workloads.evaluate.engine import Request

    shared = tuple(range(10, 70))
    reqs = [Request(shared + tuple(range(100, 100 + n)), "g", k) for n, k in ((3, 1), (9, 3), (5, 2), (12, 4), (1, 1))]
    reqs += [Request(shared + (200,), "one", 1), Request(shared + (201,), "one", 1)]  # suffixes of one token
    reqs += [Request(tuple(range(300, 340)), "solo", 2), Request((7, 8, 9, 10), "disjoint", 1), Request((11, 12, 13), "disjoint", 2)]
    return reqs


@pytest.mark.parametrize("variant,precision", [
    ({}, "fp32"),                                             # tied head, grouped-query attention (like the tiny model)
    ({"tied": False, "kv_heads": 4}, "fp32"),                 # own head, one key/value head per query head
    ({"legacy_rope": True, "heads": 8, "kv_heads": 2}, "fp32"),  # rope_theta written at the top of config.json
    ({}, "bf16"),
])
def test_native_qwen2_computes_exactly_what_transformers_computes(tmp_path, variant, precision):
    """The same operations in the same order: logits bit for bit equal to transformers' Qwen2 (SDPA),
    over whole sequences, through the fast engine's prefix cache and batches (grouped and
    single-token suffixes, selected head rows) and through the plain loop."""
    import torch
    from transformers import AutoModelForCausalLM

    from devops_workloads.evaluate.engine import run_fast, run_plain
    from devops_workloads.evaluate.native import load_native

    path = _qwen2_variant(tmp_path / "m", **variant)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    native, why = load_native(path, precision)
    assert native is not None, why
    assert native.dtype == dtype
    ids = torch.randint(0, 384, (3, 50), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.equal(native(input_ids=ids).logits, hf(input_ids=ids).logits)
    reqs = _requests()
    for columns in (None, [5, 17, 250, 3]):
        ours, theirs = {}, {}
        stats = run_fast(native, reqs, lambda i, r: ours.__setitem__(i, r.clone()), batch_size=2, columns=columns)
        assert stats == run_fast(hf, reqs, lambda i, r: theirs.__setitem__(i, r.clone()), batch_size=2, columns=columns)
        assert stats["prefixes"] == 3 and stats["head_columns"] == (len(columns) if columns else -1)
        for i in range(len(reqs)):
            assert torch.equal(ours[i], theirs[i]), (i, columns)
    ours, theirs = {}, {}
    run_plain(native, reqs, lambda i, r: ours.__setitem__(i, r.clone()))
    run_plain(hf, reqs, lambda i, r: theirs.__setitem__(i, r.clone()))
    assert all(torch.equal(ours[i], theirs[i]) for i in range(len(reqs)))


def _edit_config(path: Path, **changes) -> None:
    data = json.loads((path / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            data.pop(k, None)
        else:
            data[k] = v
    (path / "config.json").write_text(json.dumps(data))


@pytest.mark.parametrize("change,reason", [
    ({"use_sliding_window": True, "sliding_window": 16}, "sliding-window"),
    ({"rope_parameters": {"rope_type": "linear", "rope_theta": 50000.0, "factor": 2.0}}, "default RoPE"),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope_scaling"),
    ({"auto_map": {"AutoModelForCausalLM": "modeling_x.X"}}, "its own code"),
    ({"quantization_config": {"quant_method": "gptq", "bits": 4}}, "quantized"),
    ({"num_key_value_heads": None}, "leaves out num_key_value_heads"),
    ({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, "not Qwen2ForCausalLM"),
    ({"hidden_act": "gelu"}, "hidden_act"),
])
def test_native_path_declines_what_it_does_not_run_exactly(tmp_path, change, reason):
    from devops_workloads.evaluate.native import load_native

    path = _qwen2_variant(tmp_path / "m")
    _edit_config(path, **change)
    model, why = load_native(path)
    assert model is None and reason in why


def test_native_path_declines_other_weights_adapters_and_the_switch(tmp_path, monkeypatch):
    import torch
    from safetensors.torch import load_file, save_file

    from devops_workloads.evaluate.native import load_native

    path = _qwen2_variant(tmp_path / "m")
    assert load_native(path)[0] is not None
    weights = load_file(str(path / "model.safetensors"))
    save_file({**weights, "lm_head.weight": weights["model.embed_tokens.weight"].clone()}, str(path / "model.safetensors"),
              metadata={"format": "pt"})
    assert "lm_head.weight is not one of Qwen2's" in load_native(path)[1]  # tied, yet a head of its own in the file
    save_file({**weights, "model.norm.weight": torch.ones(32)}, str(path / "model.safetensors"), metadata={"format": "pt"})
    assert "model.norm.weight has shape (32,)" in load_native(path)[1]
    del weights["model.layers.1.self_attn.k_proj.bias"]
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    assert "weights missing: model.layers.1.self_attn.k_proj.bias" in load_native(path)[1]
    (path / "model.safetensors").rename(path / "weights.bin")
    assert load_native(path)[1] == "no safetensors weights"
    other = _qwen2_variant(tmp_path / "a")
    (other / "adapter_config.json").write_text("{}")
    assert "adapter" in load_native(other)[1]
    monkeypatch.setenv("DEVOPS_MODEL_EVAL_NATIVE", "0")
    assert "DEVOPS_MODEL_EVAL_NATIVE=0" in load_native(_qwen2_variant(tmp_path / "b"))[1]


def test_fast_engine_with_and_without_the_native_model_predicts_alike(tiny_qwen, seed_exam_subset, tmp_path, monkeypatch):
    cfg = dict(model=str(tiny_qwen), exams_root=str(seed_exam_subset), shots=[0, 5], styles=["base"], batch_size=4)
    native = evaluate(EvalConfig(**cfg), tmp_path / "native")
    monkeypatch.setenv("DEVOPS_MODEL_EVAL_NATIVE", "0")
    hf = evaluate(EvalConfig(**cfg), tmp_path / "hf")
    assert native["reproducibility"]["modelImplementation"] == "native-qwen2"
    assert hf["reproducibility"]["modelImplementation"] == "transformers (DEVOPS_MODEL_EVAL_NATIVE=0)"
    assert _predictions(tmp_path / "native") == _predictions(tmp_path / "hf")  # the logits too, exactly
    assert native["timing"]["head_columns"] == hf["timing"]["head_columns"] == 4


# --------------------------------------------------------------------------- tokenized exams cache (evaluate/tokcache.py)


def _setting_ids(tokenizer, root: Path, shots: list[int], styles: list[str]) -> dict[tuple, list[list[int]]]:
    """Each exam setting's prompt ids, tokenized afresh prompt by whole prompt."""
    from devops_workloads.evaluate.exams import load_exams
    from devops_workloads.evaluate.prompts import encode_prompt, render_query

    out = {}
    for exam in load_exams(root, max_shots=max(shots)):
        for k in shots:
            for style in styles:
                out[(exam.name, k, style)] = [encode_prompt(tokenizer, render_query(q, exam.dev[:k]), style) for q in exam.questions]
    return out


def _cached_ids(cache_root: Path) -> dict[tuple, list[list[int]]]:
    out = {}
    for f in cache_root.rglob("*.json"):
        data = json.loads(f.read_text())
        if "rest" in data:
            out[(data["exam"], data["shots"], data["style"])] = [data["prefix"] + r for r in data["rest"]]
    return out


def test_token_cache_gives_the_ids_of_fresh_tokenization_and_skips_the_tokenizer(tiny_qwen, seed_exam_subset, tmp_path,
                                                                              eval_token_cache):
    from transformers import AutoTokenizer

    cfg = EvalConfig(model=str(tiny_qwen), exams_root=str(seed_exam_subset), shots=[0, 5], styles=["base", "chat"], batch_size=4)
    first = evaluate(cfg, tmp_path / "first")
    assert first["timing"]["tokenCache"] == {"hits": 0, "misses": 8, "dir": str(eval_token_cache)}
    assert first["timing"]["tokenizerLoaded"] is True
    # what was stored is what tokenizing each whole prompt gives
    fresh = _setting_ids(AutoTokenizer.from_pretrained(tiny_qwen), seed_exam_subset, [0, 5], ["base", "chat"])
    assert len(fresh) == 8 and _cached_ids(eval_token_cache) == fresh
    second = evaluate(cfg, tmp_path / "second")
    assert second["timing"]["tokenCache"]["hits"] == 8 and second["timing"]["tokenCache"]["misses"] == 0
    assert second["timing"]["tokenizerLoaded"] is False  # seed scoring, chatml: nothing left for the tokenizer to do
    assert second["reproducibility"]["letterTokenIds"] == first["reproducibility"]["letterTokenIds"]
    assert _predictions(tmp_path / "first") == _predictions(tmp_path / "second")
    # a damaged entry is a miss, rewritten whole
    for f in eval_token_cache.rglob("*.json"):
        f.write_text(f.read_text()[:-40])
    third = evaluate(cfg, tmp_path / "third")
    assert third["timing"]["tokenCache"]["misses"] == 8 and _predictions(tmp_path / "third") == _predictions(tmp_path / "first")
    assert _cached_ids(eval_token_cache) == fresh


def test_token_cache_misses_when_the_exam_the_tokenizer_or_the_prompt_version_changes(tiny_qwen, seed_exam_subset, tmp_path,
                                                                                   monkeypatch):
    import devops_workloads.evaluate.evaluator as evaluator

    root = tmp_path / "exams"
    shutil.copytree(seed_exam_subset, root)
    model = tmp_path / "model"
    shutil.copytree(tiny_qwen, model)

    def run(tag: str) -> dict:
        cfg = EvalConfig(model=str(model), exams_root=str(root), shots=[0, 5], styles=["base"], batch_size=8)
        return evaluate(cfg, tmp_path / tag)["timing"]["tokenCache"]

    assert run("a") == {"hits": 0, "misses": 4, "dir": os.environ["DEVOPS_MODEL_EVAL_TOKEN_CACHE"]}
    assert run("b")["hits"] == 4
    # one exam's dev file changes (its five-shot prefix and its file SHA-1): both its settings miss
    dev = root / "ceval" / "dev" / "computer_network.csv"
    dev.write_bytes(dev.read_bytes().replace("网络".encode(), "网路".encode(), 1))
    assert {k: v for k, v in run("c").items() if k != "dir"} == {"hits": 2, "misses": 2}
    # the tokenizer's files change: every setting misses
    tc = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**tc, "model_max_length": 4096}))
    assert run("d")["misses"] == 4
    assert run("e")["hits"] == 4
    # the prompt version changes: every setting misses
    monkeypatch.setattr(evaluator, "PROMPT_VERSION", evaluator.PROMPT_VERSION + "+test")
    assert run("f")["misses"] == 4


def test_token_cache_can_be_turned_off_and_survives_an_unwritable_folder(tiny_qwen, seed_exam_subset, tmp_path, monkeypatch,
                                                                         capfd):
    cfg = dict(model=str(tiny_qwen), exams_root=str(seed_exam_subset), exams=["ceval/computer_network"], shots=[0], batch_size=8)
    assert evaluate(EvalConfig(**cfg, token_cache=False), tmp_path / "a")["timing"]["tokenCache"] == "off"
    monkeypatch.setenv("DEVOPS_MODEL_EVAL_TOKEN_CACHE", "0")
    assert evaluate(EvalConfig(**cfg), tmp_path / "b")["timing"]["tokenCache"] == "off"
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("DEVOPS_MODEL_EVAL_TOKEN_CACHE", str(blocker / "cache"))  # a folder that cannot be made
    res = evaluate(EvalConfig(**cfg), tmp_path / "c")
    assert res["timing"]["tokenCache"]["misses"] == 1
    assert "tokenized exams not cached" in capfd.readouterr().err
    assert _predictions(tmp_path / "a") == _predictions(tmp_path / "b") == _predictions(tmp_path / "c")


def test_a_repeated_eval_process_imports_neither_transformers_nor_the_tokenizer(tiny_qwen, sample_exams, tmp_path):
    """What a second `devops-model eval` of the same exams runs: the cached ids and the native model,
    without importing transformers at all (its model code alone is seconds of a 2-core process)."""
    args = ["eval", "--model", str(tiny_qwen), "--exams", str(sample_exams), "--exam", "devops/ci_cd", "--shots", "0,5"]
    probe = ("import sys, json; from devops_cli import main; rc = main(json.loads(sys.argv[1])); "
             "print(json.dumps({'rc': rc, 'transformers': 'transformers' in sys.modules, 'tokenizers': 'tokenizers' in sys.modules}))")
    seen = []
    for tag in ("cold", "warm", "off"):
        extra = ["--no-token-cache"] if tag == "off" else []
        r = subprocess.run([sys.executable, "-c", probe, json.dumps([*args, *extra, "--out", str(tmp_path / tag)])],
                           capture_output=True, text=True, cwd=REPO, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        seen.append(json.loads(r.stdout.strip().splitlines()[-1]))
    assert seen[0] == {"rc": 0, "transformers": True, "tokenizers": True}  # the first run tokenizes
    assert seen[1] == {"rc": 0, "transformers": False, "tokenizers": False}
    assert seen[2] == {"rc": 0, "transformers": True, "tokenizers": True}
    timing = json.loads((tmp_path / "off" / "results.json").read_text())["timing"]
    assert timing["tokenCache"] == "off"
    assert _predictions(tmp_path / "cold") == _predictions(tmp_path / "warm") == _predictions(tmp_path / "off")
