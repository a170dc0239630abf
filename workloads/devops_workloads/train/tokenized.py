"""Tokenized training data on disk: built once, memory-mapped by every rank and every restart.

    stream = open_datasets(spec.data, stage, seed)        # train/data.py: resolve + sha1
    scan_data(stream, out)                                # rank 0 reads every row once (bad bytes fail here)
    prepared = prepare_training_data(stream, tokenizer, model_path, template, spec.training,
                                     spec.data.val_size, out)
    Trainer(train_dataset=prepared.train, eval_dataset=prepared.eval, data_collator=prepared.collator)

The corpus is never held in memory: records stream from ``DataStream.records()`` through the
tokenizer (batches of ``BATCH`` documents) straight into flat NumPy files under
``<spec.output>/tokenized/<key>/``, where ``key`` is a digest of the data (sha1 of every file and how
it is read), the tokenizer (its files) and the preprocessing parameters (stage, lengths, template,
format version). Training reads them back with ``np.memmap``: each rank maps the same files, the
page cache shares them, and a restart (or a second run on the same output) finds them ready.

    pt:  tokens.bin  uint32, blocks × maxLength tokens, block i = tokens[i*L:(i+1)*L]
    sft: input_ids.bin uint32, labels.bin int32 (-100 = not trained), offsets.bin int64 (n+1)
    meta.json (written last: the folder is complete only with it), build.json (timings)

The token ids are exactly those of ``preprocess.build_pretrain_blocks`` / ``encode_sft_all``
(+ ``pack_examples`` when packing, which is redone from the stored lengths at load) and the held-out
split is the one ``valSize`` always made; tests/workloads/test_tokenized.py checks it block by block.

Ranks: global rank 0 scans and builds (in ``<key>.partial-<pid>``, renamed when complete); the other
ranks wait for ``meta.json`` (or ``<key>.error``, which a failing rank 0 leaves when
``WORLD_SIZE > 1``) and map the files. Progress of both phases (phase, bytes and documents done, ETA)
goes through the ProgressReporter, so ``status.progress.updated`` moves and the stall watchdog sees
life while a large corpus is read and tokenized.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from devops_model.contract import ExitCode, Reason

from ..progress import ProgressReporter
from ..ranks import log0, rank, world_size
from ..runner import WorkloadError
from . import preprocess as pp
from .data import DataProblems, DataStream, ReadCounter

#: Bump when the files' layout or the preprocessing changes: old caches are then ignored.
FORMAT_VERSION = 1
#: Documents tokenized per call (the fast tokenizer's batch; the seed's ``datasets.map`` batch too).
BATCH = 1000
#: Seconds between progress records while reading or tokenizing.
PROGRESS_EVERY = 2.0
#: Files that define a tokenizer (what its digest covers).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                   "added_tokens.json", "tokenizer.model", "chat_template.jinja", "chat_template.json")


def _digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def tokenizer_digest(tokenizer_dir: Path, tokenizer: Any = None) -> str:
    """sha1 over the tokenizer's files (names and contents) and its class."""
    h = hashlib.sha1(type(tokenizer).__name__.encode() if tokenizer is not None else b"")
    for name in TOKENIZER_FILES:
        p = Path(tokenizer_dir) / name
        if p.is_file():
            h.update(name.encode())
            h.update(p.read_bytes())
    for p in sorted(Path(tokenizer_dir).glob("*.tiktoken")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def split_indices(n: int, val_size: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Held-out split after preprocessing, like the seed (a fraction, or a count): indices."""
    v = float(val_size)
    if v <= 0:
        return np.arange(n, dtype=np.int64), np.zeros(0, dtype=np.int64)
    k = int(v) if v >= 1 else max(1, int(round(n * v)))
    if k >= n:
        raise WorkloadError(f"spec.data.valSize: {val_size} leaves no training data ({n} sequences)",
                            reason=Reason.BAD_DATA, exit_code=ExitCode.BAD_INPUT)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = np.sort(np.asarray(order[:k], dtype=np.int64))
    del order
    mask = np.ones(n, dtype=bool)
    mask[held] = False
    return np.flatnonzero(mask).astype(np.int64), held


# --------------------------------------------------------------------------- progress


class DataProgress:
    """Progress of one data phase: a byte bar locally, records in progress.jsonl / status.progress.

    ``status.progress`` keeps ``percent``, ``etaSeconds`` and ``updated`` (``step`` stays 0: no
    optimizer step yet); ``phase``, bytes and documents go into progress.jsonl."""

    def __init__(self, phase: str, total_bytes: int, out_dir: Path | None):
        self.phase = phase
        self.total = max(int(total_bytes), 1)
        self.reporter = ProgressReporter(out_dir, phase, enable_bar=False)
        self.bar = None
        self.t0 = time.time()
        self._last = 0.0
        if self.reporter.active and os.environ.get("DEVOPS_MODEL_NO_PROGRESS") != "1":
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=self.total, desc=phase, unit="B", unit_scale=True, dynamic_ncols=True, file=sys.stderr)
            except ImportError:
                self.bar = None

    def tick(self, counter: ReadCounter, documents: int, tokens: int | None = None, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._last < PROGRESS_EVERY:
            return
        self._last = now
        done = min(counter.bytes, self.total)
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
        elapsed = now - self.t0
        eta = int(elapsed / done * (self.total - done)) if done else None
        self.reporter.update(step=0, phase=self.phase, bytes_done=counter.bytes, bytes_total=self.total,
                             documents=documents, tokens=tokens, percent=int(100 * done / self.total),
                             eta_seconds=eta)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.reporter.close()


# --------------------------------------------------------------------------- scan (before the model)


def scan_data(stream: DataStream, out: Path) -> None:
    """Rank 0 reads every row once so that bad data fails before a model is downloaded.

    A completed scan of the same data (``tokenized/scan-<data key>.json``, written once the model is
    there) is reused by restarts. Other ranks skip it: they wait for rank 0's tokenized files."""
    if rank() != 0:
        return
    marker = out / "tokenized" / f"scan-{_digest(stream.read_params())[:16]}.json"
    if marker.is_file():
        saved = json.loads(marker.read_text())
        stream.counts = saved["counts"]
        stream.problems = DataProblems(counts=Counter(saved["problems"]["counts"]), examples=saved["problems"]["examples"])
        for s, n in zip(stream.sources, stream.counts):
            stream.fingerprints[s.name]["rows"] = n
        return
    progress = DataProgress("reading data", stream.total_bytes(), None)  # no file in out/ before the data is good
    counter = ReadCounter(on_rows=lambda c: progress.tick(c, c.rows))
    try:
        stream.scan(counter)
        progress.tick(counter, counter.rows, force=True)
    finally:
        progress.close()


def _write_scan_marker(stream: DataStream, out: Path) -> None:
    if stream.counts is None:
        return
    marker = out / "tokenized" / f"scan-{_digest(stream.read_params())[:16]}.json"
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"counts": stream.counts, "problems": stream.problems.to_dict()}, ensure_ascii=False))
    tmp.replace(marker)


