"""The paper's findings (a)–(e): one primary endpoint each, a 95 % interval, a verdict and a magnitude.

One function per finding, on the :class:`Evidence` of one (model, adapted method) pair — one
entry per seed. ``reproduce`` gives one seed (per-image bootstrap intervals of one trained
model: every verdict says "one trained model; see `deepadv study`"); ``study`` gives several
(intervals over the seeds, the unit that varies; per-seed intervals beside them). The
statistics and the rule are :mod:`deepadversaries.analysis.stats`' (SPEC 10): the verdict word — *held*,
*contradicted*, *inconclusive* — judges the paper's direction against no effect; the
magnitude statement places the paper's own number (ConvNet / ResNet18) against the interval.

Primary endpoints (one per finding; the rest is reported and never decides the word):

- (a) regular Y1 − Y10 accuracy; claimed below 0 (paper −22 / −29 points);
- (b) adapted − regular Y1 accuracy; claimed above 0 (paper +9 / +23);
- (c) adapted − regular Y10 accuracy; non-inferiority: claimed above −3 points, a margin that is
  ours, not the paper's (paper −1 / +10);
- (d) adapted / regular median raw d_E(Y10–1P), the paper's quantity, on the images flipped under
  both; claimed above 1 (paper ×1.3 / ×2.2). Sensitivity versions that no reparametrisation of
  a latent space changes: distances between the logits, and distances divided by each model's
  latent spread (median ‖z − z̄‖ over the images attacked under both, recomputed in every
  resample); when one of them would give another word the statement says "direction depends on
  the latent scale". Seeds with fewer than :data:`MIN_IMAGES` images flipped under both are
  listed and left out. Reported beside it, on every attacked image (no selection on the
  attack's success): the ratio of the median latent distance from z(Y10) to the decision
  boundary.
- (e) adapted − regular flip rate of the paper's attack, paired on the images attacked under
  both, one difference per seed; claimed below 0 (the paper gives no number). Sensitivity: a
  galaxy × seed cluster bootstrap. Secondary: queries to flip on the images flipped under both,
  the corner search's rate and the rate proved by ``deepadv certify`` (images decided under
  both runs, one value range), paired the same way; the
  McNemar test on pairs summed over seeds is a check conditional on these trained models.

:func:`collect_evidence` reads what the findings rest on from a run pair's files: per-image
predictions (``predictions.npz``), the analysis's per-image files (``distances_per_image.csv``,
``attacked_per_image.csv``), each run's ``attack/results.csv`` and ``attack/latents.npz``, and
when both runs have them ``attack_exhaustive/results.csv`` and ``certify/results.csv``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepadversaries import CLASSES, METHOD_SHORT, MODEL_LABELS, REFERENCE_METHOD
from deepadversaries.errors import file_error
from deepadversaries.formatting import fmt_fixed, fmt_sig
from deepadversaries.io import read_json
from deepadversaries.paper import PAPER_DISTANCES, PAPER_EFFECTS, PAPER_METRICS
from deepadversaries.models.runs import PREDICTIONS_NAME, attack_dir
from deepadversaries.analysis.latent import PERTURBATIONS
from deepadversaries.analysis.stats import (
    DEFAULT_LEVEL, DEFAULT_RESAMPLES, FINDING_RULES, NON_INFERIORITY_MARGIN, Interval, accuracy_difference,
    censored_difference,
    cluster_bootstrap_difference, log_ratio_t_interval, magnitude, median_ratio, paired_flips,
    paired_rate_difference, pool_differences, pooled_rate_difference, spread_normalised_ratio, verdict,
)

#: (d): a seed needs this many images flipped under both models to enter the pool
MIN_IMAGES = 5
#: said of every verdict that rests on one seed
ONE_MODEL = "one trained model; see `deepadv study`"
#: (d)'s sensitivity versions: key → words
SENSITIVITY = {"logit": "logit space", "spread": "divided by the latent spread"}
SCALE_WARNING = "direction depends on the latent scale"

CLAIMS = {
    "a": "The regular model loses accuracy from Y10 to Y1.",
    "b": "Domain adaptation raises Y1 accuracy.",
    "c": "Domain adaptation costs little or nothing on Y10 (non-inferiority, our 3-point margin).",
    "d": "With domain adaptation the flipped one-pixel (1P) images lie further from their Y10 originals.",
    "e": "With domain adaptation the one-pixel attack succeeds less often.",
}
PRIMARY = {
    "a": "regular Y1 − Y10 accuracy",
    "b": "adapted − regular Y1 accuracy",
    "c": "adapted − regular Y10 accuracy",
    "d": "adapted / regular median raw d_E(Y10–1P), images flipped under both",
    "e": "adapted − regular flip rate of the paper's attack, paired on the images attacked under both",
}
TESTS = {k: rule.description for k, rule in FINDING_RULES.items()}


@dataclass
class Evidence:
    """What the findings of one (model, adapted method, seed) rest on.

    Attributes:
        model, method, seed: the pair (``method`` is the adapted one) and its seed.
        correct: (method, domain) → bool (N,), per test image whether the run classified it
            correctly (the same galaxies in the same order for both domains and runs).
        accuracy: (method, domain) → the accuracy of ``metrics.json``.
        distances: scale (``latent``: raw d_E, ``logit``: between the logits) → perturbation
            (``Y10-Y1``, ``Y10-1P``) → method → (n_both,) distances of the images flipped under
            both runs, in the order of ``flipped_index``.
        flipped_index: (n_both,) their test indices, ascending.
        attacked_index: (n_attacked,) the test indices attacked under both runs, ascending.
        flipped: method → bool (n_attacked,), whether the paper's attack flipped each.
        queries: method → (n_attacked,) queries until the flip (the budget spent when it never
            flipped).
        budget: the attack's query budget per image.
        z_y10: method → (n_attacked, d) the Y10 latents of the attacked images.
        boundary: method → (n_attacked,) latent distance from z(Y10) to the true class's
            decision boundary (NaN without a linear head).
        corner_flipped: method → bool (n_corner,), per image the corner search attacked under
            both runs, whether it found a flipping pixel; empty without both campaigns.
        certified_flippable: method → bool (n_certified,), per image that ``deepadv certify``
            decided under both runs (flippable or certified; an image undecided under either is
            left out), whether it is flippable: proved either way; empty without both
            certifications, or when they used different value ranges.
        certified_range: the value range both certifications used (``input`` or ``physical``).
        certified_undecided: images certified under both runs but left out, undecided under one.
        sources: the files read.
    """

    model: str
    method: str
    seed: int
    correct: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    accuracy: dict[tuple[str, str], float] = field(default_factory=dict)
    distances: dict[str, dict[str, dict[str, np.ndarray]]] = field(default_factory=dict)
    flipped_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    attacked_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    flipped: dict[str, np.ndarray] = field(default_factory=dict)
    queries: dict[str, np.ndarray] = field(default_factory=dict)
    budget: float = float("nan")
    z_y10: dict[str, np.ndarray] = field(default_factory=dict)
    boundary: dict[str, np.ndarray] = field(default_factory=dict)
    corner_flipped: dict[str, np.ndarray] = field(default_factory=dict)
    certified_flippable: dict[str, np.ndarray] = field(default_factory=dict)
    certified_range: str = ""
    certified_undecided: int = 0
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
    attack = {m: _attack_rows(run / "attack" / "results.csv") for m, run in runs.items()}
    both = sorted(set(attack[REFERENCE_METHOD]) & set(attack[method]))
    ev.attacked_index = np.array(both, dtype=np.int64)
    for m, run in runs.items():
        ev.flipped[m] = np.array([attack[m][t][0] for t in both], dtype=bool)
        ev.queries[m] = np.array([attack[m][t][1] for t in both], dtype=np.float64)
        ev.z_y10[m] = _latents(run / "attack" / "latents.npz", both)
        ev.sources.append(_rel(run / "attack" / "results.csv", root))
    ev.budget = _query_budget(read_json(runs[REFERENCE_METHOD] / "attack" / "summary.json"), ev.queries)
    ev.flipped_index, ev.distances = _flipped_distances(analysis / "distances_per_image.csv", method)
    expected = ev.attacked_index[ev.flipped[REFERENCE_METHOD] & ev.flipped[method]]
    if not np.array_equal(ev.flipped_index, expected):
        raise file_error(analysis / "distances_per_image.csv", "its images are not those the two attacks flipped "
                                                               "under both runs; run the analysis again")
    ev.boundary = _boundaries(analysis / "attacked_per_image.csv", method, both)
    ev.sources += [_rel(analysis / "distances_per_image.csv", root), _rel(analysis / "attacked_per_image.csv", root)]
    corner = {m: attack_dir(run, "exhaustive") / "results.csv" for m, run in runs.items()}
    if all(p.is_file() for p in corner.values()):
        ev.corner_flipped = _paired_flags({m: _image_flips(p) for m, p in corner.items()})
        ev.sources += [_rel(p, root) for p in corner.values()]
    certified = {m: run / "certify" / "results.csv" for m, run in runs.items()}
    ranges = {m: _certified_range(run) for m, run in runs.items()}
    if all(p.is_file() for p in certified.values()) and None not in ranges.values() and len(set(ranges.values())) == 1:
        ev.certified_flippable, ev.certified_undecided = certified_flags(
            {m: _certified_status(p) for m, p in certified.items()})
        ev.certified_range = ranges[REFERENCE_METHOD]
        ev.sources += [_rel(p, root) for p in certified.values()]
    return ev


def certified_flags(statuses: dict[str, dict[int, str]]) -> tuple[dict[str, np.ndarray], int]:
    """Paired flippable flags of the images every certification decided.

    Args:
        statuses: method → {test index: ``flippable`` / ``certified`` / ``undecided``}.

    Returns:
        (method → bool array over the images all methods decided, ascending test index: whether it
        is flippable; the number of images all methods certified but one left undecided). An
        undecided image has no proved answer, so it is left out rather than counted as not flippable.
    """
    common = set.intersection(*(set(s) for s in statuses.values()))
    decided = {t for t in common if all(s[t] != "undecided" for s in statuses.values())}
    flags = _paired_flags({m: {t: s[t] == "flippable" for t in decided} for m, s in statuses.items()})
    return flags, len(common) - len(decided)


def _certified_range(run: Path) -> str | None:
    """The value range kind of a finished certification (``certify/summary.json``), else None."""
    path = run / "certify" / "summary.json"
    if not path.is_file():
        return None
    return str((read_json(path).get("value_range") or {}).get("kind", "input"))


def _paired_flags(flags: dict[str, dict[int, bool]]) -> dict[str, np.ndarray]:
    """Per method, the flags of the test images both methods have, in ascending test index."""
    common = sorted(set.intersection(*(set(f) for f in flags.values())))
    return {m: np.array([f[t] for t in common], dtype=bool) for m, f in flags.items()}


def _image_flips(path: Path) -> dict[int, bool]:
    """test index → whether the campaign flipped the image (one row per image in results.csv)."""
    return {index: flipped for index, (flipped, _) in _attack_rows(path).items()}


def _certified_status(path: Path) -> dict[int, str]:
    """test index → the certification's answer (``certify/results.csv``): flippable, certified or undecided."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if rows and not {"test_index", "status"} <= set(rows[0]):
        raise file_error(path, "needs the columns test_index and status")
    return {int(r["test_index"]): r["status"] for r in rows}


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


