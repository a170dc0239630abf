"""The built-in server driven by clients nobody here wrote, unchanged: the official ``openai``
client, ``huggingface_hub.InferenceClient`` with no model name, LangChain's ``ChatOpenAI`` (tools
and structured output) and lm-evaluation-harness' ``local-completions`` backend.

The model is the tiny Qwen2 model with the real Qwen tokenizer and Qwen2.5-Instruct's chat
template (``qwen25_server``). Its weights are random, so what it would write freely is noise:
forced tool calls and JSON answers are valid only because the server constrains decoding, which
is what these tests show (each has a control that the same request unconstrained is not valid).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Literal

import openai
import pytest
from pydantic import BaseModel

from tests.plugins.serve import REPO, cli

SAMPLE_EXAMS = REPO / "workloads" / "devops_workloads" / "sample_data" / "exams"

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
                   "properties": {"city": {"enum": ["Hangzhou", "Beijing"]}, "unit": {"enum": ["celsius", "fahrenheit"]}}}}}
RESTART = {"type": "function", "function": {
    "name": "restart_deployment", "description": "Restart a Deployment",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["name", "force"],
                   "properties": {"name": {"enum": ["web", "api"]}, "force": {"type": "boolean"}}}}}
ASK = [{"role": "user", "content": "杭州天气怎么样？"}]


def client_for(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120)


def check_args(name: str, arguments: str) -> dict:
    args = json.loads(arguments)
    schema = {"get_weather": WEATHER, "restart_deployment": RESTART}[name]["function"]["parameters"]
    assert set(args) == set(schema["required"])
    for key, value in args.items():
        spec = schema["properties"][key]
        assert value in spec["enum"] if "enum" in spec else isinstance(value, bool)
    return args


# ----------------------------------------------------------------------------- openai


def test_openai_tool_calls_required_named_and_streamed(qwen25_server):
    client = client_for(qwen25_server)
    res = client.chat.completions.create(model="any", messages=ASK, tools=[WEATHER, RESTART], tool_choice="required",
                                         max_tokens=80)
    choice = res.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id
    check_args(call.function.name, call.function.arguments)

    named = client.chat.completions.create(model="any", messages=ASK, tools=[WEATHER, RESTART], max_tokens=80,
                                           tool_choice={"type": "function", "function": {"name": "restart_deployment"}})
    (call,) = named.choices[0].message.tool_calls
    assert call.function.name == "restart_deployment"
    check_args(call.function.name, call.function.arguments)

    # streamed: the call arrives as a tool_calls delta (never as content), then finish_reason tool_calls
    chunks = list(client.chat.completions.create(model="any", messages=ASK, tools=[WEATHER], tool_choice="required",
                                                 max_tokens=80, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    calls = [tc for d in deltas for tc in d.tool_calls or []]
    assert len(calls) == 1 and calls[0].index == 0 and calls[0].function.name == "get_weather"
    check_args("get_weather", calls[0].function.arguments)
    assert not "".join(d.content or "" for d in deltas)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]

    # the same tools under tool_choice auto: the model writes no call, so the answer is text
    auto = client.chat.completions.create(model="any", messages=ASK, tools=[WEATHER], max_tokens=8, temperature=0)
    assert auto.choices[0].message.tool_calls is None and auto.choices[0].finish_reason in ("stop", "length")

    # and the conversation goes on with the tool's answer
    follow = client.chat.completions.create(model="any", max_tokens=4, tools=[WEATHER], messages=[
        *ASK, {"role": "assistant", "content": None, "tool_calls": [c.model_dump() for c in choice.message.tool_calls]},
        {"role": "tool", "tool_call_id": choice.message.tool_calls[0].id, "content": "晴，22°C"}])
    assert follow.choices[0].message.role == "assistant"


def test_openai_json_mode_and_json_schema(qwen25_server):
    client = client_for(qwen25_server)
    messages = [{"role": "user", "content": "Give me a JSON object."}]
    free = client.chat.completions.create(model="any", messages=messages, max_tokens=30, temperature=0)
    with pytest.raises(json.JSONDecodeError):
        json.loads(free.choices[0].message.content)  # the control: unconstrained, the tiny model writes noise

    res = client.chat.completions.create(model="any", messages=messages, max_tokens=200, temperature=0,
                                         response_format={"type": "json_object"})
    assert res.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(res.choices[0].message.content), dict)

    class Incident(BaseModel):
        severity: Literal["P1", "P2", "P3"]
        rollback: bool
        service: Literal["payments", "search"]

    parsed = client.chat.completions.parse(model="any", messages=messages, max_tokens=200, response_format=Incident)
    incident = parsed.choices[0].message.parsed
    assert isinstance(incident, Incident)
    # sampled at temperature 1 with several seeds: every answer still fits the schema
    for seed in (1, 2, 3):
        out = client.chat.completions.create(model="any", messages=messages, max_tokens=200, temperature=1.0, seed=seed,
                                             response_format={"type": "json_schema", "json_schema": {
                                                 "name": "incident", "schema": Incident.model_json_schema(), "strict": True}})
        Incident.model_validate_json(out.choices[0].message.content)


def test_openai_logprobs_streaming_and_completions(qwen25_server):
    client = client_for(qwen25_server)
    res = client.completions.create(model="any", prompt="kubectl get", max_tokens=3, logprobs=2, temperature=0, echo=True)
    lp = res.choices[0].logprobs
    assert lp.token_logprobs[0] is None and all(isinstance(x, float) for x in lp.token_logprobs[1:])
    assert res.choices[0].text.startswith("kubectl get")
    chunks = list(client.chat.completions.create(model="any", messages=ASK, max_tokens=5, temperature=0, stream=True,
                                                 logprobs=True, top_logprobs=2, stream_options={"include_usage": True}))
    entries = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert 1 <= len(entries) <= 5 and all(len(e.top_logprobs) == 2 for e in entries)
    assert chunks[-1].usage.completion_tokens >= len(entries)


# ----------------------------------------------------------------------------- huggingface_hub


def test_inference_client_chat_completion_without_a_model_name(qwen25_server, monkeypatch):
    from huggingface_hub import InferenceClient, constants

    # HF_HUB_OFFLINE=1 (no Hub downloads in tests) also blocks explicit endpoint URLs; this is loopback.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    client = InferenceClient(base_url=qwen25_server.url)
    out = client.chat_completion(messages=ASK, max_tokens=6, temperature=0)
    assert out.choices[0].message.role == "assistant" and out.usage.completion_tokens >= 1
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat_completion(messages=ASK, max_tokens=6,
                                                                                        temperature=0, stream=True))
    assert streamed == out.choices[0].message.content
    tools = client.chat_completion(messages=ASK, max_tokens=80, tools=[WEATHER], tool_choice="required")
    call = tools.choices[0].message.tool_calls[0]
    # huggingface_hub parses arguments into an object
    args = call.function.arguments
    check_args(call.function.name, args if isinstance(args, str) else json.dumps(args))


# ----------------------------------------------------------------------------- LangChain


def test_langchain_tools_and_structured_output(qwen25_server):
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=qwen25_server.url + "/v1", api_key="none", model="whatever", max_tokens=120,
                     temperature=0, max_retries=0, timeout=120)

    @tool
    def restart_deployment(name: Literal["web", "api"], force: bool) -> str:
        """Restart a Deployment."""
        return "ok"

    msg = llm.bind_tools([restart_deployment], tool_choice="restart_deployment").invoke("Restart web, please.")
    assert len(msg.tool_calls) == 1
    call = msg.tool_calls[0]
    assert call["name"] == "restart_deployment" and call["args"]["name"] in ("web", "api")
    assert isinstance(call["args"]["force"], bool)
    assert restart_deployment.invoke(call["args"]) == "ok"

    class Triage(BaseModel):
        """How to handle an alert."""

        severity: Literal["P1", "P2", "P3"]
        page_oncall: bool

    # (json_mode asks only for some JSON object, with no schema to end it: on random weights it may
    # run to max_tokens, so it is shown with the openai client's json_object test instead)
    for method in ("json_schema", "function_calling"):
        out = llm.with_structured_output(Triage, method=method).invoke(
            "CPU 100% on the payments database. Reply in JSON with severity and page_oncall.")
        assert isinstance(out, Triage), method


# ----------------------------------------------------------------------------- lm-evaluation-harness

TASK = """\
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{prompt}}}}"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


