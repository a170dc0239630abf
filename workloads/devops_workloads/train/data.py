"""Training data: the seed's ``dataset_info.json`` registry and plain URIs, streamed as plain records.

    stream = open_datasets(spec.data, stage="pt")  # resolve + sha1, nothing read yet
    stream.scan()                                  # every row read once: counts, problems, bad bytes
    for rec in stream.records(): ...               # streamed again, mixed (what train/tokenized.py does)
    ds = load_datasets(spec.data, stage="sft")     # small data: LoadedData(records, fingerprints, problems)

Sources: a registry entry (``file_name`` relative to the registry folder or a URI, ``hf_hub_url``,
``file_sha1``, ``columns``, ``stage``, ``formatting``) or ``spec.data.datasets[].uri``. Files are
jsonl/json/csv/parquet/txt (or a folder of them), read as streams: txt, jsonl and csv line by line,
a JSON array element by element, parquet through ``datasets`` (memory-mapped Arrow); one bad row is
counted instead of failing the file. Text is decoded strictly in the registry entry's ``encoding``
(UTF-8 unless it says e.g. ``"encoding": "gbk"``): a byte that does not decode stops the run with
the file and line (reason BadData, exit code 3), and rows that already hold U+FFFD replacement
characters are dropped and counted, so no model ever trains on damaged text.

Everything that can be checked before a GPU is used is checked here: the sha1 of every file (a
mismatch is an error, reason BadData, where the seed only warned), the registry's ``stage``, and the
shape of every row. Rows that cannot be used (no response, wrong types, broken JSON) are dropped and
counted per reason in ``DataProblems``, which the run reports; they never stop the run midway.

Records: pretraining ``{"text": str}``; SFT ``{"system": str|None, "turns": [(query, response), ...]}``
where the last turn is the one the row is about and the earlier ones are its history.
"""

from __future__ import annotations

import codecs
import csv
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from devops_model.contract import ExitCode, Reason
from devops_model.digests import file_sha1
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
    #: Text encoding of the files (a registry entry's ``encoding``; UTF-8 otherwise).
    encoding: str = "utf-8"

    def read_params(self) -> dict[str, Any]:
        """What decides the rows read from the source (part of the tokenized cache's key)."""
        return {"name": self.name, "columns": self.columns, "formatting": self.formatting,
                "maxSamples": self.max_samples, "encoding": self.encoding}


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
            if entry.get("encoding"):
                src.encoding = check_encoding(str(entry["encoding"]), f"{data_spec.registry}/dataset_info.json: {ref.name}.encoding")
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
#
# Every file is read as a stream: text, jsonl and csv line by line from the raw bytes, a JSON array
# element by element (``_json_array``), so memory follows the longest row, not the file. Bytes are
# decoded strictly: a byte sequence that is not valid in the file's encoding stops the run with the
# file and line named (never U+FFFD replacement characters in the training data).

#: A JSON array element larger than this is refused (the rest of the file would have to be buffered).
MAX_JSON_ELEMENT = 64 << 20
#: Bytes read at a time from a JSON array file.
JSON_CHUNK = 1 << 20
_UTF8 = {"utf-8", "utf_8", "utf8", "u8", "utf-8-sig", "utf_8_sig"}


class ReadCounter:
    """Bytes and rows read so far (what the progress of the data phases counts); ``on_rows`` is
    called every ``every`` rows."""

    def __init__(self, on_rows: Any = None, every: int = 256) -> None:
        self.bytes = 0
        self.rows = 0
        self.on_rows = on_rows
        self.every = every

    def row(self) -> None:
        self.rows += 1
        if self.on_rows is not None and self.rows % self.every == 0:
            self.on_rows(self)


def check_encoding(encoding: str, where: str) -> str:
    """A codec name that Python knows and that keeps ASCII as it is (line-oriented reading needs it)."""
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise bad_data(f"{where}: unknown encoding {encoding!r}; use e.g. utf-8, gbk, gb18030 or big5") from None
    if "\n[],{}\"".encode(name) != b"\n[],{}\"":
        raise bad_data(f"{where}: encoding {encoding!r} is not ASCII-compatible; convert the file to UTF-8 "
                       f"(iconv -f {encoding} -t UTF-8) and drop the encoding")
    return name


