"""A lean decode step for plain Qwen2 and Llama models: the batching engine's one-token-per-row step
without the ``transformers`` forward around it.

With the small models the tests and benchmarks serve on CPUs (hidden 128, 2 layers), the decoder
layers of a decode step cost less than the machinery of the forward around them: decorators and
output capturing, the 4D attention mask built from the 2D padding mask, the rotary module, the
cache's bookkeeping. On two cores, the tiny Qwen2's 16-row step without the vocabulary projection
took ~2.2 ms through the forward and ~1.2 ms here (the projection onto Qwen's 151k tokens, the same
in both, ~10 ms). :class:`FastDecoder` runs exactly the same tensor operations as
``modeling_qwen2.py`` / ``modeling_llama.py`` (transformers 5) for one new token per row, on the
model's own parameters (referenced, never copied), and reads and appends to the engine's own
``DynamicCache``, so that the engine's merging and row selection work unchanged and a step may use
either path. It appends in place (:func:`append_kv`) where ``DynamicLayer.update`` concatenates.

Anything the lean step does not reproduce keeps the model's forward (:func:`fast_decoder` says why):
other architectures, remote code, adapters or quantized layers (their modules are not plain
``nn.Linear``), hooks, RoPE scaling, sliding windows, attention kernels other than eager and SDPA.
``DEVOPS_MODEL_SERVE_FAST_DECODE=0`` (``devops-model serve --no-fast-decode``) turns it off.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("devops_model.serve")

#: "0" keeps every decode step on the model's forward.
ENV = "DEVOPS_MODEL_SERVE_FAST_DECODE"

#: model_type → (transformers module, class-name prefix) of the architectures reproduced here. Qwen3
#: is not among them: its attention normalises queries and keys per head (q_norm, k_norm).
ARCHITECTURES = {
    "qwen2": ("transformers.models.qwen2.modeling_qwen2", "Qwen2"),
    "llama": ("transformers.models.llama.modeling_llama", "Llama"),
}


#: Decoder layers whose largest weight has at most this many elements (1M: 4 MiB in float32, e.g.
#: hidden 128 × intermediate 384 of the tiny test model, far below Qwen2.5-0.5B's 896 × 4864) run a
#: decode step on ONE thread (the engine's fused step runs everything but the projection so: the new
#: prompts' layers, the sampling). Each of their matrix products takes microseconds, and splitting one over
#: OpenMP threads costs more than it saves: the threads meet at a barrier after every operation, and
#: on a machine whose cores the HTTP server and tokenization also need, a thread that is not
#: scheduled stalls them all (measured: a 16 × 128 × 384 product took 23 µs on one thread and 41 µs on
#: two with the cores shared). The vocabulary projection (151k columns) keeps every thread.
SMALL_LAYER = 1 << 20


def enabled_by_env() -> bool:
    """False when :data:`ENV` says "0" (or false/no/off)."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