@pytest.mark.slow
def test_lm_eval_local_completions_agrees_with_devops_model_eval(qwen25_server, tiny_qwen25, tmp_path, monkeypatch):
    """lm-evaluation-harness scores the bundled sample exam through the server (echo + logprobs,
    batches of prompts as token ids), and its log-likelihoods and accuracy are those of
    ``devops-model eval --scoring loglikelihood`` on the same model and prompts."""
    import lm_eval
    from lm_eval.tasks import TaskManager
    from transformers import AutoTokenizer

    from devops_workloads.evaluate.exams import LETTERS, load_exams
    from devops_workloads.evaluate.prompts import prompt_text, render_query

    ours = tmp_path / "ours"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DEVOPS_MODEL_NO_PROGRESS": "1"}
    subprocess.run([*cli(), "eval", "--model", str(tiny_qwen25), "--exams", str(SAMPLE_EXAMS), "--scoring", "loglikelihood",
                    "--style", "base", "--shots", "0,1", "--out", str(ours)], check=True, env=env, cwd=REPO, timeout=600)
    predictions = [json.loads(line) for line in (ours / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    results = json.loads((ours / "results.json").read_text(encoding="utf-8"))

    # the same prompts as one lm-eval task per shots setting (the prompt already holds its shots)
    tok = AutoTokenizer.from_pretrained(tiny_qwen25)
    tasks = {}
    for shots in (0, 1):
        rows = []
        for exam in load_exams(SAMPLE_EXAMS, max_shots=shots):
            for i, q in enumerate(exam.questions):
                rows.append({"exam": exam.name, "index": i, "label": LETTERS.index(q.answer),
                             "prompt": prompt_text(tok, render_query(q, exam.dev[:shots]), "base")})
        data = tmp_path / f"sample-{shots}.jsonl"
        data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        name = f"devops_sample_{shots}shot"
        (tmp_path / f"{name}.yaml").write_text(TASK.format(task=name, data=data), encoding="utf-8")
        tasks[shots] = name

    model_args = (f"base_url={qwen25_server.url}/v1/completions,model=tiny-qwen25,tokenizer_backend=huggingface,"
                  f"tokenizer={tiny_qwen25},num_concurrent=2,max_retries=1,tokenized_requests=True")
    out = lm_eval.simple_evaluate(model="local-completions", model_args=model_args, tasks=list(tasks.values()),
                                  batch_size=4, task_manager=TaskManager(include_path=str(tmp_path)), log_samples=True)

    by_key = {(p["exam"], p["index"], p["shots"]): p for p in predictions if p["style"] == "base"}
    compared = 0
    for shots, name in tasks.items():
        for sample in out["samples"][name]:
            doc = sample["doc"]
            mine = by_key[(doc["exam"], doc["index"], shots)]
            theirs = [ll for ll, _greedy in sample["filtered_resps"]]
            assert theirs == pytest.approx([mine["logits"][x] for x in LETTERS], abs=2e-3), (doc["exam"], doc["index"])
            compared += 1
        overall = next(o for o in results["overall"] if o["shots"] == shots and o["style"] == "base")
        assert out["results"][name]["acc,none"] == pytest.approx(overall["accuracy"], abs=1e-6)
    assert compared == len(by_key) == 2 * 40
