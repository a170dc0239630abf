"""A plain Qwen2 checkpoint scored without importing transformers' model stack.

    from devops_workloads.evaluate.native import load_native
    model, why_not = load_native(model_dir, precision="auto")   # None and the reason when it does not apply

Importing ``transformers.models.qwen2.modeling_qwen2`` pulls in ``modeling_utils`` and with it
torch's distributed tensors, dynamo, sympy, scipy and every optional quantizer that is installed:
on two CPU cores that is 2 s with compiled bytecode and about 9 s without, more than scoring the
seed's 574 questions at 0 and 5 shots takes. For exam scoring only the decoder's forward pass is
needed, so for a checkpoint that is exactly ``Qwen2ForCausalLM`` in safetensors this module reads
the weights straight from the files and runs the same operations as transformers' Qwen2 with its
SDPA attention, in the same order and dtypes:

* embeddings, then per layer: RMSNorm (in float32, weight times the normed state cast back),
  q/k/v projections with bias, rotary embeddings (default RoPE: ``inv_freq = 1 / theta **
  (arange(0, d, 2) / d)``, ``cos``/``sin`` of ``cat(freqs, freqs)``, ``x * cos + rotate_half(x) *
  sin``), scaled-dot-product attention, output projection, residual, RMSNorm, SiLU-gated MLP,
  residual; final RMSNorm and the output head (the embeddings when tied);
* attention as ``integrations/sdpa_attention.py`` calls it: no mask and ``is_causal`` over a whole
  sequence (grouped-query heads via ``enable_gqa``); with a cached prefix a boolean causal mask
  ``[batch, 1, q, kv]`` and the key/value heads repeated; a single query token without a mask.

Anything else falls back to transformers (the reason is recorded in results.json): other
architectures, remote code, adapters, quantized checkpoints, RoPE scaling, sliding-window layers,
an activation other than SiLU, a config that leaves out a size transformers would default, weights
that are not safetensors or whose names or shapes differ from Qwen2's, and devices other than the
CPU (not verified on GPUs). ``DEVOPS_MODEL_EVAL_NATIVE=0`` turns this path off. The tests check
that its logits equal transformers' (tied and untied heads, grouped and full heads, with and
without a cached prefix) and that the evaluation's predictions are identical.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

#: Environment switch: 0/false/off/no keeps transformers' model for the fast engine too.
ENV_NATIVE = "DEVOPS_MODEL_EVAL_NATIVE"
#: How results.json names the two implementations.
NATIVE = "native-qwen2"
TRANSFORMERS = "transformers"
#: config.json keys transformers would default (Qwen2Config's class defaults) when missing: this
#: path requires them to be written out.
_REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size")
_LAYER_WEIGHTS = (("self_attn.q_proj.weight", "q"), ("self_attn.q_proj.bias", "q"), ("self_attn.k_proj.weight", "kv"),
                  ("self_attn.k_proj.bias", "kv"), ("self_attn.v_proj.weight", "kv"), ("self_attn.v_proj.bias", "kv"),
                  ("self_attn.o_proj.weight", "o"), ("mlp.gate_proj.weight", "up"), ("mlp.up_proj.weight", "up"),
                  ("mlp.down_proj.weight", "down"), ("input_layernorm.weight", "norm"), ("post_attention_layernorm.weight", "norm"))


def enabled() -> bool:
    return os.environ.get(ENV_NATIVE, "1").strip().lower() not in ("0", "false", "off", "no")


class _Spec:
    """The sizes of a Qwen2 checkpoint this module can run, from its config.json."""

    def __init__(self, cfg: dict[str, Any]):
        self.hidden = int(cfg["hidden_size"])
        self.intermediate = int(cfg["intermediate_size"])
        self.layers = int(cfg["num_hidden_layers"])
        self.heads = int(cfg["num_attention_heads"])
        self.kv_heads = int(cfg["num_key_value_heads"])
        self.vocab = int(cfg["vocab_size"])
        self.head_dim = int(cfg.get("head_dim") or self.hidden // self.heads)
        self.eps = float(cfg.get("rms_norm_eps", 1e-6))
        self.tied = bool(cfg.get("tie_word_embeddings", False))
        rope = cfg.get("rope_parameters") or {}
        self.theta = float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))


def unsupported(cfg: dict[str, Any]) -> str | None:
    """Why this config.json is not a plain Qwen2 decoder this module runs exactly (None: it is)."""
    if cfg.get("model_type") != "qwen2" or cfg.get("architectures") not in (None, ["Qwen2ForCausalLM"]):
        return f"model_type {cfg.get('model_type')!r} / architectures {cfg.get('architectures')!r} is not Qwen2ForCausalLM"
    if cfg.get("auto_map"):
        return "the repository brings its own code (auto_map)"
    if cfg.get("quantization_config"):
        return "quantized checkpoint"
    missing = [k for k in _REQUIRED if not isinstance(cfg.get(k), int)]
    if missing:
        return f"config.json leaves out {', '.join(missing)}"
    if cfg.get("hidden_act", "silu") != "silu":
        return f"hidden_act {cfg.get('hidden_act')!r}"
    rope = cfg.get("rope_parameters")
    if rope is not None and (not isinstance(rope, dict) or rope.get("rope_type", "default") != "default"
                             or set(rope) - {"rope_type", "rope_theta"}):
        return f"rope_parameters {rope!r} (only the default RoPE runs here)"
    if cfg.get("rope_scaling") is not None:
        return f"rope_scaling {cfg.get('rope_scaling')!r}"
    if cfg.get("use_sliding_window") or any(t != "full_attention" for t in cfg.get("layer_types") or []):
        return "sliding-window attention layers"
    if cfg.get("final_logit_softcapping") or cfg.get("logit_scale"):
        return "scaled or soft-capped logits"
    if cfg["num_attention_heads"] % cfg["num_key_value_heads"]:
        return "attention heads not a multiple of key/value heads"
    return None


def _weight_files(model_dir: Path) -> list[Path] | None:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [model_dir / n for n in names]
    single = model_dir / "model.safetensors"
    return [single] if single.is_file() else None


def _expected_shapes(s: _Spec) -> dict[str, tuple[int, ...]]:
    dims = {"q": (s.heads * s.head_dim, s.hidden), "kv": (s.kv_heads * s.head_dim, s.hidden),
            "o": (s.hidden, s.heads * s.head_dim), "up": (s.intermediate, s.hidden), "down": (s.hidden, s.intermediate),
            "norm": (s.hidden,)}
    out = {"model.embed_tokens.weight": (s.vocab, s.hidden), "model.norm.weight": (s.hidden,)}
    for i in range(s.layers):
        for name, kind in _LAYER_WEIGHTS:
            shape = dims[kind]
            out[f"model.layers.{i}.{name}"] = shape[:1] if name.endswith(".bias") else shape
    if not s.tied:
        out["lm_head.weight"] = (s.vocab, s.hidden)
    return out


class NativeQwen2:
    """Qwen2ForCausalLM's forward pass for scoring (inference only, no generation)."""

    #: run_fast/run_plain look for this to call :meth:`decode` instead of transformers' modules.
    native = True

    def __init__(self, spec: _Spec, weights: dict[str, Any], config: dict[str, Any]):
        import torch

        self.spec = spec
        self.config = config
        self.embed = weights["model.embed_tokens.weight"]
        self.norm = weights["model.norm.weight"]
        self.head = self.embed if spec.tied else weights["lm_head.weight"]
        self.layers = [{name: weights[f"model.layers.{i}.{name}"] for name, _ in _LAYER_WEIGHTS} for i in range(spec.layers)]
        self.groups = spec.heads // spec.kv_heads
        self.scaling = spec.head_dim ** -0.5
        d = spec.head_dim
        self.inv_freq = 1.0 / (spec.theta ** (torch.arange(0, d, 2, dtype=torch.float) / d))
        self._rope: tuple[Any, Any] | None = None

    # ------------------------------------------------------------------ the surface the engine uses

    @property
    def dtype(self) -> Any:
        return self.embed.dtype

    def parameters(self) -> Iterator[Any]:
        yield self.embed
        for layer in self.layers:
            yield from layer.values()
        yield self.norm
        if self.head is not self.embed:
            yield self.head

    def eval(self) -> "NativeQwen2":
        return self

    def __call__(self, input_ids: Any, logits_to_keep: int = 0, past: list[tuple[Any, Any]] | None = None) -> Any:
        """Like the transformers model's call: ``.logits`` of the last ``logits_to_keep`` positions
        (0: all of them)."""
        import torch

        hidden, _ = self.decode(input_ids, past)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        return _Output(torch.nn.functional.linear(hidden, self.head))

    # ------------------------------------------------------------------ the forward pass

    def _cos_sin(self, start: int, length: int, dtype: Any, device: Any) -> tuple[Any, Any]:
        """cos/sin of positions start..start+length-1 as Qwen2RotaryEmbedding computes them (element
        by element the same values whatever the table's length)."""
        import torch

        need = start + length
        if self._rope is None or self._rope[0].shape[0] < need or self._rope[0].device != device:
            n = max(need, 2048)
            pos = torch.arange(n, device=device)[None, :]
            freqs = pos[..., None].float() * self.inv_freq.to(device=device, dtype=torch.float)
            emb = torch.cat((freqs, freqs), dim=-1)[0]
            self._rope = (emb.cos() * 1.0, emb.sin() * 1.0)
        cos, sin = self._rope
        return cos[start:need].to(dtype=dtype), sin[start:need].to(dtype=dtype)

    def _rms(self, x: Any, weight: Any) -> Any:
        import torch

        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.spec.eps)
        return weight * h.to(dtype)

    def decode(self, input_ids: Any, past: list[tuple[Any, Any]] | None = None) -> tuple[Any, list[tuple[Any, Any]]]:
        """(final hidden states ``[batch, q, hidden]`` after the last norm, each layer's keys and
        values including ``past``). ``past``: keys/values ``[batch, kv_heads, p, head_dim]`` of a
        prefix the ids continue (right padding after the real tokens needs no mask: causal attention
        never lets a real token see a later pad)."""
        import torch
        import torch.nn.functional as F

        s = self.spec
        b, q = input_ids.shape
        p = past[0][0].shape[2] if past else 0
        x = F.embedding(input_ids, self.embed)
        cos, sin = self._cos_sin(p, q, x.dtype, x.device)
        cos, sin = cos[None, None], sin[None, None]
        mask = None
        if past and q > 1:  # transformers' sdpa mask with a cache: query i sees keys 0..p+i
            mask = (torch.arange(q, device=x.device)[:, None] + p >= torch.arange(p + q, device=x.device)[None, :])
            mask = mask[None, None].expand(b, -1, q, p + q)
        present = []
        for i, w in enumerate(self.layers):
            residual = x
            h = self._rms(x, w["input_layernorm.weight"])
            qs = F.linear(h, w["self_attn.q_proj.weight"], w["self_attn.q_proj.bias"]).view(b, q, -1, s.head_dim).transpose(1, 2)
            ks = F.linear(h, w["self_attn.k_proj.weight"], w["self_attn.k_proj.bias"]).view(b, q, -1, s.head_dim).transpose(1, 2)
            vs = F.linear(h, w["self_attn.v_proj.weight"], w["self_attn.v_proj.bias"]).view(b, q, -1, s.head_dim).transpose(1, 2)
            qs = qs * cos + _rotate_half(qs) * sin
            ks = ks * cos + _rotate_half(ks) * sin
            if past:
                ks = torch.cat([past[i][0], ks], dim=-2)
                vs = torch.cat([past[i][1], vs], dim=-2)
            present.append((ks, vs))
            attn = self._attention(qs, ks, vs, mask, causal=not past and q > 1)
            x = residual + F.linear(attn.transpose(1, 2).reshape(b, q, -1), w["self_attn.o_proj.weight"])
            residual = x
            h = self._rms(x, w["post_attention_layernorm.weight"])
            h = F.linear(F.silu(F.linear(h, w["mlp.gate_proj.weight"])) * F.linear(h, w["mlp.up_proj.weight"]),
                         w["mlp.down_proj.weight"])
            x = residual + h
        return self._rms(x, self.norm), present

    def _attention(self, qs: Any, ks: Any, vs: Any, mask: Any, causal: bool) -> Any:
        import torch.nn.functional as F

        kwargs: dict[str, Any] = {}
        if self.groups > 1:
            if mask is None and ks.shape[-1] <= 256:  # sdpa_attention.use_gqa_in_sdpa on the CPU
                kwargs["enable_gqa"] = True
            elif qs.shape[2] == 1:  # pack_gqa: one query token
                b, h, _, d = qs.shape
                out = F.scaled_dot_product_attention(qs.reshape(b, h // self.groups, self.groups, d), ks, vs,
                                                     attn_mask=mask, dropout_p=0.0, scale=self.scaling, is_causal=False)
                return out.reshape(b, -1, 1, vs.shape[-1])
            else:
                ks, vs = _repeat_kv(ks, self.groups), _repeat_kv(vs, self.groups)
        return F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, dropout_p=0.0, scale=self.scaling,
                                              is_causal=causal, **kwargs)


