"""GPTQModel's CPU torch.ops extensions, compiled when the image is built rather than in every pod.

GPTQModel compiles its CPU extensions (int4 packing, and the AVX512-BF16 int4 kernel on CPUs that have it)
with torch's JIT the first time a process needs them, into ``~/.cache/gptqmodel/torch_extensions``. In a
pod that cache is an emptyDir, so every quantize pod (and every server of a GPTQ model on the CPU) paid
for it again: 15 minutes of a 500m quantize pod on the local node, and the serve image has no compiler
at all. The images build them with GPTQModel's own loader and flags (images/*.Dockerfile) into the folder
named by ``DEVOPS_MODEL_GPTQMODEL_OPS``; :func:`seed_prebuilt_ops` copies the libraries into GPTQModel's
cache before it is imported. GPTQModel then finds them under the same fingerprint (sources, flags, torch)
and loads them; where the fingerprint differs (another torch, a user's own build) it compiles as before.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

ENV = "DEVOPS_MODEL_GPTQMODEL_OPS"
log = logging.getLogger(__name__)


def gptqmodel_cache_root() -> Path:
    """Where GPTQModel looks for its compiled extensions (gptqmodel.utils.cpp.default_torch_ops_build_root)."""
    override = os.environ.get("GPTQMODEL_TORCH_EXTENSIONS_DIR")
    return Path(override).expanduser() if override else Path.home() / ".cache" / "gptqmodel" / "torch_extensions"


def seed_prebuilt_ops(source: str | os.PathLike[str] | None = None) -> list[Path]:
    """Copy the image's prebuilt extension libraries (``<extension>/<fingerprint>/*.so``) into GPTQModel's
    cache where they are not there yet; returns the files copied. Nothing to do outside the images (the
    variable is unset) or when the cache cannot be written (GPTQModel then compiles, as it would anyway)."""
    src = Path(source) if source is not None else (Path(os.environ[ENV]) if os.environ.get(ENV) else None)
    if src is None or not src.is_dir():
        return []
    dst = gptqmodel_cache_root()
    copied = []
    for lib in sorted(src.rglob("*.so")):
        target = dst / lib.relative_to(src)
        if target.exists():
            continue
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            shutil.copyfile(lib, tmp)
            os.replace(tmp, target)  # a concurrent process never sees half a library
        except OSError as exc:
            log.warning("could not seed GPTQModel's extension cache %s from %s: %s", dst, src, exc)
            return copied
        copied.append(target)
    return copied
