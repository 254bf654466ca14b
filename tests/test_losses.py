"""Class weights, the multi-kernel MMD² (SPEC 5), Deep CORAL, the DANN pieces and the method registry,
against plain references (float64 formulas written here, autograd, hand computations)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.spatial.distance import cdist
from sklearn.utils.class_weight import compute_class_weight

from deepadversaries import METHODS
from deepadversaries.adaptation.alignment import alignment_loss
from deepadversaries.adaptation.coral import CORALLoss, coral_distance
from deepadversaries.adaptation.dann import DANNLoss, DomainClassifier, dann_lambda
from deepadversaries.adaptation.measures import ALIGNMENT_MEASURES, alignment_measure, proxy_a_distance
from deepadversaries.adaptation.mmd import MMDLoss, mmd2
from deepadversaries.adaptation.modules import (
    DEFAULT_SIGMAS2, AlignmentLoss, GaussianKernels, GradientReversal, gradient_reversal, pairwise_sq_distances,
)
from deepadversaries.errors import DeepAdvError, OptionError
from deepadversaries.methods import METHOD_SPECS, method_spec
from deepadversaries.training.class_weights import class_weights


def test_class_weights_formula():
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    w = class_weights(labels).numpy()
    np.testing.assert_allclose(w, [10 / (3 * 6), 10 / (3 * 3), 10 / (3 * 1)], rtol=1e-6)
    # scikit-learn's "balanced" weights are the same formula
    np.testing.assert_allclose(w, compute_class_weight("balanced", classes=np.arange(3), y=labels), rtol=1e-6)
    with pytest.raises(DeepAdvError, match="merger"):
        class_weights(np.array([0, 1, 1, 0]))


def test_default_kernel_widths_are_the_published_list():
    assert DEFAULT_SIGMAS2 == (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1, 5, 10, 15, 20, 25, 30, 35, 100,
                               1e3, 1e4, 1e5, 1e6)
    assert GaussianKernels().sigmas2 == pytest.approx(DEFAULT_SIGMAS2)


def test_pairwise_distances_match_scipy():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(9, 6)), rng.normal(size=(7, 6))
    d2 = pairwise_sq_distances(torch.from_numpy(x), torch.from_numpy(y)).numpy()
    np.testing.assert_allclose(d2, cdist(x, y, "sqeuclidean"), rtol=1e-10, atol=1e-12)


def _k(a, b, sigmas2=DEFAULT_SIGMAS2):
    d2 = float(sum((ai - bi) ** 2 for ai, bi in zip(a, b)))
    return sum(math.exp(-d2 / (2.0 * s)) for s in sigmas2)


def _mmd2_loops(x, y, estimator):
    """The estimators written out as plain double loops in float64."""
    n, m = len(x), len(y)
    if estimator == "unbiased":  # paper eq. 2 with the last term k(θ1(i), θ1(j))
        total = 0.0
        for i, j in itertools.product(range(n), range(n)):
            if i != j:
                total += _k(x[i], x[j]) - _k(x[i], y[j]) - _k(y[i], x[j]) + _k(y[i], y[j])
        return total / (n * (n - 1))
    xx = sum(_k(x[i], x[j]) for i in range(n) for j in range(n)) / n**2
    yy = sum(_k(y[i], y[j]) for i in range(m) for j in range(m)) / m**2
    xy = sum(_k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return max(xx + yy - 2 * xy, 0.0)


@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
@pytest.mark.parametrize("scale,shift", [(0.05, 0.0), (0.3, 0.2), (2.0, 1.0)])
def test_mmd2_equals_double_loop(estimator, scale, shift):
    rng = np.random.default_rng(int(scale * 100) + int(shift * 10))
    x = rng.normal(0.0, scale, size=(7, 5))
    y = rng.normal(shift, scale, size=(7, 5))
    expected = _mmd2_loops(x.tolist(), y.tolist(), estimator)
    got = mmd2(torch.from_numpy(x), torch.from_numpy(y), estimator=estimator).item()
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-12)
    # float32 latents (as in training) stay close to the float64 reference
    got32 = mmd2(torch.from_numpy(x).float(), torch.from_numpy(y).float(), estimator=estimator).item()
    assert got32 == pytest.approx(expected, rel=1e-3, abs=1e-5)


def test_mmd2_near_zero_for_one_distribution_and_positive_for_shifted():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(256, 16, generator=gen)
    b = torch.randn(256, 16, generator=gen)
    shifted = torch.randn(256, 16, generator=gen) + 0.5
    for estimator, tolerance in (("unbiased", 0.05), ("biased", 0.25)):  # the biased one has a O(1/N) bias
        same = mmd2(a, b, estimator=estimator).item()
        diff = mmd2(a, shifted, estimator=estimator).item()
        assert diff > 0.1, (estimator, diff)
        assert abs(same) < tolerance * diff, (estimator, same, diff)
    # unbiased: the estimate scatters around 0 for one distribution, so it is sometimes negative
    values = [mmd2(torch.randn(64, 4, generator=gen), torch.randn(64, 4, generator=gen)).item() for _ in range(20)]
    assert min(values) < 0 < max(values)
    assert abs(np.mean(values)) < 3 * np.std(values) / np.sqrt(len(values))


def test_biased_mmd2_is_never_negative():
    gen = torch.Generator().manual_seed(1)
    for _ in range(30):
        n = int(torch.randint(2, 40, (1,), generator=gen))
        x = torch.randn(n, 8, generator=gen) * float(torch.rand(1, generator=gen) * 3)
        y = x + 1e-4 * torch.randn(n, 8, generator=gen)
        assert mmd2(x, y, estimator="biased").item() >= 0.0
        assert mmd2(x.double(), x.double(), estimator="biased").item() == pytest.approx(0.0, abs=1e-9)
        assert 0.0 <= MMDLoss(estimator="biased")(x, x.clone()).item() < 1e-6  # float64 inside the module


def test_mmd_loss_module_matches_function_and_has_gradients():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(32, 256, generator=gen, requires_grad=True)
    y = (torch.randn(32, 256, generator=gen) * 1.5 + 0.3)
    loss_fn = MMDLoss(GaussianKernels(DEFAULT_SIGMAS2), estimator="unbiased")
    value = loss_fn(x, y)
    assert value.item() == pytest.approx(mmd2(x.detach().double(), y.double()).item(), rel=1e-6)
    value.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # under bf16 autocast the MMD is still computed in float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v16 = loss_fn(x.detach().bfloat16(), y.bfloat16())
    assert v16.dtype == torch.float32 and v16.item() == pytest.approx(value.item(), rel=0.05)
    with pytest.raises(ValueError):
        MMDLoss(estimator="median")
    with pytest.raises(ValueError, match="equal size"):
        loss_fn(x[:5], y[:6])


def test_mmd_errors_are_option_errors():
    with pytest.raises(OptionError, match="unknown MMD estimator 'median'; choose one of unbiased, biased"):
        MMDLoss(estimator="median")
    with pytest.raises(OptionError, match="equal size"):
        mmd2(torch.zeros(5, 3), torch.zeros(6, 3))
    with pytest.raises(OptionError, match="same D"):
        mmd2(torch.zeros(5, 3), torch.zeros(5, 4))
    with pytest.raises(OptionError, match="positive"):
        GaussianKernels([1.0, -2.0])


# ----------------------------------------------------------------------------------------------
# Deep CORAL
# ----------------------------------------------------------------------------------------------
def _coral_loops(xs, xt):
    """Sun & Saenko's CORAL loss written out with loops in float64 (Python floats)."""
    def cov(rows):
        n, d = len(rows), len(rows[0])
        mean = [sum(r[i] for r in rows) / n for i in range(d)]
        return [[sum((r[i] - mean[i]) * (r[j] - mean[j]) for r in rows) / (n - 1) for j in range(d)]
                for i in range(d)]
    cs, ct = cov(xs), cov(xt)
    d = len(cs)
    return sum((cs[i][j] - ct[i][j]) ** 2 for i in range(d) for j in range(d)) / (4.0 * d * d)