def _read_rows(path: Path, columns: Sequence[str], what: str) -> list[dict[str, str]]:
    if not path.is_file():
        raise file_error(path, f"file not found; {what}")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise file_error(path, f"missing columns {', '.join(missing)} (written by an older version?); run the "
                                   "analysis again")
        return list(reader)


def _flipped_distances(path: Path, method: str) -> tuple[np.ndarray, dict[str, dict[str, dict[str, np.ndarray]]]]:
    keys = {(scale, pert, m): f"d_{pert.lower().replace('-', '_')}_{m}{suffix}"
            for scale, suffix in (("latent", ""), ("logit", "_logit")) for pert in PERTURBATIONS
            for m in (REFERENCE_METHOD, method)}
    rows = _read_rows(path, ["test_index", *keys.values()], "run the analysis first")
    rows.sort(key=lambda r: int(r["test_index"]))
    out: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for (scale, pert, m), column in keys.items():
        out.setdefault(scale, {}).setdefault(pert, {})[m] = np.array([float(r[column]) for r in rows])
    return np.array([int(r["test_index"]) for r in rows], dtype=np.int64), out


def _boundaries(path: Path, method: str, attacked: list[int]) -> dict[str, np.ndarray]:
    columns = [f"boundary_{m}" for m in (REFERENCE_METHOD, method)]
    rows = {int(r["test_index"]): r for r in _read_rows(path, ["test_index", *columns], "run the analysis first")}
    if sorted(rows) != attacked:
        raise file_error(path, "its images are not those attacked under both runs; run the analysis again")
    return {m: np.array([float(rows[t][f"boundary_{m}"]) for t in attacked]) for m in (REFERENCE_METHOD, method)}


