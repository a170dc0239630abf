"""Third-party start-up banners are silenced (devops_workloads/quiet.py); their warnings and errors are not.

    .venv/bin/python -m pytest tests/workloads/test_quiet.py -q

Each check runs a fresh interpreter (the banners print once per process, at import).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

#: What the libraries print at import when left alone (gptqmodel 7.7, deepspeed 0.19, torchao via torch).
BANNERS = ("GPT-QModel", "┌", "ENV: Auto setting", "Python GIL is enabled", "Setting accelerator to CPU",
           "register_constant()")

# The import path of a quantization run (configure_environment, then gptqmodel) and of training and
# loading (transformers, which imports DeepSpeed and torchao), then one warning and one error through
# each library's own logger.
SCRIPT = """
from devops_workloads.quantize.gptq import configure_environment
configure_environment()
import gptqmodel
from transformers import Qwen2Config, Qwen2ForCausalLM
Qwen2ForCausalLM(Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=1, vocab_size=64))
import deepspeed
from gptqmodel.utils.logger import setup_logger
setup_logger().warn("gptqmodel warning is visible")
setup_logger().error("gptqmodel error is visible")
from deepspeed.utils import logger
logger.warning("deepspeed warning is visible")
logger.error("deepspeed error is visible")
print("imported")
"""


def _env(**extra: str) -> dict[str, str]:
    """This checkout's code first; the opt-out and what quiet.install() set in this process unset."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DEVOPS_MODEL_VERBOSE_LIBRARIES", "GPTQMODEL_DISABLE_GIL_WARNING")}
    env["PYTHONPATH"] = os.pathsep.join(str(REPO / p) for p in ("", "operator", "workloads", "cli"))
    return {**env, **extra}


def _run(code: str, **env: str) -> str:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(**env), timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout + r.stderr


@pytest.mark.slow
def test_no_banner_at_import_and_errors_stay_visible():
    out = _run(SCRIPT)
    assert [b for b in BANNERS if b in out] == [], out
    for line in ("gptqmodel warning is visible", "gptqmodel error is visible",
                 "deepspeed warning is visible", "deepspeed error is visible", "imported"):
        assert line in out, out
    # the imports printed nothing at all: the first output is the first warning above
    assert out[:out.index("WARN")].strip() == "", out


@pytest.mark.slow
def test_verbose_libraries_shows_the_banners():
    """The opt-out, and proof that the check above looks for what the libraries really print."""
    out = _run(SCRIPT, DEVOPS_MODEL_VERBOSE_LIBRARIES="1")
    # GPTQModel's "ENV: Auto setting" lines appear only for variables nobody set before (earlier tests
    # in the same session set some through configure_environment), so they are not required here.
    assert [b for b in BANNERS if b not in out and b != "ENV: Auto setting"] == [], out


def test_quantize_help_prints_only_the_help():
    r = subprocess.run([sys.executable, "-m", "devops_cli", "quantize", "--help"], capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert r.stdout.startswith("usage: ") and " quantize " in r.stdout.splitlines()[0]
    assert [b for b in BANNERS if b in r.stdout] == []


def test_the_filters_drop_only_the_start_up_messages():
    import logging

    from devops_workloads import quiet

    quiet.install()
    ds = logging.getLogger("DeepSpeed")
    pytree = logging.getLogger("torch.utils._pytree")

    def passes(logger: logging.Logger, level: int, msg: str) -> bool:
        record = logger.makeRecord(logger.name, level, __file__, 1, msg, (), None)
        return logger.filter(record)

    assert not passes(ds, logging.WARNING, "Setting accelerator to CPU. If you have GPU or other accelerator, ...")
    assert passes(ds, logging.WARNING, "zero stage 3 with cpu offload is slow")
    assert passes(ds, logging.ERROR, "Setting accelerator to CPU.")  # an error is never dropped
    assert not passes(pytree, logging.WARNING, "<enum 'X'> is an Enum subclass and is now natively supported by "
                      "torch.compile as an opaque value type. Calling register_constant() on Enum subclasses is "
                      "deprecated and will be an error in a future release.")
    assert passes(pytree, logging.WARNING, "something else")
    quiet.install()  # idempotent
    assert sum(isinstance(f, quiet._DropMessages) for f in ds.filters) == 1
