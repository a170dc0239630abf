"""The lean decode step (serve/fastpath.py): the same logits and tokens as the model's forward, step
by step, while rows join (merge) and leave (select); the model's forward for every model it does
not reproduce; the same answers from a running engine with it on and off."""

from __future__ import annotations

import logging
import threading
import time

import pytest

# Prompts of different lengths (15, 1, 18 and 5 tokens: left-padded in one prefill), and two that
# join a running batch: one shorter than its cache (4 tokens), one longer (40).
FIRST = ["Kubernetes schedules pods onto nodes by their requests and the nodes' free resources",
         "hello", "CI/CD 流水线在每次提交时构建、测试并发布应用。", "kubectl get pods -A"]
LATER = ["Prometheus scrapes", "如何排查 Pod 一直处于 CrashLoopBackOff？先看 kubectl describe pod 的 Events，"
         "再看 kubectl logs --previous 的输出，最后检查镜像、探针和资源限制。"]
STEPS = 30


@pytest.fixture(scope="module")
def qwen(tiny_qwen):
    """The tiny Qwen2 model (its own copy) and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_qwen)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen, dtype=torch.float32).eval()
    return _perturbed(model), tok


def _perturbed(model):
    """``model`` with random biases and RMSNorm weights: freshly initialised ones are zeros and
    ones, which would hide a bias or a norm weight the lean step forgot (trained models have both)."""
    import torch

    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
            elif "norm" in name:
                p.copy_(1 + torch.randn(p.shape, generator=gen) * 0.3)
    return model


def _small_model(model_type: str = "qwen2", **config):
    """A randomly initialised model of ``model_type`` with the tiny model's shape (grouped-query
    attention: 4 query heads over 2 key/value heads) and a vocabulary the Qwen tokenizer fits in."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(model_type, vocab_size=151680, hidden_size=64, intermediate_size=128,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                               max_position_embeddings=512, tie_word_embeddings=True, **config)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()


def _run_schedule(engine, tok, fast_steps):
    """Drive ``engine`` by hand through a continuous-batching schedule and return (the logits of
    every sampling call, the tokens of every request, (rows, cache width) after each decode step).

    Four prompts are prefilled together; two more join before decode step 5 (merged: the short one
    left-padded to the running cache, the running cache left-padded to the long one); the "hello"
    request ends at its max_tokens in step 6; the long late one is cancelled before step 12 (its
    row is dropped and the columns only it needed are trimmed). ``fast_steps(i)`` says whether
    decode step i runs the lean step or the model's forward."""
    import torch

    from devops_workloads.serve.engine import GenerationRequest, SamplingParams

    decoder = engine._decode_path()
    seen = []
    real_sample = engine._sample

    def recording_sample(logits, reqs):
        seen.append(logits.detach().clone())
        return real_sample(logits, reqs)

    engine._sample = recording_sample

    def request(prompt, max_tokens=STEPS + 5):
        return GenerationRequest(tok(prompt).input_ids, SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True),
                                 lambda ev: None)

    first = [request(p, max_tokens=8 if i == 1 else STEPS + 5) for i, p in enumerate(FIRST)]
    later = [request(p) for p in LATER]
    widths = []
    with torch.inference_mode():
        engine._admit(first)
        for i in range(STEPS):
            if i == 5:
                engine._admit(later)
            if i == 12:
                later[1].cancel()
            engine._decoder = decoder if fast_steps(i) else None
            engine._decode_step()
            widths.append((len(engine._rows), engine._mask.shape[1]))
    return seen, [r.generated for r in first + later], widths


def _assert_same_steps(got, expected):
    import torch

    assert len(got) == len(expected) > STEPS
    for step, (a, b) in enumerate(zip(got, expected)):
        assert a.shape == b.shape, step
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0, msg=lambda m, step=step: f"sampling call {step}: {m}")
        assert torch.equal(a.argmax(-1), b.argmax(-1)), step


