"""Findings (d) and (e) built from hand-made evidence: the ratio against numpy, the by-construction
note, and the corner search's paired rate pooled over seeds like the primary endpoint."""
from __future__ import annotations

import numpy as np
from scipy import stats as sps

from deepadversaries.reporting.findings import IDENTICAL_Y10, Evidence, certified_flags, finding_d, finding_e


def _evidence(seed: int, regular: np.ndarray, adapted: np.ndarray, method: str = "adabn") -> Evidence:
    ev = Evidence("convnet", method, seed)
    n = len(regular)
    for scale, factor in (("latent", 1.0), ("logit", 1 / 30.0)):
        ev.distances[scale] = {pert: {"regular": regular * factor, method: adapted * factor}
                               for pert in ("Y10-Y1", "Y10-1P")}
    ev.attacked_index = np.arange(n + 10)
    flipped = np.arange(n + 10) < n
    ev.flipped = {"regular": flipped, method: flipped.copy()}
    ev.flipped_index = np.arange(n)
    ev.queries = {m: np.full(n + 10, 100.0) for m in ("regular", method)}
    ev.budget = 800.0
    z = np.random.default_rng(seed).normal(size=(n + 10, 4))
    ev.z_y10 = {"regular": z, method: z}
    ev.boundary = {"regular": np.ones(n + 10), method: np.ones(n + 10)}
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
    assert np.isclose(finding["effect"], np.median(adapted) / np.median(regular))
    assert np.isclose(finding["sensitivity"]["logit"]["estimate"], np.median(adapted) / np.median(regular))
    assert finding["ci_low"] < finding["effect"] < finding["ci_high"]


def _attacked(seed: int, regular: np.ndarray, adapted: np.ndarray, corner: tuple[np.ndarray, np.ndarray] | None):
    ev = _evidence(seed, np.array([3.0, 4.0]), np.array([2.0, 5.0]), "mmd")
    ev.attacked_index = np.arange(len(regular))
    ev.flipped = {"regular": regular, "mmd": adapted}
    ev.queries = {"regular": np.where(regular, 100.0, 800.0), "mmd": np.where(adapted, 200.0, 800.0)}
    ev.budget = 800.0
    if corner is not None:
        ev.corner_flipped = {"regular": corner[0], "mmd": corner[1]}
    return ev


def test_finding_e_pools_the_corner_search_rates_over_seeds_like_its_primary_endpoint():
    rng = np.random.default_rng(3)
    seeds, differences, n = [], [], 0
    for seed in range(3):
        de_r, de_a = rng.random(60) < 0.1, rng.random(60) < 0.1
        ex_r, ex_a = de_r | (rng.random(60) < 0.3), de_a | (rng.random(60) < 0.1)
        differences.append((ex_a.sum() - ex_r.sum()) / 60)
        n += 60
        seeds.append(_attacked(seed, de_r, de_a, (ex_r, ex_a)))
    finding = finding_e(seeds)
    corner = finding["numbers"]["corner_rate"]
    mean, sd = np.mean(differences), np.std(differences, ddof=1)
    half = sps.t.ppf(0.975, 2) * sd / np.sqrt(3)
    assert corner["n_images"] == n and np.isclose(corner["estimate"], mean)
    assert np.isclose(corner["low"], mean - half) and np.isclose(corner["high"], mean + half)
    assert "corner search (a lower bound on one-pixel vulnerability)" in finding["statement"]
    assert "exact" not in finding["statement"].lower()
    # secondary: the verdict is the DE primary endpoint's whatever the corner search says
    primary = [(s.flipped["mmd"].sum() - s.flipped["regular"].sum()) / 60 for s in seeds]
    assert np.isclose(finding["effect"], np.mean(primary))
    seeds[1].corner_flipped = {}  # one seed without the corner searches: nothing pooled, nothing said
    finding = finding_e(seeds)
    assert "corner_rate" not in finding["numbers"] and "corner search" not in finding["statement"]


def test_certified_flags_leave_out_images_undecided_under_either_run():
    statuses = {"regular": {1: "flippable", 2: "certified", 3: "undecided", 4: "flippable", 9: "certified"},
                "mmd": {1: "certified", 2: "certified", 3: "flippable", 4: "undecided", 5: "flippable"}}
    flags, undecided = certified_flags(statuses)
    # images 1 and 2 are decided under both; 3 and 4 are undecided under one run; 5 and 9 under one run only
    assert undecided == 2
    np.testing.assert_array_equal(flags["regular"], [True, False])
    np.testing.assert_array_equal(flags["mmd"], [False, False])


def test_finding_e_states_the_certified_rate_with_its_value_range_and_one_range_only():
    rng = np.random.default_rng(5)
    seeds, differences = [], []
    for seed in range(3):
        ev = _attacked(seed, rng.random(40) < 0.1, rng.random(40) < 0.1, None)
        cr, ca = rng.random(30) < 0.3, rng.random(30) < 0.2
        ev.certified_flippable = {"regular": cr, "mmd": ca}
        ev.certified_range, ev.certified_undecided = "physical", seed
        differences.append((ca.sum() - cr.sum()) / 30)
        seeds.append(ev)
    finding = finding_e(seeds)
    certified = finding["numbers"]["certified_rate"]
    assert np.isclose(certified["estimate"], np.mean(differences)) and certified["n_images"] == 90
    assert certified["value_range"] == "physical" and certified["undecided_left_out"] == 3
    assert "`deepadv certify` (physical value range" in finding["statement"]
    assert "3 undecided images left out" in finding["statement"]
    seeds[2].certified_range = "input"  # another threat model in one seed: not pooled, not said
    finding = finding_e(seeds)
    assert "certified_rate" not in finding["numbers"] and "deepadv certify" not in finding["statement"]
