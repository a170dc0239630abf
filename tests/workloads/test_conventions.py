"""Chat conventions follow the run: an SFT artifact carries its template, eos and stop ids, and
every consumer (built-in server, calibration, vLLM/TGI flags) reads them from there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devops_model.conventions import CHATML_TEMPLATE, DEFAULT_TEMPLATE, engine_settings, hub_revision


# --------------------------------------------------------------------------- the Jinja texts


@pytest.fixture(scope="module")
def qwen25_tokenizer(tiny_qwen25_base):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_qwen25_base))


def _messages(turns, query, system=None):
    msgs = [{"role": "system", "content": system}] if system else []
    for q, a in turns:
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return msgs + [{"role": "user", "content": query}]


@pytest.mark.parametrize("system", [None, "你是运维专家。"], ids=["default-system", "own-system"])
def test_chatml_jinja_gives_the_token_ids_the_seeds_chatml_trained(qwen25_tokenizer, system):
    from devops_workloads.templates import get_template

    tok = qwen25_tokenizer
    turns = [("Pod 一直 Pending 怎么办？", "先看 kubectl describe 的 Events。"), ("then?", "Check node resources.")]
    pairs = get_template("chatml").encode_multiturn(tok, turns + [("最后一个问题", "")], system=system)
    trained = [i for src, tgt in pairs[:-1] for i in src + tgt] + pairs[-1][0]
    text = tok.apply_chat_template(_messages(turns, "最后一个问题", system), tokenize=False, add_generation_prompt=True,
                                   chat_template=CHATML_TEMPLATE)
    assert tok.encode(text, add_special_tokens=False) == trained


def test_default_jinja_renders_the_seeds_default_template_with_eos_after_answers(qwen25_tokenizer):
    from devops_workloads.templates import get_template

    tpl = get_template("default")
    turns = [("Q1", "A1"), ("Q2", "A2")]
    text = qwen25_tokenizer.apply_chat_template(_messages(turns, "Q3"), tokenize=False, add_generation_prompt=True,
                                                chat_template=DEFAULT_TEMPLATE)
    parts = tpl.render_text(turns + [("Q3", "")])
    eos = qwen25_tokenizer.eos_token
    assert text == "".join(src + (tgt + eos if tgt else "") for src, tgt in parts)
    assert text.startswith(tpl.system + "\nHuman: Q1\nAssistant: A1" + eos + "\nHuman: Q2")


# --------------------------------------------------------------------------- engine settings (pure)


@pytest.mark.parametrize("artifact, engine, args, stop", [
    ({"uri": "pvc://runs/sft", "template": "chatml"}, "vllm",
     ["--chat-template", CHATML_TEMPLATE, "--generation-config", "auto"], ["<|im_end|>"]),
    ({"uri": "pvc://runs/sft", "template": "default"}, "vllm",
     ["--chat-template", DEFAULT_TEMPLATE, "--generation-config", "auto"], []),
    ({"uri": "hf://Qwen/Qwen2.5-7B-Instruct@a09a3545"}, "vllm",
     ["--generation-config", "auto", "--revision", "a09a3545", "--tokenizer-revision", "a09a3545"], []),
    ({"uri": "hf://Qwen/Qwen2.5-7B@v1"}, "tgi", ["--revision", "v1"], []),
    ({"uri": "pvc://runs/sft", "template": "chatml"}, "tgi", [], ["<|im_end|>"]),
], ids=["vllm-chatml", "vllm-default", "vllm-revision", "tgi-revision", "tgi-chatml"])
def test_engine_settings_come_from_the_artifact_record(artifact, engine, args, stop):
    s = engine_settings(artifact, engine)
    assert s.args == args and s.stop == stop
    assert any("generation_config.json" in f for f in s.from_files)


def test_hub_revision_is_read_from_the_uri():
    assert hub_revision("hf://Qwen/Qwen2.5-7B@main") == "main"
    assert hub_revision("modelscope://codefuse-ai/CodeFuse-DevOps-Model-7B-Chat@v1.0") == "v1.0"
    assert hub_revision("hf://Qwen/Qwen2.5-7B") is None and hub_revision("pvc://models/x@y") is None


# --------------------------------------------------------------------------- the run writes, the server reads


def _sft(model: Path, data: Path, out: Path, template: str, steps: int) -> dict:
    return {
        "apiVersion": "devops-model.io/v1alpha1", "kind": "SFTRun", "metadata": {"name": f"conv-{template}"},
        "spec": {
            "model": {"uri": f"file://{model}"},
            "data": {"datasets": [{"uri": f"file://{data}", "format": "alpaca"}], "valSize": "0"},
            "training": {"template": template, "learningRate": "1e-2", "maxSteps": steps, "perDeviceBatchSize": 4,
                         "maxLength": 64, "precision": "fp32", "gradientCheckpointing": False, "saveSteps": 1000,
                         "loggingSteps": 5, "warmupRatio": "0", "lrScheduler": "constant"},
            "finetuning": {"type": "lora", "lora": {"rank": 16, "alpha": 32, "dropout": "0"}},
            "launcher": "Job",
            "output": {"uri": f"file://{out}"},
        },
    }


def test_a_chatml_lora_sft_of_a_qwen25_base_like_model_stops_at_im_end(tiny_qwen25_base, local_home, start_server, tmp_path):
    import httpx

    from devops_model.api.resource import parse_resource
    from devops_workloads import runner

    base_tok = json.loads((tiny_qwen25_base / "tokenizer_config.json").read_text())
    assert base_tok["eos_token"] == "<|endoftext|>"  # the base would never stop at <|im_end|> by itself
    data = tmp_path / "pingpong.json"
    data.write_text(json.dumps([{"instruction": f"ping {i}", "output": "pong"} for i in range(32)]))
    out = tmp_path / "sft"
    status = runner.run_resource(parse_resource(_sft(tiny_qwen25_base, data, out, "chatml", 60), "test"))
    assert status["state"] == "Succeeded", status

    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    gen = json.loads((out / "generation_config.json").read_text())
    assert tok_cfg["eos_token"] == "<|im_end|>" and tok_cfg["pad_token"] == "<|endoftext|>"
    assert tok_cfg["chat_template"] == CHATML_TEMPLATE and (out / "chat_template.jinja").read_text() == CHATML_TEMPLATE
    assert gen["eos_token_id"] == [151645, 151643] and gen["do_sample"] is False  # the base's sampling kept

    server = start_server(out, name="pingpong", timeout=1800)  # the LoRA adapter folder: merged on load
    r = httpx.post(server.url + "/v1/chat/completions", timeout=120, json={
        "model": "pingpong", "messages": [{"role": "user", "content": "ping 3"}], "max_tokens": 24})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == ("pong", "stop")
    assert r.json()["usage"]["completion_tokens"] == 2  # "pong" and <|im_end|>, nothing after it


def test_a_default_template_run_writes_its_template_and_keeps_the_base_eos(tiny_qwen25_base, local_home, tmp_path):
    from devops_model.api.resource import parse_resource
    from devops_workloads import runner

    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"instruction": "hi", "output": "hello"}] * 4))
    out = tmp_path / "sft-default"
    status = runner.run_resource(parse_resource(_sft(tiny_qwen25_base, data, out, "default", 1), "test"))
    assert status["artifact"]["template"] == "default"
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_cfg["chat_template"] == DEFAULT_TEMPLATE and tok_cfg["eos_token"] == "<|endoftext|>"
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [151643]
