"""AdaBN, and the domain-adaptation methods on toy two-domain data.

AdaBN is checked against batch-norm statistics computed here in float64; the methods are
trained through the registry exactly as the training step will call them
(``alignment_loss`` → ``set_progress`` → ``term, logs = alignment(z_source, z_target)``),
and each must lower its own alignment measure below regular training with the same seed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tolerances import gamma, unit_roundoff
from torch import nn

from deepadversaries.adaptation.adabn import adapt_batchnorm, batchnorm_layers
from deepadversaries.errors import OptionError
from deepadversaries.adaptation.alignment import alignment_loss
from deepadversaries.adaptation.measures import alignment_measure
from deepadversaries.adaptation.mmd import mmd2_measure
from deepadversaries.models.networks import ConvNet, ResNet18

BN_STATS = ("running_mean", "running_var")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _is_bn_stat(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in BN_STATS


class SmallConv(nn.Module):
    """conv → BN → ReLU → dropout → conv → BN → pool → linear: two BN layers, dropout between them."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(5)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        h = self.bn2(self.conv2(self.drop(torch.relu(self.bn1(self.conv1(x))))))
        z = h.mean(dim=(2, 3))
        return self.fc(z), z


def _trained_small_conv() -> SmallConv:
    torch.manual_seed(0)
    model = SmallConv()
    with torch.no_grad():  # non-trivial affine parameters and running statistics
        for bn in (model.bn1, model.bn2):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.num_batches_tracked.fill_(123)
    return model.eval()


def _channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and unbiased variance over images and pixels, float64."""
    flat = x.double().transpose(0, 1).reshape(x.shape[1], -1)
    return flat.mean(1), flat.var(1, unbiased=True)


def conv_error(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Bound on |float32 conv2d(x) - exact| per output (float64): gamma_{K+1} (|w| * |x| + |b|),
    K = in_channels x kernel area (tests/tolerances.py; the input x itself exact)."""
    k = w.shape[1] * w.shape[2] * w.shape[3] + 1
    return gamma(k) * F.conv2d(x.abs(), w.abs(), b.abs(), padding=1)


