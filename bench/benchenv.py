"""What every benchmark sets before importing the project: offline hubs (nothing is downloaded at
run time), quiet progress, and the repository on sys.path. Imported first by bench/*.py (run as
scripts, so this folder is on sys.path)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

for _name, _value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"),
                      ("TOKENIZERS_PARALLELISM", "false"), ("DEVOPS_MODEL_NO_PROGRESS", "1")):
    os.environ.setdefault(_name, _value)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def write_result(area: str, rows: list[dict], out: Path, summary: str | None = None) -> None:
    """bench/results/<area>.json as bench/report.py reads it (machine, date, summary, rows), and the rows on stdout."""
    import json
    import platform
    import time

    result = {"area": area, "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.system()} (CPU only)",
              "date": time.strftime("%Y-%m-%d"), **({"summary": summary} if summary else {}), "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps(rows, indent=2, ensure_ascii=False))