@pytest.mark.parametrize("schedule", ["fast", "alternating"])
def test_lean_steps_give_the_forwards_logits_and_tokens_while_rows_join_and_leave(qwen, schedule):
    """Every decode step through the lean path (or every other one: a row may switch paths at any
    step, both read and extend the same cache) gives the model's forward's logits and tokens."""
    from devops_workloads.serve.engine import BatchingEngine
    from devops_workloads.serve.fastpath import FastDecoder

    model, tok = qwen
    reference = BatchingEngine(model, tok, max_batch_size=8, fast_decode=False)
    expected, expected_tokens, widths = _run_schedule(reference, tok, lambda i: False)
    assert reference._decode_path() is None

    engine = BatchingEngine(model, tok, max_batch_size=8, fast_decode=True)
    decoder = engine._decode_path()
    assert isinstance(decoder, FastDecoder)
    calls = []
    real_step = decoder.step
    decoder.step = lambda *a: (calls.append(1), real_step(*a))[1]
    fast_steps = (lambda i: True) if schedule == "fast" else (lambda i: i % 2 == 0)
    got, tokens, got_widths = _run_schedule(engine, tok, fast_steps)

    assert len(calls) == sum(fast_steps(i) for i in range(STEPS))
    _assert_same_steps(got, expected)
    assert tokens == expected_tokens and all(tokens)
    assert got_widths == widths
    # the schedule did what it says: rows joined (with a longer prompt), left, and columns were trimmed
    rows, width = zip(*widths)
    assert (rows[4], rows[5], rows[6], rows[11], rows[12]) == (4, 6, 5, 5, 4)
    assert width[5] > width[4] + 1 and width[12] < width[11]


def test_rows_without_padding_decode_like_the_forward(qwen):
    """Rows of one length have no padding column: no attention mask at all, as transformers decides."""
    import torch

    from devops_workloads.serve.engine import BatchingEngine, GenerationRequest, SamplingParams

    model, tok = qwen
    ids = tok(FIRST[0]).input_ids
    results = []
    for fast in (False, True):
        engine = BatchingEngine(model, tok, fast_decode=fast)
        assert (engine._decode_path() is not None) == fast
        seen = []
        real_sample = engine._sample
        engine._sample = lambda logits, reqs: (seen.append(logits.clone()), real_sample(logits, reqs))[1]
        reqs = [GenerationRequest(ids[i:] + ids[:i], SamplingParams(max_tokens=50, temperature=0, ignore_eos=True),
                                  lambda ev: None) for i in range(3)]
        with torch.inference_mode():
            engine._admit(reqs)
            for _ in range(10):
                engine._decode_step()
        assert bool(engine._mask.all())
        results.append((seen, [r.generated for r in reqs]))
    (expected, expected_tokens), (got, tokens) = results
    assert len(got) == 11
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    assert tokens == expected_tokens


def test_llama_with_biases_decodes_like_its_forward(qwen):
    """Llama is the same computation (its q/k/v/o and MLP biases are optional): checked with every
    bias on, so that each is read from the model."""
    from devops_workloads.serve.engine import BatchingEngine
    from devops_workloads.serve.fastpath import FastDecoder

    _, tok = qwen
    model = _perturbed(_small_model("llama", attention_bias=True, mlp_bias=True))
    assert model.model.layers[0].self_attn.o_proj.bias is not None and model.model.layers[0].mlp.up_proj.bias is not None
    expected, expected_tokens, _ = _run_schedule(BatchingEngine(model, tok, fast_decode=False), tok, lambda i: False)
    engine = BatchingEngine(model, tok, fast_decode=True)
    assert isinstance(engine._decode_path(), FastDecoder)
    got, tokens, _ = _run_schedule(engine, tok, lambda i: True)
    _assert_same_steps(got, expected)
    assert tokens == expected_tokens


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_each_attention_implementation_and_dtype_decodes_like_its_forward(qwen, attn, dtype):
    """Eager attention has its own mask and softmax; half precision the model's casts (RMSNorm in
    float32, cos/sin in the model's dtype, eager's softmax in float32)."""
    import torch

    from devops_workloads.serve.engine import BatchingEngine

    _, tok = qwen
    model = _perturbed(_small_model(attn_implementation=attn)).to(getattr(torch, dtype))
    assert model.config._attn_implementation == attn
    expected, expected_tokens, _ = _run_schedule(BatchingEngine(model, tok, fast_decode=False), tok, lambda i: False)
    got, tokens, _ = _run_schedule(BatchingEngine(model, tok, fast_decode=True), tok, lambda i: True)
    assert all(g.dtype == getattr(torch, dtype) for g in got)
    _assert_same_steps(got, expected)
    assert tokens == expected_tokens


def test_the_lean_step_references_the_models_parameters(qwen):
    """No copy of any weight (the server's memory is measured against other servers), except the
    packed vocabulary projection, which pack_head makes on purpose (and which starts out None)."""
    from devops_workloads.serve.fastpath import fast_decoder

    model, _ = qwen
    decoder, _ = fast_decoder(model)
    own = {t.data_ptr() for t in [*model.parameters(), *model.buffers()]}
    assert decoder.packed_head is None
    held = [t for t in vars(decoder).values() if hasattr(t, "data_ptr")]
    held += [t for layer in decoder.layers for t in vars(layer).values() if hasattr(t, "data_ptr")]
    assert len(held) == 4 + 2 * 12 and all(t.data_ptr() in own for t in held)


