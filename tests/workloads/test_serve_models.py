"""What the built-in server serves (plain, LoRA adapter merged on load, GPTQ int4) and the
ChatDeployment worker on this machine (`devops-model run -f chat.yaml`: lineage, scores, gate)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from devops_model.yamlio import dump
from tests.plugins.serve import REPO, cli, free_port


def engine_answers(engine, prompts, max_tokens=12):
    """Greedy answers from the batching engine, all submitted at once (so they are batched)."""
    from devops_workloads.serve.engine import SamplingParams

    done = {}
    finished = threading.Event()

    def sink_for(i):
        def sink(ev):
            if ev.finish_reason:
                done[i] = ev.full_text
                if len(done) == len(prompts):
                    finished.set()
        return sink

    for i, p in enumerate(prompts):
        engine.submit(engine.tokenizer(p).input_ids, SamplingParams(max_tokens=max_tokens, temperature=0), sink_for(i))
    assert finished.wait(120)
    return [done[i] for i in range(len(prompts))]


def generate_answers(model, tok, prompts, max_tokens=12):
    import torch

    out = []
    with torch.inference_mode():
        for p in prompts:
            ids = tok(p, return_tensors="pt").input_ids.to(model.device)
            g = model.generate(ids, max_new_tokens=max_tokens, do_sample=False)
            out.append(tok.decode(g[0, ids.shape[1]:], skip_special_tokens=True))
    return out


PROMPTS = ["Kubernetes schedules pods", "CI/CD 流水线", "kubectl get pods -A lists every pod"]


def test_lora_adapter_folder_is_merged_on_load(tiny_bpe, tmp_path):
    """A LoRA adapter folder (adapter_config.json, no config.json) serves as base + merged adapter."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from devops_workloads.serve.engine import BatchingEngine

    base = AutoModelForCausalLM.from_pretrained(tiny_bpe, dtype=torch.float32)
    torch.manual_seed(1)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    tok = AutoTokenizer.from_pretrained(tiny_bpe)
    merged = peft_model.merge_and_unload().eval()
    expected = generate_answers(merged, tok, PROMPTS)
    plain = generate_answers(AutoModelForCausalLM.from_pretrained(tiny_bpe, dtype=torch.float32).eval(), tok, PROMPTS)
    assert expected != plain, "the adapter must change the answers, or this test proves nothing"

    engine = BatchingEngine.load(adapter, device="cpu", max_batch_size=4)
    engine.start()
    try:
        assert engine_answers(engine, PROMPTS) == expected
    finally:
        engine.stop()


def test_gptq_int4_model_is_served(tiny_gptq, start_server):
    """The QuantizeRun's int4 checkpoint (tests/plugins/quantize.py) over real HTTP, equal to what
    transformers + GPTQModel generate from the same checkpoint."""
    gptq = tiny_gptq
    config = json.loads((Path(gptq) / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "gptq"

    from devops_workloads.quantize.measure import load_for_eval

    model, tok = load_for_eval(Path(gptq))
    messages = [{"role": "user", "content": "什么是 Pod？"}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    import torch

    ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids.to(model.device)
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=8, do_sample=False)
    expected = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    del model

    server = start_server(gptq, name="tiny-int4")
    # temperature 0: GPTQModel saves generation_config.json with do_sample true, which the server honours
    body = {"messages": messages, "max_tokens": 8, "temperature": 0}
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == expected
    with httpx.stream("POST", server.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=120) as s:
        text = "".join(json.loads(line[5:])["choices"][0]["delta"].get("content", "")
                       for line in s.iter_lines() if line.startswith("data:") and "[DONE]" not in line)
    assert text == expected


# ----------------------------------------------------------------------------- ChatDeployment worker


def write_registry(home: Path, kind: str, name: str, spec: dict, status: dict) -> None:
    p = home / "runs" / kind.lower() / f"{name}.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({"resource": {"apiVersion": "devops-model.io/v1alpha1", "kind": kind, "metadata": {"name": name},
                                          "spec": spec}, "status": status}))


