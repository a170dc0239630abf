"""Training data: the seed's ``dataset_info.json`` registry and plain URIs, read into plain records.

    ds = load_datasets(spec.data, stage="sft")   # -> LoadedData(records, fingerprints, problems)

Sources: a registry entry (``file_name`` relative to the registry folder or a URI, ``hf_hub_url``,
``file_sha1``, ``columns``, ``stage``, ``formatting``) or ``spec.data.datasets[].uri``. Files are
jsonl/json/csv/parquet/txt (or a folder of them); csv and parquet go through ``datasets``, json,
jsonl and txt are read line by line so that one bad row is counted instead of failing the file.

Everything that can be checked before a GPU is used is checked here: the sha1 of every file (a
mismatch is an error, reason BadData, where the seed only warned), the registry's ``stage``, and the
shape of every row. Rows that cannot be used (no response, wrong types, broken JSON) are dropped and
counted per reason in ``DataProblems``, which the run reports; they never stop the run midway.

Records: pretraining ``{"text": str}``; SFT ``{"system": str|None, "turns": [(query, response), ...]}``
where the last turn is the one the row is about and the earlier ones are its history.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from devops_model.contract import ExitCode, Reason
from devops_model.uris import UriError, local_path, parse_uri, resolve_within

from ..runner import WorkloadError

EXTENSIONS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}
#: sharegpt role names -> user/assistant/system.
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "bot": "assistant",
         "model": "assistant", "system": "system"}


@dataclass
class DataProblems:
    """Rows dropped or changed, per reason, with a few examples (``dataset:row``)."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, where: str) -> None:
        self.counts[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < 3:
            ex.append(where)

    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        return ", ".join(f"{reason}: {n}" for reason, n in sorted(self.counts.items()))

    def to_dict(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "examples": self.examples}


@dataclass
class LoadedData:
    records: list[dict[str, Any]]
    #: dataset name -> {"uri", "sha1", "rows"} (goes into artifact.json).
    fingerprints: dict[str, dict[str, Any]]
    problems: DataProblems


def bad_data(message: str) -> WorkloadError:
    return WorkloadError(message, reason=Reason.BAD_DATA, exit_code=ExitCode.BAD_INPUT)


def file_sha1(path: Path) -> str:
    """SHA-1 of a file, or of a folder's files in sorted order (names and contents)."""
    h = hashlib.sha1()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        if path.is_dir():
            h.update(str(p.relative_to(path)).encode())
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _within(base: Path, name: str, what: str) -> Path:
    """A registry's relative file name, refused when it leaves the registry folder (issue 14)."""
    try:
        return resolve_within(base, name, what=what)
    except UriError as exc:
        raise bad_data(str(exc)) from None


def _local(uri: str, what: str) -> Path:
    try:
        parsed = parse_uri(uri)
    except UriError as exc:
        raise bad_data(f"{what}: {exc}") from None
    if not parsed.is_local:
        if parsed.scheme == "s3":
            from ..sources import materialize_model  # same downloader and credentials as models

            return materialize_model(uri)
        raise bad_data(f"{what}: {uri} is not a data location; use pvc://, file:// or s3:// (hub datasets go in the registry as hf_hub_url)")
    return local_path(uri)


@dataclass
class Source:
    """One dataset resolved to a place, with its columns and expected shape."""

    name: str
    field_path: str
    path: Path | None = None
    hub: str | None = None
    sha1: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    formatting: str = "auto"
    max_samples: int | None = None


def resolve_sources(data_spec: Any, stage: str) -> list[Source]:
    """Registry entries and URIs -> Sources; registry errors name the field and the fix."""
    registry: dict[str, Any] = {}
    reg_dir: Path | None = None
    if data_spec.registry:
        reg_dir = _local(data_spec.registry, "spec.data.registry")
        info = reg_dir / "dataset_info.json" if reg_dir.is_dir() or not reg_dir.suffix else reg_dir
        if info.name == "dataset_info.json" and info.parent != reg_dir:
            reg_dir = info.parent
        if not info.exists():
            raise bad_data(f"spec.data.registry: {info} not found; point it at the folder that holds dataset_info.json")
        try:
            registry = json.loads(info.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise bad_data(f"spec.data.registry: {info} is not valid JSON ({exc})") from None
    out = []
    for i, ref in enumerate(data_spec.datasets):
        fp = f"spec.data.datasets[{i}]"
        cols = {k: v for k, v in (ref.columns.to_dict() if ref.columns else {}).items() if v is not None}
        if ref.name:
            if ref.name not in registry:
                known = ", ".join(sorted(registry)) or "none"
                raise bad_data(f"{fp}.name: {ref.name!r} is not in {data_spec.registry}/dataset_info.json (known: {known})")
            entry = registry[ref.name]
            want = entry.get("stage")
            if want and want != stage:
                raise bad_data(f"{fp}.name: dataset {ref.name!r} is registered for stage {want!r}, not {stage!r}; "
                               f"use a {stage} dataset or fix its stage in dataset_info.json")
            src = Source(ref.name, fp, sha1=ref.sha1 or entry.get("file_sha1"),
                         columns={**(entry.get("columns") or {}), **cols},
                         formatting=entry.get("formatting", "auto") if ref.format == "auto" else ref.format,
                         max_samples=ref.max_samples)
            if entry.get("hf_hub_url"):
                src.hub = entry["hf_hub_url"]
            elif entry.get("file_name"):
                fn = entry["file_name"]
                what = f"{fp} ({ref.name}.file_name)"
                src.path = _local(fn, what) if "://" in fn else _within(reg_dir, fn, what)
            elif entry.get("script_url"):
                src.path = _within(reg_dir, entry["script_url"], f"{fp} ({ref.name}.script_url)")
            else:
                raise bad_data(f"{fp}.name: registry entry {ref.name!r} has none of file_name, hf_hub_url or script_url")
        else:
            src = Source(Path(ref.uri).name, fp, path=_local(ref.uri, f"{fp}.uri"), sha1=ref.sha1,
                         columns=cols, formatting=ref.format, max_samples=ref.max_samples)
        if src.path is not None and not src.path.exists():
            raise bad_data(f"{fp}: {src.path} does not exist")
        out.append(src)
    return out


def verify_sha1(sources: list[Source]) -> dict[str, dict[str, Any]]:
    """Check every expected sha1 before anything else happens; returns the fingerprints."""
    prints = {}
    for src in sources:
        if src.path is None:
            prints[src.name] = {"uri": f"hf://{src.hub}", "sha1": None}
            continue
        actual = file_sha1(src.path)
        if src.sha1 and actual != src.sha1.lower():
            raise bad_data(
                f"{src.field_path}: sha1 of {src.path} is {actual}, expected {src.sha1} "
                "(the file changed since it was registered); fix the file, or update file_sha1 / sha1 if the change is intended"
            )
        prints[src.name] = {"uri": str(src.path), "sha1": actual, "verified": bool(src.sha1)}
    return prints


# --------------------------------------------------------------------------- reading rows


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in EXTENSIONS)
    if not files:
        raise bad_data(f"{path} holds no {'/'.join(EXTENSIONS)} files")
    return files


def _rows(src: Source, problems: DataProblems) -> Iterator[tuple[str, Any]]:
    """(where, row) for every row of the source; unreadable rows are counted, not raised."""
    if src.hub:
        try:
            import datasets

            ds = datasets.load_dataset(src.hub, split="train")
        except Exception as exc:
            raise WorkloadError(f"{src.field_path}: could not load hf_hub_url {src.hub!r}: {exc}",
                                reason=Reason.DATA_DOWNLOAD_FAILED) from exc
        for i, row in enumerate(ds):
            yield f"{src.name}:{i}", row
        return
    for path in _files(src.path):
        kind = EXTENSIONS.get(path.suffix)
        if kind is None:
            raise bad_data(f"{src.field_path}: cannot read {path.name}; use one of {', '.join(EXTENSIONS)}")
        where = f"{src.name}:{path.name}"
        if kind == "text":
            with open(path, encoding="utf-8", errors="replace") as fh:
                for i, line in enumerate(fh):
                    yield f"{where}:{i + 1}", {"text": line.rstrip("\n")}
        elif kind == "json":
            text = path.read_text(encoding="utf-8")
            stripped = text.lstrip()
            if stripped.startswith("["):
                try:
                    rows = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise bad_data(f"{src.field_path}: {path} is not valid JSON ({exc})") from None
                for i, row in enumerate(rows):
                    yield f"{where}:{i}", row
            else:
                for i, line in enumerate(text.splitlines()):
                    if not line.strip():
                        continue
                    try:
                        yield f"{where}:{i + 1}", json.loads(line)
                    except json.JSONDecodeError:
                        problems.add("invalid JSON line", f"{where}:{i + 1}")
        elif kind == "csv":
            with open(path, encoding="utf-8", newline="") as fh:
                for i, row in enumerate(csv.DictReader(fh)):
                    yield f"{where}:{i + 2}", row
        else:  # parquet, through datasets (arrow)
            import datasets

            for i, row in enumerate(datasets.load_dataset("parquet", data_files=str(path), split="train")):
                yield f"{where}:{i}", row


def _str(value: Any) -> str | None:
    """A text cell: strings as they are, None/NaN as missing, anything else is a wrong type."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, str):
        return value
    raise TypeError(type(value).__name__)


def _detect(src: Source, row: dict, stage: str) -> str:
    if src.formatting != "auto":
        return src.formatting
    if src.columns.get("messages") or "conversations" in row or "messages" in row:
        return "sharegpt"
    if stage == "pt":
        return "text"
    return "alpaca"


def _alpaca(row: dict, cols: dict[str, str]) -> dict[str, Any] | str:
    prompt = _str(row.get(cols.get("prompt", "instruction") or "\0"))
    query = _str(row.get(cols.get("query", "input") or "\0"))
    response = _str(row.get(cols.get("response", "output") or "\0"))
    system = _str(row.get(cols["system"])) if cols.get("system") else None
    if not prompt or not response:
        return "missing prompt" if not prompt else "missing response"
    # Seed: the prompt is ``prompt + "\n" + query`` (the query only when non-empty).
    text = prompt + "\n" + query if query else prompt
    turns: list[tuple[str, str]] = []
    hist = row.get(cols["history"]) if cols.get("history") else None
    if hist:
        if not isinstance(hist, list) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in hist):
            return "history is not a list of [query, response] pairs"
        for q, r in hist:
            if _str(q) is None or _str(r) is None:
                return "history has an empty turn"
            turns.append((q, r))
    turns.append((text, response))
    return {"system": system, "turns": turns}


def _sharegpt(row: dict, cols: dict[str, str]) -> dict[str, Any] | str:
    key = cols.get("messages") or ("conversations" if "conversations" in row else "messages")
    msgs = row.get(key)
    if not isinstance(msgs, list) or not msgs:
        return f"no {key} list"
    system = _str(row.get(cols["system"])) if cols.get("system") else None
    norm = []
    for m in msgs:
        if not isinstance(m, dict):
            return "message is not an object"
        role = ROLES.get(str(m.get("from", m.get("role", ""))).lower())
        content = m.get("value", m.get("content"))
        if role is None:
            return "unknown message role"
        content = _str(content)
        if content is None:
            return "empty message"
        norm.append((role, content))
    if norm[0][0] == "system":
        system = norm[0][1]
        norm = norm[1:]
    if not norm:
        return "no user turn"
    if norm[-1][0] != "assistant":
        return "missing response"
    if len(norm) % 2 or any(r != ("user" if i % 2 == 0 else "assistant") for i, (r, _) in enumerate(norm)):
        return "turns do not alternate user/assistant"
    return {"system": system, "turns": [(norm[i][1], norm[i + 1][1]) for i in range(0, len(norm), 2)]}


def _text_row(row: dict, cols: dict[str, str]) -> dict[str, Any] | str:
    key = cols.get("prompt") or next((k for k in ("text", "content", "instruction") if k in row), "text")
    text = _str(row.get(key))
    if not text or not text.strip():
        return "empty text"
    return {"text": text}


def normalize(src: Source, stage: str, problems: DataProblems) -> list[dict[str, Any]]:
    out = []
    for where, row in _rows(src, problems):
        if src.max_samples is not None and len(out) >= src.max_samples:
            break
        if not isinstance(row, dict):
            problems.add("row is not an object", where)
            continue
        shape = _detect(src, row, stage)
        try:
            if stage == "pt":
                rec = _text_row(row, src.columns) if shape != "sharegpt" else "sharegpt rows cannot be used for pretraining"
            elif shape == "sharegpt":
                rec = _sharegpt(row, src.columns)
            elif shape == "text":
                rec = "text rows cannot be used for SFT"
            else:
                rec = _alpaca(row, src.columns)
        except TypeError as exc:
            rec = f"wrong type ({exc} where text was expected)"
        if isinstance(rec, str):
            problems.add(rec, where)
            continue
        out.append(rec)
    return out


def mix(parts: list[list[dict[str, Any]]], strategy: str, seed: int) -> list[dict[str, Any]]:
    """concat, or interleave until the smallest (interleaveUnder) / largest (interleaveOver) runs out."""
    if strategy == "concat" or len(parts) == 1:
        return [r for p in parts for r in p]
    rng = random.Random(seed)
    parts = [list(p) for p in parts if p]
    out: list[dict[str, Any]] = []
    if strategy == "interleaveUnder":
        for rows in zip(*parts):
            out.extend(rows)
        return out
    longest = max(len(p) for p in parts)
    for i in range(longest):
        for p in parts:
            out.append(p[i % len(p)] if i < len(p) else p[rng.randrange(len(p))])
    return out


def load_datasets(data_spec: Any, stage: str, seed: int = 42) -> LoadedData:
    """Resolve, verify (sha1, stage) and read every dataset of ``spec.data``."""
    sources = resolve_sources(data_spec, stage)
    prints = verify_sha1(sources)
    problems = DataProblems()
    parts = []
    for src in sources:
        rows = normalize(src, stage, problems)
        prints[src.name]["rows"] = len(rows)
        parts.append(rows)
    records = mix(parts, data_spec.mix_strategy, seed)
    if data_spec.system_prompt and stage == "sft":
        for r in records:
            r["system"] = r.get("system") or data_spec.system_prompt
    if not records:
        detail = f" ({problems.summary()})" if problems.total() else ""
        raise bad_data(f"spec.data: no usable rows in {', '.join(s.name for s in sources)}{detail}")
    return LoadedData(records, prints, problems)


def iter_text(records: Iterable[dict[str, Any]]) -> Iterator[str]:
    for r in records:
        yield r["text"]
