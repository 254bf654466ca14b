"""Reliability diagrams (calibration of a run's predicted probabilities, per domain)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from deepadversaries.errors import OptionError
from deepadversaries.plots import CLASS_COLORS, DPI, plt, save_figure

#: colour of each domain's points and bars (Y10 dark blue, Y1 orange, others cycled)
DOMAIN_COLORS = {"Y10": CLASS_COLORS[2], "Y1": CLASS_COLORS[0]}
_OTHER_COLORS = (CLASS_COLORS[1], "#1f77b4", "#2ca02c", "#7f7f7f")


def _bins(entry: Mapping[str, Any], domain: str) -> tuple[dict[str, Any], float]:
    """The reliability dict and the ECE of one domain's entry (metrics or reliability dict)."""
    bins = entry.get("reliability", entry)
    try:
        count = np.asarray(bins["count"], dtype=float)
        conf = np.array([np.nan if v is None else v for v in bins["confidence"]], dtype=float)
        acc = np.array([np.nan if v is None else v for v in bins["accuracy"]], dtype=float)
        edges = np.asarray(bins["edges"], dtype=float)
    except (KeyError, TypeError, ValueError) as exc:
        raise OptionError(f"{domain}: not reliability-diagram data (need edges, count, confidence, "
                          f"accuracy; see calibration.reliability_bins)") from exc
    if not (len(count) == len(conf) == len(acc) == len(edges) - 1):
        raise OptionError(f"{domain}: reliability bins of inconsistent lengths")
    total = count.sum()
    ece = entry.get("ece")
    if ece is None:  # Σ n_b/N |acc_b − conf_b|, the ECE of these bins
        filled = count > 0
        ece = float(np.sum(count[filled] / total * np.abs(acc[filled] - conf[filled]))) if total else float("nan")
    return {"count": count, "confidence": conf, "accuracy": acc, "edges": edges}, float(ece)


def plot_reliability_diagram(bins_by_domain: Mapping[str, Mapping[str, Any]], path: str | Path, title: str = "",
                             *, dpi: int = DPI) -> Path:
    """Save a reliability diagram of one or more domains as a PNG; return its path.

    Top panel: accuracy against mean confidence per bin (one line of points per domain, the
    point's area growing with the bin's count), the diagonal of perfect calibration, and the
    bin edges as faint lines; the legend gives each domain's ECE and image count. Bottom panel:
    the number of images per confidence bin, side-by-side bars per domain, with the count over
    each bar.

    Args:
        bins_by_domain: per domain name (e.g. ``"Y10"``, ``"Y1"``), either the dict of
            :func:`deepadversaries.evaluation.calibration.calibration_metrics` (its ``"reliability"`` and
            ``"ece"`` are used) or a :func:`~deepadversaries.evaluation.calibration.reliability_bins` dict
            (the ECE is then computed from the bins).
        path: the PNG to write (written atomically).
        title: figure title [default: none].
        dpi: resolution [default: 150].

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OptionError: no domain, or an entry that is not reliability data.
    """
    if not bins_by_domain:
        raise OptionError("a reliability diagram needs at least one domain")
    parsed = {d: _bins(entry, d) for d, entry in bins_by_domain.items()}
    fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(5.2, 6.0), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 1.3], "hspace": 0.08})
    ax.plot([0, 1], [0, 1], color="0.4", lw=1, ls="--", label="perfect calibration")
    first_edges = next(iter(parsed.values()))[0]["edges"]
    for e in first_edges[1:-1]:
        ax.axvline(e, color="0.92", lw=0.6, zorder=0)
    n_domains = len(parsed)
    width = np.diff(first_edges).min() / (n_domains + 1)
    others = iter(_OTHER_COLORS * 4)
    for i, (domain, (bins, ece)) in enumerate(parsed.items()):
        color = DOMAIN_COLORS.get(domain) or next(others)
        count, conf, acc, edges = bins["count"], bins["confidence"], bins["accuracy"], bins["edges"]
        filled = count > 0
        total = int(count.sum())
        sizes = 12 + 200 * count[filled] / max(count.max(), 1)
        ax.plot(conf[filled], acc[filled], color=color, lw=1.2, alpha=0.8)
        ax.scatter(conf[filled], acc[filled], s=sizes, color=color, edgecolor="white", linewidths=0.6, zorder=3,
                   label=f"{domain}: ECE {ece:.3f} (n = {total})")
        left = edges[:-1] + width * (i + 0.5)
        bars = ax_n.bar(left, count, width=width, align="edge", color=color, alpha=0.85, label=domain)
        for rect, c in zip(bars, count):
            if c > 0:
                ax_n.annotate(f"{int(c)}", (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                              ha="center", va="bottom", fontsize=6, xytext=(0, 1), textcoords="offset points")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy in bin")
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    ax_n.set_xlabel("confidence (largest predicted probability)")
    ax_n.set_ylabel("images")
    ax_n.set_ylim(0, max(1.0, max(b["count"].max() for b, _ in parsed.values())) * 1.25)
    return save_figure(fig, path, dpi=dpi)
