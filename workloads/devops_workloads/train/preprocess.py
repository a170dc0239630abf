"""Tokenized training examples: pretraining blocks, SFT turns with label masks, packing, collators.

Pretraining (stage pt): every document ends with the tokenizer's document separator
(``<|endoftext|>`` for Qwen2-family tokenizers, where the seed accidentally used ``<|im_end|>``),
the whole corpus is concatenated once and cut into blocks of ``maxLength`` tokens. Only the final
remainder (less than one block) is left out; the seed lost the tail of every 1,000-document batch.
The separator is trained (the seed masked it because pad == eos there).

SFT: each turn is (source, target); labels are -100 on sources and the target ids on targets, so
every assistant turn is trained. A sample longer than ``maxLength`` loses its oldest history turns
first; only when the final turn alone is too long are its source (from the left, keeping the
assistant header) and then its target (from the right) cut. Both are counted, never silent.

Packing: samples are placed into bins of at most ``maxLength`` tokens (best fit, decreasing);
every micro-batch is flattened into one row with ``position_ids`` restarting at 0 for each sample
and no attention mask, which transformers turns into a block-diagonal mask (sdpa/eager) or
variable-length FlashAttention (flash_attention_2), so no token attends across a sample boundary
and no batch carries padding.
"""

from __future__ import annotations

import bisect
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..templates import Template

IGNORE = -100


# --------------------------------------------------------------------------- pretraining


def document_separator(tokenizer: Any) -> str:
    """``<|endoftext|>`` when the tokenizer has it (Qwen2 family), else its eos token."""
    vocab = tokenizer.get_vocab()
    if "<|endoftext|>" in vocab:
        return "<|endoftext|>"
    if tokenizer.eos_token:
        return tokenizer.eos_token
    raise ValueError("the tokenizer has neither <|endoftext|> nor an eos token to end documents with")


@dataclass
class PretrainBlocks:
    blocks: list[list[int]]
    separator: str
    tokens: int
    dropped_tail: int


def build_pretrain_blocks(texts: Sequence[str], tokenizer: Any, block_size: int, batch: int = 1000) -> PretrainBlocks:
    """Concatenate all documents (each + separator) and cut into ``block_size`` blocks."""
    sep = document_separator(tokenizer)
    sep_id = tokenizer.convert_tokens_to_ids(sep)
    blocks: list[list[int]] = []
    buf: list[int] = []
    total = 0
    for start in range(0, len(texts), batch):
        enc = tokenizer(list(texts[start:start + batch]), add_special_tokens=False)["input_ids"]
        for ids in enc:
            buf.extend(ids)
            buf.append(sep_id)
            total += len(ids) + 1
        # carry the remainder to the next batch instead of dropping it (the seed's per-batch waste)
        full = len(buf) // block_size * block_size
        blocks.extend(buf[i:i + block_size] for i in range(0, full, block_size))
        buf = buf[full:]
    return PretrainBlocks(blocks, sep, total, len(buf))


# --------------------------------------------------------------------------- SFT


@dataclass
class SFTStats:
    samples: int = 0
    history_truncated: int = 0
    history_turns_dropped: int = 0
    final_turn_truncated: int = 0
    turns_capped: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class SFTExample:
    input_ids: list[int]
    labels: list[int]


def _cap_pair(src: list[int], tgt: list[int], max_src: int | None, max_tgt: int | None) -> tuple[list[int], list[int], bool]:
    capped = False
    if max_src is not None and len(src) > max_src:
        src, capped = src[-max_src:], True  # keep the end: the newest text and the assistant header
    if max_tgt is not None and len(tgt) > max_tgt:
        tgt, capped = tgt[:max_tgt], True
    return src, tgt, capped


