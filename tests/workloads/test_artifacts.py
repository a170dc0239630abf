"""Content-addressed artifacts (devops_model.artifacts): sealed when a run succeeds, verified by every
consumer before use; a tampered file fails the consumer with ArtifactMismatch naming the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from devops_model.artifacts import ArtifactMismatchError, digest_of, manifest_text, seal, verify
from devops_model.contract import Reason

REPO = Path(__file__).resolve().parents[2]


def _folder(root: Path) -> Path:
    (root / "merged").mkdir(parents=True)
    (root / "checkpoints" / "checkpoint-1").mkdir(parents=True)
    (root / "adapter_model.safetensors").write_bytes(b"adapter weights")
    (root / "adapter_config.json").write_text("{}")
    (root / "merged" / "model.safetensors").write_bytes(b"merged weights")
    (root / "merged" / "config.json").write_text("{}")
    (root / "checkpoints" / "checkpoint-1" / "optimizer.pt").write_bytes(b"state")
    (root / "artifact.json").write_text(json.dumps({"uri": "pvc://runs/x", "format": "hf-lora"}))
    (root / "progress.jsonl").write_text("{}\n")
    return root


def test_seal_and_verify_name_the_changed_added_or_removed_file(tmp_path):
    root = _folder(tmp_path / "a")
    digest = seal(root, skip=("merged",))
    assert digest.startswith("sha256:") and len(digest) == 71
    assert (root / "manifest.sha256").read_text() == manifest_text(root, skip=("merged",))
    assert digest == digest_of((root / "manifest.sha256").read_text())
    listed = [line.split("  ", 1)[1] for line in (root / "manifest.sha256").read_text().splitlines()]
    assert listed == ["adapter_config.json", "adapter_model.safetensors"]  # not merged/, checkpoints/, records
    verify(root, digest, skip=("merged",))
    # what is not content may change (progress, new checkpoints, the record with the digest)
    (root / "progress.jsonl").write_text("{}\n{}\n")
    (root / "checkpoints" / "checkpoint-2").mkdir()
    (root / "artifact.json").write_text("{}")
    (root / "merged" / "model.safetensors").write_bytes(b"sealed on its own")
    verify(root, digest, skip=("merged",))

    (root / "adapter_model.safetensors").write_bytes(b"backdoored weights")
    with pytest.raises(ArtifactMismatchError, match=r"^SFTRun/x: adapter_model.safetensors was changed after the run"):
        verify(root, digest, skip=("merged",), label="SFTRun/x")
    (root / "adapter_model.safetensors").write_bytes(b"adapter weights")
    (root / "extra.py").write_text("import os")
    with pytest.raises(ArtifactMismatchError, match="extra.py was added"):
        verify(root, digest, skip=("merged",))
    (root / "extra.py").unlink()
    (root / "adapter_config.json").unlink()
    with pytest.raises(ArtifactMismatchError, match="adapter_config.json was removed"):
        verify(root, digest, skip=("merged",))


def test_a_rewritten_manifest_does_not_hide_the_change(tmp_path):
    root = _folder(tmp_path / "a")
    digest = seal(root, skip=("merged",))
    (root / "adapter_model.safetensors").write_bytes(b"backdoored weights")
    seal(root, skip=("merged",))  # the attacker reseals: the digest in the parent's status still differs
    with pytest.raises(ArtifactMismatchError, match="manifest.sha256 was changed or removed too"):
        verify(root, digest, skip=("merged",))
    (root / "manifest.sha256").unlink()
    with pytest.raises(ArtifactMismatchError, match="manifest.sha256 was changed or removed too"):
        verify(root, digest, skip=("merged",))


def test_runner_seals_both_folders_and_consumers_verify_the_one_they_use(tmp_path, monkeypatch):
    from devops_workloads.runner import WorkloadError, seal_artifact, verify_parent_artifact

    monkeypatch.setenv("DEVOPS_MODEL_STORAGE", str(tmp_path / "storage"))
    root = _folder(tmp_path / "storage" / "runs" / "x")
    status = {"state": "Succeeded", "artifact": {"uri": "pvc://runs/x", "format": "hf-lora",
                                                 "mergedUri": "pvc://runs/x/merged"}}
    seal_artifact(status)
    art = status["artifact"]
    assert art["digest"] == digest_of(manifest_text(root, skip=("merged",)))
    assert art["mergedDigest"] == digest_of(manifest_text(root / "merged"))
    record = json.loads((root / "artifact.json").read_text())
    assert record["digest"] == art["digest"] and record["mergedDigest"] == art["mergedDigest"]
    parent = {"kind": "SFTRun", "metadata": {"name": "x"}, "status": status}
    verify_parent_artifact("pvc://runs/x/merged", parent)  # EvalRun / QuantizeRun / ChatDeployment
    verify_parent_artifact("pvc://runs/x", parent)         # SFTRun on top of it (adapter and merged/)

    (root / "merged" / "model.safetensors").write_bytes(b"backdoored")
    for uri in ("pvc://runs/x/merged", "pvc://runs/x"):
        with pytest.raises(WorkloadError) as err:
            verify_parent_artifact(uri, parent)
        assert err.value.reason == Reason.ARTIFACT_MISMATCH and err.value.exit_code == 3
        assert str(err.value).startswith("SFTRun/x's artifact pvc://runs/x/merged: model.safetensors was changed")
    # a URI that is not the parent's artifact (spec.model.uri) and remote artifacts are not checked here
    verify_parent_artifact("pvc://models/other", parent)
    verify_parent_artifact("hf://Qwen/Qwen2.5-0.5B", {"status": {"artifact": {"uri": "hf://Qwen/Qwen2.5-0.5B",
                                                                              "digest": "sha256:" + "0" * 64}}})


def test_parent_without_digest_is_used_with_a_warning(tmp_path, monkeypatch, capsys):
    from devops_workloads.runner import verify_parent_artifact

    monkeypatch.setenv("DEVOPS_MODEL_STORAGE", str(tmp_path / "storage"))
    _folder(tmp_path / "storage" / "runs" / "old")
    verify_parent_artifact("pvc://runs/old", {"kind": "SFTRun", "metadata": {"name": "old"},
                                              "status": {"artifact": {"uri": "pvc://runs/old", "format": "hf-full"}}})
    assert "has no digest" in capsys.readouterr().err


def test_digest_must_be_sha256_in_the_api():
    from pydantic import ValidationError

    from devops_model.api.common import Artifact

    assert Artifact.model_validate({"uri": "pvc://a/b", "format": "hf-full", "digest": "sha256:" + "a" * 64}).digest
    with pytest.raises(ValidationError, match="digest"):
        Artifact.model_validate({"uri": "pvc://a/b", "format": "hf-full", "digest": "md5:abc"})


def test_local_eval_of_a_tampered_sft_artifact_fails_before_loading(tiny_qwen, local_home):
    """The whole local path: a recorded SFTRun whose sealed model was changed afterwards; the EvalRun
    with fromRun fails with exit 3 and ArtifactMismatch naming the file, leaving no results."""
    from devops_model.registry import read_entry
    from devops_workloads.runner import run_file, seal_artifact

    storage = local_home / "storage"
    model = storage / "runs" / "sft-lora"
    shutil.copytree(tiny_qwen, model)
    status = {"state": "Succeeded", "artifact": {"uri": "pvc://runs/sft-lora", "format": "hf-full"}}
    seal_artifact(status)
    reg = local_home / "home" / "runs" / "sftrun"
    reg.mkdir(parents=True)
    (reg / "sft-lora.json").write_text(json.dumps({
        "resource": {"apiVersion": "devops-model.io/v1alpha1", "kind": "SFTRun", "metadata": {"name": "sft-lora"}},
        "status": status}))
    weights = next(model.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-4] + b"\x00\x00\x00\x01")

    assert run_file(REPO / "examples/local/eval.yaml") == 3
    st = read_entry("EvalRun", "sft-lora-eval")["status"]
    assert st["state"] == "Failed" and st["reason"] == "ArtifactMismatch"
    assert st["message"] == (f"SFTRun/sft-lora's artifact pvc://runs/sft-lora: {weights.name} was changed after the run "
                             f"that produced it finished (artifact digest {status['artifact']['digest']}); recreate "
                             "the producing run or restore the file")
    assert not (storage / "results" / "sft-lora-eval").exists()


def test_a_vllm_pod_checks_the_parents_artifact_before_the_engine_starts(tmp_path, monkeypatch):
    """vLLM and TGI load the model themselves: the operator gives their pods an init container that makes
    the check every run makes (the parent's digests). Here its rendered command runs against the rendered
    ConfigMap, as the pod would: a sealed artifact passes; a changed weight file stops the pod, named."""
    import os
    import subprocess
    import sys

    from devops_model.api.resource import parse_resource
    from devops_operator.builders import render_children
    from devops_operator.config import OperatorConfig
    from devops_workloads.runner import seal_artifact

    storage = tmp_path / "storage"
    root = storage / "models" / "devops-int4"
    root.mkdir(parents=True)
    (root / "model.safetensors").write_bytes(b"int4 weights")
    (root / "config.json").write_text("{}")
    status = {"state": "Succeeded", "artifact": {"uri": "pvc://models/devops-int4", "format": "gptq"}}
    monkeypatch.setenv("DEVOPS_MODEL_STORAGE", str(storage))
    seal_artifact(status)
    env = {**os.environ, "DEVOPS_MODEL_TERMINATION_LOG": str(tmp_path / "term")}
    parent = {"apiVersion": "devops-model.io/v1alpha1", "kind": "QuantizeRun",
              "metadata": {"name": "devops-int4", "namespace": "ml"}, "status": status}
    chat = parse_resource({"apiVersion": "devops-model.io/v1alpha1", "kind": "ChatDeployment",
                           "metadata": {"name": "devops-chat", "namespace": "ml", "uid": "u1"},
                           "spec": {"model": {"fromRun": {"kind": "QuantizeRun", "name": "devops-int4"}},
                                    "engine": {"name": "vllm"}, "resources": {"gpusPerNode": 1}}})
    cm, deploy, *_ = render_children(chat, OperatorConfig(), resolved_model="pvc://models/devops-int4", parent=parent,
                                     artifact_format="gptq")
    (init,) = deploy["spec"]["template"]["spec"]["initContainers"]
    assert init["name"] == "verify-model" and "resources" not in init  # no GPU for a checksum
    spec_dir = tmp_path / "etc"
    spec_dir.mkdir()
    for key, text in cm["data"].items():
        (spec_dir / key).write_text(text)
    cmd = [sys.executable if c == "python" else c for c in init["command"]]
    cmd[cmd.index("/etc/devops-model/resource.yaml")] = str(spec_dir / "resource.yaml")

    ok = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "pvc://models/devops-int4 is the artifact its parent sealed" in ok.stdout

    (root / "model.safetensors").write_bytes(b"backdoored")
    bad = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 3
    assert "model.safetensors was changed" in bad.stderr
    assert "ArtifactMismatch" in (tmp_path / "term").read_text()

    # The built-in server checks in its own process (it runs the worker entry point): no init container.
    builtin = parse_resource({**chat.to_dict(), "spec": {**chat.to_dict()["spec"], "engine": {"name": "builtin"},
                                                         "resources": {}}})
    _, deploy, *_ = render_children(builtin, OperatorConfig(), resolved_model="pvc://models/devops-int4",
                                    parent=parent, artifact_format="gptq")
    assert "initContainers" not in deploy["spec"]["template"]["spec"]
