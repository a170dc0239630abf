"""The built-in server over real HTTP on loopback, with the tiny models.

Every test talks to a real ``devops-model serve`` process (uvicorn, the batching engine, the tiny
model) through the clients users use: ``openai``, ``huggingface_hub.InferenceClient`` and raw
``httpx`` for what those clients would refuse to send. Greedy decoding (the tiny model's
generation_config) makes answers reproducible, so batched, streamed and plain answers can be
compared with ``transformers``' own ``generate``.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import re
import signal
import subprocess
import threading
import time

import httpx
import openai
import pytest
from huggingface_hub import InferenceClient

from tests.plugins.serve import API_KEY, LINEAGE, cli, free_port


def sse_events(response: httpx.Response) -> list:
    """The data: payloads of an SSE response, JSON-decoded ([DONE] kept as the string)."""
    out = []
    for line in response.iter_lines():
        if line.startswith("data:"):
            data = line[5:].strip()
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def client_for(server, key=None) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key or "none", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def reference(tiny_qwen):
    """Greedy answers straight from transformers' generate, to compare the server with."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_qwen)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen, dtype=torch.float32).eval()

    def answer(messages, max_new_tokens):
        prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True), ids.shape[1]

    return answer


# ----------------------------------------------------------------------------- OpenAI API


