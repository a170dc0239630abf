"""The local run registry: what ``devops-model run`` records on this machine, so that a later run's
``fromRun`` finds its parent the way the operator finds it on the API server.

    $DEVOPS_MODEL_HOME/runs/<kind>/<name>.json   {"resource": {...}, "status": {...}}

:class:`LocalRegistry` is the local backing of :class:`devops_model.lineage.RunStore`.
A record is replaced atomically; a run that starts replaces the previous record of the same name
with state Running, so a failed re-run never leaves an older Succeeded behind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Optional

from .contract import Env


def home() -> Path:
    """Local state: run registry, default work dirs (``DEVOPS_MODEL_HOME``)."""
    env = os.environ.get(Env.HOME)
    return Path(env) if env else Path.home() / ".local" / "share" / "devops-model"


def registry_path(kind: str, name: str) -> Path:
    return home() / "runs" / kind.lower() / f"{name}.json"


def read_entry(kind: str, name: str) -> Optional[dict[str, Any]]:
    """``{"resource": ..., "status": ...}`` of a recorded run, or None."""
    p = registry_path(kind, name)
    try:
        entry = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None  # a damaged record counts as absent; the next run of that name rewrites it
    return entry if isinstance(entry, dict) else None


def write_entry(resource: Mapping[str, Any], status: Mapping[str, Any]) -> Path:
    """Record ``resource`` (a dict with kind and metadata.name) with ``status``, atomically."""
    p = registry_path(str(resource["kind"]), str(resource["metadata"]["name"]))
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"resource": dict(resource), "status": dict(status)}, indent=2, ensure_ascii=False),
                   encoding="utf-8")
    tmp.replace(p)
    return p


def as_run(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A registry entry as the API would return the run (resource fields plus status)."""
    return {**dict(entry.get("resource") or {}), "status": dict(entry.get("status") or {})}


class LocalRegistry:
    """:class:`~devops_model.lineage.RunStore` over the local run registry."""

    def get_run(self, kind: str, name: str) -> Optional[dict[str, Any]]:
        entry = read_entry(kind, name)
        return as_run(entry) if entry is not None else None

    def eval_runs(self) -> Iterator[dict[str, Any]]:
        folder = home() / "runs" / "evalrun"
        for p in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            entry = read_entry("EvalRun", p.stem)
            if entry is not None:
                yield as_run(entry)
