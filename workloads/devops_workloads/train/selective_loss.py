"""The LM head only where a token is trained: a Trainer whose loss projects onto the vocabulary just
the positions whose next token has a label.

SFT trains only the responses (the prompts, system text and template tokens are -100), yet a plain
causal-LM forward pass computes the full ``positions × vocabulary`` logits (151,936 columns for
Qwen) and throws most of them away. Passing a boolean ``logits_to_keep`` mask (transformers slices
the hidden states before ``lm_head``) computes only the rows the loss uses: the same loss and
gradients, less compute and a much smaller logits tensor. The loss is normalised exactly as the HF
Trainer's default path (sum over trained tokens / ``num_items_in_batch`` when given, scaled for
token averaging across devices), so gradient accumulation and DDP behave the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import Trainer

IGNORE = -100


def selective_lm_loss(model, inputs: dict, num_items_in_batch=None):
    """(loss, outputs): cross-entropy over the trained positions only."""
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    targets = labels[:, 1:]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = targets != IGNORE  # position t predicts token t+1
    if not keep.any():
        keep[:, 0] = True  # nothing trained in this micro-batch: one row keeps the graph alive
    outputs = model(**inputs, logits_to_keep=keep)
    logits = outputs.logits.reshape(-1, outputs.logits.shape[-1]).float()
    tgt = targets[keep[:, :-1]]
    if tgt.numel() != logits.shape[0]:  # a one-token row kept alive: nothing to learn from it
        tgt = torch.full((logits.shape[0],), IGNORE, device=labels.device)
    loss = F.cross_entropy(logits, tgt.to(logits.device), ignore_index=IGNORE, reduction="sum")
    if num_items_in_batch is not None:
        loss = loss / (num_items_in_batch.to(loss.device) if torch.is_tensor(num_items_in_batch) else num_items_in_batch)
    else:
        loss = loss / (tgt != IGNORE).sum().clamp(min=1)
    return loss, outputs


class SelectiveHeadTrainer(Trainer):
    """HF Trainer whose training loss computes the LM head only at trained positions."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = selective_lm_loss(model, inputs, num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes if self.args.n_gpu <= 1 else self.args.n_gpu)
        return (loss, outputs) if return_outputs else loss