def _latents(path: Path, attacked: list[int]) -> np.ndarray:
    """The Y10 latents of the attacked images, in the order of ``attacked``."""
    if not path.is_file():
        raise file_error(path, "file not found; run the attack first")
    with np.load(path, allow_pickle=False) as npz:
        if "z_y10" not in npz.files:
            raise file_error(path, "has no z_y10 array; run the attack again")
        index, z = np.asarray(npz["test_index"]).astype(np.int64), np.asarray(npz["z_y10"], np.float64)
    row = {int(t): i for i, t in enumerate(index)}
    missing = [t for t in attacked if t not in row]
    if missing:
        raise file_error(path, f"no latent for attacked test image {missing[0]}")
    return z[[row[t] for t in attacked]] if attacked else np.zeros((0, z.shape[1] if z.ndim == 2 else 0))


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


def _pool(intervals: list[Interval]) -> Interval:
    """Several seeds: the t-interval of their effects; one seed: its own (per-image) interval."""
    return pool_differences(intervals, DEFAULT_LEVEL)


def _per_seed(ev: Evidence, interval: Interval, **extra: Any) -> dict[str, Any]:
    return {"seed": ev.seed, "effect": interval.estimate, "ci_low": interval.low, "ci_high": interval.high,
            "how": interval.method, **extra}