@pytest.mark.parametrize("n_s,n_t,d,scale", [(6, 6, 3, 1.0), (9, 5, 4, 0.2), (12, 20, 5, 3.0)])
def test_coral_equals_the_formula(n_s, n_t, d, scale):
    rng = np.random.default_rng(n_s * 100 + d)
    xs = rng.normal(0.3, scale, size=(n_s, d))
    xt = rng.normal(-0.1, 1.7 * scale, size=(n_t, d)) @ rng.normal(size=(d, d))
    expected = _coral_loops(xs.tolist(), xt.tolist())
    assert coral_distance(torch.from_numpy(xs), torch.from_numpy(xt)).item() == pytest.approx(expected, rel=1e-12)
    # the module computes in float64 even for float32 input, and returns float32
    got = CORALLoss()(torch.from_numpy(xs).float(), torch.from_numpy(xt).float())
    assert got.dtype == torch.float32 and got.item() == pytest.approx(expected, rel=1e-5)


def test_coral_hand_case_in_one_dimension():
    # d = 1: the loss is (var_s - var_t)^2 / 4, with var(0, 2) = 2 and var(0, 1, 2) = 1
    xs, xt = torch.tensor([[0.0], [2.0]]), torch.tensor([[0.0], [1.0], [2.0]])
    assert coral_distance(xs, xt).item() == pytest.approx((2.0 - 1.0) ** 2 / 4)


