"""Finding (d) built from hand-made evidence: the ratio against numpy, and the by-construction note."""
from __future__ import annotations

import numpy as np

from deepadversaries.findings import IDENTICAL_Y10, Evidence, finding_d


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
