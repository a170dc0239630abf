"""The batching generation engine behind the built-in server.

    engine = BatchingEngine.load("/models/sft-int4", max_batch_size=8)
    engine.start()                                  # one loop thread owns the model
    request = engine.submit(prompt_ids, SamplingParams(max_tokens=64), sink)

Requests go into a queue. One loop thread owns the model and repeats:

1. admit waiting requests while the batch has room: their prompts are run through the model
   together (left-padded), the first token of each is sampled, and their key/value caches are
   merged into the running batch's cache (left-padded to a common length);
2. run ONE forward step for every sequence in the batch (one new token each), with per-row
   position ids and attention mask, and sample the next token of each row with that row's own
   parameters (temperature, top-p, top-k, penalties, seed). For plain Qwen2 and Llama models that
   step runs through fastpath.py: the same operations on the same weights and cache, without the
   per-call overhead of the ``transformers`` forward (a large share of a small model's step on CPUs);
3. a sequence that hit an end-of-sequence token, a stop word or its length limit leaves the batch
   at once (its cache rows are dropped), so short answers never wait for long ones.

With the lean step, 1 and 2 are one step (``_step``): the new prompts run through the model's body
and their last hidden states join the running rows' in ONE vocabulary projection, which is most of
a small model's step and costs about the same for 1 row as for 16.

This is continuous (step-level) batching in the spirit of vLLM/TGI, written against plain
``transformers`` models so that it serves plain, LoRA-merged and GPTQ checkpoints alike on CPUs and
small GPUs. Results are delivered to each request's ``sink`` callback from the loop thread; after
every step the ``after_step`` callbacks run, so that the HTTP layer can hand a whole step's events
to its event loop at once (streaming.py).
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .fastpath import FastDecoder

log = logging.getLogger("devops_model.serve")

#: The seed's defaults (llmtuner ChatModel): used when neither the request nor the model's
#: generation_config.json sets a value.
SEED_DEFAULTS = dict(temperature=0.95, top_p=0.7, top_k=50, max_tokens=512, repetition_penalty=1.0)


@dataclass
class SamplingParams:
    """Validated sampling parameters of one request (the HTTP layer checks the ranges)."""

    max_tokens: int = 512
    temperature: float = 0.95  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    #: Keep generating past end-of-sequence tokens (vLLM's ignore_eos; benchmarks and load tests).
    ignore_eos: bool = False
    #: Report the log-probability of each generated token under the model's raw distribution, with
    #: this many most likely alternatives (None = off; 0 = the chosen token only).
    logprobs: int | None = None
    #: The same for every prompt token after the first (prompt scoring: ``echo`` + ``logprobs``).
    prompt_logprobs: int | None = None
    #: Added to the logits of these token ids before sampling (OpenAI's logit_bias, -100..100).
    logit_bias: dict[int, float] = field(default_factory=dict)
    #: Constrained decoding: an object with ``mask(logits_row)`` (disallowed ids to -inf in place),
    #: ``accept(token_id) -> bool`` and ``finished`` (see guided.py); None = free text.
    constraint: Any = None
    #: Put each sampled token's log-probability under the processed distribution in ``Event.logprob``
    #: (TGI's token details show it). For a greedy row that costs a log_softmax over the whole
    #: vocabulary every step (151k columns with Qwen's tokenizer), so routes that never show it
    #: (the OpenAI ones report raw log-probabilities, see ``logprobs``) turn it off.
    sampled_logprob: bool = True

    @property
    def greedy(self) -> bool:
        return self.temperature <= 1e-5


@dataclass
class Event:
    """What the engine tells a request: a token (``text`` is the new visible text, possibly empty
    while a stop word might be starting), or the end (``finish_reason`` set)."""

    token_id: int | None = None
    text: str = ""
    logprob: float | None = None  # None with ``SamplingParams.sampled_logprob`` off
    finish_reason: str | None = None  # "stop" | "length" | "error"
    full_text: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    #: With ``SamplingParams.logprobs``: the chosen token's raw log-probability and the top
    #: alternatives as (token id, log-probability), most likely first.
    raw_logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None
    #: On the first event, with ``SamplingParams.prompt_logprobs``: one entry per prompt token,
    #: (token id, log-probability or None for the first token, top alternatives or None).
    prompt_logprobs: list[tuple[int, float | None, list[tuple[int, float]] | None]] | None = None


class GenerationRequest:
    def __init__(self, prompt_ids: list[int], params: SamplingParams, sink: Callable[[Event], None]):
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self.sink = sink
        self.created = time.monotonic()
        self.first_token_at: float | None = None
        self.cancelled = False
        self.generated: list[int] = []
        self.emitted = 0  # characters of the visible text already sent
        # Incremental detokenization (TextTail): the text of generated[:settled], decoded once.
        self.settled = 0
        self.settled_text = ""
        self.generator = None
        self.prompt_logprobs = None  # computed at prefill when asked for

    def cancel(self) -> None:
        """The client went away: the loop drops the sequence at its next step."""
        self.cancelled = True


class EngineStats:
    """Counters the metrics layer reads (updated by the loop thread only)."""

    def __init__(self) -> None:
        self.steps = 0
        self.batch_sizes: list[int] = []
        self.on_step: Callable[[int], None] | None = None


def load_model(model_dir: str | Path, *, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False):
    """(model, tokenizer) from a local folder: plain, LoRA adapter (merged on load), GPTQ or Qwen-1
    (the one loader of evaluation and serving, models/loading.py)."""
    from ..models.loading import load_causal_lm

    return load_causal_lm(model_dir, device=device, dtype=dtype, trust_remote_code=trust_remote_code)


class BatchingEngine:
    """Continuous batching over a ``transformers`` causal LM (see the module docstring)."""

    def __init__(self, model, tokenizer, *, max_batch_size: int = 8, max_model_len: int | None = None,
                 defaults: dict[str, Any] | None = None, fast_decode: bool | None = None):
        import torch

        from .fastpath import enabled_by_env

        self.torch = torch
        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.max_batch_size = max_batch_size
        cfg = model.config
        self.max_model_len = max_model_len or getattr(cfg, "max_position_embeddings", 4096)
        self.vocab_limit = len(tokenizer)  # ids past the tokenizer (padded embedding rows) are never sampled
        gen = getattr(model, "generation_config", None)
        eos = set()
        for src in (getattr(gen, "eos_token_id", None), tokenizer.eos_token_id, getattr(cfg, "eos_token_id", None)):
            if isinstance(src, int):
                eos.add(src)
            elif src:
                eos.update(int(x) for x in src)
        self.eos_ids = eos
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos), 0)
        self.detokenizer = TextTail.for_tokenizer(tokenizer)
        self.defaults = dict(SEED_DEFAULTS)
        if gen is not None:
            if getattr(gen, "do_sample", None) is False:
                self.defaults["temperature"] = 0.0  # the model asks for greedy decoding
            else:
                for k in ("temperature", "top_p", "top_k", "repetition_penalty"):
                    v = getattr(gen, k, None)
                    if v is not None:
                        self.defaults[k] = v
        self.defaults.update(defaults or {})
        import inspect

        forward_params = inspect.signature(model.forward).parameters
        self._cache_arg_is_cache = "cache" in forward_params
        # Only the last position's logits are needed: a 2,000-token prompt with Qwen's 151k vocabulary
        # would otherwise allocate 2,000 × 151,936 floats (1.2 GB) per sequence at prefill.
        self._logits_to_keep = "logits_to_keep" in forward_params
        #: Decode steps through fastpath.py when the model allows it (None: DEVOPS_MODEL_SERVE_FAST_DECODE,
        #: on unless "0"). Decided at start() (or the first decode step), not here: hooks or a patched
        #: forward added after loading count.
        self.fast_decode = enabled_by_env() if fast_decode is None else fast_decode
        self._decoder: FastDecoder | None = None
        self._decoder_chosen = False
        self.waiting: queue.Queue[GenerationRequest] = queue.Queue()
        self.stats = EngineStats()
        #: Called on the loop thread after each step (prefill, decode step or failure), once every
        #: event of that step went to its sink.
        self.after_step: list[Callable[[], None]] = []
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.failed: str | None = None
        # batch state (loop thread only)
        self._rows: list[GenerationRequest] = []
        self._cache = None
        self._mask = None  # [B, L] 1 = real token in the cache
        self._pending = None  # [B] token sampled last step, not yet in the cache

    # ------------------------------------------------------------------ public
    @classmethod
    def load(cls, model_dir, *, device="auto", dtype="auto", trust_remote_code=False, **kwargs) -> "BatchingEngine":
        model, tok = load_model(model_dir, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        return cls(model, tok, **kwargs)

    def start(self) -> None:
        self._decode_path()  # chosen and logged now, with whatever hooks or patches the model has by then
        self._thread = threading.Thread(target=self._loop, name="batching-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.failed is None

    @property
    def queue_depth(self) -> int:
        return self.waiting.qsize()

    @property
    def running(self) -> int:
        return len(self._rows)

    def submit(self, prompt_ids: list[int], params: SamplingParams, sink: Callable[[Event], None]) -> GenerationRequest:
        req = GenerationRequest(prompt_ids, params, sink)
        self.waiting.put(req)
        return req

    # ------------------------------------------------------------------ loop
    def _loop(self) -> None:
        torch = self.torch
        with torch.inference_mode():
            while not self._stop.is_set():
                if not self._rows:
                    try:
                        first = self.waiting.get(timeout=0.1)
                    except queue.Empty:
                        continue
                    if self._decode_path() is not None:
                        self._guarded(self._step, [first, *self._take_waiting(1)])
                        continue
                    self._guarded(self._admit, [first])
                new = self._take_waiting()
                if self._decode_path() is not None:
                    self._guarded(self._step, new)
                    continue
                if new:
                    self._guarded(self._admit, new)
                if self._rows:
                    self._guarded(self._decode_step)

    def _guarded(self, step, *args) -> None:
        """Run one step; if it raises (out of memory, a kernel error), fail the requests it touched
        with the reason and keep serving the rest instead of letting the loop die."""
        try:
            step(*args)
        except Exception as exc:
            log.exception("generation step failed")
            why = f"{type(exc).__name__}: {exc}"
            victims = list(self._rows) + [r for a in args if isinstance(a, list) for r in a]
            self._rows, self._cache, self._mask, self._pending = [], None, None, None
            for req in {id(r): r for r in victims}.values():
                if not req.cancelled:
                    req.cancelled = True
                    req.sink(Event(finish_reason="error", error=why))
        finally:
            for callback in self.after_step:
                try:
                    callback()
                except Exception:  # a broken listener must not stop the loop that serves everyone
                    log.exception("after-step callback failed")

    def _take_waiting(self, taken: int = 0) -> list[GenerationRequest]:
        """Waiting requests that fit into the batch now (besides ``taken`` already taken)."""
        new: list[GenerationRequest] = []
        while len(self._rows) + taken + len(new) < self.max_batch_size:
            try:
                new.append(self.waiting.get_nowait())
            except queue.Empty:
                break
        return new

    def _admit(self, reqs: list[GenerationRequest]) -> None:
        """Prefill new requests together and merge them into the running batch. A request that
        scores its prompt needs the logits of every prompt position (prompt length × vocabulary),
        so it is prefilled on its own: that memory is one prompt's, never a whole batch's."""
        scoring = [r for r in reqs if r.params.prompt_logprobs is not None]
        if not scoring or len(reqs) == 1:
            return self._prefill(reqs)
        for r in scoring:
            self._prefill([r])
        rest = [r for r in reqs if r.params.prompt_logprobs is None]
        if rest:
            self._prefill(rest)

    def _prompts(self, reqs: list[GenerationRequest]):
        """(ids, mask, position ids, a new cache) of prompts left-padded to one width; seeds each
        request's generator."""
        torch = self.torch
        width = max(len(r.prompt_ids) for r in reqs)
        ids = torch.full((len(reqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(reqs), width), dtype=torch.long)
        for i, r in enumerate(reqs):
            n = len(r.prompt_ids)
            ids[i, width - n:] = torch.tensor(r.prompt_ids, dtype=torch.long)
            mask[i, width - n:] = 1
            if r.params.seed is not None:
                r.generator = torch.Generator(device="cpu").manual_seed(int(r.params.seed))
        ids, mask = ids.to(self.device), mask.to(self.device)
        from transformers import DynamicCache

        return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), DynamicCache(config=self.model.config)

    def _prefill(self, reqs: list[GenerationRequest]) -> None:
        reqs = [r for r in reqs if not r.cancelled]
        if not reqs:
            return
        width = max(len(r.prompt_ids) for r in reqs)
        ids, mask, position_ids, cache = self._prompts(reqs)
        torch = self.torch
        scoring = any(r.params.prompt_logprobs is not None for r in reqs)
        out = self._forward(ids, mask, position_ids, cache, all_logits=scoring)
        if scoring:
            for i, r in enumerate(reqs):
                if r.params.prompt_logprobs is not None:
                    n = len(r.prompt_ids)
                    r.prompt_logprobs = self._prompt_logprobs(out.logits[i, width - n:-1], r.prompt_ids, r.params.prompt_logprobs)
        logits = out.logits[:, -1, :]
        # max_tokens 0 (prompt scoring): done after the prefill, nothing is sampled
        done = [i for i, r in enumerate(reqs) if r.params.max_tokens == 0]
        for i in done:
            r = reqs[i]
            r.sink(Event(finish_reason="length", full_text="", prompt_tokens=len(r.prompt_ids), completion_tokens=0,
                         prompt_logprobs=r.prompt_logprobs))
        live = [i for i in range(len(reqs)) if i not in set(done)]
        if not live:
            return
        sampled = self._sample(logits[live], [reqs[i] for i in live])
        keep = [i for j, i in enumerate(live) if not self._emit(reqs[i], *sampled[j])]
        if not keep:
            return
        tokens = torch.tensor([sampled[live.index(i)][0] for i in keep], dtype=torch.long)
        if len(keep) < len(reqs):
            cache.batch_select_indices(torch.tensor(keep, device=self.device))
            mask = mask[keep]
        reqs = [reqs[i] for i in keep]
        if not self._rows:
            self._rows, self._cache, self._mask, self._pending = reqs, cache, mask, tokens.to(self.device)
            return
        self._merge(reqs, cache, mask, tokens.to(self.device))

    def _prompt_logprobs(self, rows, prompt_ids: list[int], top: int):
        """Log-probability of each prompt token given the ones before it (the first has none)."""
        torch = self.torch
        lp = torch.log_softmax(rows.float(), dim=-1)  # [n-1, vocab]: row j predicts token j+1
        nxt = torch.tensor(prompt_ids[1:], device=lp.device, dtype=torch.long)
        chosen = lp.gather(1, nxt.view(-1, 1)).squeeze(1).tolist()
        if top > 0:
            vals, idx = torch.topk(lp, top, dim=-1)
            tops = [list(zip(i.tolist(), v.tolist())) for i, v in zip(idx, vals)]
        else:
            tops = [[] for _ in chosen]
        return [(prompt_ids[0], None, None)] + [(t, c, k) for t, c, k in zip(prompt_ids[1:], chosen, tops)]

    def _forward(self, ids, mask, position_ids, cache, all_logits: bool = False):
        # The cache object is updated in place; transformers 5 names the argument ``cache``
        # (``past_key_values`` is deprecated there), older or remote-code models still use the old name.
        kwargs = {"cache" if self._cache_arg_is_cache else "past_key_values": cache}
        if self._logits_to_keep and not all_logits:
            kwargs["logits_to_keep"] = 1
        return self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=True, **kwargs)

    def _merge(self, reqs, cache, mask, tokens) -> None:
        """Append rows to the running batch, left-padding whichever cache is shorter."""
        torch = self.torch
        la, lb = self._mask.shape[1], mask.shape[1]
        length = max(la, lb)

        def pad(t, n):  # left-pad dim -2 of a [B, H, L, D] tensor by n zeros
            if n == 0:
                return t
            shape = list(t.shape)
            shape[-2] = n
            return torch.cat([t.new_zeros(shape), t], dim=-2)

        for layer_a, layer_b in zip(self._cache.layers, cache.layers):
            layer_a.keys = torch.cat([pad(layer_a.keys, length - la), pad(layer_b.keys, length - lb)], dim=0)
            layer_a.values = torch.cat([pad(layer_a.values, length - la), pad(layer_b.values, length - lb)], dim=0)
        ma = torch.nn.functional.pad(self._mask, (length - la, 0))
        mb = torch.nn.functional.pad(mask, (length - lb, 0))
        self._mask = torch.cat([ma, mb], dim=0)
        self._pending = torch.cat([self._pending, tokens])
        self._rows = self._rows + reqs

    def _step(self, new: list[GenerationRequest]) -> None:
        """One step with the lean decoder (fastpath.py): the running rows' next tokens and the
        prompts of ``new`` requests, whose first tokens come from the same vocabulary projection.

        The projection onto the vocabulary is most of a small model's step and costs nearly the same
        for 1 row as for 16 (its weight is read once either way), so new requests do not pay for one
        of their own: their prompts run through the model's layers (``model.model``, the causal LM's
        own body) for the last position's final hidden state, which joins the running rows' in one
        ``lm_head`` product. Requests that need every prompt position's logits (prompt scoring) or no
        token at all keep the separate prefill."""
        decoder = self._decoder
        assert decoder is not None
        separate = [r for r in new if r.params.prompt_logprobs is not None or r.params.max_tokens == 0]
        if separate:  # on torch's threads: a scored prompt's projection is one row per prompt token
            self._admit(separate)
            new = [r for r in new if r.params.prompt_logprobs is None and r.params.max_tokens != 0]
        with decoder.small_op_threads() as threads:
            self._fused_step(decoder, new, threads)

    def _fused_step(self, decoder: FastDecoder, new: list[GenerationRequest], threads: int) -> None:
        torch = self.torch
        new = [r for r in new if not r.cancelled]
        alive = [i for i, r in enumerate(self._rows) if not r.cancelled]
        if len(alive) < len(self._rows):
            self._select(alive)
        n = len(self._rows)
        if not n and not new:
            return
        hidden = []
        if n:
            position_ids = self._mask.sum(-1, keepdim=True)  # the pending token's position = real tokens so far
            self._mask = torch.cat([self._mask, self._mask.new_ones((n, 1))], dim=1)
            hidden.append(decoder.hidden(self._pending, self._mask, position_ids, self._cache))
        if new:
            ids, mask, prompt_positions, cache = self._prompts(new)
            kwargs = {"cache" if self._cache_arg_is_cache else "past_key_values": cache}
            out = self.model.model(input_ids=ids, attention_mask=mask, position_ids=prompt_positions, use_cache=True, **kwargs)
            hidden.append(out.last_hidden_state[:, -1, :])
        h = torch.cat(hidden) if len(hidden) > 1 else hidden[0]
        reqs = self._rows + new
        # Greedy rows that only want their tokens: the decoder's int8 screening (exactly the
        # projection's argmax, or None and the projection after all).
        tokens = decoder.greedy(h, self.vocab_limit, threads) if all(_plain_greedy(r.params) for r in reqs) else None
        self.stats.steps += 1
        if self.stats.on_step:
            self.stats.on_step(n + len(new))
        if tokens is not None:
            sampled = [(t, None, None, None) for t in tokens.tolist()]
        else:
            sampled = self._sample(decoder.project(h, threads), reqs)
        if n:
            keep = [i for i, r in enumerate(self._rows) if not self._emit(r, *sampled[i])]
            self._pending = torch.tensor([t for t, *_ in sampled[:n]], dtype=torch.long, device=self.device)
            if len(keep) < n:
                self._select(keep)
        if not new:
            return
        keep = [j for j, r in enumerate(new) if not self._emit(r, *sampled[n + j])]
        if not keep:
            return
        tokens = torch.tensor([sampled[n + j][0] for j in keep], dtype=torch.long, device=self.device)
        if len(keep) < len(new):
            cache.batch_select_indices(torch.tensor(keep, device=self.device))
            mask = mask[keep]
        reqs = [new[j] for j in keep]
        if not self._rows:
            self._rows, self._cache, self._mask, self._pending = reqs, cache, mask, tokens
        else:
            self._merge(reqs, cache, mask, tokens)

    def _decode_step(self) -> None:
        torch = self.torch
        # Drop cancelled rows first (the client disconnected).
        alive = [i for i, r in enumerate(self._rows) if not r.cancelled]
        if len(alive) < len(self._rows):
            self._select(alive)
            if not self._rows:
                return
        n = len(self._rows)
        position_ids = self._mask.sum(-1, keepdim=True)  # the pending token's position = real tokens so far
        self._mask = torch.cat([self._mask, self._mask.new_ones((n, 1))], dim=1)
        decoder = self._decode_path()
        if decoder is not None:
            logits = decoder.step(self._pending, self._mask, position_ids, self._cache)
        else:
            logits = self._forward(self._pending.view(n, 1), self._mask, position_ids, self._cache).logits[:, -1, :]
        self.stats.steps += 1
        if self.stats.on_step:
            self.stats.on_step(n)
        sampled = self._sample(logits, self._rows)
        keep = [i for i, r in enumerate(self._rows) if not self._emit(r, *sampled[i])]
        self._pending = torch.tensor([t for t, *_ in sampled], dtype=torch.long, device=self.device)
        if len(keep) < n:
            self._select(keep)

    def _decode_path(self) -> FastDecoder | None:
        """The lean decode step (fastpath.py) when the model allows it, else None (the model's
        forward); chosen and logged once."""
        if not self._decoder_chosen:
            from .fastpath import ENV, fast_decoder

            if self.fast_decode:
                self._decoder, why = fast_decoder(self.model)
            else:
                why = f"turned off ({ENV}=0 or --no-fast-decode)"
            log.info("decode steps run %s: %s", "the lean decode step" if self._decoder else "the model's forward", why)
            if self._decoder is not None:
                log.info("%s", self._decoder.pack_head(self.max_batch_size))
                log.info("%s", self._decoder.prepare_shortlist(self.max_batch_size, self.vocab_limit))
            self._decoder_chosen = True
        return self._decoder

    def _select(self, keep: list[int]) -> None:
        torch = self.torch
        if not keep:
            self._rows, self._cache, self._mask, self._pending = [], None, None, None
            return
        idx = torch.tensor(keep, device=self.device)
        self._cache.batch_select_indices(idx)
        self._mask = self._mask[idx]
        self._pending = self._pending[idx]
        self._rows = [self._rows[i] for i in keep]
        # Columns that are padding in every remaining row are dead weight: trim them.
        real = self._mask.any(dim=0).nonzero()
        start = int(real[0]) if len(real) else 0
        if start > 0:
            self._mask = self._mask[:, start:]
            for layer in self._cache.layers:
                layer.keys = layer.keys[..., start:, :]
                layer.values = layer.values[..., start:, :]

    # ------------------------------------------------------------------ sampling
    def _sample(self, logits, reqs: list[GenerationRequest]) -> list[tuple]:
        """For each row, with that row's own parameters: (token, log-probability under the processed
        distribution or None when the row does not report it, raw log-probability or None, top
        alternatives or None)."""
        torch = self.torch
        if all(_plain_greedy(r.params) for r in reqs):
            # The usual greedy batch (nothing changes the logits, nothing reported but the token):
            # one vectorised pass over the rows, no copy. Rows with NaN or ±inf go the careful way.
            tokens = greedy_tokens(logits, self.vocab_limit)
            if tokens is not None:
                return [(t, None, None, None) for t in tokens.tolist()]
        logits = logits.float()  # no copy when the model computes in float32; the rows are ours to change
        # A broken checkpoint can produce NaN or ±inf logits: those become finite so that every row
        # still samples a token. The sum is finite exactly when no entry is NaN or ±inf (or when it
        # overflows, which only sends us down the careful path); one read instead of a full copy.
        if not bool(torch.isfinite(logits.sum())):
            logits = torch.nan_to_num(logits, nan=0.0, posinf=torch.finfo(logits.dtype).max,
                                      neginf=torch.finfo(logits.dtype).min)
        if logits.shape[-1] > self.vocab_limit:
            logits[:, self.vocab_limit:] = -math.inf
        # logprobs are reported from the model's raw distribution (as vLLM), before any processing
        raw = torch.log_softmax(logits, -1) if any(r.params.logprobs is not None for r in reqs) else None
        for i, r in enumerate(reqs):
            p = r.params
            if p.repetition_penalty != 1.0:
                seen = torch.tensor(sorted(set(r.prompt_ids) | set(r.generated)), device=logits.device, dtype=torch.long)
                vals = logits[i, seen]
                logits[i, seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
            if (p.presence_penalty or p.frequency_penalty) and r.generated:
                ids, counts = torch.tensor(r.generated, device=logits.device).unique(return_counts=True)
                logits[i, ids] -= p.presence_penalty + p.frequency_penalty * counts.float()
            if p.logit_bias:
                ids = torch.tensor(list(p.logit_bias), device=logits.device, dtype=torch.long)
                logits[i, ids] += torch.tensor(list(p.logit_bias.values()), device=logits.device)
            if p.constraint is not None:
                p.constraint.mask(logits[i])
        # Greedy rows in one call each (argmax over 151k columns one row at a time was ~45 % of a
        # 16-row decode step on CPU); row-wise kernels, so every row gets the numbers it got alone.
        # The log_softmax behind a greedy token's log-probability is a second pass over the
        # vocabulary as long as the argmax, so it runs only for the rows that report it.
        greedy_rows = [i for i, r in enumerate(reqs) if r.params.greedy]
        chosen: dict[int, tuple[int, float | None]] = {}
        if greedy_rows:
            g = logits if len(greedy_rows) == len(reqs) else logits.index_select(
                0, torch.tensor(greedy_rows, device=logits.device))
            g_tok = first_argmax(g, g.shape[-1])
            chosen = {i: (t, None) for i, t in zip(greedy_rows, g_tok.tolist())}
            scored = [j for j, i in enumerate(greedy_rows) if reqs[i].params.sampled_logprob]
            if scored:
                if len(scored) < len(greedy_rows):
                    pick = torch.tensor(scored, device=logits.device)
                    g, g_tok = g.index_select(0, pick), g_tok.index_select(0, pick)
                g_lp = torch.log_softmax(g, -1).gather(-1, g_tok[:, None]).squeeze(-1)
                chosen.update((greedy_rows[j], (t, lp)) for j, t, lp in zip(scored, g_tok.tolist(), g_lp.tolist()))
        out = []
        for i, r in enumerate(reqs):
            p = r.params
            row = logits[i]
            if p.greedy:
                tok, lp = chosen[i]
            else:
                # Shifted by the row's maximum first (softmax does not change): a logit at the float
                # maximum (an +inf made finite above) divided by a temperature below 1 overflowed to
                # +inf, and the softmax of that row was NaN.
                peak = row.max()
                row = (row - peak if bool(torch.isfinite(peak)) else row) / p.temperature
                if p.top_k and 0 < p.top_k < row.shape[-1]:
                    kth = torch.topk(row, p.top_k).values[-1]
                    row = row.masked_fill(row < kth, -math.inf)
                if p.top_p < 1.0:
                    sorted_logits, order = torch.sort(row, descending=True)
                    probs = torch.softmax(sorted_logits, -1)
                    # drop a token when the tokens before it already cover top_p (the first always stays)
                    drop = (probs.cumsum(-1) - probs) > p.top_p
                    row = row.masked_fill(drop.scatter(0, order, drop), -math.inf)
                probs = torch.softmax(row, -1)
                gen = r.generator
                tok = int(torch.multinomial(probs.cpu() if gen is not None else probs, 1, generator=gen)[0])
                lp = float(torch.log(probs[tok].clamp_min(1e-30))) if p.sampled_logprob else None
            raw_lp, top = None, None
            if p.logprobs is not None:
                raw_lp = float(raw[i, tok])
                if p.logprobs > 0:
                    vals, idx = torch.topk(raw[i], p.logprobs)
                    top = list(zip(idx.tolist(), vals.tolist()))
                else:
                    top = []
            out.append((tok, lp, raw_lp, top))
        return out

    # ------------------------------------------------------------------ output
    def _emit(self, r: GenerationRequest, token: int, logprob: float | None, raw_logprob: float | None = None,
              top: list | None = None) -> bool:
        """Record a sampled token and send what became visible; True when the request finished."""
        if r.cancelled:
            return True
        if r.first_token_at is None:
            r.first_token_at = time.monotonic()
        p = r.params
        finish = None
        is_eos = token in self.eos_ids and not p.ignore_eos
        if p.constraint is not None:
            p.constraint.accept(token)
        if is_eos:
            finish = "stop"
        else:
            r.generated.append(token)
            if p.constraint is not None and p.constraint.finished:
                finish = "stop"  # the grammar is complete: nothing but end-of-sequence may follow
        text = self.detokenizer.text(r)
        visible = text
        if p.stop:
            hits = [text.find(s, max(0, r.emitted - len(s))) for s in p.stop]
            hits = [h for h in hits if h >= 0]
            if hits:
                visible = text[: min(hits)]
                finish = "stop"
        if finish is None and (len(r.generated) >= p.max_tokens
                               or len(r.prompt_ids) + len(r.generated) >= self.max_model_len):
            finish = "length"
        if finish is None:
            # Hold back what might be the start of a stop word, and half-decoded UTF-8 bytes.
            hold = 0
            for s in p.stop:
                for k in range(min(len(s) - 1, len(text)), 0, -1):
                    if text.endswith(s[:k]):
                        hold = max(hold, k)
                        break
            if text.endswith("\ufffd"):
                hold = max(hold, len(text) - len(text.rstrip("\ufffd")))
            visible = text[: len(text) - hold]
        delta = visible[r.emitted:] if len(visible) > r.emitted else ""
        r.emitted = max(r.emitted, len(visible))
        ev = Event(token_id=token, text=delta, logprob=logprob, raw_logprob=raw_logprob, top_logprobs=top)
        if r.prompt_logprobs is not None:  # sent once, with the first token
            ev.prompt_logprobs, r.prompt_logprobs = r.prompt_logprobs, None
        if finish is not None:
            ev.finish_reason = finish
            ev.full_text = visible
            ev.prompt_tokens = len(r.prompt_ids)
            ev.completion_tokens = len(r.generated) + (1 if is_eos else 0)
        r.sink(ev)
        return finish is not None


class TextTail:
    """A request's answer text, decoded incrementally where that gives exactly the full decode.

    Decoding the whole answer after every token costs O(n) per token (0.21 ms for 512 tokens of
    Qwen's tokenizer on a quiet core), O(n^2) per answer: 76 µs per token over a 512-token answer
    against 5 µs incrementally.
    For a byte-level BPE tokenizer (GPT-2/Qwen/Llama-3 style: the ``tokenizers`` ByteLevel decoder,
    no clean-up of spaces) the text of ``a + b`` is the text of ``a`` followed by the text of ``b``
    whenever ``a``'s bytes end on a character boundary, which is exactly when its text does not
    end in U+FFFD (an unfinished UTF-8 sequence decodes to it). So the answer is kept as settled
    text plus a short tail that is decoded each time, and the tail is settled once it is
    ``SETTLE`` tokens long and ends cleanly. Any other tokenizer (SentencePiece's leading-space
    rule, clean-up of spaces, remote code) decodes the whole answer as before.
    """

    SETTLE = 16

    def __init__(self, decode: Callable[[list[int]], str], incremental: bool):
        self.decode = decode
        self.incremental = incremental

    @classmethod
    def for_tokenizer(cls, tokenizer) -> "TextTail":
        backend = getattr(tokenizer, "backend_tokenizer", None)
        decoder = getattr(backend, "decoder", None)
        if (backend is not None and type(decoder).__name__ == "ByteLevel"
                and getattr(tokenizer, "clean_up_tokenization_spaces", True) is False):
            return cls(lambda ids: backend.decode(ids, skip_special_tokens=True), True)
        return cls(lambda ids: tokenizer.decode(ids, skip_special_tokens=True), False)

    def text(self, r: GenerationRequest) -> str:
        """The text of ``r.generated`` (special tokens skipped), as a full decode gives it."""
        if not self.incremental:
            return self.decode(r.generated)
        tail = self.decode(r.generated[r.settled:])
        text = r.settled_text + tail
        if len(r.generated) - r.settled >= self.SETTLE and tail and not tail.endswith("\ufffd"):
            r.settled, r.settled_text = len(r.generated), text
        return text


def _plain_greedy(p: SamplingParams) -> bool:
    """A greedy row whose logits nothing changes and that reports only its token."""
    return (p.greedy and not p.sampled_logprob and p.logprobs is None and p.repetition_penalty == 1.0
            and not p.presence_penalty and not p.frequency_penalty and not p.logit_bias and p.constraint is None)


#: Columns per block of :func:`first_argmax`.
ARGMAX_BLOCK = 256


def _block_maxima(logits, limit: int):
    """(maxima of each block of ``ARGMAX_BLOCK`` columns among the first ``limit`` [rows, blocks], block size)."""
    import torch

    n = logits.shape[0]
    size = ARGMAX_BLOCK
    whole = limit // size
    body = logits[:, : whole * size]
    maxima = body.reshape(n, whole, size).amax(-1)  # a view for contiguous rows: no copy
    if limit > whole * size:
        maxima = torch.cat([maxima, logits[:, whole * size: limit].amax(-1, keepdim=True)], dim=1)
    return maxima, size


def first_argmax(logits, limit: int, maxima=None):
    """``logits[:, :limit].argmax(-1)`` (the first column holding each row's maximum), computed
    as the block holding it first and then the column within that block.

    torch's CPU argmax over one long row is not vectorised: over Qwen's 151k columns it took 7 ms
    for 16 rows on two cores, a quarter of a whole decode step, while ``amax`` took 0.9 ms. The
    block maxima (a vectorised reduction) find the first block that holds the row's maximum, and
    the argmax of that one block the first column in it; so ties resolve as argmax's do. Rows must
    hold no NaN (argmax's NaN handling is not reproduced; :func:`greedy_tokens` checks)."""
    import torch

    if maxima is None:
        maxima, size = _block_maxima(logits, limit)
    else:
        size = ARGMAX_BLOCK
    start = maxima.argmax(-1) * size  # [rows]
    columns = (start[:, None] + torch.arange(size, device=logits.device)[None, :]).clamp_(max=limit - 1)
    # Columns past ``limit`` in the last block repeat column limit-1, after it: the first wins.
    return start + logits.gather(1, columns).argmax(-1)


def greedy_tokens(logits, limit: int):
    """The greedy token of each row among the first ``limit`` columns, or None when a row's maximum
    is not finite (NaN or ±inf somewhere that matters: the caller's careful path makes those finite first)."""
    import torch

    maxima, _ = _block_maxima(logits, limit)
    if not bool(torch.isfinite(maxima.amax(-1)).all()):
        return None
    return first_argmax(logits, limit, maxima)
