"""Child processes this project starts in their own session (a local server, a browser): stopped
as a group, politely first; and the CPUs this process may use."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
from pathlib import Path


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


def usable_cpus(cgroup_root: str = "/sys/fs/cgroup") -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (a Kubernetes CPU
    limit, cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``), which ``os.cpu_count()`` and torch's
    default thread count both ignore."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    quota = _cgroup_cpu_quota(Path(cgroup_root))
    return min(n, quota) if quota else n


def _cgroup_cpu_quota(root: Path) -> int | None:
    """CPUs of the cgroup's quota, rounded up; None when there is none (or no cgroup file to read)."""
    try:  # cgroup v2
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    for d in ("cpu", "cpu,cpuacct"):  # cgroup v1 (a container sees its own cgroup there)
        try:
            quota_us = int((root / d / "cpu.cfs_quota_us").read_text())
            period_us = int((root / d / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return None if quota_us <= 0 or period_us <= 0 else max(1, math.ceil(quota_us / period_us))
    return None
