"""SFT throughput: our SFTRun workload vs TRL's SFTTrainer (and LLaMA-Factory), same model, data and effective batch.

    .venv/bin/python bench/train.py                 # writes bench/results/train.json (~5-10 min on 2 cores)
    .venv/bin/python bench/train.py --steps 10      # quick look

Same machine, same run, one after the other, every library imported first:

* model: the tiny Qwen2 model with the small byte-level BPE tokenizer (``devops-model dev
  tiny-model --tokenizer bpe``), fp32 on CPU, full fine-tuning, AdamW, constant learning rate;
* data: the bundled DevOps Q&A (alpaca + sharegpt, multi-turn), rendered with the seed's chatml
  template by our code; TRL gets the very same token ids and completion masks as a pre-tokenized
  dataset (``input_ids`` + ``completion_mask``, ``completion_only_loss``), so both train the same
  tokens;
* effective batch: 2 sequences of at most 256 tokens per step (packed: 2 bins of ≤ 256 tokens),
  the same number of optimizer steps;
* ours: ``runner.run_resource`` (the real ``devops-model run`` path) with packing on and off;
  both sides log every 2 steps to TensorBoard;
* a 3-step warm-up of every configuration first, then ``--rounds`` interleaved rounds; each
  configuration keeps its best round;
* TRL 1.16.0: ``packing=True`` (BFD, padding-free), ``padding_free=True`` without packing, and plain
  padding.

What differs on our side: the LM head is computed only at positions whose next token is trained
(``train/selective_loss.py``; same loss and gradients), packed micro-batches are flattened into one
row with no padding, and pre-tokenized data goes straight to a plain torch Dataset. A last row
repeats the packed comparison with the real Qwen tokenizer (151k vocabulary), where the LM head is
most of a tiny model's compute.

LLaMA-Factory 0.9.5 (optional): it pins transformers ≤ 5.6, trl ≤ 0.24, peft ≤ 0.18, accelerate ≤ 1.11
and datasets ≤ 4.0, so it runs in its own venv (``bench/setup_llamafactory.sh``; without that venv
the row is skipped). Each round starts one process there that runs LLaMA-Factory's ``run_exp``
(what ``llamafactory-cli train`` calls on a CPU machine) twice: a 3-step warm-up, then the timed run.
Stage sft, full FT, ``packing`` + ``neat_packing`` (greedy knapsack into rows of ≤ ``cutoff_len``
256, block-diagonal 4-D attention mask, the equivalent of our packing), 2 rows per step, the same
learning rate, scheduler, steps, seed, fp32, sdpa, gradient checkpointing off. Its data is the same
normalized records, written as a sharegpt dataset + ``dataset_info.json`` with the same system
prompt, rendered by its ``chatml`` template: its token ids differ slightly from ours (its
transformers 5.6 loads the BPE tokenizer without Qwen2's digit splitting, and its chatml also trains
the newline after each ``<|im_end|>``; +0.2 % tokens in all), so the loss is not the identical
computation as in the TRL rows. Its Trainer's ``num_input_tokens_seen`` sums the 4-D float mask
under neat_packing (meaningless), so the worker counts the non-padding positions of every batch its
collator builds instead; ``train_runtime`` is the same Trainer timer as TRL's.

tokens/s = real (non-padding) tokens the training loop consumed / its wall-clock time
(``train_runtime``; model loading and saving are outside). The final loss is the mean of the last
three logged losses (every 2 steps), to show both sides train to the same place. The machine is shared with other
jobs: absolute numbers wander, ratios are what the bench is for.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchenv import HERE, REPO  # noqa: E402  (offline hubs, the repository on sys.path)

MAX_LEN = 256
BATCH = 2
LR = 3e-3
LOG_EVERY = 2

#: the separate venv of the LLaMA-Factory anchor (bench/setup_llamafactory.sh creates it)
LF_VENV = Path(os.environ.get("DEVOPS_MODEL_LF_VENV", Path.home() / ".cache" / "devops-model" / "bench-llamafactory-venv"))
LF_WARMUP = 3


def machine() -> str:
    return f"{platform.machine()} {os.cpu_count()} cores, {platform.system()} (CPU only)"


def _tail_loss(history: list[dict]) -> float:
    losses = [h["loss"] for h in history if "loss" in h]
    return round(sum(losses[-3:]) / len(losses[-3:]), 4)


def run_ours(root: Path, packing: bool, steps: int, tag: str, model: str = "tiny-bpe") -> dict:
    from devops_model.api.resource import parse_resource
    from devops_workloads import runner

    name = f"bench-ours-{'packed' if packing else 'padded'}-{tag}"
    res = {
        "apiVersion": "devops-model.io/v1alpha1", "kind": "SFTRun", "metadata": {"name": name},
        "spec": {
            "model": {"uri": f"pvc://models/{model}"},
            "data": {"registry": "pvc://samples", "datasets": [{"name": "devops_qa_alpaca"}, {"name": "devops_qa_sharegpt"}]},
            "training": {"learningRate": str(LR), "lrScheduler": "constant", "warmupRatio": "0", "maxSteps": steps,
                         "perDeviceBatchSize": BATCH, "maxLength": MAX_LEN, "packing": packing, "precision": "fp32",
                         "gradientCheckpointing": False, "saveSteps": 100000, "loggingSteps": LOG_EVERY, "template": "chatml"},
            "finetuning": {"type": "full"}, "launcher": "Job", "output": {"uri": f"pvc://runs/{name}"},
        },
    }
    runner.run_resource(parse_resource(res, "bench"))
    state = json.loads((root / "runs" / name / "trainer_state.json").read_text())
    end = state["log_history"][-1]
    return {"tokens": end["num_input_tokens_seen"], "seconds": end["train_runtime"], "loss": _tail_loss(state["log_history"])}


def sample_records() -> list[dict]:
    """The sample set as our loader normalizes it: ``{"system", "turns": [(query, response), ...]}``."""
    from devops_model.api.resource import parse_resource
    from devops_workloads.train.data import load_datasets

    spec = parse_resource({
        "apiVersion": "devops-model.io/v1alpha1", "kind": "SFTRun", "metadata": {"name": "x"},
        "spec": {"model": {"uri": "pvc://m"}, "data": {"registry": "pvc://samples", "datasets": [
            {"name": "devops_qa_alpaca"}, {"name": "devops_qa_sharegpt"}]}, "training": {"maxSteps": 1},
            "output": {"uri": "pvc://o"}}}, "bench").spec
    return load_datasets(spec.data, "sft").records


def trl_dataset(model_dir: Path):
    """Our chatml rendering of the sample set as pre-tokenized rows for TRL."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    from devops_workloads.templates import get_template
    from devops_workloads.train.preprocess import encode_sft_all

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    examples, _ = encode_sft_all(sample_records(), tok, get_template("chatml"), MAX_LEN)
    rows = [{"input_ids": e.input_ids, "completion_mask": [int(l != -100) for l in e.labels]} for e in examples]
    return Dataset.from_list(rows), tok