def test_small_layers_run_on_one_thread_and_the_head_on_all(qwen, monkeypatch):
    """The tiny model's decoder layers run a step on one thread (their products are too small to
    split), the vocabulary projection on torch's count, which is restored afterwards even when the
    layers fail; layers the size of a real model's keep every thread."""
    import torch
    from transformers import DynamicCache

    from devops_workloads.serve import fastpath

    model, _ = qwen
    decoder, _ = fastpath.fast_decoder(model)
    assert decoder.layer_threads == 1
    from transformers import AutoConfig, AutoModelForCausalLM

    half_b = AutoConfig.for_model("qwen2", vocab_size=1000, hidden_size=896, intermediate_size=4864, num_hidden_layers=1,
                                  num_attention_heads=14, num_key_value_heads=2)  # Qwen2.5-0.5B's layer shape
    assert fastpath.FastDecoder(AutoModelForCausalLM.from_config(half_b).eval()).layer_threads is None
    outer = torch.get_num_threads()
    torch.set_num_threads(2)
    seen = []
    real_linear = fastpath.F.linear
    monkeypatch.setattr(fastpath.F, "linear", lambda x, w, b=None: (seen.append((w.shape[0], torch.get_num_threads())),
                                                                     real_linear(x, w, b))[1])
    try:
        cache = DynamicCache(config=model.config)
        tokens = torch.tensor([5, 7])
        mask = torch.ones(2, 1, dtype=torch.long)
        with torch.inference_mode():
            logits = decoder.step(tokens, mask, torch.zeros(2, 1, dtype=torch.long), cache)
            assert torch.get_num_threads() == 2
            vocab = model.config.vocab_size
            assert {n for w, n in seen if w != vocab} == {1} and [n for w, n in seen if w == vocab] == [2]
            expected = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=torch.zeros(2, 1, dtype=torch.long)).logits[:, -1]
            torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
            monkeypatch.setattr(fastpath.F, "embedding", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
            with pytest.raises(RuntimeError, match="boom"):
                decoder.step(tokens, mask, torch.zeros(2, 1, dtype=torch.long), DynamicCache(config=model.config))
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(outer)


def test_the_packed_vocabulary_projection_gives_f_linears_numbers(qwen, monkeypatch, caplog):
    """pack_head packs lm_head's weight once (oneDNN) and uses it only for the row counts at which
    it gives exactly F.linear's numbers; every count gives them either way. Without the oneDNN ops
    the projection stays F.linear, and the engine logs what it decided."""
    import torch
    import torch.nn.functional as F

    from devops_workloads.serve import fastpath
    from devops_workloads.serve.engine import BatchingEngine

    model, tok = qwen
    decoder, _ = fastpath.fast_decoder(model)
    timings = iter([0.004, 0.003])  # F.linear, then the packed product: the packed one is faster
    monkeypatch.setattr(fastpath, "_best_time", lambda fn: (fn(), next(timings))[1])
    note = decoder.pack_head(16)
    packed = decoder.packed_head
    assert torch.backends.mkldnn.is_available()  # x86 and ARM builds of torch have it
    assert packed is not None and 16 in packed.rows and "packed weight for" in note, note
    gen = torch.Generator().manual_seed(5)
    with torch.inference_mode():
        for n in range(1, 17):
            h = torch.randn(n, model.config.hidden_size, generator=gen)
            assert torch.equal(decoder.project(h), F.linear(h, model.lm_head.weight, model.lm_head.bias)), n
    timings = iter([0.003, 0.004])  # a CPU where the packed product is slower: not used
    assert decoder.pack_head(16) == "the vocabulary projection runs F.linear (the packed one was not faster: 4.00 vs 3.00 ms)"
    assert decoder.packed_head is None
    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", lambda *a: (_ for _ in ()).throw(RuntimeError("no oneDNN")))
    assert decoder.pack_head(16) == "the vocabulary projection runs F.linear (oneDNN packing failed: RuntimeError: no oneDNN)"
    assert decoder.packed_head is None
    monkeypatch.undo()
    monkeypatch.setattr(fastpath, "_best_time", lambda fn: (fn(), next(timings))[1])
    # pack_head's pair, then prepare_shortlist's (plain, screened) at 1, 2 and 4 rows: faster up to 2
    timings = iter([0.004, 0.003, 0.004, 0.002, 0.004, 0.002, 0.004, 0.005])
    with caplog.at_level(logging.INFO, logger="devops_model.serve"):
        engine = BatchingEngine(model, tok, max_batch_size=4)
        engine._decode_path()
    assert "the vocabulary projection uses a packed weight for" in caplog.text
    assert "greedy steps of up to 2 rows screen the vocabulary in int8" in caplog.text
    assert engine._decoder.shortlist is not None and engine._decoder.shortlist.rows == {1, 2}
    assert max(engine._decoder.packed_head.rows) <= 4


def _lora(model):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))


