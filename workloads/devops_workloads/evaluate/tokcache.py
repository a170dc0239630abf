"""Tokenized exams kept on disk, so a repeated evaluation neither loads the tokenizer nor encodes
a prompt.

    cache = TokenCache.open(model_dir)                # None when turned off or nothing to key on
    ids = cache.get(key) if cache else None             # the prompts' token ids, or None
    cache.put(key, ids)

Loading a 151k-token tokenizer takes about a second and importing transformers for it another;
encoding the 1,148 prompts of the seed's exams at 0 and 5 shots a few tenths more. What comes out
depends only on the prompt texts and the tokenizer, so it is cached under the key of both:

* the exam: its files' SHA-1s, the prompt version (prompts.PROMPT_VERSION) and a SHA-1 of
  prompts.py (the code that renders and encodes), the shots, the style and chat template, and a
  SHA-1 of the rendered text itself (so a change in how the CSV is read or the prompt rendered can
  never reuse stale ids);
* the tokenizer (:func:`tokenizer_digest`): the SHA-1 of every file in its folder except weights,
  the transformers and tokenizers versions, and whether remote code was allowed.

Entries are JSON (ids only: nothing is unpickled), written atomically, one file per exam setting.
An unreadable or inconsistent entry is ignored and rewritten; a cache that cannot be written is a
note, not an error. Location: ``$DEVOPS_MODEL_EVAL_TOKEN_CACHE``, default ``eval-tokens/`` in the
download cache (``$DEVOPS_MODEL_CACHE``, default ``~/.cache/devops-model/models``);
``DEVOPS_MODEL_EVAL_TOKEN_CACHE=0`` (or ``devops-model eval --no-token-cache``) turns it off.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

#: Where the cache lives; 0/false/off/no turns it off.
ENV_CACHE = "DEVOPS_MODEL_EVAL_TOKEN_CACHE"
#: Bump when what an entry holds changes.
FORMAT = "eval-tokens/1"
#: Files of a model folder that never affect tokenization (weights and the like).
_NOT_TOKENIZER = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx", ".npz", ".npy")


def cache_dir() -> Path | None:
    """The cache folder, or None when ``DEVOPS_MODEL_EVAL_TOKEN_CACHE`` turns it off."""
    value = os.environ.get(ENV_CACHE, "").strip()
    if value.lower() in ("0", "false", "off", "no"):
        return None
    if value:
        return Path(value).expanduser()
    from ..sources import cache_root

    return cache_root() / "eval-tokens"


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def tokenizer_digest(folder: str | Path, trust_remote_code: bool = False) -> str | None:
    """SHA-1 of what a tokenizer loaded from ``folder`` depends on; None when ``folder`` is not a
    local folder (a hub name: nothing to hash)."""
    from devops_model.digests import file_sha1

    folder = Path(folder)
    if not folder.is_dir():
        return None
    h = hashlib.sha1()
    h.update(json.dumps({"format": FORMAT, "transformers": _version("transformers"), "tokenizers": _version("tokenizers"),
                         "trustRemoteCode": bool(trust_remote_code)}, sort_keys=True).encode())
    for f in sorted(folder.iterdir()):
        if f.is_file() and not f.name.endswith(_NOT_TOKENIZER):
            h.update(f"{f.name}\0{file_sha1(f)}\n".encode())
    return h.hexdigest()


_CODE: list[str] = []


def _prompt_code() -> str:
    """SHA-1 of prompts.py, which renders the texts and turns them into ids (the chat wrapping and
    system prompt included): a change there cannot reuse ids made by the old code."""
    if not _CODE:
        _CODE.append(hashlib.sha1((Path(__file__).parent / "prompts.py").read_bytes()).hexdigest())
    return _CODE[0]


def setting_key(tokenizer: str, exam_sha1s: Sequence[str], prompt_version: str, shots: int, style: str,
                chat_template: str, texts: Sequence[str]) -> str:
    """The key of one exam setting's token ids (``texts``: the prefix and every question's body)."""
    text = hashlib.sha1("\0".join(texts).encode("utf-8")).hexdigest()
    return hashlib.sha1(json.dumps([FORMAT, tokenizer, list(exam_sha1s), prompt_version, _prompt_code(), shots, style,
                                    chat_template if style == "chat" else None, len(texts), text]).encode()).hexdigest()


class TokenCache:
    """Token ids of exam settings and the letters' ids, under one tokenizer's digest."""

    def __init__(self, root: Path, tokenizer: str):
        self.root = root
        self.tokenizer = tokenizer
        self.hits = 0
        self.misses = 0
        self._warned = False

    @classmethod
    def open(cls, tokenizer_folder: str | Path, trust_remote_code: bool = False) -> "TokenCache | None":
        root = cache_dir()
        if root is None:
            return None
        digest = tokenizer_digest(tokenizer_folder, trust_remote_code)
        return cls(root, digest) if digest else None

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def _read(self, key: str) -> Any:
        try:
            return json.loads(self._path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def _write(self, key: str, data: dict[str, Any]) -> None:
        path = self._path(key)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            if not self._warned:
                self._warned = True
                print(f"note: tokenized exams not cached ({exc}); set {ENV_CACHE}=0 to stop trying", file=sys.stderr)

    def get(self, key: str, count: int) -> list[list[int]] | None:
        """The ``count`` id lists stored under ``key``, or None (a miss, counted)."""
        data = self._read(key)
        try:
            if data["format"] != FORMAT or data["key"] != key or len(data["rest"]) != count:
                raise ValueError
            prefix = data["prefix"]
            ids = [prefix + r for r in data["rest"]]
        except (TypeError, KeyError, ValueError):
            self.misses += 1
            return None
        self.hits += 1
        return ids

    def put(self, key: str, ids: Sequence[Sequence[int]], **about: Any) -> None:
        """Store ``ids`` (their common prefix once); ``about`` is kept for whoever reads the file."""
        from .engine import common_prefix_length

        n = common_prefix_length(ids, min(len(x) for x in ids)) if ids else 0
        self._write(key, {"format": FORMAT, "key": key, **about, "prefix": list(ids[0][:n]) if ids else [],
                          "rest": [list(x[n:]) for x in ids]})

    def letter_ids(self, compute: Callable[[], dict[str, int]]) -> dict[str, int]:
        """The scorer's letter ids under this tokenizer (computed and stored on a miss)."""
        key = hashlib.sha1(json.dumps([FORMAT, self.tokenizer, "letters"]).encode()).hexdigest()
        data = self._read(key)
        if isinstance(data, dict) and data.get("key") == key and isinstance(data.get("letters"), dict):
            return {str(k): int(v) for k, v in data["letters"].items()}
        letters = compute()
        self._write(key, {"format": FORMAT, "key": key, "letters": letters})
        return letters


class LazyTokenizer:
    """Stands for the tokenizer and loads it on first use: with every prompt's ids cached, an
    evaluation never needs it."""

    def __init__(self, load: Callable[[], Any]):
        self._load = load
        self._tok: Any = None

    @property
    def loaded(self) -> bool:
        return self._tok is not None

    def get(self) -> Any:
        if self._tok is None:
            self._tok = self._load()
        return self._tok

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.get(), name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.get()(*args, **kwargs)
