"""Progress of a workload: a progress bar and ``progress.jsonl`` locally, ``status.progress`` in a pod.

One reporter serves every workload (training steps, exam questions, quantized layers). Only rank 0
reports. In a pod (``KUBERNETES_SERVICE_HOST`` set and ``DEVOPS_MODEL_OWNER`` =
``plural/namespace/name`` given by the operator) the owning resource's ``status.progress`` is
merge-patched through the API server with the pod's ServiceAccount token, at most every
``DEVOPS_MODEL_REPORT_INTERVAL`` seconds (default 10), so a thousand-step run costs the API
server a handful of writes. The pod's ServiceAccount is its run's own (the operator creates one per
run): it may get/patch that one run's status and nothing else. Only ``status.progress``
(``contract.PROGRESS_FIELDS``) is ever sent: the outcome (state, artifact, scores) is the operator's,
taken from the pod's termination message, and the operator drops anything else a patch writes.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Optional

from devops_model.contract import PROGRESS_FIELDS

from .ranks import is_rank0

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class StatusPatcher:
    """Merge-patches ``status`` of the owning resource from inside a pod (stdlib only)."""

    def __init__(self, owner: str, host: str, port: str, sa_dir: Path = SA_DIR):
        self.plural, self.namespace, self.name = owner.split("/")
        self.url = (
            f"https://{host}:{port}/apis/devops-model.io/v1alpha1/namespaces/"
            f"{self.namespace}/{self.plural}/{self.name}/status"
        )
        self.sa_dir = sa_dir

    @classmethod
    def from_env(cls) -> "StatusPatcher | None":
        owner = os.environ.get("DEVOPS_MODEL_OWNER")
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        if not owner or not host:
            return None
        return cls(owner, host, os.environ.get("KUBERNETES_SERVICE_PORT", "443"))

    @staticmethod
    def payload(status: dict[str, Any]) -> Optional[dict[str, Any]]:
        """The merge patch for ``status``: its progress fields only (None when there are none).
        Defence in depth: a worker never writes the outcome, whatever its caller passes."""
        kept = {k: v for k, v in status.items() if k in PROGRESS_FIELDS}
        return {"status": kept} if kept else None

    def patch(self, status: dict[str, Any]) -> bool:
        body = self.payload(status)
        if body is None:
            dropped = ", ".join(sorted(status)) or "nothing"
            print(f"warning: not reporting {dropped}: a worker reports status.progress only", file=sys.stderr)
            return False
        token = (self.sa_dir / "token").read_text().strip()
        ctx = ssl.create_default_context(cafile=str(self.sa_dir / "ca.crt"))
        req = urllib.request.Request(
            self.url,
            data=json.dumps(body).encode(),
            method="PATCH",
            headers={"Content-Type": "application/merge-patch+json", "Authorization": f"Bearer {token}"},
        )
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=10):
                return True
        except Exception as exc:  # progress is best effort: never fail the work for it
            print(f"warning: could not report progress: {exc}", file=sys.stderr)
            return False


class ProgressReporter:
    """Progress bar + ``progress.jsonl`` + (in a pod) throttled status patches.

    ``update(step=…, total_steps=…, loss=…)`` takes the fields of ``status.progress`` in
    snake_case; unknown fields are kept in the jsonl only.
    """

    def __init__(self, out_dir: Path | None, desc: str, total: int | None = None, unit: str = "step",
                 interval: float | None = None, enable_bar: bool | None = None):
        self.active = is_rank0()
        self.out_dir = Path(out_dir) if out_dir else None
        self.total = total
        self.interval = float(os.environ.get("DEVOPS_MODEL_REPORT_INTERVAL", "10")) if interval is None else interval
        self._last_patch = 0.0
        self._pending: dict[str, Any] | None = None
        self.patcher = StatusPatcher.from_env() if self.active else None
        self.bar = None
        if self.active and (enable_bar if enable_bar is not None else True):
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr,
                                disable=os.environ.get("DEVOPS_MODEL_NO_PROGRESS") == "1")
            except ImportError:
                self.bar = None
        self._n = 0

    def update(self, step: int | None = None, advance: int | None = None, **fields: Any) -> None:
        if not self.active:
            return
        if step is None:
            step = self._n + (advance or 1)
        if self.bar is not None:
            if fields.get("total_steps") and self.bar.total != fields["total_steps"]:
                self.bar.total = fields["total_steps"]
                self.bar.refresh()
            self.bar.update(step - self._n)
            post = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in fields.items()
                    if k in ("loss", "learning_rate", "tokens_per_second", "accuracy") and v is not None}
            if post:
                self.bar.set_postfix(post, refresh=False)
        self._n = step
        total = fields.get("total_steps") or self.total
        record = {"time": round(time.time(), 3), "step": step, **fields}
        if total:
            record["total_steps"] = total
            record["percent"] = int(100 * step / total) if total else None
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / "progress.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        if self.patcher is not None:
            self._pending = record
            if time.time() - self._last_patch >= self.interval:
                self.flush()

    def flush(self) -> None:
        if self.patcher is None or self._pending is None:
            return
        rec = self._pending
        progress = {_camel(k): v for k, v in rec.items() if k != "time" and v is not None}
        progress["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(rec["time"]))
        self.patcher.patch({"progress": progress})
        self._last_patch = time.time()
        self._pending = None

    def close(self) -> None:
        self.flush()
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "ProgressReporter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)
