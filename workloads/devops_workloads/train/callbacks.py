"""Trainer callbacks: progress (bar, progress.jsonl, status.progress), config saved with every
checkpoint, and stopping with a checkpoint on SIGTERM.

Used by ``train/entry.py``; each callback does one thing.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ..progress import ProgressReporter


class ProgressCallback(TrainerCallback):
    """step/total, epoch, loss, learning rate, tokens/s, ETA and last checkpoint, every step.

    Rank 0 only (ProgressReporter is inactive on other ranks); in a pod the reporter throttles its
    status patches itself."""

    def __init__(self, out_dir: Path, desc: str, output_uri: str):
        self.out_dir = Path(out_dir)
        self.desc = desc
        self.output_uri = output_uri.rstrip("/")
        self.reporter: ProgressReporter | None = None
        self.loss: float | None = None
        self.lr: float | None = None
        self.last_checkpoint: str | None = None
        self._t0 = 0.0
        self._step0 = 0
        self._tokens0 = 0

    def on_train_begin(self, args, state, control, **kw):
        self.reporter = ProgressReporter(self.out_dir, self.desc, total=state.max_steps)
        self._t0 = time.time()
        self._step0 = state.global_step  # > 0 when resuming: rates count this session only
        self._tokens0 = state.num_input_tokens_seen

    def on_log(self, args, state, control, logs=None, **kw):
        logs = logs or {}
        if "loss" in logs:
            self.loss = float(logs["loss"])
        if "learning_rate" in logs:
            self.lr = float(logs["learning_rate"])

    def on_save(self, args, state, control, **kw):
        self.last_checkpoint = f"{self.output_uri}/checkpoints/checkpoint-{state.global_step}"

    def on_step_end(self, args, state, control, **kw):
        if self.reporter is None:
            return
        elapsed = max(time.time() - self._t0, 1e-9)
        steps = state.global_step - self._step0
        tokens = state.num_input_tokens_seen - self._tokens0
        eta = int(elapsed / steps * (state.max_steps - state.global_step)) if steps else None
        self.reporter.update(
            step=state.global_step,
            total_steps=state.max_steps,
            epoch=round(state.epoch or 0.0, 4),
            loss=self.loss,
            learning_rate=self.lr,
            tokens_per_second=round(tokens / elapsed, 1) if tokens else None,
            eta_seconds=eta,
            last_checkpoint=self.last_checkpoint,
        )

    def close(self) -> None:
        if self.reporter is not None:
            self.reporter.close()


class CheckpointConfigCallback(TrainerCallback):
    """Writes the resolved config into every checkpoint, last, so it also marks the save complete."""

    def __init__(self, config: dict[str, Any]):
        self.config = config

    def on_save(self, args, state, control, **kw):
        if not state.is_world_process_zero:
            return
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if ckpt.is_dir():
            tmp = ckpt / "run_config.json.tmp"
            tmp.write_text(json.dumps({**self.config, "step": state.global_step}, indent=2, ensure_ascii=False, default=str))
            tmp.replace(ckpt / "run_config.json")


class PreemptionCallback(TrainerCallback):
    """On SIGTERM: save at the end of this step and stop. All ranks agree (the flag is all-reduced),
    so no rank waits forever in a collective that another rank left."""

    def __init__(self, preemption: Any):
        self.preemption = preemption

    def on_step_end(self, args, state, control, **kw):
        requested = self.preemption.requested
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            import torch

            flag = torch.tensor([1.0 if requested else 0.0], device=args.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            requested = bool(flag.item())
            self.preemption.requested = requested
        if requested:
            control.should_save = True
            control.should_training_stop = True
        return control
