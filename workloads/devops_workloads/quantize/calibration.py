"""Calibration (and held-out) text for GPTQ: read datasets, render them, tokenize, split.

GPTQ sets each layer's weights so that the layer's output on *calibration activations* changes as
little as possible, so the data should look like what the model will see: for a Chinese DevOps chat
model, its own SFT conversations rendered with its chat template. Hence the default (when
``spec.calibration.datasets`` is omitted): the datasets of the parent SFTRun (``spec.data``).

Rows are read from jsonl/json/csv/parquet/txt files (or folders of them) in the seed's shapes:

* ``alpaca``: ``instruction`` (+ ``\\n`` + ``input``) → ``output``, optional ``history`` of pairs;
* ``sharegpt``: a list of messages (``{"from": "human", "value": …}`` or ``{"role", "content"}``);
* ``text``: one document per row (column ``text``, or the prompt column).

Conversational rows are rendered with the tokenizer's chat template when
``calibration.applyChatTemplate`` is on (plain ``prompt\\nresponse`` otherwise). Samples shorter than
``minLength`` tokens are skipped and longer ones cut to ``maxLength``. The first rows (in file
order) calibrate; a disjoint held-out part measures perplexity before and after.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from devops_model.contract import ExitCode, Reason
from devops_model.digests import file_sha1
from devops_model.uris import UriError, local_path, parse_uri, resolve_within

from ..runner import WorkloadError

DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")
ROLE_NAMES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
              "system": "system", "observation": "user", "function_call": "assistant"}


@dataclass
class CalibrationSet:
    """Token ids for calibration and the held-out texts for perplexity."""

    samples: list[list[int]]
    heldout: list[str]
    sources: list[str]
    rows_read: int
    skipped_short: int

    @property
    def tokens(self) -> int:
        return sum(len(s) for s in self.samples)


def bad(field: str, message: str) -> WorkloadError:
    return WorkloadError(f"{field}: {message}", reason=Reason.BAD_DATA, exit_code=ExitCode.BAD_INPUT)


def resolve_data_uri(uri: str, field: str) -> Path:
    """Local path of a data URI (pvc:// and file:// map locally; s3:// is downloaded)."""
    try:
        parsed = parse_uri(uri)
    except UriError as exc:
        raise bad(field, str(exc)) from None
    if parsed.is_local:
        path = local_path(uri)
    else:
        from ..sources import materialize_model  # the same downloader serves data folders

        path = materialize_model(uri)
    if not path.exists():
        raise bad(field, f"{uri} not found (looked at {path}); check the path or the mounted claim")
    return path


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in DATA_SUFFIXES
                   and p.name != "dataset_info.json")
    return found


def read_rows(path: Path, field: str) -> list[Any]:
    """All rows of a data file or folder: dicts (json/csv/parquet) or strings (txt)."""
    rows: list[Any] = []
    for f in _files(path):
        try:
            if f.suffix == ".jsonl":
                with open(f, encoding="utf-8") as fh:
                    rows.extend(json.loads(line) for line in fh if line.strip())
            elif f.suffix == ".json":
                data = json.loads(f.read_text(encoding="utf-8"))
                rows.extend(data if isinstance(data, list) else [data])
            elif f.suffix == ".csv":
                with open(f, encoding="utf-8", newline="") as fh:
                    rows.extend(csv.DictReader(fh))
            elif f.suffix == ".parquet":
                import pyarrow.parquet as pq

                rows.extend(pq.read_table(f).to_pylist())
            elif f.suffix == ".txt":
                # Documents are separated by blank lines (one paragraph = one sample).
                text = f.read_text(encoding="utf-8")
                rows.extend(p.strip() for p in text.split("\n\n") if p.strip())
        except (ValueError, OSError) as exc:
            raise bad(field, f"cannot read {f}: {exc}") from None
    if not rows:
        raise bad(field, f"no rows in {path} (expected {', '.join(DATA_SUFFIXES)} files)")
    return rows


