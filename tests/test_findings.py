"""Finding (d) built from hand-made evidence: the ratio against numpy, and the by-construction note."""
from __future__ import annotations

import numpy as np

from deepadversaries.findings import IDENTICAL_Y10, Evidence, finding_d, finding_e


def _evidence(seed: int, regular: np.ndarray, adapted: np.ndarray, method: str = "adabn") -> Evidence:
    ev = Evidence("convnet", method, seed)
    for scale, factor in (("latent", 1.0), ("normalised", 1 / 30.0)):
        ev.distances[scale] = {pert: {"regular": regular * factor, method: adapted * factor}
                               for pert in ("Y10-Y1", "Y10-1P")}
    return ev


def test_identical_y10_distances_are_said_to_be_one_by_construction():
    rng = np.random.default_rng(0)
    d = rng.uniform(2, 9, size=40)
    finding = finding_d([_evidence(0, d, d.copy()), _evidence(1, d[:20], d[:20].copy())])
    assert IDENTICAL_Y10.strip() in finding["statement"]


def test_different_distances_give_the_median_ratio_and_no_note():
    rng = np.random.default_rng(1)
    regular, adapted = rng.uniform(2, 9, size=40), rng.uniform(1, 5, size=40)
    finding = finding_d([_evidence(0, regular, adapted, "mmd")])
    assert IDENTICAL_Y10.strip() not in finding["statement"]
    assert np.isclose(finding["numbers"]["raw_ratio"], np.median(adapted) / np.median(regular))
    assert np.isclose(finding["effect"], np.median(adapted) / np.median(regular))
    assert finding["ci_low"] < finding["effect"] < finding["ci_high"]


def _attacked(seed: int, regular: np.ndarray, adapted: np.ndarray, exact: tuple[np.ndarray, np.ndarray] | None):
    ev = _evidence(seed, np.array([3.0, 4.0]), np.array([2.0, 5.0]), "mmd")
    ev.flipped = {"regular": regular, "mmd": adapted}
    ev.queries = {"regular": np.where(regular, 100.0, 800.0), "mmd": np.where(adapted, 200.0, 800.0)}
    ev.budget = 800.0
    if exact is not None:
        ev.exact_flipped = {"regular": exact[0], "mmd": exact[1]}
    return ev


def test_finding_e_pools_the_exact_flips_over_seeds_like_a_summed_mcnemar():
    from scipy.stats import binomtest

    rng = np.random.default_rng(3)
    seeds, b, c, n = [], 0, 0, 0
    for seed in range(3):
        de_r, de_a = rng.random(60) < 0.1, rng.random(60) < 0.1
        ex_r, ex_a = de_r | (rng.random(60) < 0.3), de_a | (rng.random(60) < 0.1)
        b += int(np.sum(ex_r & ~ex_a))
        c += int(np.sum(ex_a & ~ex_r))
        n += 60
        seeds.append(_attacked(seed, de_r, de_a, (ex_r, ex_a)))
    finding = finding_e(seeds)
    exact = finding["numbers"]["exact_rate"]
    assert (exact["counts"]["b"], exact["counts"]["c"], exact["counts"]["n"]) == (b, c, n) and b + c > 0
    assert np.isclose(exact["estimate"], (c - b) / n)
    assert np.isclose(exact["p_value"], binomtest(c, b + c).pvalue)
    assert "Under the exact one-pixel answer" in finding["statement"]
    seeds[1].exact_flipped = {}  # one seed without the exhaustive campaigns: nothing pooled, nothing said
    finding = finding_e(seeds)
    assert "exact_rate" not in finding["numbers"] and "exact one-pixel" not in finding["statement"]
