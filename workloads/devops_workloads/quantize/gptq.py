"""The GPTQ backend: GPTQModel quantizes layer by layer (CPU or GPU) and writes the ``gptq`` format.

The checkpoint it writes is the one vLLM, TGI, SGLang and transformers (through optimum and
gptqmodel) load: int32-packed ``qweight``/``qzeros``, fp16 ``scales``, ``g_idx`` per linear layer, and
in ``config.json``::

    "quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128,
                            "desc_act": false, "sym": true, "checkpoint_format": "gptq", ...}

GPTQModel works on the CPU when told how many CPU workers to use on a small machine
(``GPTQMODEL_CPU_WORKERS``); :func:`configure_environment` sets it to the core count when unset.
Its kernels for *running* the model are compiled once per machine on first use (cached in
``~/.cache/gptqmodel``).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from devops_model.contract import Reason

from ..gptq_ops import seed_prebuilt_ops
from ..processes import usable_cpus
from ..quiet import quiet_gptqmodel
from ..runner import WorkloadError


def cpu_workers() -> int:
    """GPTQModel's CPU worker threads: the CPUs this pod may use (its CPU limit; os.cpu_count() is the
    node's cores), but at least 2, which its model-loader pool always asks of the CPU pool (with 1, as in a
    1-CPU pod, GPTQModel.load raises "Virtual pool 'model_loader:cpu' requests 2 workers")."""
    return max(2, usable_cpus())


def configure_environment() -> None:
    """Defaults GPTQModel needs before it is imported (never overriding the user's)."""
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(cpu_workers()))
    seed_prebuilt_ops()  # the image's compiled CPU extensions, so that no pod compiles them
    # GPTQModel prints a wide banner, INFO chatter and a GIL advisory; the workload's own progress is
    # enough (its warnings and errors still show).
    quiet_gptqmodel()


@dataclass
class GptqSettings:
    bits: int = 4
    group_size: int = 128
    sym: bool = True
    desc_act: bool = False
    damp_percent: float = 0.01


def quantize_gptq(model_dir: Path, out_dir: Path, samples: Sequence[Sequence[int]], settings: GptqSettings,
                  trust_remote_code: bool = False, log_dir: Path | None = None) -> dict[str, Any]:
    """Quantize ``model_dir`` on ``samples`` (token id lists) into ``out_dir``; returns timings.

    GPTQModel's per-layer logs (loss, damping, time per module) go to ``log_dir``.
    """
    configure_environment()
    import torch
    from gptqmodel import GPTQModel, QuantizeConfig
    from gptqmodel.looper import loop_processor

    # GPTQModel writes its per-layer logs to ./logs of whatever the current directory is; keep them
    # with the run instead of littering the user's directory.
    loop_processor._PROJECT_LOG_DIR = Path(log_dir) if log_dir else out_dir.parent / f"{out_dir.name}-gptq-logs"

    qc = QuantizeConfig(
        bits=settings.bits,
        group_size=settings.group_size,
        sym=settings.sym,
        desc_act=settings.desc_act,
        damp_percent=settings.damp_percent,
        # Disk offload of finished layers only pays off for models larger than memory; for the
        # sizes that fit it costs writes to /tmp.
        offload_to_disk=False,
    )
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    t0 = time.time()
    model = GPTQModel.load(str(model_dir), qc, device=device, trust_remote_code=trust_remote_code)
    loaded = time.time()
    calibration = [{"input_ids": list(ids), "attention_mask": [1] * len(ids)} for ids in samples]
    try:
        model.quantize(calibration, batch_size=1, calibration_data_min_length=1)
    except (ValueError, RuntimeError) as exc:
        raise WorkloadError(f"GPTQ failed: {exc}", reason=Reason.QUANTIZATION_FAILED) from exc
    quantized = time.time()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(str(out_dir))
    _ensure_gptq_format(out_dir, settings)
    _keep_generation_config(model_dir, out_dir)
    return {"loadSeconds": round(loaded - t0, 2), "quantizeSeconds": round(quantized - loaded, 2),
            "saveSeconds": round(time.time() - quantized, 2), "device": device}


def _keep_generation_config(model_dir: Path, out_dir: Path) -> None:
    """The quantized model generates as the original did: GPTQModel's save rewrites
    ``generation_config.json`` (it turns ``do_sample`` on), so a greedy model would start sampling
    once quantized. The source model's file is copied back unchanged."""
    src = Path(model_dir) / "generation_config.json"
    if src.exists():
        (out_dir / "generation_config.json").write_bytes(src.read_bytes())
    # the chat conventions a tuned model carries (chat template inline and as .jinja, eos), unchanged
    for name in ("tokenizer_config.json", "chat_template.jinja"):
        if (Path(model_dir) / name).exists():
            (out_dir / name).write_bytes((Path(model_dir) / name).read_bytes())


def _ensure_gptq_format(out_dir: Path, settings: GptqSettings) -> None:
    """Check that ``config.json`` carries the fields that serving engines read, exactly."""
    cfg_path = out_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    q = cfg.get("quantization_config") or {}
    want = {"quant_method": "gptq", "bits": settings.bits, "group_size": settings.group_size,
            "desc_act": settings.desc_act, "sym": settings.sym, "checkpoint_format": "gptq"}
    wrong = {k: q.get(k) for k, v in want.items() if q.get(k) != v}
    if wrong:
        raise WorkloadError(f"GPTQModel wrote an unexpected quantization_config {wrong} (want {want})",
                            reason=Reason.QUANTIZATION_FAILED)