class _Output:
    def __init__(self, logits: Any):
        self.logits = logits


def _rotate_half(x: Any) -> Any:
    import torch

    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _repeat_kv(x: Any, n: int) -> Any:
    b, h, s, d = x.shape
    return x[:, :, None, :, :].expand(b, h, n, s, d).reshape(b, h * n, s, d)


def load_native(model_dir: str | Path, precision: str = "auto", device: str = "auto") -> tuple[NativeQwen2 | None, str | None]:
    """(the model, None) when ``model_dir`` is a plain Qwen2 safetensors checkpoint this module runs
    exactly on this device, else (None, why not). Weights are read once, straight from the files."""
    model_dir = Path(model_dir)
    if not enabled():
        return None, f"{ENV_NATIVE}={os.environ.get(ENV_NATIVE)}"
    if (model_dir / "adapter_config.json").exists():
        return None, "a LoRA adapter (merged by transformers/peft)"
    try:
        cfg = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return None, f"config.json: {exc}"
    why = unsupported(cfg)
    if why:
        return None, why
    from ..models.loading import resolve_device, torch_dtype

    device = resolve_device(device)
    if device != "cpu":
        return None, f"device {device} (this path is verified on the CPU only)"
    files = _weight_files(model_dir)
    if not files:
        return None, "no safetensors weights"
    from safetensors import safe_open

    spec = _Spec(cfg)
    expected = _expected_shapes(spec)
    wanted = torch_dtype(precision, device)
    weights: dict[str, Any] = {}
    for f in files:
        with safe_open(str(f), framework="pt", device="cpu") as fh:
            for name in fh.keys():
                if name not in expected:
                    return None, f"weight {name} is not one of Qwen2's"
                t = fh.get_tensor(name)
                if tuple(t.shape) != expected[name]:
                    return None, f"weight {name} has shape {tuple(t.shape)}, config.json says {expected[name]}"
                weights[name] = t.to(dtype=wanted) if t.is_floating_point() else t
    missing = sorted(set(expected) - set(weights))
    if missing:
        return None, f"weights missing: {', '.join(missing[:3])}{' …' if len(missing) > 3 else ''}"
    return NativeQwen2(spec, weights, cfg), None
