"""The training loss's fused LM head: chunked linear cross-entropy against the plain forward pass.

Same loss and gradients as transformers' own loss (model(**batch, labels=...).loss) and as the
unfused selective head, for full fine-tuning (tied and untied heads), LoRA (frozen head), rows
with and without ignored labels and several chunks; without ever materialising the whole
``rows × vocabulary`` logits; and the unfused path wherever the fused one does not apply.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import Qwen2Config, Qwen2ForCausalLM

from devops_workloads.train import selective_loss as sl

VOCAB = 3001


def _model(tie: bool, seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tie)
    return Qwen2ForCausalLM(cfg).float()


def _batch(seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (2, 37), generator=g)
    labels = ids.clone()
    labels[0, :9] = -100  # a prompt
    labels[1, 25:] = -100  # padding
    labels[1, 3:6] = -100  # a hole in the middle
    return {"input_ids": ids, "labels": labels}


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


class _LargestOutput(TorchDispatchMode):
    """The most rows of logits (new tensors whose last dimension is the vocabulary) any torch op produced while active."""

    def __init__(self):
        super().__init__()
        self.largest = 0
        self.shapes: set[tuple[int, ...]] = set()  # of every new tensor

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view:  # a transposed weight is not logits
            return out
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.add(tuple(t.shape))
            if isinstance(t, torch.Tensor) and t.dim() and t.shape[-1] == VOCAB:
                self.largest = max(self.largest, t.numel() // VOCAB)
        return out


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("chunk_mb", ["32", "0.05"])  # one chunk; 4-row chunks (0.05 MiB / 4 / 3001 columns)
def test_fused_head_equals_transformers_loss_and_gradients(tie, chunk_mb, monkeypatch):
    monkeypatch.setenv("DEVOPS_MODEL_LOSS_CHUNK_MB", chunk_mb)
    model, batch = _model(tie), _batch()
    assert sl.fused_head(model) is model.lm_head
    ref = model(**batch).loss  # transformers' own shifted cross-entropy, mean over trained tokens
    ref.backward()
    want = _grads(model)
    model.zero_grad()
    loss, out = sl.selective_lm_loss(model, batch)
    loss.backward()
    assert out.logits.shape[0] == 0  # the head ran on no rows: the loss projected them
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    got = _grads(model)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-6, rtol=1e-4, msg=name)


def test_fused_head_scales_with_the_incoming_gradient_and_num_items(monkeypatch):
    """Gradient accumulation divides by num_items_in_batch and the Trainer may scale the loss:
    the gradients computed in the forward pass must follow both."""
    monkeypatch.setenv("DEVOPS_MODEL_LOSS_CHUNK_MB", "0.05")
    model, batch = _model(False), _batch()
    for fuse in (False, True):
        model.zero_grad()
        loss, _ = sl.selective_lm_loss(model, batch, num_items_in_batch=torch.tensor(7), fuse=fuse)
        (loss * 3.5).backward()
        if not fuse:
            want, want_loss = _grads(model), loss.item()
    assert loss.item() == pytest.approx(want_loss, rel=1e-6)
    for name, g in _grads(model).items():
        torch.testing.assert_close(g, want[name], atol=1e-6, rtol=1e-4, msg=name)


def test_fused_head_with_lora_trains_the_adapters_only(monkeypatch):
    from peft import LoraConfig, get_peft_model

    monkeypatch.setenv("DEVOPS_MODEL_LOSS_CHUNK_MB", "0.05")
    grads = {}
    for fuse in (False, True):
        model = get_peft_model(_model(False), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
        assert sl.fused_head(model) is not None  # found through PeftModel
        loss, _ = sl.selective_lm_loss(model, _batch(), fuse=fuse)
        loss.backward()
        grads[fuse] = _grads(model)
        assert all("lora_" in name for name in grads[fuse]) and grads[fuse]  # the frozen head gets no gradient
    for name in grads[False]:
        torch.testing.assert_close(grads[True][name], grads[False][name], atol=1e-6, rtol=1e-4, msg=name)


def test_fused_head_never_makes_the_whole_logits(monkeypatch):
    model, batch = _model(False), _batch()
    rows = int((batch["labels"][:, 1:] != -100).sum())
    seen = {}
    for chunk_mb, fuse in (("0.05", True), ("32", False)):
        monkeypatch.setenv("DEVOPS_MODEL_LOSS_CHUNK_MB", chunk_mb)
        with _LargestOutput() as mode:
            loss, _ = sl.selective_lm_loss(model, batch, fuse=fuse)
            loss.backward()
        seen[fuse] = mode.largest
    assert seen[False] >= rows  # the unfused head holds every trained row's logits
    assert seen[True] == 4  # the fused one a chunk of 4 rows at a time
    monkeypatch.setenv("DEVOPS_MODEL_LOSS_CHUNK_MB", "0.05")
    assert sl.chunk_rows(VOCAB) == 4


def test_fused_head_in_evaluation_computes_the_loss_only(monkeypatch):
    monkeypatch.setenv("DEVOPS_MODEL_LOSS_CHUNK_MB", "0.05")
    model, batch = _model(True), _batch()
    with torch.no_grad():
        ref, _ = sl.selective_lm_loss(model, batch, fuse=False)
        with _LargestOutput() as mode:
            loss, _ = sl.selective_lm_loss(model, batch)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    assert not loss.requires_grad
    assert mode.largest == 4
    assert (VOCAB, 32) not in mode.shapes  # no gradient of the head's weight was computed


@pytest.mark.parametrize("fuse", [False, True])
def test_a_micro_batch_with_nothing_to_learn_adds_nothing(fuse, monkeypatch):
    """All labels ignored (a packed micro-batch of prompts only): one row keeps the graph alive,
    its loss and every gradient are zero."""
    monkeypatch.setenv("DEVOPS_MODEL_LOSS_CHUNK_MB", "0.05")
    model, batch = _model(True), _batch()
    batch["labels"] = torch.full_like(batch["labels"], -100)
    loss, _ = sl.selective_lm_loss(model, batch, fuse=fuse)
    loss.backward()
    assert loss.item() == 0.0
    assert all(torch.count_nonzero(g) == 0 for g in _grads(model).values())


def test_unfused_where_the_fused_head_does_not_apply(monkeypatch):
    model = _model(False)
    assert sl.fused_head(model) is model.lm_head
    wrapped = nn.Module()
    wrapped.module = model  # DDP / DeepSpeed engines hold the model as .module
    assert sl.fused_head(wrapped) is model.lm_head

    monkeypatch.setenv("DEVOPS_MODEL_LOSS_CHUNK_MB", "0")  # turned off
    assert sl.fused_head(model) is None
    monkeypatch.delenv("DEVOPS_MODEL_LOSS_CHUNK_MB")

    capped = _model(False)
    capped.config.final_logit_softcapping = 30.0  # something after the head: unfused
    assert sl.fused_head(capped) is None
    other = _model(False)
    other.config.model_type = "gemma2"
    assert sl.fused_head(other) is None
    biased = _model(False)
    biased.lm_head = nn.Linear(32, VOCAB, bias=True)
    assert sl.fused_head(biased) is None
    zero3 = _model(False)
    zero3.lm_head.weight.ds_id = 3  # a ZeRO-3 partitioned parameter
    assert sl.fused_head(zero3) is None

    from peft import LoraConfig, get_peft_model

    on_head = get_peft_model(_model(False), LoraConfig(r=4, target_modules=["lm_head"]))
    assert sl.fused_head(on_head) is None  # an adapter on the head itself
    loss, out = sl.selective_lm_loss(on_head, _batch())
    assert out.logits.shape[0] > 0 and torch.isfinite(loss)


def test_trainer_keeps_real_logits_for_callers_that_want_outputs(monkeypatch, tmp_path):
    from transformers import TrainingArguments

    model, batch = _model(False), _batch()
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    trainer = sl.SelectiveHeadTrainer(model=model, args=args)
    loss = trainer.compute_loss(model, batch)
    loss2, out = trainer.compute_loss(model, batch, return_outputs=True)
    assert loss.item() == pytest.approx(loss2.item(), rel=1e-6)
    assert out.logits.shape == (int((batch["labels"][:, 1:] != -100).sum()), VOCAB)