def paper_effect(fid: str, model: str) -> float | None:
    """The paper's number for a finding and model (None: the paper has none)."""
    return PAPER_EFFECTS.get(fid, {}).get(model)


def _finding(fid: str, evidence: Sequence[Evidence], pooled: Interval, per_seed: list[dict[str, Any]], *,
             numbers: dict[str, Any], paper: dict[str, Any], detail: str, n_images: int,
             **extra: Any) -> dict[str, Any]:
    """The finding's record: the primary endpoint's interval, verdict, magnitude and statement."""
    ev = evidence[0]
    rule = FINDING_RULES[fid]
    word = verdict(pooled, fid)
    theirs = paper_effect(fid, ev.model)
    size = magnitude(pooled, theirs, fid)
    one = len(evidence) == 1 or extra.pop("seeds_used", None) == 1  # the interval is one trained model's
    extra.pop("seeds_used", None)
    extra_words = extra.pop("warning", None)
    label = word + (f" ({extra_words})" if extra_words else "") + (f" — {ONE_MODEL}" if one else "")
    who = MODEL_LABELS.get(ev.model, ev.model) + ("" if fid == "a" else f", {_m(ev.method)}")
    statement = (f"{who}: {PRIMARY[fid]} "
                 f"{effect_text(fid, pooled.estimate)}, 95 % CI [{effect_text(fid, pooled.low, sign=False)}, "
                 f"{effect_text(fid, pooled.high, sign=False)}] ({_basis(evidence, pooled)}): {word}"
                 + (f", {extra_words}" if extra_words else "") + f"; {magnitude_text(fid, ev.model, ev.method, size)}."
                 + (f" {detail}" if detail else "") + (f" Verdict of {ONE_MODEL}." if one else ""))
    return {"id": fid, "model": ev.model, "method": ev.method, "claim": CLAIMS[fid], "test": TESTS[fid],
            "primary": PRIMARY[fid], "effect": pooled.estimate, "ci_low": pooled.low, "ci_high": pooled.high,
            "ci_level": pooled.level, "verdict": word, "label": label, "magnitude": size, "paper_effect": theirs,
            "bound": rule.bound, "null": rule.null, "one_model": one, "per_seed": per_seed,
            "n_seeds": len(evidence), "seeds": [e.seed for e in evidence], "how": pooled.method, "numbers": numbers,
            "paper": paper, "n_images": n_images, "sources": sorted({s for e in evidence for s in e.sources}),
            "statement": statement, **extra}


def _accuracy_finding(fid: str, evidence: Sequence[Evidence], a: tuple[str, str], b: tuple[str, str],
                      numbers_of: Any, paper: dict[str, Any], paper_text: str) -> dict[str, Any]:
    """(a), (b), (c): accuracy(b) − accuracy(a) per seed (paired bootstrap), pooled across seeds."""
    per_seed, intervals = [], []
    for ev in evidence:
        ma, mb = (ev.method if k == "adapted" else k for k in (a[0], b[0]))
        iv = accuracy_difference(ev.correct[(ma, a[1])], ev.correct[(mb, b[1])], level=DEFAULT_LEVEL,
                                 n_resamples=DEFAULT_RESAMPLES, seed=ev.seed)
        intervals.append(iv)
        per_seed.append(_per_seed(ev, iv, n_images=ev.n_test, accuracies=numbers_of(ev)))
    pooled = _pool(intervals)
    detail = paper_text + ("" if len(evidence) == 1 else
                           " The t-interval over seeds leaves out the sampling error of the one test set they share.")
    numbers = numbers_of(evidence[0]) if len(evidence) == 1 else {"per_seed": [p["accuracies"] for p in per_seed]}
    return _finding(fid, evidence, pooled, per_seed, numbers=numbers, paper=paper, detail=detail,
                    n_images=evidence[0].n_test)


def finding_a(evidence: Sequence[Evidence]) -> dict[str, Any]:
    """(a) The regular model's accuracy change from Y10 to Y1 (Y1 − Y10)."""
    model = evidence[0].model
    before, after = _paper_accuracy(model, "regular", "Y10"), _paper_accuracy(model, "regular", "Y1")

    def numbers(ev: Evidence) -> dict[str, float]:
        return {"regular_Y10_accuracy": ev.accuracy[(REFERENCE_METHOD, "Y10")],
                "regular_Y1_accuracy": ev.accuracy[(REFERENCE_METHOD, "Y1")]}

    finding = _accuracy_finding("a", evidence, (REFERENCE_METHOD, "Y10"), (REFERENCE_METHOD, "Y1"), numbers,
                                {"regular_Y10_accuracy": before, "regular_Y1_accuracy": after},
                                _paper_change("Paper (regular, Y10 → Y1)", before, after))
    finding["method"] = REFERENCE_METHOD
    return finding


