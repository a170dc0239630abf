"""URIs, model sources, the tiny model, the run registry and progress reporting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from devops_model.uris import UriError, local_path, parse_uri
from devops_workloads import sources
from devops_workloads.progress import ProgressReporter, StatusPatcher
from devops_workloads.runner import WorkloadError

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "uri,scheme,authority,path,rev",
    [
        ("hf://Qwen/Qwen2.5-7B", "hf", "Qwen/Qwen2.5-7B", "", None),
        ("hf://Qwen/Qwen2.5-7B@v1.0", "hf", "Qwen/Qwen2.5-7B", "", "v1.0"),
        ("modelscope://codefuse-ai/CodeFuse-DevOps-Model-7B-Base", "modelscope", "codefuse-ai/CodeFuse-DevOps-Model-7B-Base", "", None),
        ("pvc://models/qwen/7b", "pvc", "models", "qwen/7b", None),
        ("s3://bucket/models/qwen/", "s3", "bucket", "models/qwen", None),
        ("file:///data/model", "file", "", "/data/model", None),
    ],
)
def test_parse_uri(uri, scheme, authority, path, rev):
    p = parse_uri(uri)
    assert (p.scheme, p.authority, p.path, p.revision) == (scheme, authority, path, rev)


@pytest.mark.parametrize("uri,needle", [
    ("http://x/y", "unsupported URI"),
    ("file://relative/path", "absolute path"),
    ("hf://just-a-name", "ORG/NAME"),
    ("pvc:///no-claim", "without a claim"),
])
def test_parse_uri_errors_teach(uri, needle):
    with pytest.raises(UriError, match=needle):
        parse_uri(uri)


def test_pvc_maps_to_storage_root(monkeypatch, tmp_path):
    monkeypatch.setenv("DEVOPS_MODEL_STORAGE", str(tmp_path))
    assert local_path("pvc://models/tiny") == tmp_path / "models" / "tiny"
    with pytest.raises(UriError):
        local_path("hf://Qwen/Qwen2.5-7B")


def test_materialize_local_and_missing(local_home):
    root = Path(os.environ["DEVOPS_MODEL_STORAGE"])
    (root / "models" / "m").mkdir(parents=True)
    assert sources.materialize_model("pvc://models/m") == root / "models" / "m"
    with pytest.raises(WorkloadError) as info:
        sources.materialize_model("pvc://models/absent")
    assert info.value.reason == "ModelNotFound" and "claim is mounted" in str(info.value)


def test_materialize_hf_downloads_once_with_token(local_home, monkeypatch):
    """The hub cannot be reached here: snapshot_download is replaced, the rest is the real code."""
    calls = []

    def fake_snapshot_download(repo_id, revision, local_dir, token):
        calls.append((repo_id, revision, token))
        Path(local_dir, "config.json").write_text("{}")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_TOKEN", "secret-token")
    monkeypatch.setenv("DEVOPS_MODEL_CACHE", str(local_home / "cache"))
    p1 = sources.materialize_model("hf://Qwen/Qwen2.5-0.5B@main")
    p2 = sources.materialize_model("hf://Qwen/Qwen2.5-0.5B@main")
    assert p1 == p2 and (p1 / "config.json").exists() and (p1 / ".complete").exists()
    assert calls == [("Qwen/Qwen2.5-0.5B", "main", "secret-token")]


def test_materialize_hf_offline_is_a_clear_error(local_home, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DEVOPS_MODEL_CACHE", str(local_home / "cache"))
    with pytest.raises(WorkloadError, match="HF_HUB_OFFLINE=1; copy the model to a PVC"):
        sources.materialize_model("hf://Qwen/Qwen2.5-0.5B")


def test_materialize_s3_lists_and_downloads(local_home, monkeypatch):
    objects = {"models/q/config.json": b"{}", "models/q/model.safetensors": b"w"}
    seen = {}

    class FakeClient:
        def get_paginator(self, name):
            assert name == "list_objects_v2"
            return types.SimpleNamespace(paginate=lambda Bucket, Prefix: [
                {"Contents": [{"Key": k} for k in objects if k.startswith(Prefix)]}])

        def download_file(self, bucket, key, dest):
            Path(dest).write_bytes(objects[key])

    def client(name, endpoint_url=None):
        seen["endpoint"] = endpoint_url
        return FakeClient()

    monkeypatch.setitem(sys.modules, "boto3", types.SimpleNamespace(client=client))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("DEVOPS_MODEL_CACHE", str(local_home / "cache"))
    p = sources.materialize_model("s3://bucket/models/q")
    assert sorted(f.name for f in p.iterdir()) == [".complete", "config.json", "model.safetensors"]
    assert seen["endpoint"] == "http://127.0.0.1:9000"


def test_modelscope_without_package_says_how(local_home, monkeypatch):
    monkeypatch.setitem(sys.modules, "modelscope", None)
    monkeypatch.setenv("DEVOPS_MODEL_CACHE", str(local_home / "cache"))
    with pytest.raises(WorkloadError, match="pip install modelscope"):
        sources.materialize_model("modelscope://codefuse-ai/CodeFuse-DevOps-Model-7B-Base")


# ----------------------------------------------------------------------------- tiny model


@pytest.mark.parametrize("fixture", ["tiny_qwen", "tiny_bpe"])
def test_tiny_model_reloads_offline_and_generates(fixture, request):
    path = request.getfixturevalue(fixture)
    code = (
        "import sys, torch; from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"t = AutoTokenizer.from_pretrained({str(path)!r}); m = AutoModelForCausalLM.from_pretrained({str(path)!r})\n"
        "assert m.config.model_type == 'qwen2' and m.config.hidden_size % 128 == 0\n"
        "ids = t.apply_chat_template([{'role': 'user', 'content': 'kubectl 是什么?'}], add_generation_prompt=True, return_tensors='pt', return_dict=True)\n"
        "out = m.generate(**ids, max_new_tokens=4, do_sample=False)\n"
        "assert out.shape[1] > ids['input_ids'].shape[1]\n"
        "print(t.decode(ids['input_ids'][0]))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "<|im_start|>user\nkubectl 是什么?<|im_end|>\n<|im_start|>assistant\n" in r.stdout


def test_qwen_variant_uses_the_real_qwen_vocabulary(tiny_qwen):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_qwen)
    assert len(tok) > 150_000
    assert tok.convert_tokens_to_ids("<|endoftext|>") == 151643
    assert tok.convert_tokens_to_ids("<|im_end|>") == 151645


def test_tiny_model_is_deterministic(tmp_path):
    from safetensors.torch import load_file

    from devops_workloads.tiny import build_tiny_model

    a = load_file(build_tiny_model(tmp_path / "a", "bpe", seed=3) / "model.safetensors")
    b = load_file(build_tiny_model(tmp_path / "b", "bpe", seed=3) / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_cli_builds_tiny_model(tmp_path):
    r = subprocess.run([str(ROOT / ".venv/bin/devops-model"), "dev", "tiny-model", "--out", str(tmp_path / "m"), "--tokenizer", "bpe"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m" / "config.json").exists() and (tmp_path / "m" / "tokenizer.json").exists()


# ----------------------------------------------------------------------------- progress


def test_progress_reporter_writes_jsonl(tmp_path):
    with ProgressReporter(tmp_path, "test", total=4, enable_bar=False) as rep:
        for step in range(1, 5):
            rep.update(step=step, loss=1.0 / step, learning_rate=1e-4)
    lines = [json.loads(x) for x in (tmp_path / "progress.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4]
    assert lines[-1]["percent"] == 100 and lines[-1]["total_steps"] == 4


def test_only_rank0_reports(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    rep = ProgressReporter(tmp_path, "test", total=2, enable_bar=False)
    rep.update(step=1)
    rep.close()
    assert not (tmp_path / "progress.jsonl").exists()


@pytest.mark.cluster
def test_status_patcher_patches_the_owner_with_a_service_account(control_plane, k8s_namespace, tmp_path):
    """In a pod, progress reaches status through the API server with the pod's token (stdlib HTTP)."""
    from tests.api.api_cases import base

    control_plane.apply(base("SFTRun"), namespace=k8s_namespace)
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "status-writer", "namespace": k8s_namespace},
        "rules": [{"apiGroups": ["devops-model.io"], "resources": ["sftruns/status"], "verbs": ["patch"]}],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "status-writer", "namespace": k8s_namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "status-writer"},
        "subjects": [{"kind": "ServiceAccount", "name": "worker", "namespace": k8s_namespace}],
    }
    control_plane.apply([role, binding], namespace=k8s_namespace)
    control_plane.service_account_kubeconfig(k8s_namespace, "worker")
    token = control_plane.kubectl("create", "token", "worker", "-n", k8s_namespace).stdout.strip()
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text(token)
    (sa / "ca.crt").write_bytes(Path(control_plane.ca_file).read_bytes())
    host_port = control_plane.server.removeprefix("https://")
    host, port = host_port.rsplit(":", 1)
    patcher = StatusPatcher(f"sftruns/{k8s_namespace}/sft", host, port, sa)
    assert patcher.patch({"progress": {"step": 7, "totalSteps": 10, "loss": 1.25}})
    got = control_plane.get("sftrun", "sft", k8s_namespace)
    assert got["status"]["progress"] == {"step": 7, "totalSteps": 10, "loss": 1.25}
    # the same token may not touch another kind's status
    other = StatusPatcher(f"evalruns/{k8s_namespace}/sft", host, port, sa)
    assert not other.patch({"progress": {"step": 1}})


