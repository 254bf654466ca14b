"""Sparse-RS (L0): the schedule, the search against a plain loop, known answers, query
counts, value ranges, batching independence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepadversaries.attacks.values import ValueRange
from deepadversaries.errors import OptionError
from deepadversaries.attacks.sparse_rs import ALPHA_INIT, SparseRS, alpha_schedule

from attack_support import PixelModel, bright_pixel_case, check_claims, flat_images, plain_probabilities


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_alpha_schedule_is_the_papers():
    # Croce et al. (2022), L0: alpha_init, then /2 (i <= 50), /4 (<= 200), /5 (<= 500), /6 (<= 1000),
    # /8 (<= 2000), /10 (<= 4000), /12 (<= 6000), /15 (<= 8000), /20 — on a 10,000-query scale
    table = {0: 1, 1: 2, 50: 2, 51: 4, 200: 4, 201: 5, 500: 5, 501: 6, 1000: 6, 1001: 8, 2000: 8, 2001: 10,
             4000: 10, 4001: 12, 6000: 12, 6001: 15, 8000: 15, 8001: 20, 9999: 20}
    for it, div in table.items():
        assert alpha_schedule(it, 10000, 0.3) == pytest.approx(0.3 / div)
    assert alpha_schedule(100, 20000, 0.3) == pytest.approx(0.3 / 2)  # rescaled: 100 of 20,000 is 50 of 10,000
    assert alpha_schedule(1, 32400, ALPHA_INIT) == ALPHA_INIT  # floor(1 / 32400 x 10000) = 0


def plain_sparse_rs(model, image, label, target, k, budget, seed, key, alpha_init=ALPHA_INIT):
    """Sparse-RS written out as a plain loop: one forward pass per query, the same draws."""
    _, h, w = image.shape
    rng = np.random.default_rng([seed, key, 3 if target is None else target])
    order = rng.permutation(h * w)
    inside, outside = order[:k].copy(), order[k:].copy()
    corners = rng.integers(0, 2, (k, 3)).astype(np.float64)

    def query(ins, cor):
        return plain_probabilities(model, image, [(divmod(int(p), w), c) for p, c in zip(ins, cor)])

    def loss(p):
        logp = np.log(np.maximum(p, np.finfo(float).tiny))
        if target is not None:
            return -logp[target]
        return logp[label] - np.max(np.delete(logp, label))

    def success(p):
        return p[target] > 0.5 if target is not None else p[label] < 0.05

    p = query(inside, corners)
    queries, best = 1, loss(p)
    while not success(p) and queries < budget:
        n = max(int(alpha_schedule(queries, budget, alpha_init) * k), 1)
        drop = rng.choice(k, n, replace=False)
        take = rng.choice(len(outside), n, replace=False)
        new_in, new_out, new_c = inside.copy(), outside.copy(), corners.copy()
        new_in[drop], new_out[take] = outside[take], inside[drop]
        new_c[drop] = rng.integers(0, 2, (n, 3))
        p = query(new_in, new_c)
        queries += 1
        if success(p) or loss(p) < best:
            best, inside, outside, corners = loss(p), new_in, new_out, new_c
    return success(p), queries, inside, corners


@pytest.mark.parametrize("mode", ["targeted", "untargeted"])
def test_search_equals_a_plain_loop(mode):
    # two pixels needed (v_A + v_B > 1.6 + 0.13 / gain...): the search has to move several pixels
    model = PixelModel(row=1, col=4, band=1, true=2, target=1, gain=10.0, level=1.6, second=(2, 5, 0))
    images = (flat_images(4, size=6) + np.random.default_rng(2).random((4, 3, 6, 6)) * 0.2).astype(np.float32)
    target = 1 if mode == "targeted" else None
    atk = SparseRS(model, pixels=3, max_queries=400, mode=mode, seed=5, device="cpu", dtype=torch.float64,
                   chunk_size=3, batch_images=2)
    results = atk.results(images, [2] * 4, targets=[1] * 4, return_images=True)
    outcomes = set()
    for i, res in enumerate(results):
        ok, queries, inside, corners = plain_sparse_rs(model, images[i].astype(np.float64), 2, target, 3, 400, 5, i)
        assert (res.success, res.evaluations, res.iterations) == (ok, queries, queries - 1)
        if ok:  # the same pixels with the same corners
            rows, cols = np.divmod(inside, 6)
            want = sorted((c, r, *v) for c, r, v in zip(cols.tolist(), rows.tolist(), corners.tolist()))
            assert sorted((*p, *v) for p, v in zip(res.pixels.tolist(), res.values.tolist())) == want
        outcomes.add(ok)
    assert True in outcomes
    check_claims(model, images, results, pixels=3, targeted=mode == "targeted")


def test_known_pixel_is_found_and_the_query_count_is_exact():
    model = PixelModel(row=3, col=7, true=0, target=2)
    images = flat_images(5)
    for verify in (False, True):
        PixelModel.calls[0] = 0
        atk = SparseRS(model, max_queries=3000, device="cpu", optimize=False, verify=verify)
        results = atk.results(images, [0] * 5, targets=[2] * 5, return_images=True)
        for r in results:
            assert r.success and r.pixels.tolist() == [[7, 3]] and r.values[0, 0] == 1.0
            assert set(r.values[0]) <= {0.0, 1.0} and r.p_target > 0.5 and r.queries_to_success == r.evaluations
        # every image through the model is a query, plus one plain re-check per success
        assert PixelModel.calls[0] == sum(r.evaluations for r in results) + (5 if verify else 0)
        check_claims(model, images, results, pixels=1)
    assert len({r.evaluations for r in results}) > 1  # each image its own stream


def test_untargeted_two_pixels_and_the_budget():
    model = PixelModel(row=1, col=4, band=1, true=2, target=1, gain=10.0, level=1.6, second=(2, 5, 0))
    images = flat_images(3, size=6)
    # loss "ce" (log p(true)) rewards one bright pixel already; the margin would not before both are found
    res = SparseRS(model, pixels=2, max_queries=3000, mode="untargeted", loss="ce", device="cpu").results(
        images, [2] * 3, return_images=True)
    for r in res:
        assert r.success and sorted(map(tuple, r.pixels.tolist())) == [(0, 5), (4, 1)] and r.target is None
    check_claims(model, images, res, pixels=2, targeted=False)
    # one pixel cannot reach it: every target spends the whole budget
    one = SparseRS(model, pixels=1, max_queries=150, device="cpu").results(images[:1], [2])[0]
    assert not one.success and one.targets_tried == (0, 1) and one.evaluations == 2 * 150
    assert one.iterations == 149 and one.iterations_total == 2 * 149


def test_values_are_corners_of_the_value_range():
    phys = ValueRange("physical", (0.5,) * 3, (0.8856,) * 3)
    model = PixelModel(row=2, col=2, gain=40.0, level=0.8)
    images = flat_images(3, size=5, value=0.6)
    res = SparseRS(model, pixels=4, max_queries=2000, value_range=phys, device="cpu").results(images, [0] * 3, [2] * 3,
                                                                                      return_images=True)
    for r in res:
        assert r.success and set(np.unique(r.values)) <= {0.5, 0.8856}
    check_claims(model, images, res, pixels=4, low=0.5, high=0.8856)


def test_batching_does_not_change_any_search_and_the_convnet_runs_locally():
    x, model, labels = bright_pixel_case(4)

    def run(**kw):
        atk = SparseRS(model, max_queries=300, seed=1, device="cpu", **kw)
        res = atk.results(x, labels)
        return atk.last_evaluator, [(r.success, r.target, r.evaluations, r.pixels.tolist(), r.values.tolist())
                                    for r in res]

    name, base = run(chunk_size=64, batch_images=4)
    assert name == "LocalConvNetEvaluator"
    assert run(chunk_size=3, batch_images=1)[1] == base
    assert run(chunk_size=5, batch_images=3)[1] == base
    assert len({b[2] for b in base}) > 1  # searches of different lengths were interleaved


def test_bad_settings_are_refused():
    model = PixelModel()
    for kwargs, what in (({"pixels": 0}, "pixels"), ({"max_queries": 0}, "query budget"),
                         ({"alpha_init": 0.0}, "alpha_init"), ({"loss": "hinge"}, "loss"),
                         ({"loss": "margin"}, "targeted"), ({"mode": "sideways"}, "mode")):
        with pytest.raises(OptionError, match=what):
            SparseRS(model, device="cpu", **kwargs)
    with pytest.raises(OptionError, match="more than the image"):
        SparseRS(model, pixels=200, device="cpu").results(flat_images(1), [0])