def finding_b(evidence: Sequence[Evidence]) -> dict[str, Any]:
    """(b) The adapted model's Y1 accuracy gain over the regular one."""
    model = evidence[0].model
    before, after = _paper_accuracy(model, "regular", "Y1"), _paper_accuracy(model, "mmd", "Y1")

    def numbers(ev: Evidence) -> dict[str, float]:
        return {"regular_Y1_accuracy": ev.accuracy[(REFERENCE_METHOD, "Y1")],
                f"{ev.method}_Y1_accuracy": ev.accuracy[(ev.method, "Y1")]}

    return _accuracy_finding("b", evidence, (REFERENCE_METHOD, "Y1"), ("adapted", "Y1"), numbers,
                             {"regular_Y1_accuracy": before, "mmd_Y1_accuracy": after},
                             _paper_change("Paper (Y1, regular → MMD)", before, after))


def finding_c(evidence: Sequence[Evidence]) -> dict[str, Any]:
    """(c) The adapted model's Y10 accuracy change (adapted − regular), non-inferiority."""
    model = evidence[0].model
    before, after = _paper_accuracy(model, "regular", "Y10"), _paper_accuracy(model, "mmd", "Y10")

    def numbers(ev: Evidence) -> dict[str, float]:
        return {"regular_Y10_accuracy": ev.accuracy[(REFERENCE_METHOD, "Y10")],
                f"{ev.method}_Y10_accuracy": ev.accuracy[(ev.method, "Y10")]}

    return _accuracy_finding("c", evidence, (REFERENCE_METHOD, "Y10"), ("adapted", "Y10"), numbers,
                             {"regular_Y10_accuracy": before, "mmd_Y10_accuracy": after},
                             _paper_change("Paper (Y10, regular → MMD)", before, after)
                             + f" The {100 * NON_INFERIORITY_MARGIN:g}-point non-inferiority margin is ours, not "
                               "the paper's.")


# --------------------------------------------------------------------------------------
# (d)
# --------------------------------------------------------------------------------------
def _ratio_versions(ev: Evidence) -> dict[str, Interval]:
    """One seed's ratio intervals: raw d_E (primary), logit space and spread-normalised."""
    ref, ada = REFERENCE_METHOD, ev.method
    raw = ev.distances["latent"]["Y10-1P"]
    logit = ev.distances.get("logit", {}).get("Y10-1P", {})
    out = {"raw": median_ratio(raw[ref], raw[ada], level=DEFAULT_LEVEL, n_resamples=DEFAULT_RESAMPLES, seed=ev.seed)}
    out["logit"] = (median_ratio(logit[ref], logit[ada], level=DEFAULT_LEVEL, n_resamples=DEFAULT_RESAMPLES, seed=ev.seed)
                    if logit and all(np.isfinite(v).all() for v in logit.values())
                    else Interval(float("nan"), float("nan"), float("nan"), DEFAULT_LEVEL, "no head: not measured"))
    both = ev.flipped[ref] & ev.flipped[ada]
    out["spread"] = spread_normalised_ratio(raw[ref], raw[ada], ev.z_y10[ref], ev.z_y10[ada], both, level=DEFAULT_LEVEL,
                                            n_resamples=DEFAULT_RESAMPLES, seed=ev.seed)
    return out


def _boundary_ratio(ev: Evidence) -> Interval:
    """Median distance to the decision boundary, adapted / regular, over every image attacked under both."""
    a, b = ev.boundary.get(REFERENCE_METHOD, np.zeros(0)), ev.boundary.get(ev.method, np.zeros(0))
    if len(a) == 0 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return Interval(float("nan"), float("nan"), float("nan"), DEFAULT_LEVEL, "not measured (no linear head)")
    return median_ratio(a, b, level=DEFAULT_LEVEL, n_resamples=DEFAULT_RESAMPLES, seed=ev.seed)


def _pool_ratios(intervals: list[Interval]) -> Interval:
    """Several seeds: exp of the t-interval of the log ratios; one seed: its own bootstrap interval
    (one trained model: the finding says so)."""
    if len(intervals) == 1:
        return intervals[0]
    return log_ratio_t_interval([iv.estimate for iv in intervals], DEFAULT_LEVEL)


