"""First-generation Qwen (the seed's DevOps-Model checkpoints) converted exactly to the Qwen2 layout.

    devops-model convert --model /models/CodeFuse-DevOps-Model-7B-Chat            # once, explicitly
    devops-model convert --model DIR --out DIR2                                   # to a chosen folder
    path = prepare_model_dir(path)   # what every stage does on load: converted once, then cached

A Qwen-1 folder (``config.json``: ``model_type: qwen``, ``auto_map`` → ``modeling_qwen``) ships
remote code written for transformers 4.32 and a tiktoken vocabulary. The architecture is the one
``Qwen2ForCausalLM`` runs natively, so its weights are renamed, never recomputed:

================================  ===========================================================
Qwen-1 (``modeling_qwen.py``)     Qwen2 (transformers, vLLM, TGI, GPTQModel)
================================  ===========================================================
``transformer.wte``               ``model.embed_tokens``
``h.N.ln_1`` / ``h.N.ln_2``       ``layers.N.input_layernorm`` / ``post_attention_layernorm``
``h.N.attn.c_attn`` (+bias)       ``q_proj`` / ``k_proj`` / ``v_proj`` (+bias): rows split in 3
``h.N.attn.c_proj``               ``self_attn.o_proj`` (no bias: ``no_bias: true``)
``h.N.mlp.w2``                    ``mlp.gate_proj``  (QWenMLP: ``c_proj(w1(x) * silu(w2(x)))``)
``h.N.mlp.w1``                    ``mlp.up_proj``
``h.N.mlp.c_proj``                ``mlp.down_proj``
``transformer.ln_f``, lm_head     ``model.norm``, ``lm_head`` (untied)
``rotary_emb_base``, eps          ``rope_theta``, ``rms_norm_eps``; ``intermediate_size / 2``
================================  ===========================================================

The tokenizer: the 151,643 tiktoken ranks become a byte-level BPE in Hugging Face ``tokenizers``
(merges ordered by the rank of their result, whole pieces taken directly as tiktoken does), with
Qwen-1's pre-tokenizer regex ``PAT_STR``, NFC normalisation and the special tokens at their
fixed ids (``<|endoftext|>`` 151643, ``<|im_start|>`` 151644, ``<|im_end|>`` 151645,
``<|extra_0|>``…``<|extra_204|>``); the chat template is chatml with Qwen-1's default system
prompt (the text ``make_context`` builds); the generation config keeps Qwen-1's sampling values and
its stop words (``<|im_end|>``, ``<|im_start|>`` for chatml) as eos ids.

Not carried over (documented; checked): ``use_dynamic_ntk`` and ``use_logn_attn`` change Qwen-1's
outputs only past ``seq_length`` tokens. The converted config sets ``max_position_embeddings`` to
``seq_length``, so every stage refuses (serving) or warns (training, evaluation) instead of going
there. Remote-code options without a Qwen2 counterpart (``rotary_pct`` < 1, MLP biases, a
``kv_channels`` that is not ``hidden_size / heads``, KV-cache quantization) are refused with the
field named. Special tokens typed in user text are not escaped (Qwen-1's ``make_context`` encodes
message text with ``allowed_special=set()``): the converted tokenizer reads them as tokens, like
every Qwen2 tokenizer.

The converted folder is cached next to the download (``<folder>.qwen2-<fingerprint>``, or under
``$DEVOPS_MODEL_CACHE/converted/`` when that is read-only) with ``conversion.json``: the source,
the sha256 of every source and output file, what was not carried over. It is reused while the
source's files (names, sizes, modification times) are unchanged.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from devops_model.contract import ExitCode, Reason
from devops_model.digests import file_sha256

from ..runner import WorkloadError

#: Bump when the converted output changes (cached conversions with another version are redone).
CONVERTER_VERSION = "qwen1-to-qwen2/1"

#: Qwen-1's pre-tokenizer regex (``tokenization_qwen.PAT_STR``): digits one by one.
PAT_STR = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_START_ID = 151643
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END) + tuple(f"<|extra_{i}|>" for i in range(205))
SPECIAL_IDS = {t: SPECIAL_START_ID + i for i, t in enumerate(SPECIAL_TOKENS)}
#: Qwen-1's ``make_context`` default system prompt (``model.chat(..., system=...)``).
QWEN1_SYSTEM = "You are a helpful assistant."
#: Qwen-1-Chat's published history window (``generation_config.max_window_size``).
DEFAULT_MAX_WINDOW = 6144

NOT_CARRIED_OVER = (
    "use_dynamic_ntk: Qwen-1 stretches the rotary base (dynamic NTK) for inputs past seq_length",
    "use_logn_attn: Qwen-1 scales queries by log(position, seq_length) past seq_length",
)

WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_SINGLES = ("model.safetensors", "pytorch_model.bin")


class ConversionError(WorkloadError):
    """A Qwen-1 folder that cannot be converted exactly; names the file/field and the fix."""

    def __init__(self, message: str):
        super().__init__(message, reason=Reason.BAD_MODEL, exit_code=ExitCode.BAD_INPUT)


def _say(msg: str) -> None:
    if os.environ.get("RANK", "0") == "0":
        print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------- detection

def read_config(path: Path) -> dict[str, Any]:
    f = Path(path) / "config.json"
    if not f.is_file():
        return {}
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def is_qwen1(path: str | Path) -> bool:
    """True for a first-generation Qwen folder (``model_type: qwen`` / ``QWenLMHeadModel``)."""
    cfg = read_config(Path(path))
    return cfg.get("model_type") == "qwen" or "QWenLMHeadModel" in (cfg.get("architectures") or [])


def check_supported(cfg: dict[str, Any], where: str = "config.json") -> None:
    """Refuse the remote-code options that have no exact Qwen2 counterpart."""
    hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    problems = []
    if float(cfg.get("rotary_pct", 1.0)) != 1.0:
        problems.append(f"rotary_pct is {cfg['rotary_pct']} (Qwen2 rotates whole heads: 1.0)")
    if not cfg.get("no_bias", True):
        problems.append("no_bias is false (Qwen2's MLP and o_proj have no bias)")
    if int(cfg.get("kv_channels", hidden // heads)) * heads != hidden:
        problems.append(f"kv_channels × num_attention_heads is {cfg.get('kv_channels')} × {heads}, not hidden_size {hidden}")
    if cfg.get("use_cache_quantization"):
        problems.append("use_cache_quantization is true (set it to false: it only changes the KV cache at run time)")
    if int(cfg.get("intermediate_size", 2)) % 2:
        problems.append(f"intermediate_size {cfg['intermediate_size']} is odd (QWenMLP halves it)")
    if problems:
        raise ConversionError(f"{where}: this Qwen-1 model cannot be converted exactly to the Qwen2 layout: "
                              + "; ".join(problems))


def fingerprint(src: Path) -> str:
    """Cheap identity of a source folder: names, sizes and modification times of the files the
    conversion reads (top level; the remote code and hidden files do not count)."""
    h = hashlib.sha256(CONVERTER_VERSION.encode())
    for p in sorted(src.iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.suffix != ".py":
            st = p.stat()
            h.update(f"{p.relative_to(src)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()



# ---------------------------------------------------------------------------------------- weights

def map_tensor(name: str, tensor, cfg: dict[str, Any]) -> list[tuple[str, Any]]:
    """Qwen2 (name, tensor) pairs for one Qwen-1 tensor (see the table in the module docstring)."""
    if name.endswith("rotary_emb.inv_freq"):
        return []  # a buffer recomputed from rope_theta
    if name == "transformer.wte.weight":
        return [("model.embed_tokens.weight", tensor)]
    if name == "transformer.ln_f.weight":
        return [("model.norm.weight", tensor)]
    if name == "lm_head.weight":
        return [("lm_head.weight", tensor)]
    parts = name.split(".")
    if len(parts) >= 5 and parts[0] == "transformer" and parts[1] == "h":
        layer, rest = parts[2], ".".join(parts[3:])
        pre = f"model.layers.{layer}."
        simple = {
            "ln_1.weight": "input_layernorm.weight",
            "ln_2.weight": "post_attention_layernorm.weight",
            "attn.c_proj.weight": "self_attn.o_proj.weight",
            "mlp.w1.weight": "mlp.up_proj.weight",      # a1 = w1(x): the linear branch
            "mlp.w2.weight": "mlp.gate_proj.weight",    # silu(w2(x)): the gated branch
            "mlp.c_proj.weight": "mlp.down_proj.weight",
        }
        if rest in simple:
            return [(pre + simple[rest], tensor)]
        if rest in ("attn.c_attn.weight", "attn.c_attn.bias"):
            kind = rest.rsplit(".", 1)[1]
            size = int(cfg.get("kv_channels", cfg["hidden_size"] // cfg["num_attention_heads"])) * int(cfg["num_attention_heads"])
            if tensor.shape[0] != 3 * size:
                raise ConversionError(f"{name}: {tuple(tensor.shape)} rows, expected 3 × {size} (query, key, value)")
            q, k, v = tensor.split(size, dim=0)  # modeling_qwen: mixed_x_layer.split(split_size, dim=2)
            return [(f"{pre}self_attn.{p}_proj.{kind}", t.contiguous()) for p, t in (("q", q), ("k", k), ("v", v))]
    raise ConversionError(f"{name}: a tensor this converter does not know; the folder is not a plain Qwen-1 "
                          "checkpoint (QWenLMHeadModel)")


def _weight_files(src: Path) -> list[Path]:
    for index in WEIGHT_INDEXES:
        if (src / index).is_file():
            files = sorted(set(json.loads((src / index).read_text())["weight_map"].values()))
            missing = [f for f in files if not (src / f).is_file()]
            if missing:
                raise ConversionError(f"{src / index} names {missing[0]}, which is not in the folder; the download "
                                      "is incomplete: download the model again")
            return [src / f for f in files]
    for single in WEIGHT_SINGLES:
        if (src / single).is_file():
            return [src / single]
    raise ConversionError(f"{src}: no weights (model.safetensors[.index.json] or pytorch_model.bin[.index.json])")


def _load_tensors(path: Path) -> dict[str, Any]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    return torch.load(str(path), map_location="cpu", weights_only=True)


def convert_weights(src: Path, dst: Path, cfg: dict[str, Any], progress: Callable[[str], None] = _say) -> str:
    """Write the Qwen2 weights shard by shard (as large as the source's); returns the dtype name."""
    from safetensors.torch import save_file

    files = _weight_files(src)
    weight_map: dict[str, str] = {}
    total = 0
    dtype = None
    for i, f in enumerate(files, 1):
        progress(f"  converting weights {i}/{len(files)}: {f.name}")
        out_name = "model.safetensors" if len(files) == 1 else f"model-{i:05d}-of-{len(files):05d}.safetensors"
        tensors: dict[str, Any] = {}
        for name, t in _load_tensors(f).items():
            for new, nt in map_tensor(name, t, cfg):
                tensors[new] = nt
                weight_map[new] = out_name
                total += nt.numel() * nt.element_size()
                if dtype is None and nt.is_floating_point():
                    dtype = str(nt.dtype).replace("torch.", "")
        save_file(tensors, str(dst / out_name), metadata={"format": "pt"})
    layers = int(cfg["num_hidden_layers"])
    expected = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"} | {
        f"model.layers.{n}.{p}" for n in range(layers) for p in (
            "input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.o_proj.weight",
            "mlp.up_proj.weight", "mlp.gate_proj.weight", "mlp.down_proj.weight",
            *(f"self_attn.{x}_proj.{k}" for x in "qkv" for k in ("weight", "bias")))}
    if cfg.get("tie_word_embeddings"):
        expected.discard("lm_head.weight")
    missing = sorted(expected - set(weight_map))
    if missing:
        raise ConversionError(f"{src}: the weights lack {missing[0]} (and {len(missing) - 1} more); the download is incomplete")
    if len(files) > 1:
        (dst / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2))
    return dtype or "bfloat16"