def run_trl(model_dir: Path, out: Path, mode: str, steps: int, dataset, tok, tag: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="sdpa")
    cfg = SFTConfig(
        output_dir=str(out / f"trl-{mode}-{tag}"), max_steps=steps, per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=1, learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0,
        logging_steps=LOG_EVERY, save_strategy="no", report_to=["tensorboard"],  # same logging as ours
        use_cpu=True, bf16=False, fp16=False,
        # padding_free without packing refuses max_length; our rows are already cut to MAX_LEN
        max_length=None if mode == "padding_free" else MAX_LEN, packing=(mode == "packing"), padding_free=(mode in ("packing", "padding_free")),
        completion_only_loss=True, include_num_input_tokens_seen="non_padding", disable_tqdm=True,
        gradient_checkpointing=False, dataloader_num_workers=0, seed=42,
    )
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=dataset, processing_class=tok)
    result = trainer.train()
    return {"tokens": trainer.state.num_input_tokens_seen, "seconds": result.metrics["train_runtime"],
            "loss": _tail_loss(trainer.state.log_history)}


def lf_dataset(out: Path) -> Path:
    """The same records as a LLaMA-Factory sharegpt dataset; our chatml's system prompt made explicit
    (LLaMA-Factory's chatml template has no default one)."""
    from devops_workloads.templates import get_template

    default_system = get_template("chatml").system
    rows = []
    for r in sample_records():
        conv = []
        for query, response in r["turns"]:
            conv += [{"from": "human", "value": query}, {"from": "gpt", "value": response}]
        rows.append({"conversations": conv, "system": r.get("system") or default_system})
    out.mkdir(parents=True, exist_ok=True)
    (out / "devops_qa.json").write_text(json.dumps(rows, ensure_ascii=False))
    (out / "dataset_info.json").write_text(json.dumps({"devops_qa": {
        "file_name": "devops_qa.json", "formatting": "sharegpt", "columns": {"messages": "conversations", "system": "system"}}}))
    return out


