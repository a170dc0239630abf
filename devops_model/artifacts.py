"""Content-addressed artifacts: what a run produced, sealed when it succeeds, checked before use.

When a run that writes a model (PretrainRun, SFTRun, QuantizeRun) succeeds, its worker *seals* the
artifact folder: it writes ``manifest.sha256`` (one ``<sha256>  <relative path>`` line per file, the
format ``sha256sum -c`` reads) and reports ``sha256:`` + the SHA-256 of that manifest as
``status.artifact.digest``. The operator copies the digest into the run's status from the run's own
pod (its termination message), locally the run registry records it. Every consumer (a run with
``fromRun``: SFT on a pretrained model, evaluation, quantization, the built-in server) verifies the
folder against the digest of its parent's status before loading a byte, and fails with reason
``ArtifactMismatch`` naming the first file that differs.

Not covered by the manifest (they change after the run, or are caches, not the model):
``artifact.json`` (it records the digest itself), ``progress.jsonl``, ``checkpoints/`` (resume state),
``tokenized/`` (the data cache), ``runs/`` (TensorBoard) and a nested folder that is sealed on its
own (the merged LoRA model, ``merged/``, has its own manifest and ``artifact.mergedDigest``).

Remote artifacts (``s3://``, hub ids) are not verified here; the hub's own revisions pin those.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from .digests import file_sha256

MANIFEST = "manifest.sha256"
#: Top-level entries of an artifact folder that are not part of its content.
NOT_CONTENT = frozenset({MANIFEST, "artifact.json", "progress.jsonl", "checkpoints", "tokenized", "runs", ".complete"})
DIGEST_PREFIX = "sha256:"


class ArtifactMismatchError(ValueError):
    """The folder is not what the producing run sealed; the message names the file."""


def _files(root: Path, skip: Iterable[str]) -> list[str]:
    skipped = NOT_CONTENT | set(skip)
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d not in skipped]
            filenames = [f for f in filenames if f not in skipped]
        dirnames.sort()
        for name in filenames:
            out.append(name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/"))
    return sorted(out)


def manifest_text(root: str | os.PathLike[str], skip: Iterable[str] = ()) -> str:
    """The manifest of ``root`` as it is now (``sha256sum`` format, sorted by path)."""
    base = Path(root)
    return "".join(f"{file_sha256(base / rel)}  {rel}\n" for rel in _files(base, skip))


def digest_of(text: str) -> str:
    return DIGEST_PREFIX + hashlib.sha256(text.encode("utf-8")).hexdigest()


def seal(root: str | os.PathLike[str], skip: Iterable[str] = ()) -> str:
    """Write ``root/manifest.sha256`` and return the artifact's digest (``sha256:<hex>``)."""
    text = manifest_text(root, skip)
    tmp = Path(root) / f".{MANIFEST}.tmp"
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(Path(root) / MANIFEST)
    return digest_of(text)


def _parse(text: str) -> dict[str, str]:
    entries: dict[str, str] = {}
    for line in text.splitlines():
        digest, sep, rel = line.partition("  ")
        if sep:
            entries[rel] = digest
    return entries


def verify(root: str | os.PathLike[str], expected: str, skip: Iterable[str] = (), label: str = "") -> None:
    """Check that ``root`` still holds exactly what was sealed with digest ``expected``.

    Raises :class:`ArtifactMismatchError` naming the first changed, added or removed file."""
    base = Path(root)
    what = label or str(base)
    sealed_path = base / MANIFEST
    sealed = sealed_path.read_text(encoding="utf-8") if sealed_path.is_file() else None
    current = manifest_text(base, skip)
    if digest_of(current) == expected:
        return
    old = _parse(sealed) if sealed is not None and digest_of(sealed) == expected else None
    if old is None:
        raise ArtifactMismatchError(
            f"{what}: the files differ from the artifact its run produced (digest {expected}), and "
            f"{MANIFEST} was changed or removed too; recreate the producing run")
    new = _parse(current)
    for rel in sorted(set(old) | set(new)):
        if rel not in new:
            problem = "was removed"
        elif rel not in old:
            problem = "was added"
        elif old[rel] != new[rel]:
            problem = "was changed"
        else:
            continue
        raise ArtifactMismatchError(
            f"{what}: {rel} {problem} after the run that produced it finished (artifact digest "
            f"{expected}); recreate the producing run or restore the file")
    raise ArtifactMismatchError(f"{what}: the files differ from the artifact its run produced (digest {expected})")