# ---------------------------------------------------------------------------------------- tokenizer

def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character map (what byte-level BPE vocabularies use)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def load_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """``qwen.tiktoken``: one ``base64(token) rank`` per line (tokenization_qwen._load_tiktoken_bpe)."""
    ranks = {}
    for n, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line:
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
        except ValueError:
            raise ConversionError(f"{path}:{n}: expected 'base64-token rank'") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ConversionError(f"{path}: ranks are not 0..{len(ranks) - 1} without gaps; an extra vocabulary "
                              "(extra_vocab_file) is not supported")
    return ranks


def vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level vocabulary and merges reproducing tiktoken's BPE.

    tiktoken merges, again and again, the adjacent pair whose concatenation has the lowest rank. A
    pair is mergeable there exactly when its concatenation is a token; here every split of every
    token into two tokens is a merge, ordered by the rank of the result, so the same pair wins."""
    enc = _bytes_to_unicode()

    def s(b: bytes) -> str:
        return "".join(enc[x] for x in b)

    vocab = {s(tok): rank for tok, rank in ranks.items()}
    merges = []
    for tok, rank in ranks.items():
        for i in range(1, len(tok)):
            left, right = tok[:i], tok[i:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], left, right))
    merges.sort(key=lambda m: m[:3])
    return vocab, [(s(m[3]), s(m[4])) for m in merges]


def build_tokenizer(tiktoken_file: Path, *, eos: str = ENDOFTEXT, chat_template: str | None = None,
                    model_max_length: int = 8192):
    """A ``PreTrainedTokenizerFast`` whose ids equal Qwen-1's ``QWenTokenizer`` (allowed_special="all")."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    ranks = load_tiktoken_ranks(tiktoken_file)
    if len(ranks) != SPECIAL_START_ID:
        raise ConversionError(f"{tiktoken_file}: {len(ranks)} ranks; Qwen-1's special tokens start at {SPECIAL_START_ID}")
    vocab, merges = vocab_and_merges(ranks)
    # ignore_merges: a piece that is itself a token is taken whole, as tiktoken's encoder does first
    bpe = Tokenizer(models.BPE(vocab, merges, fuse_unk=False, ignore_merges=True))
    bpe.normalizer = normalizers.NFC()  # QWenTokenizer.tokenize: unicodedata.normalize("NFC", text)
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PAT_STR), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    bpe.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    for t, i in (ENDOFTEXT, SPECIAL_START_ID), (SPECIAL_TOKENS[-1], SPECIAL_START_ID + len(SPECIAL_TOKENS) - 1):
        if bpe.token_to_id(t) != i:
            raise ConversionError(f"{tiktoken_file}: {t} got id {bpe.token_to_id(t)}, expected {i}")
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=eos, pad_token=ENDOFTEXT, unk_token=None,
                                  bos_token=None, model_max_length=model_max_length, clean_up_tokenization_spaces=False)
    if chat_template:
        tok.chat_template = chat_template
    return tok


