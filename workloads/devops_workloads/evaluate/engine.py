"""Forward passes for exam scoring: the fast path (batched, length-sorted, prefix-KV-cached) and
the plain one-question-at-a-time reference that the tests compare it with.

    from devops_workloads.evaluate.engine import Request, run_fast, run_plain
    run_fast(model, requests, on_logits, batch_size=16)   # what `devops-model eval` uses
    run_plain(model, requests, on_logits)                 # the seed's loop: model(ids).logits[0, -1]

Every question of one exam setting (exam, shots, style) starts with the same few-shot prefix, so
the fast path:

1. finds the longest common token prefix of the setting's requests (on token ids, so it is exact
   whatever the tokenizer does at the seam) and runs it once, keeping its KV cache;
2. sorts the suffixes by length and runs them in batches of ``batch_size``, right-padded, on a copy
   of the prefix cache expanded to the batch (a ``DynamicCache`` built from the prefix's keys and
   values): right padding needs no attention mask, because causal attention never lets a real
   token see the pads after it;
3. applies the output head only to the positions that are scored (the last one, or the last few
   for multi-token continuations) instead of to every position: with Qwen's 151k vocabulary the
   head is most of the work of a small model; and with ``columns`` (the seed's scoring reads only
   the logits of A..D) only to those rows of the head: 4 dot products instead of 151,936.

Five-shot thus costs close to zero-shot: the ~1,000-token prefix is computed once per exam instead
of once per question. Results equal the plain path up to float rounding (different matrix shapes
sum in different orders); the tests check that the predictions are identical.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Hashable, Sequence

#: on_logits(request index, logits of its last n_last positions: tensor [n_last, vocab]).
OnLogits = Callable[[int, Any], None]


@dataclass(frozen=True)
class Request:
    """Token ids to run and how many trailing positions need logits."""

    ids: tuple[int, ...]
    #: Requests with the same group share their prefix (one exam, shots and style).
    group: Hashable = None
    n_last: int = 1


def common_prefix_length(seqs: Sequence[Sequence[int]], cap: int) -> int:
    """Length of the longest common prefix of ``seqs``, at most ``cap``."""
    first = seqs[0]
    n = min(cap, *(len(s) for s in seqs)) if len(seqs) > 1 else min(cap, len(first))
    for s in seqs[1:]:
        i = 0
        while i < n and s[i] == first[i]:
            i += 1
        n = i
        if n == 0:
            break
    return n


def _device(model: Any):
    return next(model.parameters()).device


def run_plain(model: Any, requests: Sequence[Request], on_logits: OnLogits, progress: Callable[[int], None] | None = None,
              full_logits: bool = False) -> None:
    """The seed's loop: one forward pass per request over its whole prompt.

    ``full_logits`` computes the head at every position as the seed did; by default only the
    scored positions get it (``logits_to_keep``): the same numbers, without a 151k-wide row for
    each of a thousand prompt tokens."""
    import torch

    dev = _device(model)
    with torch.inference_mode():
        for i, req in enumerate(requests):
            ids = torch.tensor([list(req.ids)], device=dev)
            logits = model(input_ids=ids).logits if full_logits else model(input_ids=ids, logits_to_keep=req.n_last).logits
            on_logits(i, logits[0, -req.n_last:])
            if progress:
                progress(1)


def _decoder_and_head(model: Any):
    """(decoder, head) when the logits are exactly head(decoder(...)) — Llama/Qwen/Mistral-style
    models without logit soft-capping or scaling; else None (the full model is called)."""
    if getattr(model, "native", False):  # native.NativeQwen2: its decode() and its head
        return model, _NativeHead(model.head)
    cfg = getattr(model, "config", None)
    if cfg is not None and (getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None)):
        return None
    decoder = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if decoder is None or head is None or decoder is model:
        return None
    return decoder, head


class _NativeHead:
    """The output head of a native model as the head-row selection reads it (weight, no bias)."""

    def __init__(self, weight: Any):
        self.weight = weight
        self.bias = None

    def __call__(self, hidden: Any) -> Any:
        import torch

        return torch.nn.functional.linear(hidden, self.weight)


def _cache_kwarg(module: Any) -> str:
    """transformers 5 names the KV cache argument ``cache``; older and remote-code models
    ``past_key_values``."""
    import inspect

    params = inspect.signature(module.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def run_fast(model: Any, requests: Sequence[Request], on_logits: OnLogits, batch_size: int = 16,
             progress: Callable[[int], None] | None = None,
             columns: Sequence[int] | None = None) -> dict[str, int]:
    """Batched, length-sorted, prefix-cached scoring; returns counters (tokens run, prefixes).

    ``columns``: only these vocabulary ids are needed; ``on_logits`` then gets rows
    ``[n_last, len(columns)]`` in that order. Only those rows of the head are applied when it is
    a plain linear layer that can be split off (:func:`_decoder_and_head`; the counter
    ``head_columns`` says how many were computed: -1 for the whole vocabulary)."""
    import torch

    native = getattr(model, "native", False)
    if not native:
        from transformers import DynamicCache
    dev = _device(model)
    split = _decoder_and_head(model)
    head_weight = head_bias = None
    if split is not None and columns is not None and isinstance(split[1], (torch.nn.Linear, _NativeHead)):
        index = torch.tensor(list(columns), device=dev)
        head_weight = split[1].weight.index_select(0, index)
        head_bias = split[1].bias.index_select(0, index) if split[1].bias is not None else None
    select = torch.tensor(list(columns), device=dev) if columns is not None and head_weight is None else None
    groups: dict[Hashable, list[int]] = {}
    for i, r in enumerate(requests):
        groups.setdefault(r.group, []).append(i)
    body = split[0] if split else model
    cache_arg = "" if native else _cache_kwarg(body)
    stats = {"prefixes": 0, "prefix_tokens": 0, "suffix_tokens": 0, "batches": 0, "prompt_tokens": 0,
             "head_columns": int(head_weight.shape[0]) if head_weight is not None else -1}
    pad = 0
    with torch.inference_mode():
        for members in groups.values():
            seqs = [requests[i].ids for i in members]
            # Keep at least n_last tokens in every suffix: their outputs are the scored positions.
            cap = min(len(requests[i].ids) - requests[i].n_last for i in members)
            plen = common_prefix_length(seqs, max(cap, 0))
            prefix_layers = None
            if plen > 0:
                prefix_ids = torch.tensor([list(seqs[0][:plen])], device=dev)
                if native:
                    prefix_layers = model.decode(prefix_ids)[1]
                else:
                    out = body(input_ids=prefix_ids, use_cache=True)
                    cache = getattr(out, "cache", None) or out.past_key_values
                    prefix_layers = [(layer.keys, layer.values) for layer in cache.layers]
                stats["prefixes"] += 1
                stats["prefix_tokens"] += plen
            order = sorted(members, key=lambda i: -len(requests[i].ids))
            for start in range(0, len(order), batch_size):
                chunk = order[start:start + batch_size]
                lens = [len(requests[i].ids) - plen for i in chunk]
                width = max(lens)
                batch = torch.full((len(chunk), width), pad, dtype=torch.long, device=dev)
                for row, i in enumerate(chunk):
                    batch[row, :lens[row]] = torch.tensor(requests[i].ids[plen:], device=dev)
                kwargs: dict[str, Any] = {}
                if prefix_layers is not None:
                    b = len(chunk)
                    expanded = [(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)) for k, v in prefix_layers]
                    if native:
                        kwargs["past"] = expanded
                    else:
                        kwargs[cache_arg] = DynamicCache(ddp_cache_data=expanded, config=model.config)
                        kwargs["use_cache"] = True
                rows = torch.cat([torch.arange(n - requests[i].n_last, n, device=dev) for n, i in zip(lens, chunk)])
                owners = torch.cat([torch.full((requests[i].n_last,), r, device=dev) for r, i in enumerate(chunk)])
                if split:
                    hidden = (model.decode(batch, **kwargs)[0] if native
                              else split[0](input_ids=batch, **kwargs).last_hidden_state)[owners, rows]
                    logits = (torch.nn.functional.linear(hidden, head_weight, head_bias)
                              if head_weight is not None else split[1](hidden))
                else:
                    logits = model(input_ids=batch, **kwargs).logits[owners, rows]
                if select is not None:
                    logits = logits.index_select(-1, select)
                at = 0
                for i in chunk:
                    n = requests[i].n_last
                    on_logits(i, logits[at:at + n])
                    at += n
                stats["batches"] += 1
                stats["suffix_tokens"] += sum(lens)
                if progress:
                    progress(len(chunk))
            stats["prompt_tokens"] += sum(len(s) for s in seqs)
    return stats