def finding_d(evidence: Sequence[Evidence]) -> dict[str, Any]:
    """(d) Ratio adapted / regular of the median raw d_E(Y10–1P), images flipped under both."""
    model, method = evidence[0].model, evidence[0].method
    included = [ev for ev in evidence if ev.n_flipped_both >= MIN_IMAGES]
    excluded = [{"seed": ev.seed, "n_images": ev.n_flipped_both} for ev in evidence if ev.n_flipped_both < MIN_IMAGES]
    per_seed, versions = [], {"raw": [], "logit": [], "spread": []}
    for ev in evidence:
        boundary = _boundary_ratio(ev)
        if ev.n_flipped_both < MIN_IMAGES:
            per_seed.append({"seed": ev.seed, "effect": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"),
                             "how": f"left out: fewer than {MIN_IMAGES} images flipped under both",
                             "n_images": ev.n_flipped_both, "excluded": True, **_boundary_json(boundary, ev)})
            continue
        v = _ratio_versions(ev)
        for key in versions:
            versions[key].append(v[key])
        per_seed.append(_per_seed(ev, v["raw"], n_images=ev.n_flipped_both, excluded=False,
                                  **{f"{k}_{part}": getattr(v[k], attr) for k in SENSITIVITY
                                     for part, attr in (("ratio", "estimate"), ("ci_low", "low"),
                                                        ("ci_high", "high"))},
                                  **_boundary_json(boundary, ev)))
    nan = Interval(float("nan"), float("nan"), float("nan"), DEFAULT_LEVEL, "no seed with enough images", 0)
    pooled = {k: _pool_ratios(v) if v else nan for k, v in versions.items()}
    boundary_pooled = _pool_ratios([_boundary_ratio(ev) for ev in evidence])
    word = verdict(pooled["raw"], "d")
    sensitivity = {k: {**pooled[k].to_json(), "verdict": verdict(pooled[k], "d"), "scale": SENSITIVITY[k]}
                   for k in SENSITIVITY}
    depends = any(s["verdict"] != word for s in sensitivity.values() if s["low"] is not None)
    pd = PAPER_DISTANCES.get(model)
    n_images = [ev.n_flipped_both for ev in included]
    detail = ("Sensitivity (no reparametrisation of a latent space changes them): "
              + "; ".join(f"{SENSITIVITY[k]} {_ratio_ci(pooled[k])}: {sensitivity[k]['verdict']}" for k in SENSITIVITY)
              + f". Images flipped under both per seed: {_list(n_images) or 'none'}"
              + (f"; left out (fewer than {MIN_IMAGES}): "
                 + ", ".join(f"seed {x['seed']} (n = {x['n_images']})" for x in excluded) if excluded else "")
              + ". Not selected on the attack's success: median latent distance from z(Y10) to the decision boundary, "
              f"{_m(method)} / regular, over every image attacked under both: {_ratio_ci(boundary_pooled)}. "
              + (f"Paper: median {pd['Y10-1P']['regular'][0]} → {pd['Y10-1P']['mmd'][0]} on {pd['n']} images."
                 if pd else NO_PAPER)
              + (IDENTICAL_Y10 if _identical_y10_distances(evidence) else ""))
    return _finding("d", evidence, pooled["raw"], per_seed,
                    numbers={"n_flipped_both": [ev.n_flipped_both for ev in evidence], "min_images": MIN_IMAGES,
                             "boundary_ratio": boundary_pooled.to_json()},
                    paper={"regular_median_dE_Y10_1P": pd["Y10-1P"]["regular"][0],
                           "mmd_median_dE_Y10_1P": pd["Y10-1P"]["mmd"][0], "n": pd["n"]} if pd else {},
                    detail=detail, n_images=sum(n_images), sensitivity=sensitivity, excluded_seeds=excluded,
                    scale="raw", warning=SCALE_WARNING if depends else None, scale_dependent=depends,
                    seeds_used=len(included))


def _boundary_json(iv: Interval, ev: Evidence) -> dict[str, Any]:
    return {"boundary_ratio": iv.estimate, "boundary_ci_low": iv.low, "boundary_ci_high": iv.high,
            "n_attacked": ev.n_attacked_both}


#: said of (d) when the adapted run's Y10 distances equal the regular run's on every image of every seed
IDENTICAL_Y10 = (" Both runs give the same distance for every flipped image of every seed: the adapted run's"
                 " Y10 model is the regular training (as AdaBN's, which changes only Y1 inference), so the"
                 " ratio is 1 by construction and has no interval.")


def _identical_y10_distances(evidence: Sequence[Evidence]) -> bool:
    """Whether the adapted and regular d_E(Y10–1P) agree exactly on every flipped image of every seed."""
    pairs = [(ev.distances["latent"]["Y10-1P"][REFERENCE_METHOD], ev.distances["latent"]["Y10-1P"][ev.method])
             for ev in evidence]
    return any(len(r) for r, _ in pairs) and all(np.array_equal(r, a) for r, a in pairs)