@dataclass(frozen=True)
class _Layer:
    """One decoder layer's parameters (the model's own tensors) and RMSNorm epsilons."""

    norm1: nn.Parameter
    eps1: float
    q_w: nn.Parameter
    q_b: nn.Parameter | None
    k_w: nn.Parameter
    k_b: nn.Parameter | None
    v_w: nn.Parameter
    v_b: nn.Parameter | None
    o_w: nn.Parameter
    o_b: nn.Parameter | None
    norm2: nn.Parameter
    eps2: float
    gate_w: nn.Parameter
    gate_b: nn.Parameter | None
    up_w: nn.Parameter
    up_b: nn.Parameter | None
    down_w: nn.Parameter
    down_b: nn.Parameter | None


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Qwen2RMSNorm / LlamaRMSNorm, operation for operation (so the numbers are the same)."""
    dtype = x.dtype
    x = x.to(torch.float32)
    variance = x.pow(2).mean(-1, keepdim=True)
    x = x * torch.rsqrt(variance + eps)
    return weight * x.to(dtype)


#: Room a layer's key/value buffers get past the cache's length when they are (re)allocated, as a
#: fraction of that length (at least :data:`KV_ROOM_MIN` positions): at most a quarter more memory.
KV_ROOM = 0.25
KV_ROOM_MIN = 16
#: The attribute of a ``DynamicLayer`` that holds its buffers: (keys, values, the length in use).
_ROOM = "_devops_model_room"


def append_kv(layer: Any, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``DynamicLayer.update(k, v)`` for one new position per row (``k``, ``v``: [B, kv_heads, 1,
    head_dim]): the layer's keys and values with it appended, without copying the whole cache.

    ``DynamicLayer.update`` concatenates, so every decode step copied each layer's whole cache:
    O(length) per step and O(length²) per answer (a 2k-token context of Qwen2.5-0.5B's shape, 4 rows,
    float32: ~4 MB per layer and tensor, 48 copies a step). Here ``layer.keys``/``layer.values`` are
    views of the first ``length`` positions of buffers with room after them; the new position is
    written into the room and the views grow by one. The buffers are reused only while the layer
    still holds exactly the views set here (same storage, strides and length): anything else that
    replaces them (the engine's row selection, merging and trimming, a step through the model's
    forward, a crop) makes the next step copy the cache once into new buffers, with room for
    :data:`KV_ROOM` more. The numbers are those of the concatenation (attention reads the same
    values through a strided view)."""
    keys, values = layer.keys, layer.values
    if keys is None or values is None or keys.dim() != 4 or values.dim() != 4:
        return layer.update(k, v)
    n = keys.shape[-2]
    room = getattr(layer, _ROOM, None)
    if room is None or room[2] != n or not (_prefix_view(keys, room[0]) and _prefix_view(values, room[1])) \
            or n >= room[0].shape[-2]:
        capacity = n + max(KV_ROOM_MIN, int(n * KV_ROOM))
        kb = keys.new_empty((*keys.shape[:-2], capacity, keys.shape[-1]))
        vb = values.new_empty((*values.shape[:-2], capacity, values.shape[-1]))
        kb[..., :n, :] = keys
        vb[..., :n, :] = values
        room = (kb, vb, n)
    kb, vb, _ = room
    kb[..., n: n + 1, :] = k
    vb[..., n: n + 1, :] = v
    layer.keys, layer.values = kb[..., : n + 1, :], vb[..., : n + 1, :]
    setattr(layer, _ROOM, (kb, vb, n + 1))
    return layer.keys, layer.values


