"""The built-in ChatDeployment's pod, as the operator renders it, run the way a kubelet runs it:
its ConfigMap laid out at the mount path's place, its environment, its command. With a hub model
(hf://) the worker entry point materialises the model through the same code as a local run — the
bug this replaces started `devops-model serve --model Qwen/...`, which exited "no such folder".

The hub cannot be reached here: ``huggingface_hub.snapshot_download`` copies the tiny model; the
rest (ConfigMap, command, env, runner, materialisation, server config) is the real code.

    .venv/bin/python -m pytest tests/e2e/test_builtin_pod.py -q
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from devops_model.api.resource import parse_resource
from devops_model.contract import SPEC_DIR

API_KEY = "pod-test-key"


def test_a_builtin_chat_with_a_hub_model_materialises_it_in_the_pod(tiny_bpe, local_home, monkeypatch):
    import huggingface_hub

    from devops_operator.builders import render_children
    from devops_operator.config import OperatorConfig
    from devops_workloads.serve import entry

    chat = parse_resource({
        "apiVersion": "devops-model.io/v1alpha1", "kind": "ChatDeployment",
        "metadata": {"name": "hub-chat", "namespace": "team"},
        "spec": {"model": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct@main"}, "engine": {"name": "builtin"},
                 "auth": {"apiKeySecret": {"name": "chat-key", "key": "key"}}, "port": 8081},
    })
    operator_lineage = {"lineage": ["hf://Qwen/Qwen2.5-0.5B-Instruct@main"]}
    cm, deploy, _svc = render_children(chat, OperatorConfig(), lineage=operator_lineage)
    container = deploy["spec"]["template"]["spec"]["containers"][0]

    # The kubelet: the ConfigMap's keys as files at the mount path, the container's environment.
    spec_dir = local_home / "etc-devops-model"
    spec_dir.mkdir()
    for key, text in cm["data"].items():
        (spec_dir / key).write_text(text)
    command = container["command"]
    assert command[:3] == ["devops-model", "run", "-f"] and command[3].startswith(SPEC_DIR + "/")
    spec_file = spec_dir / Path(command[3]).name
    for e in container["env"]:
        if "value" in e and e["name"].startswith("DEVOPS_MODEL_SERVE_"):
            monkeypatch.setenv(e["name"], e["value"])
        elif "valueFrom" in e:
            assert e["valueFrom"]["secretKeyRef"] == {"name": "chat-key", "key": "key"}
            monkeypatch.setenv(e["name"], API_KEY)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")  # "in a pod" (never contacted)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("DEVOPS_MODEL_CACHE", str(local_home / "cache"))

    downloads = []

    def fake_snapshot_download(repo_id, revision, local_dir, token):
        downloads.append((repo_id, revision))
        shutil.copytree(tiny_bpe, local_dir, dirs_exist_ok=True)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    served = {}
    monkeypatch.setattr(entry, "_serve_until_stopped",
                        lambda config, host, port: served.update(config=config, host=host, port=port))

    from devops_cli import main

    assert main(["run", "-f", str(spec_file)]) == 0
    assert downloads == [("Qwen/Qwen2.5-0.5B-Instruct", "main")]
    config = served["config"]
    assert Path(config.model_dir, "config.json").is_file()
    assert json.loads(Path(config.model_dir, "config.json").read_text())["model_type"] == "qwen2"
    assert (served["host"], served["port"]) == ("0.0.0.0", 8081)
    assert config.api_key == API_KEY and config.served_model_name == "hub-chat"
    # The gate and the lineage are the operator's (it wrote lineage.json), not a local registry's.
    assert config.lineage == operator_lineage


@pytest.mark.parametrize("engine", ["vllm", "tgi"])
def test_vllm_and_tgi_get_the_hub_id_they_download_themselves(engine):
    from devops_operator.builders import render_children

    chat = parse_resource({
        "apiVersion": "devops-model.io/v1alpha1", "kind": "ChatDeployment", "metadata": {"name": "c"},
        "spec": {"model": {"uri": "hf://Qwen/Qwen2.5-7B-Instruct"}, "engine": {"name": engine},
                 "resources": {"gpusPerNode": 1}},
    })
    args = render_children(chat)[1]["spec"]["template"]["spec"]["containers"][0]["args"]
    flag = "--model" if engine == "vllm" else "--model-id"
    assert args[args.index(flag) + 1] == "Qwen/Qwen2.5-7B-Instruct"
