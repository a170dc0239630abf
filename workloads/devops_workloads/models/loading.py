"""One model loader for evaluation and serving: a folder as the runs leave it — plain, a LoRA adapter
(merged into its base on load, as the seed's export_model.py does), GPTQ int4, or first-generation
Qwen (its converted copy) — with one dtype rule.

    model, tokenizer = load_causal_lm(path, device="auto", dtype="auto")

dtype: ``auto`` is bfloat16 on GPU (as the seed's Qwen ran) and float32 on CPU (bf16 matmuls there
are slow and inexact); ``bf16``/``fp16``/``fp32`` or the torch names choose one. GPTQ models compute
in float16 on GPU and float32 on CPU (the CPU kernels dequantize). Training loads its own way
(fp32 master weights for full/freeze, the compute dtype for a LoRA base: train/entry.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: The precision names of the API (EvalRun.spec.precision) and the torch names the CLI takes.
DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32",
               "bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}


def resolve_device(device: str = "auto") -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def torch_dtype(name: str, device: str) -> Any:
    import torch

    if name == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    if name not in DTYPE_NAMES:
        raise ValueError(f"precision must be auto, {', '.join(DTYPE_NAMES)} (got {name!r})")
    return getattr(torch, DTYPE_NAMES[name])


def _adapter_base(model_dir: Path) -> str | None:
    """The base model of a LoRA adapter folder (adapter_config.json without config.json), else None."""
    adapter_cfg = model_dir / "adapter_config.json"
    if adapter_cfg.exists() and not (model_dir / "config.json").exists():
        return str(json.loads(adapter_cfg.read_text())["base_model_name_or_path"])
    return None


def tokenizer_source(model_dir: str | Path) -> str:
    """Where the tokenizer of a (prepared) model folder is read from: the folder itself, or for an
    adapter without its own tokenizer files its base model (a folder or a hub name)."""
    model_dir = Path(model_dir)
    base = _adapter_base(model_dir)
    if base is not None and not (model_dir / "tokenizer_config.json").exists():
        return base
    return str(model_dir)


def load_tokenizer(model_dir: str | Path, *, trust_remote_code: bool = False) -> Any:
    """The tokenizer :func:`load_causal_lm` returns, alone (``model_dir`` already prepared: a
    Qwen-1 folder's converted copy)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_source(model_dir), trust_remote_code=trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(model_dir: str | Path, *, device: str = "auto", dtype: str = "auto",
                   trust_remote_code: bool = False, tokenizer: bool = True) -> tuple[Any, Any]:
    """(model in eval mode on ``device``, tokenizer with a pad token; None with ``tokenizer=False``)."""
    from transformers import AutoModelForCausalLM

    from . import prepare_model_dir

    model_dir = prepare_model_dir(Path(model_dir))  # first-generation Qwen: its converted copy
    device = resolve_device(device)
    wanted = torch_dtype(dtype, device)
    tok = load_tokenizer(model_dir, trust_remote_code=trust_remote_code) if tokenizer else None
    base_path = _adapter_base(model_dir)
    if base_path is not None:
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(base_path, dtype=wanted, trust_remote_code=trust_remote_code)
        model = PeftModel.from_pretrained(base, str(model_dir)).merge_and_unload()
        if (model_dir / "generation_config.json").exists():  # the run's stop ids (conventions.py), not the base's
            from transformers import GenerationConfig

            model.generation_config = GenerationConfig.from_pretrained(str(model_dir))
    else:
        import torch

        config = json.loads((model_dir / "config.json").read_text()) if (model_dir / "config.json").exists() else {}
        kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "dtype": wanted}
        if (config.get("quantization_config") or {}).get("quant_method") == "gptq":
            from ..gptq_ops import seed_prebuilt_ops
            from ..quiet import quiet_gptqmodel

            quiet_gptqmodel()  # transformers imports gptqmodel (through optimum) for this checkpoint
            seed_prebuilt_ops()  # the image's compiled CPU kernels: a server must not compile them at start
            kwargs["dtype"] = torch.float16 if device == "cuda" else torch.float32
            kwargs["device_map"] = device
        model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    if getattr(model, "hf_device_map", None) is None:
        model.to(device)
    model.eval()
    return model, tok
