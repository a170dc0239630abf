"""The reference environment for first-generation Qwen: its released code under transformers 4.32.

    from devops_workloads.models.reference_env import ensure_reference_python, run_reference
    python = ensure_reference_python()          # ~/.cache/devops-model/qwen1-ref-<pins digest>/bin/python
    run_reference(["build", "/tmp/q1", "--code", str(seed_qwen1_code()), "--kind", "chat"])

Qwen-1's remote code (``../shared/seed/qwen1``) needs transformers 4.32, tiktoken,
transformers_stream_generator and einops, which cannot live beside the project's transformers 5.
This module makes a separate virtual environment with uv (the project's own, from its cache; the
first time about a minute), keyed by its pins, outside the checkout. The tests' fixtures and
``devops-model dev tiny-model --like qwen1-…`` use it; the project never imports that code.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

#: torch is the project's own pin (the wheel comes from uv's cache); the rest are the seed's requirements.
REFERENCE_PINS = ("torch==2.15.0", "transformers==4.32.0", "tiktoken==0.14.0",
                  "transformers_stream_generator==0.0.4", "einops==0.8.2")
SCRIPT = Path(__file__).with_name("qwen1_reference.py")


class ReferenceUnavailable(RuntimeError):
    """The reference environment or the released code cannot be had; says what to do."""


def seed_qwen1_code() -> Path:
    """The released Qwen-1 code and vocabulary (``DEVOPS_MODEL_SEED_QWEN1``, else ``../shared/seed/qwen1``)."""
    env = os.environ.get("DEVOPS_MODEL_SEED_QWEN1")
    d = Path(env) if env else Path(__file__).resolve().parents[3].parent / "shared" / "seed" / "qwen1"
    if not (d / "modeling_qwen.py").is_file() or not (d / "qwen.tiktoken").is_file():
        raise ReferenceUnavailable(f"{d} does not hold Qwen-1's released code (modeling_qwen.py, qwen.tiktoken); "
                                   "set DEVOPS_MODEL_SEED_QWEN1 to that folder (shared/seed/qwen1 beside the repository)")
    return d


def reference_dir() -> Path:
    env = os.environ.get("DEVOPS_MODEL_QWEN1_REF_VENV")
    if env:
        return Path(env)
    digest = hashlib.sha256("\n".join(REFERENCE_PINS + (sys.version.split()[0],)).encode()).hexdigest()[:10]
    return Path.home() / ".cache" / "devops-model" / f"qwen1-ref-{digest}"


def _uv() -> str:
    for cand in (Path(sys.executable).parent / "uv", shutil.which("uv")):
        if cand and Path(cand).is_file():
            return str(cand)
    raise ReferenceUnavailable("uv is needed to build the Qwen-1 reference environment; `make venv` installs it into .venv")


def ensure_reference_python(log=print) -> Path:
    """The reference environment's python, built once (offline from uv's cache when it can)."""
    d = reference_dir()
    py = d / "bin" / "python"
    marker = d / ".complete"
    if marker.is_file() and py.is_file():
        return py
    uv = _uv()
    log(f"building the Qwen-1 reference environment in {d} ({', '.join(REFERENCE_PINS)})")
    tmp = d.with_name(d.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(tmp)], check=True)
        install = [uv, "pip", "install", "-q", "--python", str(tmp / "bin" / "python"), *REFERENCE_PINS]
        if subprocess.run(install + ["--offline"], capture_output=True).returncode != 0:
            subprocess.run(install, check=True)  # not all in uv's cache yet: from PyPI
        # uv venv writes absolute paths; the folder is used where it was built, so move it there now
        shutil.rmtree(d, ignore_errors=True)
        os.replace(tmp, d)
        subprocess.run([str(py), "-c", "import transformers, tiktoken, einops, torch"], check=True)
    except subprocess.CalledProcessError as exc:
        raise ReferenceUnavailable(f"could not build the Qwen-1 reference environment in {d}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    marker.write_text("\n".join(REFERENCE_PINS) + "\n")
    return py


def run_reference(args: list[str], python: Path | None = None, timeout: float = 3600) -> None:
    """Run ``qwen1_reference.py ARGS`` in the reference environment (stderr shown on failure)."""
    py = python or ensure_reference_python()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([str(py), str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"the Qwen-1 reference failed ({' '.join(args[:2])}):\n{proc.stderr[-4000:]}")
