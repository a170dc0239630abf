"""Model and data URIs: one grammar (pure), and the one resolver that maps them to local paths.

Schemes: ``hf://ORG/NAME[@REV]``, ``modelscope://ORG/NAME[@REV]``, ``pvc://CLAIM[/PATH]``,
``s3://BUCKET[/KEY]``, ``file:///ABS/PATH`` (``file://`` only for runs on this machine: the CRDs
refuse it, because a path on the operator's or a node's file system means nothing to a run).

The grammar is written once, as regular expressions that mean the same to Python's ``re``, to
pydantic and to the API server's Go ``regexp`` (RE2: no look-arounds): the CRDs carry
:data:`CLUSTER_URI_PATTERN` as the schema ``pattern`` and :func:`parse_uri` matches the very same
expressions, so a URI the server accepts is a URI this module can resolve, and back.
No path segment is ``.`` or ``..`` and none is empty (``a//b``; one trailing ``/`` is fine), so no
URI can name a place outside its claim, bucket or repository; :func:`local_path` checks that once
more.

``pvc://`` and ``file://`` map to local paths. In a pod the operator mounts each claim at
``$DEVOPS_MODEL_STORAGE/<claim>`` (``/mnt/storage`` by default there); locally
``DEVOPS_MODEL_STORAGE`` defaults to ``~/.local/share/devops-model/storage``, so
``pvc://models/qwen`` is ``~/.local/share/devops-model/storage/models/qwen``.
Downloading (hf, modelscope, s3) lives in the workloads (``devops_workloads.sources``).
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

SCHEMES = ("hf", "modelscope", "pvc", "s3", "file")

# ----------------------------------------------------------------------------- the grammar
# One path character: anything but "/", "\" and control characters or space.
_C = r"[^/\\\x00-\x20\x7f]"
# The same without ".": a segment is not "." or "..", but ".cache" and "..." are fine.
_D = r"[^./\\\x00-\x20\x7f]"
SEGMENT = rf"(?:{_D}{_C}*|\.{_D}{_C}*|\.\.{_C}+)"
PATH = rf"{SEGMENT}(?:/{SEGMENT})*"
#: A PersistentVolumeClaim name as a DNS-1123 label (lowercase, digits, "-", at most 63).
CLAIM = r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?"
#: One part of a hub repository id (Hugging Face's rules: letters, digits, "_", and single "."
#: or "-" between them; no "..", "--", leading or trailing "." or "-").
REPO_PART = r"[A-Za-z0-9_]+(?:[.-][A-Za-z0-9_]+)*"
#: A revision: branch, tag, commit or refs/pr/N (no empty or ".." components).
REVISION = r"[A-Za-z0-9_]+(?:[./-][A-Za-z0-9_]+)*"
BUCKET = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*"

_HUB = rf"(?:hf|modelscope)://{REPO_PART}/{REPO_PART}(?:@{REVISION})?"
# One trailing "/" is allowed (a folder, as people write them); "//" inside is not.
_PVC = rf"pvc://{CLAIM}(?:/{PATH})?/?"
_S3 = rf"s3://{BUCKET}(?:/{PATH})?/?"
_FILE = rf"file:///{PATH}/?"

#: What the API server accepts (the CRDs' ``pattern``): no file://.
CLUSTER_URI_PATTERN = rf"^(?:{_HUB}|{_PVC}|{_S3})$"
#: What a run on this machine accepts (``devops-model run``, ``validate --local``).
LOCAL_URI_PATTERN = rf"^(?:{_HUB}|{_PVC}|{_S3}|{_FILE})$"
MAX_URI_LENGTH = 2048

URI_HELP = (
    "hf://ORG/NAME[@REVISION], modelscope://ORG/NAME[@REVISION], pvc://CLAIM[/PATH], "
    "s3://BUCKET[/KEY] or file:///ABS/PATH (file:// only for runs on this machine)"
)

_CLUSTER_RE = re.compile(CLUSTER_URI_PATTERN)
_LOCAL_RE = re.compile(LOCAL_URI_PATTERN)
_SPLIT_RE = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>.*)$", re.S)


@dataclass(frozen=True)
class ParsedUri:
    scheme: str
    #: hf/modelscope: ORG/NAME; pvc: claim; s3: bucket; file: "".
    authority: str
    #: path within the claim / bucket / file system ("" for hub repositories and whole claims).
    path: str
    #: hub revision after "@", if any.
    revision: str | None = None

    @property
    def is_local(self) -> bool:
        return self.scheme in ("pvc", "file")


class UriError(ValueError):
    pass


def check_uri(uri: str, *, allow_file: bool = True) -> None:
    """Raise :class:`UriError` naming what is wrong when ``uri`` is not in the grammar.
    ``allow_file=False`` is the API server's view (file:// is for local runs only)."""
    if not isinstance(uri, str):
        raise UriError(f"a URI must be a string: {URI_HELP}")
    if len(uri) > MAX_URI_LENGTH:
        raise UriError(f"a URI has at most {MAX_URI_LENGTH} characters (got {len(uri)})")
    if (_LOCAL_RE if allow_file else _CLUSTER_RE).match(uri):
        return
    raise UriError(_diagnose(uri, allow_file))