# --------------------------------------------------------------------------- build


def cache_key(stream: DataStream, tok_digest: str, params: dict[str, Any]) -> str:
    return _digest({"format": FORMAT_VERSION, "data": stream.read_params(), "tokenizer": tok_digest, **params})[:20]


def _build_pt(stream: DataStream, tokenizer: Any, block_size: int, folder: Path, progress: DataProgress,
              counter: ReadCounter, batch: int) -> dict[str, Any]:
    """Exactly ``preprocess.build_pretrain_blocks`` over the streamed texts, written as uint32."""
    sep = pp.document_separator(tokenizer)
    sep_id = tokenizer.convert_tokens_to_ids(sep)
    buf: list[int] = []
    total = docs = 0
    texts: list[str] = []
    with open(folder / "tokens.bin", "wb") as fh:

        def flush() -> None:
            nonlocal total, docs
            enc = tokenizer(texts, add_special_tokens=False)["input_ids"]
            for ids in enc:
                buf.extend(ids)
                buf.append(sep_id)
                total += len(ids) + 1
            docs += len(texts)
            texts.clear()
            full = len(buf) // block_size * block_size
            if full:
                np.asarray(buf[:full], dtype=np.uint32).tofile(fh)
                del buf[:full]
            progress.tick(counter, docs, total)

        for rec in stream.records(counter):
            texts.append(rec["text"])
            if len(texts) >= batch:
                flush()
        if texts:
            flush()
    blocks = (total - len(buf)) // block_size
    return {"kind": "pt", "blockSize": block_size, "blocks": blocks, "tokens": total, "droppedTail": len(buf),
            "separator": sep, "documents": docs}