def stats_tolerance(h: torch.Tensor, error: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds on the stored running mean and unbiased variance of a layer input h (exact, float64)
    whose float32 entries are off by at most ``error``: AdaBN accumulates them in float64 and stores
    float32 (one rounding), so what remains is the inputs' own error carried through the mean and
    the variance (first and second order) and the float64 sums."""
    u = unit_roundoff(np.float32)
    flat = h.transpose(0, 1).reshape(h.shape[1], -1)
    err = error.transpose(0, 1).reshape(h.shape[1], -1)
    n = flat.shape[1]
    mean, var = flat.mean(1), flat.var(1, unbiased=True)
    f64 = gamma(n + 2, np.float64) * flat.pow(2).sum(1) / (n - 1)
    mean_tol = err.mean(1) + u * mean.abs() + gamma(n, np.float64) * flat.abs().mean(1)
    var_tol = (2 * ((flat - mean[:, None]).abs() * err).sum(1) + 2 * err.pow(2).sum(1)) / (n - 1) + u * var + f64
    return mean_tol, var_tol


def test_adabn_changes_only_batchnorm_running_statistics():
    model = _trained_small_conv()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    y1 = torch.randn(10, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2.0 + 0.7
    adapted = adapt_batchnorm(model, y1, batch_size=3)
    assert adapted is not model and not adapted.training
    for name, value in model.state_dict().items():  # the original is untouched
        assert torch.equal(value, before[name]), name
    changed = []
    for name, value in adapted.state_dict().items():
        if _is_bn_stat(name):
            changed.append(name)
            assert not torch.equal(value, before[name]), name
        else:
            assert torch.equal(value, before[name]), name  # weights, affine, num_batches_tracked
    assert sorted(changed) == sorted(f"{bn}.{s}" for bn in ("bn1", "bn2") for s in BN_STATS)
    assert [m.momentum for m in batchnorm_layers(adapted)] == [0.1, 0.1]


def test_adabn_statistics_are_the_target_images_statistics():
    model = _trained_small_conv()
    y1 = torch.randn(9, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 1.5 - 0.4
    w, b = model.conv1.weight.double(), model.conv1.bias.double()
    # first BN: the statistics of conv1's output over all target images and pixels, whatever the batch size
    h1 = F.conv2d(y1.double(), w, b, padding=1)
    mean1, var1 = _channel_stats(h1)
    error1 = conv_error(y1.double(), w, b)
    mean1_tol, var1_tol = stats_tolerance(h1, error1)
    for batch_size in (2, 4, 9, 128):
        adapted = adapt_batchnorm(model, y1.numpy(), batch_size=batch_size)
        assert torch.all((adapted.bn1.running_mean.double() - mean1).abs() <= mean1_tol), batch_size
        assert torch.all((adapted.bn1.running_var.double() - var1).abs() <= var1_tol), batch_size
    # second BN, all images in one batch: bn1 normalises by the whole set (biased variance, training mode),
    # dropout is off; the statistics are those of conv2's output
    h = F.conv2d(y1.double(), w, b, padding=1)
    mu, var_b = h.mean(dim=(0, 2, 3), keepdim=True), h.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    gain, shift = model.bn1.weight.double().view(1, -1, 1, 1), model.bn1.bias.double().view(1, -1, 1, 1)
    sigma = torch.sqrt(var_b + model.bn1.eps)
    a = (h - mu) / sigma * gain + shift
    w2, b2 = model.conv2.weight.double(), model.conv2.bias.double()
    h = F.conv2d(torch.relu(a), w2, b2, padding=1)
    mean2, var2 = _channel_stats(h)
    # float32 error of bn2's input: conv1's, through bn1's batch statistics (summed in float32 at worst:
    # gamma_N), its normalisation (a few roundings) and the ReLU (1-Lipschitz), then conv2's own
    u, n1 = unit_roundoff(np.float32), h1.numel() // h1.shape[1]
    centred = (h1 - mu).abs()
    mu_error = error1.mean(dim=(0, 2, 3), keepdim=True) + gamma(n1) * h1.abs().mean(dim=(0, 2, 3), keepdim=True)
    var_error = 2 * (centred * error1).mean(dim=(0, 2, 3), keepdim=True) \
        + gamma(n1 + 2) * h1.pow(2).mean(dim=(0, 2, 3), keepdim=True)
    rho = var_error / (2 * (var_b + model.bn1.eps)) + 2 * u
    a_error = gain.abs() * ((error1 + mu_error) / sigma + centred / sigma * rho) + 4 * u * (a.abs() + shift.abs())
    error2 = F.conv2d(a_error, w2.abs(), padding=1) + conv_error(torch.relu(a), w2, b2)
    mean2_tol, var2_tol = stats_tolerance(h, error2)
    adapted = adapt_batchnorm(model, y1, batch_size=9)
    assert torch.all((adapted.bn2.running_mean.double() - mean2).abs() <= mean2_tol)
    assert torch.all((adapted.bn2.running_var.double() - var2).abs() <= var2_tol)


def test_adabn_sees_only_the_y1_images_and_no_randomness():
    model = _trained_small_conv()
    y1 = torch.randn(7, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    seen = []
    model.conv1.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].detach().clone()))
    torch.manual_seed(10)
    a = adapt_batchnorm(model, y1, batch_size=3)
    torch.manual_seed(11)
    b = adapt_batchnorm(model, y1, batch_size=3)
    # the hook travels with the copy: two adaptations, each one pass over exactly the Y1 images, in order
    assert torch.equal(torch.cat(seen), torch.cat([y1, y1]))
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name  # dropout was off: no dependence on the random state


def test_adabn_on_the_real_models():
    y1 = torch.randn(4, 3, 100, 100, generator=torch.Generator().manual_seed(4))
    for model in (ConvNet().eval(), ResNet18().eval()):
        before = model.state_dict()
        torch.manual_seed(0)
        a = adapt_batchnorm(model, y1, batch_size=2)
        torch.manual_seed(1)
        b = adapt_batchnorm(model, y1, batch_size=2)  # ResNet18's dropout stays off
        n_stats = 0
        for name, value in a.state_dict().items():
            assert torch.equal(value, b.state_dict()[name]), name
            if _is_bn_stat(name):
                n_stats += 1
            else:
                assert torch.equal(value, before[name]), name
        assert n_stats == 2 * len(batchnorm_layers(model))


def test_adabn_refuses_what_it_cannot_adapt():
    y1 = torch.zeros(4, 3, 8, 8)
    with pytest.raises(OptionError, match="adabn needs a model with batch normalisation; Sequential has none") as info:
        adapt_batchnorm(nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten()), y1)
    assert info.value.exit_code == 2
    with pytest.raises(OptionError, match="track_running_stats=False"):
        adapt_batchnorm(nn.Sequential(nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2, track_running_stats=False)), y1)
    model = _trained_small_conv()
    with pytest.raises(OptionError, match="at least 2"):
        adapt_batchnorm(model, y1[:1])
    with pytest.raises(OptionError, match="batch of model inputs"):
        adapt_batchnorm(model, torch.zeros(5))
    with pytest.raises(OptionError, match="batch size"):
        adapt_batchnorm(model, y1, batch_size=0)


# ----------------------------------------------------------------------------------------------
# toy two-domain data: each method lowers its own alignment measure
# ----------------------------------------------------------------------------------------------
N_TRAIN, N_TEST = 1500, 400
BATCH = 64
#: optimiser steps per method (regular training is repeated with the same steps for each comparison):
#: the adversarial game of DANN needs more than the closed-form penalties
STEPS = {"mmd": 100, "coral": 100, "dann": 300, "adabn": 100}
#: the target domain: the source shifted along a direction that mixes class and nuisance inputs
SHIFT = torch.linspace(-1.5, 1.5, 8)


def _blobs(n: int, gen: torch.Generator, shift: torch.Tensor | float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three Gaussian classes in 8-d (means 2 e_c, unit variance), plus a domain shift."""
    y = torch.randint(0, 3, (n,), generator=gen)
    x = 2.0 * F.one_hot(y, 8).float() + torch.randn(n, 8, generator=gen)
    return x + shift, y


@pytest.fixture(scope="module")
def toy():
    gen = torch.Generator().manual_seed(1234)
    xs, ys = _blobs(N_TRAIN + N_TEST, gen)
    xt, _ = _blobs(N_TRAIN + N_TEST, gen, SHIFT)  # target labels are drawn but never used
    return xs, ys, xt


class ToyNet(nn.Module):
    def __init__(self, batchnorm: bool = False) -> None:
        super().__init__()
        norm = [nn.BatchNorm1d(32)] if batchnorm else []
        self.body = nn.Sequential(nn.Linear(8, 32), *norm, nn.ReLU(), nn.Linear(32, 16))
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        z = self.body(x)
        return self.head(z), z


def _train(toy, method: str, seed: int, steps: int, batchnorm: bool = False) -> ToyNet:
    """The training step of the LightningModule in miniature: one forward pass over both domains."""
    xs, ys, xt = toy
    torch.manual_seed(seed)
    net = ToyNet(batchnorm)
    alignment = alignment_loss(method, latent_dim=16)  # None for regular and adabn; default weights
    params = list(net.parameters()) + (list(alignment.parameters()) if alignment is not None else [])
    optimizer = torch.optim.Adam(params, lr=1e-2)
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        i = torch.randint(0, N_TRAIN, (BATCH,), generator=gen)
        j = torch.randint(0, N_TRAIN, (BATCH,), generator=gen)
        if alignment is None:
            logits, _ = net(xs[i])
            loss = F.cross_entropy(logits, ys[i])
        else:
            alignment.set_progress(step / steps)
            logits, z = net(torch.cat([xs[i], xt[j]]))
            term, _ = alignment(z[:BATCH], z[BATCH:])
            loss = F.cross_entropy(logits[:BATCH], ys[i]) + term
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval()


@torch.no_grad()
def _test_latents(toy, net: ToyNet, target_net: ToyNet | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    xs, ys, xt = toy
    logits, zs = net(xs[N_TRAIN:])
    _, zt = (target_net or net)(xt[N_TRAIN:])
    return zs, zt, float((logits.argmax(1) == ys[N_TRAIN:]).float().mean())


@pytest.fixture(scope="module")
def regular(toy):
    """Test latents and source accuracy of regular training, by (seed, steps), trained once."""
    cache = {}

    def get(seed: int, steps: int):
        if (seed, steps) not in cache:
            cache[seed, steps] = _test_latents(toy, _train(toy, "regular", seed, steps))
        return cache[seed, steps]
    return get


@pytest.mark.parametrize("method", ["mmd", "coral"])
def test_mmd_and_coral_lower_their_own_measure(toy, regular, method):
    zs, zt, accuracy = _test_latents(toy, _train(toy, method, 0, STEPS[method]))
    r_zs, r_zt, r_accuracy = regular(0, STEPS[method])
    adapted, baseline = alignment_measure(method, zs, zt), alignment_measure(method, r_zs, r_zt)
    assert adapted < 0.5 * baseline, (method, adapted, baseline)
    assert accuracy > r_accuracy - 0.05  # still classifies the source


def test_dann_lowers_the_proxy_a_distance(toy, regular):
    # adversarial training oscillates from step to step: compare the mean over three seeds
    adapted, baseline = [], []
    for seed in (0, 1, 2):
        zs, zt, accuracy = _test_latents(toy, _train(toy, "dann", seed, STEPS["dann"]))
        r_zs, r_zt, r_accuracy = regular(seed, STEPS["dann"])
        adapted.append(alignment_measure("dann", zs, zt))
        baseline.append(alignment_measure("dann", r_zs, r_zt))
        assert accuracy > r_accuracy - 0.05
    assert np.mean(baseline) > 1.2  # regular training leaves the domains linearly separable
    assert np.mean(adapted) < np.mean(baseline) - 0.2, (adapted, baseline)


def test_adabn_sets_the_target_statistics_and_aligns_the_latents(toy):
    xt = toy[2]
    net = _train(toy, "adabn", 0, STEPS["adabn"], batchnorm=True)
    adapted = adapt_batchnorm(net, xt[:N_TRAIN], batch_size=256)  # unlabelled target training inputs only
    first = net.body[0]
    pre = xt[:N_TRAIN].double() @ first.weight.double().T + first.bias.double()
    bn = adapted.body[1]
    # the first layer in float32: gamma_{K+1} (|W| |x| + |b|) per entry (tests/tolerances.py)
    k = first.in_features + 1
    error = gamma(k) * (xt[:N_TRAIN].double().abs() @ first.weight.double().abs().T + first.bias.double().abs())
    mean_tol, var_tol = stats_tolerance(pre[:, :, None], error[:, :, None])
    assert torch.all((bn.running_mean.double() - pre.mean(0)).abs() <= mean_tol)
    assert torch.all((bn.running_var.double() - pre.var(0, unbiased=True)).abs() <= var_tol)
    zs, zt_plain, _ = _test_latents(toy, net)
    _, zt_adapted, _ = _test_latents(toy, net, target_net=adapted)
    assert mmd2_measure(zs, zt_adapted) < 0.5 * mmd2_measure(zs, zt_plain)