# --------------------------------------------------------------------------------------
# (e)
# --------------------------------------------------------------------------------------
def _paired_rates(evidence: Sequence[Evidence], flags_of: Any) -> dict[str, Any] | None:
    """A paired flip-rate difference (adapted − regular) per seed, pooled over seeds; None unless
    every seed has the flags. Rates share one denominator: the images both runs have."""
    flags = [flags_of(ev) for ev in evidence]
    if not all(f and len(f.get(REFERENCE_METHOD, ())) for f in flags):
        return None
    intervals, per_seed = [], []
    for ev, f in zip(evidence, flags):
        fr, fa = f[REFERENCE_METHOD], f[ev.method]
        rate = paired_rate_difference(fr, fa, level=DEFAULT_LEVEL)
        intervals.append(rate.interval)
        per_seed.append({"seed": ev.seed, "n": len(fr), "regular": int(fr.sum()), "adapted": int(fa.sum()),
                         "difference": rate.interval.estimate})
    pooled = _pool(intervals)
    n = sum(p["n"] for p in per_seed)
    return {**pooled.to_json(), "n_images": n, "regular_rate": sum(p["regular"] for p in per_seed) / n,
            "adapted_rate": sum(p["adapted"] for p in per_seed) / n, "per_seed": per_seed}


def finding_e(evidence: Sequence[Evidence]) -> dict[str, Any]:
    """(e) Paired flip-rate difference adapted − regular of the paper's attack, one per seed, pooled."""
    method = evidence[0].method
    per_seed: list[dict[str, Any]] = []
    rates: list[Interval] = []
    queries: list[Interval] = []
    for ev in evidence:
        fr, fa = ev.flipped[REFERENCE_METHOD], ev.flipped[method]
        rate = paired_rate_difference(fr, fa, level=DEFAULT_LEVEL)
        both = fr & fa
        q = censored_difference(ev.queries[REFERENCE_METHOD][both], np.ones(both.sum(), bool),
                                ev.queries[method][both], np.ones(both.sum(), bool), ev.budget, level=DEFAULT_LEVEL,
                                n_resamples=DEFAULT_RESAMPLES, seed=ev.seed).interval if both.sum() else \
            Interval(float("nan"), float("nan"), float("nan"), DEFAULT_LEVEL, "no image flipped under both", 0)
        rates.append(rate.interval)
        queries.append(q)
        per_seed.append(_per_seed(ev, rate.interval, n_images=ev.n_attacked_both, mcnemar_p=rate.p_value,
                                  flipped_regular=int(fr.sum()), flipped_adapted=int(fa.sum()),
                                  queries_effect=q.estimate, queries_ci_low=q.low, queries_ci_high=q.high,
                                  n_flipped_both=int(both.sum()), budget=ev.budget))
    pooled = _pool(rates)
    queries_pooled = _pool(queries)
    n = sum(ev.n_attacked_both for ev in evidence)
    flipped = {m: sum(p[f"flipped_{k}"] for p in per_seed) for m, k in ((REFERENCE_METHOD, "regular"),
                                                                        (method, "adapted"))}
    cluster = (cluster_bootstrap_difference([ev.attacked_index for ev in evidence],
                                            [ev.flipped[method].astype(float) - ev.flipped[REFERENCE_METHOD]
                                             for ev in evidence], level=DEFAULT_LEVEL, n_resamples=DEFAULT_RESAMPLES,
                                            seed=evidence[0].seed) if len(evidence) > 1 else None)
    check = pooled_rate_difference([paired_flips(ev.flipped[REFERENCE_METHOD], ev.flipped[method])
                                    for ev in evidence], level=DEFAULT_LEVEL)
    corner = _paired_rates(evidence, lambda ev: ev.corner_flipped)
    certified = (_paired_rates(evidence, lambda ev: ev.certified_flippable)
                 if len({ev.certified_range for ev in evidence}) == 1 else None)  # one threat model pooled
    if certified is not None:
        certified.update(value_range=evidence[0].certified_range,
                         undecided_left_out=sum(ev.certified_undecided for ev in evidence))
    detail = (f"Flip rates on the same {n} images: regular {_pct(flipped[REFERENCE_METHOD] / n if n else None)}, "
              f"{_m(method)} {_pct(flipped[method] / n if n else None)}."
              + (f" Sensitivity, galaxy × seed cluster bootstrap: {_pts_ci(cluster)}." if cluster else "")
              + f" Secondary (never deciding): queries to flip {_m(method)} − regular on the images flipped under "
              f"both {fmt_sig(queries_pooled.estimate)} [{fmt_sig(queries_pooled.low)}, {fmt_sig(queries_pooled.high)}]"
              + (f"; corner search (a lower bound on one-pixel vulnerability) {_rate_text(corner)}" if corner else "")
              + (f"; proved by `deepadv certify` ({certified['value_range']} value range, flippable or certified "
                 f"under both runs" + (f", {certified['undecided_left_out']} undecided images left out"
                                       if certified["undecided_left_out"] else "")
                 + f") {_rate_text(certified)}" if certified else "")
              + (f". Check conditional on these trained models: McNemar on the pairs summed over seeds "
                 f"(b = {check.counts['b']}, c = {check.counts['c']}) p = {fmt_sig(check.p_value)}."
                 if len(evidence) > 1 else ".")
              + " Paper: more differential-evolution iterations were needed with DA (no flip-rate number).")
    numbers = {"flip_rates": {"n_images": n, "regular": flipped[REFERENCE_METHOD] / n if n else None,
                              "adapted": flipped[method] / n if n else None},
               "queries_flipped_both": queries_pooled.to_json(),
               "mcnemar_check": {**check.to_json(), "label": "conditional on these trained models"}}
    if cluster is not None:
        numbers["cluster_bootstrap"] = cluster.to_json()
    if corner is not None:
        numbers["corner_rate"] = corner
    if certified is not None:
        numbers["certified_rate"] = certified
    return _finding("e", evidence, pooled, per_seed, numbers=numbers,
                    paper={"statement": "more differential-evolution iterations needed with DA; ResNet18 DA "
                                        "flipped 136 of 150 images within 80 iterations (section 5.2)"},
                    detail=detail, n_images=n)


