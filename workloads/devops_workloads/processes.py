"""Child processes this project starts in their own session (a local server, a browser): stopped
as a group, politely first."""

from __future__ import annotations

import os
import signal
import socket
import subprocess


def stop_group(proc: subprocess.Popen, timeout: float = 30) -> int | None:
    """SIGTERM to ``proc``'s process group, SIGKILL after ``timeout`` seconds; the exit code."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return proc.poll()
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
