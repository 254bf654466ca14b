"""The defences of issue 25: the D4-equivariant ConvNet, the D4 test-time average and one-pixel
adversarial training.

Invariance is checked to a bound derived from float32 rounding: the same network is also run in
float64, where the invariance holds to ~1e-12 (checked), so by the triangle inequality
|f32(T x) - f32(x)| <= |f32(T x) - f64(T x)| + |f64(T x) - f64(x)| + |f64(x) - f32(x)|; the test
requires the float32 difference to stay within that sum (the rounding measured on both inputs,
times 2 for slack) — a broken equivariance gives differences of the order of the outputs
themselves. The group's transforms are checked against numpy's ``rot90``/``fliplr``.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import fisher_exact
from torch import nn

from deepadversaries.training.adversarial import corner_search, one_pixel_adversarial_batch
from deepadversaries.config import TrainConfig
from deepadversaries.models.equivariant import COMPOSE, INVERSE, D4Average, D4Features, transform, with_tta
from deepadversaries.errors import OptionError
from deepadversaries.attacks.exhaustive import ExhaustiveSearch
from deepadversaries.models.networks import ConvNet, D4ConvNet, build_model, count_parameters
from deepadversaries.models.scripted import ScriptedClassifier

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: float64 rounding of these small networks: 2.2e-16 per operation over < 1e5 accumulated terms
#: per output gives < 2.2e-11; 1e-9 leaves room
F64_TOL = 1e-9


def numpy_d4(a: np.ndarray, g: int) -> np.ndarray:
    """The reference action: k = g % 4 quarter turns (numpy's rot90, counter-clockwise) after a
    column flip (fliplr) when g >= 4, on the last two axes."""
    if g >= 4:
        a = a[..., :, ::-1]
    return np.rot90(a, k=g % 4, axes=(-2, -1)).copy()


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random running statistics and affine parameters, so that eval mode is a generic affine map;
    a bottleneck and head of unit scale (the authors' N(0, 0.005), N(0, 0.01) give logits near 0)."""
    gen = torch.Generator().manual_seed(seed)
    for name in ("bottleneck", "output"):
        layer = getattr(model, name, None)
        if layer is not None:
            layer.weight.data.copy_(torch.randn(layer.weight.shape, generator=gen) / layer.weight.shape[1] ** 0.5)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(m.bias.shape, generator=gen) - 0.5)
    return model.eval()


def assert_invariant(model32: nn.Module, x32: torch.Tensor) -> None:
    """The model's logits and latents do not change under any of the eight transforms, to the float32 bound."""
    model64 = copy.deepcopy(model32).double()
    x64 = x32.double()
    with torch.no_grad():
        ref32, ref64 = model32(x32), model64(x64)
        for g in range(8):
            out32, out64 = model32(transform(x32, g)), model64(transform(x64, g))
            for k in range(2):  # logits, latent
                scale = max(1.0, float(ref64[k].abs().max()))
                exact = float((out64[k] - ref64[k]).abs().max())
                assert exact <= F64_TOL * scale, (g, k, exact)
                rounding = float((out32[k].double() - out64[k]).abs().max() + (ref32[k].double() - ref64[k]).abs().max())
                diff = float((out32[k] - ref32[k]).abs().max())
                assert diff <= 2 * rounding + F64_TOL * scale, (g, k, diff, rounding)
                # and it is not invariance by being constant: the outputs vary between images
                assert float((ref64[k][0] - ref64[k][1]).abs().max()) > 1e3 * F64_TOL * scale


# ---------------------------------------------------------------------------------------------
# the group
# ---------------------------------------------------------------------------------------------
def test_transforms_are_the_eight_symmetries_of_the_square_and_compose_as_tabled():
    a = np.random.default_rng(0).random((2, 5, 5))
    images = [transform(torch.from_numpy(a), g).numpy() for g in range(8)]
    for g in range(8):
        np.testing.assert_array_equal(images[g], numpy_d4(a, g))
    assert len({im.tobytes() for im in images}) == 8
    for x in range(8):
        for y in range(8):
            np.testing.assert_array_equal(numpy_d4(numpy_d4(a, y), x), images[COMPOSE[x][y]])
        np.testing.assert_array_equal(numpy_d4(images[x], INVERSE[x]), a)