def test_coral_gradient_is_the_analytic_one_of_sun_and_saenko():
    rng = np.random.default_rng(3)
    n_s, n_t, d = 7, 9, 4
    xs, xt = rng.normal(size=(n_s, d)), rng.normal(1.0, 2.0, size=(n_t, d))
    ts, tt = torch.tensor(xs, requires_grad=True), torch.tensor(xt, requires_grad=True)
    coral_distance(ts, tt).backward()
    cs, ct = np.cov(xs, rowvar=False), np.cov(xt, rowvar=False)
    # dL/dD_S = (D_S - 1 mean_S)(C_S - C_T) / (d^2 (n_S - 1)); the target's with the opposite sign
    grad_s = (xs - xs.mean(0)) @ (cs - ct) / (d * d * (n_s - 1))
    grad_t = -(xt - xt.mean(0)) @ (cs - ct) / (d * d * (n_t - 1))
    np.testing.assert_allclose(ts.grad.numpy(), grad_s, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(tt.grad.numpy(), grad_t, rtol=1e-10, atol=1e-14)
    assert torch.autograd.gradcheck(lambda a, b: CORALLoss()(a, b),
                                    (ts.detach().requires_grad_(), tt.detach().requires_grad_()))


def test_coral_under_autocast_and_bad_input():
    gen = torch.Generator().manual_seed(4)
    x, y = torch.randn(32, 16, generator=gen), torch.randn(24, 16, generator=gen) * 2
    exact = coral_distance(x.double(), y.double()).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v = CORALLoss()(x.bfloat16(), y.bfloat16())
    assert v.dtype == torch.float32 and v.item() == pytest.approx(exact, rel=0.05)
    with pytest.raises(OptionError, match="at least 2"):
        CORALLoss()(x[:1], y)
    with pytest.raises(OptionError, match="same width"):
        CORALLoss()(x, y[:, :8])


# ----------------------------------------------------------------------------------------------
# DANN: gradient reversal, schedule, domain loss
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("coeff", [0.0, 0.3, 1.0, 2.5])
def test_gradient_reversal_is_identity_forward_and_flips_and_scales_backward(coeff):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(5, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    y = gradient_reversal(x, coeff)
    assert torch.equal(y, x)
    w = torch.randn(5, 4, dtype=torch.float64, generator=gen)
    (y * w).sum().backward()
    assert torch.equal(x.grad, -coeff * w)
    # through a nonlinear function: the gradient is -coeff times the one without the layer
    layer = GradientReversal()
    layer.coeff = coeff
    def f(t):
        return (torch.tanh(t) ** 2 * w).sum()

    (plain,) = torch.autograd.grad(f(x), x)
    (reversed_,) = torch.autograd.grad(f(layer(x)), x)
    torch.testing.assert_close(reversed_, -coeff * plain, rtol=0, atol=0)


def test_dann_lambda_schedule():
    # 2 / (1 + exp(-g p)) - 1 = tanh(g p / 2): an independent closed form
    for p in np.linspace(0, 1, 11):
        assert dann_lambda(p) == pytest.approx(math.tanh(5.0 * p), abs=1e-15)
        assert dann_lambda(p, gamma=4.0) == pytest.approx(math.tanh(2.0 * p), abs=1e-15)
    assert dann_lambda(0.0) == 0.0
    assert dann_lambda(1.0) == pytest.approx(0.9999092042625951, rel=1e-12)
    for bad in (-0.01, 1.01, float("nan")):
        with pytest.raises(OptionError, match=r"progress must be in \[0, 1\]"):
            dann_lambda(bad)


def _softplus(v):
    return np.log1p(np.exp(v))


def test_dann_loss_value_accuracy_and_reversed_gradient():
    torch.manual_seed(6)
    disc = DomainClassifier(latent_dim=8, hidden=16).double()
    dann = DANNLoss(disc)
    dann.set_progress(0.3)
    lam = math.tanh(1.5)
    gen = torch.Generator().manual_seed(6)
    zs = torch.randn(5, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    zt = (torch.randn(7, 8, dtype=torch.float64, generator=gen) + 0.5).requires_grad_()
    loss, acc = dann(zs, zt)
    with torch.no_grad():
        hs, ht = disc(zs).numpy(), disc(zt).numpy()
    # -log(1 - sigmoid(h)) = softplus(h) for the source (label 0), -log sigmoid(h) = softplus(-h) for the target
    expected = _softplus(hs).mean() + _softplus(-ht).mean()
    assert loss.item() == pytest.approx(expected, rel=1e-6)  # the loss is taken in float32
    assert acc.item() == pytest.approx(0.5 * ((hs < 0).mean() + (ht > 0).mean()))
    loss.backward()
    # the latents' gradient is -lambda_p times the one of the same loss without the reversal
    zs2, zt2 = zs.detach().clone().requires_grad_(), zt.detach().clone().requires_grad_()
    (F.softplus(disc(zs2)).mean() + F.softplus(-disc(zt2)).mean()).backward()
    torch.testing.assert_close(zs.grad, -lam * zs2.grad, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(zt.grad, -lam * zt2.grad, rtol=1e-5, atol=1e-9)


def test_domain_classifier_sees_both_domains_in_each_step():
    torch.manual_seed(7)
    dann = DANNLoss(latent_dim=6)
    dann.set_progress(0.5)
    seen = []
    dann.discriminator.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].detach().clone()))
    gen = torch.Generator().manual_seed(7)
    zs, zt = torch.randn(4, 6, generator=gen), torch.randn(3, 6, generator=gen) + 1.0
    loss, _ = dann(zs, zt)
    assert len(seen) == 1 and torch.equal(seen[0], torch.cat([zs, zt]))  # one pass over both domains
    params = list(dann.discriminator.parameters())
    full = torch.autograd.grad(loss, params)
    # the classifier's gradient is a source part plus a target part, both non-zero
    h = dann.discriminator(torch.cat([zs, zt]))
    g_source = torch.autograd.grad(F.softplus(h[:4]).mean(), params, retain_graph=True)
    g_target = torch.autograd.grad(F.softplus(-h[4:]).mean(), params)
    for g, a, b in zip(full, g_source, g_target):
        torch.testing.assert_close(g, a + b, rtol=1e-5, atol=1e-7)
    assert sum(float(a.abs().sum()) for a in g_source) > 0 and sum(float(b.abs().sum()) for b in g_target) > 0
    with pytest.raises(OptionError, match="both domains"):
        dann(zs, zt[:0])


# ----------------------------------------------------------------------------------------------
# the registry
# ----------------------------------------------------------------------------------------------
def test_methods_and_their_cited_defaults():
    assert METHODS == ("regular", "mmd", "coral", "dann", "adabn", "adv-1p")
    defaults = {m: dict(s.defaults()) for m, s in METHOD_SPECS.items() if m in METHODS}
    assert defaults == {"regular": {}, "mmd": {"weight": 0.05, "estimator": "unbiased", "sigmas2": DEFAULT_SIGMAS2},
                        "coral": {"weight": 1.0}, "dann": {"weight": 1.0, "gamma": 10.0, "hidden": 256},
                        "adabn": {}, "adv-1p": {}}
    assert {m: METHOD_SPECS[m].adversarial_share for m in METHODS} == {
        "regular": 0.0, "mmd": 0.0, "dann": 0.0, "coral": 0.0, "adabn": 0.0, "adv-1p": 0.5}
    assert [m for m in METHODS if METHOD_SPECS[m].adapts_in_training] == ["mmd", "coral", "dann"]
    assert [m for m in METHODS if METHOD_SPECS[m].adapts_before_inference] == ["adabn"]
    for m in METHODS:
        spec = METHOD_SPECS[m]
        assert spec.measure in ALIGNMENT_MEASURES and spec.reference
        assert "Y10 validation accuracy" in spec.checkpoint_criterion and "no Y1 label" in spec.checkpoint_criterion
        assert all(s.source and s.help for s in spec.settings)  # every default cites where it comes from
        assert bool(spec.logs) == spec.adapts_in_training
    assert alignment_loss("regular") is None and alignment_loss("adabn") is None and alignment_loss("adv-1p") is None


def test_bad_methods_and_weights_are_option_errors():
    with pytest.raises(OptionError, match="unknown method 'cdan'; choose one of regular, mmd, coral, dann, adabn, adv-1p"):
        alignment_loss("cdan")
    with pytest.raises(OptionError, match="unknown method"):
        method_spec("MMD")
    for method, key in (("mmd", "mmd_weight"), ("coral", "coral_weight"), ("dann", "dann_weight")):
        for bad in (-0.1, float("nan"), float("inf"), "heavy", True):
            with pytest.raises(OptionError, match=key.replace("_", "-")) as info:
                alignment_loss(method, {"weight": bad})
            assert info.value.exit_code == 2 and "\n" not in str(info.value)
        assert alignment_loss(method, {"weight": 0.0}).weight == 0.0
    with pytest.raises(OptionError, match="unknown setting 'wieght' of --method mmd; its settings: weight, estimator"):
        alignment_loss("mmd", {"wieght": 0.1})
    with pytest.raises(OptionError, match="unknown --mmd-estimator 'median'"):
        alignment_loss("mmd", {"estimator": "median"})
    with pytest.raises(OptionError, match="--mmd-sigmas2 must be greater than 0"):
        alignment_loss("mmd", {"sigmas2": (1.0, 0.0)})
    with pytest.raises(OptionError, match="--dann-hidden must be an integer"):
        alignment_loss("dann", {"hidden": 2.5})


def test_mmd_alignment_is_the_paper_term_bit_for_bit():
    gen = torch.Generator().manual_seed(8)
    zs, zt = torch.randn(16, 256, generator=gen), torch.randn(16, 256, generator=gen) * 1.3
    align = alignment_loss("mmd", {"weight": 0.05, "estimator": None})  # None: the default
    term, logs = align(zs, zt)
    value = MMDLoss(GaussianKernels(DEFAULT_SIGMAS2), estimator="unbiased")(zs, zt)
    assert torch.equal(term, 0.05 * value) and torch.equal(logs["mmd2"], value)
    assert alignment_loss("mmd", {"estimator": "biased"}).loss.estimator == "biased"


@pytest.mark.parametrize("method", ["mmd", "coral", "dann"])
def test_every_alignment_has_the_common_call(method):
    torch.manual_seed(9)
    align = alignment_loss(method, latent_dim=12)
    assert isinstance(align, AlignmentLoss) and align.method == method
    assert align.weight == METHOD_SPECS[method].setting("weight").default
    gen = torch.Generator().manual_seed(9)
    zs = torch.randn(10, 12, generator=gen, requires_grad=True)
    zt = torch.randn(10, 12, generator=gen) + 0.5
    align.set_progress(0.4)
    term, logs = align(zs, zt)
    assert term.ndim == 0 and term.dtype == torch.float32 and term.requires_grad
    assert logs and all(v.ndim == 0 and not v.requires_grad for v in logs.values())
    term.backward()
    assert zs.grad is not None and zs.grad.abs().sum() > 0
    with pytest.raises(OptionError, match="progress"):
        align.set_progress(1.5)
    doubled = alignment_loss(method, {"weight": 2.0}, latent_dim=12)
    doubled.load_state_dict(align.state_dict())
    doubled.set_progress(0.4)
    assert doubled(zs, zt)[0].item() == pytest.approx(2.0 * term.item() / align.weight, rel=1e-6)


def test_dann_alignment_logs_the_schedule_and_owns_the_classifier():
    align = alignment_loss("dann", latent_dim=4)
    assert sum(p.numel() for p in align.parameters()) == (4 * 256 + 256) + (256 * 256 + 256) + (256 + 1)
    # its settings reach the term: the hidden width and the schedule's gamma
    narrow = alignment_loss("dann", {"hidden": 8, "gamma": 2.0}, latent_dim=4)
    assert sum(p.numel() for p in narrow.parameters()) == (4 * 8 + 8) + (8 * 8 + 8) + (8 + 1)
    narrow.set_progress(0.5)
    assert narrow.loss.coeff == pytest.approx(2 / (1 + math.exp(-2.0 * 0.5)) - 1, rel=1e-12)
    gen = torch.Generator().manual_seed(10)
    zs, zt = torch.randn(6, 4, generator=gen), torch.randn(6, 4, generator=gen)
    for p in (0.0, 0.25, 1.0):
        align.set_progress(p)
        _, logs = align(zs, zt)
        assert logs["dann_lambda"].item() == pytest.approx(math.tanh(5 * p), abs=1e-6)
        assert set(logs) == {"dann_domain_loss", "dann_domain_acc", "dann_lambda"}


def test_alignment_measures_against_references():
    rng = np.random.default_rng(11)
    zs, zt = rng.normal(size=(20, 5)), rng.normal(0.5, 2.0, size=(20, 5))
    assert alignment_measure("coral", zs, zt) == pytest.approx(_coral_loops(zs.tolist(), zt.tolist()), rel=1e-10)
    # equal sizes below the sample cap: every row, kept paired
    assert alignment_measure("mmd", zs, zt) == pytest.approx(_mmd2_loops(zs.tolist(), zt.tolist(), "unbiased"),
                                                             rel=1e-8)
    assert alignment_measure("regular", zs, zt) == alignment_measure("mmd", zs, zt)
    # proxy A-distance: 2 for separable domains (probe error 0), about 0 for one distribution
    far = rng.normal(size=(200, 5)) + np.array([12.0, 0, 0, 0, 0])
    assert alignment_measure("dann", rng.normal(size=(200, 5)), far) == 2.0
    assert abs(proxy_a_distance(rng.normal(size=(400, 5)), rng.normal(size=(400, 5)))) < 0.4
    with pytest.raises(OptionError, match="at least 2"):
        proxy_a_distance(zs[:1], zt)
