"""Model and data URIs: parsing (pure) and where they live on this machine or in a pod.

Schemes: ``hf://ORG/NAME[@REV]``, ``modelscope://ORG/NAME[@REV]``, ``pvc://CLAIM/PATH``,
``s3://BUCKET/KEY``, ``file:///ABS/PATH``.

``pvc://`` and ``file://`` map to local paths. In a pod the operator mounts each claim at
``$DEVOPS_MODEL_STORAGE/<claim>`` (``/mnt/storage`` by default there); locally
``DEVOPS_MODEL_STORAGE`` defaults to ``~/.local/share/devops-model/storage``, so
``pvc://models/qwen`` is ``~/.local/share/devops-model/storage/models/qwen``.
Downloading (hf, modelscope, s3) lives in the workloads (``devops_workloads.sources``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

SCHEMES = ("hf", "modelscope", "pvc", "s3", "file")
_URI_RE = re.compile(r"^(?P<scheme>[a-z][a-z0-9]*)://(?P<rest>.+)$")


@dataclass(frozen=True)
class ParsedUri:
    scheme: str
    #: hf/modelscope: ORG/NAME; pvc: claim; s3: bucket; file: "".
    authority: str
    #: path within the claim / bucket / file system ("" for hub repositories).
    path: str
    #: hub revision after "@", if any.
    revision: str | None = None

    @property
    def is_local(self) -> bool:
        return self.scheme in ("pvc", "file")


class UriError(ValueError):
    pass


def parse_uri(uri: str) -> ParsedUri:
    """Split a URI into its parts; raises :class:`UriError` with the accepted forms."""
    m = _URI_RE.match(uri or "")
    if not m or m["scheme"] not in SCHEMES:
        raise UriError(
            f"unsupported URI {uri!r}: use hf://ORG/NAME, modelscope://ORG/NAME, pvc://CLAIM/PATH, "
            "s3://BUCKET/KEY or file:///ABS/PATH"
        )
    scheme, rest = m["scheme"], m["rest"]
    if scheme == "file":
        if not rest.startswith("/"):
            raise UriError(f"file URIs need an absolute path, e.g. file:///data/model (got {uri!r})")
        return ParsedUri("file", "", rest)
    if scheme in ("hf", "modelscope"):
        repo, _, rev = rest.partition("@")
        if repo.count("/") != 1 or not all(repo.split("/")):
            raise UriError(f"{scheme} URIs name a repository as ORG/NAME, e.g. {scheme}://Qwen/Qwen2.5-7B (got {uri!r})")
        return ParsedUri(scheme, repo, "", rev or None)
    head, _, path = rest.partition("/")
    if not head:
        raise UriError(f"{scheme} URI without a {'claim' if scheme == 'pvc' else 'bucket'}: {uri!r}")
    return ParsedUri(scheme, head, path.strip("/"))


def storage_root() -> Path:
    """Root under which pvc:// claims are found (``DEVOPS_MODEL_STORAGE``)."""
    env = os.environ.get("DEVOPS_MODEL_STORAGE")
    if env:
        return Path(env)
    return Path.home() / ".local" / "share" / "devops-model" / "storage"


def local_path(uri: str) -> Path:
    """The local path of a pvc:// or file:// URI (raises for remote schemes)."""
    p = parse_uri(uri)
    if p.scheme == "file":
        return Path(p.path)
    if p.scheme == "pvc":
        return storage_root() / p.authority / p.path
    raise UriError(f"{uri!r} is not on local storage; it must be downloaded first")


def path_to_uri(path: str | os.PathLike[str]) -> str:
    """A ``file://`` URI for a local path (absolute)."""
    return "file://" + str(Path(path).resolve())
