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
    net = bounds.compile_network(model, float32_convolutions=False)
    clean = bounds.clean_pass(net, image)
    rows, cols = rng.integers(0, size, 20), rng.integers(0, size, 20)
    values = rng.uniform(0, 1, (20, 3))
    got = bounds.point_logits(net, clean, rows, cols, values).numpy()
    x = torch.from_numpy(np.repeat(image[None], 20, axis=0))
    x[np.arange(20), :, rows, cols] = torch.from_numpy(values)
    with torch.no_grad():
        want = model(x)[0].numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)
    # with float32 convolutions (the default) the zero-width bounds hold the logits; their width is the
    # rounding margins carried through the layers (measured: 3e-4 of the random ConvNet's logits, 1e-3 of
    # the ResNet's, 2.3e-2 of the d4-convnet's, whose logits near 10^4 come from heavy cancellation)
    net32 = bounds.compile_network(model)
    win = bounds.propagate(net32, bounds.clean_pass(net32, image), rows, cols, values, values)
    lo, up = (t.numpy() for t in bounds.row_bounds(net32, clean, win, torch.eye(3, dtype=torch.float64)))
    assert np.all(lo <= want) and np.all(want <= up) and np.all(up - lo < 3e-2 * (1 + np.abs(want)))


def _window_samples(win: bounds.Window, e: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """Activations inside a window's bounds: c(e) + s r(e) for box coordinates e (E,) and signs s in
    {-1, 1} (P, C, n, m) — the lower or upper function at each cell."""
    c = win.c[:, 0].numpy() + np.einsum("j,pjchw->pchw", e, win.c[:, 1:].numpy())
    r = win.r[:, 0].numpy() + np.einsum("j,pjchw->pchw", e, win.r[:, 1:].numpy())
    return c + signs * r


@pytest.mark.parametrize("margin", [True, False])
def test_a_float32_convolution_holds_every_exact_output_only_with_its_rounding_margin(margin, monkeypatch):
    """A convolution with heavy cancellation (inputs of size 10^4, outputs near 0) bounded in float32:
    for inputs anywhere in the window's bounds, the exact (float64) output lies in the float32 window
    — and without the rounding margin it does not (float32 loses about 10^-3 here, the radius is 10^-9)."""
    rng = np.random.default_rng(3)
    p, e, ch, size = 2, 3, 16, 6
    weight = torch.from_numpy(rng.normal(0, 1, (4, ch, 3, 3)))
    op = bounds.Conv(weight, torch.from_numpy(rng.normal(0, 1, 4)), 1, 1)
    op.float32 = bounds.Float32Weights.of(weight)
    if not margin:
        monkeypatch.setattr(bounds, "_conv_rounding", lambda op, abs_sum: torch.zeros(()))
    c = rng.normal(0, 1e4, (p, e + 1, ch, size, size))
    r = np.zeros_like(c)
    r[:, 0] = 1e-9
    r[:, 1:] = rng.uniform(-1, 1, (p, e, ch, size, size)) * 1e-9 / (2 * e)  # r(e) > 0 on the box
    win = bounds.Window(torch.from_numpy(c), torch.from_numpy(r), torch.zeros(p, dtype=torch.long),
                        torch.zeros(p, dtype=torch.long))
    out = bounds._conv_window(op, win, torch.zeros(ch, size, size, dtype=torch.float64))
    held = []
    for _ in range(20):
        point = rng.uniform(-1, 1, e)
        a = torch.from_numpy(_window_samples(win, point, rng.choice([-1.0, 1.0], (p, ch, size, size))))
        exact = torch.nn.functional.conv2d(a, weight, op.bias, padding=1).numpy()  # float64: exact to ~1e-12
        lo, up = (_window_samples(out, point, np.full(exact.shape, s)) for s in (-1.0, 1.0))
        held.append(np.all(lo <= exact) and np.all(exact <= up))
    assert all(held) if margin else not any(held)



@pytest.mark.parametrize("margin", [True, False])
def test_the_joint_second_convolution_holds_in_float32_only_with_its_rounding_margin(margin, monkeypatch):
    """The first block relaxed jointly and the second convolution by its convex parts (float32), on a
    ConvNet whose first convolution is scaled by 10^3 (activations near 10^3) and boxes 10^-6 wide: the
    exact (float64) second-convolution outputs at sampled values lie in its window — and without the
    rounding margins they do not (float32 loses more than the box moves them)."""
    model = random_network(4, "convnet", SIZE)
    with torch.no_grad():
        model.features[0].weight.mul_(1e3)
    net = bounds.compile_network(model)
    assert isinstance(net.ops[3], bounds.Conv) and bounds.JOINT_SECOND
    if not margin:
        monkeypatch.setattr(bounds, "_conv_rounding", lambda op, abs_sum: torch.zeros(()))
    rng = np.random.default_rng(4)
    image = rng.uniform(0, 1, (3, SIZE, SIZE))
    clean = bounds.clean_pass(net, image)
    held = []
    for row, col in [(0, 0), (3, 5), (7, 2), (4, 4)]:
        low = rng.uniform(0, 1, (1, 3))
        high = low + 1e-6
        win = bounds._propagate(net.ops[:4], bounds.input_window(np.array([row]), np.array([col]), low, high),
                                clean, top_level=True)
        values = np.concatenate([low + rng.uniform(0, 1, (200, 3)) * (high - low),
                                 np.array(np.meshgrid(*zip(low[0], high[0]), indexing="ij")).reshape(3, -1).T])
        x = torch.from_numpy(np.repeat(image[None], len(values), axis=0))
        x[:, :, row, col] = torch.from_numpy(values)
        with torch.no_grad():
            exact = model.features[:6](x).numpy()  # conv, BN, ReLU, max-pool, conv, BN: float64
        n, m = win.size
        top, left = int(win.top[0]), int(win.left[0])
        exact = exact[:, :, top: top + n, left: left + m]
        e = (values - (low + high) / 2) / ((high - low) / 2)  # box coordinates of every sample
        lo = np.einsum("ve,echw->vchw", e, (win.c - win.r)[0, 1:].numpy()) + (win.c - win.r)[0, 0].numpy()
        up = np.einsum("ve,echw->vchw", e, (win.c + win.r)[0, 1:].numpy()) + (win.c + win.r)[0, 0].numpy()
        held.append(bool(np.all(lo <= exact) and np.all(exact <= up)))
    assert all(held) if margin else not all(held)



@pytest.mark.parametrize("precision", ["bf16", "tf32", "matmul high"])
def test_reduced_precision_float32_convolutions_fall_back_to_float64(precision):
    """A global setting that lets float32 convolutions run in bfloat16 or TF32 breaks the rounding bound:
    the bounds then convolve in float64 (equal to a network compiled without float32 convolutions)."""
    model = random_network(5, "convnet", SIZE)
    image = np.random.default_rng(5).uniform(0, 1, (3, SIZE, SIZE))
    args = (np.array([2, 6]), np.array([3, 1]), np.full((2, 3), 0.2), np.full((2, 3), 0.7))
    nets = [bounds.compile_network(model, float32_convolutions=f) for f in (True, False)]
    mkldnn = torch.backends.mkldnn
    before = mkldnn.conv.fp32_precision, torch.get_float32_matmul_precision(), mkldnn.matmul.fp32_precision
    try:
        if precision == "matmul high":  # TF32 for float32 matrix products (im2col convolutions use them)
            torch.set_float32_matmul_precision("high")
        else:
            mkldnn.conv.fp32_precision = precision
        assert not bounds._float32_is_ieee()
        fallback, float64 = (bounds.propagate(net, bounds.clean_pass(net, image), *args) for net in nets)
    finally:
        torch.set_float32_matmul_precision(before[1])
        mkldnn.conv.fp32_precision, mkldnn.matmul.fp32_precision = before[0], before[2]
    assert bounds._float32_is_ieee()
    assert torch.equal(fallback.c, float64.c) and torch.equal(fallback.r, float64.r)
    default = bounds.propagate(nets[0], bounds.clean_pass(nets[0], image), *args)
    assert not torch.equal(default.r, float64.r)  # the float32 path, with its margins, when allowed


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
    or backward, breaks one or the other). Convolutions in float64: the closing-in is checked below
    float32's rounding margins, which this random network's large logits (10^3) would exceed."""
    model = random_network(seed, "d4", D4_SIZE)
    net = bounds.compile_network(model, float32_convolutions=False)
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