def _build_sft(stream: DataStream, tokenizer: Any, template: Any, tr: Any, folder: Path, progress: DataProgress,
               counter: ReadCounter) -> dict[str, Any]:
    """Exactly ``preprocess.encode_sft_all`` over the streamed records, written as flat arrays + offsets."""
    stats = pp.SFTStats()
    offsets = [0]
    tokens = trained = docs = 0
    with open(folder / "input_ids.bin", "wb") as fi, open(folder / "labels.bin", "wb") as fl:
        for rec in stream.records(counter):
            ex = pp.encode_sft(rec, tokenizer, template, tr.max_length, tr.max_source_length, tr.max_target_length, stats)
            docs += 1
            n_trained = sum(1 for l in ex.labels if l != pp.IGNORE)
            if n_trained:
                np.asarray(ex.input_ids, dtype=np.uint32).tofile(fi)
                np.asarray(ex.labels, dtype=np.int32).tofile(fl)
                offsets.append(offsets[-1] + len(ex.input_ids))
                tokens += len(ex.input_ids)
                trained += n_trained
            progress.tick(counter, docs, tokens)
    np.asarray(offsets, dtype=np.int64).tofile(folder / "offsets.bin")
    return {"kind": "sft", "examples": len(offsets) - 1, "tokens": tokens, "trained": trained,
            "truncation": stats.to_dict(), "documents": docs}


def build_or_wait(stream: DataStream, tokenizer: Any, tokenizer_dir: Path, template: Any, tr: Any, out: Path,
                  batch: int = BATCH) -> tuple[Path, dict[str, Any]]:
    """The tokenized folder for this data, tokenizer and preprocessing: reused, built (rank 0) or awaited."""
    params: dict[str, Any] = {"stage": stream.stage, "maxLength": tr.max_length}
    if stream.stage == "sft":
        params.update(maxSourceLength=tr.max_source_length, maxTargetLength=tr.max_target_length,
                      template=repr(template))
    key = cache_key(stream, tokenizer_digest(tokenizer_dir, tokenizer), params)
    root = out / "tokenized"
    folder = root / key
    error = root / f"{key}.error"
    if (folder / "meta.json").is_file():
        log0(f"tokenized data: reusing {folder}")
        return folder, json.loads((folder / "meta.json").read_text())
    if rank() != 0:
        return folder, _wait(folder, error)
    root.mkdir(parents=True, exist_ok=True)
    error.unlink(missing_ok=True)
    _write_scan_marker(stream, out)
    tmp = root / f"{key}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    counter = ReadCounter()
    total_bytes = stream.total_bytes()
    progress = DataProgress("tokenizing", total_bytes, out)
    t0 = time.time()
    try:
        if stream.stage == "pt":
            meta = _build_pt(stream, tokenizer, tr.max_length, tmp, progress, counter, batch)
        else:
            meta = _build_sft(stream, tokenizer, template, tr, tmp, progress, counter)
        progress.tick(counter, meta["documents"], meta["tokens"], force=True)
        meta.update(key=key, format=FORMAT_VERSION, params=params,
                    build={"seconds": round(time.time() - t0, 3), "bytes": counter.bytes,
                           "tokensPerSecond": round(meta["tokens"] / max(time.time() - t0, 1e-9), 1)})
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False))
        try:
            tmp.rename(folder)
        except OSError:  # another process finished the same key first: theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if world_size() > 1 and isinstance(exc, Exception):
            error.write_text(str(exc))
        raise
    finally:
        progress.close()
    log0(f"tokenized data: {meta['tokens']} tokens from {meta['documents']} documents in {meta['build']['seconds']} s "
         f"({meta['build']['tokensPerSecond']:.0f} tokens/s) → {folder}")
    return folder, meta


def _wait(folder: Path, error: Path) -> dict[str, Any]:
    limit = float(os.environ.get("DEVOPS_MODEL_DATA_WAIT_SECONDS", str(6 * 3600)))
    t0 = time.time()
    while not (folder / "meta.json").is_file():
        if error.is_file():
            raise WorkloadError(f"rank 0 could not prepare the data: {error.read_text()}", reason=Reason.BAD_DATA,
                                exit_code=ExitCode.BAD_INPUT)
        if time.time() - t0 > limit:
            raise WorkloadError(f"waited {limit:.0f} s for rank 0 to tokenize the data into {folder}; is spec.output on "
                                "storage that every node mounts (a ReadWriteMany claim)?", reason=Reason.DATA_TIMEOUT)
        time.sleep(1.0)
    return json.loads((folder / "meta.json").read_text())


# --------------------------------------------------------------------------- memory-mapped datasets


class BlockDataset(torch.utils.data.Dataset):
    """Pretraining blocks from the memory-mapped token file (a list of ids per item)."""

    def __init__(self, tokens: np.ndarray, block_size: int, index: np.ndarray):
        self.tokens, self.block_size, self.index = tokens, block_size, index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> list[int]:
        j = int(self.index[i]) * self.block_size
        return self.tokens[j:j + self.block_size].tolist()


