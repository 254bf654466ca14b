"""The attack engine (SPEC 7): the success rule, value ranges, the DE rules, the keep rule,
batching, determinism, and every claimed success re-checked by a plain forward pass."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

from deepadversaries.attacks.candidates import candidate_pixels, perturb
from deepadversaries.attacks.de import OnePixelDE, distinct_triples, reference_attack
from deepadversaries.attacks.evaluators import CandidateEvaluator, LocalConvNetEvaluator, optimized_for_inference
from deepadversaries.attacks.rules import is_success
from deepadversaries.attacks.values import ValueRange, input_range, make_value_range, physical_range
from deepadversaries.data.dataset import apply_stretch, invert_stretch
from deepadversaries.errors import OptionError
from deepadversaries.models.networks import build_model
from deepadversaries.simulation.survey import FULL_WELL_ELECTRONS

from attack_support import PixelModel, bright_pixel_case, check_claims, flat_images, plain_probabilities


pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
    res = atk.results(flat_images(1), [0], targets=[2])
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
    # float64: local and batched agree to rounding at every row and every column (both
    # orders, the diagonal too), and one plain forward pass per candidate on a sample
    model64 = model.double()
    full, local = _evaluators(model64, images.double(), torch.float64)
    diag = np.arange(100)[:, None]
    all_rows, all_cols = np.r_[rows, diag], np.r_[cols, diag]
    all_slots, all_values = np.r_[slots, rng.integers(0, 2, 100)], np.r_[values, rng.random((100, 1, 3))]
    np.testing.assert_allclose(local.evaluate(all_slots, all_rows, all_cols, all_values),
                               full.evaluate(all_slots, all_rows, all_cols, all_values), rtol=0, atol=1e-13)
    pick = np.r_[0:3, 97:100, rng.choice(np.arange(3, 97), 10, replace=False)]
    rows, cols, slots, values = rows[pick], cols[pick], slots[pick], values[pick]
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
    results = atk.results(images, [0, 0, 0], targets=[2, 2, 2], return_images=True)
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
    results = atk.results(images, [1, 1], return_images=True)
    assert all(r.success and r.target is None for r in results)
    assert all(r.probabilities[1] < 0.05 for r in results)
    check_claims(model, images, results, pixels=1, targeted=False)
    # a model that never gives any class p > 0.5: only the top-class rule can succeed
    # (target logit 1.25 v: above the true class's 1 for v > 0.8, yet p(target) <= 0.484)
    weak = PixelModel(row=5, col=2, true=1, target=0, gain=1.25, level=0.0)
    paper = OnePixelDE(weak, pop_size=40, max_iter=3, device="cpu").results(images[:1], [1], targets=[0])[0]
    top = OnePixelDE(weak, pop_size=60, max_iter=30, success="top-class", device="cpu").results(
        images[:1], [1], targets=[0])[0]
    assert not paper.success and paper.iterations == 3
    assert top.success and np.argmax(top.probabilities) == 0 and top.probabilities[0] < 0.5


def test_l_pixel_attack_needs_and_uses_two_pixels():
    # target needs v_A + v_B > 1.6 + 0.13: impossible with one pixel (at most 1 + 0.3)
    model = PixelModel(row=1, col=4, band=1, true=2, target=1, gain=10.0, level=1.6, second=(2, 5, 0))
    images = flat_images(2, size=6)
    one = OnePixelDE(model, pop_size=40, max_iter=5, device="cpu").results(images, [2, 2], targets=[1, 1])
    assert not any(r.success for r in one)
    atk = OnePixelDE(model, pop_size=100, max_iter=60, pixels=2, device="cpu")
    two = atk.results(images, [2, 2], targets=[1, 1], return_images=True)
    assert all(r.success for r in two)
    for r in two:
        assert r.pixels.shape == (2, 2) and r.values.shape == (2, 3)
        assert sorted(map(tuple, r.pixels.tolist())) == [(0, 5), (4, 1)]
    check_claims(model, images, two, pixels=2)


def test_targets_tried_in_turn_first_success_kept():
    model = PixelModel(row=3, col=4, true=0, target=2)  # class 1 cannot be reached
    res = OnePixelDE(model, pop_size=40, max_iter=20, device="cpu").results(flat_images(1, size=6), [0])[0]
    assert res.targets_tried == (1, 2) and res.target == 2 and res.success
    assert res.iterations_total == 20 + res.iterations


@pytest.mark.parametrize("keep", ["fittest", "first"])
def test_seeded_determinism_and_independence_from_batching(keep):
    model = PixelModel(row=2, col=4, gain=12.0)
    images = flat_images(5, size=8) + np.random.default_rng(0).random((5, 3, 8, 8)).astype(np.float32) * 0.1
    labels = [0] * 5

    def run(**kw):
        res = OnePixelDE(model, pop_size=24, max_iter=10, seed=7, device="cpu", dtype=torch.float64, keep=keep,
                         **kw).results(images, labels)
        return [(r.success, r.target, r.iterations, r.evaluations, r.pixels.tolist(), r.values.tolist(),
                 r.probabilities.tolist()) for r in res]

    base = run(chunk_size=400, batch_images=5)
    assert base == run(chunk_size=400, batch_images=5)
    assert base == run(chunk_size=7, batch_images=1)
    assert base == run(chunk_size=13, batch_images=3)
    assert {b[0] for b in base} == {True, False}  # searches of different lengths were interleaved
    other = OnePixelDE(model, pop_size=24, max_iter=10, seed=8, device="cpu", dtype=torch.float64).results(
        images, labels)
    assert [r.pixels.tolist() for r in other] != [b[4] for b in base]


def test_local_convnet_engine_matches_full_evaluation():
    model = _random_convnet()
    images = np.random.default_rng(2).random((2, 3, 100, 100)).astype(np.float32)
    with torch.no_grad():
        labels = model(torch.from_numpy(images))[0].argmax(1).numpy()

    def run(**kw):
        atk = OnePixelDE(model, pop_size=12, max_iter=2, device="cpu", dtype=torch.float64, success="top-class", **kw)
        res = atk.results(images, labels)
        return atk.last_evaluator, [(r.success, r.target, r.iterations, r.pixels.tolist(), r.values.tolist())
                                    for r in res]

    name, local = run(chunk_size=10)
    assert name == "LocalConvNetEvaluator"
    assert run(local=False, chunk_size=32, batch_images=1) == ("CandidateEvaluator", local)


@pytest.mark.parametrize("keep", ["fittest", "first"])
@pytest.mark.parametrize("target", [2, None])  # targeted (paper rule), untargeted (top-class rule)
def test_engine_reaches_the_decisions_of_the_published_loop(keep, target):
    model = PixelModel(row=2, col=4, gain=12.0 if target is not None else 40.0)
    images = flat_images(6, size=6) + np.random.default_rng(5).random((6, 3, 6, 6)).astype(np.float32) * 0.2
    success = "paper" if target is not None else "top-class"
    engine = OnePixelDE(model, pop_size=20, max_iter=12, seed=3, device="cpu", dtype=torch.float64, keep=keep,
                        chunk_size=7, batch_images=3, success=success,
                        mode="targeted" if target is not None else "untargeted"
                        ).results(images, [0] * 6, targets=None if target is None else [target] * 6)
    loop = [reference_attack(model, images[i], 0, target, pop_size=20, max_iter=12, seed=3, key=i,
                             dtype=torch.float64, keep=keep, success=success) for i in range(6)]
    assert {r.success for r in loop} == {True, False}  # both outcomes occur
    if target is None:  # some images succeed in the initial population: counted up to the first success
        assert any(r.success and r.iterations == 0 for r in loop)
    for e, r in zip(engine, loop):  # the same search, candidate for candidate
        assert (e.success, e.iterations, e.evaluations) == (r.success, r.iterations, r.evaluations)
        assert e.pixels.tolist() == r.pixels.tolist()
        np.testing.assert_allclose(e.values, r.values, rtol=0, atol=1e-15)
        np.testing.assert_allclose(e.probabilities, r.probabilities, rtol=0, atol=1e-15)
        assert e.fitness == pytest.approx(r.fitness, abs=1e-15)
        if r.success:
            assert e.queries_to_success == e.evaluations
            if target is not None:
                assert e.p_target == pytest.approx(r.probabilities[2], abs=1e-15) and e.p_target > 0.5
        else:
            assert e.queries_to_success is None
    if keep == "fittest":  # the whole success generation is evaluated
        assert all(r.evaluations % 20 == 0 for r in engine)


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
    x, model, labels = bright_pixel_case(3)
    atk = OnePixelDE(model, pop_size=100, max_iter=6, bf16=True, device="cpu")
    results = atk.results(x, labels, targets=[1, 1, 1], return_images=True)
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
    for kwargs, what in (({"pop_size": 3}, "population"), ({"pixels": 0}, "pixels"), ({"mode": "sideways"}, "mode"),
                         ({"success": "often"}, "success"), ({"keep": "best"}, "keep rule"),
                         ({"seed": -1}, "seed"), ({"chunk_size": 0}, "chunk"), ({"dtype": torch.float16}, "dtype"),
                         ({"value_range": (0, 1)}, "ValueRange")):
        with pytest.raises(OptionError, match=what):
            OnePixelDE(model, device="cpu", **kwargs)
    with pytest.raises(OptionError, match="targets"):
        OnePixelDE(model, device="cpu").results(flat_images(1), [0], targets=[5])
    with pytest.raises(OptionError, match="shape"):
        OnePixelDE(model, device="cpu").results(np.zeros((2, 10, 10), np.float32), [0, 0])
    with pytest.raises(OptionError, match="local evaluator"):
        OnePixelDE(model, device="cpu", local=True).results(flat_images(1), [0])


# --------------------------------------------------------------------------------------
# the success rule, the keep rule, value ranges
# --------------------------------------------------------------------------------------
def test_is_success_follows_the_rules_as_written():
    probs = np.array([[0.2, 0.5, 0.3], [0.2, 0.51, 0.29], [0.04, 0.5, 0.46], [0.049, 0.3, 0.651],
                      [0.4, 0.35, 0.25], [0.3, 0.3, 0.4]])
    for rule in ("paper", "top-class"):
        for label in range(3):
            for target in (None, 0, 1, 2):
                want = []
                for p in probs:  # the rules, one image at a time
                    if rule == "paper":
                        want.append(p[target] > 0.5 if target is not None else p[label] < 0.05)
                    else:
                        top = int(np.argmax(p))
                        want.append(top == target if target is not None else top != label)
                got = is_success(probs, label, target, rule)
                assert got.dtype == bool and got.tolist() == want
                assert [is_success(p, label, target, rule) for p in probs] == want
    with pytest.raises(OptionError, match="success rule"):
        is_success(probs, 0, 1, "sometimes")


def _plain_de(model, image, label, target, atk, key):
    """The DE search written out as a plain loop (one forward pass per candidate), from
    the engine's seeded draws (the DE rules, tested above): the success generation, the
    population after its selection, and the first successful child in index order."""
    rng = np.random.default_rng([atk.seed, key, target])
    h, w = image.shape[1:]

    def forward(cand):
        rows, cols, values = candidate_pixels(cand[None], h, w)
        return plain_probabilities(model, image, [((rows[0, 0], cols[0, 0]), values[0, 0])])

    pop = atk.initial_population(rng)
    p = np.stack([forward(c) for c in pop])
    ok = p[:, target] > 0.5
    first = (pop[np.argmax(ok)], p[np.argmax(ok)], int(np.argmax(ok)) + 1) if ok.any() else None
    generation, evaluations = 0, len(pop)
    while not (p[:, target] > 0.5).any() and generation < atk.max_iter:
        generation += 1
        kids = atk.next_generation(rng, pop)
        pk = np.stack([forward(c) for c in kids])
        for i in range(len(kids)):
            if first is None and pk[i, target] > 0.5 and pk[i, target] > p[i, target]:
                first = (kids[i], pk[i], evaluations + i + 1)
        better = pk[:, target] > p[:, target]
        pop, p = np.where(better[:, None, None], kids, pop), np.where(better[:, None], pk, p)
        evaluations += len(kids)
    successes = np.sort(p[p[:, target] > 0.5, target])[::-1]  # p(target) of the successful members
    best = int(np.argmax(p[:, target]))
    return generation, successes, (pop[best], p[best], evaluations), first


def test_keep_fittest_returns_the_population_argmax_and_first_the_first_success():
    model = PixelModel(row=1, col=2, gain=12.0)
    images = flat_images(6, size=4) + np.random.default_rng(1).random((6, 3, 4, 4)).astype(np.float32) * 0.2
    images = images.astype(np.float64)
    kw = {"pop_size": 40, "max_iter": 30, "seed": 2, "device": "cpu", "dtype": torch.float64, "chunk_size": 11,
          "batch_images": 2}
    fittest = OnePixelDE(model, keep="fittest", **kw).results(images, [0] * 6, targets=[2] * 6)
    first = OnePixelDE(model, keep="first", **kw).results(images, [0] * 6, targets=[2] * 6)
    atk = OnePixelDE(model, **kw)
    differ = 0
    for i in range(6):
        generation, successes, (best, p_best, n_all), (cand1, p1, n1) = _plain_de(model, images[i], 0, 2, atk, i)
        for res, (cand, p, n) in ((fittest[i], (best, p_best, n_all)), (first[i], (cand1, p1, n1))):
            rows, cols, values = candidate_pixels(cand[None], 4, 4)
            assert res.success and res.iterations == generation and res.evaluations == n
            assert res.pixels.tolist() == [[cols[0, 0], rows[0, 0]]]
            np.testing.assert_allclose(res.values, values[0], rtol=0, atol=1e-15)
            np.testing.assert_allclose(res.probabilities, p, rtol=0, atol=1e-12)
            assert res.p_target == pytest.approx(p[2], abs=1e-12)
        assert fittest[i].p_target >= first[i].p_target
        differ += len(successes) > 1 and fittest[i].p_target > first[i].p_target
    assert differ >= 1  # some success generation held several successes, and the rules kept different ones


@pytest.mark.parametrize(("fakes", "pop_size"), [(1, 40), (3, 100)])
def test_kept_members_the_plain_model_rejects_fall_back_to_the_next_fittest(fakes, pop_size):
    class Doubting(OnePixelDE):
        """Its 'plain model' rejects the first ``fakes`` successes it is asked to confirm."""

        asked = 0
        passes = 0

        def plain_probabilities_batch(self, image, pixels, values):
            probs = super().plain_probabilities_batch(image, pixels, values)
            for k in range(len(probs)):
                if self.asked + k < fakes:
                    probs[k] = [0.7, 0.0, 0.3]
            self.asked += len(probs)
            self.passes += 1
            return probs

    model = PixelModel(row=1, col=2, gain=12.0)
    images = flat_images(6, size=4) + np.random.default_rng(1).random((6, 3, 4, 4)).astype(np.float32) * 0.2
    images = images.astype(np.float64)
    kw = {"pop_size": pop_size, "max_iter": 30, "seed": 2, "device": "cpu", "dtype": torch.float64}
    seen = set()
    for i in range(6):
        generation, successes, *_ = _plain_de(model, images[i], 0, 2, OnePixelDE(model, **kw), i)
        atk = Doubting(model, **kw)
        res = atk.results(images[i:i + 1], [0], targets=[2], keys=[i], return_images=True)[0]
        assert res.success and res.rejected == fakes and atk.n_unverified == fakes
        check_claims(model, images[i:i + 1], [res], pixels=1)
        if len(successes) > fakes:  # the next fittest successful member of the same generation
            assert res.iterations == generation and res.p_target == pytest.approx(successes[fakes], abs=1e-12)
            assert atk.passes == {1: 2, 3: 3}[fakes]  # re-checked in blocks of 1, 2, 4 claims
        else:  # too few other successes in that generation: the search went on
            assert res.iterations > generation
        seen.add(len(successes) > fakes)
    assert True in seen


def test_value_ranges_input_and_physical():
    vr = input_range()
    u = np.random.default_rng(0).random((50, 3))
    np.testing.assert_array_equal(vr.to_values(u), u)  # the paper's range is the identity
    assert vr.corners().shape == (8, 3) and set(map(tuple, vr.corners())) == {
        (a, b, c) for a in (0.0, 1.0) for b in (0.0, 1.0) for c in (0.0, 1.0)}
    for lo, hi in ((-1166.5, 8893.5), (-50.0, 2.0e5), (3.0, 40.0)):  # hi below and above the full well
        phys = make_value_range("physical", partial(apply_stretch, lo=lo, hi=hi), partial(invert_stretch, hi=hi))
        assert phys.kind == "physical" and phys.electrons == (0.0, FULL_WELL_ELECTRONS)
        values = phys.to_values(np.r_[u, np.eye(3), np.zeros((1, 3)), np.ones((1, 3))]).astype(np.float32)
        electrons = invert_stretch(values, hi)
        assert electrons.max() <= FULL_WELL_ELECTRONS and electrons.min() >= 0.0
        assert electrons.max() <= max(hi, 0) * (1 + 1e-6)  # nothing beyond what the stretch expresses
        assert np.all(values >= np.float32(phys.low[0])) and np.all(values <= np.float32(phys.high[0]))
        # the ends are what a detector produces: zero electrons (or the clip floor) and the full well (or hi)
        assert phys.low[0] == pytest.approx(float(apply_stretch(np.float32(max(0.0, lo)), lo, hi)), abs=1e-7)
        assert phys.high[0] == pytest.approx(float(apply_stretch(np.float32(min(FULL_WELL_ELECTRONS, hi)), lo, hi)),
                                             abs=1e-7)
    assert phys.contains(np.array([[0.8, 0.8, 0.8], [0.99, 0.8, 0.8]])).tolist() == [True, False]
    with pytest.raises(OptionError, match="cannot express"):  # the whole [0, full well] lies below the clip floor
        physical_range(partial(apply_stretch, lo=2e5, hi=3e5), partial(invert_stretch, hi=3e5))
    with pytest.raises(OptionError, match="cannot express"):
        physical_range(partial(apply_stretch, lo=-5.0, hi=-1.0), partial(invert_stretch, hi=-1.0))
    with pytest.raises(OptionError, match="full well"):
        physical_range(partial(apply_stretch, lo=0.0, hi=1.0), partial(invert_stretch, hi=1.0), full_well=0)
    with pytest.raises(OptionError, match="value range"):
        make_value_range("anything")
    with pytest.raises(OptionError, match="stretch"):
        make_value_range("physical")
    with pytest.raises(OptionError, match="empty"):
        ValueRange("input", (0.5, 0.5, 0.5), (0.5, 0.9, 0.9))


def test_de_values_stay_inside_the_value_range_and_successes_hold():
    vr = ValueRange("physical", (0.5,) * 3, (0.8856,) * 3)
    model = PixelModel(row=3, col=7, true=0, target=2, level=0.8, gain=40.0)  # needs v > 0.833: inside the range
    images = flat_images(3)
    atk = OnePixelDE(model, pop_size=60, max_iter=30, device="cpu", value_range=vr)
    results = atk.results(images, [0, 0, 0], targets=[2, 2, 2], return_images=True)
    assert all(r.success for r in results)
    for r in results:
        assert r.pixels.tolist() == [[7, 3]] and np.all(r.values >= 0.5) and np.all(r.values <= 0.8856)
    check_claims(model, images, results, pixels=1, low=0.5, high=0.8856)
    pop = atk.initial_population(np.random.default_rng(0))
    _, _, values = candidate_pixels(pop, 10, 10, vr)
    assert values.min() == 0.5 and values.max() == 0.8856  # clip(N(0.5, 0.5)) hits both ends
    # a target out of reach inside the range: the paper's [0, 1] flips it, the physical range cannot
    high = PixelModel(row=3, col=7, true=0, target=2, level=0.9, gain=40.0)  # needs v > 0.933
    assert not OnePixelDE(high, pop_size=60, max_iter=10, device="cpu", value_range=vr).results(
        images[:1], [0], [2])[0].success
    assert OnePixelDE(high, pop_size=60, max_iter=30, device="cpu").results(images[:1], [0], [2])[0].success
