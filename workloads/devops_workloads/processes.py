"""Child processes this project starts in their own session (a local server, a browser): stopped
as a group, politely first; and the CPUs this process may use."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
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


#: Environment variables by which a user already chose how OpenMP threads wait (GNU and Intel OpenMP).
OPENMP_WAIT_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def sleeping_openmp_threads() -> str:
    """Make torch's OpenMP threads sleep while they wait for work (``OMP_WAIT_POLICY=PASSIVE``)
    instead of spinning, for a server process; must run before torch is imported (the OpenMP
    runtime reads it once, when it loads). Returns what happened, for the log.

    By default GNU OpenMP's idle threads spin for a while after each parallel operation. A server
    shares its cores with its own HTTP event loop and tokenization, and in a pod with the node's
    other pods: a thread that spins takes the core that another thread of the same operation needs,
    and every operation waits for its slowest thread. Measured with bench/serve.py's clients on two
    cores with one other busy process: 145 tokens/s at 4 clients and 311 at 16 spinning, 539 and
    1,290 sleeping; on quiet cores the two were within the runs' noise (827/1,746 vs 823/1,629). A
    user's own OMP_WAIT_POLICY, GOMP_SPINCOUNT or KMP_BLOCKTIME is left as it is."""
    chosen = [k for k in OPENMP_WAIT_SETTINGS if os.environ.get(k)]
    if chosen:
        return f"OpenMP threads wait as {chosen[0]}={os.environ[chosen[0]]} says"
    if "torch" in sys.modules:
        return "OpenMP threads wait as the runtime decided (torch was loaded before the server could choose)"
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return "OpenMP threads sleep while they wait (OMP_WAIT_POLICY=PASSIVE; set OMP_WAIT_POLICY=ACTIVE to spin)"


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
