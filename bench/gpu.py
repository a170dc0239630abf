"""GPU figures in one prepared run: SFT tokens/s and MFU, exam throughput, serving tokens/s and the
Qwen-1 conversion, on random-weight Qwen shapes built from their configs (nothing is downloaded).

    bash bench/gpu.sh --prepare          # here, once: fills bench/gpu.carry/ (exams, Qwen tokenizer
                                         # files, Qwen-1 code + qwen.tiktoken, wheels the GPU image lacks)
    bash bench/gpu.sh                    # on the GPU machine: every section, ~7 minutes on one H200
    bash bench/gpu.sh --smoke            # here, on CPU, tiny shapes: every code path in < 3 minutes
    python bench/gpu.py --sections sft,exam --peak-tflops 989   # a subset, another peak

With the ``device`` tool (one H200 machine, 15 minutes of device time per session; see
/work/.library/device/README.md), from the repository root after ``bash bench/gpu.sh --prepare``:

    run(command="bash bench/gpu.sh", carry=["bench/gpu.carry"], timeout_s=540)

``$OUT/gpu.json`` (and ``$OUT/gpu.log``) come back under the reply's ``files_at``; copy the JSON to
``bench/results/gpu.json`` and run ``python bench/report.py`` to put it into bench/RESULTS.md. Run
nothing else on the machine first: the script is sized to one call under 8 minutes.

Sections, each in its own process with its own time box (a section that fails or runs out of time
is recorded as such, with the end of its log, and the others still run; bench/results/gpu.json is
rewritten after every section, so a run cut short keeps what was measured):

1. ``sft``: SFT tokens/s and MFU for the Qwen2.5-0.5B and Qwen2.5-1.5B shapes (their config
   numbers, random weights, the real Qwen tokenizer), bf16 mixed precision on fp32 master weights,
   full fine-tuning, packed, through ``runner.run_resource`` — the very ``devops-model run`` path
   that bench/train.py measures on CPU: our data pipeline, ``PackedCollator`` and the selective LM
   head (``train/selective_loss.py``). The only addition is a step clock (the Trainer class is
   wrapped to add one callback that synchronises the GPU at each step end), so the first
   ``WARM_STEPS`` steps (CUDA context, kernel selection, allocator growth) are left out.
   MFU = 6 · N · tokens/s / peak, N = all parameters (the tied embedding once), peak
   ``--peak-tflops`` (790: an 8192³ bf16 matrix product on this H200). The row's anchor is that
   physical limit expressed in tokens/s, so its ratio is the MFU.
2. ``exam``: the 574 questions of the seed's six exams (``../shared/data/exams`` or
   ``bench/gpu.carry/exams``, preset devops-574; the bundled sample exam when neither exists) at 0
   and 5 shots on the Qwen2.5-1.5B shape: ``evaluate()`` as ``devops-model eval`` runs it with our
   fast engine (batched, prefix-KV-cached, head at the scored positions) vs the plain one-question
   loop, both bf16; then the fast engine in fp32, and the agreement of the bf16 and fp32
   predictions (random weights give nearly tied option logits, so this is a hard case for bf16).
3. ``serve``: the built-in server (``devops-model serve``, a real process over loopback HTTP + SSE)
   on the Qwen2.5-1.5B shape in bf16, driven by bench/serve.py's ``drive`` at 16 and 64 concurrent
   clients (``ignore_eos``, a fixed number of new tokens); anchor: sequential ``generate`` in-process.
4. ``qwen1``: a tiny and a Qwen-1.8B-shaped (the released Qwen-1 size nearest 1.5B) random Qwen-1
   checkpoint, written as downloaded (``QWenLMHeadModel`` key names, ``qwen.tiktoken``, the
   released code when carried), converted by the project's converter (``models/qwen1.py``), loaded
   by the project's loader; logits compared in fp32 and bf16 with the original remote code when it
   runs under this machine's transformers, else (transformers 5 cannot run it: issue 16) with
   ``Qwen1Reference`` below, an independent plain-torch implementation of Qwen-1's forward pass
   written from ``modeling_qwen.py`` that reads the checkpoint's own tensor names. The output says
   which reference was used. Token ids of the converted tokenizer are compared with tiktoken's.

``--smoke`` runs every section with tiny shapes on CPU (tests/bench/test_gpu.py does).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from benchenv import HERE, REPO  # noqa: E402  (offline hubs, the repository on sys.path)

CARRY = HERE / "gpu.carry"
SHARED = REPO.parent / "shared"
SECTIONS = ("sft", "exam", "serve", "qwen1")
#: time box per section (s): GPU run (sums to ~7 minutes with the start-up) and --smoke on CPU
BOXES = {"gpu": {"sft": 160, "exam": 110, "serve": 70, "qwen1": 100},
         "smoke": {"sft": 90, "exam": 60, "serve": 60, "qwen1": 90}}
WARM_STEPS = 4

_COMMON = dict(hidden_act="silu", rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False,
               vocab_size=151936, attention_dropout=0.0)
#: Qwen2.5-0.5B / -1.5B config.json numbers; the smoke shapes are tiny.
SHAPES: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b": dict(_COMMON, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1000000.0),
    "qwen2.5-1.5b": dict(_COMMON, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1000000.0),
    "smoke-a": dict(_COMMON, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=4096, rope_theta=10000.0),
    "smoke-b": dict(_COMMON, hidden_size=96, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=4096, rope_theta=10000.0),
}
#: Qwen-1 shapes (released key names): the tiny test shape and Qwen-1.8B's config.
QWEN1_SHAPES: dict[str, dict[str, Any]] = {
    "qwen1-tiny": dict(hidden_size=128, num_attention_heads=4, kv_channels=32, num_hidden_layers=2, intermediate_size=768,
                       seq_length=2048, vocab_size=151936, rotary_emb_base=10000),
    "qwen1-1.8b": dict(hidden_size=2048, num_attention_heads=16, kv_channels=128, num_hidden_layers=24,
                       intermediate_size=11008, seq_length=8192, vocab_size=151936, rotary_emb_base=10000),
    "qwen1-smoke-b": dict(hidden_size=96, num_attention_heads=4, kv_channels=24, num_hidden_layers=3, intermediate_size=256,
                          seq_length=2048, vocab_size=151936, rotary_emb_base=10000),
}
#: what each mode measures
PLAN = {
    "gpu": {"sft": [("qwen2.5-0.5b", 30), ("qwen2.5-1.5b", 20)], "sft_len": 4096, "sft_batch": 4, "sft_repeat": 128,
            "exam": "qwen2.5-1.5b", "serve": "qwen2.5-1.5b", "serve_tokens": 64, "serve_levels": (16, 64), "serve_rounds": 2,
            "qwen1": ["qwen1-tiny", "qwen1-1.8b"]},
    "smoke": {"sft": [("smoke-a", 6)], "sft_len": 256, "sft_batch": 2, "sft_repeat": 2,
              "exam": "smoke-b", "serve": "smoke-a", "serve_tokens": 8, "serve_levels": (16, 64), "serve_rounds": 1,
              "qwen1": ["qwen1-tiny"], "sample_exam": True},
}


# ------------------------------------------------------------------------------------------ helpers

def say(msg: str) -> None:
    print(f"[gpu-bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def machine() -> str:
    import torch

    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        return (f"{torch.cuda.get_device_name(0)} ({p.total_memory / 2**30:.0f} GiB), {os.cpu_count()} CPU cores, "
                f"torch {torch.__version__}, CUDA {torch.version.cuda}")
    return f"{platform.machine()} {os.cpu_count()} cores, {platform.system()} (CPU only; --smoke shapes, not GPU figures)"


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "tokenizers", "accelerate", "safetensors", "tiktoken", "fastapi", "pydantic"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "missing"
    return out


def seed_qwen1_dir() -> Path | None:
    """Qwen-1's released code and qwen.tiktoken: DEVOPS_MODEL_SEED_QWEN1, ../shared/seed/qwen1 or the carry."""
    for d in (os.environ.get("DEVOPS_MODEL_SEED_QWEN1"), SHARED / "seed" / "qwen1", CARRY / "qwen1"):
        if d and (Path(d) / "qwen.tiktoken").is_file():
            return Path(d)
    return None