def _lora_injected(model):
    return _lora(model).base_model.model  # the ForCausalLM itself, its projections now LoRA layers


def _hooked(model):
    model.model.layers[1].mlp.register_forward_hook(lambda *a: None)
    return model


def _patched_forward(model):
    real = model.model.layers[0].self_attn.forward
    model.model.layers[0].self_attn.forward = lambda *a, **k: real(*a, **k)
    return model


def _output_attentions(model):
    model.config.output_attentions = True
    return model


def _training(model):
    return model.train()


@pytest.mark.parametrize("make, why", [
    (lambda: _lora(_small_model()), "is not transformers' Qwen2ForCausalLM"),
    (lambda: _lora_injected(_small_model()), "not plain nn.Linear"),
    (lambda: _small_model(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}), "rope type 'linear'"),
    (lambda: _small_model(use_sliding_window=True, sliding_window=16, max_window_layers=0), "sliding-window"),
    (lambda: _small_model(attn_implementation="flex_attention"), "attention implementation 'flex_attention'"),
    (lambda: _small_model(hidden_act="gelu"), "activation 'gelu'"),
    (lambda: _small_model("qwen3"), "model type 'qwen3'"),
    (lambda: _hooked(_small_model()), "'model.layers.1.mlp' has hooks"),
    (lambda: _patched_forward(_small_model()), "'model.layers.0.self_attn' has hooks or a replaced forward"),
    (lambda: _output_attentions(_small_model(attn_implementation="eager")), "attentions or hidden states"),
    (lambda: _training(_small_model()), "training mode"),
], ids=["peft-wrapped", "lora-injected", "rope-scaling", "sliding-window", "flex-attention", "gelu", "qwen3",
        "forward-hook", "patched-forward", "output-attentions", "training"])
def test_models_the_lean_step_does_not_reproduce_decode_with_their_forward(qwen, make, why, caplog):
    from devops_workloads.serve.engine import BatchingEngine
    from devops_workloads.serve.fastpath import fast_decoder

    model = make()
    decoder, reason = fast_decoder(model)
    assert decoder is None and why in reason
    with caplog.at_level(logging.INFO, logger="devops_model.serve"):
        assert BatchingEngine(model, qwen[1], fast_decode=True)._decode_path() is None
    assert f"decode steps run the model's forward: {reason}" in caplog.text


def test_a_merged_lora_model_is_eligible(qwen):
    """A LoRA adapter merged on load (what the server does with an adapter folder) is a plain model again."""
    from devops_workloads.serve.fastpath import FastDecoder, fast_decoder

    assert isinstance(fast_decoder(_lora(_small_model()).merge_and_unload())[0], FastDecoder)


def test_the_environment_variable_and_the_serve_flag_turn_it_off(qwen, monkeypatch, caplog):
    from devops_workloads.serve.engine import BatchingEngine
    from devops_workloads.serve.fastpath import ENV, FastDecoder

    model, tok = qwen
    monkeypatch.delenv(ENV, raising=False)
    assert isinstance(BatchingEngine(model, tok)._decode_path(), FastDecoder)
    monkeypatch.setenv(ENV, "0")
    with caplog.at_level(logging.INFO, logger="devops_model.serve"):
        assert BatchingEngine(model, tok)._decode_path() is None
    assert f"decode steps run the model's forward: turned off ({ENV}=0 or --no-fast-decode)" in caplog.text

    import argparse

    from devops_workloads.serve import cli

    sub = argparse.ArgumentParser().add_subparsers()
    cli.register(sub)
    serve = sub.choices["serve"]
    assert "--no-fast-decode" in serve.format_help()
    assert serve.parse_args(["--model", "m", "--no-fast-decode"]).no_fast_decode
    assert not serve.parse_args(["--model", "m"]).no_fast_decode


