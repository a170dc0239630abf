"""DeepSpeed configuration generated from ``spec.distributed.deepspeed``.

The seed's ``conf/deepspeed_config.json`` is the default (``SEED_PRESET``): ZeRO-2, optimizer state
offloaded to pinned CPU memory, 5e8 buckets, ``overlap_comm: false``, everything the HF Trainer knows
left as ``"auto"`` and no optimizer block, so the Trainer's AdamW is used.
"""

from __future__ import annotations

from typing import Any

#: What the seed shipped (ZeRO-2 + CPU optimizer offload), for reference and tests.
SEED_PRESET = {"zero_stage": 2, "offload_optimizer": "cpu", "offload_params": "none"}


def deepspeed_config(zero_stage: int = 2, offload_optimizer: str = "cpu", offload_params: str = "none",
                     on_cpu: bool = False) -> dict[str, Any]:
    """A DeepSpeed config dict for the HF Trainer (``TrainingArguments(deepspeed=...)``)."""
    zero: dict[str, Any] = {"stage": zero_stage}
    if zero_stage >= 1:
        zero.update(
            allgather_partitions=True,
            allgather_bucket_size=5e8,
            reduce_scatter=True,
            reduce_bucket_size=5e8,
            overlap_comm=False,
            contiguous_gradients=True,
        )
    if offload_optimizer == "cpu":
        # pinned memory speeds up the copies to the GPU; there is no GPU to copy to on CPU runs
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": not on_cpu}
    if zero_stage == 3:
        zero.update(stage3_gather_16bit_weights_on_model_save=True)  # every rank takes part in saving
        if offload_params == "cpu":
            zero["offload_param"] = {"device": "cpu", "pin_memory": not on_cpu}
    return {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto", "loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000,
                 "hysteresis": 2, "min_loss_scale": 1},
        "zero_optimization": zero,
    }
