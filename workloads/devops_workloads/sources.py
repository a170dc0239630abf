"""Bring a model (or data) URI onto local disk: the real loading code users run on clusters.

    materialize_model("pvc://models/qwen2.5-7b")        # mounted claim: no copy
    materialize_model("hf://Qwen/Qwen2.5-7B@main")       # huggingface_hub.snapshot_download
    materialize_model("modelscope://codefuse-ai/CodeFuse-DevOps-Model-7B-Base")
    materialize_model("s3://bucket/models/qwen")         # boto3, AWS_* from a Secret by reference

Credentials come only from the environment, which the operator fills from the Secret named by
``spec.model.credentialsSecret``: ``HF_TOKEN``, ``MODELSCOPE_API_TOKEN``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``. Downloads land in the cache
(``DEVOPS_MODEL_CACHE``, default ``~/.cache/devops-model/models``) under a stable name, and a
finished download is marked with ``.complete`` so an interrupted one is resumed, not trusted.
A first-generation Qwen folder is converted once to the Qwen2 layout (``models/qwen1.py``) and
that copy is returned.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from devops_model.contract import ExitCode, Reason
from devops_model.uris import UriError, local_path, parse_uri

from .runner import WorkloadError


def cache_root() -> Path:
    env = os.environ.get("DEVOPS_MODEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "devops-model" / "models"


def _cache_dir(uri: str) -> Path:
    p = parse_uri(uri)
    slug = (p.authority + "/" + p.path).strip("/").replace("/", "--") or "root"
    digest = hashlib.sha1(uri.encode()).hexdigest()[:8]
    return cache_root() / p.scheme / f"{slug}-{digest}"


def materialize_model(uri: str, *, must_exist: bool = True) -> Path:
    """Local directory holding the model at ``uri`` (downloading it when remote)."""
    try:
        parsed = parse_uri(uri)
    except UriError as exc:
        raise WorkloadError(str(exc), reason=Reason.INVALID_MODEL_SOURCE, exit_code=ExitCode.BAD_INPUT) from None
    if parsed.is_local:
        path = local_path(uri)
        if must_exist and not path.exists():
            raise WorkloadError(
                f"model {uri} not found at {path}; "
                + ("check the claim is mounted and the path is right" if parsed.scheme == "pvc"
                   else "check the path"),
                reason=Reason.MODEL_NOT_FOUND, exit_code=ExitCode.BAD_INPUT,
            )
        return _native(path)
    target = _cache_dir(uri)
    if (target / ".complete").exists():
        return _native(target)
    target.mkdir(parents=True, exist_ok=True)
    if parsed.scheme == "hf":
        _download_hf(parsed.authority, parsed.revision, target)
    elif parsed.scheme == "modelscope":
        _download_modelscope(parsed.authority, parsed.revision, target)
    elif parsed.scheme == "s3":
        _download_s3(parsed.authority, parsed.path, target)
    (target / ".complete").write_text(uri)
    return _native(target)


def _native(path: Path) -> Path:
    """A first-generation Qwen folder (the seed's checkpoints) → its Qwen2 conversion, made once."""
    from .models import prepare_model_dir

    return prepare_model_dir(path)


def _download_hf(repo: str, revision: str | None, target: Path) -> None:
    from huggingface_hub import snapshot_download

    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise WorkloadError(
            f"hf://{repo} must be downloaded but HF_HUB_OFFLINE=1; copy the model to a PVC and use pvc://",
            reason=Reason.MODEL_NOT_FOUND, exit_code=ExitCode.BAD_INPUT,
        )
    try:
        snapshot_download(repo_id=repo, revision=revision, local_dir=str(target),
                          token=os.environ.get("HF_TOKEN") or None)
    except Exception as exc:
        raise WorkloadError(f"could not download hf://{repo}: {exc}", reason=Reason.MODEL_DOWNLOAD_FAILED) from exc


def _require(module: str, scheme: str) -> Any:
    """Import the client a URI scheme needs, or say which package to install (exit 3)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise WorkloadError(f"{scheme}:// needs the {module} package (pip install {module}); the workload image has it",
                            reason=Reason.MISSING_DEPENDENCY, exit_code=ExitCode.BAD_INPUT) from None


def _download_modelscope(repo: str, revision: str | None, target: Path) -> None:
    snapshot_download = _require("modelscope", "modelscope").snapshot_download
    try:
        snapshot_download(repo, revision=revision or "master", local_dir=str(target))
    except Exception as exc:
        raise WorkloadError(f"could not download modelscope://{repo}: {exc}", reason=Reason.MODEL_DOWNLOAD_FAILED) from exc


def _download_s3(bucket: str, prefix: str, target: Path) -> None:
    client = _require("boto3", "s3").client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)
    paginator = client.get_paginator("list_objects_v2")
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    found = 0
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix):]
            if not rel or rel.endswith("/"):
                continue
            dest = target / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, obj["Key"], str(dest))
            found += 1
    if not found:
        raise WorkloadError(f"s3://{bucket}/{prefix} holds no objects", reason=Reason.MODEL_NOT_FOUND, exit_code=ExitCode.BAD_INPUT)