def _bad_bytes(src: "Source", path: Path, line: int, exc: UnicodeDecodeError, column: int | None = None) -> WorkloadError:
    bad = exc.object[exc.start:exc.end][:4].hex(" ")
    col = f", column {column}" if column is not None else ""
    hint = ('set "encoding" (e.g. "gbk") on its dataset_info.json entry or convert it to UTF-8'
            if src.encoding in _UTF8 else f"check the file's encoding (read as {src.encoding!r}) or convert it to UTF-8")
    return bad_data(f"{src.field_path} ({src.name}): {path} line {line}{col} is not valid {src.encoding} "
                    f"(bytes {bad}); {hint}")


def _decoded_lines(src: "Source", path: Path, counter: ReadCounter | None) -> Iterator[tuple[int, str]]:
    """(line number, decoded line without its line break) of a line-oriented file, strictly decoded."""
    utf8 = src.encoding in _UTF8
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            if counter is not None:
                counter.bytes += len(raw)
            if n == 1 and utf8 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                text = raw.decode(src.encoding)
            except UnicodeDecodeError as exc:
                raise _bad_bytes(src, path, n, exc, column=exc.start + 1) from None
            if text.endswith("\n"):
                text = text[:-2] if text.endswith("\r\n") else text[:-1]
            yield n, text


def _first_bad_line(src: "Source", path: Path) -> WorkloadError | None:
    """Re-read a file line by line to name the line of a decoding error (only on the error path)."""
    try:
        for _ in _decoded_lines(src, path, None):
            pass
    except WorkloadError as exc:
        return exc
    return None


def _json_array(src: "Source", path: Path, where: str, counter: ReadCounter | None,
                chunk: int = JSON_CHUNK) -> Iterator[tuple[str, Any]]:
    """Elements of a top-level JSON array, parsed incrementally: memory ~ one element + one chunk."""
    decoder = json.JSONDecoder()
    dec = codecs.getincrementaldecoder(src.encoding)("strict")
    buf, pos, eof, first = "", 0, False, True
    line, counted = 1, 0  # line number at ``counted`` (an index into buf)

    def more() -> bool:
        nonlocal buf, pos, counted, eof, line, first
        if eof:
            return False
        raw = fh.read(chunk)
        if counter is not None:
            counter.bytes += len(raw)
        try:
            text = dec.decode(raw, final=not raw)
        except UnicodeDecodeError:
            raise (_first_bad_line(src, path) or bad_data(f"{src.field_path} ({src.name}): {path} is not valid {src.encoding}")) from None
        if not raw:
            eof = True
        if first and text:
            text, first = text[1:] if text.startswith("\ufeff") else text, False
        line += buf.count("\n", counted, pos)
        buf, counted, pos = buf[pos:] + text, 0, 0
        return bool(raw)

    def skip_ws() -> None:
        nonlocal pos
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n":
                pos += 1
            if pos < len(buf) or not more():
                return

    def here() -> int:
        nonlocal line, counted
        line += buf.count("\n", counted, pos)
        counted = pos
        return line

    def invalid(what: str) -> WorkloadError:
        return bad_data(f"{src.field_path} ({src.name}): {path} line {here()} is not valid JSON ({what}); "
                        "fix the file, or write one object per line (jsonl)")

    with open(path, "rb") as fh:
        skip_ws()
        if pos >= len(buf) or buf[pos] != "[":
            raise invalid("expected '[' at the start of a JSON array")
        pos += 1
        i = 0
        skip_ws()
        if pos < len(buf) and buf[pos] == "]":
            pos += 1
        else:
            while True:
                skip_ws()
                start_line = here()
                while True:
                    try:
                        row, end = decoder.raw_decode(buf, pos)
                    except json.JSONDecodeError as exc:
                        if len(buf) - pos > MAX_JSON_ELEMENT:
                            raise bad_data(f"{src.field_path} ({src.name}): {path} line {start_line}: a JSON array element "
                                           f"is larger than {MAX_JSON_ELEMENT >> 20} MiB or broken ({exc.msg}); "
                                           "write one object per line (jsonl)") from None
                        if not more():
                            raise invalid(exc.msg) from None
                        continue
                    if isinstance(row, (int, float)) and not eof and len(buf) - end < 32:
                        more()  # a number cut by the chunk's end (12|34, 1|.5, 1e|5): look further, then again
                        continue
                    break
                pos = end
                if counter is not None:
                    counter.row()
                yield f"{where}:{start_line}", row
                i += 1
                skip_ws()
                if pos < len(buf) and buf[pos] == ",":
                    pos += 1
                    continue
                if pos < len(buf) and buf[pos] == "]":
                    pos += 1
                    break
                raise invalid("expected ',' or ']' after an element")
        skip_ws()
        if pos < len(buf):
            raise invalid("extra data after the array")


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in EXTENSIONS)
    if not files:
        raise bad_data(f"{path} holds no {'/'.join(EXTENSIONS)} files")
    return files


