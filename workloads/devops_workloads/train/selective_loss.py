"""The LM head only where a token is trained, and never the whole ``positions × vocabulary`` logits at once.

SFT trains only the responses (the prompts, system text and template tokens are -100), yet a plain
causal-LM forward pass computes the full ``positions × vocabulary`` logits (151,936 columns for
Qwen) and throws most of them away. Passing a boolean ``logits_to_keep`` mask (transformers slices
the hidden states before ``lm_head``) keeps just the rows the loss uses: the same loss and
gradients, less compute and a smaller logits tensor.

Pretraining trains every position, so the mask alone saves nothing there: a 512-token row of a
Qwen model still makes 310 MB of float32 logits, kept for the backward pass next to their
log-softmax and, in the backward, their gradient (~1 GB per sequence; 2.5 GB of logits alone for a
4k-token row). For plain decoder heads (:data:`FUSED_MODEL_TYPES`, an ``nn.Linear`` without bias
and without logit scaling) the head is therefore fused with the loss, as Liger-Kernel's fused
linear cross-entropy does, in plain torch (so also on CPU): the model runs with its head given no
rows, and :class:`ChunkedLinearCrossEntropy` projects the kept hidden states a chunk of rows at a
time, computing each chunk's loss and its gradients (for the hidden states and, when the head is
trained, its weight) at once; only those gradients outlive the chunk. Same arithmetic, so the loss
and gradients equal the unfused path to float rounding (tested), and the head's peak memory is one
chunk's logits (:func:`chunk_rows`) instead of all of them. Everything else (adapters on the head,
ZeRO-3's partitioned weights, heads with a bias or soft-capping, remote-code models, callers that
want the logits) keeps the unfused path.

The loss is normalised exactly as the HF Trainer's default path (sum over trained tokens /
``num_items_in_batch`` when given, scaled for token averaging across devices), so gradient
accumulation and DDP behave the same.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer

IGNORE = -100
#: Decoder families whose ``*ForCausalLM.forward`` is ``lm_head(slice(hidden))`` and nothing after it.
FUSED_MODEL_TYPES = frozenset({"qwen2", "qwen3", "llama", "mistral"})
#: Float32 logits of one chunk (bytes); 128 MiB = 220 rows of Qwen's 151,936 columns. Each chunk adds
#: into the head's whole weight gradient (vocabulary × hidden, float32), so smaller chunks cost
#: memory traffic: measured on CPU (bench/head.py), 55-row chunks made the pass ~40 % slower than
#: the unfused one. Override with DEVOPS_MODEL_LOSS_CHUNK_MB (0 turns the fused head off).
CHUNK_BYTES = 128 * 2**20


def chunk_rows(vocab: int) -> int:
    """Rows of logits computed at once: a chunk's float32 logits fill about ``CHUNK_BYTES``."""
    budget = float(os.environ.get("DEVOPS_MODEL_LOSS_CHUNK_MB", CHUNK_BYTES / 2**20)) * 2**20
    return max(1, int(budget // (4 * vocab)))


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """``sum(cross_entropy(hidden @ weight.T, targets))`` a chunk of rows at a time.

    The forward pass computes each chunk's logits in float32, its loss and the gradients of the
    summed loss for ``hidden`` and (when it requires one) ``weight``, and drops the logits; the
    backward pass only scales those gradients by the incoming one. Rows whose target is ``IGNORE``
    add nothing.
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,  # type: ignore[override]
                rows: int) -> torch.Tensor:
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.zeros_like(hidden) if want_h else None
        grad_w = torch.empty(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        for start in range(0, hidden.shape[0], rows):
            h = hidden[start:start + rows]
            tgt = targets[start:start + rows]
            valid = tgt != IGNORE
            logits = (h @ weight.t()).float()  # the head in the weight's dtype, the loss in float32
            lse = torch.logsumexp(logits, dim=-1)
            safe = tgt.clamp(min=0)
            picked = logits.gather(1, safe[:, None])[:, 0]
            total += torch.where(valid, lse - picked, 0.0).sum()
            if not (want_h or want_w):
                continue
            # d(loss)/d(logits) = softmax - onehot(target), zero on ignored rows; in place on the logits
            probs = logits.sub_(lse[:, None]).exp_()
            probs[torch.arange(probs.shape[0], device=probs.device), safe] -= 1.0
            probs.mul_(valid[:, None])
            g = probs.to(h.dtype)
            if want_h:
                grad_h[start:start + rows] = g @ weight  # type: ignore[index]
            if want_w:  # accumulated in float32; the first chunk writes it (no zero-filled pass)
                if start == 0:
                    torch.mm(probs.t(), h.float(), out=grad_w)
                else:
                    grad_w.addmm_(probs.t(), h.float())  # type: ignore[union-attr]
        ctx.save_for_backward(grad_h if want_h else None, grad_w if want_w else None)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):  # type: ignore[override]
        grad_h, grad_w = ctx.saved_tensors
        one = bool(grad_out == 1)  # the usual case: no copy of a (vocabulary × hidden) gradient
        if grad_h is not None and not one:
            grad_h = grad_h * grad_out.to(grad_h.dtype)
        if grad_w is not None:
            grad_w = (grad_w if one else grad_w * grad_out).to(ctx.weight_dtype)
        return grad_h, grad_w, None, None


def fused_head(model: Any) -> nn.Linear | None:
    """The output head to fuse with the loss, or None where the unfused path must run."""
    if os.environ.get("DEVOPS_MODEL_LOSS_CHUNK_MB", "").strip() in ("0", "0.0"):
        return None
    while isinstance(getattr(model, "module", None), nn.Module):  # DDP / DeepSpeed wrappers
        model = model.module
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in FUSED_MODEL_TYPES:
        return None
    if any(getattr(config, key, None) not in (None, 1, 1.0) for key in ("final_logit_softcapping", "logit_scale",
                                                                         "logits_scaling")):
        return None
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if type(head) is not nn.Linear or head.bias is not None:  # adapters on the head, GPTQ, ...: unfused
        return None
    if hasattr(head.weight, "ds_id"):  # ZeRO-3: the weight is gathered only inside the head's own forward
        return None
    return head


def selective_lm_loss(model, inputs: dict, num_items_in_batch=None, *, fuse: bool = True):
    """(loss, outputs): cross-entropy over the trained positions only.

    With ``fuse`` (and a head :func:`fused_head` accepts) the head is fused with the loss and
    ``outputs.logits`` has no rows; otherwise ``outputs.logits`` holds the trained rows' logits."""
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    targets = labels[:, 1:]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = targets != IGNORE  # position t predicts token t+1
    if not keep.any():
        keep[:, 0] = True  # nothing trained in this micro-batch: one row keeps the graph alive
    tgt = targets[keep[:, :-1]]
    head = fused_head(model) if fuse else None
    if head is not None:
        captured: list[torch.Tensor] = []

        def take_rows(_module, args):  # the head sees no rows; the loss projects them chunk by chunk
            captured.append(args[0])
            return (args[0][:0],)

        handle = head.register_forward_pre_hook(take_rows)
        try:
            outputs = model(**inputs, logits_to_keep=keep)
        finally:
            handle.remove()
        hidden = captured[-1].reshape(-1, captured[-1].shape[-1])
        if tgt.numel() != hidden.shape[0]:  # a one-token row kept alive: nothing to learn from it
            tgt = torch.full((hidden.shape[0],), IGNORE, device=hidden.device)
        weight = head.weight
        if not torch.is_grad_enabled():  # evaluation: the loss alone, no gradients computed on the way
            hidden, weight = hidden.detach(), weight.detach()
        loss = ChunkedLinearCrossEntropy.apply(hidden, weight, tgt.to(hidden.device), chunk_rows(head.out_features))
    else:
        outputs = model(**inputs, logits_to_keep=keep)
        logits = outputs.logits.reshape(-1, outputs.logits.shape[-1]).float()
        if tgt.numel() != logits.shape[0]:  # a one-token row kept alive: nothing to learn from it
            tgt = torch.full((logits.shape[0],), IGNORE, device=labels.device)
        loss = F.cross_entropy(logits, tgt.to(logits.device), ignore_index=IGNORE, reduction="sum")
    if num_items_in_batch is not None:
        loss = loss / (num_items_in_batch.to(loss.device) if torch.is_tensor(num_items_in_batch) else num_items_in_batch)
    else:
        loss = loss / (tgt != IGNORE).sum().clamp(min=1)
    return loss, outputs


class SelectiveHeadTrainer(Trainer):
    """HF Trainer whose training loss computes the LM head only at trained positions, fused with the
    loss a chunk of rows at a time where the head allows it."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # a caller that wants the outputs (prediction with metrics) gets real logits: unfused
        loss, outputs = selective_lm_loss(model, inputs, num_items_in_batch, fuse=not return_outputs)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes if self.args.n_gpu <= 1 else self.args.n_gpu)
        return (loss, outputs) if return_outputs else loss
