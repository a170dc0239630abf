"""Which process this is under torchrun / a PyTorchJob (RANK, WORLD_SIZE), and rank 0's log line:
only rank 0 reports, writes the registry and prints (the others would repeat it N times)."""

from __future__ import annotations

import os
import sys


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_rank0() -> bool:
    return rank() == 0


def log0(msg: str) -> None:
    """A line on stderr from rank 0 only."""
    if is_rank0():
        print(msg, file=sys.stderr, flush=True)
