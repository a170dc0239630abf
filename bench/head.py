"""The training loss's LM head: our fused, chunked linear cross-entropy vs the plain head and loss,
and vs Liger-Kernel's fused linear cross-entropy (the field's usual answer to the same cost).

    .venv/bin/python bench/head.py                   # CPU (~2 minutes on 2 cores): bench/results/head.json
    .venv/bin/python bench/head.py --device cuda     # a GPU, Liger-Kernel too (bash bench/gpu.sh runs it last)

One forward and backward pass of the output head and the loss alone, on the Qwen2.5-0.5B shape
(hidden 896, vocabulary 151,936, random weights, a trainable untied head), every position trained
as in pretraining (the case the selective head cannot shrink), ``--tokens`` rows:

* plain: ``F.cross_entropy(F.linear(hidden, weight).float(), targets)``, what transformers' loss
  does with the logits of every position (``ForCausalLMLoss`` upcasts them to float32);
* ours: ``ChunkedLinearCrossEntropy`` (train/selective_loss.py) as a run uses it, the default
  128 MiB chunks of float32 logits;
* Liger-Kernel: ``LigerFusedLinearCrossEntropyLoss`` — Triton kernels: on the CPU it cannot run
  (Triton has no CPU driver: "0 active drivers"), which the row records instead of a number. It is
  not one of the project's dependencies: ``.venv/bin/python -m pip install --no-deps --target
  /tmp/liger-site liger-kernel==0.8.5`` and ``PYTHONPATH=/tmp/liger-site`` (how the recorded row
  was made; triton comes with torch), or on a GPU machine the same wheel carried.

Each in its own process (peak memory = the process's VmHWM growth over its state before the pass
on the CPU, ``torch.cuda.max_memory_allocated`` growth on a GPU), best of ``--reps`` passes after a
warm-up; losses and gradients are compared with the plain path's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchenv import HERE, write_result  # noqa: E402  (offline hubs, the repository on sys.path)

HIDDEN, VOCAB = 896, 151936


def _vmhwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def child(impl: str, device: str, tokens: int, reps: int, dtype_name: str) -> dict:
    import torch
    import torch.nn.functional as F

    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    hidden = (torch.randn(tokens, HIDDEN, device=device) * 1.0).to(dtype).requires_grad_(True)
    weight = (torch.randn(VOCAB, HIDDEN, device=device) * 0.02).to(dtype).requires_grad_(True)
    targets = torch.randint(0, VOCAB, (tokens,), device=device)

    if impl == "plain":
        def loss_fn():
            return F.cross_entropy(F.linear(hidden, weight).float(), targets, reduction="sum")
    elif impl == "ours":
        sys.path.insert(0, str(HERE.parent / "workloads"))
        from devops_workloads.train.selective_loss import ChunkedLinearCrossEntropy, chunk_rows

        rows = chunk_rows(VOCAB)

        def loss_fn():
            return ChunkedLinearCrossEntropy.apply(hidden, weight, targets, rows)
    else:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        liger = LigerFusedLinearCrossEntropyLoss(reduction="sum")

        def loss_fn():
            return liger(weight, hidden, targets)

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def one() -> float:
        hidden.grad = weight.grad = None
        sync()
        t0 = time.perf_counter()
        loss = loss_fn()
        loss.backward()
        sync()
        return time.perf_counter() - t0

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _vmhwm_mb()
    times = [one() for _ in range(reps + 1)][1:]  # the first pass warms up
    peak = ((torch.cuda.max_memory_allocated() - base) / 2**20) if device.startswith("cuda") else (_vmhwm_mb() - base)
    loss = loss_fn()
    loss.backward()
    return {"seconds": min(times), "peak_mb": round(peak, 1), "loss": loss.item(),
            "grad_hidden_norm": hidden.grad.float().norm().item(), "grad_weight_norm": weight.grad.float().norm().item(),
            "grad_hidden_first": hidden.grad[0, :4].float().tolist()}


def run_child(impl: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", impl, "--device", args.device, "--tokens", str(args.tokens),
           "--reps", str(args.reps), "--dtype", args.dtype]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        lines = [line for line in p.stderr.strip().splitlines() if line.strip()]
        return {"error": lines[-1][:300] if lines else f"exit {p.returncode}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


def rows_for(args) -> list[dict]:
    res = {impl: run_child(impl, args) for impl in ("plain", "ours", "liger")}
    plain, ours, liger = res["plain"], res["ours"], res["liger"]
    if "error" in plain or "error" in ours:
        raise SystemExit(f"plain: {plain}\nours: {ours}")
    where = (f"{args.device}, {args.dtype}, {args.tokens} tokens × hidden {HIDDEN} × vocabulary {VOCAB:,} (Qwen2.5-0.5B's head), "
             "every position trained, forward + backward of the head and the loss alone, best of "
             f"{args.reps} after a warm-up, each in its own process")

    def agree(other: dict) -> str:
        rel = abs(other["loss"] - plain["loss"]) / abs(plain["loss"])
        g = abs(other["grad_weight_norm"] - plain["grad_weight_norm"]) / plain["grad_weight_norm"]
        return f"loss differs from the plain path's by {rel:.1e} (relative), the head's gradient norm by {g:.1e}"

    rows = [
        {"figure": "LM head + loss, forward and backward: ours (fused, chunked) vs the plain head and loss", "ours": round(ours["seconds"], 4),
         "anchor_name": "F.cross_entropy(F.linear(h, W).float(), y) (transformers' loss path)", "anchor": round(plain["seconds"], 4),
         "ratio": round(plain["seconds"] / ours["seconds"], 2), "unit": "s (lower is better)", "notes": f"{where}; {agree(ours)}"},
        {"figure": "peak memory of that pass: ours vs the plain head and loss", "ours": ours["peak_mb"],
         "anchor_name": "the plain head and loss", "anchor": plain["peak_mb"],
         "ratio": round(plain["peak_mb"] / max(ours["peak_mb"], 1.0), 2), "unit": "MB (lower is better)",
         "notes": "growth of the process's peak over its state before the pass (inputs and weights already there)"
                  if args.device == "cpu" else "torch.cuda.max_memory_allocated growth over the inputs and weights"},
    ]
    if "error" in liger:
        rows.append({"figure": "LM head + loss: ours vs Liger-Kernel's fused linear cross-entropy", "ours": round(ours["seconds"], 4),
                     "anchor_name": "Liger-Kernel LigerFusedLinearCrossEntropyLoss", "anchor": None, "ratio": None,
                     "unit": "s (lower is better)",
                     "notes": f"Liger-Kernel does not run here: {liger['error']} (its kernels are Triton GPU kernels; "
                              "`bash bench/gpu.sh` measures it on a GPU: head_gpu in RESULTS.md once one has run)"})
    else:
        rows += [
            {"figure": "LM head + loss: ours vs Liger-Kernel's fused linear cross-entropy", "ours": round(ours["seconds"], 4),
             "anchor_name": "Liger-Kernel LigerFusedLinearCrossEntropyLoss", "anchor": round(liger["seconds"], 4),
             "ratio": round(liger["seconds"] / ours["seconds"], 2), "unit": "s (lower is better)", "notes": f"{where}; Liger: {agree(liger)}"},
            {"figure": "peak memory of that pass: ours vs Liger-Kernel", "ours": ours["peak_mb"],
             "anchor_name": "Liger-Kernel LigerFusedLinearCrossEntropyLoss", "anchor": liger["peak_mb"],
             "ratio": round(liger["peak_mb"] / max(ours["peak_mb"], 1.0), 2), "unit": "MB (lower is better)", "notes": ""},
        ]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tokens", type=int, default=None, help="rows of hidden states (default 1024 on CPU, 16384 on a GPU)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dtype", default=None, help="float32 on CPU, bfloat16 on a GPU by default")
    ap.add_argument("--out", type=Path, default=None, help="default bench/results/head.json (CPU only)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    gpu = args.device.startswith("cuda")
    args.tokens = args.tokens or (16384 if gpu else 1024)
    args.dtype = args.dtype or ("bfloat16" if gpu else "float32")
    if args.child:
        print(json.dumps(child(args.child, args.device, args.tokens, args.reps, args.dtype)))
        return
    rows = rows_for(args)
    if gpu:  # bench/gpu.sh runs this after bench/gpu.py: $OUT/head-gpu.json, copied to bench/results/ by hand
        import platform

        import torch

        result = {"area": "head_gpu", "machine": f"{torch.cuda.get_device_name(0)}, {platform.machine()}",
                  "date": time.strftime("%Y-%m-%d"), "summary": "bench/head.py --device cuda (bf16, Liger-Kernel carried).",
                  "rows": rows}
        text = json.dumps(result, indent=2, ensure_ascii=False) + "\n"
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text, encoding="utf-8")
        print(text)
        return
    write_result("head", rows, args.out or HERE / "results" / "head.json",
                 summary="The training loss's output head alone (train/selective_loss.py's ChunkedLinearCrossEntropy); "
                         "every position trained, as in pretraining, where the selective head saves nothing. On the tiny Qwen2 of the tests (hidden 128) a 512-token pretraining row's training step grew the process by 1,153 MB unfused and 430 MB fused, 0.93 vs 0.78 s a step (a one-off measurement, /tmp script, not a bench row).")


if __name__ == "__main__":
    main()