@pytest.fixture
def lineage_home(local_home, tiny_bpe):
    """A local run registry as if pretrain → sft → quantize → eval had run; the 'int4' model is tiny_bpe."""
    home = local_home / "home"
    uri = Path(tiny_bpe).resolve().as_uri()
    write_registry(home, "PretrainRun", "pt", {"model": {"uri": "hf://Qwen/Qwen2.5-0.5B"}},
                   {"state": "Succeeded", "artifact": {"uri": uri}})
    write_registry(home, "SFTRun", "sft-lora", {"model": {"fromRun": {"kind": "PretrainRun", "name": "pt"}}},
                   {"state": "Succeeded", "artifact": {"uri": uri, "mergedUri": uri}})
    write_registry(home, "QuantizeRun", "sft-lora-int4", {"model": {"fromRun": {"kind": "SFTRun", "name": "sft-lora"}}},
                   {"state": "Succeeded", "artifact": {"uri": uri, "format": "gptq-int4"}})
    scores = {"overall": [{"shots": 0, "style": "base", "correct": 3, "total": 10, "accuracy": 0.3}],
              "exams": [{"exam": "devops-eval", "shots": 0, "style": "base", "correct": 3, "total": 10, "accuracy": 0.3}]}
    write_registry(home, "EvalRun", "int4-eval", {"model": {"fromRun": {"kind": "QuantizeRun", "name": "sft-lora-int4"}}},
                   {"state": "Succeeded", "scores": scores})
    return local_home


def run_env(extra=None):
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(extra or {})}


