"""The paper's findings (a)–(e), each with an effect, a 95 % confidence interval and a verdict.

One function per finding, on the :class:`Evidence` of one (model, adapted method) pair —
one entry per seed. ``reproduce`` gives one seed (its intervals are per-image bootstraps);
``study`` gives several (intervals across seeds, per-seed intervals beside them). The
statistics are :mod:`deepadversaries.stats`'; the verdict words are *held*,
*contradicted* and *inconclusive* (SPEC 10):

- (a) the regular model loses ≥ 10 accuracy points from Y10 to Y1;
- (b) domain adaptation raises Y1 accuracy by ≥ 5 points;
- (c) domain adaptation costs ≤ 3 points on Y10 (non-inferiority);
- (d) with domain adaptation the flipped one-pixel (1P) images lie further from their Y10
  originals in latent space: ratio adapted / regular of the median d_E(Y10–1P) on the
  images flipped under both, on the common scale, above 1;
- (e) with domain adaptation the one-pixel attack succeeds less often (paired flip-rate
  difference below 0, exact McNemar) or needs more queries (difference of the restricted
  mean queries to flip, failures censored at the budget, above 0); the two parts combine.

:func:`collect_evidence` reads what the findings rest on from a run pair's files: the
per-image predictions (``predictions.npz``), the analysis's per-image distances
(``distances_per_image.csv``) and both attacks' ``results.csv`` — and, when both runs have one,
the exhaustive search's ``results.csv``: finding (e) then states the exact one-pixel flip-rate
difference beside DE's (reported, not part of the verdict, which judges the paper's attack).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import CLASSES, METHOD_SHORT, MODEL_LABELS, REFERENCE_METHOD
from .errors import file_error
from .formatting import fmt_fixed, fmt_sig
from .io import read_json
from .paper import PAPER_DISTANCES, PAPER_METRICS
from .runs import PREDICTIONS_NAME, attack_dir
from .stats import (Comparison, Interval, PairedFlips, accuracy_difference, censored_difference,
                    combine_verdicts, median_ratio, paired_flips, paired_rate_difference, pool_differences,
                    pool_log_ratios, pooled_rate_difference, verdict)

LEVEL = 0.95
#: bootstrap resamples of the per-image intervals
RESAMPLES = 9999

CLAIMS = {
    "a": "The regular model loses much of its accuracy on Y1.",
    "b": "Domain adaptation recovers Y1 accuracy.",
    "c": "Domain adaptation costs little or nothing on Y10.",
    "d": "With domain adaptation the flipped one-pixel (1P) images lie further from their Y10 originals.",
    "e": "With domain adaptation the one-pixel attack succeeds less often or needs more queries.",
}
TESTS = {
    "a": "regular Y10 − Y1 accuracy: held if the 95 % CI lies at or above +10 points, contradicted below 0",
    "b": "adapted − regular Y1 accuracy: held if the CI lies at or above +5 points, contradicted below 0",
    "c": "regular − adapted Y10 accuracy: held if the CI lies at or below 3 points, contradicted above 3",
    "d": "adapted / regular median d_E(Y10–1P) on the common scale, images flipped under both: held if the "
         "CI lies above 1, contradicted below 1",
    "e": "adapted − regular flip rate (paired, exact McNemar): held below 0; adapted − regular restricted "
         "mean queries to flip (failures censored at the budget): held above 0; held if a part held and "
         "none was contradicted",
}


@dataclass
class Evidence:
    """What the findings of one (model, adapted method, seed) rest on.

    Attributes:
        model, method, seed: the pair (``method`` is the adapted one) and its seed.
        correct: (method, domain) → bool (N,), per test image whether the run classified it
            correctly (the same galaxies in the same order for both domains and runs).
        accuracy: (method, domain) → the accuracy of ``metrics.json``.
        distances: scale (``latent``, ``normalised``) → perturbation (``Y10-Y1``, ``Y10-1P``) →
            method → (n_both,) d_E of the images flipped under both runs.
        flipped: method → bool (n_attacked_both,), per image attacked under both runs.
        queries: method → (n_attacked_both,) queries until the flip (the budget spent when
            it never flipped).
        budget: the attack's query budget per image (the censoring horizon).
        exact_flipped: method → bool (n_exact_both,), per image attacked by the exhaustive search
            under both runs, whether some pixel flips it (the exact one-pixel answer); empty when
            either run has no exhaustive campaign.
        sources: the files read.
    """

    model: str
    method: str
    seed: int
    correct: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    accuracy: dict[tuple[str, str], float] = field(default_factory=dict)
    distances: dict[str, dict[str, dict[str, np.ndarray]]] = field(default_factory=dict)
    flipped: dict[str, np.ndarray] = field(default_factory=dict)
    queries: dict[str, np.ndarray] = field(default_factory=dict)
    budget: float = float("nan")
    exact_flipped: dict[str, np.ndarray] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)

    @property
    def n_test(self) -> int:
        return len(next(iter(self.correct.values()))) if self.correct else 0

    @property
    def n_flipped_both(self) -> int:
        return len(self.distances.get("latent", {}).get("Y10-1P", {}).get(REFERENCE_METHOD, ()))

    @property
    def n_attacked_both(self) -> int:
        return len(self.flipped.get(REFERENCE_METHOD, ()))


# --------------------------------------------------------------------------------------
# reading the evidence
# --------------------------------------------------------------------------------------
def collect_evidence(regular_run: Path, adapted_run: Path, analysis: Path, *, model: str, method: str,
                     seed: int, root: Path | None = None) -> Evidence:
    """Read one (model, method, seed) pair's per-image results (clear errors when missing)."""
    ev = Evidence(model, method, seed)
    runs = {REFERENCE_METHOD: Path(regular_run), method: Path(adapted_run)}
    for m, run in runs.items():
        labels, probs = _predictions(run)
        metrics = read_json(run / "metrics.json")
        for domain, p in probs.items():
            ev.correct[(m, domain)] = p.argmax(axis=1) == labels
            ev.accuracy[(m, domain)] = float(metrics[domain]["accuracy"])
        ev.sources.append(_rel(run / "metrics.json", root))
    ev.distances = _flipped_distances(analysis / "distances_per_image.csv", method)
    ev.sources.append(_rel(analysis / "analysis.json", root))
    attack = {m: _attack_rows(run / "attack" / "results.csv") for m, run in runs.items()}
    both = sorted(set(attack[REFERENCE_METHOD]) & set(attack[method]))
    for m in runs:
        ev.flipped[m] = np.array([attack[m][t][0] for t in both], dtype=bool)
        ev.queries[m] = np.array([attack[m][t][1] for t in both], dtype=np.float64)
        ev.sources.append(_rel(runs[m] / "attack" / "summary.json", root))
    ev.budget = _query_budget(read_json(runs[REFERENCE_METHOD] / "attack" / "summary.json"), ev.queries)
    exact = {m: attack_dir(run, "exhaustive") / "results.csv" for m, run in runs.items()}
    if all(p.is_file() for p in exact.values()):
        rows = {m: _image_flips(p) for m, p in exact.items()}
        common = sorted(set(rows[REFERENCE_METHOD]) & set(rows[method]))
        ev.exact_flipped = {m: np.array([rows[m][t] for t in common], dtype=bool) for m in runs}
        ev.sources += [_rel(p, root) for p in exact.values()]
    return ev