class SFTDataset(torch.utils.data.Dataset):
    """SFT examples (or packed bins of them) from the memory-mapped ids, labels and offsets."""

    def __init__(self, ids: np.ndarray, labels: np.ndarray, offsets: np.ndarray, items: Sequence[Any],
                 packed: bool):
        self.ids, self.labels, self.offsets, self.items, self.packed = ids, labels, offsets, items, packed

    def __len__(self) -> int:
        return len(self.items)

    def example(self, k: int) -> pp.SFTExample:
        a, b = int(self.offsets[k]), int(self.offsets[k + 1])
        return pp.SFTExample(self.ids[a:b].tolist(), self.labels[a:b].tolist())

    def __getitem__(self, i: int) -> Any:
        if not self.packed:
            return self.example(int(self.items[i]))
        ids: list[int] = []
        labels: list[int] = []
        lengths: list[int] = []
        for k in self.items[i]:
            ex = self.example(k)
            ids += ex.input_ids
            labels += ex.labels
            lengths.append(len(ex.input_ids))
        return pp.PackedExample(ids, labels, lengths)


def _map(path: Path, dtype: Any) -> np.ndarray:
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


@dataclass
class Prepared:
    train: torch.utils.data.Dataset
    eval: torch.utils.data.Dataset | None
    collator: Any
    #: What ``include_num_input_tokens_seen`` counts: all tokens, or non-padding ones.
    tokens_mode: str
    #: Goes into data_report.json and run_config.json.
    report: dict[str, Any]
    folder: Path


def prepare_training_data(stream: DataStream, tokenizer: Any, tokenizer_dir: Path, template: Any, tr: Any,
                          val_size: str, out: Path, batch: int = BATCH) -> Prepared:
    """Tokenized datasets for the Trainer (built once, then memory-mapped), with the data report."""
    folder, meta = build_or_wait(stream, tokenizer, tokenizer_dir, template, tr, out, batch)
    report: dict[str, Any] = {"rowsUsed": meta["documents"], "problems": stream.problems.to_dict(),
                              "datasets": stream.fingerprints, "tokenizedCache": str(folder)}
    if meta["kind"] == "pt":
        if not meta["blocks"]:
            raise WorkloadError(f"spec.training.maxLength: the corpus has {meta['tokens']} tokens, fewer than one block "
                                f"of {tr.max_length}; lower maxLength or add data", reason=Reason.BAD_DATA, exit_code=ExitCode.BAD_INPUT)
        tokens = _map(folder / "tokens.bin", np.uint32)
        n = meta["blocks"]
        train_idx, eval_idx = split_indices(n, val_size, tr.seed)
        train = BlockDataset(tokens, meta["blockSize"], train_idx)
        evals = BlockDataset(tokens, meta["blockSize"], eval_idx) if len(eval_idx) else None
        collator: Any = pp.BlockCollator()
        report.update(separator=meta["separator"], tokens=meta["tokens"], blocks=n, droppedTailTokens=meta["droppedTail"])
        mode = "all"
    else:
        ids = _map(folder / "input_ids.bin", np.uint32)
        labels = _map(folder / "labels.bin", np.int32)
        offsets = np.fromfile(folder / "offsets.bin", dtype=np.int64)
        report["truncation"] = meta["truncation"]
        if tr.packing:
            bins = pp.pack(np.diff(offsets).tolist(), tr.max_length)
            random.Random(tr.seed).shuffle(bins)  # as pack_examples: long and short bins mixed
            items: Sequence[Any] = bins
            collator = pp.PackedCollator()
            mode = "all"
        else:
            items = np.arange(meta["examples"], dtype=np.int64)
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else \
                tokenizer.convert_tokens_to_ids(template.eos_token(tokenizer))
            collator = pp.PaddedCollator(pad)
            mode = "non_padding"
        train_idx, eval_idx = split_indices(len(items), val_size, tr.seed)
        pick = (lambda idx: [items[i] for i in idx]) if tr.packing else (lambda idx: items[idx])
        train = SFTDataset(ids, labels, offsets, pick(train_idx), tr.packing)
        evals = SFTDataset(ids, labels, offsets, pick(eval_idx), tr.packing) if len(eval_idx) else None
        report.update(samples=meta["examples"], sequences=len(items), tokens=meta["tokens"], trained=meta["trained"])
    report.update(trainSequences=len(train), evalSequences=len(evals) if evals is not None else 0)
    return Prepared(train, evals, collator, mode, report, folder)