def run_llamafactory(model_dir: Path, data_dir: Path, out: Path, steps: int, tag: str) -> dict:
    """One LLaMA-Factory run in its own venv (see the module docstring); warm-up inside the process."""
    run_dir = out / f"lf-{tag}"
    args = {  # what one would put in the yaml for ``llamafactory-cli train``
        "model_name_or_path": str(model_dir), "stage": "sft", "do_train": True, "finetuning_type": "full",
        "dataset": "devops_qa", "dataset_dir": str(data_dir), "template": "chatml", "cutoff_len": MAX_LEN,
        "packing": True, "neat_packing": True, "overwrite_cache": True, "cache_dir": str(out / "lf-cache"),
        "output_dir": str(run_dir), "overwrite_output_dir": True, "logging_steps": LOG_EVERY, "save_strategy": "no",
        "report_to": "tensorboard",  # same logging as ours and TRL
        "per_device_train_batch_size": BATCH, "gradient_accumulation_steps": 1, "learning_rate": LR,
        "lr_scheduler_type": "constant", "warmup_ratio": 0.0, "max_steps": steps, "bf16": False, "fp16": False,
        "use_cpu": True, "seed": 42, "disable_tqdm": True, "flash_attn": "sdpa", "disable_gradient_checkpointing": True,
        "dataloader_num_workers": 0,
    }
    job = out / f"lf-{tag}.json"
    job.write_text(json.dumps({"args": args, "warmup": LF_WARMUP}))
    # -P: bench/ (eval.py, ...) must not shadow the standard library there
    proc = subprocess.run([str(LF_VENV / "bin" / "python"), "-P", str(Path(__file__).resolve()), "--llamafactory-worker", str(job)],
                          capture_output=True, text=True)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("LFRESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"LLaMA-Factory run failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return json.loads(lines[-1][len("LFRESULT "):])


def _lf_worker(job_path: str) -> None:
    """Runs inside the LLaMA-Factory venv: warm-up run, then the timed run; prints ``LFRESULT {json}``."""
    from llamafactory.data import collator
    from llamafactory.train.tuner import run_exp

    job = json.loads(Path(job_path).read_text())
    batches: list[int] = []  # real tokens of each batch, in the order the collator builds them
    cls = collator.SFTDataCollatorWith4DAttentionMask
    orig = cls.__call__

    def counting(self, features):  # packed rows: attention_mask is 1, 2, ... per sample, 0 on padding
        batches.append(sum(sum(1 for m in f["attention_mask"] if m) for f in features))
        return orig(self, features)

    cls.__call__ = counting
    args = job["args"]
    run_exp(args={**args, "max_steps": job["warmup"], "output_dir": args["output_dir"] + "-warm"})
    batches.clear()
    run_exp(args=args)
    # accelerate's loader collates one batch ahead: only the first max_steps batches were trained on
    tokens = sum(batches[: args["max_steps"] * args["gradient_accumulation_steps"]])
    history = json.loads((Path(args["output_dir"]) / "trainer_state.json").read_text())["log_history"]
    import llamafactory

    print("LFRESULT " + json.dumps({"version": llamafactory.__version__, "tokens": tokens, "batches_built": len(batches), "seconds": history[-1]["train_runtime"],
                                    "loss": _tail_loss(history)}), flush=True)


def _row(figure: str, ours: float, anchor_name: str, anchor: float, notes: str) -> dict:
    """One results row: tokens/s of ours and the anchor, and their ratio."""
    return {"figure": figure, "ours": round(ours, 1), "anchor_name": anchor_name, "anchor": round(anchor, 1),
            "ratio": round(ours / anchor, 3), "unit": "tokens/s", "notes": notes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=40, help="optimizer steps per timed run (longer runs are steadier)")
    ap.add_argument("--qwen-steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "train.json")
    args = ap.parse_args()

    import trl  # noqa: F401  (imported before any timing)

    from devops_workloads.sample_data import install
    from devops_workloads.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "storage"
        os.environ["DEVOPS_MODEL_STORAGE"] = str(root)
        os.environ["DEVOPS_MODEL_HOME"] = str(Path(tmp) / "home")
        install(root)
        model_dir = build_tiny_model(root / "models" / "tiny-bpe", "bpe", seed=0)
        dataset, tok = trl_dataset(model_dir)
        lf_data = lf_dataset(Path(tmp) / "lf-data")

        configs = [
            ("ours packed", lambda n, i: run_ours(root, True, n, i)),
            ("ours padded", lambda n, i: run_ours(root, False, n, i)),
            ("TRL packing", lambda n, i: run_trl(model_dir, Path(tmp), "packing", n, dataset, tok, i)),
            ("TRL padding_free", lambda n, i: run_trl(model_dir, Path(tmp), "padding_free", n, dataset, tok, i)),
            ("TRL padded", lambda n, i: run_trl(model_dir, Path(tmp), "padded", n, dataset, tok, i)),
        ]
        for _, fn in configs:  # warm-up: thread pools, allocator, kernels; not recorded
            fn(3, "warm")
        have_lf = (LF_VENV / "bin" / "python").exists()
        if have_lf:  # warms up inside each of its processes
            configs.append(("LLaMA-Factory neat_packing", lambda n, i: run_llamafactory(model_dir, lf_data, Path(tmp), n, i)))
        else:
            print(f"LLaMA-Factory anchor skipped: no venv at {LF_VENV} (create it with bench/setup_llamafactory.sh)", flush=True)
        results: dict[str, dict] = {}
        # rounds interleave the configurations so that a burst of load from other jobs on this
        # shared machine hits all of them alike; each keeps its best round
        for rnd in range(args.rounds):
            order = configs if rnd % 2 == 0 else configs[::-1]
            for label, fn in order:
                r = fn(args.steps, str(rnd))
                r["tps"] = r["tokens"] / r["seconds"]
                print(f"round {rnd} {label:18s} {r['tokens']:7d} tokens in {r['seconds']:7.2f}s = {r['tps']:8.1f} tokens/s, loss {r['loss']}", flush=True)
                if label not in results or r["tps"] > results[label]["tps"]:
                    results[label] = r

        # the real Qwen tokenizer (151,936-wide LM head, what Qwen base models have): the head
        # dominates a tiny model's compute, so this row shows the selective head's effect at its largest
        qwen_dir = build_tiny_model(root / "models" / "tiny-qwen", "qwen", seed=0)
        qdata, qtok = trl_dataset(qwen_dir)
        qwen: dict[str, dict] = {}
        qconfigs = [("ours packed", lambda i: run_ours(root, True, args.qwen_steps, f"qwen{i}", "tiny-qwen")),
                    ("TRL packing", lambda i: run_trl(qwen_dir, Path(tmp), "packing", args.qwen_steps, qdata, qtok, f"qwen{i}"))]
        if have_lf:
            qconfigs.append(("LLaMA-Factory", lambda i: run_llamafactory(qwen_dir, lf_data, Path(tmp), args.qwen_steps, f"qwen{i}")))
        for rnd in range(2):  # interleaved, best of two, as above
            for label, fn in (qconfigs if rnd == 0 else qconfigs[::-1]):
                r = fn(rnd)
                r["tps"] = r["tokens"] / r["seconds"]
                print(f"qwen round {rnd} {label:14s} {r['tokens']:7d} tokens in {r['seconds']:7.2f}s = {r['tps']:8.1f} tokens/s, loss {r['loss']}", flush=True)
                if label not in qwen or r["tps"] > qwen[label]["tps"]:
                    qwen[label] = r

    trl_rows = {k: v for k, v in results.items() if k.startswith("TRL")}
    best_trl = max(trl_rows, key=lambda k: trl_rows[k]["tps"])
    ours = results["ours packed"]
    common = (f"tiny Qwen2 (bpe tokenizer), fp32 CPU, full FT, {args.steps} steps × {BATCH} sequences ≤ {MAX_LEN} tokens, "
              "same token ids and masks")

    def vs_trl(figure: str, ours_key: str, trl_key: str, trl_label: str) -> dict:
        a, b = results[ours_key], results[trl_key]
        return _row(figure, a["tps"], trl_label, b["tps"], f"{common}; final loss ours {a['loss']} vs TRL {b['loss']}")

    rows = [
        vs_trl("SFT tokens/s, packing on: ours vs the faster TRL SFTTrainer mode", "ours packed", best_trl,
               f"TRL 1.16.0 SFTTrainer ({best_trl.split(' ', 1)[1]})"),
        vs_trl("SFT tokens/s, packing on: ours vs TRL packing (BFD, padding-free)", "ours packed", "TRL packing",
               "TRL 1.16.0 SFTTrainer packing=True"),
        vs_trl("SFT tokens/s, packing off: ours (padded) vs TRL (padded)", "ours padded", "TRL padded",
               "TRL 1.16.0 SFTTrainer (padding)"),
        vs_trl("SFT tokens/s: ours packed vs TRL padding_free without packing", "ours packed", "TRL padding_free",
               "TRL 1.16.0 SFTTrainer padding_free=True"),
        _row("SFT tokens/s with the real Qwen tokenizer (151k vocabulary), packing on", qwen["ours packed"]["tps"],
             "TRL 1.16.0 SFTTrainer packing=True", qwen["TRL packing"]["tps"],
             f"tiny Qwen2 with the real Qwen tokenizer, {args.qwen_steps} steps, best of two interleaved rounds; final loss ours "
             f"{qwen['ours packed']['loss']} vs TRL {qwen['TRL packing']['loss']}; the LM head dominates a tiny model, "
             "so this exaggerates what the selective head saves on a 7B model"),
    ]
    if "LLaMA-Factory neat_packing" in results:
        lf = results["LLaMA-Factory neat_packing"]
        rows.insert(4, {
            "figure": "SFT tokens/s, packing on: ours vs LLaMA-Factory (packing + neat_packing)", "ours": round(ours["tps"], 1),
            "anchor_name": f"LLaMA-Factory {lf['version']} (run_exp, what llamafactory-cli train runs: stage sft, full FT, packing + neat_packing)",
            "anchor": round(lf["tps"], 1), "ratio": round(ours["tps"] / lf["tps"], 3), "unit": "tokens/s",
            "notes": f"tiny Qwen2 (bpe tokenizer), fp32 CPU, full FT, {args.steps} steps × {BATCH} packed rows ≤ {MAX_LEN} tokens, "
                     "same records rendered by its own chatml template in its own venv (transformers 5.6; +0.2 % tokens), "
                     f"3-step warm-up in the same process; final loss ours {ours['loss']} vs LLaMA-Factory {lf['loss']}"})
    if "LLaMA-Factory" in qwen:
        lq = qwen["LLaMA-Factory"]
        rows.append({
            "figure": "SFT tokens/s with the real Qwen tokenizer (151k vocabulary): ours vs LLaMA-Factory", "ours": round(qwen["ours packed"]["tps"], 1),
            "anchor_name": f"LLaMA-Factory {lq['version']} (packing + neat_packing)", "anchor": round(lq["tps"], 1),
            "ratio": round(qwen["ours packed"]["tps"] / lq["tps"], 3), "unit": "tokens/s",
            "notes": f"tiny Qwen2 with the real Qwen tokenizer, {args.qwen_steps} steps, best of two interleaved rounds; final loss ours "
                     f"{qwen['ours packed']['loss']} vs LLaMA-Factory {lq['loss']} (its own chatml rendering); our loss computes "
                     "logits only where labels are trained, it computes the full 151k-wide head at every position"})
    if best_trl == "TRL packing":  # the first row would repeat the second
        rows.pop(0)
    out = {"area": "train", "machine": machine(), "date": time.strftime("%Y-%m-%d"), "rows": rows,
           "raw": {k: {kk: round(vv, 3) if isinstance(vv, float) else vv for kk, vv in v.items()}
                   for k, v in [*results.items(), *((f"qwen {q}", r) for q, r in qwen.items())]}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--llamafactory-worker":
        sys.path.remove(str(REPO))  # in the LLaMA-Factory venv: none of this project's packages
        _lf_worker(sys.argv[2])
    else:
        main()