def _answers(engine, tok, prompts, lengths, **params):
    """Greedy answers of a running engine, the requests arriving while others decode."""
    from devops_workloads.serve.engine import SamplingParams

    got, done = {}, threading.Event()
    engine.start()
    try:
        for i, (p, n) in enumerate(zip(prompts, lengths)):
            def sink(ev, i=i):
                if ev.finish_reason:
                    got[i] = (ev.full_text, ev.completion_tokens)
                    if len(got) == len(prompts):
                        done.set()
            engine.submit(tok(p).input_ids, SamplingParams(max_tokens=n, temperature=0, ignore_eos=True, **params), sink)
            time.sleep(0.01 * i)
        assert done.wait(120)
    finally:
        engine.stop()
    return [got[i] for i in range(len(prompts))]


def test_a_running_engine_answers_the_same_with_the_lean_step_on_and_off(qwen, monkeypatch, caplog):
    from devops_workloads.serve.engine import BatchingEngine
    from devops_workloads.serve.fastpath import ENV

    model, tok = qwen
    prompts, lengths = FIRST + LATER, [24, 5, 30, 12, 8, 20]
    monkeypatch.setenv(ENV, "0")
    off = _answers(BatchingEngine(model, tok, max_batch_size=4), tok, prompts, lengths)
    monkeypatch.delenv(ENV)
    with caplog.at_level(logging.INFO, logger="devops_model.serve"):
        on = _answers(BatchingEngine(model, tok, max_batch_size=4), tok, prompts, lengths)
    assert "decode steps run the lean decode step: qwen2 model with sdpa attention" in caplog.text
    assert on == off
    assert [n for _, n in on] == lengths and all(text for text, _ in on)


def test_new_prompts_share_the_running_rows_vocabulary_projection(qwen):
    """With the lean step, requests that arrive join the running rows' step: their prompts run
    through the model's body and their first tokens come from the same lm_head product as the
    running rows' next ones (one product per step, never one of their own). Every answer is the one
    ``generate`` gives the prompt alone; a prompt-scoring request and one that wants no token keep
    the separate prefill; a cancelled row leaves."""
    import torch

    from devops_workloads.serve.engine import BatchingEngine, GenerationRequest, SamplingParams

    model, tok = qwen
    engine = BatchingEngine(model, tok, max_batch_size=8)
    decoder = engine._decode_path()
    assert decoder is not None
    decoder.shortlist = None  # every step projects (the int8 screening of greedy rows: its own tests)
    projected, heads, threads = [], [], []
    real_project = decoder.project
    decoder.project = lambda h, n: (projected.append(h.shape[0]), threads.append((torch.get_num_threads(), n)), real_project(h, n))[2]
    hook = model.lm_head.register_forward_hook(lambda m, i, o: heads.append(o.shape))  # the separate prefill's head
    body_threads = []
    body_hook = model.model.layers[0].register_forward_pre_hook(lambda m, a: body_threads.append(torch.get_num_threads()))
    outer = torch.get_num_threads()
    assert outer > 1 and decoder.layer_threads == 1
    events: dict[int, list] = {}

    def request(i, prompt, **params):
        params = {"max_tokens": 10, "temperature": 0, "ignore_eos": True, **params}
        return GenerationRequest(tok(prompt).input_ids, SamplingParams(**params), lambda ev: events.setdefault(i, []).append(ev))

    first = [request(i, p) for i, p in enumerate(FIRST)]
    later = [request(4, LATER[0]), request(5, LATER[1], max_tokens=6)]
    scoring = request(6, FIRST[0], max_tokens=3, prompt_logprobs=1)
    nothing = request(7, FIRST[2], max_tokens=0, prompt_logprobs=0)
    try:
        with torch.inference_mode():
            engine._step(first)
            assert projected == [4] and heads == []
            engine._step([])
            engine._step(later + [scoring, nothing])
            # the scorer and the empty request were prefilled on their own (all positions' logits) and the scorer
            # then decoded with the running rows; the two new ones joined the projection
            vocab = model.config.vocab_size
            assert heads == [(1, len(tok(FIRST[0]).input_ids), vocab), (1, len(tok(FIRST[2]).input_ids), vocab)]
            assert projected[2] == 4 + 1 + 2
            first[1].cancel()
            while engine._rows:
                engine._step([])
    finally:
        hook.remove()
        body_hook.remove()
    assert max(projected) <= 8 and len(heads) == 2
    # the small model's step runs on one thread, the projection on torch's count (restored afterwards)
    assert set(threads) == {(1, outer)} and torch.get_num_threads() == outer
    # the joined prompts on one thread, the separately prefilled (scored) ones on torch's count
    assert body_threads == [1, outer, outer, 1]
    assert events[7][-1].finish_reason == "length" and events[7][-1].completion_tokens == 0
    assert events[6][0].prompt_logprobs is not None and len(events[6][0].prompt_logprobs) == len(tok(FIRST[0]).input_ids)
    assert len(events[1]) == 3 and all(e.finish_reason is None for e in events[1])  # cancelled after its third token
    with torch.inference_mode():
        for i, (prompt, n) in {0: (FIRST[0], 10), 2: (FIRST[2], 10), 3: (FIRST[3], 10), 4: (LATER[0], 10),
                               5: (LATER[1], 6), 6: (FIRST[0], 3)}.items():
            ids = tok(prompt, return_tensors="pt").input_ids
            out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
            assert [e.token_id for e in events[i]] == out[0, ids.shape[1]:].tolist(), i
            assert events[i][-1].finish_reason == "length"


