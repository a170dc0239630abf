"""Quantization benchmark: GPTQ int4 (our QuantizeRun workload) on a tiny model, on this machine's CPU.

    .venv/bin/python bench/quantize.py          # writes bench/results/quantize.json (~2-3 minutes)

A random-weight model predicts nearly uniformly, so quantization cannot visibly hurt it. The bench
therefore first *trains* the tiny Qwen2 model (byte-level BPE tokenizer, hidden 128) for a few hundred
steps on DevOps Q&A rows until it has learned them, then compares on held-out rows:

* GPTQ int4 / group 128 through the QuantizeRun workload (GPTQModel, calibration with the chat
  template), reloaded as users load it (``AutoModelForCausalLM``);
* round-to-nearest (RTN) int4 / group 128, symmetric — what a user gets from naive weight rounding
  (the same grid GPTQ uses, without its error compensation), computed here in plain torch.

Figures: quantization time (the workload's GPTQ step, and the whole run including both perplexity
measurements, against a bare GPTQModel load-quantize-save script), bytes of the quantized linear
layers and of the checkpoint, and the perplexity increase of GPTQ against RTN. No GPU was lent to
the session that wrote this; the ~1.5B row is left for a machine with one.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(os.cpu_count() or 1))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DEVOPS_MODEL_NO_PROGRESS", "1")

TRAIN_STEPS = 150  # enough for the tiny model to learn the rows' phrasing (loss ≈ 7.6 → < 1)
GROUP = 128


def machine() -> str:
    return f"{platform.machine()} {os.cpu_count()} cores, {platform.system()} (CPU only)"


def train_tiny(model_dir: Path, texts: list[str]) -> float:
    """A few hundred AdamW steps on the calibration rows so the model has something to lose."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    enc = [tok(t, add_special_tokens=False)["input_ids"][:128] for t in texts]
    model.train()
    loss = None
    for step in range(TRAIN_STEPS):
        batch = [enc[(step * 8 + i) % len(enc)] for i in range(8)]
        width = max(len(b) for b in batch)
        ids = torch.tensor([b + [tok.pad_token_id or 0] * (width - len(b)) for b in batch])
        labels = torch.tensor([b + [-100] * (width - len(b)) for b in batch])
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(model_dir)
    return float(loss)


def rtn_perplexity(model_dir: Path, heldout: list[str], dtype: str, bits: int = 4) -> tuple[float, float]:
    """(seconds, perplexity) of symmetric round-to-nearest int4, group 128, on every decoder linear,
    in ``dtype`` (that of the GPTQ checkpoint's unquantized parts, so both pay the same cast)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from devops_workloads.quantize.measure import perplexity

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    qmax = 2 ** (bits - 1) - 1
    t0 = time.time()
    with torch.no_grad():
        for name, mod in model.model.layers.named_modules():
            if isinstance(mod, torch.nn.Linear):
                w = mod.weight.float()
                g = w.reshape(w.shape[0], -1, GROUP)
                scale = g.abs().amax(dim=-1, keepdim=True).clamp(min=1e-8) / qmax
                mod.weight.copy_((torch.clamp(torch.round(g / scale), -qmax - 1, qmax) * scale).reshape_as(w).to(mod.weight.dtype))
    seconds = time.time() - t0
    model.eval()
    return seconds, perplexity(model, tok, heldout)


def bare_gptqmodel_seconds(model_dir: Path, samples: list[list[int]], out: Path) -> float:
    """The anchor for time: GPTQModel's own README recipe (load, quantize, save), nothing else."""
    code = f"""
import time, json, sys
t0 = time.time()
from gptqmodel import GPTQModel, QuantizeConfig
t1 = time.time()
samples = json.load(open({str(out.parent / 'samples.json')!r}))
m = GPTQModel.load({str(model_dir)!r}, QuantizeConfig(bits=4, group_size=128, sym=True, desc_act=False, damp_percent=0.01, offload_to_disk=False), device="cpu")
m.quantize([{{"input_ids": s, "attention_mask": [1] * len(s)}} for s in samples], batch_size=1, calibration_data_min_length=1)
m.save({str(out)!r})
print(json.dumps({{"import": t1 - t0, "work": time.time() - t1}}))
"""
    (out.parent / "samples.json").write_text(json.dumps(samples))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=out.parent, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])["work"]


def our_cli_seconds(model_dir: Path, data: Path, out: Path) -> float:
    """Our ``devops-model quantize --no-verify`` in a fresh process: load + quantize + save seconds."""
    cli = Path(sys.executable).parent / "devops-model"
    subprocess.run([str(cli), "quantize", "--model", str(model_dir), "--out", str(out), "--calibration", str(data),
                    "--samples", "128", "--min-length", "16", "--no-verify"],
                   capture_output=True, text=True, check=True)
    t = json.loads((out / "quantize.json").read_text())["timings"]
    return t["loadSeconds"] + t["quantizeSeconds"] + t["saveSeconds"]