def _image_flips(path: Path) -> dict[int, bool]:
    """test index → whether the campaign flipped the image (one row per image in results.csv)."""
    return {index: flipped for index, (flipped, _) in _attack_rows(path).items()}


def _rel(path: Path, root: Path | None) -> str:
    return path.relative_to(root).as_posix() if root is not None and root in path.parents else str(path)


def _predictions(run: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    path = run / PREDICTIONS_NAME
    if not path.is_file():
        raise file_error(path, "file not found; evaluate the run first ('deepadv evaluate', or run reproduce again)")
    with np.load(path, allow_pickle=False) as npz:
        labels = np.asarray(npz["labels"])
        probs = {k.split("_", 1)[1]: np.asarray(npz[k]) for k in npz.files if k.startswith("probabilities_")}
    return labels, probs


def _flipped_distances(path: Path, method: str) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    if not path.is_file():
        raise file_error(path, "file not found; run the analysis first")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    out: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for scale, suffix in (("latent", ""), ("normalised", "_normalised")):
        out[scale] = {}
        for pert in ("Y10-Y1", "Y10-1P"):
            key = pert.lower().replace("-", "_")
            out[scale][pert] = {m: np.array([float(r[f"d_{key}_{m}{suffix}"]) for r in rows])
                                for m in (REFERENCE_METHOD, method)}
    return out


def _attack_rows(path: Path) -> dict[int, tuple[bool, float]]:
    """test index → (flipped, queries until the flip or the end) from an attack's results.csv."""
    if not path.is_file():
        raise file_error(path, "file not found; run the attack first")
    with open(path, newline="", encoding="utf-8") as fh:
        return {int(r["test_index"]): (r["success"] == "True", float(r["evaluations"])) for r in csv.DictReader(fh)}


def _query_budget(summary: dict[str, Any], queries: dict[str, np.ndarray]) -> float:
    """Queries an image may cost: population × (generations + 1) × targets tried."""
    s = summary.get("settings", {})
    targets = len(summary.get("classes") or CLASSES) - 1 if s.get("mode", "targeted") == "targeted" else 1
    budget = float(s.get("pop_size", 0)) * (float(s.get("max_iter", 0)) + 1) * targets
    seen = max((float(q.max()) for q in queries.values() if len(q)), default=0.0)
    return max(budget, seen, 1.0)


# --------------------------------------------------------------------------------------
# the findings
# --------------------------------------------------------------------------------------
def compute_findings(pairs: dict[tuple[str, str], Sequence[Evidence]]) -> list[dict[str, Any]]:
    """Findings (a)–(e) for every (model, adapted method), in that order.

    Args:
        pairs: (model, method) → the evidence of each seed.

    Returns:
        Per model: (a) once (it concerns the regular model), then (b)–(e) per adapted method.
    """
    findings = []
    done_a: set[str] = set()
    for (model, method), evidence in pairs.items():
        if model not in done_a:  # (a) concerns the regular model alone: once per model
            findings.append(finding_a(evidence))
            done_a.add(model)
        findings += [finding_b(evidence), finding_c(evidence), finding_d(evidence), finding_e(evidence)]
    return findings


def _per_seed(ev: Evidence, interval: Interval, **extra: Any) -> dict[str, Any]:
    return {"seed": ev.seed, "effect": interval.estimate, "ci_low": interval.low, "ci_high": interval.high,
            "how": interval.method, **extra}


def _finding(fid: str, evidence: Sequence[Evidence], pooled: Interval, per_seed: list[dict[str, Any]],
             word: str, *, threshold: float, numbers: dict[str, Any], paper: dict[str, Any],
             statement: str, **extra: Any) -> dict[str, Any]:
    ev = evidence[0]
    return {"id": fid, "model": ev.model, "method": ev.method, "claim": CLAIMS[fid], "test": TESTS[fid],
            "effect": pooled.estimate, "ci_low": pooled.low, "ci_high": pooled.high, "ci_level": pooled.level,
            "verdict": word, "threshold": threshold, "per_seed": per_seed, "n_seeds": len(evidence),
            "seeds": [e.seed for e in evidence], "how": pooled.method, "numbers": numbers, "paper": paper,
            "sources": sorted({s for e in evidence for s in e.sources}), "statement": statement, **extra}


def _pool(intervals: list[Interval]) -> Interval:
    return pool_differences(intervals, LEVEL)


def _accuracy_finding(fid: str, evidence: Sequence[Evidence], a: tuple[str, str], b: tuple[str, str],
                      threshold: float, what: str, numbers_of: Any, paper: dict[str, Any],
                      paper_text: str) -> dict[str, Any]:
    """(a), (b), (c): accuracy(b) − accuracy(a) per seed (paired bootstrap), pooled across seeds."""
    per_seed, intervals = [], []
    for ev in evidence:
        ma, mb = (ev.method if k == "adapted" else k for k in (a[0], b[0]))
        iv = accuracy_difference(ev.correct[(ma, a[1])], ev.correct[(mb, b[1])], level=LEVEL,
                                 n_resamples=RESAMPLES, seed=ev.seed)
        intervals.append(iv)
        per_seed.append(_per_seed(ev, iv, n_images=ev.n_test, accuracies=numbers_of(ev)))
    pooled = _pool(intervals)
    word = verdict(pooled, fid)
    ev0 = evidence[0]
    statement = (f"{MODEL_LABELS[ev0.model]}: {what} {_pts(pooled.estimate)}, 95 % CI "
                 f"[{_pts(pooled.low)}, {_pts(pooled.high)}] ({_basis(evidence, pooled)}). {paper_text}")
    numbers = numbers_of(ev0) if len(evidence) == 1 else {"per_seed": [p["accuracies"] for p in per_seed]}
    return _finding(fid, evidence, pooled, per_seed, word, threshold=threshold, numbers=numbers, paper=paper,
                    statement=statement)


def finding_a(evidence: Sequence[Evidence]) -> dict[str, Any]:
    """(a) The regular model's Y10 − Y1 accuracy drop."""
    model = evidence[0].model
    before, after = _paper_accuracy(model, "regular", "Y10"), _paper_accuracy(model, "regular", "Y1")

    def numbers(ev: Evidence) -> dict[str, float]:
        return {"regular_Y10_accuracy": ev.accuracy[(REFERENCE_METHOD, "Y10")],
                "regular_Y1_accuracy": ev.accuracy[(REFERENCE_METHOD, "Y1")]}

    finding = _accuracy_finding("a", evidence, (REFERENCE_METHOD, "Y1"), (REFERENCE_METHOD, "Y10"), 0.10,
                                "regular Y10 → Y1 accuracy drop", numbers,
                                {"regular_Y10_accuracy": before, "regular_Y1_accuracy": after},
                                _paper_change("Paper", before, after))
    finding["method"] = REFERENCE_METHOD
    return finding


def finding_b(evidence: Sequence[Evidence]) -> dict[str, Any]:
    """(b) The adapted model's Y1 accuracy gain over the regular one."""
    model, method = evidence[0].model, evidence[0].method
    before, after = _paper_accuracy(model, "regular", "Y1"), _paper_accuracy(model, "mmd", "Y1")

    def numbers(ev: Evidence) -> dict[str, float]:
        return {"regular_Y1_accuracy": ev.accuracy[(REFERENCE_METHOD, "Y1")],
                f"{ev.method}_Y1_accuracy": ev.accuracy[(ev.method, "Y1")]}

    return _accuracy_finding("b", evidence, (REFERENCE_METHOD, "Y1"), ("adapted", "Y1"), 0.05,
                             f"{_m(method)} − regular Y1 accuracy", numbers,
                             {"regular_Y1_accuracy": before, "mmd_Y1_accuracy": after},
                             _paper_change("Paper (MMD)", before, after))


def finding_c(evidence: Sequence[Evidence]) -> dict[str, Any]:
    """(c) The adapted model's Y10 accuracy cost (regular − adapted)."""
    model, method = evidence[0].model, evidence[0].method
    before, after = _paper_accuracy(model, "regular", "Y10"), _paper_accuracy(model, "mmd", "Y10")

    def numbers(ev: Evidence) -> dict[str, float]:
        return {"regular_Y10_accuracy": ev.accuracy[(REFERENCE_METHOD, "Y10")],
                f"{ev.method}_Y10_accuracy": ev.accuracy[(ev.method, "Y10")]}

    return _accuracy_finding("c", evidence, ("adapted", "Y10"), (REFERENCE_METHOD, "Y10"), 0.03,
                             f"Y10 accuracy cost of {_m(method)} (regular − {_m(method)})", numbers,
                             {"regular_Y10_accuracy": before, "mmd_Y10_accuracy": after},
                             _paper_change("Paper (MMD)", before, after))


def finding_d(evidence: Sequence[Evidence]) -> dict[str, Any]:
    """(d) Ratio adapted / regular of the median d_E(Y10–1P), images flipped under both."""
    model, method = evidence[0].model, evidence[0].method
    per_seed, common, raw = [], [], []
    for ev in evidence:
        common_d, raw_d = ev.distances["normalised"]["Y10-1P"], ev.distances["latent"]["Y10-1P"]
        iv = median_ratio(common_d[REFERENCE_METHOD], common_d[method], level=LEVEL, n_resamples=RESAMPLES,
                          seed=ev.seed)
        iv_raw = median_ratio(raw_d[REFERENCE_METHOD], raw_d[method], level=LEVEL, n_resamples=RESAMPLES,
                              seed=ev.seed)
        common.append(iv)
        raw.append(iv_raw)
        per_seed.append(_per_seed(ev, iv, n_images=ev.n_flipped_both, raw_ratio=iv_raw.estimate,
                                  raw_ci_low=iv_raw.low, raw_ci_high=iv_raw.high))
    pooled, pooled_raw = pool_log_ratios(common, LEVEL), pool_log_ratios(raw, LEVEL)
    word = verdict(pooled, "d")
    n_images = [ev.n_flipped_both for ev in evidence]
    pd = PAPER_DISTANCES.get(model)
    statement = (f"{MODEL_LABELS[model]}: median d_E(Y10–1P) ratio {_m(method)} / regular on the common scale "
                 f"{fmt_sig(pooled.estimate)}, 95 % CI [{fmt_sig(pooled.low)}, {fmt_sig(pooled.high)}] "
                 f"({_basis(evidence, pooled)}; images flipped under both: {_list(n_images)}); raw ratio "
                 f"{fmt_sig(pooled_raw.estimate)} [{fmt_sig(pooled_raw.low)}, {fmt_sig(pooled_raw.high)}]. "
                 + (f"Paper: {pd['Y10-1P']['regular'][0]} → {pd['Y10-1P']['mmd'][0]} (ratio "
                    f"{pd['Y10-1P']['mmd'][0] / pd['Y10-1P']['regular'][0]:.2f}) on {pd['n']} images." if pd
                    else NO_PAPER)
                 + (" Fewer than 30 images per seed: the interval is wide." if min(n_images) < 30 else "")
                 + (IDENTICAL_Y10 if _identical_y10_distances(evidence) else ""))
    return _finding("d", evidence, pooled, per_seed, word, threshold=1.0,
                    numbers={"raw_ratio": pooled_raw.estimate, "raw_ci_low": pooled_raw.low,
                             "raw_ci_high": pooled_raw.high, "n_flipped_both": n_images},
                    paper={"regular_median_dE_Y10_1P": pd["Y10-1P"]["regular"][0],
                           "mmd_median_dE_Y10_1P": pd["Y10-1P"]["mmd"][0], "n": pd["n"]} if pd else {},
                    statement=statement, scale="common", n_images=sum(n_images))


#: said of (d) when the adapted run's Y10 distances equal the regular run's on every image of every seed
IDENTICAL_Y10 = (" Both runs give the same distance for every flipped image of every seed: the adapted run's"
                 " Y10 model is the regular training (as AdaBN's, which changes only Y1 inference), so the"
                 " ratio is 1 by construction and has no interval.")


def _identical_y10_distances(evidence: Sequence[Evidence]) -> bool:
    """Whether the adapted and regular d_E(Y10–1P) agree exactly on every flipped image of every seed."""
    pairs = [(ev.distances["latent"]["Y10-1P"][REFERENCE_METHOD], ev.distances["latent"]["Y10-1P"][ev.method])
             for ev in evidence]
    return any(len(r) for r, _ in pairs) and all(np.array_equal(r, a) for r, a in pairs)


def finding_e(evidence: Sequence[Evidence]) -> dict[str, Any]:
    """(e) Paired flip-rate difference (McNemar) and censored queries to flip, adapted − regular."""
    model, method = evidence[0].model, evidence[0].method
    per_seed: list[dict[str, Any]] = []
    flips: list[PairedFlips] = []
    query_intervals: list[Interval] = []
    for ev in evidence:
        fa, fb = ev.flipped[REFERENCE_METHOD], ev.flipped[method]
        rate: Comparison = paired_rate_difference(fa, fb, level=LEVEL)
        queries: Comparison = censored_difference(ev.queries[REFERENCE_METHOD], fa, ev.queries[method], fb,
                                                  ev.budget, level=LEVEL, n_resamples=RESAMPLES, seed=ev.seed)
        flips.append(paired_flips(fa, fb))
        query_intervals.append(queries.interval)
        per_seed.append(_per_seed(ev, rate.interval, n_images=ev.n_attacked_both, mcnemar_p=rate.p_value,
                                  flipped_regular=int(fa.sum()), flipped_adapted=int(fb.sum()),
                                  queries_effect=queries.interval.estimate, queries_ci_low=queries.interval.low,
                                  queries_ci_high=queries.interval.high, logrank_p=queries.p_value,
                                  budget=ev.budget))
    rate_pooled = pooled_rate_difference(flips, level=LEVEL)
    queries_pooled = _pool(query_intervals)
    words = {"rate": verdict(rate_pooled.interval, "e_rate"), "queries": verdict(queries_pooled, "e_queries")}
    word = combine_verdicts(*words.values())
    iv = rate_pooled.interval
    counts = rate_pooled.counts
    statement = (f"{MODEL_LABELS[model]}: flip rate {_m(method)} − regular {_pts(iv.estimate)}, 95 % CI "
                 f"[{_pts(iv.low)}, {_pts(iv.high)}] on {counts['n']} images attacked under both "
                 f"({counts['b']} flipped under regular only, {counts['c']} under {_m(method)} only; exact McNemar "
                 f"p = {fmt_sig(rate_pooled.p_value)}): {words['rate']}. Restricted mean queries to flip "
                 f"{_m(method)} − regular {fmt_sig(queries_pooled.estimate)}, 95 % CI [{fmt_sig(queries_pooled.low)}, "
                 f"{fmt_sig(queries_pooled.high)}] (failures censored at the budget; {_basis(evidence, queries_pooled)}): "
                 f"{words['queries']}.")
    exact = _exact_rate(evidence)
    if exact is not None:
        statement += exact[1]
    return _finding("e", evidence, iv, per_seed, word, threshold=0.0,
                    numbers={"rate": rate_pooled.to_json(), "queries": queries_pooled.to_json(),
                             "part_verdicts": words,
                             **({"exact_rate": exact[0].to_json(), "exact_rate_reading": verdict(exact[0].interval,
                                                                                                  "e_rate")}
                                if exact is not None else {})},
                    paper={"statement": "more differential-evolution iterations needed with DA; ResNet18 DA "
                                        "flipped 136 of 150 images within 80 iterations (section 5.2)"},
                    statement=statement, n_images=counts["n"], parts=words)


def _exact_rate(evidence: Sequence[Evidence]) -> tuple[Comparison, str] | None:
    """The exact one-pixel flip-rate difference (exhaustive search), pooled over seeds, and its
    sentence; None unless every seed has both runs' exhaustive campaigns."""
    if not all(ev.exact_flipped for ev in evidence):
        return None
    method = evidence[0].method
    pooled = pooled_rate_difference([paired_flips(ev.exact_flipped[REFERENCE_METHOD], ev.exact_flipped[method])
                                     for ev in evidence], level=LEVEL)
    iv, counts = pooled.interval, pooled.counts
    reading = verdict(iv, "e_rate")
    sentence = (f" Under the exact one-pixel answer (exhaustive search): flip rate {_m(method)} − regular "
                f"{_pts(iv.estimate)}, 95 % CI [{_pts(iv.low)}, {_pts(iv.high)}] on {counts['n']} images "
                f"({counts['b']} flippable under regular only, {counts['c']} under {_m(method)} only; exact McNemar "
                f"p = {fmt_sig(pooled.p_value)}): {reading} by the same rule, reported beside the verdict, which "
                "judges the paper's attack.")
    return pooled, sentence


# --------------------------------------------------------------------------------------
# words
# --------------------------------------------------------------------------------------
NO_PAPER = "The paper has no numbers for this model."


def _paper_accuracy(model: str, method: str, domain: str) -> float | None:
    """The paper's accuracy of a model and method on a domain (None for a model it did not train)."""
    return PAPER_METRICS.get(model, {}).get(method, {}).get(domain, {}).get("accuracy")


def _paper_change(label: str, before: float | None, after: float | None) -> str:
    return f"{label}: {before:.2f} → {after:.2f}." if before is not None and after is not None else NO_PAPER


def _m(method: str) -> str:
    return METHOD_SHORT.get(method, method)


def _pts(x: float) -> str:
    """A fraction in signed percentage points (``+2.5`` points), ``n/a`` when undefined."""
    text = fmt_fixed(None if x is None or x != x else 100 * x, 1)
    return text if text == "n/a" else (f"+{text}" if not text.startswith("-") else text) + " points"


def _list(values: Sequence[int]) -> str:
    return ", ".join(str(v) for v in values)


def _basis(evidence: Sequence[Evidence], pooled: Interval) -> str:
    """What an interval rests on, in words."""
    seeds = [ev.seed for ev in evidence]
    if len(seeds) == 1:
        return f"seed {seeds[0]}, {pooled.method}"
    return f"{len(seeds)} seeds ({_list(seeds)}), {pooled.method}"
