"""Benchmark: the serving engine's decode step with a long context, appending to the key/value cache
in place (``fastpath.append_kv``) vs ``transformers``' ``DynamicLayer.update`` (what ``generate`` and
the model's forward do: a concatenation, so every step copies each layer's whole cache).

    .venv/bin/python bench/kv_cache.py      # ~3 minutes on 2 cores: bench/results/kv_cache.json

A Qwen2.5-0.5B-shaped model (24 layers, hidden 896, 14 query / 2 key-value heads, Qwen's vocabulary)
with random weights in float32 on the CPU, 4 rows, contexts of 512, 2048 and 4096 tokens. Both
variants run the same lean decode step (fastpath.FastDecoder) on caches filled with the same random
keys and values (a prefill would only cost minutes); only the cache append differs. Figures: the
median time of one decode step over 10 steps (after 2 warm-up steps), the layers alone and the whole
step (with the vocabulary projection); the variants alternate (concatenation, in place, in place,
concatenation) three times and the median of each variant's six runs is kept (the machine's speed
drifts). The tokens of both variants are checked to be the same.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from benchenv import HERE, write_result  # noqa: E402  (offline hubs, the repository on sys.path)

ROWS = 4
CONTEXTS = (512, 2048, 4096)
STEPS = 12
WARMUP = 2
#: Rounds of (concatenation, in place, in place, concatenation): the machine's speed drifts.
PAIRS = 3


def filled_cache(model, context: int):
    """A cache holding ``context`` positions of random keys and values for every layer (what a
    prefill would leave; its numbers do not matter for the timing, and both variants read the same)."""
    import torch
    from transformers import DynamicCache

    cfg = model.config
    gen = torch.Generator().manual_seed(context)
    cache = DynamicCache(config=cfg)
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    for layer in cache.layers:
        shape = (ROWS, cfg.num_key_value_heads, context, head_dim)
        layer.update(torch.randn(shape, generator=gen), torch.randn(shape, generator=gen))
    return cache


def measure(model, decoder, fastpath, context: int, in_place: bool) -> tuple[float, float, list[list[int]]]:
    """(median seconds of the layers, of the whole step, the greedy tokens) over STEPS decode steps."""
    import torch

    cache = filled_cache(model, context)
    mask = torch.ones(ROWS, context, dtype=torch.long)
    tokens = torch.arange(ROWS) * 1000 + 7
    real = fastpath.append_kv
    if not in_place:
        fastpath.append_kv = lambda layer, k, v: layer.update(k, v)
    layers, whole, seen = [], [], []
    try:
        for _ in range(STEPS):
            mask = torch.cat([mask, mask.new_ones((ROWS, 1))], dim=1)
            positions = mask.sum(-1, keepdim=True) - 1
            start = time.perf_counter()
            h = decoder.hidden(tokens, mask, positions, cache)
            mid = time.perf_counter()
            tokens = decoder.project(h).argmax(-1)
            end = time.perf_counter()
            layers.append(mid - start)
            whole.append(end - start)
            seen.append(tokens.tolist())
    finally:
        fastpath.append_kv = real
    return statistics.median(layers[WARMUP:]), statistics.median(whole[WARMUP:]), seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "kv_cache.json")
    ap.add_argument("--contexts", type=int, nargs="+", default=list(CONTEXTS))
    args = ap.parse_args()

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from devops_workloads.serve import fastpath as fp

    torch.manual_seed(0)
    cfg = Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                      num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, tie_word_embeddings=True)
    cfg._attn_implementation = "sdpa"
    model = Qwen2ForCausalLM(cfg).eval()
    decoder = fp.FastDecoder(model)
    rows = []
    with torch.inference_mode():
        for context in args.contexts:
            runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
            tokens: dict[bool, list] = {}
            for in_place in (False, True, True, False) * PAIRS:
                lay, step, seen = measure(model, decoder, fp, context, in_place)
                runs[in_place].append((lay, step))
                tokens.setdefault(in_place, seen)
                assert seen == tokens[in_place]
            medians = {k: [statistics.median(r[0] for r in v), statistics.median(r[1] for r in v)] for k, v in runs.items()}
            same = tokens[True] == tokens[False]
            for i, what in enumerate(("decoder layers", "whole decode step")):
                ours, anchor = medians[True][i] * 1e3, medians[False][i] * 1e3
                rows.append({"figure": f"{what}, {ROWS} rows, {context}-token context", "ours": round(ours, 1),
                             "anchor_name": "DynamicLayer.update (torch.cat)", "anchor": round(anchor, 1),
                             "ratio": round(anchor / ours, 3), "unit": "ms per step",
                             "notes": "same tokens" if same else "TOKENS DIFFER"})
            print(f"context {context}: layers {medians[True][0] * 1e3:.1f} vs {medians[False][0] * 1e3:.1f} ms, "
                  f"step {medians[True][1] * 1e3:.1f} vs {medians[False][1] * 1e3:.1f} ms, same tokens: {same}", flush=True)
    write_result("kv_cache", rows, args.out,
                 summary="bench/kv_cache.py: the lean decode step of a Qwen2.5-0.5B-shaped model (random weights, "
                         "float32, CPU), appending to the key/value cache in place vs by concatenation.")


if __name__ == "__main__":
    main()
