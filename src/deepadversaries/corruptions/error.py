"""Corruption error with intervals: ImageNet-C's CE, computed only where it means something.

From per-image outcomes (wrong or right) of a run and of a baseline on the *same* corrupted images
(``{(corruption, severity): (N,) bool}``, the clean images under ``("none", 0)``):

- **ΔE_c** = Σ_s (E_run,s,c − E_base,s,c) in percentage points (E = error rate), for every
  corruption, with a paired bootstrap interval (test images resampled with replacement, the same
  images for the run, the baseline and every severity);
- the **baseline's degradation** on c: per image d_i = Σ_s (wrong_s,i − wrong_clean,i); a one-sided
  exact sign test (images with d_i > 0 against d_i < 0, binomial p = 1/2) at level α = 0.05. A
  corruption is *degraded* when p < α, else *not degraded*;
- **CE_c** = Σ_s E_run,s,c / Σ_s E_base,s,c and **relative CE_c** = Σ_s (E_run,s,c − E_run,clean) /
  Σ_s (E_base,s,c − E_base,clean), both only for degraded corruptions (elsewhere the denominator is
  noise, zero or negative), with the same bootstrap intervals; **mCE** and **relative mCE** = their
  means over the degraded corruptions.

:func:`pool_corruptions_over_seeds` pools several seeds' results (a study): the mean over seeds of
each number with a Student-t 95 % interval (n = seeds; one seed keeps its bootstrap interval), the
mCE over the corruptions degraded in every seed. Pure functions: no files, deterministic for a seed.
CEs compare models of the same architecture only (the baseline is the same architecture's regular
run): across architectures they are not comparable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.stats

from deepadversaries.errors import OptionError

Key = tuple[str, int]
CLEAN = "none"
#: level of the baseline's degradation test and of the intervals (95 %)
ALPHA = 0.05
#: bootstrap resamples
N_BOOT = 2000

DEFINITION = ("ΔE_c = Σ_s (E_run − E_baseline) in points with a paired bootstrap 95 % interval over test images; "
              "a corruption is 'degraded' when the baseline's per-image error count over the severities rises "
              "above its clean error by a one-sided exact sign test, p < 0.05; CE_c = Σ_s E_run / Σ_s E_baseline and "
              "relative CE_c = Σ_s (E_run − E_run,clean) / Σ_s (E_baseline − E_baseline,clean) only for degraded "
              "corruptions; mCE and relative mCE = their means over the degraded corruptions (ImageNet-C, "
              "Hendrycks & Dietterich 2019, restricted)")


def interval(value: float | None, low: float | None, high: float | None, n: int) -> dict[str, Any]:
    """The ``{"value", "ci_low", "ci_high", "n"}`` block (None where undefined; finite floats otherwise)."""
    def clean(v: float | None) -> float | None:
        return None if v is None or not math.isfinite(v) else float(v)
    return {"value": clean(value), "ci_low": clean(low), "ci_high": clean(high), "n": int(n)}


def degradation_test(wrong_clean: np.ndarray, wrong_corrupted: Sequence[np.ndarray]) -> dict[str, Any]:
    """Is a model significantly worse under a corruption than clean? One-sided exact sign test.

    Args:
        wrong_clean: (N,) bool, the model's errors on the clean images.
        wrong_corrupted: one (N,) bool per severity, errors on the same images corrupted.

    Returns:
        ``points`` (Σ_s (E_s − E_clean) × 100), ``worse``/``better`` (images with d_i > 0 / < 0),
        ``p_value`` (binomial, one-sided "greater"; 1 when no image changes) and ``degraded`` (p < α).
    """
    clean = np.asarray(wrong_clean, dtype=np.int64)
    d = sum(np.asarray(w, dtype=np.int64) - clean for w in wrong_corrupted)
    worse, better = int(np.sum(d > 0)), int(np.sum(d < 0))
    p = float(scipy.stats.binomtest(worse, worse + better, 0.5, alternative="greater").pvalue) if worse + better else 1.0
    points = 100.0 * float(np.sum(d)) / max(len(clean), 1)
    return {"points": points, "worse": worse, "better": better, "p_value": p, "degraded": bool(p < ALPHA)}


def _by_corruption(wrong: Mapping[Key, np.ndarray]) -> dict[str, list[int]]:
    table: dict[str, list[int]] = {}
    for name, severity in wrong:
        if int(severity) != 0:
            table.setdefault(name, []).append(int(severity))
    return {name: sorted(levels) for name, levels in table.items()}


def corruption_errors(run_wrong: Mapping[Key, np.ndarray], base_wrong: Mapping[Key, np.ndarray], *,
                      n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
    """ΔE, CE and relative CE per corruption and their means, with paired bootstrap intervals.

    Args:
        run_wrong: {(corruption, severity): (N,) bool} of the run, with the clean images under ("none", 0).
        base_wrong: the same for the baseline, on the same images; it must hold every key of ``run_wrong``.
        n_boot: bootstrap resamples [default: 2000].
        seed: the bootstrap's seed [default: 0].

    Returns:
        ``corruptions`` ({name: {delta_points, baseline_degradation, status, ce, relative_ce}}, each
        number an :func:`interval` block; ce/relative_ce None when not degraded), ``mce`` and
        ``relative_mce`` (interval blocks over the degraded corruptions, None when there is none),
        ``degraded`` and ``not_degraded`` (names), ``definition``.

    Raises:
        OptionError: a key of the run missing from the baseline, no clean entry, or no corruption.
    """
    clean_key = (CLEAN, 0)
    missing = [k for k in run_wrong if k not in base_wrong]
    if missing:
        raise OptionError(f"the baseline has no result for {missing[0][0]} at severity {missing[0][1]}")
    if clean_key not in run_wrong:
        raise OptionError("the clean images' outcomes ('none', 0) are needed for the corruption error")
    table = _by_corruption(run_wrong)
    if not table:
        raise OptionError("no corruption errors to compare")
    keys = [clean_key] + [(c, s) for c, levels in table.items() for s in levels]
    run = np.stack([np.asarray(run_wrong[k], dtype=np.float64) for k in keys])
    base = np.stack([np.asarray(base_wrong[k], dtype=np.float64) for k in keys])
    n = run.shape[1]
    rng = np.random.default_rng([int(seed), 4711])
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64) / n  # (B, N)
    run_b, base_b = weights @ run.T, weights @ base.T  # (B, K) error rates per resample
    run_e, base_e = run.mean(axis=1), base.mean(axis=1)
    index = {k: i for i, k in enumerate(keys)}

    def ci(samples: np.ndarray) -> tuple[float, float]:
        finite = samples[np.isfinite(samples)]
        if len(finite) < 0.9 * len(samples):
            return math.nan, math.nan
        lo, hi = np.percentile(finite, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)])
        return float(lo), float(hi)

    out: dict[str, Any] = {}
    ce_boot, rce_boot, degraded = [], [], []
    with np.errstate(divide="ignore", invalid="ignore"):
        for name, levels in table.items():
            cols = [index[(name, s)] for s in levels]
            delta = 100.0 * (run_b[:, cols].sum(axis=1) - base_b[:, cols].sum(axis=1))
            delta_value = 100.0 * float(run_e[cols].sum() - base_e[cols].sum())
            test = degradation_test(base_wrong[clean_key], [base_wrong[(name, s)] for s in levels])
            entry: dict[str, Any] = {
                "severities": levels,
                "delta_points": interval(delta_value, *ci(delta), n),
                "baseline_degradation": test,
                "status": "degraded" if test["degraded"] else "not degraded",
                "ce": None, "relative_ce": None,
            }
            if test["degraded"]:
                degraded.append(name)
                ce_samples = run_b[:, cols].sum(axis=1) / base_b[:, cols].sum(axis=1)
                rce_samples = ((run_b[:, cols] - run_b[:, [0]]).sum(axis=1)
                               / (base_b[:, cols] - base_b[:, [0]]).sum(axis=1))
                ce_value = float(run_e[cols].sum() / base_e[cols].sum())
                rce_value = float((run_e[cols] - run_e[0]).sum() / (base_e[cols] - base_e[0]).sum())
                entry["ce"] = interval(ce_value, *ci(ce_samples), n)
                entry["relative_ce"] = interval(rce_value, *ci(rce_samples), n)
                ce_boot.append((ce_value, ce_samples))
                rce_boot.append((rce_value, rce_samples))
            out[name] = entry
    result: dict[str, Any] = {"corruptions": out, "degraded": degraded,
                              "not_degraded": [c for c in table if c not in degraded],
                              "mce": None, "relative_mce": None, "definition": DEFINITION}
    if degraded:
        for key, pairs in (("mce", ce_boot), ("relative_mce", rce_boot)):
            value = float(np.mean([v for v, _ in pairs]))
            samples = np.mean(np.stack([s for _, s in pairs]), axis=0)
            result[key] = interval(value, *ci(samples), n)
    return result


def _t_interval(values: Sequence[float]) -> tuple[float, float, float]:
    arr = np.asarray(values, dtype=np.float64)
    mean = float(arr.mean())
    if len(arr) < 2:
        return mean, math.nan, math.nan
    half = float(scipy.stats.t.ppf(1 - ALPHA / 2, len(arr) - 1) * arr.std(ddof=1) / math.sqrt(len(arr)))
    return mean, mean - half, mean + half


def _clipped(block: dict[str, Any]) -> dict[str, Any]:
    """An accuracy's interval block cut to [0, 1]."""
    return {k: (min(1.0, max(0.0, v)) if k in ("ci_low", "ci_high") and v is not None else v) for k, v in block.items()}