def _starts_with_bracket(src: "Source", path: Path) -> bool:
    """Whether a .json/.jsonl file holds one JSON array (else it is read as one object per line)."""
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if src.encoding in _UTF8 and head.startswith(codecs.BOM_UTF8):
        head = head[len(codecs.BOM_UTF8):]
    return head.lstrip(b" \t\r\n").startswith(b"[")


def _rows(src: Source, problems: DataProblems, counter: ReadCounter | None = None) -> Iterator[tuple[str, Any]]:
    """(where, row) for every row of the source, streamed; unreadable rows are counted, not raised."""
    if src.hub:
        try:
            import datasets

            ds = datasets.load_dataset(src.hub, split="train")
        except Exception as exc:
            raise WorkloadError(f"{src.field_path}: could not load hf_hub_url {src.hub!r}: {exc}",
                                reason=Reason.DATA_DOWNLOAD_FAILED) from exc
        for i, row in enumerate(ds):
            if counter is not None:
                counter.row()
            yield f"{src.name}:{i}", row
        return
    for path in _files(src.path):
        kind = EXTENSIONS.get(path.suffix)
        if kind is None:
            raise bad_data(f"{src.field_path}: cannot read {path.name}; use one of {', '.join(EXTENSIONS)}")
        where = f"{src.name}:{path.name}"
        if kind == "text":
            for n, line in _decoded_lines(src, path, counter):
                if counter is not None:
                    counter.row()
                yield f"{where}:{n}", {"text": line}
        elif kind == "json":
            if _starts_with_bracket(src, path):
                yield from _json_array(src, path, where, counter)
            else:
                for n, line in _decoded_lines(src, path, counter):
                    if not line.strip():
                        continue
                    if counter is not None:
                        counter.row()
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        problems.add("invalid JSON line", f"{where}:{n}")
                        continue
                    yield f"{where}:{n}", row
        elif kind == "csv":
            lines = _decoded_lines(src, path, counter)
            numbers: list[int] = [0]

            def texts() -> Iterator[str]:
                for n, line in lines:
                    numbers[0] = n
                    yield line + "\n"

            try:
                for row in csv.DictReader(texts()):
                    if counter is not None:
                        counter.row()
                    yield f"{where}:{numbers[0]}", row
            except csv.Error as exc:
                raise bad_data(f"{src.field_path} ({src.name}): {path} line {numbers[0]} is not valid CSV ({exc})") from None
        else:  # parquet, through datasets (arrow, memory-mapped)
            import datasets

            for i, row in enumerate(datasets.load_dataset("parquet", data_files=str(path), split="train")):
                if counter is not None:
                    counter.row()
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


def _damaged(rec: dict[str, Any]) -> bool:
    """Whether a record holds U+FFFD, the mark of text that an earlier lossy decoding damaged."""
    if "text" in rec:
        return "\ufffd" in rec["text"]
    return "\ufffd" in (rec.get("system") or "") or any("\ufffd" in q or "\ufffd" in r for q, r in rec["turns"])


DAMAGED = "contains U+FFFD replacement characters (text damaged by an earlier lossy decoding)"


def iter_normalized(src: Source, stage: str, problems: DataProblems,
                    counter: ReadCounter | None = None) -> Iterator[dict[str, Any]]:
    """The usable records of one source, streamed; unusable rows are counted in ``problems``."""
    n = 0
    for where, row in _rows(src, problems, counter):
        if src.max_samples is not None and n >= src.max_samples:
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
        if not isinstance(rec, str) and _damaged(rec):
            rec = DAMAGED
        if isinstance(rec, str):
            problems.add(rec, where)
            continue
        n += 1
        yield rec


def normalize(src: Source, stage: str, problems: DataProblems) -> list[dict[str, Any]]:
    return list(iter_normalized(src, stage, problems))


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