def _screened(model, rows=16, weight=None):
    """The lean decoder of ``model`` with the int8 shortlist for 1..``rows`` rows (no timing), of
    ``weight`` instead of its lm_head's when given."""
    from devops_workloads.serve import fastpath

    decoder, _ = fastpath.fast_decoder(model)
    if weight is not None:
        decoder.lm_head_w = weight
    decoder.shortlist = fastpath.shortlist_for(decoder.lm_head_w, rows)
    return decoder


def test_the_int8_shortlist_gives_the_projections_greedy_tokens(qwen):
    """FastDecoder.greedy: for hidden states of every scale, flat and peaked rows, 1 to 16 rows and
    vocabulary limits, exactly the argmax of F.linear's logits among the first ``limit`` entries;
    it decides (not None) for nearly all of them, and says None for non-finite states."""
    import torch
    import torch.nn.functional as F

    from devops_workloads.serve.engine import greedy_tokens

    model, _ = qwen
    decoder = _screened(model)
    weight = model.lm_head.weight
    vocab, hidden = weight.shape
    gen = torch.Generator().manual_seed(7)
    decided = total = 0
    with torch.inference_mode():
        for n in (1, 3, 16):
            for scale in (0.01, 1.0, 30.0, 1e4):
                for limit in (vocab, vocab - 300, 1000, 257):
                    h = torch.randn(n, hidden, generator=gen) * scale
                    h[0, 3] *= 20  # an outlier dimension, as real models' hidden states have
                    peaked = weight[torch.randint(0, limit, (n,), generator=gen)] * scale * 40 + h * 0.1
                    for x in (h, peaked, -h):
                        got = decoder.greedy(x, limit)
                        total += 1
                        if got is not None:
                            decided += 1
                            assert torch.equal(got, greedy_tokens(F.linear(x, weight), limit)), (n, scale, limit)
        assert decided >= 0.9 * total, (decided, total)
        h = torch.randn(4, hidden, generator=gen)
        h[2, 5] = float("nan")
        assert decoder.greedy(h, vocab) is None
        h[2, 5] = float("inf")
        assert decoder.greedy(h, vocab) is None
        assert _screened(model, rows=2).greedy(torch.randn(3, hidden, generator=gen), vocab) is None  # not for 3 rows


def test_the_shortlist_keeps_a_token_the_int8_screening_ranks_second_and_leaves_near_ties_to_the_projection(qwen):
    """Two vocabulary rows that the int8 screening ranks the other way round from float32: with the
    weight's largest entry 1, its step is t = 1/127; h = (1, 1, 0, …) quantizes exactly; row i =
    (1 - 0.49t, 1 - 0.49t) becomes (1, 1), screened 2; row j = (1 - 0.51t, 1) becomes (1 - t, 1),
    screened 2 - t, although its float32 logit 2 - 0.51t is the larger. The shortlist keeps j (a
    screening that kept only its top would answer i). Rows whose float32 logits tie or differ by
    rounding noise: None."""
    import torch
    import torch.nn.functional as F

    from devops_workloads.serve.engine import greedy_tokens

    model, _ = qwen
    weight = model.lm_head.weight.detach().clone()
    vocab, hidden = weight.shape
    assert float(weight.abs().max()) < 0.5
    t = 1 / 127
    i, j = 1000, 5000  # different blocks of 256
    weight[i] = 0
    weight[j] = 0
    weight[i, :2] = torch.tensor([1 - 0.49 * t, 1 - 0.49 * t])
    weight[j, :2] = torch.tensor([1 - 0.51 * t, 1.0])
    h = torch.zeros(1, hidden)
    h[0, :2] = 1
    with torch.inference_mode():
        decoder = _screened(model, weight=weight)
        products = torch._int_mm(torch.tensor([[127, 127] + [0] * (hidden - 2)], dtype=torch.int8), decoder.shortlist.weight)
        assert products[0, i] > products[0, j] and int(products.argmax()) == i  # the screening ranks i first
        assert greedy_tokens(F.linear(h, weight), vocab).tolist() == [j]  # float32: j
        assert decoder.greedy(h, vocab).tolist() == [j]
        weight[j] = weight[i]  # an exact tie: F.linear's argmax is the first; the shortlist does not decide
        assert decoder.greedy(h, vocab) is None
        weight[j, 1] = torch.nextafter(weight[i, 1], torch.tensor(2.0))  # one float32 ulp apart
        assert decoder.greedy(h, vocab) is None


