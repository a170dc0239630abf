"""Third-party start-up noise, silenced before those libraries are imported; their errors stay visible.

What each library prints at import and what it honours (gptqmodel 7.7, logbar 0.4, deepspeed 0.19,
torch 2.15 with torchao 0.18):

* GPTQModel: an ASCII-art banner with versions and ``ENV: Auto setting ...`` lines at INFO on the
  ``logbar`` logger (``logbar.LogBar``, a ``logging.Logger``), and a GIL advisory unless
  ``GPTQMODEL_DISABLE_GIL_WARNING=1``. ``LogBar.shared()`` sets that logger to INFO when it creates it
  (printing a blank line), so :func:`quiet_gptqmodel` creates it first and then sets WARNING:
  GPTQModel's warnings and errors still show. Called before anything imports gptqmodel (quantization,
  loading a GPTQ checkpoint, which transformers does through optimum).
* DeepSpeed (imported by transformers whenever it is installed, and by the trainer): on a machine
  without a GPU its ``DeepSpeed`` logger warns "Setting accelerator to CPU ..." on every import. A
  filter drops that one message; DeepSpeed resets the logger's level on import, filters stay.
* torch: torchao (imported by transformers and GPTQModel) registers enums with
  ``torch.utils._pytree.register_constant``, which warns "... is deprecated" through the
  ``torch.utils._pytree`` logger; a filter drops exactly that message.

:func:`install` runs when ``devops_workloads`` is imported: it only sets an environment default and
adds logging filters (nothing is imported). ``DEVOPS_MODEL_VERBOSE_LIBRARIES=1`` turns all of it off.
"""
from __future__ import annotations

import io
import logging
import os
from contextlib import redirect_stderr, redirect_stdout

VERBOSE_ENV = "DEVOPS_MODEL_VERBOSE_LIBRARIES"


class _DropMessages(logging.Filter):
    """Drops the records whose message starts with one of ``prefixes`` or contains one of ``parts``."""

    def __init__(self, name: str, prefixes: tuple[str, ...] = (), parts: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.filter_name, self.prefixes, self.parts = name, prefixes, parts

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the library's problem: let it through
            return True
        return not (message.startswith(self.prefixes) or any(p in message for p in self.parts))


#: logger name -> the filter that drops its start-up noise
FILTERS = {
    "DeepSpeed": _DropMessages("deepspeed-accelerator", prefixes=("Setting accelerator to CPU",)),
    "torch.utils._pytree": _DropMessages("torchao-enum-constants",
                                         parts=("Calling register_constant() on Enum subclasses is deprecated",)),
}


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes")


def install() -> None:
    """Environment defaults and logging filters; cheap and idempotent, imports no library."""
    if verbose():
        return
    os.environ.setdefault("GPTQMODEL_DISABLE_GIL_WARNING", "1")
    for name, flt in FILTERS.items():
        logger = logging.getLogger(name)
        if flt not in logger.filters:
            logger.addFilter(flt)


def quiet_gptqmodel() -> None:
    """Call before gptqmodel is imported: no banner, no INFO chatter; its warnings and errors still show."""
    install()
    if verbose():
        return
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        try:
            from logbar import LogBar
        except ImportError:  # GPTQModel is not installed (or no longer uses LogBar): nothing to quiet
            return
        log = LogBar.shared()  # created now (level INFO, a blank line) rather than by gptqmodel's import
    if log.getEffectiveLevel() < logging.WARNING:
        log.setLevel(logging.WARNING)