# ---------------------------------------------------------------------------------------- config

def qwen2_config(cfg: dict[str, Any], dtype: str, eos_id: int):
    from transformers import Qwen2Config

    heads = int(cfg["num_attention_heads"])
    return Qwen2Config(
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=int(cfg["hidden_size"]),
        intermediate_size=int(cfg["intermediate_size"]) // 2,  # QWenMLP: w1/w2 are intermediate_size // 2 wide
        num_hidden_layers=int(cfg["num_hidden_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=heads,  # Qwen-1 has no grouped-query attention
        hidden_act="silu",
        max_position_embeddings=int(cfg.get("seq_length") or cfg.get("max_position_embeddings") or 2048),
        rope_theta=float(cfg.get("rotary_emb_base", 10000)),
        rms_norm_eps=float(cfg.get("layer_norm_epsilon", 1e-6)),
        initializer_range=float(cfg.get("initializer_range", 0.02)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        attention_dropout=float(cfg.get("attn_dropout_prob", 0.0)),
        use_sliding_window=False,
        use_cache=True,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=SPECIAL_IDS[ENDOFTEXT],
        dtype=dtype,
    )


def generation_config(src: Path) -> tuple[dict[str, Any], str]:
    """Qwen2-style generation config from Qwen-1's (sampling kept, stop words as eos ids), and its chat format."""
    g = {}
    if (src / "generation_config.json").is_file():
        g = json.loads((src / "generation_config.json").read_text(encoding="utf-8"))
    chat_format = g.get("chat_format", "chatml")
    eod = SPECIAL_IDS[ENDOFTEXT]
    # qwen_generation_utils.get_stop_words_ids: chatml stops at <|im_end|> and <|im_start|>; every
    # format stops at <|endoftext|>. <|im_end|> also ends "raw" generation: the seed's training
    # fix-up made it the document separator of continued pretraining (SEED_SPEC §1c).
    eos = ([SPECIAL_IDS[IM_END], SPECIAL_IDS[IM_START], eod] if chat_format == "chatml"
           else [eod, SPECIAL_IDS[IM_END]])
    out: dict[str, Any] = {"eos_token_id": eos, "pad_token_id": eod, "bos_token_id": None}
    for key in ("do_sample", "top_p", "temperature", "repetition_penalty", "max_new_tokens"):
        if g.get(key) is not None:
            out[key] = g[key]
    if g.get("top_k"):  # Qwen-1 writes top_k 0 for "off"
        out["top_k"] = g["top_k"]
    out["max_window_size"] = int(g.get("max_window_size") or DEFAULT_MAX_WINDOW)
    out["chat_format"] = chat_format
    return out, chat_format


# ---------------------------------------------------------------------------------------- conversion

def convert_qwen1(src: str | Path, dst: str | Path, *, progress: Callable[[str], None] = _say) -> Path:
    """Convert the Qwen-1 folder ``src`` into ``dst`` (which must not exist); returns ``dst``."""
    from ..conventions import CHATML_TEMPLATE, save_tokenizer

    src, dst = Path(src), Path(dst)
    cfg = read_config(src)
    if not is_qwen1(src):
        raise ConversionError(f"{src / 'config.json'}: not a Qwen-1 model (model_type is {cfg.get('model_type')!r}, "
                              "expected 'qwen'); Qwen2-family folders need no conversion")
    check_supported(cfg, str(src / "config.json"))
    tik = src / "qwen.tiktoken"
    if not tik.is_file():
        raise ConversionError(f"{tik} is missing: a Qwen-1 folder carries its vocabulary there; download the whole folder")
    t0 = time.time()
    progress(f"converting Qwen-1 {src} to the Qwen2 layout in {dst} (once; cached)")
    dst.mkdir(parents=True)
    gen, chat_format = generation_config(src)
    eos_token = IM_END if chat_format == "chatml" else ENDOFTEXT
    dtype = convert_weights(src, dst, cfg, progress)
    seq_length = int(cfg.get("seq_length") or 2048)
    qwen2_config(cfg, dtype, gen["eos_token_id"][0]).save_pretrained(str(dst))
    (dst / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    progress("  converting the tokenizer (tiktoken ranks → byte-level BPE)")
    tok = build_tokenizer(tik, eos=eos_token, chat_template=CHATML_TEMPLATE, model_max_length=seq_length)
    # Qwen2Tokenizer rebuilds this very BPE (vocabulary, merges, regex, NFC) in transformers 4 and 5
    save_tokenizer(tok, dst, tokenizer_class="Qwen2Tokenizer")
    for extra in ("LICENSE", "NOTICE", "README.md"):
        if (src / extra).is_file():
            shutil.copyfile(src / extra, dst / extra)
    record = {
        "converter": CONVERTER_VERSION,
        "from": {"path": str(src), "modelType": "qwen", "fingerprint": fingerprint(src),
                 "files": {p.name: file_sha256(p) for p in sorted(src.iterdir())
                           if p.is_file() and not p.name.startswith(".") and p.suffix != ".py"}},
        "to": {"architecture": "Qwen2ForCausalLM", "chatFormat": chat_format,
               "files": {p.name: file_sha256(p) for p in sorted(dst.iterdir()) if p.is_file()}},
        "seqLength": seq_length,
        "notCarriedOver": [n for n in NOT_CARRIED_OVER if cfg.get(n.split(":")[0])],
        "seconds": round(time.time() - t0, 1),
    }
    (dst / "conversion.json").write_text(json.dumps(record, indent=2) + "\n")
    progress(f"  converted in {record['seconds']} s"
             + (f"; not carried over: {', '.join(n.split(':')[0] for n in record['notCarriedOver'])} "
                f"(inputs are limited to seq_length {seq_length} tokens)" if record["notCarriedOver"] else ""))
    return dst


def conversion_record(path: str | Path) -> dict[str, Any] | None:
    """``conversion.json`` of a converted folder (for lineage), else None."""
    f = Path(path) / "conversion.json"
    return json.loads(f.read_text()) if f.is_file() else None


def _cache_candidates(src: Path, fp: str) -> Iterator[Path]:
    name = f"{src.name}.qwen2-{fp[:12]}"
    yield src.parent / name
    if src.resolve().parent != src.parent.resolve():  # a linked folder: its conversion may be beside the target
        yield src.resolve().parent / f"{src.resolve().name}.qwen2-{fp[:12]}"
    from ..sources import cache_root

    yield cache_root() / "converted" / name


def _writable(d: Path) -> bool:
    try:
        d.mkdir(parents=True, exist_ok=True)
        return os.access(d, os.W_OK)
    except OSError:
        return False


def prepare_model_dir(path: str | Path, *, progress: Callable[[str], None] = _say) -> Path:
    """The folder every stage loads: ``path`` itself, or for Qwen-1 its converted copy (made once)."""
    import fcntl

    src = Path(path)
    if not is_qwen1(src):
        return src
    fp = fingerprint(src)
    candidates = list(_cache_candidates(src, fp))
    for c in candidates:
        if (c / ".complete").is_file():
            return c
    for target in candidates:
        if not _writable(target.parent):
            continue
        # one conversion per folder even when several ranks of a torchrun job arrive together
        with open(target.parent / f".{target.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if (target / ".complete").is_file():
                return target
            tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                convert_qwen1(src, tmp, progress=progress)
                (tmp / ".complete").write_text(fp + "\n")
                shutil.rmtree(target, ignore_errors=True)
                os.replace(tmp, target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return target
    raise ConversionError(f"{src}: a Qwen-1 model must be converted once, but neither {candidates[0].parent} nor "
                          f"{candidates[-1].parent} is writable; run `devops-model convert --model {src} --out DIR` "
                          "somewhere writable and use DIR")