def test_the_shortlist_turns_itself_off_when_it_mostly_leaves_steps_to_the_projection(qwen, caplog):
    """Hidden states whose logits are too flat for the screening (here: all zero) cost an int8
    product and then the projection; after a window of such steps the shortlist turns off, says so
    in the log, and the steps project from then on."""
    import torch

    from devops_workloads.serve import fastpath

    model, _ = qwen
    decoder = _screened(model)
    flat = torch.zeros(2, model.config.hidden_size)
    peaked = model.lm_head.weight[[10, 20]].detach() * 40
    with torch.inference_mode(), caplog.at_level(logging.WARNING, logger="devops_model.serve"):
        for k in range(fastpath.SHORTLIST_WINDOW - 1):
            got = decoder.greedy(flat if k % 2 else peaked, 1000)
            assert (got is None) == bool(k % 2)
        assert decoder.shortlist is not None
        decoder.greedy(flat, 1000)  # the window's 64th call: 32 of 64 left to the projection, not most
        assert decoder.shortlist is not None
        for k in range(fastpath.SHORTLIST_WINDOW):  # the next window: all of them
            decoder.greedy(flat, 1000)
        assert decoder.shortlist is None and decoder.greedy(peaked, 1000) is None
    assert "greedy steps to the projection: turned off" in caplog.text and decoder.shortlist_note


def test_prepare_shortlist_decides_from_a_probe_and_timings(qwen, monkeypatch):
    """The shortlist serves the row counts up to the last power of two at which it was faster; not
    at all when it is slower for one row, when torch._int_mm's products are not exact (a kernel
    whose 16-bit sums saturate), for a bfloat16 head or a head with a bias."""
    import torch

    from devops_workloads.serve import fastpath

    model, _ = qwen
    decoder, _ = fastpath.fast_decoder(model)
    timings = iter([])
    monkeypatch.setattr(fastpath, "_best_time", lambda fn: (fn(), next(timings))[1])
    timings = iter([2, 1, 2, 1, 2, 1, 2, 1, 2, 1])  # (plain, screened) at 1, 2, 4, 8, 16 rows
    assert decoder.prepare_shortlist(16, 1000).startswith("greedy steps of up to 16 rows screen the vocabulary in int8")
    assert decoder.shortlist.rows == set(range(1, 17))
    timings = iter([2, 1, 2, 1, 2, 1, 1, 2])
    assert decoder.prepare_shortlist(16, 1000).startswith("greedy steps of up to 4 rows screen")
    assert decoder.shortlist.rows == {1, 2, 3, 4}
    timings = iter([1, 2])
    assert decoder.prepare_shortlist(16, 1000) == "greedy steps take the full projection's argmax (the int8 shortlist was not faster)"
    assert decoder.shortlist is None
    real = torch._int_mm
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: real(a, b).clamp(-(2 ** 15), 2 ** 15 - 1))  # saturating sums
    assert decoder.prepare_shortlist(16, 1000) == "greedy steps take the full projection's argmax (torch._int_mm's int8 products were not exact here)"
    assert decoder.shortlist is None
    monkeypatch.setattr(torch, "_int_mm", real)
    decoder.lm_head_b = torch.zeros(model.lm_head.weight.shape[0])
    assert "float32 CPU heads without bias" in decoder.prepare_shortlist(16, 1000)
    assert decoder.shortlist is None


