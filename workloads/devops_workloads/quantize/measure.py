"""What quantization bought and cost: checkpoint sizes, bytes of the quantized linear layers, perplexity.

Sizes are read from the safetensors headers (dtype × shape per tensor), so no weights are loaded.
A GPTQ layer ``…q_proj`` is stored as ``q_proj.qweight`` (int32, 32/bits weights each),
``q_proj.qzeros``, ``q_proj.scales`` (fp16, one per group and output) and ``q_proj.g_idx``; its
original is ``q_proj.weight``. For a 128×128 layer at 4 bits and group 128: 8,192 + 64 + 256 + 512 bytes
against 65,536 in fp32 (32,768 in bf16).

Perplexity is exp(mean token negative log-likelihood) over the held-out texts, concatenated and cut
into windows of ``window`` tokens, the same for both models.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any, Sequence

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
#: Tensors a GPTQ linear layer is stored as.
GPTQ_PARTS = ("qweight", "qzeros", "scales", "g_idx")


def safetensors_header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    header.pop("__metadata__", None)
    return header


def tensor_bytes(model_dir: Path) -> dict[str, int]:
    """Bytes of every tensor in the checkpoint, by name."""
    out: dict[str, int] = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        for name, meta in safetensors_header(f).items():
            start, end = meta["data_offsets"]
            out[name] = end - start
    return out


def checkpoint_bytes(model_dir: Path) -> int:
    """Bytes of the weight files (safetensors, or pytorch .bin)."""
    files = list(Path(model_dir).glob("*.safetensors")) or list(Path(model_dir).glob("*.bin"))
    return sum(f.stat().st_size for f in files)


def quantized_modules(quant_dir: Path) -> list[str]:
    """Names of the linear layers stored in GPTQ form (``…self_attn.q_proj``)."""
    return sorted(n[: -len(".qweight")] for n in tensor_bytes(quant_dir) if n.endswith(".qweight"))


def linear_bytes(original_dir: Path, quant_dir: Path) -> tuple[int, int, int]:
    """(bytes before, bytes after, layer count) of exactly the layers that were quantized."""
    before_t = tensor_bytes(original_dir)
    after_t = tensor_bytes(quant_dir)
    modules = quantized_modules(quant_dir)
    before = sum(before_t.get(f"{m}.weight", 0) for m in modules)
    after = sum(after_t.get(f"{m}.{p}", 0) for m in modules for p in GPTQ_PARTS)
    return before, after, len(modules)


def perplexity(model: Any, tokenizer: Any, texts: Sequence[str], window: int = 512, max_tokens: int = 16384) -> float:
    """exp(mean NLL) of ``texts`` (joined by EOS, at most ``max_tokens`` tokens) in windows of ``window``."""
    import torch

    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for t in texts:
        ids.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
        if len(ids) >= max_tokens:
            break
    ids = ids[:max_tokens]
    if len(ids) < 2:
        raise ValueError("perplexity needs at least 2 tokens of held-out text")
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(ids) - 1, window):
            chunk = torch.tensor([ids[start:start + window + 1]], device=device)
            if chunk.shape[1] < 2:
                break
            logits = model(input_ids=chunk[:, :-1]).logits.float()
            loss = torch.nn.functional.cross_entropy(logits[0], chunk[0, 1:], reduction="sum")
            nll += float(loss)
            count += chunk.shape[1] - 1
    return math.exp(nll / count)


def load_for_eval(model_dir: Path, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """The model as users load it: ``AutoModelForCausalLM`` (GPTQ through optimum + gptqmodel)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device_map = "cuda:0" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), device_map=device_map,
                                                 trust_remote_code=trust_remote_code)
    model.eval()
    tok = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    return model, tok