# ---------------------------------------------------------------------------------------------
# d4-convnet
# ---------------------------------------------------------------------------------------------
def test_d4_convnet_parameter_count_is_the_convnets_within_ten_percent():
    # by hand: lifting 3->2 (5x5) + bias, 3 group batch norms (2 each per channel), group convs
    # 2x8 -> 4 and 4x8 -> 16 (3x3) + biases, the bottleneck 32 x 12 x 12 -> 256, the head 256 -> 3
    by_hand = (3 * 2 * 25 + 2) + 2 * 2 + (2 * 8 * 4 * 9 + 4) + 2 * 4 + (4 * 8 * 16 * 9 + 16) + 2 * 16 \
        + (32 * 12 * 12 * 256 + 256) + (256 * 3 + 3)
    d4, plain = count_parameters(build_model("d4-convnet")), count_parameters(build_model("convnet"))
    assert d4 == by_hand == 1_186_075 and plain == 1_187_203
    assert abs(d4 - plain) / plain < 0.10


@pytest.mark.parametrize("shape", [(3, 24, 24), (2, 27, 27)])  # even and odd sizes (pooling windows)
def test_d4_convnet_logits_and_latent_are_invariant_under_all_eight_transforms(shape):
    torch.manual_seed(1)
    model = randomise_batchnorm(D4ConvNet(shape, n_classes=3), seed=1)
    x = torch.rand(2, *shape)
    assert_invariant(model, x)


def test_d4_convnet_fields_transform_by_the_group_action():
    """Each block's field of a transformed image is the transformed field, orientations permuted:
    f(T_a x)[g] = T_a f(x)[a^-1 g] (the regular representation), for the lifting layer and both
    group convolutions."""
    torch.manual_seed(2)
    features = randomise_batchnorm(D4Features(3, (2, 3, 4)), seed=2).double()
    x = torch.rand(2, 3, 20, 20, dtype=torch.float64)
    with torch.no_grad():
        fields = features.fields(x)
        for a in range(8):
            moved = features.fields(torch.from_numpy(numpy_d4(x.numpy(), a)))
            for f, fm in zip(fields, moved):
                for g in range(8):
                    expected = numpy_d4(f[:, :, COMPOSE[INVERSE[a]][g]].numpy(), a)
                    np.testing.assert_allclose(fm[:, :, g].numpy(), expected, rtol=0, atol=F64_TOL)
        # the lifting convolution's own output, before batch norm and pooling
        lift = features.blocks[0].conv
        lifted = lift(x)
        for a in range(8):
            moved = lift(transform(x, a))
            for g in range(8):
                torch.testing.assert_close(moved[:, :, g], transform(lifted[:, :, COMPOSE[INVERSE[a]][g]], a),
                                           rtol=0, atol=F64_TOL)
        # the lifted field is not itself invariant (the orientations do move)
        lifted_moved = features.fields(transform(x, 1))[0]
        assert float((lifted_moved[:, :, 0] - transform(fields[0][:, :, 0], 1)).abs().max()) > 1e-3