def exams_root(sample: bool = False) -> tuple[Path, str | None, str]:
    """(root, preset, description): the seed's exams when here or carried, else (or with ``sample``)
    the bundled sample exam."""
    for d in () if sample else (SHARED / "data" / "exams", CARRY / "exams"):
        if (d / "cmmlu").is_dir() and (d / "ceval").is_dir():
            return d, "devops-574", "devops-574 (the seed's six exams)"
    from devops_workloads.sample_data import ROOT

    return ROOT / "exams", None, "the bundled sample exam (the seed's exams were not found)"


def ensure_model(work: Path, shape: str) -> tuple[Path, int]:
    """A random-weight Qwen2 model of ``shape`` with the real Qwen tokenizer (bf16 on disk on GPU,
    fp32 on CPU), built once per run under ``work/storage/models``; returns (folder, parameters)."""
    folder = work / "storage" / "models" / shape
    meta = folder / "gpu-bench.json"
    if meta.is_file():
        return folder, json.loads(meta.read_text())["parameters"]
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from devops_workloads.tiny import build_tokenizer

    t0 = time.time()
    tok = build_tokenizer("qwen")
    tok.model_max_length = SHAPES[shape]["max_position_embeddings"]
    config = Qwen2Config(**SHAPES[shape], bos_token_id=None, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
                         pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"))
    dev = device()
    torch.manual_seed(0)
    with torch.device(dev):
        model = Qwen2ForCausalLM(config)
    model.to(torch.bfloat16 if dev == "cuda" else torch.float32)
    model.generation_config = GenerationConfig(eos_token_id=[config.eos_token_id, config.pad_token_id],
                                               pad_token_id=config.pad_token_id, do_sample=False, max_new_tokens=32)
    n = sum(p.numel() for p in model.parameters())
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    meta.write_text(json.dumps({"shape": shape, "parameters": n, **SHAPES[shape]}, indent=2))
    del model
    if dev == "cuda":
        torch.cuda.empty_cache()
    say(f"built {shape}: {n / 1e9:.3f}B parameters in {time.time() - t0:.1f}s")
    return folder, n


NO_RATIO = float("nan")


def row(figure: str, ours: float | None, anchor_name: str, anchor: float | None, unit: str, notes: str,
        ratio: float | None = None, digits: int = 3) -> dict[str, Any]:
    """A results row (bench/report.py); the ratio is ours / anchor unless given (``NO_RATIO``: none)."""
    if ratio is None and ours is not None and anchor:
        ratio = ours / anchor
    if ratio is not None and math.isnan(ratio):
        ratio = None
    return {"figure": figure, "ours": None if ours is None else _round(ours, digits), "anchor_name": anchor_name,
            "anchor": None if anchor is None else _round(anchor, digits),
            "ratio": None if ratio is None else _round(ratio, 3), "unit": unit, "notes": notes}


def _round(x: float, digits: int) -> float:
    """``digits`` decimals, but never fewer than 4 significant digits (a small MFU must not print as 0)."""
    if x == 0 or not math.isfinite(x):
        return x
    return round(x, max(digits, 3 - int(math.floor(math.log10(abs(x))))))


# ------------------------------------------------------------------------------------------ 1. SFT

def _sft_registry(storage: Path, repeat: int) -> str:
    """The bundled SFT records repeated ``repeat`` times as a registry (enough tokens for full GPU steps)."""
    from devops_workloads.sample_data import ROOT

    reg = storage / "gpubench-data"
    reg.mkdir(parents=True, exist_ok=True)
    alpaca = json.loads((ROOT / "sft" / "devops_qa_alpaca.json").read_text(encoding="utf-8"))
    (reg / "alpaca.json").write_text(json.dumps(alpaca * repeat, ensure_ascii=False), encoding="utf-8")
    share = (ROOT / "sft" / "devops_qa_sharegpt.jsonl").read_text(encoding="utf-8").strip() + "\n"
    (reg / "sharegpt.jsonl").write_text(share * repeat, encoding="utf-8")
    info = json.loads((ROOT / "dataset_info.json").read_text())
    (reg / "dataset_info.json").write_text(json.dumps({
        "alpaca_x": {**{k: v for k, v in info["devops_qa_alpaca"].items() if k != "file_sha1"}, "file_name": "alpaca.json"},
        "sharegpt_x": {**{k: v for k, v in info["devops_qa_sharegpt"].items() if k != "file_sha1"}, "file_name": "sharegpt.jsonl"},
    }, indent=2))
    return "pvc://gpubench-data"


class _StepClock:
    """Wall time and tokens seen at every optimizer step's end (GPU synchronised)."""

    marks: list[tuple[float, int, int]] = []

    @classmethod
    def install(cls) -> None:
        from transformers import TrainerCallback

        from devops_workloads.train import selective_loss

        class Clock(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):  # noqa: ARG002
                sync()
                cls.marks.append((time.perf_counter(), int(state.num_input_tokens_seen), int(state.global_step)))

        base = selective_loss.SelectiveHeadTrainer
        if getattr(base, "_gpu_bench_clock", False):
            return

        class ClockedTrainer(base):  # type: ignore[misc,valid-type]
            _gpu_bench_clock = True

            def __init__(self, *a, callbacks=None, **kw):
                super().__init__(*a, callbacks=[*(callbacks or []), Clock()], **kw)

        selective_loss.SelectiveHeadTrainer = ClockedTrainer  # train/entry.py imports it at call time


def per_shape(emit: Callable[[dict], None], section: str, shape: str, fn: Callable[[], None]) -> None:
    """Run one shape's measurement; a failure becomes a row (with the error) and the next shape still runs."""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001  (recorded, not raised: the other shapes still count)
        traceback.print_exc()
        emit(row(f"{section}, {shape}: failed", None, "", None, "", f"{type(exc).__name__}: {str(exc)[:400]}"))
    finally:
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


def section_sft(args, work: Path, plan: dict, emit: Callable[[dict], None]) -> None:
    storage = work / "storage"
    os.environ["DEVOPS_MODEL_STORAGE"] = str(storage)
    os.environ.setdefault("DEVOPS_MODEL_HOME", str(work / "home"))
    registry = _sft_registry(storage, plan["sft_repeat"])
    _StepClock.install()
    peak = args.peak_tflops * 1e12
    for shape, steps in plan["sft"]:
        per_shape(emit, "SFT", shape, lambda: _sft_one(args, work, plan, registry, storage, peak, shape, steps, emit))


def _sft_one(args, work: Path, plan: dict, registry: str, storage: Path, peak: float, shape: str, steps: int,
             emit: Callable[[dict], None]) -> None:
    import importlib.util

    import torch

    from devops_model.api.resource import parse_resource
    from devops_workloads import runner

    model_dir, n_params = ensure_model(work, shape)
    name = f"sft-{shape}"
    res = {
        "apiVersion": "devops-model.io/v1alpha1", "kind": "SFTRun", "metadata": {"name": name},
        "spec": {
            "model": {"uri": f"pvc://models/{shape}"},
            "data": {"registry": registry, "datasets": [{"name": "alpaca_x"}, {"name": "sharegpt_x"}]},
            "training": {"learningRate": "1e-5", "lrScheduler": "constant", "warmupRatio": "0", "maxSteps": steps,
                         "perDeviceBatchSize": plan["sft_batch"], "maxLength": plan["sft_len"], "packing": True,
                         "precision": "bf16", "gradientCheckpointing": False, "saveSteps": 100000, "loggingSteps": 5,
                         "template": "chatml"},
            "finetuning": {"type": "full"}, "launcher": "Job", "output": {"uri": f"pvc://runs/{name}"},
        },
    }
    if device() == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _StepClock.marks.clear()
    t0 = time.time()
    runner.run_resource(parse_resource(res, "bench"))
    wall = time.time() - t0
    marks = _StepClock.marks
    if len(marks) < 3:
        raise RuntimeError(f"{shape}: only {len(marks)} optimizer steps were clocked; maxSteps must be at least 3")
    warm = max(1, min(WARM_STEPS, len(marks) - 2))
    (ta, na, _), (tb, nb, sb) = marks[warm - 1], marks[-1]
    tps = (nb - na) / (tb - ta)
    state = json.loads((storage / "runs" / name / "trainer_state.json").read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    mem = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device() == "cuda" else ""
    limit = peak / (6 * n_params)
    mfu = tps / limit
    # train/entry.py's choice: FlashAttention-2 on GPU when installed, else sdpa
    attn = "flash_attention_2" if (device() == "cuda" and importlib.util.find_spec("flash_attn")) else "sdpa"
    r = row(
        f"SFT tokens/s, {shape} shape ({n_params / 1e9:.2f}B), bf16, packed, selective LM head",
        tps, f"physical limit: {args.peak_tflops:g} TFLOP/s bf16 peak as 6·N tokens/s (ratio = MFU)", limit, "tokens/s",
        f"MFU {mfu:.1%} (6·N·tokens/s / peak, N = all {n_params:,} parameters); ours = devops-model run "
        f"(runner.run_resource): full FT, fp32 master weights + bf16 autocast, AdamW, packed rows of "
        f"{plan['sft_batch']}×{plan['sft_len']} tokens flattened into one, attention {attn}; steps {warm + 1}–{sb} "
        f"timed ({nb - na:,} tokens in {tb - ta:.1f}s) after {warm} warm-up steps; loss {losses[0]:.3f} → "
        f"{losses[-1]:.3f}; whole run incl. load and save {wall:.0f}s{mem}", digits=1)
    r["mfu"] = _round(mfu, 4)
    emit(r)
    shutil.rmtree(storage / "runs" / name, ignore_errors=True)  # the saved weights: GBs on the 1.5B shape


# ------------------------------------------------------------------------------------------ 2. exams

def section_exam(args, work: Path, plan: dict, emit: Callable[[dict], None]) -> None:
    from devops_workloads.evaluate.evaluator import EvalConfig, evaluate

    shape = plan["exam"]
    model_dir, n_params = ensure_model(work, shape)
    root, preset, desc = exams_root(plan.get("sample_exam", False))
    bf16 = "bf16"

    def run(engine: str, precision: str) -> tuple[float, dict, list[dict]]:
        out = work / f"exam-{engine}-{precision}"
        cfg = EvalConfig(model=str(model_dir), exams_root=str(root), preset=preset, shots=[0, 5], styles=["base"],
                         scoring="seed", batch_size=16, precision=precision, engine=engine)
        t0 = time.perf_counter()
        res = evaluate(cfg, out, progress_bar=False)
        wall = time.perf_counter() - t0
        preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
        say(f"exam {engine} {precision}: {len(preds)} question-settings, scoring {res['timing']['scoringSeconds']:.2f}s, "
            f"whole call {wall:.1f}s")
        return wall, res, preds

    if not args.smoke:  # warm-up on the small bundled exam: CUDA context, cuBLAS, kernels; not recorded
        cfg = EvalConfig(model=str(model_dir), exams_root=str(exams_root(True)[0]), shots=[0, 5], precision=bf16)
        evaluate(cfg, work / "exam-warm-up", progress_bar=False)
    w_fast, fast, p_fast = run("fast", bf16)
    w_plain, plain, p_plain = run("plain", bf16)
    w_32, fp32, p_32 = run("fast", "fp32")
    n = len(p_fast)
    q = len({(p["exam"], p["index"]) for p in p_fast})
    s_fast, s_plain, s_32 = (r["timing"]["scoringSeconds"] for r in (fast, plain, fp32))
    same_plain = sum(a["prediction"] == b["prediction"] for a, b in zip(p_fast, p_plain))
    same_32 = sum(a["prediction"] == b["prediction"] for a, b in zip(p_fast, p_32))
    gap = [sorted(p["logits"].values())[-1] - sorted(p["logits"].values())[-2] for p in p_32]
    close = sum(g < 0.05 for g in gap)
    acc = {k: r["overall"] for k, r in (("fast", fast), ("plain", plain), ("fp32", fp32))}
    t = fast["timing"]
    computed = t.get("prefix_tokens", 0) + t.get("suffix_tokens", 0)
    bound = 2 * n_params * computed / (args.peak_tflops * 1e12)
    setting = f"{desc}, {q} questions × shots 0 and 5 = {n} prompts, {shape} shape ({n_params / 1e9:.2f}B, random weights)"
    for r in [
        row(f"exam throughput, fast engine vs the plain loop, bf16 ({n} question-settings)", n / s_fast,
            "plain loop (seed: whole prompt, one question per forward pass), bf16", n / s_plain, "questions/s",
            f"{setting}; scoring {s_fast:.2f}s vs {s_plain:.2f}s; predictions equal on {same_plain}/{n}; "
            f"prompt tokens {t.get('prompt_tokens', 0):,}, computed by the fast engine {computed:,} "
            f"({t.get('prefixes', 0)} prefixes); compute bound for those at {args.peak_tflops:g} TFLOP/s: {bound:.3f}s"),
        row("exam evaluation, whole call (load, prompts, scoring), fast vs plain, bf16", w_fast, "plain loop, whole call",
            w_plain, "s", f"{setting}; evaluate() as devops-model eval runs it, model load and tokenizing included",
            ratio=w_plain / w_fast),
        row("exam predictions, bf16 vs fp32 (fast engine): agreement", 100.0 * same_32 / n,
            "fp32 predictions (all agree with themselves)", 100.0, "% equal",
            f"{setting}; fp32 scoring {s_32:.2f}s ({n / s_32:.1f} q/s); {close} of {n} fp32 predictions have a top-2 "
            f"option-logit gap < 0.05 (random weights: near ties that bf16 rounding flips); accuracy bf16 "
            f"{[o['accuracy'] for o in acc['fast']]}, fp32 {[o['accuracy'] for o in acc['fp32']]} (shots 0, 5)"),
    ]:
        emit(r)


# ------------------------------------------------------------------------------------------ 3. serving

def section_serve(args, work: Path, plan: dict, deadline: float, emit: Callable[[dict], None]) -> None:
    import statistics

    import torch

    import serve as serve_bench  # bench/serve.py: its client driver
    from devops_workloads.processes import free_port, stop_group

    shape = plan["serve"]
    model_dir, n_params = ensure_model(work, shape)
    serve_bench.NEW_TOKENS = new = plan["serve_tokens"]  # drive() reads it for max_tokens and its count check
    dev = device()
    dtype = "bfloat16" if dev == "cuda" else "float32"
    levels = plan["serve_levels"]
    port = free_port()
    log = work / "serve.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "workloads"), str(REPO / "cli"),
                                                         os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "devops_cli", "serve", "--model", str(model_dir), "--port", str(port),
           "--max-concurrency", str(max(levels)), "--max-batch-size", str(max(levels)), "--device", dev,
           "--dtype", dtype, "--log-level", "warning", "--no-ui"]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True, env=env)
    url = f"http://127.0.0.1:{port}"
    res: dict[int, dict] = {}
    try:
        if not serve_bench.wait_healthy(url, proc, deadline - 20):
            raise RuntimeError(f"the server did not start:\n{log.read_text()[-3000:]}")
        serve_bench.drive(url, 4, 8)  # warm-up
        for c in levels:
            res[c] = serve_bench.drive(url, c, plan["serve_rounds"] * c)
            say(f"serve: {c} clients: {res[c]['tokens_per_s']:.1f} tokens/s, TTFT mean {res[c]['ttft_mean']:.3f}s")
    finally:
        stop_group(proc, timeout=30)
    # anchor: what a user without a server does, one generate after another, same device and dtype
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(dev).eval()
    times = []
    with torch.inference_mode():
        for i in range(4):
            text = tok.apply_chat_template([{"role": "user", "content": serve_bench.PROMPTS[i % 4]}], tokenize=False,
                                           add_generation_prompt=True)
            ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids.to(dev)
            sync()
            t0 = time.perf_counter()
            out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)
            sync()
            if i:  # the first one warms up
                times.append(time.perf_counter() - t0)
            assert out.shape[1] - ids.shape[1] == new
    seq = new / statistics.mean(times)
    for c in levels:
        r = res[c]
        emit(row(f"builtin serving throughput, {c} concurrent clients ({new} new tokens each), {shape} shape", r["tokens_per_s"],
                        f"sequential transformers generate ({dtype}, in-process, no HTTP)", seq, "tokens/s",
                        f"devops-model serve --device {dev} --dtype {dtype} --max-batch-size {max(levels)}, loopback HTTP+SSE, "
                        f"bench/serve.py drive(): {plan['serve_rounds'] * c} requests in {r['wall_s']:.1f}s, {r['failed']} failed; TTFT mean "
                        f"{r['ttft_mean']:.3f}s, p50 {r['ttft_p50']:.3f}s", digits=1))


