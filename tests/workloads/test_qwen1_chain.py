"""The whole chain on the seed's model family: a Qwen-1 folder as downloaded → pretrain → LoRA SFT
(chatml, merged) → eval → GPTQ int4 → chat, each stage the `devops-model run` a user runs, chained
through ``fromRun``. The folder is converted once, on first load, and reused by every stage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.plugins.serve import REPO, cli, free_port

EXAMPLES = REPO / "examples" / "local"


def _example(name: str, **edits) -> dict:
    res = yaml.safe_load((EXAMPLES / name).read_text())
    spec = res["spec"]
    for path, value in edits.items():
        node = spec
        keys = path.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return res


@pytest.mark.slow
def test_pretrain_sft_eval_gptq_chat_on_a_converted_qwen1(tiny_qwen1_chat, local_home, tmp_path):
    from devops_model.api.resource import parse_resource
    from devops_workloads import runner
    from devops_workloads.sample_data import install

    storage = Path(os.environ["DEVOPS_MODEL_STORAGE"])
    install(storage)
    (storage / "models").mkdir(parents=True)
    (storage / "models" / "devops-model-7b-chat").symlink_to(tiny_qwen1_chat)  # as a user's PVC holds it

    stages = [
        _example("pretrain.yaml", **{"model.uri": "pvc://models/devops-model-7b-chat", "training.maxSteps": 3,
                                     "training.saveSteps": 100, "training.loggingSteps": 1}),
        _example("sft-lora.yaml", **{"training.maxSteps": 3, "training.saveSteps": 100, "training.loggingSteps": 1}),
        _example("eval.yaml", shots=[0], styles=["base", "chat"], baseline=None),
        _example("quantize.yaml", **{"calibration.samples": 16}),
    ]
    statuses = []
    for res in stages:
        res["spec"] = {k: v for k, v in res["spec"].items() if v is not None}
        status = runner.run_resource(parse_resource(res, "test"))
        assert status["state"] == "Succeeded", (res["kind"], status)
        statuses.append(status)
    pt, sft, ev, q = statuses
    # pretraining ran on the converted model: a Qwen2 checkpoint with the Qwen-1 vocabulary
    pt_dir = storage / "runs" / "pretrain"
    assert json.loads((pt_dir / "config.json").read_text())["model_type"] == "qwen2"
    run_config = json.loads((pt_dir / "run_config.json").read_text())
    assert ".qwen2-" in run_config["modelPath"]
    # the SFT artifact says chatml, stops at <|im_end|>; default LoRA targets are Qwen2's projections
    merged = storage / "runs" / "sft-lora" / "merged"
    assert sft["artifact"]["template"] == "chatml"
    assert json.loads((merged / "tokenizer_config.json").read_text())["eos_token"] == "<|im_end|>"
    assert 151645 in json.loads((merged / "generation_config.json").read_text())["eos_token_id"]
    adapter = json.loads((storage / "runs" / "sft-lora" / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert {(o["shots"], o["style"]) for o in ev["scores"]["overall"]} == {(0, "base"), (0, "chat")}
    assert q["artifact"]["format"].startswith("gptq")
    int4 = storage / "runs" / "sft-lora-int4"
    assert json.loads((int4 / "tokenizer_config.json").read_text())["eos_token"] == "<|im_end|>"
    assert 151645 in json.loads((int4 / "generation_config.json").read_text())["eos_token_id"]

    # chat: the ChatDeployment worker serves the int4 model on a free port
    chat = yaml.safe_load((EXAMPLES / "chat.yaml").read_text())
    f = tmp_path / "chat.yaml"
    f.write_text(yaml.safe_dump(chat))
    port = free_port()
    log = tmp_path / "chat.log"
    proc = subprocess.Popen([*cli(), "run", "-f", str(f)], env={**os.environ, "DEVOPS_MODEL_SERVE_PORT": str(port)},
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 300
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=120, json={
            "model": chat["spec"]["servedModelName"], "messages": [{"role": "user", "content": "什么是 Kubernetes？"}],
            "max_tokens": 8, "temperature": 0})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["usage"]["completion_tokens"] >= 1 and body["choices"][0]["finish_reason"] in ("stop", "length")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
