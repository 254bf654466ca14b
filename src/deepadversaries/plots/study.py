"""Figures of a study: one forest plot per finding (per-seed effects and the pooled interval)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from deepadversaries import METHOD_SHORT, MODEL_LABELS
from deepadversaries.plots import CLASS_COLORS, DPI, plt, save_figure

#: how each finding's effect is drawn: axis label, scale factor, log axis, no-effect value
AXES: dict[str, tuple[str, float, bool, float]] = {
    "a": ("regular Y1 − Y10 accuracy (points)", 100.0, False, 0.0),
    "b": ("adapted − regular Y1 accuracy (points)", 100.0, False, 0.0),
    "c": ("adapted − regular Y10 accuracy (points)", 100.0, False, 0.0),
    "d": ("adapted / regular median raw d_E(Y10–1P)", 1.0, True, 1.0),
    "e": ("adapted − regular flip rate (points)", 100.0, False, 0.0),
}
VERDICT_COLORS = {"held": "#2e7d32", "contradicted": "#c62828", "inconclusive": "#757575"}


def _number(x: Any) -> float:
    return float(x) if isinstance(x, (int, float)) and x is not None and math.isfinite(float(x)) else float("nan")


def forest_plot(finding: dict[str, Any], path: str | Path, dpi: int = DPI) -> Path:
    """A forest plot of one finding: each seed's effect with its 95 % interval, the pooled
    interval (diamond) below, no effect (grey), a non-inferiority margin (dashed) and the
    paper's number (dotted).

    Args:
        finding: one entry of ``study.json``'s findings (``id``, ``per_seed``, ``effect``,
            ``ci_low``, ``ci_high``, ``bound``, ``paper_effect``, ``verdict``, ``model``, ``method``).
        path: the PNG to write.

    Returns:
        ``path``.
    """
    label, scale, log, null = AXES[finding["id"]]
    seeds = finding["per_seed"]
    n = len(seeds)
    fig, ax = plt.subplots(figsize=(6.4, 1.2 + 0.42 * (n + 2)))
    ys = np.arange(n, 0, -1) + 1.0
    for y, s in zip(ys, seeds):
        est, lo, hi = (_number(s.get(k)) * scale for k in ("effect", "ci_low", "ci_high"))
        if math.isfinite(lo) and math.isfinite(hi):
            ax.plot([lo, hi], [y, y], color=CLASS_COLORS[2], lw=2)
        ax.plot([est], [y], "s", color=CLASS_COLORS[2], ms=6)
    est, lo, hi = (_number(finding.get(k)) * scale for k in ("effect", "ci_low", "ci_high"))
    color = VERDICT_COLORS.get(finding["verdict"], "k")
    if math.isfinite(lo) and math.isfinite(hi):
        mid = est if math.isfinite(est) else (lo + hi) / 2
        ax.fill([lo, mid, hi, mid], [0.5, 0.75, 0.5, 0.25], color=color, alpha=0.85, zorder=3)
    elif math.isfinite(est):
        ax.plot([est], [0.5], "D", color=color, ms=9)
    ax.axvline(null, color="0.6", lw=1.2, zorder=0)
    bound = _number(finding.get("bound")) * scale
    labelled = False
    if math.isfinite(bound) and bound != null:
        ax.axvline(bound, color=CLASS_COLORS[1], ls="--", lw=1.2, zorder=0, label="non-inferiority margin (ours)")
        labelled = True
    paper = _number(finding.get("paper_effect")) * scale
    if math.isfinite(paper):
        ax.axvline(paper, color=CLASS_COLORS[0], ls=":", lw=1.5, zorder=0, label="the paper's number")
        labelled = True
    if labelled:
        ax.legend(loc="upper right", fontsize=8, frameon=False)
    ax.set_yticks(list(ys) + [0.5])
    ax.set_yticklabels([f"seed {s['seed']} (n = {s.get('n_images', '?')})" for s in seeds] + ["pooled"])
    ax.set_ylim(0, n + 2)
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(label)
    title = (f"({finding['id']}) {MODEL_LABELS.get(finding['model'], finding['model'])}, "
             f"{METHOD_SHORT.get(finding['method'], finding['method'])}: {finding['verdict']}")
    ax.set_title(title, fontsize=11, color=color)
    ax.grid(axis="x", color="0.92")
    fig.tight_layout()
    return save_figure(fig, path, dpi=dpi)