def test_models_and_health(bpe_server):
    models = client_for(bpe_server).models.list()
    assert [m.id for m in models.data] == ["tiny-bpe"]
    r = httpx.get(bpe_server.url + "/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_chat_non_stream_matches_generate_with_chinese_and_history(qwen_server, reference):
    client = client_for(qwen_server, API_KEY)
    messages = [
        {"role": "system", "content": "你是一个 DevOps 助手。"},
        {"role": "user", "content": "什么是 Kubernetes 的 Pod？"},
        {"role": "assistant", "content": "Pod 是 Kubernetes 中最小的调度单元。"},
        {"role": "user", "content": "How do I restart a Deployment?"},
    ]
    res = client.chat.completions.create(model="tiny-qwen", messages=messages, max_tokens=12)
    expected, prompt_tokens = reference(messages, 12)
    assert res.choices[0].message.content == expected
    assert res.choices[0].message.role == "assistant"
    assert res.choices[0].finish_reason in ("stop", "length")
    # usage counts the chat-templated prompt (system + history + question) exactly
    assert res.usage.prompt_tokens == prompt_tokens
    assert res.usage.completion_tokens >= 1
    assert res.usage.total_tokens == res.usage.prompt_tokens + res.usage.completion_tokens
    # the history changes the prompt, and so the usage
    short = client.chat.completions.create(model="tiny-qwen", messages=messages[-1:], max_tokens=1)
    assert short.usage.prompt_tokens < res.usage.prompt_tokens


def test_chat_stream_equals_non_stream_and_ends_with_done(bpe_server):
    body = {"messages": [{"role": "user", "content": "Kubernetes schedules pods"}], "max_tokens": 16}
    plain = httpx.post(bpe_server.url + "/v1/chat/completions", json=body, timeout=60).json()
    with httpx.stream("POST", bpe_server.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    pieces = [c["choices"][0]["delta"].get("content", "") for c in chunks]
    assert sum(1 for p in pieces if p) > 1, "the answer must arrive in several pieces"
    assert chunks[-1]["choices"][0]["delta"] == {} and chunks[-1]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
    assert "".join(pieces) == plain["choices"][0]["message"]["content"]


def test_openai_client_streaming_with_usage(bpe_server):
    stream = client_for(bpe_server).chat.completions.create(
        model="tiny-bpe", messages=[{"role": "user", "content": "hello"}], max_tokens=8, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
    assert text


def test_completions_stream_and_not(bpe_server):
    client = client_for(bpe_server)
    res = client.completions.create(model="tiny-bpe", prompt="kubectl get pods -A lists", max_tokens=10)
    assert res.object == "text_completion" and res.usage.completion_tokens >= 1
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny-bpe", prompt="kubectl get pods -A lists", max_tokens=10, stream=True))
    assert streamed == res.choices[0].text and streamed


def test_stop_words_cut_the_answer_in_both_modes(bpe_server):
    client = client_for(bpe_server)
    messages = [{"role": "user", "content": "Prometheus scrapes metrics over HTTP"}]
    full = client.chat.completions.create(model="tiny-bpe", messages=messages, max_tokens=24,
                                          extra_body={"ignore_eos": True}).choices[0].message.content
    assert len(full) > 6, full
    stop = full[len(full) // 2: len(full) // 2 + 3]
    cut = full[: full.index(stop)]
    res = client.chat.completions.create(model="tiny-bpe", messages=messages, max_tokens=24, stop=[stop, "never-there"],
                                         extra_body={"ignore_eos": True})
    assert res.choices[0].message.content == cut
    assert res.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="tiny-bpe", messages=messages, max_tokens=24, stop=stop, stream=True, extra_body={"ignore_eos": True}))
    assert streamed == cut, "no part of the stop word may leak into the stream"


def test_sampling_is_seeded_and_parameters_apply(bpe_server):
    client = client_for(bpe_server)
    kw = dict(model="tiny-bpe", messages=[{"role": "user", "content": "DevOps"}], max_tokens=12, temperature=1.5,
              top_p=0.95, seed=7, extra_body={"ignore_eos": True, "top_k": 200})
    a = client.chat.completions.create(**kw).choices[0].message.content
    b = client.chat.completions.create(**kw).choices[0].message.content
    assert a == b, "the same seed gives the same sample"
    others = {client.chat.completions.create(**{**kw, "seed": s}).choices[0].message.content for s in (1, 2, 3)}
    assert len(others | {a}) > 1, "different seeds sample differently at temperature 1.5"


def test_concurrent_requests_are_batched_and_match_sequential(bpe_server):
    prompts = ["Kubernetes", "Prometheus scrapes", "CI/CD 流水线", "kubectl describe"]
    # 48 tokens each: generation outlasts the spread of the four arrivals even on a loaded machine
    body = lambda p: {"messages": [{"role": "user", "content": p}], "max_tokens": 48, "ignore_eos": True}
    sequential = [httpx.post(bpe_server.url + "/v1/chat/completions", json=body(p), timeout=60).json() for p in prompts]

    def steps():
        m = httpx.get(bpe_server.url + "/metrics").text
        count = float(re.search(r"^devops_model_batch_size_count (\S+)$", m, re.M).group(1))
        total = float(re.search(r"^devops_model_batch_size_sum (\S+)$", m, re.M).group(1))
        return count, total

    c0, s0 = steps()
    start = threading.Barrier(len(prompts))

    def send(p):
        with httpx.Client(timeout=60) as client:  # connected before the barrier, so the four posts leave together
            client.get(bpe_server.url + "/health")
            start.wait()
            return client.post(bpe_server.url + "/v1/chat/completions", json=body(p)).json()

    with cf.ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(send, prompts))
    c1, s1 = steps()
    assert [r["choices"][0]["message"]["content"] for r in together] == [r["choices"][0]["message"]["content"] for r in sequential]
    # 4 × 48 tokens took far fewer forward steps than 192: sequences shared steps
    assert (s1 - s0) / (c1 - c0) > 1.5, f"mean batch size {(s1 - s0) / (c1 - c0):.2f}"


def test_overload_gets_429_and_the_server_recovers(bpe_server):
    """4 long streams fill --max-concurrency 4; the 5th request is refused at once, not queued."""
    url = bpe_server.url + "/v1/chat/completions"
    body = {"messages": [{"role": "user", "content": "long"}], "max_tokens": 1500, "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=60) as http:
        streams = [http.stream("POST", url, json=body) for _ in range(4)]
        responses = [s.__enter__() for s in streams]
        # keep the line iterators referenced: a dropped httpx iterator closes its connection
        readers = [r.iter_lines() for r in responses]
        try:
            for r, lines in zip(responses, readers):  # each stream has started: all 4 are admitted
                assert r.status_code == 200
                assert next(lines).startswith("data:")
            assert httpx.get(bpe_server.url + "/health").json()["inFlight"] == 4
            refused = httpx.post(url, json={**body, "stream": False, "max_tokens": 4}, timeout=30)
            assert refused.status_code == 429
            assert refused.headers.get("retry-after") == "1"
            err = refused.json()["error"]
            assert err["type"] == "rate_limit_error" and "--max-concurrency 4" in err["message"]
            tgi = httpx.post(bpe_server.url + "/generate", json={"inputs": "x"}, timeout=30)
            assert tgi.status_code == 429 and tgi.json()["error_type"] == "overloaded"
        finally:
            for s in streams:  # the clients go away mid-answer: the server drops those sequences
                s.__exit__(None, None, None)
    ok = None
    for _ in range(100):
        ok = httpx.post(url, json={**body, "stream": False, "max_tokens": 4}, timeout=30)
        if ok.status_code == 200:
            break
        time.sleep(0.1)
    assert ok.status_code == 200
    metrics = httpx.get(bpe_server.url + "/metrics").text
    assert re.search(r"^devops_model_rejected_total [1-9]", metrics, re.M)
    health = httpx.get(bpe_server.url + "/health").json()
    assert health["status"] == "ok"


# ----------------------------------------------------------------------------- every field honoured


@pytest.fixture(scope="module")
def scorer(tiny_qwen):
    """Log-probabilities straight from transformers, to compare the server's with."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_qwen)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen, dtype=torch.float32).eval()

    def logprobs(ids):
        with torch.inference_mode():
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
        return lp  # [len(ids), vocab]: row j is the distribution of token j + 1

    logprobs.tokenizer = tok
    return logprobs


def test_echo_with_logprobs_scores_the_prompt_like_transformers(qwen25_server, scorer):
    """Prompt scoring (max_tokens 0, echo, logprobs): every prompt token's log-probability, as a
    forward pass of transformers computes it; token-id prompts and lists of them, one choice each."""
    tok = scorer.tokenizer
    texts = ["Kubernetes 调度 Pod 到节点上", "kubectl rollout undo deployment/web"]
    ids = [tok(t, add_special_tokens=False).input_ids for t in texts]
    r = httpx.post(qwen25_server.url + "/v1/completions", timeout=60,
                   json={"prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 2, "temperature": 0}).json()
    assert [c["index"] for c in r["choices"]] == [0, 1]
    assert r["usage"] == {"prompt_tokens": sum(map(len, ids)), "completion_tokens": 0, "total_tokens": sum(map(len, ids))}
    for choice, text, prompt_ids in zip(r["choices"], texts, ids):
        lp = choice["logprobs"]
        assert choice["text"] == text and choice["finish_reason"] == "length"
        assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
        assert len(lp["token_logprobs"]) == len(prompt_ids)
        expected = scorer(prompt_ids)
        for j in range(1, len(prompt_ids)):
            assert lp["token_logprobs"][j] == pytest.approx(float(expected[j - 1, prompt_ids[j]]), abs=1e-4)
            best = float(expected[j - 1].max())
            assert max(lp["top_logprobs"][j].values()) == pytest.approx(best, abs=1e-4)
            assert 2 <= len(lp["top_logprobs"][j]) <= 3  # the top 2, plus the prompt's own token when it is not among them
        if text.isascii():  # a token that holds part of a UTF-8 character shows as U+FFFD alone
            assert "".join(lp["tokens"]) == text
        assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:k]) for k in range(len(prompt_ids))]
    # the same as text, one generated token (what lm-evaluation-harness sends): prompt logprobs equal
    one = httpx.post(qwen25_server.url + "/v1/completions", timeout=60,
                     json={"prompt": texts[0], "max_tokens": 1, "echo": True, "logprobs": 1, "temperature": 0}).json()
    lp = one["choices"][0]["logprobs"]
    assert lp["token_logprobs"][:len(ids[0])] == pytest.approx(r["choices"][0]["logprobs"]["token_logprobs"], abs=1e-5)
    assert len(lp["tokens"]) == len(ids[0]) + 1
    # the generated token is the greedy one, and its logprob is the top one
    assert lp["token_logprobs"][-1] == pytest.approx(max(lp["top_logprobs"][-1].values()), abs=1e-6)


def test_prompt_lists_and_token_ids_answer_like_single_text_prompts(bpe_server):
    url = bpe_server.url + "/v1/completions"
    prompts = ["kubectl get pods", "Prometheus scrapes"]
    single = [httpx.post(url, json={"prompt": p, "max_tokens": 6, "temperature": 0}, timeout=60).json()["choices"][0]["text"]
              for p in prompts]
    both = httpx.post(url, json={"prompt": prompts, "max_tokens": 6, "temperature": 0}, timeout=60).json()
    assert [c["text"] for c in sorted(both["choices"], key=lambda c: c["index"])] == single
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(bpe_server.model)(prompts[0], add_special_tokens=False).input_ids
    as_ids = httpx.post(url, json={"prompt": ids, "max_tokens": 6, "temperature": 0}, timeout=60).json()
    assert as_ids["choices"][0]["text"] == single[0]
    with httpx.stream("POST", url, json={"prompt": prompts, "max_tokens": 6, "temperature": 0, "stream": True}, timeout=60) as r:
        events = sse_events(r)
    streamed = ["", ""]
    for e in events[:-1]:
        for c in e["choices"]:
            streamed[c["index"]] += c["text"]
    assert streamed == single and events[-1] == "[DONE]"


def test_chat_logprobs_and_top_logprobs(qwen25_server, tiny_qwen25, scorer):
    client = client_for(qwen25_server)
    messages = [{"role": "user", "content": "什么是 Service？"}]
    res = client.chat.completions.create(model="x", messages=messages, max_tokens=4, temperature=0, logprobs=True,
                                         top_logprobs=3, extra_body={"ignore_eos": True})
    content = res.choices[0].logprobs.content
    assert len(content) == 4 and "".join(c.token for c in content) == res.choices[0].message.content
    for c in content:
        assert len(c.top_logprobs) == 3
        assert c.logprob == pytest.approx(c.top_logprobs[0].logprob, abs=1e-6)  # greedy: the chosen one is the top one
        assert bytes(c.bytes).decode("utf-8", "replace") == c.token
    # the first token's log-probability is transformers' own for that prompt
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_qwen25)
    ids = tok(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), add_special_tokens=False).input_ids
    first = scorer(ids)[-1]
    assert content[0].logprob == pytest.approx(float(first.max()), abs=1e-4)
    streamed = list(client.chat.completions.create(model="x", messages=messages, max_tokens=4, temperature=0, logprobs=True,
                                                   stream=True, extra_body={"ignore_eos": True}))
    lps = [lp.logprob for ch in streamed if ch.choices and ch.choices[0].logprobs for lp in ch.choices[0].logprobs.content]
    assert lps == pytest.approx([c.logprob for c in content], abs=1e-6)


def test_logit_bias_moves_greedy_decoding(bpe_server):
    url = bpe_server.url + "/v1/completions"
    body = {"prompt": "Kubernetes", "max_tokens": 3, "temperature": 0, "logprobs": 0, "ignore_eos": True}
    plain = httpx.post(url, json=body, timeout=60).json()["choices"][0]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bpe_server.model)
    # the greedy first token's id, from the TGI route's details
    first = httpx.post(bpe_server.url + "/generate", json={"inputs": "Kubernetes", "parameters": {"max_new_tokens": 1, "details": True}},
                       timeout=60).json()["details"]["tokens"][0]["id"]
    assert tok.decode([first]) == plain["logprobs"]["tokens"][0]
    banned = httpx.post(url, json={**body, "logit_bias": {str(first): -100}}, timeout=60).json()["choices"][0]
    assert banned["logprobs"]["tokens"][0] != plain["logprobs"]["tokens"][0]
    target = tok("pod", add_special_tokens=False).input_ids[0]
    forced = httpx.post(url, json={**body, "logit_bias": {str(target): 100}}, timeout=60).json()["choices"][0]
    assert forced["text"] == tok.decode([target]) * 3


def test_developer_role_tool_turns_and_any_model_name(qwen25_server, tiny_qwen25):
    """developer is rendered as system; an assistant turn with content null and tool_calls, and the
    tool's answer, reach the chat template; any model name means the one served."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_qwen25)
    call = {"id": "call_1", "type": "function", "function": {"name": "get_pods", "arguments": '{"ns": "prod"}'}}
    messages = [{"role": "developer", "content": "你是 SRE 助手。"}, {"role": "user", "content": "prod 有几个 Pod？"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "content": "3", "tool_call_id": "call_1"}]
    res = client_for(qwen25_server).chat.completions.create(model="placeholder-name", messages=messages, max_tokens=1)
    rendered = tok.apply_chat_template(
        [{"role": "system", "content": "你是 SRE 助手。"}, messages[1],
         {"role": "assistant", "content": "", "tool_calls": [{**call, "function": {"name": "get_pods", "arguments": {"ns": "prod"}}}]},
         {"role": "tool", "content": "3"}], tokenize=False, add_generation_prompt=True)
    assert '<tool_call>\n{"name": "get_pods", "arguments": {"ns": "prod"}}\n</tool_call>' in rendered
    assert "<tool_response>\n3\n</tool_response>" in rendered and "你是 SRE 助手。" in rendered
    assert res.usage.prompt_tokens == len(tok(rendered, add_special_tokens=False).input_ids)
    assert res.model == "tiny-qwen25"


def test_strict_model_name_refuses_other_names(start_server, tiny_bpe):
    strict = start_server(tiny_bpe, "--strict-model-name", name="only-me")
    r = httpx.post(strict.url + CHAT, json={"messages": USER, "model": "gpt-4", "max_tokens": 1}, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["param"] == "model" and "only-me" in r.json()["error"]["message"]
    ok = httpx.post(strict.url + CHAT, json={"messages": USER, "model": "only-me", "max_tokens": 1}, timeout=30)
    assert ok.status_code == 200


def test_model_by_id_and_unknown_routes_answer_in_openai_shape(bpe_server):
    assert client_for(bpe_server).models.retrieve("tiny-bpe").id == "tiny-bpe"
    with pytest.raises(openai.NotFoundError):
        client_for(bpe_server).models.retrieve("gpt-4")
    for method, path, status in (("GET", "/v1/nope", 404), ("POST", "/v1/embeddings", 404), ("GET", "/v1/chat/completions", 405)):
        r = httpx.request(method, bpe_server.url + path, timeout=30)
        assert r.status_code == status
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and path in err["message"], err


# ----------------------------------------------------------------------------- TGI API


def test_tgi_routes_with_inference_client(qwen_server, monkeypatch):
    from huggingface_hub import constants

    # HF_HUB_OFFLINE=1 (no Hub downloads in tests) also blocks explicit endpoint URLs; this is loopback.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    client = InferenceClient(model=qwen_server.url, token=API_KEY)
    text = client.text_generation("什么是 DevOps？", max_new_tokens=8)
    details = client.text_generation("什么是 DevOps？", max_new_tokens=8, details=True)
    assert details.generated_text == text
    assert details.details.finish_reason in ("length", "eos_token", "stop_sequence")
    assert details.details.generated_tokens == len(details.details.tokens)
    pieces = list(client.text_generation("什么是 DevOps？", max_new_tokens=8, stream=True, details=True))
    assert pieces[-1].generated_text == text
    assert "".join(p.token.text for p in pieces) == text
    assert all(p.generated_text is None for p in pieces[:-1])


def test_tgi_generate_and_generate_stream_raw(bpe_server):
    r = httpx.post(bpe_server.url + "/generate", json={"inputs": "Kubernetes", "parameters": {"max_new_tokens": 6, "details": True}})
    assert r.status_code == 200
    out = r.json()
    assert out["details"]["generated_tokens"] == len(out["details"]["tokens"])
    with httpx.stream("POST", bpe_server.url + "/generate_stream", json={"inputs": "Kubernetes", "parameters": {"max_new_tokens": 6}}) as s:
        events = sse_events(s)
    assert "[DONE]" not in events, "TGI streams end with the event that carries generated_text"
    assert events[-1]["generated_text"] == out["generated_text"]
    assert events[-1]["details"]["finish_reason"] == out["details"]["finish_reason"]


# ----------------------------------------------------------------------------- API key, info, metrics


def test_api_key_is_required_where_it_should_be(qwen_server):
    url = qwen_server.url
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert httpx.post(url + "/v1/chat/completions", json=body).status_code == 401
    wrong = httpx.post(url + "/v1/chat/completions", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"
    assert httpx.get(url + "/v1/models").status_code == 401
    assert httpx.post(url + "/generate", json={"inputs": "x"}).status_code == 401
    with pytest.raises(openai.AuthenticationError):
        client_for(qwen_server, "wrong").models.list()
    ok = httpx.post(url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"})
    assert ok.status_code == 200
    # probes and scraping never need the key; the page itself neither (it asks for the key)
    assert httpx.get(url + "/health").status_code == 200
    assert httpx.get(url + "/metrics").status_code == 200
    assert httpx.get(url + "/").status_code == 200


def test_info_carries_lineage_and_scores(bpe_server):
    info = httpx.get(bpe_server.url + "/v1/info").json()
    assert info["model"] == "tiny-bpe" and info["engine"] == "builtin" and info["maxConcurrency"] == 4
    assert info["lineage"] == LINEAGE["lineage"] and info["scores"] == LINEAGE["scores"]


def test_metrics_count_requests_and_tokens(bpe_server):
    httpx.post(bpe_server.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "m"}], "max_tokens": 3})
    m = httpx.get(bpe_server.url + "/metrics").text
    assert re.search(r'^devops_model_requests_total\{route="/v1/chat/completions",status="200"\} [1-9]', m, re.M)
    assert re.search(r"^devops_model_generation_tokens_total [1-9]", m, re.M)
    assert re.search(r"^devops_model_prompt_tokens_total [1-9]", m, re.M)
    assert re.search(r"^devops_model_time_to_first_token_seconds_count [1-9]", m, re.M)
    assert re.search(r'^devops_model_request_seconds_count\{route="/v1/chat/completions"\} [1-9]', m, re.M)
    assert re.search(r"^devops_model_queue_depth 0", m, re.M)


# ----------------------------------------------------------------------------- malformed requests

CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "hi"}]