def main() -> int:
    import argparse

    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    from devops_model.api.resource import parse_resource
    from devops_workloads.quantize.calibration import build_calibration, collect_texts, resolve_datasets
    from devops_workloads.quantize.entry import run
    from devops_workloads.runner import RunContext
    from devops_workloads.tiny import build_tiny_model
    from tests.plugins.quantize import write_calibration

    work = Path(tempfile.mkdtemp(prefix="bench-quantize-"))
    try:
        model_dir = build_tiny_model(work / "tiny", "bpe", seed=0)
        data = write_calibration(work / "devops-chat.jsonl", n=240)
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_dir)
        texts = collect_texts(resolve_datasets([{"uri": data.as_uri()}], None, "bench"), tok, True, "bench")
        t0 = time.time()
        final_loss = train_tiny(model_dir, texts[:200])
        print(f"trained the tiny model {TRAIN_STEPS} steps in {time.time() - t0:.0f}s (loss {final_loss:.3f})")

        out = work / "gptq"
        res = parse_resource({
            "apiVersion": "devops-model.io/v1alpha1", "kind": "QuantizeRun", "metadata": {"name": "bench"},
            "spec": {"model": {"uri": model_dir.as_uri()},
                     "calibration": {"datasets": [{"uri": data.as_uri()}], "samples": 128, "minLength": 16},
                     "verification": {"maxPerplexityIncrease": "10"},
                     "output": {"uri": out.as_uri()}},
        })
        t0 = time.time()
        status = run(RunContext(resource=res, resolved_model=res.spec.model.uri, workdir=work)).to_dict()
        total = time.time() - t0
        report = json.loads((out / "quantize.json").read_text())
        cal = build_calibration(texts, tok, 128, 16, 2048, 32, "bench")
        heldout = cal.heldout
        qdtype = json.loads((out / "config.json").read_text()).get("dtype") or "bfloat16"
        rtn_s, rtn_ppl = rtn_perplexity(model_dir, heldout, qdtype)
        (work / "bare").mkdir()
        bare_s = bare_gptqmodel_seconds(model_dir, cal.samples, work / "bare" / "out")
        gptq_s = our_cli_seconds(model_dir, data, work / "cli")

        p0, p1 = status["perplexityBefore"], status["perplexityAfter"]
        gptq_rise = p1 / p0 - 1
        rtn_rise = rtn_ppl / p0 - 1
        rows = [
            {"figure": "GPTQ int4 g128, tiny model: load + quantize + save (CPU)", "ours": round(gptq_s, 2),
             "anchor_name": "bare GPTQModel script (README recipe)", "anchor": round(bare_s, 2),
             "ratio": round(bare_s / gptq_s, 3), "unit": "s",
             "notes": "each in a fresh process, same settings and 128 calibration samples; ours = devops-model quantize --no-verify "
                      "(the same GPTQModel calls, so the difference is run-to-run noise; other jobs may share the cores)"},
            {"figure": "whole QuantizeRun incl. perplexity before/after and reload", "ours": round(total, 1),
             "anchor_name": "bare GPTQModel script (no verification)", "anchor": round(bare_s, 2),
             "ratio": round(bare_s / total, 3), "unit": "s",
             "notes": "the price of proving it still works: two perplexity passes and loading the checkpoint as users do"},
            {"figure": "bytes of the quantized linear layers, after / before", "ours": report["linearRatio"],
             "anchor_name": "ideal int4 (4/32 bits, no scales or zeros)", "anchor": 0.125,
             "ratio": round(0.125 / report["linearRatio"], 3), "unit": "fraction",
             "notes": f"{report['linearBytesBefore']} → {report['linearBytesAfter']} bytes in {report['quantizedLayers']} layers (fp32 original)"},
            {"figure": "checkpoint size, before / after", "ours": status["compressionRatio"],
             "anchor_name": "bf16 cast of the same model", "anchor": 2.0,
             "ratio": round(status["compressionRatio"] / 2.0, 3), "unit": "×",
             "notes": f"{status['sizeBeforeBytes']} → {status['sizeAfterBytes']} bytes; embeddings stay 16-bit, so tiny models compress least"},
            {"figure": "perplexity increase on held-out rows (trained tiny model)", "ours": round(100 * gptq_rise, 3),
             "anchor_name": "round-to-nearest int4 g128 (symmetric)", "anchor": round(100 * rtn_rise, 3),
             "ratio": round(rtn_rise / gptq_rise, 3) if gptq_rise > 0 else None, "unit": "%",
             "notes": f"perplexity {p0:.3f} → GPTQ {p1:.3f}, RTN {rtn_ppl:.3f} (both {qdtype} outside the int4 layers); "
                      f"{len(heldout)} held-out rows, 128 calibration samples; model trained {TRAIN_STEPS} steps to loss {final_loss:.2f}"},
        ]
        result = {"area": "quantize", "machine": machine(), "date": time.strftime("%Y-%m-%d"), "rows": rows,
                  "summary": "GPU figures (GPTQ of a ~1.5B random-weight model) are not measured: no GPU was lent to "
                             "the sessions that ran this; the rows above are the CPU figures of this machine."}
        (HERE / "results").mkdir(exist_ok=True)
        (HERE / "results" / "quantize.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        for r in rows:
            print(f"{r['figure']}: ours {r['ours']} {r['unit']} vs {r['anchor_name']} {r['anchor']} (ratio {r['ratio']})")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