def pool_corruptions_over_seeds(summaries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Pool several seeds' robustness summaries (one model and method, one domain) for a study.

    Args:
        summaries: each seed's ``summary.json`` of ``deepadv robustness`` (with ``results``, ``clean`` and,
            against a baseline, ``corruption_errors`` in this module's format).

    Returns:
        ``n_seeds``; ``clean_accuracy`` and, per corruption, ``accuracy`` (mean over its severities; its
        interval cut to [0, 1]),
        ``delta_points`` (ΔE vs the baseline), ``seeds_degraded`` (how many seeds' baselines were degraded)
        and ``ce`` (over seeds where degraded): interval blocks, mean over seeds with a Student-t 95 %
        interval (n = seeds; with one seed, that seed's bootstrap interval); ``mce`` over the corruptions
        degraded in every seed (``mce_corruptions``), None without a baseline or such a corruption.
    """
    if not summaries:
        raise OptionError("no robustness summaries to pool")
    n_seeds = len(summaries)
    names: list[str] = []
    for s in summaries:
        for r in s["results"]:
            if r["corruption"] not in names:
                names.append(r["corruption"])
    pooled: dict[str, Any] = {"n_seeds": n_seeds,
                              "clean_accuracy": _clipped(interval(*_t_interval([s["clean"]["accuracy"]
                                                                                  for s in summaries]), n_seeds)),
                              "corruptions": {}}
    blocks = [s.get("corruption_errors") if isinstance(s.get("corruption_errors"), Mapping)
              and "corruptions" in s.get("corruption_errors", {}) else None for s in summaries]
    for name in names:
        acc = [float(np.mean([r["accuracy"] for r in s["results"] if r["corruption"] == name])) for s in summaries]
        entry: dict[str, Any] = {"accuracy": _clipped(interval(*_t_interval(acc), n_seeds))}
        if all(b is not None and name in b["corruptions"] for b in blocks):
            per = [b["corruptions"][name] for b in blocks]  # type: ignore[index]
            deltas = [p["delta_points"]["value"] for p in per]
            if n_seeds == 1:
                entry["delta_points"] = dict(per[0]["delta_points"])
                entry["delta_points"]["n"] = 1
            else:
                entry["delta_points"] = interval(*_t_interval(deltas), n_seeds)
            entry["seeds_degraded"] = sum(p["status"] == "degraded" for p in per)
            ces = [p["ce"]["value"] for p in per if p.get("ce") and p["ce"]["value"] is not None]
            entry["ce"] = interval(*_t_interval(ces), len(ces)) if ces else None
        pooled["corruptions"][name] = entry
    pooled["mce"], pooled["mce_corruptions"] = None, []
    if all(b is not None for b in blocks):
        common = [c for c in names if all(c in b["degraded"] for b in blocks)]  # type: ignore[index]
        if common:
            per_seed = [float(np.mean([b["corruptions"][c]["ce"]["value"] for c in common]))  # type: ignore[index]
                        for b in blocks]
            if n_seeds == 1 and blocks[0]["mce"] is not None and set(common) == set(blocks[0]["degraded"]):  # type: ignore[index]
                pooled["mce"] = dict(blocks[0]["mce"], n=1)  # type: ignore[index]
            else:
                pooled["mce"] = interval(*_t_interval(per_seed), n_seeds)
            pooled["mce_corruptions"] = common
    return pooled
