"""QuantizeRun: GPTQ int4 of the tiny Qwen2 model on the CPU, reload and generate, sizes, verification.

The quantization itself runs once per session (fixture ``tiny_gptq`` in tests/plugins/quantize.py);
one more run checks that an impossibly tight limit fails the run with the numbers in its message.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from devops_model.api.resource import parse_resource
from devops_workloads.runner import WorkloadError


def _config(path: Path) -> dict:
    return json.loads((path / "config.json").read_text())


def test_checkpoint_is_gptq_int4_group_128(tiny_gptq):
    q = _config(tiny_gptq)["quantization_config"]
    assert q["quant_method"] == "gptq"
    assert q["bits"] == 4
    assert q["group_size"] == 128
    assert q["checkpoint_format"] == "gptq"
    assert q["sym"] is True and q["desc_act"] is False
    artifact = json.loads((tiny_gptq / "artifact.json").read_text())
    assert artifact["format"] == "gptq"
    assert artifact["uri"] == tiny_gptq.resolve().as_uri()
    assert artifact["baseModel"].startswith("file://")


def test_generation_settings_stay_those_of_the_original(tiny_gptq, tiny_qwen):
    # GPTQModel's save turns do_sample on; a greedy model must not start sampling once quantized.
    original = json.loads((tiny_qwen / "generation_config.json").read_text())
    quantized = json.loads((tiny_gptq / "generation_config.json").read_text())
    assert original["do_sample"] is False
    assert quantized == original


def test_quantized_linear_layers_are_at_most_30_percent(tiny_gptq, tiny_qwen):
    from devops_workloads.quantize.measure import linear_bytes, tensor_bytes

    before, after, layers = linear_bytes(Path(tiny_qwen), tiny_gptq)
    # 2 layers × (q, k, v, o, gate, up, down)
    assert layers == 14
    assert after <= 0.30 * before, f"quantized layers take {after} bytes, {after / before:.1%} of {before}"
    names = tensor_bytes(tiny_gptq)
    assert "model.layers.0.mlp.down_proj.qweight" in names
    assert "model.layers.0.mlp.down_proj.weight" not in names


def test_status_reports_sizes_and_perplexity(tiny_gptq, tiny_qwen):
    status = json.loads((tiny_gptq / "status.json").read_text())
    for key in ("sizeBeforeBytes", "sizeAfterBytes", "compressionRatio", "perplexityBefore", "perplexityAfter"):
        assert key in status, key
    assert status["sizeAfterBytes"] < status["sizeBeforeBytes"]
    assert status["compressionRatio"] == pytest.approx(status["sizeBeforeBytes"] / status["sizeAfterBytes"], rel=1e-3)
    # A random 151k-vocabulary model is close to uniform: perplexity near the vocabulary size, and
    # int4 barely moves it.
    assert 1e4 < status["perplexityBefore"] < 1e6
    assert abs(status["perplexityAfter"] / status["perplexityBefore"] - 1) < 0.05
    assert status["artifact"]["format"] == "gptq"
    assert status["state"] == "Succeeded"
    report = json.loads((tiny_gptq / "quantize.json").read_text())
    assert report["calibration"]["samples"] == 32
    assert report["linearRatio"] <= 0.30
    # progress.jsonl has one line per step, ending at 100 %
    lines = [json.loads(x) for x in (tiny_gptq / "progress.jsonl").read_text().splitlines()]
    assert lines[-1]["percent"] == 100


def test_reloads_with_automodel_and_generates_like_the_original(tiny_gptq, tiny_qwen):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_gptq)
    quant = AutoModelForCausalLM.from_pretrained(tiny_gptq, device_map="cpu")
    orig = AutoModelForCausalLM.from_pretrained(tiny_qwen, device_map="cpu")
    # The linear layers really are GPTQ modules, not dense weights.
    q_proj = quant.model.layers[0].self_attn.q_proj
    assert not isinstance(q_proj, torch.nn.Linear), type(q_proj)
    assert hasattr(q_proj, "qweight")

    ids = tok("Kubernetes 中 Deployment 的作用是", return_tensors="pt")
    out = quant.generate(**ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 8
    assert isinstance(tok.decode(out[0][ids["input_ids"].shape[1]:]), str)

    # int4 keeps the function: the logits stay close to the original's.
    with torch.inference_mode():
        lq = quant(**ids).logits.float()
        lo = orig(**ids).logits.float()
    cos = torch.nn.functional.cosine_similarity(lq.flatten(), lo.flatten(), dim=0)
    assert cos > 0.9, f"cosine similarity of logits {cos:.3f}"


def _sft_parent(home: Path, model_dir: Path, data_file: Path, name: str = "sft-lora") -> None:
    """Record a succeeded SFTRun in the local run registry (what `devops-model run` leaves behind)."""
    entry = {
        "resource": {
            "apiVersion": "devops-model.io/v1alpha1", "kind": "SFTRun", "metadata": {"name": name},
            "spec": {"data": {"datasets": [{"uri": data_file.resolve().as_uri(), "format": "alpaca"}]}},
        },
        "status": {"state": "Succeeded", "artifact": {"uri": "file:///nonexistent-adapter", "format": "hf-lora",
                                                       "mergedUri": model_dir.resolve().as_uri(), "template": "chatml"}},
    }
    p = home / "runs" / "sftrun" / f"{name}.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(entry))


def test_impossibly_tight_limit_fails_the_run_with_the_numbers(local_home, tiny_qwen, devops_calibration, sample_exams):
    """fromRun an SFTRun: calibration defaults to the SFT data; both models take the sample exam;
    maxPerplexityIncrease "0" fails the run (int4 raises this model's perplexity by ~0.1 %)."""
    from devops_model.registry import read_entry as read_registry
    from devops_workloads.runner import run_resource

    _sft_parent(local_home / "home", Path(tiny_qwen), devops_calibration)
    res = parse_resource({
        "apiVersion": "devops-model.io/v1alpha1", "kind": "QuantizeRun", "metadata": {"name": "tight"},
        "spec": {
            "model": {"fromRun": {"kind": "SFTRun", "name": "sft-lora"}},
            "calibration": {"samples": 32, "minLength": 16},
            "verification": {"maxPerplexityIncrease": "0", "maxAccuracyDrop": "1",
                             "exams": {"uri": Path(sample_exams).resolve().as_uri()}},
            "output": {"uri": "pvc://models/tight-int4"},
        },
    })
    with pytest.raises(WorkloadError) as err:
        run_resource(res)
    exc = err.value
    assert exc.reason == "VerificationFailed"
    msg = str(exc)
    assert "spec.verification.maxPerplexityIncrease 0" in msg
    report = json.loads((local_home / "storage" / "models" / "tight-int4" / "quantize.json").read_text())
    # the message carries both perplexities, as reported
    assert f"{report['perplexityBefore']:.4f}" in msg and f"{report['perplexityAfter']:.4f}" in msg
    # calibration came from the parent SFT run's data
    assert report["calibration"]["sources"] == [devops_calibration.resolve().as_uri()]
    assert report["artifact"]["parent"] == "SFTRun/sft-lora"
    assert report["artifact"]["template"] == "chatml"
    # the exam verification ran on both models through the eval workload's evaluator
    assert 0.0 <= report["accuracyBefore"] <= 1.0 and 0.0 <= report["accuracyAfter"] <= 1.0
    assert "exam accuracy" not in msg  # a drop of up to 1 (everything) is allowed here
    results = json.loads((local_home / "home" / "work" / "quantizerun" / "tight" / "verification-exams" / "after" / "results.json").read_text())
    assert results["overall"][0]["total"] > 0
    recorded = read_registry("QuantizeRun", "tight")["status"]
    assert recorded["state"] == "Failed" and recorded["reason"] == "VerificationFailed"


class _V:
    def __init__(self, ppl="0.25", acc="0.05"):
        self.max_perplexity_increase = ppl
        self.max_accuracy_drop = acc


@pytest.mark.parametrize(
    "figures, limits, failing",
    [
        pytest.param({"perplexityBefore": 10.0, "perplexityAfter": 12.0}, _V("0.25"), [], id="ppl-within-25pc"),
        pytest.param({"perplexityBefore": 10.0, "perplexityAfter": 13.0}, _V("0.25"), ["perplexity rose from 10.0000 to 13.0000 (+30.00%)"], id="ppl-over"),
        pytest.param({"perplexityBefore": 10.0, "perplexityAfter": 9.0}, _V("0"), [], id="ppl-fell-limit-0"),
        pytest.param({"accuracyBefore": 0.50, "accuracyAfter": 0.40}, _V(acc="0.05"), ["exam accuracy dropped from 0.5000 to 0.4000"], id="acc-over"),
        pytest.param({"accuracyBefore": 0.50, "accuracyAfter": 0.48}, _V(acc="0.05"), [], id="acc-within"),
        pytest.param({"accuracyBefore": 0.50, "accuracyAfter": 0.4999}, _V(acc="0.00001"), ["maxAccuracyDrop 0.00001"], id="acc-impossibly-tight"),
    ],
)
def test_verify_table(figures, limits, failing):
    from devops_workloads.quantize.entry import verify

    got = verify(figures, limits)
    assert len(got) == len(failing)
    for text, want in zip(got, failing):
        assert want in text


def test_quantize_help_teaches():
    out = subprocess.run([sys.executable, "-m", "devops_cli", "quantize", "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for word in ("--bits", "--group-size", "--calibration", "--samples", "examples:", "AutoModelForCausalLM"):
        assert word in out.stdout


def test_quantize_cli_missing_calibration_names_the_field(tmp_path, tiny_bpe):
    out = subprocess.run(
        [sys.executable, "-m", "devops_cli", "quantize", "--model", str(tiny_bpe), "--out", str(tmp_path / "o"),
         "--calibration", str(tmp_path / "missing.jsonl")],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 3, out.stderr
    assert "spec.calibration.datasets[0].uri" in out.stderr and "not found" in out.stderr


def test_no_calibration_data_without_sft_parent_is_explained():
    from devops_workloads.quantize.entry import calibration_sources

    res = parse_resource({
        "apiVersion": "devops-model.io/v1alpha1", "kind": "QuantizeRun", "metadata": {"name": "x"},
        "spec": {"model": {"uri": "file:///m"}, "output": {"uri": "file:///o"}},
    })
    with pytest.raises(WorkloadError) as err:
        calibration_sources(res.spec, None)
    assert "spec.calibration.datasets" in str(err.value) and err.value.reason == "BadData"


def test_example_resource_is_valid_and_quantizes_the_sft_model():
    from devops_model.api.resource import load_resources

    repo = Path(__file__).resolve().parents[2]
    (res,) = load_resources(str(repo / "examples" / "local" / "quantize.yaml"))
    assert res.kind == "QuantizeRun"
    assert res.spec.model.from_run.kind == "SFTRun"
    sft = repo / "examples" / "local" / "sft-lora.yaml"
    if sft.exists():  # written by the training area; the names must match
        names = [r.metadata.name for r in load_resources(str(sft)) if r.kind == "SFTRun"]
        assert res.spec.model.from_run.name in names


def test_llmcompressor_backend_is_refused_with_the_field(local_home):
    from devops_workloads.quantize.entry import run
    from devops_workloads.runner import RunContext

    res = parse_resource({
        "apiVersion": "devops-model.io/v1alpha1", "kind": "QuantizeRun", "metadata": {"name": "llmc"},
        "spec": {"model": {"uri": "file:///m"}, "backend": "llmcompressor", "output": {"uri": "file:///o"}},
    })
    with pytest.raises(WorkloadError) as err:
        run(RunContext(resource=res, resolved_model="file:///m", workdir=local_home))
    assert err.value.reason == "UnsupportedBackend" and "spec.backend" in str(err.value)


def test_gptqmodel_gets_the_pods_cpus_but_at_least_the_two_workers_its_loader_needs(monkeypatch):
    """A 1-CPU pod once failed every QuantizeRun: GPTQModel's model-loader pool always asks 2 CPU workers."""
    import os

    from devops_workloads.quantize import gptq

    monkeypatch.delenv("GPTQMODEL_CPU_WORKERS", raising=False)
    monkeypatch.setattr(gptq, "usable_cpus", lambda: 1)
    gptq.configure_environment()
    assert os.environ["GPTQMODEL_CPU_WORKERS"] == "2"
    monkeypatch.delenv("GPTQMODEL_CPU_WORKERS")
    monkeypatch.setattr(gptq, "usable_cpus", lambda: 6)  # a 6-CPU limit on a bigger node
    gptq.configure_environment()
    assert os.environ["GPTQMODEL_CPU_WORKERS"] == "6"
    monkeypatch.setenv("GPTQMODEL_CPU_WORKERS", "3")  # the user's word stands
    gptq.configure_environment()
    assert os.environ["GPTQMODEL_CPU_WORKERS"] == "3"