def test_a_running_engine_answers_the_same_with_the_shortlist(qwen, monkeypatch):
    """Greedy requests arriving while others decode: the same answers with the shortlist serving
    up to 3 rows as with the lean step off; the shortlist decided those steps except near-ties (the
    projection ran for those and for the row count it does not serve)."""
    import torch

    from devops_workloads.serve import fastpath
    from devops_workloads.serve.engine import BatchingEngine

    model, tok = qwen
    prompts, lengths = FIRST + LATER, [24, 5, 30, 12, 8, 20]
    monkeypatch.setenv(fastpath.ENV, "0")
    # as the OpenAI routes ask (no sampled log-probability): the shortlist's rows
    off = _answers(BatchingEngine(model, tok, max_batch_size=4), tok, prompts, lengths, sampled_logprob=False)
    monkeypatch.delenv(fastpath.ENV)
    engine = BatchingEngine(model, tok, max_batch_size=4)
    decoder = engine._decode_path()
    decoder.shortlist = fastpath.shortlist_for(model.lm_head.weight, 3)
    decided, projected = [], []
    real_greedy, real_project = decoder.greedy, decoder.project
    decoder.greedy = lambda h, *a: (lambda t: (decided.append((h.shape[0], t is not None)), t)[1])(real_greedy(h, *a))
    decoder.project = lambda h, *a: (projected.append(h.shape[0]), real_project(h, *a))[1]
    on = _answers(engine, tok, prompts, lengths, sampled_logprob=False)
    assert on == off
    served = [ok for n, ok in decided if n <= 3]
    # a near-tie (float32 logits closer than the rounding bound) is left to the projection
    # (how many steps ran with 3 rows or fewer depends on when the requests arrive: 20-30 here)
    assert len(served) >= 10 and sum(served) >= 0.9 * len(served), decided
    assert not any(ok for n, ok in decided if n > 3) and projected == [n for n, ok in decided if not ok]
    assert torch.get_num_threads() > 1


def test_the_cache_grows_in_place_like_dynamiclayer_update_and_never_writes_a_view_it_gave_away():
    """append_kv returns what DynamicLayer.update returns, step after step, while the layer's
    tensors are replaced the ways the engine and transformers replace them (row selection, a
    left-padded merge, trimmed columns, a step through the model's forward, a crop); between those
    it writes into the same buffer (no copy of the cache), and a view handed out before a
    replacement keeps its values."""
    import torch
    from transformers.cache_utils import DynamicLayer

    from devops_workloads.serve.fastpath import KV_ROOM_MIN, append_kv

    gen = torch.Generator().manual_seed(0)

    def new(rows, length=1):
        return torch.randn(rows, 2, length, 8, generator=gen), torch.randn(rows, 2, length, 8, generator=gen)

    ours, ref = DynamicLayer(), DynamicLayer()
    k, v = new(3, 5)
    for layer in (ours, ref):
        layer.update(k, v)  # the prefill (the model's forward)

    def step(rows):
        k, v = new(rows)
        got, expected = append_kv(ours, k, v), ref.update(k, v)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
        assert ours.get_seq_length() == ref.get_seq_length()
        return got

    keys, _ = step(3)
    storage = keys.data_ptr()
    for _ in range(KV_ROOM_MIN + 3):  # fills the first room and moves once into a larger buffer
        keys, _ = step(3)
    moved = keys.data_ptr()
    assert moved != storage
    for _ in range(5):  # room left: the same buffer, no copy
        keys, _ = step(3)
        assert keys.data_ptr() == moved
    held, held_values = keys.clone(), ours.values.clone()
    given = (ours.keys, ours.values)

    replacements = [
        lambda layer: layer.batch_select_indices(torch.tensor([0, 2])),       # rows leave
        lambda layer: layer.crop(-2),                                          # a crop: a shorter view of the same buffer
        lambda layer: setattr(layer, "keys", layer.keys[..., 3:, :]) or setattr(layer, "values", layer.values[..., 3:, :]),
        lambda layer: layer.update(*new_for(layer)),                           # a step through the forward
    ]
    for replace in replacements:
        replace(ours)
        replace(ref)
        step(ours.keys.shape[0])
        assert torch.equal(given[0], held) and torch.equal(given[1], held_values), "a view given away was written"
        given = (ours.keys, ours.values)
        held, held_values = ours.keys.clone(), ours.values.clone()
    # a merge with a left-padded other batch (the engine's _merge): new tensors again
    k2, v2 = new(1, ours.keys.shape[-2])
    for layer in (ours, ref):
        layer.keys, layer.values = torch.cat([layer.keys, k2]), torch.cat([layer.values, v2])
    for _ in range(3):
        step(3)
    assert torch.equal(given[0], held) and torch.equal(given[1], held_values)


def new_for(layer):
    """A one-position key/value update for ``layer``'s rows, the same numbers on every call (both layers get the same)."""
    import torch

    g = torch.Generator().manual_seed(7)
    rows = layer.keys.shape[0]
    return torch.randn(rows, 2, 1, 8, generator=g), torch.randn(rows, 2, 1, 8, generator=g)