def test_a_run_uses_the_cpus_of_its_pod_not_of_the_node(monkeypatch):
    """torch starts a thread per core of the node; a run limits them to what its cgroup allows
    (usable_cpus), unless OMP_NUM_THREADS (torchrun's, or the user's) says otherwise."""
    import subprocess
    import sys

    import torch

    from devops_workloads import runner

    # A pod's process: set before torch is imported, so OpenMP's pool is that size from the start.
    code = ("from devops_workloads import runner; runner.usable_cpus = lambda: 1; print(runner.limit_cpu_threads()); "
            "import os, torch; print(os.environ['OMP_NUM_THREADS'], torch.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1", "1", "1"]
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_NUM_THREADS": "2"}, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["None", "2", "2"]

    # In-process, with torch already imported: its pool, and nothing leaks into the environment.
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setattr(runner, "usable_cpus", lambda: 1)  # a 500m or 1-CPU limit
        assert runner.limit_cpu_threads() == 1
        assert torch.get_num_threads() == 1 and "OMP_NUM_THREADS" not in os.environ
        monkeypatch.setenv("OMP_NUM_THREADS", "3")  # told: left alone
        torch.set_num_threads(2)
        assert runner.limit_cpu_threads() is None and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_the_quickstart_report_keeps_a_pipe_inside_a_table_cell():
    """A model's answer may contain `|` (a shell pipeline): the Markdown escapes it, the HTML keeps it in its cell."""
    from devops_workloads.quickstart import _markdown_to_html

    page = _markdown_to_html("| question | answer |\n|---|---|\n| logs? | kubectl logs pod \\| grep error |\n| a | b\n")
    assert "<td>kubectl logs pod | grep error</td>" in page
    assert page.count("<td>") == 4 and "<th>answer</th>" in page