@dataclass
class DataStream:
    """The datasets of ``spec.data`` resolved and sha1-verified, read again on every ``records()``.

    ``scan()`` reads everything once without keeping it (row counts and problems, every bad byte
    found) so that data errors stop the run before a model is downloaded; ``records()`` then streams
    the mixed records in exactly the order ``mix`` gives for lists. Memory: one row at a time for
    ``concat`` and ``interleaveUnder``; ``interleaveOver`` keeps the shorter datasets in memory
    (it draws rows from them at random once they run out), streaming the longest."""

    sources: list[Source]
    fingerprints: dict[str, dict[str, Any]]
    stage: str
    strategy: str
    seed: int
    system_prompt: str | None = None
    problems: DataProblems = field(default_factory=DataProblems)
    #: Usable rows per source (after ``scan()``).
    counts: list[int] | None = None

    def read_params(self) -> dict[str, Any]:
        """Everything that decides the records (with the sha1s, the data's part of a cache key)."""
        return {"sources": [s.read_params() for s in self.sources],
                "sha1": {k: v.get("sha1") or v.get("uri") for k, v in self.fingerprints.items()},
                "stage": self.stage, "mix": self.strategy, "seed": self.seed, "systemPrompt": self.system_prompt}

    def total_bytes(self) -> int:
        return sum(p.stat().st_size for s in self.sources if s.path is not None for p in _files(s.path))

    def scan(self, counter: ReadCounter | None = None) -> list[int]:
        """Read every row once (nothing kept): usable rows per source; problems recorded."""
        self.problems = DataProblems()
        self.counts = [sum(1 for _ in iter_normalized(s, self.stage, self.problems, counter)) for s in self.sources]
        for s, n in zip(self.sources, self.counts):
            self.fingerprints[s.name]["rows"] = n
        if not sum(self.counts):
            detail = f" ({self.problems.summary()})" if self.problems.total() else ""
            raise bad_data(f"spec.data: no usable rows in {', '.join(s.name for s in self.sources)}{detail}")
        return self.counts

    def records(self, counter: ReadCounter | None = None, problems: DataProblems | None = None) -> Iterator[dict[str, Any]]:
        """The mixed records, streamed (``scan()`` first for the interleave strategies)."""
        problems = problems if problems is not None else DataProblems()
        for rec in self._mixed(counter, problems):
            if self.system_prompt and self.stage == "sft":
                rec["system"] = rec.get("system") or self.system_prompt
            yield rec

    def _mixed(self, counter: ReadCounter | None, problems: DataProblems) -> Iterator[dict[str, Any]]:
        streams = [iter_normalized(s, self.stage, problems, counter) for s in self.sources]
        if self.strategy == "concat" or len(streams) == 1:
            for st in streams:
                yield from st
            return
        if self.counts is None:
            self.scan()
        parts = [(st, n) for st, n in zip(streams, self.counts) if n]  # mix() leaves empty datasets out
        if self.strategy == "interleaveUnder":
            for rows in zip(*(st for st, _ in parts)):
                yield from rows
            return
        rng = random.Random(self.seed)
        longest = max(n for _, n in parts)
        kept: list[list[dict[str, Any]] | None] = [None if n == longest else [] for _, n in parts]
        for i in range(longest):
            for j, (st, n) in enumerate(parts):
                if i < n:
                    rec = next(st)
                    if kept[j] is not None:
                        kept[j].append(rec)
                    yield rec
                else:
                    yield kept[j][rng.randrange(n)]


def open_datasets(data_spec: Any, stage: str, seed: int = 42) -> DataStream:
    """Resolve and verify (sha1, stage, encoding) every dataset of ``spec.data``; nothing is read yet."""
    sources = resolve_sources(data_spec, stage)
    prints = verify_sha1(sources)
    return DataStream(sources, prints, stage, data_spec.mix_strategy, seed,
                      data_spec.system_prompt if stage == "sft" else None)


def load_datasets(data_spec: Any, stage: str, seed: int = 42) -> LoadedData:
    """Resolve, verify (sha1, stage) and read every dataset of ``spec.data`` into memory (small data)."""
    stream = open_datasets(data_spec, stage, seed)
    stream.scan()
    records = list(stream.records())
    return LoadedData(records, stream.fingerprints, stream.problems)


def iter_text(records: Iterable[dict[str, Any]]) -> Iterator[str]:
    for r in records:
        yield r["text"]