def encode_sft(record: dict[str, Any], tokenizer: Any, template: Template, max_length: int,
               max_source_length: int | None = None, max_target_length: int | None = None,
               stats: SFTStats | None = None) -> SFTExample:
    """One SFT sample: history first dropped when too long, the final turn always kept."""
    stats = stats if stats is not None else SFTStats()
    turns = list(record["turns"])
    system = record.get("system")
    dropped = 0
    while True:
        pairs = template.encode_multiturn(tokenizer, turns, system)
        capped = [_cap_pair(s, t, max_source_length, max_target_length) for s, t in pairs]
        total = sum(len(s) + len(t) for s, t, _ in capped)
        if total <= max_length or len(turns) == 1:
            break
        turns = turns[1:]  # the oldest exchange goes first; the system prompt stays (turn 0 carries it)
        dropped += 1
    stats.samples += 1
    stats.turns_capped += sum(1 for *_, c in capped if c)
    if dropped:
        stats.history_truncated += 1
        stats.history_turns_dropped += dropped
    if total > max_length:
        # The final turn alone is too long: keep at least a quarter for the target.
        src, tgt, _ = capped[-1]
        keep_tgt = min(len(tgt), max(max_length // 4, max_length - len(src)))
        keep_src = max_length - keep_tgt
        capped[-1] = (src[-keep_src:] if keep_src else [], tgt[:keep_tgt], True)
        stats.final_turn_truncated += 1
    ids: list[int] = []
    labels: list[int] = []
    for src, tgt, _ in capped:
        ids += src + tgt
        labels += [IGNORE] * len(src) + tgt
    return SFTExample(ids, labels)


def encode_sft_all(records: Sequence[dict[str, Any]], tokenizer: Any, template: Template, max_length: int,
                   max_source_length: int | None = None, max_target_length: int | None = None
                   ) -> tuple[list[SFTExample], SFTStats]:
    stats = SFTStats()
    out = [encode_sft(r, tokenizer, template, max_length, max_source_length, max_target_length, stats) for r in records]
    return [e for e in out if any(l != IGNORE for l in e.labels)], stats


# --------------------------------------------------------------------------- packing


def pack(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: indices of samples per bin, each bin's total length ≤ capacity."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    free: list[tuple[int, int]] = []  # (free space, bin index), sorted
    bins: list[list[int]] = []
    for i in order:
        n = lengths[i]
        j = bisect.bisect_left(free, (n, -1))
        if j < len(free):
            space, b = free.pop(j)
        else:
            space, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        bisect.insort(free, (space - n, b))
    return bins


@dataclass
class PackedExample:
    """Several samples that travel together; their boundaries are kept as ``lengths``."""

    input_ids: list[int]
    labels: list[int]
    lengths: list[int]


def pack_examples(examples: Sequence[SFTExample], capacity: int, seed: int) -> list[PackedExample]:
    bins = pack([len(e.input_ids) for e in examples], capacity)
    random.Random(seed).shuffle(bins)  # long and short bins mixed over the epoch
    out = []
    for b in bins:
        ids, labels, lengths = [], [], []
        for i in b:
            ids += examples[i].input_ids
            labels += examples[i].labels
            lengths.append(len(examples[i].input_ids))
        out.append(PackedExample(ids, labels, lengths))
    return out


# --------------------------------------------------------------------------- datasets and collators


class ExampleDataset(torch.utils.data.Dataset):
    def __init__(self, items: Sequence[Any]):
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        return self.items[i]


@dataclass
class PackedCollator:
    """Flatten a micro-batch into one row: position ids restart per sample, no mask, no padding.

    The first label of every sample is -100, so no token is trained to predict the next sample."""

    def __call__(self, batch: Sequence[PackedExample]) -> dict[str, torch.Tensor]:
        ids: list[int] = []
        labels: list[int] = []
        pos: list[int] = []
        for ex in batch:
            start = 0
            for n in ex.lengths:
                ids += ex.input_ids[start:start + n]
                lab = ex.labels[start:start + n]
                labels += [IGNORE] + lab[1:]
                pos += range(n)
                start += n
        return {
            "input_ids": torch.tensor([ids]),
            "labels": torch.tensor([labels]),
            "position_ids": torch.tensor([pos]),
        }


@dataclass
class PaddedCollator:
    """One sample per row, right-padded to the longest in the batch (no packing)."""

    pad_id: int

    def __call__(self, batch: Sequence[SFTExample]) -> dict[str, torch.Tensor]:
        n = max(len(e.input_ids) for e in batch)
        ids = [e.input_ids + [self.pad_id] * (n - len(e.input_ids)) for e in batch]
        labels = [e.labels + [IGNORE] * (n - len(e.labels)) for e in batch]
        mask = [[1] * len(e.input_ids) + [0] * (n - len(e.input_ids)) for e in batch]
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}


@dataclass
class BlockCollator:
    """Pretraining blocks: all the same length, every token trained."""

    def __call__(self, batch: Sequence[list[int]]) -> dict[str, torch.Tensor]:
        ids = torch.tensor([list(b) for b in batch])
        return {"input_ids": ids, "labels": ids.clone()}


def count_trained_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Non-padding tokens in a collated batch (what tokens/s counts)."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int(batch["input_ids"].numel())


def label_counts(examples: Sequence[SFTExample]) -> Counter:
    c: Counter = Counter()
    for e in examples:
        c["tokens"] += len(e.input_ids)
        c["trained"] += sum(1 for l in e.labels if l != IGNORE)
    return c