def _prefix_view(t: torch.Tensor, buffer: torch.Tensor) -> bool:
    """Whether ``t`` is ``buffer[..., :length, :]`` for some length."""
    return (t.data_ptr() == buffer.data_ptr() and t.dtype == buffer.dtype and t.device == buffer.device
            and t.shape[:-2] == buffer.shape[:-2] and t.shape[-1] == buffer.shape[-1] and t.stride() == buffer.stride())


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _sdpa_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None,
                    scale: float) -> torch.Tensor:
    """transformers' SDPA attention for one query per row ([B, heads, 1, head_dim]; ``mask``: the
    bool padding mask [B, 1, 1, L], None without padding), called as its integration calls it.

    Without a mask, SDPA's own grouped-query attention; with one, the query heads of a key/value
    group become that group's "queries" (its pack_gqa), so keys and values are not repeated."""
    n, heads, _, head_dim = q.shape
    kv_heads = keys.shape[1]
    if mask is None:
        return F.scaled_dot_product_attention(q, keys, values, scale=scale, enable_gqa=heads > kv_heads)
    return F.scaled_dot_product_attention(q.view(n, kv_heads, heads // kv_heads, head_dim), keys, values,
                                          attn_mask=mask, scale=scale)


def _eager_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None,
                     scale: float) -> torch.Tensor:
    """transformers' eager attention (``mask``: the additive padding mask [B, 1, 1, L] it builds)."""
    groups = q.shape[1] // keys.shape[1]
    if groups > 1:  # repeat_kv
        n, kv_heads, length, head_dim = keys.shape
        keys = keys[:, :, None].expand(n, kv_heads, groups, length, head_dim).reshape(n, -1, length, head_dim)
        values = values[:, :, None].expand(n, kv_heads, groups, length, head_dim).reshape(n, -1, length, head_dim)
    weights = torch.matmul(q, keys.transpose(2, 3)) * scale
    if mask is not None:
        weights = weights + mask
    weights = F.softmax(weights, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(weights, values)


@dataclass(frozen=True)
class _PackedHead:
    """``lm_head``'s weight in oneDNN's layout and the row counts it may be used for."""

    weight: torch.Tensor
    rows: frozenset[int]


@dataclass(frozen=True)
class _Shortlist:
    """``lm_head``'s weight quantized to int8 for :meth:`FastDecoder.greedy`: ``weight`` [hidden,
    vocab] (``scale`` · ``weight``ᵀ approximates the float32 weight), the largest Euclidean norm of
    a float32 row (``norm_max``) and of a row's quantization error (``error_max``), and the row
    counts it is used for."""

    weight: torch.Tensor
    scale: float
    norm_max: float
    error_max: float
    rows: frozenset[int]


#: Columns per block in which :meth:`FastDecoder.greedy` looks for candidates (as engine.ARGMAX_BLOCK).
SHORTLIST_BLOCK = 256
#: Above this many candidate blocks per row, :meth:`FastDecoder.greedy` leaves the step to the full
#: projection (a model whose logits are flat enough to make the screening useless).
SHORTLIST_MAX_BLOCKS = 32
#: :meth:`FastDecoder.greedy` turns itself off when more than half of this many calls in a row had
#: to leave the step to the projection (hidden states too coarse for int8: the screening only costs).
SHORTLIST_WINDOW = 64


def shortlist_for(weight: torch.Tensor, rows: int) -> _Shortlist:
    """A :class:`_Shortlist` of ``lm_head``'s float32 ``weight`` for row counts 1..``rows``: one
    scale for the whole matrix (so that the int32 products of a row order like its screened logits)."""
    w = weight.detach()
    scale = float(w.abs().max()) / 127 or 1.0
    q = torch.round(w / scale).clamp_(-127, 127).to(torch.int8)
    error_max = norm_max = 0.0
    for start in range(0, w.shape[0], 8192):  # in float64, a slice at a time (the whole would be 155 MB here)
        w64 = w[start: start + 8192].double()
        error_max = max(error_max, float(torch.linalg.vector_norm(w64 - q[start: start + 8192].double() * scale, dim=-1).max()))
        norm_max = max(norm_max, float(torch.linalg.vector_norm(w64, dim=-1).max()))
    return _Shortlist(q.t().contiguous(), scale, norm_max, error_max, frozenset(range(1, rows + 1)))


def _best_time(fn: Callable[[], Any], repeats: int = 3) -> float:
    """The fastest of ``repeats`` timed calls after one warm-up (seconds)."""
    with torch.inference_mode():
        fn()
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
    return best


def _ranges(values: list[int]) -> str:
    """1, 2, 3, 5 → "1-3, 5"."""
    out: list[str] = []
    for v in values:
        if out and int(out[-1].split("-")[-1]) == v - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{v}"
        else:
            out.append(str(v))
    return ", ".join(out)


class FastDecoder:
    """One decode step (one new token per row) of an eligible model; see the module docstring."""

    def __init__(self, model: Any):
        cfg = model.config
        base = model.model
        rotary = base.rotary_emb
        attn0 = base.layers[0].self_attn
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = attn0.head_dim
        self.scaling = attn0.scaling
        self.eager = cfg._attn_implementation == "eager"
        self.embed = base.embed_tokens.weight
        self.inv_freq = rotary.inv_freq
        self.attention_scaling = rotary.attention_scaling
        self.norm = base.norm.weight
        self.norm_eps = base.norm.variance_epsilon
        self.lm_head_w = model.lm_head.weight
        self.lm_head_b = model.lm_head.bias
        #: Set by :meth:`pack_head`.
        self.packed_head: _PackedHead | None = None
        #: Set by :meth:`prepare_shortlist`; None again when :meth:`greedy` turns itself off (why:
        #: ``shortlist_note``).
        self.shortlist: _Shortlist | None = None
        self.shortlist_note = ""
        self._screen_calls = self._screen_misses = 0
        #: torch threads for the decoder layers of a step when they are small (see :data:`SMALL_LAYER`):
        #: one, whatever the head uses.
        self.layer_threads = 1 if max(cfg.hidden_size * cfg.intermediate_size, cfg.hidden_size ** 2) <= SMALL_LAYER else None
        self.layers = [
            _Layer(layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon,
                   a.q_proj.weight, a.q_proj.bias, a.k_proj.weight, a.k_proj.bias,
                   a.v_proj.weight, a.v_proj.bias, a.o_proj.weight, a.o_proj.bias,
                   layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon,
                   m.gate_proj.weight, m.gate_proj.bias, m.up_proj.weight, m.up_proj.bias,
                   m.down_proj.weight, m.down_proj.bias)
            for layer in base.layers[: cfg.num_hidden_layers]
            for a, m in [(layer.self_attn, layer.mlp)]
        ]

    def step(self, tokens: torch.Tensor, mask: torch.Tensor, position_ids: torch.Tensor, cache: Any) -> torch.Tensor:
        """Logits [B, vocab] of the next token of each row.

        ``tokens`` [B]: each row's pending token; ``mask`` [B, L+1]: 1 where the cache holds a real
        token, the last column the pending token's; ``position_ids`` [B, 1]: its position (the real
        tokens before it). The pending tokens' keys and values are appended to ``cache``. Small
        decoder layers run on one thread (:data:`SMALL_LAYER`), the vocabulary projection on torch's.
        """
        return self.project(self.hidden(tokens, mask, position_ids, cache))

    def hidden(self, tokens: torch.Tensor, mask: torch.Tensor, position_ids: torch.Tensor, cache: Any) -> torch.Tensor:
        """The step without the vocabulary projection: the pending tokens' final hidden states
        [B, hidden] after the model's final norm (what ``project`` turns into logits)."""
        with self.small_op_threads():
            h = self._layers(tokens, mask, position_ids, cache)
        return _rms_norm(h, self.norm, self.norm_eps)

    @contextlib.contextmanager
    def small_op_threads(self) -> Iterator[int]:
        """Run what the block holds on one thread when the layers are small (:data:`SMALL_LAYER`; on
        CPUs); yields torch's thread count before it, the one :meth:`project` should use."""
        threads = torch.get_num_threads()
        if self.layer_threads is None or self.layer_threads >= threads or self.embed.device.type != "cpu":
            yield threads
            return
        torch.set_num_threads(self.layer_threads)
        try:
            yield threads
        finally:
            torch.set_num_threads(threads)

    def project(self, h: torch.Tensor, threads: int | None = None) -> torch.Tensor:
        """The vocabulary projection (``lm_head``) of final hidden states [B, hidden]: logits [B, vocab],
        on ``threads`` torch threads when given (inside :meth:`small_op_threads`)."""
        current = torch.get_num_threads()
        if threads is not None and threads != current:
            torch.set_num_threads(threads)
        try:
            packed = self.packed_head
            if packed is not None and h.shape[0] in packed.rows:
                return torch.ops.mkldnn._linear_pointwise(h, packed.weight, self.lm_head_b, "none", [], "")
            return F.linear(h, self.lm_head_w, self.lm_head_b)
        finally:
            if threads is not None and threads != current:
                torch.set_num_threads(current)

    def pack_head(self, max_rows: int) -> str:
        """Prepare the vocabulary projection in oneDNN's blocked layout for up to ``max_rows`` rows
        (on CPUs); returns what was decided, for the log.

        ``F.linear`` re-arranges the 151k × hidden weight for the matrix kernel on every call; a weight
        packed once saves that: on two cores the tiny model's 16-row projection took 2.7 ms instead of
        3.7, a 4-row one 1.7 ms instead of 2.6. It costs one packed copy of the weight (85 MB for
        Qwen's vocabulary at hidden 128 in float32). The packed product is used only for the row
        counts at which it gave exactly ``F.linear``'s numbers on a probe (the kernel, and so the order
        of the additions, depends on the shape, not on the values; below 4 rows it differed in the
        last bit here), so the tokens and logits do not change."""
        self.packed_head = None
        weight = self.lm_head_w
        if weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
            return "the vocabulary projection runs F.linear (not on a CPU with oneDNN)"
        try:
            with torch.inference_mode():
                packed = torch.ops.mkldnn._reorder_linear_weight(weight, max_rows)
                gen = torch.Generator().manual_seed(0)
                rows = set()
                for n in range(1, max_rows + 1):
                    x = torch.randn(n, weight.shape[1], generator=gen).to(weight.dtype)
                    got = torch.ops.mkldnn._linear_pointwise(x, packed, self.lm_head_b, "none", [], "")
                    if torch.equal(got, F.linear(x, weight, self.lm_head_b)):
                        rows.add(n)
        except (RuntimeError, AttributeError) as exc:  # a torch without these oneDNN ops
            return f"the vocabulary projection runs F.linear (oneDNN packing failed: {type(exc).__name__}: {exc})"
        if not rows:
            return "the vocabulary projection runs F.linear (the packed one never gave the same numbers)"
        n = max(rows)
        x = torch.randn(n, weight.shape[1], generator=gen).to(weight.dtype)
        plain = _best_time(lambda: F.linear(x, weight, self.lm_head_b))
        fast = _best_time(lambda: torch.ops.mkldnn._linear_pointwise(x, packed, self.lm_head_b, "none", [], ""))
        if fast >= plain:  # a CPU whose oneDNN kernel is no faster (bf16 without AVX512-BF16, say)
            return f"the vocabulary projection runs F.linear (the packed one was not faster: {fast * 1e3:.2f} vs {plain * 1e3:.2f} ms)"
        self.packed_head = _PackedHead(packed, frozenset(rows))
        return f"the vocabulary projection uses a packed weight for {_ranges(sorted(rows))} rows"

    def greedy(self, h: torch.Tensor, limit: int, threads: int | None = None) -> torch.Tensor | None:
        """The greedy token of each row of final hidden states ``h`` [B, hidden] among the first
        ``limit`` vocabulary entries, the same as ``first_argmax(F.linear(h, lm_head), limit)``,
        computed without the float32 projection; None when it cannot be decided that way (the
        caller projects): no shortlist for this row count, a non-finite value, a near-tie, too
        many candidates.

        The projection onto the vocabulary is most of a small model's decode step, and the greedy
        token needs only its largest entry. An int8 product (``torch._int_mm``, oneDNN's integer
        kernel: 1.6 ms for 16 rows of the tiny model on two cores against 7.5 for the packed
        float32 projection) screens the vocabulary; only the entries that its error bound cannot
        rule out get their float32 logit.

        Why the token is exactly F.linear's. Each row x of ``h`` is quantized with its own scale:
        x̂ = s·q (q int8), and the weight with one scale: ŵ_v = t·p_v. The int32 product q·p_v is
        exact, so the screened logit x̂·ŵ_v = s·t·(q·p_v) is known exactly, and by Cauchy–Schwarz
        it is within E = ‖x − x̂‖·N + ‖x̂‖·D of the exact logit x·w_v (N: the largest ‖w_v‖, D: the
        largest ‖w_v − ŵ_v‖; the norms in float64). Every float32 dot product of length K (F.linear's,
        in whatever order its kernel adds, and ours) is within G = γ·‖x‖·N of the exact one, γ =
        (K+2)u/(1-(K+2)u), u = 2^-24. With ``top`` the row's largest screened logit, every entry
        below top − 2E − 4G has a float32 logit below that of the best candidate; and if the best
        candidate's float32 logit exceeds every other candidate's by more than 4G, F.linear's logit
        for it is strictly the largest: it is F.linear's argmax, and no tie is possible. Otherwise
        (a near-tie, where the two computations might disagree) the caller projects.
        """
        sl = self.shortlist
        n = h.shape[0]
        if sl is None or n not in sl.rows or not bool(torch.isfinite(h).all()):
            return None
        x = h.float()
        step = x.abs().amax(-1, keepdim=True) / 127
        step = torch.where(step > 0, step, torch.ones_like(step))
        q = torch.round(x / step).clamp_(-127, 127).to(torch.int8)
        current = torch.get_num_threads()
        if threads is not None and threads != current:
            torch.set_num_threads(threads)
        try:
            products = torch._int_mm(q, sl.weight)  # [B, vocab] int32, exact
        finally:
            if threads is not None and threads != current:
                torch.set_num_threads(current)
        size = SHORTLIST_BLOCK
        whole = limit // size
        maxima = products[:, : whole * size].reshape(n, whole, size).amax(-1)
        if limit > whole * size:
            maxima = torch.cat([maxima, products[:, whole * size: limit].amax(-1, keepdim=True)], dim=1)
        # The bound, in float64 (the rounding of these few numbers is far below it; 1 % more covers it).
        x64, rescaled = x.double(), step.double() * q.double()  # x and x̂
        unit = step.double().squeeze(-1) * sl.scale  # screened logit = unit · int32 product
        k = h.shape[1] + 2
        g = k * 2.0 ** -24 / (1 - k * 2.0 ** -24) * torch.linalg.vector_norm(x64, dim=-1) * sl.norm_max
        e = 1.01 * (torch.linalg.vector_norm(x64 - rescaled, dim=-1) * sl.norm_max
                    + torch.linalg.vector_norm(rescaled, dim=-1) * sl.error_max) + 1e-30
        top = maxima.amax(-1).double() * unit
        # The smallest int32 product that can matter, rounded down (a candidate too many is harmless).
        floor = torch.floor((top - 2 * e - 4 * g) / unit).clamp_(min=-(2.0 ** 31)).to(torch.int64) - 1
        row, block = (maxima >= floor[:, None]).nonzero(as_tuple=True)
        if row.numel() > SHORTLIST_MAX_BLOCKS * n:
            return self._screened(None)
        columns = block[:, None] * size + torch.arange(size, device=h.device)  # [P, size]
        inside = columns < limit
        columns = columns.clamp_(max=limit - 1)
        hit = (products[row[:, None], columns] >= floor[row][:, None]) & inside
        pair, col = hit.nonzero(as_tuple=True)
        rows, vocab = row[pair], columns[pair, col]
        exact = (self.lm_head_w[vocab] * h[rows]).sum(-1)
        best = torch.full((n,), -torch.inf, device=h.device).scatter_reduce(0, rows, exact, "amax")
        is_best = exact == best[rows]
        if int(is_best.sum()) != n:  # two candidates with the same float32 logit
            return self._screened(None)
        second = torch.full((n,), -torch.inf, device=h.device).scatter_reduce(
            0, rows, exact.masked_fill(is_best, -torch.inf), "amax")
        if not bool((best - second > 4 * g.float()).all()):
            return self._screened(None)
        tokens = torch.empty(n, dtype=torch.long, device=h.device)
        tokens[rows[is_best]] = vocab[is_best]
        return self._screened(tokens)

    def _screened(self, tokens: torch.Tensor | None) -> torch.Tensor | None:
        """Count :meth:`greedy`'s outcome; turn the shortlist off when most recent calls left the
        step to the projection (see :data:`SHORTLIST_WINDOW`)."""
        self._screen_calls += 1
        self._screen_misses += tokens is None
        if self._screen_calls >= SHORTLIST_WINDOW:
            if 2 * self._screen_misses > self._screen_calls:
                self.shortlist = None
                self.shortlist_note = (f"the int8 shortlist left {self._screen_misses} of {self._screen_calls} greedy "
                                       "steps to the projection: turned off")
                log.warning("%s", self.shortlist_note)
            self._screen_calls = self._screen_misses = 0
        return tokens

    def prepare_shortlist(self, max_rows: int, limit: int) -> str:
        """Set up :meth:`greedy` for up to ``max_rows`` rows when it is faster here than the
        float32 projection and its argmax (on CPUs, float32 models, an ``lm_head`` without bias);
        returns what was decided, for the log.

        It costs an int8 copy of the weight (19 MB for Qwen's vocabulary at hidden 128). A probe
        checks that ``torch._int_mm`` gives exact products (extreme values included: a kernel whose
        16-bit intermediate sums saturate would not) and that the tokens are F.linear's; then each
        power-of-two row count up to ``max_rows`` is timed against the plain path, and the
        shortlist serves the row counts up to the last one at which it was faster."""
        from .engine import greedy_tokens

        self.shortlist = None
        self._screen_calls = self._screen_misses = 0
        note = "greedy steps take the full projection's argmax"
        weight = self.lm_head_w
        if weight.device.type != "cpu" or weight.dtype != torch.float32 or self.lm_head_b is not None:
            return f"{note} (the shortlist is for float32 CPU heads without bias)"
        counts = sorted({1 << i for i in range(max_rows.bit_length()) if 1 << i <= max_rows} | {max_rows})
        gen = torch.Generator().manual_seed(0)
        hidden = weight.shape[1]
        try:
            with torch.inference_mode():
                sl = shortlist_for(weight, max_rows)
                self.shortlist = sl
                extremes = torch.tensor([[127] * hidden, [-127] * hidden, [127, -127] * (hidden // 2) + [127] * (hidden % 2)],
                                        dtype=torch.int8)
                q = torch.cat([extremes, torch.randint(-127, 128, (1, hidden), generator=gen, dtype=torch.int8)])
                # checked on 4,096 columns and those holding the weight's extremes (±127)
                columns = torch.cat([torch.arange(min(4096, sl.weight.shape[1])),
                                     (sl.weight.abs() == 127).any(0).nonzero().flatten()[:64]])
                if not torch.equal(torch._int_mm(q, sl.weight)[:, columns].double(), q.double() @ sl.weight[:, columns].double()):
                    self.shortlist = None
                    return f"{note} (torch._int_mm's int8 products were not exact here)"
                for n in counts:
                    h = torch.randn(n, hidden, generator=gen) * torch.rand(n, 1, generator=gen) * 4
                    peaked = weight[torch.randint(0, limit, (n,), generator=gen)] * 30 + h * 0.1
                    for x in (h, peaked):
                        for lim in (limit, max(1, limit - 1)):
                            got = self.greedy(x, lim)
                            if got is not None and not torch.equal(got, greedy_tokens(F.linear(x, weight), lim)):
                                self.shortlist = None
                                return f"{note} (the shortlist chose other tokens)"
                faster = 0
                for n in counts:
                    h = weight[torch.randint(0, limit, (n,), generator=gen)] * 30 + torch.randn(n, hidden, generator=gen)
                    plain = _best_time(lambda: greedy_tokens(self.project(h), limit))
                    screened = _best_time(lambda: self.greedy(h, limit))
                    if screened >= plain:
                        break
                    faster = n
        except (RuntimeError, AttributeError) as exc:  # a torch without _int_mm on this CPU
            self.shortlist = None
            return f"{note} (the int8 product failed: {type(exc).__name__}: {exc})"
        self._screen_calls = self._screen_misses = 0
        if not faster:
            self.shortlist = None
            return f"{note} (the int8 shortlist was not faster)"
        self.shortlist = dataclasses.replace(sl, rows=frozenset(range(1, faster + 1)))
        return f"greedy steps of up to {faster} rows screen the vocabulary in int8 (exact float32 logits for the shortlist)"

    def _layers(self, tokens: torch.Tensor, mask: torch.Tensor, position_ids: torch.Tensor, cache: Any) -> torch.Tensor:
        """The last hidden states [B, hidden] of the pending tokens (before the final norm)."""
        n = tokens.shape[0]
        heads, kv_heads, head_dim = self.num_heads, self.num_kv_heads, self.head_dim
        h = F.embedding(tokens, self.embed)  # [B, hidden]
        dtype = h.dtype
        # The rotary module's forward for the default rope type: cos/sin [B, 1, 1, head_dim]
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=h.device, dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = (emb.cos() * self.attention_scaling).to(dtype).unsqueeze(1)
        sin = (emb.sin() * self.attention_scaling).to(dtype).unsqueeze(1)
        # The masks transformers builds (every cached token precedes the new one, so causality masks
        # nothing beyond the padding): for SDPA none without padding, else the padding mask; for
        # eager attention always the additive one, 0 or the dtype's minimum.
        padding = mask.bool()[:, None, None, :]
        attention: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, float], torch.Tensor]
        attn_mask: torch.Tensor | None
        if self.eager:
            attn_mask = torch.where(padding, torch.zeros((), device=h.device, dtype=dtype), torch.finfo(dtype).min)
            attention = _eager_attention
        else:
            attn_mask = None if bool(mask.all()) else padding
            attention = _sdpa_attention
        for i, lw in enumerate(self.layers):
            x = _rms_norm(h, lw.norm1, lw.eps1)
            q = F.linear(x, lw.q_w, lw.q_b).view(n, heads, 1, head_dim)
            k = F.linear(x, lw.k_w, lw.k_b).view(n, kv_heads, 1, head_dim)
            v = F.linear(x, lw.v_w, lw.v_b).view(n, kv_heads, 1, head_dim)
            q = (q * cos) + (_rotate_half(q) * sin)
            k = (k * cos) + (_rotate_half(k) * sin)
            keys, values = append_kv(cache.layers[i], k, v)
            out = attention(q, keys, values, attn_mask, self.scaling)  # [B, heads, 1, head_dim]
            h = h + F.linear(out.reshape(n, heads * head_dim), lw.o_w, lw.o_b)
            x = _rms_norm(h, lw.norm2, lw.eps2)
            h = h + F.linear(F.silu(F.linear(x, lw.gate_w, lw.gate_b)) * F.linear(x, lw.up_w, lw.up_b),
                             lw.down_w, lw.down_b)
        return h


def fast_decoder(model: Any) -> tuple[FastDecoder | None, str]:
    """(a :class:`FastDecoder` for ``model``, or None when its forward must decode; why)."""
    why = _ineligible(model)
    if why is not None:
        return None, why
    return FastDecoder(model), f"{model.config.model_type} model with {model.config._attn_implementation} attention"


def _ineligible(model: Any) -> str | None:
    """Why the lean step cannot reproduce ``model``'s forward; None when it can."""
    cfg: Any = getattr(model, "config", None)
    model_type = getattr(cfg, "model_type", None)
    if model_type not in ARCHITECTURES:
        return f"model type {model_type!r} has no lean decode step (only {', '.join(ARCHITECTURES)})"
    module_name, prefix = ARCHITECTURES[model_type]
    classes = importlib.import_module(module_name)
    # The exact class: a PEFT wrapper, remote code or a subclass may compute something else.
    if type(model) is not getattr(classes, f"{prefix}ForCausalLM"):
        return f"{type(model).__module__}.{type(model).__name__} is not transformers' {prefix}ForCausalLM"
    if model.training:
        return "the model is in training mode"
    if getattr(cfg, "quantization_config", None):
        return "quantized model"
    attn = cfg._attn_implementation
    if attn not in ("sdpa", "eager"):
        return f"attention implementation {attn!r} (only sdpa and eager)"
    if not getattr(cfg, "is_causal", True):
        return "bidirectional attention (config.is_causal false)"
    if getattr(cfg, "output_attentions", False) or getattr(cfg, "output_hidden_states", False):
        return "the config asks for attentions or hidden states"
    if getattr(cfg, "hidden_act", None) != "silu":
        return f"activation {getattr(cfg, 'hidden_act', None)!r} (only silu)"
    base = model.model
    rotary = base.rotary_emb
    if type(rotary) is not getattr(classes, f"{prefix}RotaryEmbedding") or rotary.rope_type != "default":
        return f"rope type {getattr(rotary, 'rope_type', None)!r} (only the default one)"
    if any(t != "full_attention" for t in getattr(cfg, "layer_types", None) or ()):
        return "sliding-window attention layers"
    from transformers.activations import SiLUActivation
    from transformers.cache_utils import DynamicCache, DynamicLayer

    decoder, attention, mlp, norm = (getattr(classes, f"{prefix}{n}") for n in ("DecoderLayer", "Attention", "MLP", "RMSNorm"))
    layers = base.layers[: cfg.num_hidden_layers]
    if len(layers) != cfg.num_hidden_layers:
        return "fewer decoder layers than config.num_hidden_layers"
    for layer in layers:
        a, m = layer.self_attn, layer.mlp
        if (type(layer) is not decoder or type(a) is not attention or type(m) is not mlp
                or type(layer.input_layernorm) is not norm or type(layer.post_attention_layernorm) is not norm
                or type(m.act_fn) is not SiLUActivation):
            return f"decoder layer {a.layer_idx} is not a plain {prefix}DecoderLayer"
        if any(type(p) is not nn.Linear for p in (a.q_proj, a.k_proj, a.v_proj, a.o_proj,
                                                  m.gate_proj, m.up_proj, m.down_proj)):
            return f"decoder layer {a.layer_idx} has projections that are not plain nn.Linear (adapter or quantized)"
    if type(base.embed_tokens) is not nn.Embedding or type(model.lm_head) is not nn.Linear or type(base.norm) is not norm:
        return "the embedding, final norm or lm_head is not the plain module"
    if any(not p.is_floating_point() or p.is_meta for p in model.parameters()):
        return "parameters that are not floating-point tensors in memory (quantized or offloaded)"
    hooked = _hooked_module(model)
    if hooked is not None:
        return f"module {hooked!r} has hooks or a replaced forward"
    if any(type(layer) is not DynamicLayer for layer in DynamicCache(config=cfg).layers):
        return "the model's DynamicCache holds layers other than DynamicLayer"
    return None


def _hooked_module(model: nn.Module) -> str | None:
    """The name of a module whose forward something else wraps (hooks, accelerate's offloading, a
    patched ``forward``), "(global)" for torch's global module hooks; None without any."""
    from torch.nn.modules import module as torch_module

    if getattr(torch_module, "_global_forward_hooks", None) or getattr(torch_module, "_global_forward_pre_hooks", None):
        return "(global)"
    for name, m in model.named_modules():
        if m._forward_hooks or m._forward_pre_hooks or "forward" in vars(m):
            return name or "(the model)"
    return None
