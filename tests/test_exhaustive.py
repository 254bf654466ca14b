"""The exhaustive one-pixel search: its maps against a plain loop over every position and
value, its kept flip against a plain forward pass, value sets and ranges."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from deepadversaries.attacks.de import OnePixelDE
from deepadversaries.attacks.values import ValueRange, input_range
from deepadversaries.errors import OptionError
from deepadversaries.attacks.exhaustive import ExhaustiveSearch, value_set

from attack_support import PixelModel, bright_pixel_case, check_claims, plain_probabilities


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def plain_maps(model, image, label, targets, values, rule="paper"):
    """Every position x value by one plain forward pass each: (T, H, W) best p(target) and
    flips, (H, W) lowest p(true) and untargeted flips."""
    _, h, w = image.shape
    best = np.zeros((len(targets), h, w))
    flips = np.zeros((len(targets), h, w), bool)
    low = np.ones((h, w))
    flips_u = np.zeros((h, w), bool)
    for r in range(h):
        for c in range(w):
            for v in values:
                p = plain_probabilities(model, image, [((r, c), v)])
                for k, t in enumerate(targets):
                    best[k, r, c] = max(best[k, r, c], p[t])
                    flips[k, r, c] |= (p[t] > 0.5) if rule == "paper" else int(np.argmax(p)) == t
                low[r, c] = min(low[r, c], p[label])
                flips_u[r, c] |= (p[label] < 0.05) if rule == "paper" else int(np.argmax(p)) != label
    return best, flips, low, flips_u


CORNERS = [np.array(v, dtype=np.float64) for v in itertools.product((0.0, 1.0), repeat=3)]


@pytest.mark.parametrize("rule", ["paper", "top-class"])
def test_maps_equal_a_plain_loop_over_every_position_and_value(rule):
    model = PixelModel(row=2, col=3, band=1, true=0, target=2, gain=8.0, level=0.75)
    rng = np.random.default_rng(0)
    images = (0.3 + 0.4 * rng.random((2, 3, 5, 6))).astype(np.float32).astype(np.float64)
    extra = np.array([[0.2, 0.95, 0.1], [0.5, 0.5, 0.5]])
    atk = ExhaustiveSearch(model, values=extra, success=rule, device="cpu", dtype=torch.float64, chunk_size=17)
    results = atk.results(images, [0, 0], return_images=True)
    values = CORNERS + list(extra)
    np.testing.assert_array_equal(atk.values, np.array(values))
    for res, image in zip(results, images):
        best, flips, low, flips_u = plain_maps(model, image, 0, [1, 2], values, rule)
        assert res.map_targets == (1, 2) and res.evaluations == 5 * 6 * len(values)
        np.testing.assert_allclose(res.best_target_prob, best, rtol=0, atol=1e-14)
        np.testing.assert_allclose(res.min_true_prob, low, rtol=0, atol=1e-14)
        np.testing.assert_array_equal(res.flips, flips)
        np.testing.assert_array_equal(res.flips_untargeted, flips_u)
        # the known answer: only band 1 at (2, 3) flips to class 2, and nothing to class 1
        assert not res.flips[0].any() and np.flatnonzero(res.flips[1]).tolist() == [2 * 6 + 3]
        # the kept flip: target 1 cannot flip, so target 2, at its most confident value, re-checked
        assert res.success and res.target == 2 and res.targets_tried == (1, 2)
        assert res.pixels.tolist() == [[3, 2]] and res.values[0, 1] == 1.0
        assert res.p_target == pytest.approx(best[1, 2, 3], abs=1e-14)
        np.testing.assert_array_equal(res.best_target_value[1, 2, 3], res.values[0])
        check_claims(model, images, [res], pixels=1)
        assert res.flip_positions() == 1 and res.flip_positions(2) == 1 and res.flip_positions(1) == 0


def test_untargeted_mode_keeps_the_lowest_true_probability():
    model = PixelModel(row=1, col=1, band=2, true=1, target=0, gain=40.0, level=0.7)
    image = np.full((1, 3, 4, 4), 0.3)
    res = ExhaustiveSearch(model, mode="untargeted", device="cpu", dtype=torch.float64).results(image, [1])[0]
    _, _, low, flips_u = plain_maps(model, image[0], 1, [], CORNERS)
    assert res.success and res.target is None and res.targets_tried == ()
    assert res.pixels.tolist() == [[1, 1]] and res.values[0, 2] == 1.0
    assert res.probabilities[1] == pytest.approx(low.min(), abs=1e-14) and res.probabilities[1] < 0.05
    np.testing.assert_array_equal(res.flips_untargeted, flips_u)
    assert res.flip_positions() == 1 and res.map_targets == (0, 2)


def test_no_flip_reports_the_closest_change_and_counts_every_query():
    model = PixelModel(row=1, col=1, gain=2.0)  # p(target) stays below 0.5 for every value
    image = np.full((1, 3, 3, 3), 0.3)
    res = ExhaustiveSearch(model, device="cpu", dtype=torch.float64).results(image, [0], targets=[[2, 1]])[0]
    assert not res.success and res.evaluations == 9 * 8 and res.targets_tried == (2, 1)
    assert res.target == 2 and res.pixels.tolist() == [[1, 1]]
    assert res.p_target == pytest.approx(res.best_target_prob.max(), abs=1e-15) and res.p_target < 0.5
    assert not res.flips.any() and res.flip_positions() == 0


def test_convnet_map_through_the_local_evaluator_is_the_known_region():
    # the hand-built ConvNet: elliptical only with a bright g pixel in rows/columns 16..31
    x, model, labels = bright_pixel_case(3)
    i = int(np.flatnonzero(labels != 1)[0])
    values = np.array([[1.0, 0.5, 0.5]])  # one value: a bright g pixel (fast)
    atk = ExhaustiveSearch(model, values=values, corners=False, device="cpu")
    res = atk.results(x[i:i + 1], labels[i:i + 1], targets=[[1]], return_images=True)[0]
    assert atk.last_evaluator == "LocalConvNetEvaluator" and res.evaluations == 100 * 100
    region = np.zeros((100, 100), bool)
    region[16:32, 16:32] = True
    np.testing.assert_array_equal(res.flips[0], region)
    rng = np.random.default_rng(0)
    for r, c in list(zip(rng.integers(0, 100, 12), rng.integers(0, 100, 12))) + [(16, 16), (31, 31), (15, 20),
                                                                                  (32, 20), (0, 0), (99, 99)]:
        p = plain_probabilities(model, x[i], [((r, c), values[0])])
        assert res.best_target_prob[0, r, c] == pytest.approx(p[1], abs=2e-6)
    assert res.success and res.target == 1 and region[res.pixels[0, 1], res.pixels[0, 0]]
    check_claims(model, x[i:i + 1], [res], pixels=1)


def test_de_finds_an_interior_flip_that_the_corner_search_misses():
    # class 2's logit is 8 tent(v) - 2 of pixel (2, 2), tent(v) = relu(v) - 2 relu(v - 1/2): only values
    # in about (0.37, 0.63) flip the image, so the corners of [0, 1] (and any corner search) never do
    from certify_support import tent_pixel_model

    model = tent_pixel_model(size=5, row=2, col=2)
    images = np.zeros((2, 1, 5, 5), np.float32)
    ex = ExhaustiveSearch(model, value_range=input_range(1), device="cpu").results(images, [0, 0], targets=[2, 2])
    assert not any(e.success for e in ex) and not any(e.flips.any() for e in ex)
    de = OnePixelDE(model, pop_size=60, max_iter=20, value_range=input_range(1), device="cpu").results(
        images, [0, 0], targets=[2, 2], keys=[0, 1])
    assert all(d.success for d in de)
    for d in de:
        assert d.pixels[0].tolist() == [2, 2] and 0.36 < d.values[0, 0] < 0.64
        assert plain_probabilities(model, images[0], [((2, 2), d.values[0])])[2] > 0.5


def test_verify_map_confirms_every_flagged_position():
    model = PixelModel(row=2, col=3, band=1, gain=8.0, level=0.75)
    image = (0.3 + 0.4 * np.random.default_rng(0).random((1, 3, 5, 6))).astype(np.float32)
    plain = ExhaustiveSearch(model, device="cpu").results(image, [0])[0]
    checked = ExhaustiveSearch(model, device="cpu", verify_map=True).results(image, [0])[0]
    assert checked.map_corrections == 0
    np.testing.assert_array_equal(checked.flips, plain.flips)
    np.testing.assert_allclose(checked.best_target_prob, plain.best_target_prob, atol=1e-6)


def test_value_sets_honour_the_range():
    phys = ValueRange("physical", (0.5,) * 3, (0.8856,) * 3)
    corners = value_set(phys)
    assert corners.shape == (8, 3) and set(np.unique(corners)) == {0.5, 0.8856}
    both = value_set(phys, [[0.6, 0.7, 0.8], [0.5, 0.5, 0.5]])  # a repeated corner is dropped
    assert both.shape == (9, 3) and both[-1].tolist() == [0.6, 0.7, 0.8]
    with pytest.raises(OptionError, match="outside the physical value range"):
        value_set(phys, [[0.9, 0.6, 0.6]])
    with pytest.raises(OptionError, match="outside the input value range"):
        ExhaustiveSearch(PixelModel(), values=[[1.5, 0.0, 0.0]], device="cpu")
    with pytest.raises(OptionError, match="one pixel"):
        ExhaustiveSearch(PixelModel(), pixels=2, device="cpu")
    with pytest.raises(OptionError, match="rows of 3"):
        value_set(input_range(), [[0.1, 0.2]])
    with pytest.raises(OptionError, match="empty"):
        value_set(input_range(), None, corners=False)
    model = PixelModel(row=1, col=1, gain=40.0, level=0.8)  # needs v > 0.833
    image = np.full((1, 3, 3, 3), 0.6, np.float32)
    res = ExhaustiveSearch(model, value_range=phys, device="cpu").results(image, [0], targets=[2],
                                                                      return_images=True)[0]
    assert res.success and res.values[0, 0] == np.float64(0.8856)
    np.testing.assert_array_equal(res.values_tried, corners)
    check_claims(model, image, [res], pixels=1, low=0.5, high=0.8856)
