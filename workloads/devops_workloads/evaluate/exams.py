"""Exam sources: the CMMLU / C-Eval CSV layout, the DevOps-Eval layout, and named presets.

    from devops_workloads.evaluate.exams import load_exams
    exams = load_exams("../shared/data/exams", preset="devops-574")      # the seed's 574 questions
    exams = load_exams(root, names=["cmmlu/computer_science"])

Layouts (what ``spec.exams.layout`` names):

* ``cmmlu``: ``ROOT/BENCHMARK/SPLIT/SUBJECT.csv``, exam name ``BENCHMARK/SUBJECT``. The scored
  split is ``test`` when that file has an answer column, else ``val`` (C-Eval publishes its test
  answers nowhere, so the seed scored C-Eval ``val``). Shots come from ``dev``.
* ``devopseval``: ``ROOT/LANGUAGE/SPLIT/FILE.csv`` as the DevOps-Eval harness reads it
  (``data_path/<eval_language>/<test|dev>/<file>``), exam name ``LANGUAGE/NAME``; a
  ``dataset_fp.json`` (or ``devopseval_dataset_fp.json``, in ROOT or ROOT/conf) maps exam names to
  file names as the harness's does (``"tech_risk": "risk.csv"``), else NAME is the file stem.

Both CSV header styles are read: CMMLU's ``,Question,A,B,C,D,Answer`` (an unnamed index column)
and C-Eval's ``id,question,A,B,C,D,answer[,explanation]``. The seed read them with
``pandas.read_csv``; cells are kept verbatim here (pandas keeps trailing spaces too). Two pandas
quirks are deliberately not copied, and neither occurs in the 574 questions: an empty option cell
is dropped (pandas made it NaN, which the seed printed as ``A. nan``), and NA-like words such as
``None`` stay text (pandas also turned them into ``nan``).
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from devops_model.api.evaluation import PRESETS
from devops_model.contract import ExitCode, Reason
from devops_model.digests import file_sha1

from ..runner import WorkloadError

LETTERS = ("A", "B", "C", "D")
LAYOUTS = ("cmmlu", "devopseval")
#: Splits that may be scored, in order of preference; ``dev`` only provides shots.
SCORED_SPLITS = ("test", "val")
NAME_MAPS = ("dataset_fp.json", "devopseval_dataset_fp.json", "conf/dataset_fp.json", "conf/devopseval_dataset_fp.json")


class ExamError(WorkloadError):
    """Bad exam data or selection; names the file or field and the fix."""

    def __init__(self, message: str):
        super().__init__(message, reason=Reason.BAD_EXAM_DATA, exit_code=ExitCode.BAD_INPUT)


@dataclass(frozen=True)
class Question:
    """One multiple-choice question. ``options`` holds only the letters with a non-empty cell."""

    question: str
    options: dict[str, str]
    #: The answer letter as the seed compares it: ``answer.strip().upper()``.
    answer: str
    #: 0-based row in its CSV (header excluded).
    index: int


@dataclass
class Exam:
    """One exam (a subject of a benchmark): the scored questions and the dev rows for shots."""

    name: str
    split: str
    path: Path
    questions: list[Question]
    dev_path: Path | None = None
    dev: list[Question] = field(default_factory=list)

    def files(self) -> list[Path]:
        return [self.path] + ([self.dev_path] if self.dev_path else [])



def data_sha1s(exams: list[Exam], root: Path) -> dict[str, str]:
    """``{relative path: sha1}`` of every file the exams read (the data's identity in results.json)."""
    out: dict[str, str] = {}
    for exam in exams:
        for p in exam.files():
            out[p.relative_to(root).as_posix()] = file_sha1(p)
    return dict(sorted(out.items()))


def combined_sha1(sha1s: dict[str, str]) -> str:
    """One SHA-1 over all exam files: ``sha1("<sha1>  <path>\\n" for each path, sorted)``, the
    ``sha1sum`` listing's own hash, so ``sha1sum $(files) | sha1sum`` can check it by hand."""
    listing = "".join(f"{digest}  {path}\n" for path, digest in sorted(sha1s.items()))
    return hashlib.sha1(listing.encode()).hexdigest()


# --------------------------------------------------------------------------- CSV


def _csv_lines(path: Path, encoding: str = "utf-8-sig"):
    """Decoded lines of a CSV file, strictly: a byte that does not decode names the file and line."""
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            try:
                yield raw.decode(encoding if n == 1 else ("utf-8" if encoding == "utf-8-sig" else encoding))
            except UnicodeDecodeError as exc:
                bad = exc.object[exc.start:exc.end][:4].hex(" ")
                raise ExamError(f"exam file {path} line {n}, column {exc.start + 1} is not valid "
                                f"{'UTF-8' if encoding == 'utf-8-sig' else encoding} (bytes {bad}); "
                                "save it as UTF-8 (e.g. iconv -f GBK -t UTF-8)") from None


def read_exam_csv(path: Path, encoding: str = "utf-8-sig") -> list[Question]:
    """Questions of one CSV in either header style; raises :class:`ExamError` naming the file."""
    try:
        rows = list(csv.reader(_csv_lines(path, encoding)))
    except (OSError, csv.Error) as exc:
        raise ExamError(f"cannot read exam file {path}: {exc}") from None
    if not rows:
        raise ExamError(f"exam file {path} is empty; expected a header ,Question,A,B,C,D,Answer or id,question,A,B,C,D,answer")
    header = [h.strip() for h in rows[0]]
    cols = {h.lower(): i for i, h in enumerate(header) if h}
    missing = [c for c in ("question", *[x.lower() for x in LETTERS]) if c not in cols]
    if missing:
        raise ExamError(
            f"exam file {path}: header {','.join(header)!r} lacks column(s) {', '.join(missing)}; "
            "expected ,Question,A,B,C,D,Answer (CMMLU) or id,question,A,B,C,D,answer (C-Eval)"
        )
    has_answer = "answer" in cols
    out: list[Question] = []
    for n, row in enumerate(rows[1:]):
        if not any(cell.strip() for cell in row):
            continue  # a trailing blank line is not a question
        if len(row) < len(header):
            row = row + [""] * (len(header) - len(row))
        options = {x: row[cols[x.lower()]] for x in LETTERS if row[cols[x.lower()]] != ""}
        answer = row[cols["answer"]].strip().upper() if has_answer else ""
        if has_answer and answer not in options:
            raise ExamError(f"exam file {path}, row {n + 2}: answer {row[cols['answer']]!r} is not one of the options {''.join(options)}")
        out.append(Question(question=row[cols["question"]], options=options, answer=answer, index=len(out)))
    return out


def has_answer_column(path: Path, encoding: str = "utf-8-sig") -> bool:
    try:
        header = next(csv.reader(_csv_lines(path, encoding)), [])
    except (OSError, csv.Error) as exc:
        raise ExamError(f"cannot read exam file {path}: {exc}") from None
    return "answer" in {h.strip().lower() for h in header}


# --------------------------------------------------------------------------- discovery


def _name_map(root: Path) -> dict[str, str]:
    """DevOps-Eval's name -> file name map, if the root has one."""
    for rel in NAME_MAPS:
        p = root / rel
        if p.is_file():
            try:
                data = json.loads(p.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise ExamError(f"{p} is not valid JSON ({exc}); it should map exam names to CSV file names") from None
            return {str(k): str(v) for k, v in data.items()}
    return {}


def discover(root: Path, layout: str = "cmmlu") -> dict[str, tuple[Path, str, Path | None]]:
    """All exams under ``root``: ``{name: (scored file, split, dev file or None)}``, sorted by name."""
    if layout not in LAYOUTS:
        raise ExamError(f"spec.exams.layout must be one of {', '.join(LAYOUTS)} (got {layout!r})")
    if not root.is_dir():
        raise ExamError(f"spec.exams.uri: {root} is not a directory; point it at the folder that holds BENCHMARK/SPLIT/SUBJECT.csv")
    by_file = {v: k for k, v in _name_map(root).items()} if layout == "devopseval" else {}
    found: dict[str, tuple[Path, str, Path | None]] = {}
    for group in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "conf"):
        subjects = sorted({f.name for s in SCORED_SPLITS if (group / s).is_dir() for f in (group / s).glob("*.csv")})
        for fname in subjects:
            chosen = None
            for split in SCORED_SPLITS:
                f = group / split / fname
                if f.is_file() and has_answer_column(f):
                    chosen = (f, split)
                    break
            if chosen is None:
                continue  # e.g. C-Eval test without answers and no val: nothing to score
            dev = group / "dev" / fname
            subject = by_file.get(fname, Path(fname).stem)
            found[f"{group.name}/{subject}"] = (chosen[0], chosen[1], dev if dev.is_file() else None)
    return dict(sorted(found.items()))


def select(available: dict[str, tuple[Path, str, Path | None]], root: Path, preset: str | None = None,
           names: list[str] | None = None) -> list[str]:
    """Exam names to run, in the order given (preset order, then ``names``), or all found."""
    if preset and names:
        raise ExamError("spec.exams: set preset or exams, not both")
    if preset:
        if preset not in PRESETS:
            raise ExamError(f"spec.exams.preset must be one of {', '.join(PRESETS)} (got {preset!r})")
        wanted = list(PRESETS[preset])
    elif names:
        wanted = list(dict.fromkeys(names))
    else:
        wanted = list(available)
    if not wanted:
        raise ExamError(f"spec.exams.uri: no exams found under {root}; expected BENCHMARK/{{test,val}}/SUBJECT.csv with an answer column")
    missing = [w for w in wanted if w not in available]
    if missing:
        what = f"preset {preset}" if preset else "spec.exams.exams"
        have = ", ".join(available) or "none"
        raise ExamError(f"{what}: exam(s) {', '.join(missing)} not found under {root} (found: {have})")
    return wanted


def load_exams(root: str | Path, layout: str = "cmmlu", preset: str | None = None,
               names: list[str] | None = None, max_shots: int = 0) -> list[Exam]:
    """Read the selected exams; the dev split must hold ``max_shots`` rows when shots are asked for."""
    root = Path(root)
    available = discover(root, layout)
    exams = []
    for name in select(available, root, preset, names):
        path, split, dev_path = available[name]
        questions = read_exam_csv(path)
        if not questions:
            raise ExamError(f"exam {name}: {path} holds no questions")
        dev: list[Question] = []
        if dev_path is not None:
            dev = read_exam_csv(dev_path)
        if max_shots and len(dev) < max_shots:
            where = dev_path or path.parent.parent / "dev" / path.name
            raise ExamError(f"exam {name}: {max_shots}-shot needs {max_shots} dev rows in {where} (found {len(dev)}); "
                            "add them or lower spec.shots")
        exams.append(Exam(name=name, split=split, path=path, questions=questions, dev_path=dev_path, dev=dev))
    return exams