# ------------------------------------------------------------------------------------------ 4. Qwen-1

class Qwen1Reference:
    """Qwen-1's forward pass in plain torch, from ``modeling_qwen.py`` (QWenLMHeadModel, no cache),
    reading the checkpoint's own tensor names: independent of the converter's renaming.

    Per block: ``x += c_proj(attn(rms(x, ln_1)))`` with ``c_attn`` (fused q|k|v, with bias) split in
    three, rotary embeddings on whole heads (``inv_freq = 1 / base^(2i/d)``, cos/sin of
    ``cat(freqs, freqs)``, ``rotate_half`` = ``cat(-x2, x1)``, applied in fp32), causal softmax
    attention scaled by 1/√d; then ``x += mlp.c_proj(w1(h) * silu(w2(h)))`` with ``h = rms(x, ln_2)``;
    ``rms(x) = x.float() * rsqrt(mean(x²) + eps)`` cast back, times the weight; ``lm_head(rms(x, ln_f))``.
    Dynamic NTK and logn attention only act past ``seq_length`` tokens, which is refused here."""

    def __init__(self, folder: Path, dtype: Any, dev: str):
        from safetensors.torch import load_file

        self.cfg = json.loads((folder / "config.json").read_text())
        self.w = {k: v.to(dev, dtype) for k, v in load_file(str(folder / "model.safetensors")).items()}
        self.dtype, self.dev = dtype, dev

    def _rms(self, x, weight):
        import torch

        eps = float(self.cfg.get("layer_norm_epsilon", 1e-6))
        return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * weight

    def logits(self, ids: list[int]):
        import torch
        import torch.nn.functional as F

        c, w = self.cfg, self.w
        n = len(ids)
        if n > int(c["seq_length"]):
            raise ValueError("past seq_length Qwen-1 applies dynamic NTK / logn attention, not reproduced here")
        heads, hd = int(c["num_attention_heads"]), int(c["kv_channels"])
        hidden = int(c["hidden_size"])
        base = float(c.get("rotary_emb_base", 10000))
        inv = 1.0 / (base ** (torch.arange(0, hd, 2, device=self.dev).float() / hd))
        freqs = torch.outer(torch.arange(n, device=self.dev).float(), inv)
        emb = torch.cat((freqs, freqs), dim=-1)[None, :, None, :]  # 1, n, 1, hd
        cos, sin = emb.cos(), emb.sin()

        def rope(t):  # t: 1, n, heads, hd
            tf = t.float()
            x1, x2 = tf[..., : hd // 2], tf[..., hd // 2:]
            return (tf * cos + torch.cat((-x2, x1), dim=-1) * sin).type_as(t)

        with torch.no_grad():
            x = w["transformer.wte.weight"][torch.tensor([ids], device=self.dev)]
            for i in range(int(c["num_hidden_layers"])):
                p = f"transformer.h.{i}."
                h = self._rms(x, w[p + "ln_1.weight"])
                qkv = F.linear(h, w[p + "attn.c_attn.weight"], w[p + "attn.c_attn.bias"])
                q, k, v = (t.view(1, n, heads, hd) for t in qkv.split(hidden, dim=2))
                q, k = rope(q), rope(k)
                a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
                x = x + F.linear(a.transpose(1, 2).reshape(1, n, hidden), w[p + "attn.c_proj.weight"])
                h = self._rms(x, w[p + "ln_2.weight"])
                x = x + F.linear(F.linear(h, w[p + "mlp.w1.weight"]) * F.silu(F.linear(h, w[p + "mlp.w2.weight"])),
                                 w[p + "mlp.c_proj.weight"])
            x = self._rms(x, w["transformer.ln_f.weight"])
            return F.linear(x, w["lm_head.weight"])[0].float()


def build_qwen1(out: Path, shape: str, seed_dir: Path, dev: str) -> Path:
    """A random Qwen-1 folder as downloaded: released config keys, QWenLMHeadModel tensor names
    (bf16, like the releases), qwen.tiktoken, the released code and generation config when there."""
    import torch
    from safetensors.torch import save_file

    s = QWEN1_SHAPES[shape]
    out.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((seed_dir / "config.json").read_text()) if (seed_dir / "config.json").is_file() else {
        "architectures": ["QWenLMHeadModel"], "model_type": "qwen", "no_bias": True, "rotary_pct": 1.0,
        "layer_norm_epsilon": 1e-6, "tie_word_embeddings": False, "scale_attn_weights": True}
    cfg.update(s, rope_theta=s["rotary_emb_base"], max_position_embeddings=s["seq_length"], use_dynamic_ntk=True,
               use_logn_attn=True, bf16=False, fp16=False, fp32=False, initializer_range=0.02)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    for name in ("configuration_qwen.py", "modeling_qwen.py", "qwen_generation_utils.py", "cpp_kernels.py",
                 "tokenization_qwen.py", "tokenizer_config.json", "generation_config.json", "qwen.tiktoken"):
        if (seed_dir / name).is_file():
            shutil.copyfile(seed_dir / name, out / name)
    h, L, ff = s["hidden_size"], s["num_hidden_layers"], s["intermediate_size"] // 2
    g = torch.Generator(device=dev).manual_seed(0)

    def rnd(*shape_, std=0.02, mean=0.0):
        return (mean + std * torch.randn(*shape_, generator=g, device=dev)).to(torch.bfloat16).cpu()

    t: dict[str, Any] = {"transformer.wte.weight": rnd(s["vocab_size"], h), "transformer.ln_f.weight": rnd(h, std=0.1, mean=1.0),
                         "lm_head.weight": rnd(s["vocab_size"], h)}
    for i in range(L):
        p = f"transformer.h.{i}."
        t.update({p + "ln_1.weight": rnd(h, std=0.1, mean=1.0), p + "ln_2.weight": rnd(h, std=0.1, mean=1.0),
                  p + "attn.c_attn.weight": rnd(3 * h, h), p + "attn.c_attn.bias": rnd(3 * h),
                  p + "attn.c_proj.weight": rnd(h, h), p + "mlp.w1.weight": rnd(ff, h), p + "mlp.w2.weight": rnd(ff, h),
                  p + "mlp.c_proj.weight": rnd(h, ff)})
    save_file(t, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def _tiktoken_ids(tik: Path, texts: list[str]) -> list[list[int]] | None:
    """Qwen-1's own tokenizer (tokenization_qwen.QWenTokenizer: tiktoken, PAT_STR, NFC, specials)."""
    try:
        import tiktoken
    except ImportError:
        return None
    import unicodedata

    from devops_workloads.models.qwen1 import PAT_STR, SPECIAL_IDS, load_tiktoken_ranks

    enc = tiktoken.Encoding("Qwen", pat_str=PAT_STR, mergeable_ranks=load_tiktoken_ranks(tik), special_tokens=SPECIAL_IDS)
    return [enc.encode(unicodedata.normalize("NFC", t), allowed_special="all") for t in texts]


def _qwen1_prompts(sample: bool) -> list[str]:
    """Five-shot exam prompts as the seed builds them (base style), and a chatml turn."""
    from devops_workloads.evaluate.exams import load_exams
    from devops_workloads.evaluate.prompts import render_query

    root, preset, _ = exams_root(sample)
    exams = load_exams(root, preset=preset, max_shots=5)
    texts = [render_query(e.questions[0], e.dev[:5]) for e in exams[:3]]
    texts.append("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                 "Kubernetes 中 Deployment 和 StatefulSet 有什么区别？ 🚀\tcode: `kubectl get pods -A`<|im_end|>\n<|im_start|>assistant\n")
    return texts


def _try_original(src: Path, ids: list[list[int]], dev: str) -> tuple[Any, str]:
    """(fp32 logits per prompt, '') from Qwen-1's released code under this transformers, or (None, why not)."""
    if not (src / "modeling_qwen.py").is_file():
        return None, "the released code was not carried"
    try:
        import torch
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(src), trust_remote_code=True, fp32=True,
                                                     dtype=torch.float32).to(dev).eval()
        with torch.no_grad():
            return [model(input_ids=torch.tensor([x], device=dev)).logits[0].float() for x in ids], ""
    except Exception as exc:  # noqa: BLE001  (any failure of the remote code is the answer)
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"


def section_qwen1(args, work: Path, plan: dict, emit: Callable[[dict], None]) -> None:
    seed = seed_qwen1_dir()
    if seed is None:
        raise RuntimeError("qwen.tiktoken not found: run `bash bench/gpu.sh --prepare` (bench/gpu.carry/qwen1) "
                           "or set DEVOPS_MODEL_SEED_QWEN1")
    dev = device()
    texts = _qwen1_prompts(plan.get("sample_exam", False))
    for shape in plan["qwen1"]:
        per_shape(emit, "Qwen-1 conversion", shape, lambda: _qwen1_one(work, shape, seed, dev, texts, emit))
        shutil.rmtree(work / "qwen1", ignore_errors=True)


def _qwen1_one(work: Path, shape: str, seed: Path, dev: str, texts: list[str], emit: Callable[[dict], None]) -> None:
    import torch
    import transformers

    from devops_workloads.models.loading import load_causal_lm
    from devops_workloads.models.qwen1 import convert_qwen1

    src = build_qwen1(work / "qwen1" / shape, shape, seed, dev)
    dst = work / "qwen1" / f"{shape}.qwen2"
    t0 = time.perf_counter()
    convert_qwen1(src, dst, progress=lambda m: None)
    conv_s = time.perf_counter() - t0
    n_params = sum(int(math.prod(v)) for v in _shapes(src / "model.safetensors"))
    model, tok = load_causal_lm(dst, dtype="fp32")
    ids = [tok.encode(t, add_special_tokens=False) for t in texts]
    ref_ids = _tiktoken_ids(src / "qwen.tiktoken", texts)
    tok_note = ("token ids equal tiktoken's (Qwen-1's own encoder) on all prompts" if ref_ids == ids else
                "token ids DIFFER from tiktoken's" if ref_ids is not None else "tiktoken not installed: ids not compared")
    orig, why = _try_original(src, ids, dev)
    results = {}
    for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if dtype_name == "bf16":
            del model
            model, _ = load_causal_lm(dst, dtype="bf16")
        ref = Qwen1Reference(src, dtype, dev)
        diff, agree, scale, total = 0.0, 0, 0.0, 0
        with torch.no_grad():
            for k, x in enumerate(ids):
                a = model(input_ids=torch.tensor([x], device=dev)).logits[0].float()
                b = orig[k] if (orig is not None and dtype_name == "fp32") else ref.logits(x)
                diff = max(diff, float((a - b).abs().max()))
                scale = max(scale, float(b.abs().max()))
                agree += int((a.argmax(-1) == b.argmax(-1)).sum())
                total += len(x)
        del ref
        results[dtype_name] = (diff, agree, total, scale)
    del model
    if dev == "cuda":
        torch.cuda.empty_cache()
    reference = ("Qwen-1's released code (remote code) under transformers " + transformers.__version__
                 if orig is not None else
                 f"Qwen1Reference, the plain-torch Qwen-1 forward in bench/gpu.py (the released code does not run "
                 f"under transformers {transformers.__version__}: {why})")
    (d32, a32, n32, s32), (d16, a16, n16, s16) = results["fp32"], results["bf16"]
    common = (f"random Qwen-1 {shape} checkpoint ({n_params / 1e9:.3f}B, bf16 on disk as released), converted by "
              f"models/qwen1.py in {conv_s:.1f}s, loaded by models/loading.py on {dev}; {len(texts)} prompts "
              f"({n32} positions: 5-shot exam prompts and a chatml turn); reference: {reference}; {tok_note}")
    emit(row(f"Qwen-1 conversion, {shape}: largest logit difference, converted vs reference, fp32", d32,
                    "largest |logit| of the reference", s32, "logit", f"{common}; top-1 equal at {a32}/{n32} positions",
                    ratio=NO_RATIO, digits=6))
    emit(row(f"Qwen-1 conversion, {shape}: top-1 agreement converted vs reference, bf16", 100.0 * a16 / n16,
                    "all positions", 100.0, "% equal",
                    f"{common}; both sides in bf16 (the reference computes like modeling_qwen: fp32 norms and rotary); "
                    f"largest logit difference {d16:.4f}, logits up to {s16:.2f}"))


def _shapes(path: Path) -> list[list[int]]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return [list(f.get_slice(k).get_shape()) for k in f.keys()]


# ------------------------------------------------------------------------------------------ driver

def child(args) -> int:
    """One section in this process; its rows go to ``--rows-out``."""
    mode = "smoke" if args.smoke else "gpu"
    plan = PLAN[mode]
    work = Path(args.work)
    deadline = time.time() + args.box
    rows: list[dict] = []

    def emit(r: dict) -> None:  # written at once: a section stopped later keeps what it measured
        rows.append(r)
        Path(args.rows_out).write_text(json.dumps(rows, ensure_ascii=False, indent=2))

    fn: dict[str, Callable[[], None]] = {
        "sft": lambda: section_sft(args, work, plan, emit),
        "exam": lambda: section_exam(args, work, plan, emit),
        "serve": lambda: section_serve(args, work, plan, deadline, emit),
        "qwen1": lambda: section_qwen1(args, work, plan, emit),
    }
    fn[args.child]()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, CPU is fine: proves every code path in < 3 minutes")
    ap.add_argument("--peak-tflops", type=float, default=790.0,
                    help="bf16 peak for MFU and the compute bounds (default 790: measured 8192³ bf16 matmul on one H200)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--out", type=Path, default=None,
                    help="default bench/results/gpu.json; with --smoke a file in the temporary folder (never the results)")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temporary one, removed at the end)")
    ap.add_argument("--box-scale", type=float, default=1.0, help="multiply every section's time box")
    ap.add_argument("--child", choices=SECTIONS, help=argparse.SUPPRESS)
    ap.add_argument("--rows-out", help=argparse.SUPPRESS)
    ap.add_argument("--box", type=float, default=600, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    import torch

    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        ap.error(f"--sections: unknown {sorted(unknown)}; choose from {','.join(SECTIONS)}")
    mode = "smoke" if args.smoke else "gpu"
    if mode == "gpu" and not torch.cuda.is_available():
        print("error: no CUDA device here; GPU figures need one (use --smoke for the CPU check of the code paths)",
              file=sys.stderr)
        return 2
    if args.out is None:
        args.out = Path(tempfile.gettempdir()) / "gpu-bench-smoke.json" if args.smoke else HERE / "results" / "gpu.json"
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "area": "gpu", "machine": machine(), "date": time.strftime("%Y-%m-%d"), "smoke": args.smoke,
        "summary": ("Random-weight Qwen2.5-0.5B/1.5B and Qwen-1 shapes built from their configs; each section in its own "
                    f"time-boxed process (bench/gpu.py). Peak used for MFU: {args.peak_tflops:g} TFLOP/s bf16."
                    + (" SMOKE RUN: tiny shapes on CPU, the numbers only prove the code paths." if args.smoke else "")),
        "versions": versions(), "sections": {}, "rows": []}
    t_all = time.time()

    def write() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    for sec in sections:
        box = BOXES[mode][sec] * args.box_scale
        rows_out = work / f"rows-{sec}.json"
        log = work / f"{sec}.log"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", sec, "--work", str(work), "--rows-out", str(rows_out),
               "--box", str(box), "--peak-tflops", str(args.peak_tflops)] + (["--smoke"] if args.smoke else [])
        rows_out.unlink(missing_ok=True)
        say(f"section {sec}: time box {box:.0f}s")
        t0 = time.time()
        status, error = "ok", None
        with log.open("w") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                rc = proc.wait(timeout=box)
            except subprocess.TimeoutExpired:
                from devops_workloads.processes import stop_group

                stop_group(proc, timeout=10)
                rc, status = None, "timeout"
        tail = log.read_text(errors="replace")[-2500:]
        if status == "ok" and (rc != 0 or not rows_out.is_file()):
            status = "failed"
        partial = json.loads(rows_out.read_text()) if rows_out.is_file() else []
        result["rows"].extend(partial)  # what the section measured, also when it failed or ran out of time later
        if status != "ok":
            error = f"exit {rc}" if status == "failed" else f"stopped after its {box:.0f}s time box"
            result["rows"].append(row(f"{sec}: section {status}", None, "", None, "",
                                      f"{error} after {len(partial)} rows; log tail: {tail[-600:]}"))
            print(tail, flush=True)
        elif any(r["ours"] is None for r in partial):
            status = "partly failed"
            error = "; ".join(r["notes"] for r in partial if r["ours"] is None)[:600]
        result["sections"][sec] = {"status": status, "seconds": round(time.time() - t0, 1), "error": error}
        say(f"section {sec}: {status} in {time.time() - t0:.0f}s")
        write()
    result["seconds"] = round(time.time() - t_all, 1)
    write()
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    for r in result["rows"]:
        print(f"{r['figure'][:88]:<88} {r['ours']!s:>12} {r['unit']:<12} anchor {r['anchor']!s:>10}  ratio {r['ratio']}")
    print(f"wrote {args.out} ({result['seconds']:.0f}s)")
    return 0 if all(s["status"] == "ok" for s in result["sections"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