def _diagnose(uri: str, allow_file: bool) -> str:
    """The most specific reason why ``uri`` does not match the grammar."""
    m = _SPLIT_RE.match(uri)
    if not m or m["scheme"] not in SCHEMES:
        return f"unsupported URI {uri!r}: use {URI_HELP}"
    scheme, rest = m["scheme"], m["rest"]
    if scheme == "file" and not allow_file:
        return (f"file:// URIs are only for runs on this machine (devops-model run); in a cluster "
                f"use pvc://CLAIM/PATH (got {uri!r})")
    if re.search(r"[\\\x00-\x20\x7f]", rest):
        return f"{uri!r} contains a space, a backslash or a control character"
    if scheme in ("hf", "modelscope"):
        return (f"{scheme} URIs name a repository as ORG/NAME[@REVISION], e.g. {scheme}://Qwen/Qwen2.5-7B "
                f"(letters, digits, '_', and single '.' or '-' between them) (got {uri!r})")
    if scheme == "file":
        if not rest.startswith("/") or rest == "/":
            return f"file URIs need an absolute path, e.g. file:///data/model (got {uri!r})"
        segments = rest[1:].split("/")
    else:
        head, _, tail = rest.partition("/")
        what = {"pvc": "claim", "s3": "bucket"}[scheme]
        if not head:
            return f"{scheme} URI without a {what}: write {scheme}://{what.upper()}/PATH (got {uri!r})"
        if scheme == "pvc" and not re.fullmatch(CLAIM, head):
            return (f"the claim {head!r} is not a PersistentVolumeClaim name: lowercase letters, digits "
                    f"and '-', starting and ending with a letter or digit, at most 63 characters")
        if scheme == "s3" and not re.fullmatch(BUCKET, head):
            return f"the bucket {head!r} is not an S3 bucket name (lowercase letters, digits, '.' and '-')"
        segments = tail.split("/") if "/" in rest else []
    if any(s in (".", "..") for s in segments):
        return f"{uri!r} has a '.' or '..' segment; a URI cannot leave its claim, bucket or root"
    if any(s == "" for s in segments[:-1]) or (segments and segments == [""] and scheme == "file"):
        return f"{uri!r} has an empty path segment ('//'); remove it"
    return f"unsupported URI {uri!r}: use {URI_HELP}"


def parse_uri(uri: str, *, allow_file: bool = True) -> ParsedUri:
    """Split a URI into its parts; raises :class:`UriError` with the accepted forms."""
    check_uri(uri, allow_file=allow_file)
    scheme, rest = uri.split("://", 1)
    if scheme == "file":
        return ParsedUri("file", "", rest.rstrip("/") or "/")
    if scheme in ("hf", "modelscope"):
        repo, _, rev = rest.partition("@")
        return ParsedUri(scheme, repo, "", rev or None)
    head, _, path = rest.partition("/")
    return ParsedUri(scheme, head, path.rstrip("/"))


def storage_root() -> Path:
    """Root under which pvc:// claims are found (``DEVOPS_MODEL_STORAGE``)."""
    env = os.environ.get("DEVOPS_MODEL_STORAGE")
    if env:
        return Path(env)
    return Path.home() / ".local" / "share" / "devops-model" / "storage"


def local_path(uri: str) -> Path:
    """The local path of a pvc:// or file:// URI (raises for remote schemes).

    A pvc:// URI always lands inside ``$DEVOPS_MODEL_STORAGE/<claim>`` (in a pod: the claim's
    mount); the grammar already excludes ``..``, and the lexical check here keeps that true even
    if the grammar were loosened."""
    p = parse_uri(uri)
    if p.scheme == "file":
        return Path(posixpath.normpath(p.path))
    if p.scheme == "pvc":
        return resolve_within(storage_root() / p.authority, p.path, what=uri)
    raise UriError(f"{uri!r} is not on local storage; it must be downloaded first")


def resolve_within(base: str | os.PathLike[str], relative: str, *, what: str = "") -> Path:
    """``base/relative``, refusing any ``relative`` that would leave ``base`` (absolute paths,
    ``..`` that climbs above it). For names read from data, such as a registry's file_name."""
    rel = str(relative)
    label = what or rel
    if rel.startswith("/") or "\\" in rel or "\x00" in rel:
        raise UriError(f"{label}: must be a relative path inside {base} (got {rel!r})")
    norm = posixpath.normpath(rel) if rel else "."
    if norm == ".." or norm.startswith("../"):
        raise UriError(f"{label}: leaves {base} ({rel!r} climbs out with '..')")
    return Path(base) if norm == "." else Path(base) / norm


def path_to_uri(path: str | os.PathLike[str]) -> str:
    """A ``file://`` URI for a local path (absolute)."""
    return "file://" + str(Path(path).resolve())
