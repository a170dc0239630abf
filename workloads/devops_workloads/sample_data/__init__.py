"""Sample data bundled with the package: a small DevOps corpus and Q&A set written for this project.

    python -c "from devops_workloads.sample_data import install; install('/path/to/storage')"

``install(storage_root)`` copies this whole folder (corpus/, sft/, exams/, dataset_info.json) to
``<storage_root>/samples/``, so that the examples can address it as ``pvc://samples/...`` exactly as
they would address a claim in a cluster (``DEVOPS_MODEL_STORAGE`` is the local root of pvc://).
The quickstart and the tests call it; re-running it refreshes the copy.

Contents (Chinese and English):

* ``corpus/devops_corpus.jsonl`` — short DevOps documents, one ``{"text": ...}`` per line (pretraining).
* ``sft/devops_qa_alpaca.json`` — alpaca-shaped Q&A (instruction/input/output, some with history).
* ``sft/devops_qa_quickstart.json`` — the first three alpaca rows, which the quickstart's LoRA SFT
  (examples/local/sft-lora.yaml) learns by heart so that its report can show what was learned.
* ``sft/devops_qa_sharegpt.jsonl`` — sharegpt-shaped conversations, some multi-turn, some with a system turn.
* ``dataset_info.json`` — the seed's registry format (file_name, file_sha1, columns, stage).
"""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def install(storage_root: str | Path) -> Path:
    """Copy the bundled sample data to ``<storage_root>/samples`` and return that folder."""
    dest = Path(storage_root) / "samples"
    dest.mkdir(parents=True, exist_ok=True)
    for src in ROOT.rglob("*"):
        if src.is_dir() or src.name == "__init__.py" or "__pycache__" in src.parts:
            continue
        target = dest / src.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    return dest
