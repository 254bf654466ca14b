"""The differential-evolution attack engine (SPEC 7): rules, batching, determinism, success."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from deepadversaries.attacks import (
    CandidateEvaluator,
    LocalConvNetEvaluator,
    OnePixelDE,
    candidate_pixels,
    distinct_triples,
    optimized_for_inference,
    perturb,
    reference_attack,
)
from deepadversaries.errors import DeepAdvError
from deepadversaries.models import build_model

from attack_support import bright_pixel_convnet


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: these small batches gain nothing from two, and two threads
    slow down badly when other processes share the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class PixelModel(nn.Module):
    """Known behaviour: class ``target`` wins only when band ``band`` at (row, col) is bright.

    logits = (1 for ``true``, gain (v - level) for ``target``, 0 for the third class),
    v = x[band, row, col]; p(target) > 0.5 needs gain (v - level) > ln(e + 1) = 1.31.
    With ``second`` = (band, row, col), v is the sum of both pixels (an L = 2 attack when
    one bright pixel cannot reach ``level`` + 1.31 / gain).
    """

    def __init__(self, row: int = 3, col: int = 7, band: int = 0, true: int = 0, target: int = 2,
                 gain: float = 30.0, level: float = 0.8, second: tuple[int, int, int] | None = None) -> None:
        super().__init__()
        self.row, self.col, self.band, self.true, self.target = row, col, band, true, target
        self.gain, self.level, self.second = gain, level, second

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = x[:, self.band, self.row, self.col]
        if self.second is not None:
            b, r, c = self.second
            v = v + x[:, b, r, c]
        logits = torch.zeros(len(x), 3, dtype=x.dtype, device=x.device)
        logits[:, self.true] = 1.0
        logits[:, self.target] = self.gain * (v - self.level)
        return logits, x.flatten(1)[:, :4]


def flat_images(n: int, size: int = 10, value: float = 0.3) -> np.ndarray:
    return np.full((n, 3, size, size), value, dtype=np.float32)


def check_claims(model: nn.Module, images: np.ndarray, results, pixels: int, targeted: bool = True) -> None:
    """Independent check of every claimed success: at most L changed positions, values in
    [0, 1], and the plain model gives p(target) > 0.5 (or p(true) < 0.05)."""
    for res in results:
        assert res.image is not None
        img = res.image
        assert img.min() >= 0.0 and img.max() <= 1.0
        changed = np.any(img != images[res.index], axis=0)
        assert changed.sum() <= pixels
        with torch.no_grad():
            p = torch.softmax(model(torch.from_numpy(img[None]))[0], dim=1)[0].numpy()
        np.testing.assert_allclose(p, res.probabilities, atol=1e-6)
        if res.success:
            if targeted:
                assert p[res.target] > 0.5
            else:
                assert p[res.label] < 0.05


# --------------------------------------------------------------------------------------
# the DE rules
# --------------------------------------------------------------------------------------
def test_distinct_triples_are_distinct_and_uniform():
    rng = np.random.default_rng(1)
    idx = distinct_triples(rng, 7, 70000)
    assert idx.min() == 0 and idx.max() == 6
    assert np.all((idx[:, 0] != idx[:, 1]) & (idx[:, 0] != idx[:, 2]) & (idx[:, 1] != idx[:, 2]))
    for col in range(3):  # each slot uniform over the 7 members
        counts = np.bincount(idx[:, col], minlength=7)
        assert np.all(np.abs(counts / 10000 - 1) < 0.06)
    ordered = np.unique(idx[:, 0] * 49 + idx[:, 1] * 7 + idx[:, 2], return_counts=True)[1]
    assert len(ordered) == 7 * 6 * 5 and ordered.min() > 200  # all 210 ordered triples occur


def test_initial_population_follows_the_authors():
    atk = OnePixelDE(PixelModel(), pop_size=4000, max_iter=1, device="cpu")
    pop = atk.initial_population(np.random.default_rng(0))
    assert pop.shape == (4000, 1, 5)
    pos, vals = pop[:, 0, :2], pop[:, 0, 2:]
    assert pos.min() >= 0 and pos.max() < 1 and abs(pos.mean() - 0.5) < 0.02
    assert vals.min() == 0.0 and vals.max() == 1.0
    # clip(N(0.5, 0.5), 0, 1): P(0) = P(1) = Phi(-1) = 0.1587
    assert abs((vals == 0).mean() - 0.1587) < 0.015 and abs((vals == 1).mean() - 0.1587) < 0.015


def test_mutation_and_out_of_bounds_resampling_match_a_plain_loop():
    atk = OnePixelDE(PixelModel(), pop_size=50, max_iter=1, pixels=2, device="cpu")
    pop = np.random.default_rng(3).random((50, 2, 5))
    children = atk.next_generation(np.random.default_rng(9), pop)
    # the same draws, replayed one child at a time as the published evolve()
    rng = np.random.default_rng(9)
    idx = distinct_triples(rng, 50, 50)
    redraw = rng.random(children.shape)
    n_out = 0
    for i in range(50):
        a, b, c = idx[i]
        assert len({a, b, c}) == 3
        want = pop[a] + 0.5 * (pop[b] - pop[c])
        out = (want < 0) | (want > 1)
        n_out += out.sum()
        want[out] = redraw[i][out]
        np.testing.assert_array_equal(children[i], want)
    assert n_out > 0  # the test did exercise resampling
    assert children.min() >= 0 and children.max() <= 1


def test_replacement_never_worsens_a_member():
    history = []

    class Recording(OnePixelDE):
        def select(self, population, fitness, probs, children, child_fitness, child_probs):
            new = super().select(population, fitness, probs, children, child_fitness, child_probs)
            history.append((fitness.copy(), child_fitness.copy(), new[1].copy(), population, children, new[0]))
            return new

    model = PixelModel(gain=3.0)  # the target never reaches p > 0.5: all generations run
    atk = Recording(model, pop_size=30, max_iter=6, device="cpu", dtype=torch.float64)
    res = atk(flat_images(1), [0], targets=[2])
    assert not res[0].success and res[0].iterations == 6 and len(history) == 6
    for old, child, new, pop, kids, new_pop in history:
        assert np.all(new >= old)
        better = child > old
        np.testing.assert_array_equal(new, np.where(better, child, old))
        np.testing.assert_array_equal(new_pop[better], kids[better])  # child replaces its own parent
        np.testing.assert_array_equal(new_pop[~better], pop[~better])
    assert any((c > o).any() for o, c, *_ in history)


# --------------------------------------------------------------------------------------
# evaluation: batched, per candidate, local
# --------------------------------------------------------------------------------------
def _random_convnet() -> nn.Module:
    torch.manual_seed(0)
    model = build_model("convnet")
    for m in model.modules():  # non-trivial batch-norm statistics, so that folding matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    nn.init.normal_(model.bottleneck.weight, 0, 0.05)
    nn.init.normal_(model.output.weight, 0, 0.3)
    return model.eval()


def _evaluators(model, images, dtype, bf16=False):
    cpu = torch.device("cpu")
    full = CandidateEvaluator(model, len(images), (3, 100, 100), cpu, dtype, bf16=bf16)
    local = LocalConvNetEvaluator(optimized_for_inference(model, channels_last=True), len(images), (3, 100, 100),
                                  cpu, dtype, channels_last=True, bf16=bf16)
    for s in range(len(images)):
        full.load(s, images[s])
        local.load(s, images[s])
    return full, local


def test_batched_local_and_per_candidate_evaluation_agree():
    model = _random_convnet()
    images = torch.rand(2, 3, 100, 100, generator=torch.Generator().manual_seed(1))
    rng = np.random.default_rng(0)
    # float32: every row and every column at least once, edges included
    rows = np.concatenate([np.arange(100), rng.integers(0, 100, 28)])[:, None]
    cols = np.concatenate([np.arange(100)[::-1], rng.integers(0, 100, 28)])[:, None]
    slots = rng.integers(0, 2, len(rows))
    values = rng.random((len(rows), 1, 3))
    full, local = _evaluators(model, images, torch.float32)
    p_full = full.evaluate(slots, rows, cols, values)
    np.testing.assert_allclose(local.evaluate(slots, rows, cols, values), p_full, rtol=0, atol=2e-6)
    # float64: batched, local and one plain forward pass per candidate agree to rounding
    model64 = model.double()
    pick = np.r_[0:3, 97:100, rng.choice(np.arange(3, 97), 10, replace=False)]
    rows, cols, slots, values = rows[pick], cols[pick], slots[pick], values[pick]
    full, local = _evaluators(model64, images.double(), torch.float64)
    p_full = full.evaluate(slots, rows, cols, values)
    with torch.no_grad():
        p_loop = np.stack([
            torch.softmax(model64(torch.from_numpy(perturb(images[s].numpy(), np.r_[(c + 0.5) / 100, (r + 0.5) / 100,
                                                                                  v[0]][None], np.float64))[None])[0],
                          dim=1)[0].numpy()
            for s, r, c, v in zip(slots, rows[:, 0], cols[:, 0], values)])
        clean = torch.softmax(model64(images.double())[0], dim=1).numpy()
    np.testing.assert_allclose(p_full, p_loop, rtol=0, atol=1e-13)
    np.testing.assert_allclose(local.evaluate(slots, rows, cols, values), p_loop, rtol=0, atol=1e-13)
    assert np.abs(p_loop - clean[slots]).max() > 1e-6  # the pixels did change the output


def test_candidate_pixels_cover_every_pixel_uniformly():
    u = (np.arange(1000) + 0.5) / 1000
    cand = np.zeros((len(u), 1, 5))
    cand[:, 0, 0] = u
    cand[:, 0, 1] = 1 - 1e-12
    rows, cols, _ = candidate_pixels(cand, 100, 100)
    assert np.all(np.bincount(cols[:, 0], minlength=100) == 10)
    assert np.all(rows == 99)


# --------------------------------------------------------------------------------------
# attacks
# --------------------------------------------------------------------------------------
def test_known_pixel_is_found_and_really_flips_the_model():
    model = PixelModel(row=3, col=7, true=0, target=2)
    images = flat_images(3)
    atk = OnePixelDE(model, pop_size=60, max_iter=30, device="cpu")
    results = atk(images, [0, 0, 0], targets=[2, 2, 2], return_images=True)
    assert all(r.success for r in results)
    for r in results:
        assert r.pixels.tolist() == [[7, 3]]  # (x, y) = (column, row)
        assert r.values[0, 0] > 0.8 and r.probabilities[2] > 0.5
    check_claims(model, images, results, pixels=1)
    assert len({(r.iterations, r.evaluations) for r in results}) > 1  # each image its own stream


def test_untargeted_and_top_class_rules():
    model = PixelModel(row=5, col=2, true=1, target=0, gain=40.0)
    images = flat_images(2)
    atk = OnePixelDE(model, pop_size=60, max_iter=30, mode="untargeted", device="cpu")
    results = atk(images, [1, 1], return_images=True)
    assert all(r.success and r.target is None for r in results)
    assert all(r.probabilities[1] < 0.05 for r in results)
    check_claims(model, images, results, pixels=1, targeted=False)
    # a model that never gives any class p > 0.5: only the top-class rule can succeed
    # (target logit 1.25 v: above the true class's 1 for v > 0.8, yet p(target) <= 0.484)
    weak = PixelModel(row=5, col=2, true=1, target=0, gain=1.25, level=0.0)
    paper = OnePixelDE(weak, pop_size=40, max_iter=3, device="cpu")(images[:1], [1], targets=[0])[0]
    top = OnePixelDE(weak, pop_size=60, max_iter=30, success="top-class", device="cpu")(images[:1], [1], targets=[0])[0]
    assert not paper.success and paper.iterations == 3
    assert top.success and np.argmax(top.probabilities) == 0 and top.probabilities[0] < 0.5


def test_l_pixel_attack_needs_and_uses_two_pixels():
    # target needs v_A + v_B > 1.6 + 0.13: impossible with one pixel (at most 1 + 0.3)
    model = PixelModel(row=1, col=4, band=1, true=2, target=1, gain=10.0, level=1.6, second=(2, 5, 0))
    images = flat_images(2, size=6)
    one = OnePixelDE(model, pop_size=40, max_iter=5, device="cpu")(images, [2, 2], targets=[1, 1])
    assert not any(r.success for r in one)
    atk = OnePixelDE(model, pop_size=100, max_iter=60, pixels=2, device="cpu")
    two = atk(images, [2, 2], targets=[1, 1], return_images=True)
    assert all(r.success for r in two)
    for r in two:
        assert r.pixels.shape == (2, 2) and r.values.shape == (2, 3)
        assert sorted(map(tuple, r.pixels.tolist())) == [(0, 5), (4, 1)]
    check_claims(model, images, two, pixels=2)


def test_targets_tried_in_turn_first_success_kept():
    model = PixelModel(row=3, col=4, true=0, target=2)  # class 1 cannot be reached
    res = OnePixelDE(model, pop_size=40, max_iter=20, device="cpu")(flat_images(1, size=6), [0])[0]
    assert res.targets_tried == (1, 2) and res.target == 2 and res.success
    assert res.iterations_total == 20 + res.iterations


def test_seeded_determinism_and_independence_from_batching():
    model = PixelModel(row=2, col=4, gain=12.0)
    images = flat_images(5, size=8) + np.random.default_rng(0).random((5, 3, 8, 8)).astype(np.float32) * 0.1
    labels = [0] * 5

    def run(**kw):
        res = OnePixelDE(model, pop_size=24, max_iter=10, seed=7, device="cpu", dtype=torch.float64, **kw)(
            images, labels)
        return [(r.success, r.target, r.iterations, r.evaluations, r.pixels.tolist(), r.values.tolist(),
                 r.probabilities.tolist()) for r in res]

    base = run(chunk_size=400, batch_images=5)
    assert base == run(chunk_size=400, batch_images=5)
    assert base == run(chunk_size=7, batch_images=1)
    assert base == run(chunk_size=13, batch_images=3)
    assert {b[0] for b in base} == {True, False}  # searches of different lengths were interleaved
    other = OnePixelDE(model, pop_size=24, max_iter=10, seed=8, device="cpu", dtype=torch.float64)(images, labels)
    assert [r.pixels.tolist() for r in other] != [b[4] for b in base]


def test_local_convnet_engine_matches_full_evaluation():
    model = _random_convnet()
    images = np.random.default_rng(2).random((2, 3, 100, 100)).astype(np.float32)
    with torch.no_grad():
        labels = model(torch.from_numpy(images))[0].argmax(1).numpy()

    def run(**kw):
        atk = OnePixelDE(model, pop_size=12, max_iter=2, device="cpu", dtype=torch.float64, success="top-class", **kw)
        res = atk(images, labels)
        return atk.last_evaluator, [(r.success, r.target, r.iterations, r.pixels.tolist(), r.values.tolist())
                                    for r in res]

    name, local = run(chunk_size=10)
    assert name == "LocalConvNetEvaluator"
    assert run(local=False, chunk_size=32, batch_images=1) == ("CandidateEvaluator", local)


def test_engine_reaches_the_decisions_of_the_published_loop():
    model = PixelModel(row=2, col=4, gain=12.0)
    images = flat_images(4, size=6) + np.random.default_rng(5).random((4, 3, 6, 6)).astype(np.float32) * 0.2
    engine = OnePixelDE(model, pop_size=20, max_iter=12, seed=3, device="cpu", dtype=torch.float64)(
        images, [0] * 4, targets=[2] * 4)
    loop = [reference_attack(model, images[i], 0, 2, pop_size=20, max_iter=12, seed=3, key=i, dtype=torch.float64)
            for i in range(4)]
    assert [(r.success, r.iterations) for r in engine] == [(r.success, r.iterations) for r in loop]
    assert {r.success for r in loop} == {True, False}  # both outcomes occur
    for e, r in zip(engine, loop):
        if r.success:  # the engine's first successful child is the loop's first successful member
            assert e.pixels.tolist() == r.pixels.tolist() and np.allclose(e.values, r.values)
            assert e.evaluations <= r.evaluations
        else:
            np.testing.assert_allclose(e.fitness, r.fitness, rtol=0, atol=1e-15)


def test_bf16_search_stays_close_and_its_successes_are_verified_in_float32():
    model = _random_convnet()
    images = torch.rand(2, 3, 100, 100, generator=torch.Generator().manual_seed(3))
    rng = np.random.default_rng(1)
    rows, cols = rng.integers(0, 100, (24, 1)), rng.integers(0, 100, (24, 1))
    slots, values = rng.integers(0, 2, 24), rng.random((24, 1, 3))
    full, _ = _evaluators(model, images, torch.float32)
    ref = full.evaluate(slots, rows, cols, values)
    for ev in _evaluators(model, images, torch.float32, bf16=True):
        p = ev.evaluate(slots, rows, cols, values)
        assert 0 < np.abs(p - ref).max() < 0.05  # bfloat16 rounding: close, not equal
    # the hand-built ConvNet: elliptical only with a bright pixel in rows/columns 16..31
    x = (0.45 + 0.1 * np.random.default_rng(4).random((3, 3, 100, 100))).astype(np.float32)
    with torch.no_grad():
        z1 = bright_pixel_convnet().embed(torch.from_numpy(x))[:, 1]
    model = bright_pixel_convnet(float(z1.median()))
    with torch.no_grad():
        labels = model(torch.from_numpy(x))[0].argmax(1).numpy()
    atk = OnePixelDE(model, pop_size=100, max_iter=6, bf16=True, device="cpu")
    results = atk(x, labels, targets=[1, 1, 1], return_images=True)
    assert any(r.success for r in results)
    for r in results:  # every claimed success holds for the float32 model
        if r.success:
            with torch.no_grad():
                p = torch.softmax(model(torch.from_numpy(r.image[None]))[0], 1)[0].numpy()
            assert p[r.target] > 0.5
            np.testing.assert_allclose(p, r.probabilities, atol=1e-5)
    assert atk.n_unverified == sum(r.rejected for r in results)


def test_bad_settings_are_refused():
    model = PixelModel()
    with pytest.raises(DeepAdvError, match="population"):
        OnePixelDE(model, pop_size=3)
    with pytest.raises(DeepAdvError, match="pixels"):
        OnePixelDE(model, pixels=0)
    with pytest.raises(DeepAdvError, match="mode"):
        OnePixelDE(model, mode="sideways")
    with pytest.raises(DeepAdvError, match="success"):
        OnePixelDE(model, success="often")
    with pytest.raises(DeepAdvError, match="targets"):
        OnePixelDE(model, device="cpu")(flat_images(1), [0], targets=[5])
