"""Build a tiny Qwen2-architecture causal LM and tokenizer offline, for tests and the quickstart.

    devops-model dev tiny-model --out /tmp/tiny                  # real Qwen tokenizer (151k vocab)
    devops-model dev tiny-model --out /tmp/tiny-bpe --tokenizer bpe   # small byte-level BPE, faster

No hub is reachable on the machines this runs on, so nothing is downloaded:

* ``qwen`` takes the real Qwen tokenizer (the 151k byte-level BPE vocabulary of Qwen2/2.5/3, Apache-2.0),
  vendored compressed in ``devops_workloads/qwen_tokenizer/`` (provenance and sha256 in its README) and
  decompressed once into ``~/.cache/devops-model/qwen-tokenizer/``, with a chatml chat template.
* ``bpe`` trains a byte-level BPE (vocabulary 2,048) on the bundled sample data, with the chatml
  special tokens ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``.

The model is a ``Qwen2ForCausalLM`` with random weights from a fixed seed: hidden size 128 (a
multiple of the GPTQ group size 128), 2 layers, 4 attention heads of 32, 2 key/value heads,
MLP 384 (= 3 × 128, so down_proj's input also splits into whole groups of 128).

Fixtures like real models (``--like``), so that conventions are tested, not assumed:

    devops-model dev tiny-model --out /tmp/q25 --like qwen2.5-base       # eos <|endoftext|>, greedy
    devops-model dev tiny-model --out /tmp/q25i --like qwen2.5-instruct  # eos <|im_end|>, sampling
    devops-model dev tiny-model --out /tmp/q1c --like qwen1-chat         # a Qwen-1 folder, remote code

* ``qwen2.5-base`` / ``qwen2.5-instruct``: the real vocabulary with Qwen2.5's 22 added tokens
  (151643–151664), its chat template (tools, default system prompt "You are Qwen, created by
  Alibaba Cloud. …"), eos, pad and generation config as Qwen2.5-7B / Qwen2.5-7B-Instruct ship them.
* ``qwen1-base`` / ``qwen1-chat``: a first-generation Qwen folder as downloaded (remote code,
  ``qwen.tiktoken``, Qwen-7B(-Chat)'s generation config), drawn by Qwen-1's released code in the
  reference environment (``models/reference_env.py``); every stage converts it on load.
"""

from __future__ import annotations

import json
import lzma
import os
import shutil
import tempfile
from pathlib import Path

from devops_model.conventions import CHATML_TEMPLATE  # noqa: E402  (the seed's chatml, one home)
from devops_model.digests import file_sha256

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LIKE = ("qwen2.5-base", "qwen2.5-instruct", "qwen1-base", "qwen1-chat")

