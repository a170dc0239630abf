"""Model families as users download them, brought into the layout every stage runs natively.

    from devops_workloads.models import prepare_model_dir
    path = prepare_model_dir(path)      # a Qwen-1 folder → its converted Qwen2 copy; others unchanged

``qwen1``: first-generation Qwen (the seed's DevOps-Model checkpoints: remote code + tiktoken),
converted exactly to ``Qwen2ForCausalLM`` + a Hugging Face ``tokenizers`` tokenizer, once, cached.
"""

from __future__ import annotations

from pathlib import Path

from .qwen1 import ConversionError, convert_qwen1, is_qwen1, prepare_model_dir

__all__ = ["ConversionError", "convert_qwen1", "is_qwen1", "prepare_model_dir", "Path"]