def test_chat_deployment_runs_locally_with_lineage_and_scores(lineage_home):
    """examples/local/chat.yaml as a user runs it: serves until Ctrl-C, then records its endpoint."""
    port = free_port()
    log = (lineage_home / "run.log").open("w")
    proc = subprocess.Popen([*cli(), "run", "-f", str(REPO / "examples/local/chat.yaml")], cwd=REPO,
                            env=run_env({"DEVOPS_MODEL_SERVE_PORT": str(port)}), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.time() < deadline, (lineage_home / "run.log").read_text()[-3000:]
            time.sleep(0.3)
        info = httpx.get(url + "/v1/info").json()
        assert info["model"] == "devops-model-tiny-int4" and info["maxConcurrency"] == 8
        assert info["lineage"] == ["hf://Qwen/Qwen2.5-0.5B", "PretrainRun/pt", "SFTRun/sft-lora", "QuantizeRun/sft-lora-int4"]
        assert info["scores"]["overall"][0]["accuracy"] == 0.3 and info["scoresFrom"] == "EvalRun/int4-eval"
        r = httpx.post(url + "/v1/chat/completions", json={"model": "devops-model-tiny-int4", "max_tokens": 4,
                                                             "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
    assert proc.returncode == 0, (lineage_home / "run.log").read_text()[-3000:]
    entry = json.loads((lineage_home / "home/runs/chatdeployment/devops-chat.json").read_text())
    assert entry["status"]["state"] == "Succeeded"
    assert entry["status"]["endpoint"] == {"url": url, "model": "devops-model-tiny-int4", "ui": url + "/"}


@pytest.mark.parametrize("gate, why, reason", [
    ({"evalRun": "int4-eval", "minAccuracy": "0.5", "shots": 0}, "GateNotMet",
     "scored 0.300 at 0 shots (base), below spec.gate.minAccuracy 0.5"),
    ({"evalRun": "int4-eval", "minAccuracy": "0.1", "shots": 5}, "GateNotMet", "has no overall score at 5 shots"),
    ({"evalRun": "never-ran", "minAccuracy": "0.1"}, "WaitingForGate", "EvalRun/never-ran (spec.gate.evalRun): it does not exist"),
], ids=["below-minimum", "no-such-shots", "missing-evalrun"])
def test_gate_refuses_to_serve(lineage_home, gate, why, reason):
    """The gate's rule and reasons are the operator's (devops_model.lineage): one semantic everywhere."""
    doc = yaml.safe_load((REPO / "examples/local/chat.yaml").read_text())
    doc["spec"]["gate"] = gate
    f = lineage_home / "chat.yaml"
    f.write_text(dump(doc))
    r = subprocess.run([*cli(), "run", "-f", str(f)], cwd=REPO, env=run_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 3, r.stderr
    assert f"failed ({why})" in r.stderr and reason in r.stderr and "spec.gate" in r.stderr


def test_a_failing_step_fails_its_requests_and_the_engine_goes_on(tiny_bpe):
    """An exception inside a forward step (out of memory, a kernel error) answers the requests in
    the batch with an error; the loop keeps serving the next ones."""
    from devops_workloads.serve.engine import BatchingEngine, SamplingParams

    engine = BatchingEngine.load(tiny_bpe, device="cpu", max_batch_size=4)
    real_forward = engine.model.forward
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated out of memory")
        return real_forward(*args, **kwargs)

    engine.model.forward = flaky
    engine.start()
    try:
        events = []
        done = threading.Event()
        engine.submit(engine.tokenizer("hello").input_ids, SamplingParams(max_tokens=10, temperature=0),
                      lambda ev: (events.append(ev), done.set() if ev.finish_reason else None))
        assert done.wait(60)
        assert events[-1].finish_reason == "error" and "simulated out of memory" in events[-1].error
        assert engine.alive
        assert engine_answers(engine, PROMPTS[:2], max_tokens=4) == engine_answers(engine, PROMPTS[:2], max_tokens=4)
    finally:
        engine.stop()


def test_requests_joining_a_running_batch_get_exactly_generates_answers(tiny_bpe):
    """Continuous batching: requests of different lengths arrive while others are decoding; each is
    prefilled, merged into the running batch (left-padded caches) and leaves when done. Greedy
    answers must equal transformers' generate for each prompt alone."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from devops_workloads.serve.engine import BatchingEngine, SamplingParams

    tok = AutoTokenizer.from_pretrained(tiny_bpe)
    model = AutoModelForCausalLM.from_pretrained(tiny_bpe, dtype=torch.float32).eval()
    prompts = ["Kubernetes schedules pods", "hello", "CI/CD 流水线在每次提交时构建、测试并发布应用。 more text here",
               "a", "Prometheus scrapes", "kubectl get pods -A lists"]
    lengths = [20, 5, 30, 12, 8, 25]
    expected = []
    with torch.inference_mode():
        for p, n in zip(prompts, lengths):
            ids = tok(p, return_tensors="pt").input_ids
            out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
            expected.append(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))

    engine = BatchingEngine(model, tok, max_batch_size=4)
    batch_sizes = []
    engine.stats.on_step = batch_sizes.append
    engine.start()
    got, done = {}, threading.Event()
    try:
        for i, (p, n) in enumerate(zip(prompts, lengths)):
            def sink(ev, i=i):
                if ev.finish_reason:
                    got[i] = (ev.full_text, ev.completion_tokens)
                    if len(got) == len(prompts):
                        done.set()
            engine.submit(tok(p).input_ids, SamplingParams(max_tokens=n, temperature=0, ignore_eos=True), sink)
            time.sleep(0.01 * i)  # staggered: later requests join a batch that is already decoding
        assert done.wait(120)
    finally:
        engine.stop()
    assert [got[i][0] for i in range(len(prompts))] == expected
    assert [got[i][1] for i in range(len(prompts))] == lengths
    assert max(batch_sizes) > 1 and max(batch_sizes) <= 4


def _greedy_events(engine, prompts, max_tokens, **params):
    """Every event of greedy, ignore_eos answers to ``prompts``, all submitted at once (one batch)."""
    from devops_workloads.serve.engine import SamplingParams

    events = {i: [] for i in range(len(prompts))}
    finished = threading.Event()
    left = [len(prompts)]

    def sink_for(i):
        def sink(ev):
            events[i].append(ev)
            if ev.finish_reason:
                left[0] -= 1
                if not left[0]:
                    finished.set()
        return sink

    for i, p in enumerate(prompts):
        engine.submit(engine.tokenizer(p).input_ids,
                      SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True, **params), sink_for(i))
    assert finished.wait(120)
    return [events[i] for i in range(len(prompts))]


def test_greedy_logprobs_are_log_softmax_of_the_logits_and_optional(tiny_bpe):
    """A greedy token's processed log-probability is exactly log_softmax of the model's logits at
    that token (what it was before the sampling was made cheaper); turned off (as the OpenAI routes
    do) it is None, and the tokens and raw log-probabilities do not change."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from devops_workloads.serve.engine import BatchingEngine

    tok = AutoTokenizer.from_pretrained(tiny_bpe)
    model = AutoModelForCausalLM.from_pretrained(tiny_bpe, dtype=torch.float32).eval()
    engine = BatchingEngine(model, tok, max_batch_size=4)
    engine.start()
    try:
        on = _greedy_events(engine, PROMPTS, 6, logprobs=0)
        off = _greedy_events(engine, PROMPTS, 6, logprobs=0, sampled_logprob=False)
    finally:
        engine.stop()
    assert [[e.token_id for e in evs] for evs in on] == [[e.token_id for e in evs] for evs in off]
    # Equal up to float rounding: which requests share a step (their arrival) decides how many rows
    # a matrix product has, and the CPU kernels round a row's dot products differently by that count.
    assert [[e.raw_logprob for e in evs] for evs in on] == [[pytest.approx(e.raw_logprob, abs=1e-5) for e in evs] for evs in off]
    assert all(e.logprob is None for evs in off for e in evs)
    with torch.inference_mode():  # the first token of each answer, from a plain forward of its prompt alone
        for p, evs in zip(PROMPTS, on):
            logits = model(tok(p, return_tensors="pt").input_ids).logits[0, -1].float()
            logits[len(tok):] = -float("inf")
            expected = torch.log_softmax(logits, -1)[evs[0].token_id].item()
            assert evs[0].token_id == int(logits.argmax())
            assert evs[0].logprob == pytest.approx(expected, abs=1e-5)
            assert evs[0].logprob == evs[0].raw_logprob  # greedy, no penalties: the same distribution


def test_nan_and_infinite_logits_are_still_sampled(tiny_bpe):
    """A broken checkpoint's NaN or ±inf logits: NaN counts as 0, +inf as the largest float and
    -inf as the smallest, so every row still gets a token and a finite log-probability; the finite
    rows of the same batch get exactly what they get alone."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from devops_workloads.serve.engine import BatchingEngine, GenerationRequest, SamplingParams

    tok = AutoTokenizer.from_pretrained(tiny_bpe)
    model = AutoModelForCausalLM.from_pretrained(tiny_bpe, dtype=torch.float32).eval()
    engine = BatchingEngine(model, tok, max_batch_size=4)
    vocab = model.config.vocab_size
    torch.manual_seed(0)
    clean = torch.randn(vocab)
    nan_row = torch.randn(vocab)
    nan_row[7] = float("nan")
    nan_row[8] = 50.0  # the largest finite logit wins; the NaN counts as 0
    inf_row = torch.randn(vocab)
    inf_row[11] = float("inf")
    dead_row = torch.full((vocab,), float("-inf"))  # nothing allowed: every column is equally (un)likely

    def requests(n, **params):
        return [GenerationRequest([1, 2, 3], SamplingParams(temperature=0, logprobs=2, **params), lambda ev: None)
                for _ in range(n)]

    alone = engine._sample(clean[None].clone(), requests(1))
    got = engine._sample(torch.stack([clean, nan_row, inf_row, dead_row]), requests(4))
    assert got[0] == alone[0]
    assert got[1][0] == 8 and got[2][0] == 11 and got[3][0] == 0
    for tok_id, lp, raw, top in got:
        assert lp is not None and lp == lp and abs(lp) != float("inf")
        assert raw == raw and abs(raw) != float("inf")
        assert all(v == v and abs(v) != float("inf") for _, v in top)
    assert got[2][1] == 0.0  # +inf became the largest float: all the mass on that token
    # sampled (not greedy) rows come through too
    sampled = engine._sample(torch.stack([nan_row, inf_row, dead_row]),
                             [GenerationRequest([1], SamplingParams(temperature=1.0, top_p=0.9), lambda ev: None)
                              for _ in range(3)])
    assert all(0 <= t < len(tok) for t, *_ in sampled)
    assert sampled[1][0] == 11
    # a temperature below 1 divides the largest float: it must not overflow to +inf (softmax NaN)
    for temperature in (0.5, 0.01):
        cold = engine._sample(torch.stack([inf_row, nan_row]), [
            GenerationRequest([1], SamplingParams(temperature=temperature, top_k=5, logprobs=1), lambda ev: None)
            for _ in range(2)])
        assert cold[0][0] == 11 and cold[1][0] == 8
        assert all(lp == lp and raw == raw for _, lp, raw, _ in cold)


def test_plain_greedy_rows_take_the_block_argmax_and_agree_with_the_careful_path(tiny_bpe):
    """Greedy rows that nothing changes take one vectorised pass (first_argmax): the same token
    as torch's argmax over the tokenizer's columns, ties to the first column, for every shape the
    engine hands it (the limit inside the last block, a vocabulary smaller than a block, bfloat16,
    rows of a prefill's [B, L, V] logits); a row with NaN or ±inf gets what the careful path gives."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from devops_workloads.serve import engine as engine_mod
    from devops_workloads.serve.engine import BatchingEngine, GenerationRequest, SamplingParams, first_argmax, greedy_tokens

    torch.manual_seed(0)
    block = engine_mod.ARGMAX_BLOCK
    for vocab, limit in [(151680, 151646), (4 * block, 4 * block), (4 * block + 3, 4 * block + 1), (block // 2, block // 2 - 5), (1, 1)]:
        for trial in range(6):
            x = torch.randn(5, vocab)
            if trial % 2:
                x = (x * 1.5).round()  # many ties
            if trial == 3:
                x[:, limit:] = 100.0  # the columns past the limit are never chosen
                x[1, :] = -float("inf")
                x[2, limit - 1] = 99.0  # the maximum in the limit's own block
            expected = x[:, :limit].argmax(-1)
            assert torch.equal(first_argmax(x, limit), expected), (vocab, limit, trial)
            if trial != 3:
                assert torch.equal(greedy_tokens(x, limit), expected)
            assert torch.equal(first_argmax(x.bfloat16(), limit), x.bfloat16()[:, :limit].argmax(-1))
    steps = torch.randn(3, 4, 1000)  # a prefill's logits: the last position of each row (not contiguous rows)
    assert torch.equal(first_argmax(steps[:, -1, :], 990), steps[:, -1, :990].argmax(-1))
    bad = torch.randn(3, 1000)
    bad[0, 5], bad[1, 6], bad[2, :] = float("nan"), float("inf"), -float("inf")
    for i in range(3):
        assert greedy_tokens(bad[i:i + 1], 1000) is None  # left to the careful path

    tok = AutoTokenizer.from_pretrained(tiny_bpe)
    model = AutoModelForCausalLM.from_pretrained(tiny_bpe, dtype=torch.float32).eval()
    engine = BatchingEngine(model, tok, max_batch_size=4)
    vocab = model.config.vocab_size
    rows = torch.randn(4, vocab)
    rows[1, 3] = float("nan")
    rows[2, 9] = float("inf")
    if vocab > len(tok):
        rows[3, len(tok):] = 1e6  # padded embedding rows are never chosen

    def requests(**params):
        return [GenerationRequest([1, 2, 3], SamplingParams(temperature=0, **params), lambda ev: None) for _ in range(4)]

    calls = []
    real = engine_mod.greedy_tokens
    engine_mod.greedy_tokens = lambda *a: (calls.append(1), real(*a))[1]
    try:
        plain = engine._sample(rows.clone(), requests(sampled_logprob=False))
        careful = engine._sample(rows.clone(), requests(sampled_logprob=True))
    finally:
        engine_mod.greedy_tokens = real
    assert calls == [1]  # only the plain rows took the vectorised pass
    assert [t for t, *_ in plain] == [t for t, *_ in careful]
    assert plain[1][0] != 3 and plain[2][0] == 9 and plain[3][0] < len(tok)
    assert all(lp is None for _, lp, *_ in plain)


def test_event_relay_hands_a_whole_step_over_at_once():
    """The engine's events of one step reach the event loop in one call, in order, each in its
    request's queue; nothing crosses before the step ends."""
    import asyncio

    from devops_workloads.serve.engine import Event
    from devops_workloads.serve.streaming import EventRelay

    async def main():
        loop = asyncio.get_running_loop()
        relay = EventRelay()
        queues = [asyncio.Queue(), asyncio.Queue()]
        sinks = [relay.sink(loop, q, i) for i, q in enumerate(queues)]
        wakeups = []
        real = loop.call_soon_threadsafe
        loop.call_soon_threadsafe = lambda f, *a: (wakeups.append(f) if f.__name__ == "_deliver" else None, real(f, *a))

        def engine_step():  # what the engine's thread does: emit per row, then flush once
            for n in range(3):
                for i, sink in enumerate(sinks):
                    sink(Event(token_id=10 * i + n))
                relay.flush()
                assert len(wakeups) == n + 1
        await asyncio.to_thread(engine_step)
        await asyncio.sleep(0.05)
        for i, q in enumerate(queues):
            got = [q.get_nowait() for _ in range(q.qsize())]
            assert got and all(index == i for index, _ in got)
            assert [ev.token_id for _, ev in got] == [10 * i + n for n in range(3)]
        relay.flush()  # nothing held: no wake-up
        assert len(wakeups) == 3

    asyncio.run(main())


def test_sse_events_are_single_data_lines():
    from devops_workloads.serve.streaming import sse_bytes

    assert sse_bytes("[DONE]") == b"data: [DONE]\r\n\r\n"
    raw = sse_bytes({"choices": [{"delta": {"content": "第一行\n第二行"}}]})
    assert raw.startswith(b"data: ") and raw.endswith(b"\r\n\r\n") and raw.count(b"\n") == 2
    assert json.loads(raw[6:].decode())["choices"][0]["delta"]["content"] == "第一行\n第二行"


def _answer_texts(tail, ids):
    """The text TextTail gives after each of ``ids`` arrives, for one request."""
    from devops_workloads.serve.engine import GenerationRequest, SamplingParams

    r = GenerationRequest([1], SamplingParams(), lambda ev: None)
    out = []
    for t in ids:
        r.generated.append(t)
        out.append(tail.text(r))
    return r, out


def test_answers_are_detokenized_incrementally_and_exactly_like_a_full_decode(tiny_qwen):
    """With Qwen's byte-level tokenizer the answer text is settled text plus a short decoded tail,
    and after every token it equals decoding the whole answer: Chinese and emoji split across
    byte tokens, special tokens in between (skipped), a model that emits invalid UTF-8 bytes."""
    import random

    from transformers import AutoTokenizer

    from devops_workloads.serve.engine import TextTail

    tok = AutoTokenizer.from_pretrained(tiny_qwen)
    tail = TextTail.for_tokenizer(tok)
    assert tail.incremental
    text = "如何排查 Pod 一直处于 CrashLoopBackOff？🚀 kubectl rollout undo deployment/web --to-revision=2\n" * 3
    ids = tok(text).input_ids
    byte_tokens = [tok.convert_tokens_to_ids(c) for c in ("ä", "¸", "Ń", "ðŁ", "Ģ")]  # pieces of UTF-8 sequences
    specials = [tok.convert_tokens_to_ids(s) for s in ("<|im_end|>", "<|endoftext|>", "<|im_start|>")]
    assert all(isinstance(i, int) and i >= 0 for i in byte_tokens + specials)
    rng = random.Random(0)
    mixed = list(ids)
    for _ in range(60):
        mixed.insert(rng.randrange(len(mixed) + 1), rng.choice(byte_tokens + specials + [rng.randrange(len(tok))]))
    for seq in (ids, mixed, [rng.randrange(len(tok)) for _ in range(200)]):
        r, texts = _answer_texts(tail, seq)
        assert texts == [tok.decode(seq[:k + 1], skip_special_tokens=True) for k in range(len(seq))]
        assert r.settled >= len(seq) - 2 * TextTail.SETTLE  # the tail stays short: work per token is bounded
    assert "\ufffd" in tok.decode(mixed, skip_special_tokens=True)  # the invalid bytes were really there

    # Through the engine: a 48-token answer (settled three times) streams deltas that add up to the
    # full decode of its tokens, which is also the final text.
    import torch
    from transformers import AutoModelForCausalLM

    from devops_workloads.serve.engine import BatchingEngine, SamplingParams

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen, dtype=torch.float32).eval()
    engine = BatchingEngine(model, tok, max_batch_size=2)
    assert engine.detokenizer.incremental
    events, done = [], threading.Event()
    engine.start()
    try:
        engine.submit(tok(text).input_ids, SamplingParams(max_tokens=48, temperature=0, ignore_eos=True),
                      lambda ev: (events.append(ev), ev.finish_reason and done.set()))
        assert done.wait(120)
    finally:
        engine.stop()
    answer = tok.decode([e.token_id for e in events], skip_special_tokens=True)
    assert len(events) == 48 and events[-1].full_text == answer == "".join(e.text for e in events)


def test_tokenizers_whose_text_is_not_concatenative_decode_the_whole_answer():
    """A SentencePiece-style tokenizer drops the leading space of the first piece, so the text of
    a + b is not the text of a followed by b's: such a tokenizer keeps the full decode."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from devops_workloads.serve.engine import TextTail

    vocab = {"<unk>": 0, "▁Hello": 1, "▁world": 2, "▁pods": 3, "!": 4}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", clean_up_tokenization_spaces=False)
    ids = [1, 2, 3, 4] * 10
    assert tok.decode(ids[:1]) + tok.decode(ids[1:2]) != tok.decode(ids[:2])  # why it cannot be incremental
    tail = TextTail.for_tokenizer(tok)
    assert not tail.incremental
    _, texts = _answer_texts(tail, ids)
    assert texts == [tok.decode(ids[:k + 1], skip_special_tokens=True) for k in range(len(ids))]
    assert not TextTail.for_tokenizer(type("Slow", (), {"decode": tok.decode})()).incremental