# (id, route, raw body or JSON, expected status, parameter the error must name)
MALFORMED = [
    ("not-json", CHAT, b"{not json", 400, None),
    ("empty-body", CHAT, b"", 400, None),
    ("body-is-a-list", CHAT, [1, 2], 400, None),
    ("no-messages", CHAT, {"model": "tiny-bpe"}, 400, "messages"),
    ("empty-messages", CHAT, {"messages": []}, 400, "messages"),
    ("bad-role", CHAT, {"messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role"),
    ("content-not-text", CHAT, {"messages": [{"role": "user", "content": 42}]}, 400, "messages[0].content"),
    ("last-not-user", CHAT, {"messages": [*USER, {"role": "assistant", "content": "x"}]}, 400, "messages"),
    ("temperature-too-high", CHAT, {"messages": USER, "temperature": 5}, 400, "temperature"),
    ("temperature-not-number", CHAT, {"messages": USER, "temperature": "hot"}, 400, "temperature"),
    ("top-p-zero", CHAT, {"messages": USER, "top_p": 0}, 400, "top_p"),
    ("top-k-negative", CHAT, {"messages": USER, "top_k": -5}, 400, "top_k"),
    ("max-tokens-zero", CHAT, {"messages": USER, "max_tokens": 0}, 400, "max_tokens"),
    ("max-tokens-past-context", CHAT, {"messages": USER, "max_tokens": 100000}, 400, "max_tokens"),
    ("n-two", CHAT, {"messages": USER, "n": 2}, 400, "n"),
    ("too-many-stops", CHAT, {"messages": USER, "stop": [str(i) for i in range(9)]}, 400, "stop"),
    ("empty-stop", CHAT, {"messages": USER, "stop": ""}, 400, "stop"),
    ("presence-penalty", CHAT, {"messages": USER, "presence_penalty": 3}, 400, "presence_penalty"),
    ("stream-not-bool", CHAT, {"messages": USER, "stream": "yes"}, 400, "stream"),
    ("unknown-parameter", CHAT, {"messages": USER, "frobnicate": True}, 400, "frobnicate"),
    ("legacy-functions", CHAT, {"messages": USER, "functions": [{"name": "f"}]}, 400, "functions"),
    ("top-logprobs-without-logprobs", CHAT, {"messages": USER, "top_logprobs": 2}, 400, "top_logprobs"),
    ("top-logprobs-too-many", CHAT, {"messages": USER, "logprobs": True, "top_logprobs": 21}, 400, "top_logprobs"),
    ("logit-bias-key-not-id", CHAT, {"messages": USER, "logit_bias": {"abc": 1}}, 400, "logit_bias"),
    ("logit-bias-too-big", CHAT, {"messages": USER, "logit_bias": {"5": 101}}, 400, "logit_bias"),
    ("logit-bias-past-vocab", CHAT, {"messages": USER, "logit_bias": {"99999999": 1}}, 400, "logit_bias"),
    ("user-content-null", CHAT, {"messages": [{"role": "user", "content": None}]}, 400, "messages[0]"),
    ("tool-calls-on-user", CHAT, {"messages": [{"role": "user", "content": "x", "tool_calls": [
        {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}, 400, "messages[0]"),
    ("tool-call-arguments-not-json", CHAT, {"messages": [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "a", "type": "function", "function": {"name": "f", "arguments": "{x"}}]},
        {"role": "tool", "content": "1", "tool_call_id": "a"}]}, 400, "messages[0].tool_calls[0].function.arguments"),
    ("tools-without-template-support", CHAT, {"messages": USER, "tools": [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}, 400, "tools"),
    ("tool-choice-without-tools", CHAT, {"messages": USER, "tool_choice": "required"}, 400, "tool_choice"),
    ("tool-choice-unknown-tool", CHAT, {"messages": USER, "tool_choice": {"type": "function", "function": {"name": "g"}},
                                        "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tool_choice"),
    ("response-format-unknown", CHAT, {"messages": USER, "response_format": {"type": "yaml"}}, 400, "response_format.type"),
    ("response-format-schema-missing", CHAT, {"messages": USER, "response_format": {"type": "json_schema"}}, 400, "response_format"),
    ("response-format-bad-schema", CHAT, {"messages": USER, "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"a": {"type": "no-such-type"}}}}}}, 400,
        "response_format.json_schema.schema"),
    ("prompt-too-long", CHAT, {"messages": [{"role": "user", "content": "kubectl " * 3000}]}, 400, "messages"),
    ("completion-no-prompt", "/v1/completions", {"max_tokens": 3}, 400, "prompt"),
    ("completion-empty-prompt-in-list", "/v1/completions", {"prompt": ["a", ""]}, 400, "prompt"),
    ("completion-token-past-vocab", "/v1/completions", {"prompt": [1, 2, 10**9]}, 400, "prompt"),
    ("completion-suffix", "/v1/completions", {"prompt": "a", "suffix": "b"}, 400, "suffix"),
    ("completion-best-of", "/v1/completions", {"prompt": "a", "best_of": 3}, 400, "best_of"),
    ("completion-logprobs-too-many", "/v1/completions", {"prompt": "a", "logprobs": 50}, 400, "logprobs"),
    ("completion-negative-max-tokens", "/v1/completions", {"prompt": "a", "max_tokens": -1}, 400, "max_tokens"),
    ("tgi-no-inputs", "/generate", {"parameters": {}}, 422, None),
    ("tgi-bad-top-p", "/generate", {"inputs": "x", "parameters": {"top_p": 2}}, 422, None),
    ("tgi-negative-tokens", "/generate_stream", {"inputs": "x", "parameters": {"max_new_tokens": -1}}, 422, None),
    ("tgi-grammar", "/generate", {"inputs": "x", "parameters": {"grammar": {"type": "json"}}}, 422, None),
]


@pytest.mark.parametrize("case", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_request_gets_4xx_naming_the_parameter(bpe_server, case):
    _id, route, body, status, param = case
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(bpe_server.url + route, timeout=30, **kw)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    if route.startswith("/v1"):
        assert err["param"] == param, err
        if param:
            assert err["message"].startswith(param.split("[")[0]), err["message"]
    else:
        field = {"tgi-no-inputs": "inputs", "tgi-bad-top-p": "parameters.top_p",
                 "tgi-negative-tokens": "parameters.max_new_tokens", "tgi-grammar": "grammar"}[_id]
        assert field in err, err
        assert r.json()["error_type"] == "validation"


def test_server_is_healthy_after_malformed_requests(bpe_server):
    for _id, route, body, _status, _param in MALFORMED:
        kw = {"content": body} if isinstance(body, bytes) else {"json": body}
        assert 400 <= httpx.post(bpe_server.url + route, timeout=30, **kw).status_code < 500
    assert httpx.get(bpe_server.url + "/health").json()["status"] == "ok"
    r = httpx.post(bpe_server.url + CHAT, json={"messages": USER, "max_tokens": 3}, timeout=30)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
    assert bpe_server.proc.poll() is None
    assert "Traceback" not in bpe_server.log.read_text()


# ----------------------------------------------------------------------------- web chat in front of another engine


def test_proxy_serves_page_and_lineage_in_front_of_another_engine(bpe_server, start_server, tmp_path):
    """`serve --upstream URL`: the page and /v1/info here, every API call passed through, streaming."""
    lineage = tmp_path / "lineage.json"
    lineage.write_text(json.dumps({"lineage": ["SFTRun/upstream-sft"]}))
    proxy = start_server(None, "--upstream", bpe_server.url, "--lineage-file", str(lineage), name="ignored")
    assert "DevOps-Model" in httpx.get(proxy.url + "/").text
    info = httpx.get(proxy.url + "/v1/info").json()
    assert info["lineage"] == ["SFTRun/upstream-sft"] and info["upstream"] == bpe_server.url
    body = {"messages": [{"role": "user", "content": "Kubernetes"}], "max_tokens": 8}
    direct = httpx.post(bpe_server.url + CHAT, json=body, timeout=60).json()["choices"][0]["message"]["content"]
    with httpx.stream("POST", proxy.url + CHAT, json={**body, "stream": True}, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1]) == direct
    bad = httpx.post(proxy.url + CHAT, json={"messages": USER, "temperature": 9}, timeout=60)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "temperature"
    metrics = httpx.get(proxy.url + "/metrics").text
    assert re.search(r'devops_model_proxy_requests_total\{status="200"\} [1-9]', metrics)
    # the engine's own metrics come first, so a scraper of the Service still sees them
    assert re.search(r"^devops_model_generation_tokens_total [1-9]", metrics, re.M)
    assert httpx.get(proxy.url + "/livez").json() == {"status": "ok"}


def test_proxy_in_front_of_a_keyed_engine_shows_the_lineage_only_with_the_key(qwen_server, start_server, tmp_path):
    """As the operator runs the sidecar (served name and engine given): /v1/info asks the engine with the
    caller's key first, so the lineage is never shown to a caller the engine would refuse."""
    lineage = tmp_path / "lineage.json"
    lineage.write_text(json.dumps({"lineage": ["SFTRun/keyed-sft"]}))
    proxy = start_server(None, "--upstream", qwen_server.url, "--lineage-file", str(lineage),
                         "--engine-name", "vllm", name="devops-chat")
    assert httpx.get(proxy.url + "/v1/info").status_code == 401
    assert httpx.get(proxy.url + "/v1/info", headers={"Authorization": "Bearer nope"}).status_code == 401
    info = httpx.get(proxy.url + "/v1/info", headers={"Authorization": f"Bearer {API_KEY}"}).json()
    assert info["lineage"] == ["SFTRun/keyed-sft"] and info["model"] == "devops-chat" and info["engine"] == "vllm"
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert httpx.post(proxy.url + CHAT, json=body, timeout=60).status_code == 401  # the engine checks the key
    ok = httpx.post(proxy.url + CHAT, json=body, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] is not None
    assert httpx.get(proxy.url + "/").status_code == 200  # the page asks for the key itself


def test_proxy_says_when_the_engine_is_unreachable():
    dead = f"http://127.0.0.1:{free_port()}"
    port = free_port()
    proc = subprocess.Popen([*cli(), "serve", "--upstream", dead, "--port", str(port), "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for _ in range(300):
            try:
                r = httpx.post(f"http://127.0.0.1:{port}" + CHAT, json={"messages": USER}, timeout=10)
                break
            except httpx.ConnectError:
                time.sleep(0.1)
        assert r.status_code == 502 and dead in r.json()["error"]["message"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)


def test_usable_cpus_honours_a_cgroup_v2_or_v1_quota(tmp_path):
    """A Kubernetes CPU limit caps the default thread count on cgroup v2 and v1 nodes alike."""
    from devops_workloads.serve.state import usable_cpus

    affinity = len(os.sched_getaffinity(0))
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")   # limits.cpu: 1500m
    assert usable_cpus(str(v2)) == min(affinity, 2)
    (v2 / "cpu.max").write_text("max 100000\n")
    assert usable_cpus(str(v2)) == affinity
    v1 = tmp_path / "v1" / "cpu,cpuacct"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("50000\n")    # limits.cpu: 500m
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert usable_cpus(str(tmp_path / "v1")) == 1
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")       # no limit
    assert usable_cpus(str(tmp_path / "v1")) == affinity
    assert usable_cpus(str(tmp_path / "none")) == affinity


def test_openmp_threads_sleep_in_a_server_unless_the_user_chose(monkeypatch, start_server, tiny_bpe):
    """The server makes torch's OpenMP threads sleep while they wait (spinning ones starve the HTTP
    loop and each other on shared cores: 4x slower with one busy core, bench figures in
    processes.py); set before torch loads, never over the user's own choice."""
    import subprocess
    import sys

    from devops_workloads import processes

    probe = ("import os, sys; from devops_workloads.processes import sleeping_openmp_threads as s; "
             "print(s()); print(os.environ.get('OMP_WAIT_POLICY')); import torch")
    env = {k: v for k, v in os.environ.items() if k not in processes.OPENMP_WAIT_SETTINGS}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[:2] == ["OpenMP threads sleep while they wait (OMP_WAIT_POLICY=PASSIVE; set OMP_WAIT_POLICY=ACTIVE to spin)", "PASSIVE"]
    for key, value in [("OMP_WAIT_POLICY", "ACTIVE"), ("GOMP_SPINCOUNT", "100000"), ("KMP_BLOCKTIME", "1")]:
        out = subprocess.run([sys.executable, "-c", probe], env={**env, key: value}, capture_output=True, text=True,
                             check=True).stdout.splitlines()
        assert out[0] == f"OpenMP threads wait as {key}={value} says"
        assert out[1] == (value if key == "OMP_WAIT_POLICY" else "None")
    for key in processes.OPENMP_WAIT_SETTINGS:
        monkeypatch.delenv(key, raising=False)
    assert "torch was loaded before" in processes.sleeping_openmp_threads()  # this process: too late, left alone
    assert "OMP_WAIT_POLICY" not in os.environ
    server = start_server(tiny_bpe, "--log-level", "info", name="openmp")
    assert "OpenMP threads sleep while they wait" in server.log.read_text()


def test_cpu_threads_default_is_every_usable_core_unless_told(monkeypatch):
    """--threads wins, OMP_NUM_THREADS is left to torch, else every usable core (two threads beat one
    on a quiet 2-core machine: bench/serve.py)."""
    from devops_workloads.serve import state

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(state, "usable_cpus", lambda: 6)
    assert state.cpu_threads(None) == 6
    assert state.cpu_threads(3) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert state.cpu_threads(None) is None
    assert state.cpu_threads(2) == 2


def test_the_event_stream_overrides_a_method_the_installed_sse_starlette_still_calls():
    """EventStream replaces sse-starlette's private per-chunk send (its cancel scope cost a seventh of the
    event loop at 16 clients). A release that renames or reshapes it must fail here, not in production."""
    import inspect

    from sse_starlette.sse import EventSourceResponse

    from devops_workloads.serve.streaming import EventStream

    base = getattr(EventSourceResponse, "_send_with_timeout", None)
    assert base is not None, "sse-starlette no longer has _send_with_timeout: drop or port EventStream's override"
    assert list(inspect.signature(base).parameters) == ["self", "send", "message"]
    assert "self._send_with_timeout(" in inspect.getsource(EventSourceResponse), "the base class must still call it"
    assert EventStream._send_with_timeout is not base
