"""Exam score arithmetic shared by the eval workload and the operator (pure: no torch, no kopf).

``overall`` entries are ``{"shots", "style", "correct", "total", "accuracy"}`` as in an EvalRun's
``status.scores.overall``; ``delta`` is the change against a baseline in accuracy points.
"""

from __future__ import annotations

from typing import Any


def with_deltas(overall: list[dict[str, Any]], baseline: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """``overall`` with ``delta`` (accuracy points vs the baseline's same shots/style, if any)."""
    if not baseline:
        return overall
    base = {(b["shots"], b["style"]): b["accuracy"] for b in baseline}
    out = []
    for o in overall:
        key = (o["shots"], o["style"])
        delta = round(100 * (o["accuracy"] - base[key]), 2) if key in base else None
        out.append({**o, "delta": delta})
    return out


def summary_line(overall: list[dict[str, Any]]) -> str:
    """``0-shot 61.2% / 5-shot 63.9%`` (style named when several; baseline change in points)."""
    styles = {o["style"] for o in overall}
    parts = []
    for o in overall:
        label = f"{o['shots']}-shot" + (f" {o['style']}" if len(styles) > 1 else "")
        text = f"{label} {100 * o['accuracy']:.1f}%"
        if o.get("delta") is not None:
            text += f" ({o['delta']:+.1f})"
        parts.append(text)
    return " / ".join(parts)
