"""The sound one-pixel bounds (deepadversaries.certify.bounds) against sampled values of plain float64 models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp
from torch import nn

from certify_support import random_network
from deepadversaries.certify import bounds
from deepadversaries.errors import OptionError
from deepadversaries.models.equivariant import transform
from deepadversaries.models.networks import GalaxyClassifier

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 8
#: the d4-convnet's test images: 20 -> 10 -> 5 -> 2, so its last symmetric pool is the 3 x 3 one of an odd
#: map and the invariant pooling turns a 2 x 2 map (where the eight orientations of a window lie apart)
D4_SIZE = 20
N_SAMPLES = 10_000


def _logits(model: nn.Module, image: np.ndarray, row: int, col: int, values: np.ndarray) -> np.ndarray:
    """(V, K) logits of a plain float64 forward pass with pixel (row, col) set to each value (V, B)."""
    x = torch.from_numpy(np.repeat(image[None], len(values), axis=0))
    x[:, :, row, col] = torch.from_numpy(values)
    with torch.no_grad():
        return model(x)[0].numpy()


def _margin_reference(model: nn.Module, image: np.ndarray, row: int, col: int, values: np.ndarray, label: int,
                      targets: list, rule: str, z: np.ndarray | None = None) -> np.ndarray:
    """min over targets of minus the success score, per value (V,), with a plain float64 forward pass
    (or its logits ``z``) and scipy's logsumexp (the test's own reading of the success rules)."""
    if z is None:
        z = _logits(model, image, row, col, values)
    scores = []
    for t in targets:
        if t is None:
            others = np.delete(z, label, axis=1) - z[:, [label]]
            s = logsumexp(others, axis=1) - np.log(19.0) if rule == "paper" else others.max(axis=1)
        else:
            others = np.delete(z, t, axis=1)
            s = z[:, t] - (logsumexp(others, axis=1) if rule == "paper" else others.max(axis=1))
        scores.append(s)
    return -np.max(np.stack(scores, 1), axis=1)


def _random_problem(seed, kind, lo, width, rule, untargeted, size=SIZE):
    """A random network and image, a value box at one pixel and the target rules of the clean prediction."""
    model = random_network(seed, kind, size)
    rng = np.random.default_rng(seed)
    image = rng.uniform(0, 1, (3, size, size))
    low = np.asarray(lo)
    high = np.minimum(low + np.asarray(width), 1.0)
    net = bounds.compile_network(model)
    clean = bounds.clean_pass(net, image)
    label = int(torch.argmax(clean.logits))
    targets = [t for t in range(3) if t != label] + ([None] if untargeted else [])
    rules = bounds.target_rules(label, targets, rule, 3, clean.logits.numpy())
    return model, rng, image, low, high, net, clean, label, targets, rules


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), kind=st.sampled_from(["convnet", "resnet", "d4"]),
       row=st.integers(0, D4_SIZE - 1), col=st.integers(0, D4_SIZE - 1),
       lo=st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3),
       width=st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3),
       rule=st.sampled_from(["paper", "top-class"]), untargeted=st.booleans())
def test_the_certified_margin_is_never_above_any_sampled_value(seed, kind, row, col, lo, width, rule, untargeted):
    size = D4_SIZE if kind == "d4" else SIZE
    row, col = row % size, col % size
    model, rng, image, low, high, net, clean, label, targets, rules = _random_problem(
        seed, kind, lo, width, rule, untargeted, size)
    win = bounds.propagate(net, clean, np.array([row]), np.array([col]), low[None], high[None])
    lower, upper = bounds.row_bounds(net, clean, win, bounds.stacked_rows(rules))
    certified_margin = -bounds.success_upper_bounds(upper, rules).max()
    corners = np.array(np.meshgrid(*zip(low, high), indexing="ij")).reshape(3, -1).T
    values = np.concatenate([low + rng.uniform(0, 1, (N_SAMPLES, 3)) * (high - low), corners])
    z = _logits(model, image, row, col, values)
    sampled = _margin_reference(model, image, row, col, values, label, targets, rule, z)
    assert certified_margin <= sampled.min() + 1e-9
    # every logit row's bounds hold at every sample, too
    eye = torch.eye(3, dtype=torch.float64)
    lo_l, up_l = bounds.row_bounds(net, clean, win, eye)
    assert np.all(z >= lo_l.numpy() - 1e-9) and np.all(z <= up_l.numpy() + 1e-9)


@settings(max_examples=16, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), kind=st.sampled_from(["convnet", "resnet"]),
       row=st.integers(0, SIZE - 1), col=st.integers(0, SIZE - 1),
       lo=st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3),
       width=st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3),
       rule=st.sampled_from(["paper", "top-class"]), untargeted=st.booleans(), refine=st.booleans(),
       joint=st.booleans())
def test_the_backward_bound_is_sound_and_never_looser_than_the_forward_bound(seed, kind, row, col, lo, width, rule,
                                                                            untargeted, refine, joint):
    before = bounds.JOINT_SECOND
    bounds.JOINT_SECOND = joint  # the second convolution bounded by its convex parts, or not
    try:
        _check_backward(seed, kind, row, col, lo, width, rule, untargeted, refine, joint)
    finally:
        bounds.JOINT_SECOND = before


def _check_backward(seed, kind, row, col, lo, width, rule, untargeted, refine, joint):
    size = D4_SIZE if kind == "d4" else SIZE
    row, col = row % size, col % size
    model, rng, image, low, high, net, clean, label, targets, rules = _random_problem(
        seed, kind, lo, width, rule, untargeted, size)
    rows = torch.cat([bounds.stacked_rows(rules), torch.eye(3, dtype=torch.float64)])
    args = (net, clean, np.array([row]), np.array([col]), low[None], high[None], rows)
    lo_f, up_f = bounds.box_bounds(*args, backward=False)
    lo_b, up_b = bounds.box_bounds(*args, refine=10_000 if refine else 0, keep_forward=False)
    slack = 1e-9 * (1 + up_f.abs())
    if not joint:  # with the convex-parts step the forward bounds use bounds the backward pass does not
        assert torch.all(up_b <= up_f + slack) and torch.all(lo_b >= lo_f - slack)
    corners = np.array(np.meshgrid(*zip(low, high), indexing="ij")).reshape(3, -1).T
    values = np.concatenate([low + rng.uniform(0, 1, (N_SAMPLES, 3)) * (high - low), corners])
    x = torch.from_numpy(np.repeat(image[None], len(values), axis=0))
    x[:, :, row, col] = torch.from_numpy(values)
    with torch.no_grad():
        z = model(x)[0].numpy()
    f = z @ rows.numpy().T  # (V, R): every row at every sample
    assert np.all(f >= lo_b.numpy() - 1e-9) and np.all(f <= up_b.numpy() + 1e-9)
    n_rules = sum(len(r.rows) for r in rules)
    certified_margin = -bounds.success_upper_bounds(up_b[:, :n_rules], rules).max()
    sampled = _margin_reference(model, image, row, col, values, label, targets, rule)
    assert certified_margin <= sampled.min() + 1e-9


def cancelling_network(size: int = 4, row: int = 1, col: int = 2) -> GalaxyClassifier:
    """Logits (1/2, 0, 8 (a - b) - 2) with a = b = relu(h), h = relu(v - 1/2) of pixel (row, col) of a
    1-band image: the class-2 logit is -2 for every v, but a forward relaxation bounds a - b by
    U(h) - L(h) > 0 (the two paths relaxed apart); back-substitution cancels them exactly."""
    first = nn.Conv2d(1, 1, 1)
    second = nn.Conv2d(1, 2, 1)
    with torch.no_grad():
        first.weight.fill_(1.0)
        first.bias.fill_(-0.5)
        second.weight.fill_(1.0)
        second.bias.zero_()
    model = GalaxyClassifier(nn.Sequential(first, nn.ReLU(), second, nn.ReLU()), 2 * size * size, 3)
    feature = row * size + col
    with torch.no_grad():
        model.bottleneck.weight.zero_()
        model.bottleneck.bias.zero_()
        model.bottleneck.weight[0, feature] = 1.0  # a
        model.bottleneck.weight[0, size * size + feature] = -1.0  # b
        model.output.weight.zero_()
        model.output.weight[2, 0] = 8.0
        model.output.bias.copy_(torch.tensor([0.5, 0.0, -2.0]))
    return model.eval()


def test_only_the_backward_pass_proves_the_cancelling_network_safe():
    model = cancelling_network()
    image = np.zeros((1, 4, 4))
    net = bounds.compile_network(model)
    clean = bounds.clean_pass(net, image)
    rules = bounds.target_rules(0, [2], "paper", 3, clean.logits.numpy())
    args = (net, clean, np.array([1]), np.array([2]), np.zeros((1, 1)), np.ones((1, 1)), bounds.stacked_rows(rules))
    _, up_f = bounds.box_bounds(*args, backward=False, lower=False)
    _, up_b = bounds.box_bounds(*args, lower=False)
    forward = bounds.success_upper_bounds(up_f, rules).max()
    backward = bounds.success_upper_bounds(up_b, rules).max()
    assert forward > 0  # the forward bound cannot prove the box
    assert backward < -bounds.CERTIFY_TOLERANCE  # the backward bound does, in one box
    # and the proof is right: no value on a dense grid flips the pixel
    grid = np.linspace(0, 1, 2001)
    x = torch.zeros((len(grid), 1, 4, 4))
    x[:, 0, 1, 2] = torch.from_numpy(grid.astype(np.float32))
    with torch.no_grad():
        p = torch.softmax(model(x)[0].double(), 1).numpy()
    assert p[:, 2].max() < 0.5
    scores = bounds.success_scores(model(x)[0].detach().double().numpy(), 0, rules, "paper")
    assert scores.max() <= backward + 1e-6


@pytest.mark.parametrize("kind, size", [("convnet", SIZE), ("resnet", SIZE), ("d4", D4_SIZE), ("d4", 24)])
def test_a_box_of_zero_width_gives_the_models_logits(kind, size):
    model = random_network(3, kind, size)
    rng = np.random.default_rng(1)
    image = rng.uniform(0, 1, (3, size, size))
    net = bounds.compile_network(model)
    clean = bounds.clean_pass(net, image)
    rows, cols = rng.integers(0, size, 20), rng.integers(0, size, 20)
    values = rng.uniform(0, 1, (20, 3))
    got = bounds.point_logits(net, clean, rows, cols, values).numpy()
    x = torch.from_numpy(np.repeat(image[None], 20, axis=0))
    x[np.arange(20), :, rows, cols] = torch.from_numpy(values)
    with torch.no_grad():
        want = model(x)[0].numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)


def test_an_unsupported_layer_is_refused_by_name():
    model = GalaxyClassifier(nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.GELU()), 2 * SIZE * SIZE, 3).eval()
    with pytest.raises(OptionError, match="GELU"):
        bounds.compile_network(model)


def test_a_model_without_the_classifier_layers_is_refused():
    with pytest.raises(OptionError, match="bottleneck"):
        bounds.compile_network(nn.Sequential(nn.Conv2d(3, 2, 3)))


@pytest.mark.parametrize("g", range(8))
def test_a_rectangle_lands_where_the_group_element_moves_it(g):
    side = 7
    for top, left, n, m in [(1, 2, 3, 2), (0, 0, 1, 1), (4, 1, 3, 5), (0, 6, 7, 1)]:
        mask = torch.zeros(side, side, dtype=torch.bool)
        mask[top: top + n, left: left + m] = True
        rows, cols = torch.nonzero(transform(mask, g), as_tuple=True)
        got = bounds._transformed_box(torch.tensor([top]), torch.tensor([left]), n, m, side, g)
        assert (int(got[0]), int(got[1])) == (int(rows.min()), int(cols.min()))


def test_the_d4_convnet_pools_are_resolved_for_its_input_size_and_another_size_is_refused():
    model = random_network(5, "d4", D4_SIZE)
    net = bounds.compile_network(model)
    assert net.input_size == D4_SIZE
    assert [op.kernel for op in net.ops if isinstance(op, bounds.MaxPool)] == [2, 2, 3]
    assert tuple(bounds.clean_pass(net, np.zeros((3, D4_SIZE, D4_SIZE))).last.shape) == (32, 2, 2)
    with pytest.raises(OptionError, match="resolved for 20x20"):
        bounds.clean_pass(net, np.random.default_rng(0).uniform(0, 1, (3, 16, 16)))


@pytest.mark.parametrize("seed", [0])
def test_the_d4_convnet_bounds_hold_and_tighten_on_small_boxes(seed):
    """Narrow boxes (0.002 to 0.05 wide) at positions across a 20 x 20 image: every sampled logit lies
    within the forward bounds and within the backward bounds alone, and both close in on the sampled
    range as the box shrinks (a radius dropped or a window misplaced by the invariant pooling, forward
    or backward, breaks one or the other)."""
    model = random_network(seed, "d4", D4_SIZE)
    net = bounds.compile_network(model)
    rng = np.random.default_rng(seed)
    image = rng.uniform(0, 1, (3, D4_SIZE, D4_SIZE))
    clean = bounds.clean_pass(net, image)
    eye = torch.eye(3, dtype=torch.float64)
    for row, col in [(0, 0), (3, 17), (10, 9), (19, 4), (14, 14)]:
        gaps = []
        for width in (0.05, 0.01, 0.002):
            low = rng.uniform(0, 1 - width, 3)
            high = low + width
            args = (net, clean, np.array([row]), np.array([col]), low[None], high[None], eye)
            corners = np.array(np.meshgrid(*zip(low, high), indexing="ij")).reshape(3, -1).T
            values = np.concatenate([low + rng.uniform(0, 1, (2000, 3)) * (high - low), corners])
            x = torch.from_numpy(np.repeat(image[None], len(values), axis=0))
            x[:, :, row, col] = torch.from_numpy(values)
            with torch.no_grad():
                z = model(x)[0].numpy()
            gap = 0.0
            for backward in (False, True):  # the forward bounds, then the backward ones alone
                lo_l, up_l = bounds.box_bounds(*args, backward=backward, keep_forward=not backward)
                assert np.all(z >= lo_l.numpy() - 1e-9) and np.all(z <= up_l.numpy() + 1e-9)
                gap = max(gap, float(((up_l - lo_l).numpy() - (z.max(0) - z.min(0))).max()))
            gaps.append(gap)
        assert gaps[-1] < 1e-3 * (1 + np.abs(z).max()) and gaps[-1] <= gaps[0]
