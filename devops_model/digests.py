"""Digests of files: the data registry's ``file_sha1``, exam and calibration checks, conversion
fingerprints. One implementation, read in 1-4 MiB chunks (a corpus may be larger than memory)."""

from __future__ import annotations

import hashlib
import os


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha1", chunk: int = 1 << 22) -> str:
    """Hex digest of a file's bytes (``sha1`` as the seed's dataset_info.json, or ``sha256``)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def file_sha1(path: str | os.PathLike[str]) -> str:
    return file_digest(path, "sha1")


def file_sha256(path: str | os.PathLike[str]) -> str:
    return file_digest(path, "sha256")
