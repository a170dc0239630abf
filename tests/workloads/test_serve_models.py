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