def _rate_text(r: dict[str, Any]) -> str:
    return (f"{_m_pts(r['estimate'])} [{_m_pts(r['low'])}, {_m_pts(r['high'])}] on {r['n_images']} images "
            f"(regular {_pct(r['regular_rate'])}, adapted {_pct(r['adapted_rate'])})")


# --------------------------------------------------------------------------------------
# words
# --------------------------------------------------------------------------------------
NO_PAPER = "The paper has no numbers for this model."


def effect_text(fid: str, x: float | None, *, sign: bool = True) -> str:
    """An effect in its unit: a ratio (``0.65``) for (d), signed points (``+2.5 points``) otherwise."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if fid == "d":
        return fmt_sig(x)
    text = fmt_fixed(100 * x, 1)
    return (f"+{text}" if sign and not text.startswith("-") else text) + (" points" if sign else "")


def paper_text(fid: str, value: float) -> str:
    """The paper's number as SPEC 10 writes it: ``×1.3``, ``−22 points``."""
    if fid == "d":
        return f"×{value:g}"
    points = round(100 * value)
    return f"{points:+d} point{'s' if abs(points) != 1 else ''}".replace("-", "−")


def magnitude_text(fid: str, model: str, method: str, size: str | None) -> str:
    """``consistent with the paper's ×1.3`` (or why there is no statement)."""
    theirs = paper_effect(fid, model)
    if theirs is None:
        return "the paper gives no number for this" if fid == "e" else "the paper has no number for this model"
    if size is None:
        return f"no interval to set against the paper's {paper_text(fid, theirs)}"
    of = "" if method in ("mmd", REFERENCE_METHOD) else " (MMD)"
    return f"{size}{of} {paper_text(fid, theirs)}"


def _paper_accuracy(model: str, method: str, domain: str) -> float | None:
    """The paper's accuracy of a model and method on a domain (None for a model it did not train)."""
    return PAPER_METRICS.get(model, {}).get(method, {}).get(domain, {}).get("accuracy")


def _paper_change(label: str, before: float | None, after: float | None) -> str:
    return f"{label}: {before:.2f} → {after:.2f}." if before is not None and after is not None else NO_PAPER


def _m(method: str) -> str:
    return METHOD_SHORT.get(method, method)


def _m_pts(x: float | None) -> str:
    return effect_text("e", x)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def _pts_ci(iv: Interval) -> str:
    return f"{_m_pts(iv.estimate)} [{effect_text('e', iv.low, sign=False)}, {effect_text('e', iv.high, sign=False)}]"


def _ratio_ci(iv: Interval) -> str:
    return f"{fmt_sig(iv.estimate)} [{fmt_sig(iv.low)}, {fmt_sig(iv.high)}]"


def _list(values: Sequence[int]) -> str:
    return ", ".join(str(v) for v in values)


def _basis(evidence: Sequence[Evidence], pooled: Interval) -> str:
    """What an interval rests on, in words."""
    seeds = [ev.seed for ev in evidence]
    if len(seeds) == 1:
        return f"seed {seeds[0]}, {pooled.method}"
    return f"{len(seeds)} seeds ({_list(seeds)}), {pooled.method}"