def _col(columns: dict[str, Any], key: str, default: str | None) -> str | None:
    value = columns.get(key, default)
    return value or None  # "" means "no such column" (seed convention)


def row_to_messages(row: Any, fmt: str, columns: dict[str, Any]) -> list[dict[str, str]] | str | None:
    """A row as chat messages (conversational data) or as plain text (``text`` rows)."""
    if isinstance(row, str):
        return row
    if not isinstance(row, dict):
        return None
    msg_col = _col(columns, "messages", None)
    if fmt == "auto":
        if msg_col and msg_col in row or "conversations" in row or "messages" in row:
            fmt = "sharegpt"
        elif (_col(columns, "prompt", "instruction") or "") in row:
            fmt = "alpaca"
        else:
            fmt = "text"
    if fmt == "sharegpt":
        conv = row.get(msg_col) if msg_col else (row.get("conversations") or row.get("messages"))
        if not isinstance(conv, list):
            return None
        messages = []
        system_col = _col(columns, "system", None)
        if system_col and row.get(system_col):
            messages.append({"role": "system", "content": str(row[system_col])})
        for m in conv:
            if not isinstance(m, dict):
                continue
            role = ROLE_NAMES.get(str(m.get("from", m.get("role", ""))).lower())
            content = m.get("value", m.get("content"))
            if role and content:
                messages.append({"role": role, "content": str(content)})
        return messages or None
    if fmt == "alpaca":
        prompt = row.get(_col(columns, "prompt", "instruction") or "", "") or ""
        query_col = _col(columns, "query", "input")
        query = (row.get(query_col) or "") if query_col else ""
        response_col = _col(columns, "response", "output")
        response = (row.get(response_col) or "") if response_col else ""
        if query:
            prompt = f"{prompt}\n{query}"  # the seed's prompt + "\n" + query
        messages = []
        system_col = _col(columns, "system", None)
        if system_col and row.get(system_col):
            messages.append({"role": "system", "content": str(row[system_col])})
        history_col = _col(columns, "history", None)
        for pair in (row.get(history_col) or []) if history_col else []:
            if isinstance(pair, (list, tuple)) and len(pair) == 2:
                messages += [{"role": "user", "content": str(pair[0])}, {"role": "assistant", "content": str(pair[1])}]
        if not prompt and not response:
            return None
        messages.append({"role": "user", "content": str(prompt)})
        if response:
            messages.append({"role": "assistant", "content": str(response)})
        return messages
    # text
    text_col = _col(columns, "prompt", None) or "text"
    value = row.get(text_col) if text_col in row else row.get("content")
    return str(value) if value else None


def render(item: list[dict[str, str]] | str, tokenizer: Any, apply_chat_template: bool) -> str:
    """Text of one sample: the chat template for conversations (when on and available)."""
    if isinstance(item, str):
        return item
    if apply_chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(item, tokenize=False)
    return "\n".join(m["content"] for m in item)


@dataclass
class DatasetSource:
    """One dataset to read, after resolving registry names."""

    label: str
    path: Path
    format: str
    columns: dict[str, Any]
    max_samples: int | None
    sha1: str | None


