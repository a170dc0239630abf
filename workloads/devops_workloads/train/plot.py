"""The seed's loss plot (``extras/ploting.py``), drawn from the log history instead of a file that the
seed only wrote with ``--save_at_end`` (so its plot usually crashed with FileNotFoundError).

    plot_loss(out_dir, trainer.state.log_history)   # -> [out_dir/training_loss.png, ...]
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence


def smooth(scalars: Sequence[float]) -> list[float]:
    """TensorBoard-style EMA with the seed's weight ``1.8 * (sigmoid(0.05 N) - 0.5)``."""
    if not scalars:
        return []
    last = scalars[0]
    weight = 1.8 * (1 / (1 + math.exp(-0.05 * len(scalars))) - 0.5)
    out = []
    for value in scalars:
        last = last * weight + (1 - weight) * value
        out.append(last)
    return out


def plot_loss(out_dir: Path, log_history: Sequence[dict[str, Any]], keys: Sequence[str] = ("loss", "eval_loss"),
              title: str | None = None) -> list[Path]:
    """Raw curve at alpha 0.4 plus the EMA, one PNG per key that has points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for key in keys:
        points = [(h["step"], h[key]) for h in log_history if key in h and "step" in h]
        if not points:
            continue
        steps, values = zip(*points)
        fig = plt.figure()
        plt.plot(steps, values, alpha=0.4, label="original")
        plt.plot(steps, smooth(values), label="smoothed")
        plt.title(f"training {key} of {title or out_dir}")
        plt.xlabel("step")
        plt.ylabel(key)
        plt.legend()
        path = Path(out_dir) / f"training_{key.replace('/', '_')}.png"
        fig.savefig(path, format="png", dpi=100)
        plt.close(fig)
        written.append(path)
    return written