def test_d4_convnet_trains_and_refuses_non_square_images():
    with pytest.raises(OptionError, match="square"):
        build_model("d4-convnet", (3, 24, 32))
    model = build_model("d4-convnet", (1, 16, 16), n_classes=2)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    x, y = torch.rand(8, 1, 16, 16), torch.tensor([0, 1] * 4)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = F.cross_entropy(model(x)[0], y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    assert all(p.grad is not None for p in model.parameters())


def test_local_d4_evaluator_equals_one_forward_pass_per_candidate_at_every_row_and_column():
    """The one-pixel evaluator that recomputes only a pixel's cone gives, in float64, the probabilities
    of the plain model on each perturbed image (a loop here: set the pixel, run the model) at every row
    and every column (edges, both orders, the diagonal), and float32 agrees to float32 rounding."""
    from deepadversaries.attacks.evaluators import (
        CandidateEvaluator, LocalD4ConvNetEvaluator, make_evaluator, optimized_for_inference)

    torch.manual_seed(3)
    model = randomise_batchnorm(D4ConvNet((3, 100, 100)), seed=3)
    images = torch.rand(2, 3, 100, 100, generator=torch.Generator().manual_seed(4))
    rng = np.random.default_rng(5)
    rows = np.r_[np.arange(100), np.arange(100), rng.integers(0, 100, 20)][:, None]
    cols = np.r_[np.arange(100)[::-1], np.arange(100), rng.integers(0, 100, 20)][:, None]
    slots = rng.integers(0, 2, len(rows))
    values = rng.random((len(rows), 1, 3)) * 3.0  # beyond [0, 1]: large changes exercise every max
    cpu = torch.device("cpu")
    model64 = copy.deepcopy(model).double()
    local = make_evaluator(optimized_for_inference(model64, channels_last=True), 2, (3, 100, 100), cpu,
                           torch.float64, channels_last=True)
    assert isinstance(local, LocalD4ConvNetEvaluator)
    for s in range(2):
        local.load(s, images[s].double())
    batch = images.double()[slots]
    batch[np.arange(len(rows)), :, rows[:, 0], cols[:, 0]] = torch.from_numpy(values[:, 0])
    with torch.no_grad():
        reference = torch.cat([torch.softmax(model64(part)[0], dim=1) for part in batch.split(60)]).numpy()
        clean = torch.softmax(model64(images.double())[0], dim=1).numpy()
    np.testing.assert_allclose(local.evaluate(slots, rows, cols, values), reference, rtol=0, atol=1e-12)
    assert np.abs(reference - clean[slots]).max() > 1e-5  # the pixels do change the output (>> atol)
    # float32, channels first too: the batched full passes and the local evaluator agree to rounding
    full = CandidateEvaluator(model, 2, (3, 100, 100), cpu, torch.float32)
    local32 = make_evaluator(optimized_for_inference(model), 2, (3, 100, 100), cpu, torch.float32)
    for s in range(2):
        full.load(s, images[s])
        local32.load(s, images[s])
    np.testing.assert_allclose(local32.evaluate(slots, rows, cols, values), full.evaluate(slots, rows, cols, values),
                               rtol=0, atol=2e-6)
    # batch norm without running statistics is not a fixed affine map: batched full passes then
    model.features.blocks[1].norm.track_running_stats = False
    assert not LocalD4ConvNetEvaluator.applies(model, (3, 100, 100), 1)
    assert not LocalD4ConvNetEvaluator.applies(D4ConvNet((3, 40, 40)), (3, 40, 40), 1)


# ---------------------------------------------------------------------------------------------
# --tta d4
# ---------------------------------------------------------------------------------------------
def test_tta_d4_makes_a_plain_convnet_invariant_and_averages_the_softmax():
    torch.manual_seed(3)
    plain = randomise_batchnorm(ConvNet((3, 16, 16)), seed=3)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():  # the plain ConvNet is not invariant
        assert float((plain(transform(x, 1))[0] - plain(x)[0]).abs().max()) > 1e-3
    wrapped = with_tta(plain, "d4")
    assert_invariant(wrapped, x)
    # the reference: a loop over numpy's transforms, softmax averaged, latents averaged
    with torch.no_grad():
        outs = [plain(torch.from_numpy(numpy_d4(x.numpy(), g))) for g in range(8)]
        probs = np.mean([torch.softmax(o[0], 1).numpy() for o in outs], axis=0)
        latent = np.mean([o[1].numpy() for o in outs], axis=0)
        logits, z = wrapped(x)
    np.testing.assert_allclose(torch.softmax(logits, 1).numpy(), probs, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(z.numpy(), latent, rtol=1e-5, atol=1e-6)
    assert with_tta(plain, "none") is plain


def test_tta_d4_wraps_a_torchscript_model():
    torch.manual_seed(4)
    plain = randomise_batchnorm(ConvNet((3, 16, 16)), seed=4)
    scripted = ScriptedClassifier(torch.jit.script(plain).eval())
    x = torch.rand(2, 3, 16, 16)
    wrapped = D4Average(scripted)
    with torch.no_grad():
        logits, z = wrapped(x)
        ref_logits, ref_z = D4Average(plain)(x)
        for g in range(8):
            lg, zg = wrapped(transform(x, g))
            np.testing.assert_allclose(lg.numpy(), logits.numpy(), atol=1e-5)
            np.testing.assert_allclose(zg.numpy(), z.numpy(), atol=1e-5)
    np.testing.assert_allclose(logits.numpy(), ref_logits.numpy(), atol=1e-6)
    np.testing.assert_allclose(z.numpy(), ref_z.numpy(), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# adv-1p
# ---------------------------------------------------------------------------------------------
class OnePixelTrap(nn.Module):
    """A hand-built classifier of 1 x 8 x 8 images with one vulnerable pixel: class 1's logit is
    10 x the pixel at (row 3, col 5) against class 0's constant 1, plus 0.01 x the image sum."""

    ROW, COL = 3, 5

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = x.flatten(1)
        second = 10.0 * x[:, 0, self.ROW, self.COL] + 0.01 * z.sum(1)
        return torch.stack([torch.ones_like(second), second], dim=1), z


def test_adversarial_batch_contains_the_vulnerable_pixels_corruption():
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(5)) * 0.05
    y = torch.zeros(8, dtype=torch.long)
    batch = one_pixel_adversarial_batch(OnePixelTrap(), x, y, share=0.5, positions=4)
    assert batch.n_changed == 4
    changed = (batch.images != x).flatten(1).sum(1)
    assert changed[:4].tolist() == [1, 1, 1, 1] and changed[4:].tolist() == [0, 0, 0, 0]
    assert (batch.images[:4, 0, OnePixelTrap.ROW, OnePixelTrap.COL] == 1.0).all()
    assert batch.rows.tolist() == [3] * 4 and batch.cols.tolist() == [5] * 4 and batch.flipped.all()
    # p(true) after the change, by hand: softmax of (1, 10 + 0.01 (sum + 1 - old pixel))
    for i in range(4):
        second = 10.0 + 0.01 * (float(x[i].sum()) + 1.0 - float(x[i, 0, 3, 5]))
        assert batch.p_true[i] == pytest.approx(1.0 / (1.0 + np.exp(second - 1.0)), rel=1e-5)
    # the same answer from every position and both corner values, and the input is left alone
    rows, cols, values, _, _ = corner_search(OnePixelTrap(), x[:4], y[:4], flat_positions=np.tile(np.arange(64), (4, 1)))
    assert rows.tolist() == [3] * 4 and cols.tolist() == [5] * 4 and values[:, 0].tolist() == [1.0] * 4
    assert float(x.max()) <= 0.05


def _shortcut_toy(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """1 x 8 x 8 images, background uniform in [0, 0.3]; class 1 has a faint 4 x 4 square (+0.15) at
    a random place, and pixel (0, 0) holds the label (a one-pixel shortcut a classifier can lean on)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    rng.shuffle(y)
    x = rng.uniform(0, 0.3, (n, 1, 8, 8)).astype(np.float32)
    for i in np.flatnonzero(y == 1):
        r, c = rng.integers(1, 4, 2)
        x[i, 0, r:r + 4, c:c + 4] += 0.15
    x[:, 0, 0, 0] = y
    return torch.from_numpy(x), torch.from_numpy(y)


def _train_toy(adversarial: bool, steps: int = 100) -> nn.Module:
    torch.manual_seed(0)
    model = build_model("convnet", (1, 8, 8), n_classes=2)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    x, y = _shortcut_toy(512, seed=1)
    order = np.random.default_rng(0)
    for _ in range(steps):
        idx = torch.from_numpy(order.choice(512, 64, replace=False))
        xb, yb = x[idx], y[idx]
        if adversarial:
            xb = one_pixel_adversarial_batch(model, xb, yb, share=0.5).images
        model.train()
        opt.zero_grad()
        F.cross_entropy(model(xb)[0], yb).backward()
        opt.step()
    return model.eval()


def _corner_flip_rate(model: nn.Module) -> tuple[float, int, int]:
    """(clean accuracy, flipped, attacked) of the package's exhaustive corner search (every position x
    both corner values, untargeted, top-class rule) on 100 fresh test images classified correctly."""
    x, y = _shortcut_toy(100, seed=2)
    with torch.no_grad():
        ok = (model(x)[0].argmax(1) == y).numpy()
    search = ExhaustiveSearch(model, mode="untargeted", success="top-class", device="cpu")
    results = list(search.run(x.numpy()[ok], y.numpy()[ok]))
    return float(ok.mean()), sum(r.success for r in results), len(results)


def test_short_adversarial_training_lowers_the_corner_search_flip_rate_where_regular_training_does_not():
    acc_reg, flips_reg, n_reg = _corner_flip_rate(_train_toy(adversarial=False))
    acc_adv, flips_adv, n_adv = _corner_flip_rate(_train_toy(adversarial=True))
    assert acc_reg >= 0.9 and acc_adv >= 0.9
    assert flips_reg / n_reg >= 0.5  # regular training leans on the one-pixel shortcut
    assert flips_adv / n_adv <= 0.5 * flips_reg / n_reg
    _, p = fisher_exact([[flips_reg, n_reg - flips_reg], [flips_adv, n_adv - flips_adv]], alternative="greater")
    assert p < 0.01


def test_adv_share_settings():
    assert TrainConfig.from_preset("tiny", method="adv-1p").adv_share == 0.5
    assert TrainConfig.from_preset("tiny", method="regular").adv_share == 0.0
    assert TrainConfig.from_preset("tiny", method="mmd", adv_share=0.25).adv_share == 0.25
    with pytest.raises(OptionError, match="adv-1p"):
        TrainConfig.from_preset("tiny", method="regular", adv_share=0.5)
    with pytest.raises(OptionError, match=r"\[0, 1\]"):
        TrainConfig.from_preset("tiny", method="adv-1p", adv_share=1.5)
    with pytest.raises(OptionError, match="regular training"):
        TrainConfig.from_preset("tiny", method="adv-1p", adv_share=0)


# ---------------------------------------------------------------------------------------------
# the defences through the verbs: train, evaluate --tta d4, attack --tta d4
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_toy(tmp_path_factory):
    from conftest import make_toy_dataset

    return make_toy_dataset(tmp_path_factory.mktemp("defences") / "data", n={"train": 48, "valid": 12, "test": 12},
                            size=16)


def test_train_d4_convnet_and_adv_1p_with_mmd_through_the_stage(small_toy, tmp_path):
    import csv

    from deepadversaries.models.networks import load_model
    from deepadversaries.training.train import train_model

    run = train_model(small_toy, tmp_path / "d4", TrainConfig.from_preset("tiny", model="d4-convnet"), device="cpu",
                      progress=False)
    assert isinstance(load_model(run), D4ConvNet)
    run = train_model(small_toy, tmp_path / "mmd_adv", TrainConfig.from_preset("tiny", method="mmd", adv_share=0.5),
                      device="cpu", progress=False)
    with open(run / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3
    for row in rows:
        assert 0.0 <= float(row["train_adv_flip_rate"]) <= 1.0 and 0.0 <= float(row["train_adv_p_true"]) <= 1.0
        assert np.isfinite(float(row["train_mmd2"]))
    regular = train_model(small_toy, tmp_path / "regular", TrainConfig.from_preset("tiny"), device="cpu",
                          progress=False)
    with open(regular / "log.csv", newline="") as fh:
        assert all(r["train_adv_flip_rate"] == "nan" for r in csv.DictReader(fh))
    # a run written before the adversarial settings existed is still recognised as the same run
    config = json.loads((regular / "config.json").read_text())
    assert config["adv_share"] == 0.0 and config["adv_positions"] == 8
    del config["adv_share"], config["adv_positions"]
    (regular / "config.json").write_text(json.dumps(config))
    assert train_model(small_toy, regular, TrainConfig.from_preset("tiny"), device="cpu", resume=True,
                       progress=False) == regular
    with pytest.raises(Exception, match="other settings"):
        train_model(small_toy, regular, TrainConfig.from_preset("tiny", method="adv-1p"), device="cpu", resume=True,
                    progress=False)


def test_evaluate_and_attack_with_tta_d4(small_toy, tmp_path):
    from deepadversaries.attacks.campaign import attack_run
    from deepadversaries.config import AttackConfig
    from deepadversaries.data.dataset import load_dataset
    from deepadversaries.evaluation.evaluate import evaluate_run
    from deepadversaries.io import read_json
    from deepadversaries.models.networks import load_model
    from deepadversaries.training.train import train_model

    run = train_model(small_toy, tmp_path / "run", TrainConfig.from_preset("tiny"), device="cpu", progress=False)
    plain = evaluate_run(run, device="cpu")
    averaged = evaluate_run(run, device="cpu", tta="d4")
    assert (run / "metrics.json").is_file() and (run / "tta_d4" / "metrics.json").is_file()
    assert read_json(run / "metrics.json")["Y10"]["accuracy"] == plain["Y10"]["accuracy"]
    # the reference: the plain model on numpy's eight transforms, softmax averaged
    dataset = load_dataset(small_toy)
    model = load_model(run)
    images = dataset.images("Y10", "test")
    with torch.no_grad():
        probs = np.mean([torch.softmax(model(torch.from_numpy(numpy_d4(np.asarray(images), g)))[0], 1).numpy()
                         for g in range(8)], axis=0)
    saved = np.load(run / "tta_d4" / "predictions.npz")["probabilities_Y10"]
    np.testing.assert_allclose(saved, probs, atol=1e-5)
    assert averaged["Y10"]["accuracy"] == pytest.approx(float(np.mean(probs.argmax(1) == dataset.labels("test"))))
    summary = attack_run(run, AttackConfig.from_preset("tiny", n_images=4), device="cpu", tta="d4")
    assert summary["tta"] == "d4" and (run / "attack_tta_d4" / "summary.json").is_file()
    assert not (run / "attack").exists()