#: Qwen2.5's chat template (tokenizer_config.json of Qwen2.5-7B and Qwen2.5-7B-Instruct).
QWEN25_TEMPLATE = (
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n    {%- endif %}\n"
    "    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n"
    "    {%- endif %}\n{%- endif %}\n{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"
)
QWEN25_SPECIAL = ["<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
                  "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
#: generation_config.json of Qwen2.5-7B and Qwen2.5-7B-Instruct.
QWEN25_GENERATION = {
    "qwen2.5-base": dict(bos_token_id=151643, do_sample=False, eos_token_id=151643, max_new_tokens=2048),
    "qwen2.5-instruct": dict(bos_token_id=151643, pad_token_id=151643, do_sample=True, eos_token_id=[151645, 151643],
                             repetition_penalty=1.05, temperature=0.7, top_p=0.8, top_k=20),
}

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


#: The vendored Qwen tokenizer (qwen_tokenizer/README.md): tokenizer.json, as decompressed from tokenizer.json.xz.
QWEN_TOKENIZER_DIR = Path(__file__).parent / "qwen_tokenizer"
QWEN_TOKENIZER_SHA256 = "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4"


def qwen_tokenizer_cache() -> Path:
    """Where the vendored tokenizer is decompressed: ~/.cache/devops-model/qwen-tokenizer/<sha256 prefix>."""
    return Path.home() / ".cache" / "devops-model" / "qwen-tokenizer" / QWEN_TOKENIZER_SHA256[:16]


def qwen_tokenizer_dir() -> Path:
    """Folder holding the real Qwen ``tokenizer.json`` (and ``tokenizer_config.json``).

    Decompressed from the vendored ``qwen_tokenizer/tokenizer.json.xz`` on first use and checked
    against its sha256 on every use: a partial or altered cache file is written again.
    """
    d = qwen_tokenizer_cache()
    target = d / "tokenizer.json"
    if target.is_file() and file_sha256(target) == QWEN_TOKENIZER_SHA256:
        return d
    source = QWEN_TOKENIZER_DIR / "tokenizer.json.xz"
    if not source.is_file():
        raise RuntimeError(f"{source} is missing: the package was installed without its data files "
                           "(reinstall devops-model, or use --tokenizer bpe)")
    d.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tokenizer.json.")  # same folder: the rename is atomic
    try:
        with os.fdopen(fd, "wb") as out, lzma.open(source) as xz:
            shutil.copyfileobj(xz, out, 1 << 20)
        got = file_sha256(tmp)
        if got != QWEN_TOKENIZER_SHA256:
            raise RuntimeError(f"{source} decompresses to sha256 {got}, expected {QWEN_TOKENIZER_SHA256} "
                               "(a damaged install: reinstall devops-model)")
        shutil.copyfile(QWEN_TOKENIZER_DIR / "tokenizer_config.json", d / "tokenizer_config.json")
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide it from other users of a shared cache
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
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


def build_qwen25_tokenizer(like: str):
    """The real vocabulary with Qwen2.5's added tokens, template, eos and pad (``--like qwen2.5-…``)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    data = json.loads((qwen_tokenizer_dir() / "tokenizer.json").read_text(encoding="utf-8"))
    data["added_tokens"] = [t for t in data["added_tokens"] if t["id"] <= 151664]  # Qwen2.5: 151643–151664
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(data)),
        bos_token=None, unk_token=None, pad_token="<|endoftext|>",
        eos_token="<|endoftext|>" if like == "qwen2.5-base" else "<|im_end|>",
        additional_special_tokens=QWEN25_SPECIAL, model_max_length=131072, clean_up_tokenization_spaces=False,
    )
    tok.chat_template = QWEN25_TEMPLATE
    return tok


def build_tiny_model(out: str | Path, tokenizer: str = "qwen", seed: int = 0, like: str | None = None,
                     initializer_range: float | None = None) -> Path:
    """Write a tiny Qwen2 model + tokenizer to ``out`` and return the path (``like``: see the docstring).

    ``initializer_range``: the standard deviation of the random weights (Qwen2's default 0.02). The
    quickstart uses 0.1: with width 128 and tied embeddings of std 0.02 a logit can rise only about
    2.6 above the rest (|h| ≈ √128 after the final norm, |e| ≈ 0.02·√128), too little to single out
    one of 151,936 tokens, and LoRA cannot change the embeddings or the norm to fix that."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out = Path(out)
    if like is not None and like not in LIKE:
        raise ValueError(f"--like must be one of {', '.join(LIKE)} (got {like!r})")
    if like in ("qwen1-base", "qwen1-chat"):
        return build_tiny_qwen1(out, like.split("-")[1], seed)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_qwen25_tokenizer(like) if like else build_tokenizer(tokenizer)
    vocab = len(tok)
    vocab_padded = (vocab + 127) // 128 * 128  # like Qwen's padded embedding tables
    config = Qwen2Config(
        vocab_size=vocab_padded,
        bos_token_id=151643 if like else None,
        eos_token_id=tok.convert_tokens_to_ids(tok.eos_token if like else "<|im_end|>"),
        pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        **TINY_CONFIG,
        **({"initializer_range": initializer_range} if initializer_range is not None else {}),
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    if like:
        model.generation_config = GenerationConfig(**QWEN25_GENERATION[like])
    else:
        model.generation_config = GenerationConfig(
            eos_token_id=[config.eos_token_id, tok.convert_tokens_to_ids("<|endoftext|>")],
            pad_token_id=config.pad_token_id,
            do_sample=False,
            max_new_tokens=32,
        )
    model.save_pretrained(out, safe_serialization=True)
    if like:
        from .conventions import save_tokenizer

        save_tokenizer(tok, out, tokenizer_class="Qwen2Tokenizer")
    else:
        tok.save_pretrained(out)
    (out / "tiny-model.json").write_text(json.dumps({"tokenizer": tokenizer, "seed": seed, "like": like, **TINY_CONFIG,
                                                        "initializer_range": config.initializer_range}, indent=2))
    return out


def build_tiny_qwen1(out: Path, kind: str = "chat", seed: int = 0, stop_query: str | None = None) -> Path:
    """A tiny first-generation Qwen folder as downloaded, drawn by Qwen-1's released code
    (``stop_query``: greedy chat on it ends with <|im_end|> after 3 tokens, for stop tests)."""
    from .models.reference_env import run_reference, seed_qwen1_code

    run_reference(["build", str(out), "--code", str(seed_qwen1_code()), "--kind", kind, "--seed", str(seed)]
                  + (["--stop-query", stop_query] if stop_query else []))
    return out