def resolve_datasets(datasets: Sequence[Any], registry: str | None, field: str) -> list[DatasetSource]:
    """Resolve DatasetRef objects (typed or dicts in camelCase) to files, as the seed's registry does."""
    info: dict[str, Any] = {}
    reg_dir: Path | None = None
    if registry:
        reg_dir = resolve_data_uri(registry, f"{field}.registry")
        info_file = reg_dir / "dataset_info.json" if reg_dir.is_dir() else reg_dir
        if not info_file.exists():
            raise bad(f"{field}.registry", f"{registry} has no dataset_info.json")
        info = json.loads(info_file.read_text(encoding="utf-8"))
        reg_dir = info_file.parent
    out = []
    for i, d in enumerate(datasets):
        d = d.to_dict() if hasattr(d, "to_dict") else dict(d)
        where = f"{field}.datasets[{i}]"
        columns = dict(d.get("columns") or {})
        fmt = d.get("format", "auto")
        sha1 = d.get("sha1")
        if d.get("name"):
            name = d["name"]
            if reg_dir is None:
                raise bad(f"{where}.name", f"dataset {name!r} given by name needs {field}.registry")
            entry = info.get(name)
            if entry is None:
                raise bad(f"{where}.name", f"{name!r} is not in {registry}/dataset_info.json "
                          f"(known: {', '.join(sorted(info)) or 'none'})")
            if "file_name" not in entry:
                raise bad(f"{where}.name", f"{name!r} has no file_name in dataset_info.json; "
                          "hub datasets cannot be fetched here, give a file")
            try:  # a registry's file name stays inside the registry folder (issue 14)
                path = resolve_within(reg_dir, entry["file_name"], what=f"{name}.file_name")
            except UriError as exc:
                raise bad(f"{where}.name", str(exc)) from None
            for k, v in (entry.get("columns") or {}).items():
                columns.setdefault(k, v)
            if fmt == "auto" and entry.get("formatting") in ("alpaca", "sharegpt"):
                fmt = entry["formatting"]
            sha1 = sha1 or entry.get("file_sha1")
            label = name
        else:
            path = resolve_data_uri(d["uri"], f"{where}.uri")
            label = d["uri"]
        if not path.exists():
            raise bad(where, f"{path} not found")
        out.append(DatasetSource(label, path, fmt, columns, d.get("maxSamples") or d.get("max_samples"), sha1))
    return out



def collect_texts(sources: Iterable[DatasetSource], tokenizer: Any, apply_chat_template: bool,
                  field: str) -> list[str]:
    """Rendered texts of every usable row, datasets in order."""
    texts: list[str] = []
    for src in sources:
        if src.sha1 and src.path.is_file() and file_sha1(src.path) != src.sha1:
            raise bad(field, f"{src.label}: SHA-1 of {src.path} is {file_sha1(src.path)}, expected {src.sha1}")
        rows = read_rows(src.path, field)
        if src.max_samples:
            rows = rows[: src.max_samples]
        for row in rows:
            item = row_to_messages(row, src.format, src.columns)
            if item:
                texts.append(render(item, tokenizer, apply_chat_template))
    return texts


def build_calibration(texts: Sequence[str], tokenizer: Any, samples: int, min_length: int,
                      max_length: int, heldout: int, field: str, sources: Sequence[str] = ()) -> CalibrationSet:
    """Tokenize and split: the first ``samples`` long-enough rows calibrate, the next ``heldout``
    rows (never used for calibration) measure perplexity."""
    cal: list[list[int]] = []
    held: list[str] = []
    short = 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) < min_length:
            short += 1
            continue
        if len(cal) < samples:
            cal.append(list(ids[:max_length]))
        elif len(held) < heldout:
            held.append(text)
        else:
            break
    if not cal:
        raise bad(field, f"no calibration sample has at least minLength={min_length} tokens "
                  f"({len(texts)} rows read, {short} too short); lower {field}.minLength or give longer data")
    if not held and heldout:
        # Too little data for a disjoint held-out part: take the tail of the calibration rows so
        # perplexity is still measured (said so in the run's message).
        k = max(1, len(cal) // 5)
        held = [tokenizer.decode(ids) for ids in cal[-k:]]
        cal = cal[:-k] or cal
    return CalibrationSet(cal, held, list(sources), len(texts), short)


def read_text_uri(uri: str, field: str) -> list[str]:
    """Held-out text for perplexity from a URI: txt paragraphs, or the text/rendered rows of jsonl."""
    path = resolve_data_uri(uri, field)
    rows = read_rows(path, field)
    out = []
    for row in rows:
        item = row_to_messages(row, "auto", {})
        if isinstance(item, str):
            out.append(item)
        elif item:
            out.append("\n".join(m["content"] for m in item))
    if not out:
        raise bad(field, f"no text in {uri}")
    return out
