"""Latent-space analysis: distances, JS distance, church windows, isomaps, the stage and its CLI.

The numbers are checked against references written here (norms and the JS distance by hand,
an Isomap built from a hand graph-shortest-path and classical MDS) on the files of real
attack campaigns: the toy campaign (hand-built models that one pixel flips,
tests/campaign_support.py) and the tiny campaign (real three-epoch trainings, which one
pixel does not flip).
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from campaign_support import LATENT_SCALE, write_run
from tolerances import gamma, linear_error
from PIL import Image

from deepadversaries import CLASSES
from deepadversaries.analysis.latent import (
    IsomapEmbedding,
    church_window_grid,
    church_window_loop,
    distance_tables,
    grid_coordinates,
    isomap_embedding,
    isomap_projection,
    isomap_sample_indices,
    js_distance,
    paired_distances,
    summarize,
)
from deepadversaries.analysis.analyze import (
    ANALYZE_PRESETS,
    AttackData,
    analyze_runs,
    check_comparable,
    choose_examples,
    load_attack,
)
from deepadversaries.cli import main
from deepadversaries.config import TrainConfig
from deepadversaries.data.dataset import load_dataset
from deepadversaries.errors import DeepAdvError, OptionError
from deepadversaries.models.runs import RunConfig, read_run_config

STRETCH_SCALE = 0.85  # SPEC 3.5: (arcsinh(0.85 x / p99.9) + 1) / 2


# ---------------------------------------------------------------------------------------------
# references written here
# ---------------------------------------------------------------------------------------------
def norm_by_hand(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distance of each row pair, as a sum of squares in float64."""
    return np.array([math.sqrt(sum((float(x) - float(y)) ** 2 for x, y in zip(ra, rb))) for ra, rb in zip(a, b)])


def js_by_hand(p: list[float], q: list[float]) -> float:
    """Jensen-Shannon distance, base 2: sqrt((KL(P||M) + KL(Q||M)) / 2) with M = (P + Q) / 2."""
    m = [(a + b) / 2 for a, b in zip(p, q)]
    kl_p = sum(a * math.log2(a / c) for a, c in zip(p, m) if a > 0)
    kl_q = sum(b * math.log2(b / c) for b, c in zip(q, m) if b > 0)
    return math.sqrt((kl_p + kl_q) / 2)


def histogram_by_hand(values: np.ndarray, edges: np.ndarray) -> list[float]:
    """Fractions per bin; bins half-open [a, b) except the last, which is closed (numpy's rule)."""
    counts = [0] * (len(edges) - 1)
    for v in values:
        for k in range(len(edges) - 1):
            last = k == len(edges) - 2
            if edges[k] <= v < edges[k + 1] or (last and v == edges[k + 1]):
                counts[k] += 1
                break
    return [c / len(values) for c in counts]


def stretched(raw: np.ndarray, hi: float, lo: float) -> np.ndarray:
    x = np.clip(raw.astype(np.float32), lo, hi)
    return ((np.arcsinh(STRETCH_SCALE * x / np.float32(hi)) + 1) / 2).astype(np.float32)


def read_results(run: Path) -> list[dict[str, str]]:
    with open(run / "attack" / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def flipped_under_both_by_hand(a: Path, b: Path) -> list[int]:
    flipped = [{int(r["test_index"]) for r in read_results(run) if r["success"] == "True"} for run in (a, b)]
    return sorted(flipped[0] & flipped[1])


# ---------------------------------------------------------------------------------------------
# the campaign's latents
# ---------------------------------------------------------------------------------------------
def test_campaign_latents_are_the_models_latents(toy_campaign):
    """latents.npz holds each model's z of the stretched Y10 and Y1 test images, in results.csv order."""
    ds = load_dataset(toy_campaign["data"])
    for method in ("regular", "mmd"):
        run, model = toy_campaign[method], toy_campaign["models"][method]
        index = np.array([int(r["test_index"]) for r in read_results(run)])
        lat = np.load(run / "attack" / "latents.npz")
        assert lat["test_index"].tolist() == index.tolist()
        for domain, key in (("Y10", "z_y10"), ("Y1", "z_y1")):
            lo, hi = ds.stretch(domain)
            x = stretched(np.asarray(ds.images(domain, "test", stretched=False))[index], hi, lo)
            with torch.no_grad():
                h = torch.flatten(model.features(torch.from_numpy(x)), 1)
                z = model.bottleneck(h).numpy()
            # the hand-set features are exact; the bottleneck's sums may run in another order in the
            # campaign's batches: two float32 evaluations, twice the bound of one (tests/tolerances.py)
            weight, bias = (t.detach().double().numpy() for t in (model.bottleneck.weight, model.bottleneck.bias))
            assert np.all(np.abs(lat[key] - z) <= 2 * linear_error(weight, bias, h.double().numpy())), key


EPS32, EPS64 = float(np.finfo(np.float32).eps), float(np.finfo(np.float64).eps)


def scaling_gaps(paired, reg, ada, attr: str) -> np.ndarray:
    """Per image flipped under both, ||z_mmd - LATENT_SCALE z_reg|| (float64) of one latent kind.

    The toy mmd model is the regular one with its bottleneck scaled by 2 (exact in float32), so
    the gap is only the rounding of the bottleneck's dot products, summed in another order when
    the two runs' batches or the CPU's GEMM kernels differ: at most 3 gamma_K |z| per entry
    (Higham's bound, K = the bottleneck's fan-in; its terms here are non-negative).
    """
    a = getattr(reg, attr)[paired.rows["regular"]].astype(np.float64)
    b = getattr(ada, attr)[paired.rows["mmd"]].astype(np.float64)
    return np.linalg.norm(b - LATENT_SCALE * a, axis=1)


def logit_distance_bound(models, z_reg: tuple[np.ndarray, np.ndarray], z_mmd: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Per image, a bound on |d_logit(mmd) - d_logit(regular)| between the logits of two latents each.

    Exactly, the mmd head gives the regular head's logits plus (W_mmd) gap plus one constant shift
    (the biases, which no distance sees); in float32 each head adds at most its rounding
    (tests/tolerances.py linear_error). By the triangle inequality the distances differ by at most
    the sum of those over the two latents of the pair.
    """
    (w_m, b_m), (w_r, b_r) = ((models[m].output.weight.detach().double().numpy(),
                               models[m].output.bias.detach().double().numpy()) for m in ("mmd", "regular"))
    fan_in = models["mmd"].bottleneck.in_features
    total = 0.0
    for zr, zm in zip(z_reg, z_mmd):
        zr, zm = zr.astype(np.float64), zm.astype(np.float64)
        gap = np.linalg.norm(zm - LATENT_SCALE * zr, axis=1)
        assert np.all(gap <= 3 * gamma(fan_in) * np.linalg.norm(zm, axis=1))  # the toy relation holds
        total = total + np.linalg.norm(w_m, 2) * gap + np.linalg.norm(linear_error(w_m, b_m, zm), axis=1) \
            + np.linalg.norm(linear_error(w_r, b_r, zr), axis=1)
    return total


def test_distances_on_the_images_flipped_under_both(toy_campaign):
    reg, ada = load_attack(toy_campaign["regular"]), load_attack(toy_campaign["mmd"])
    paired = paired_distances({"regular": reg, "mmd": ada})
    expected = flipped_under_both_by_hand(toy_campaign["regular"], toy_campaign["mmd"])
    assert len(expected) >= 5, "the toy campaign must flip several images under both runs"
    assert paired.methods == ("regular", "mmd")
    assert paired.test_index.tolist() == expected
    for method, data in (("regular", reg), ("mmd", ada)):
        rows = [data.test_index.tolist().index(t) for t in expected]
        assert paired.rows[method].tolist() == rows
        np.testing.assert_allclose(paired.distances[method]["Y10-Y1"], norm_by_hand(data.z_y10[rows], data.z_y1[rows]),
                                   rtol=1e-6)
        np.testing.assert_allclose(paired.distances[method]["Y10-1P"], norm_by_hand(data.z_y10[rows], data.z_1p[rows]),
                                   rtol=1e-6)
        # each run's spread: its median ||z(Y10) - mean z(Y10)|| over the images attacked under both runs
        attacked = sorted(set(reg.test_index.tolist()) & set(ada.test_index.tolist()))
        z = [[float(v) for v in data.z_y10[data.test_index.tolist().index(t)]] for t in attacked]
        centre = [sum(col) / len(z) for col in zip(*z)]
        spreads = [math.sqrt(sum((v - c) ** 2 for v, c in zip(row, centre))) for row in z]
        assert paired.spread[method] == pytest.approx(float(np.median(spreads)), rel=1e-6)
        np.testing.assert_allclose(paired.values(method, "Y10-1P", "spread"),
                                   paired.distances[method]["Y10-1P"] / paired.spread[method], rtol=1e-6)
        assert np.isnan(paired.logit[method]["Y10-1P"]).all()  # no heads given: not measured
    # the mmd toy model is the regular one with its latent space scaled by 2, up to float32 rounding
    # of the bottleneck (the gaps; a distance between close latents cancels, so no fixed rtol holds on
    # every CPU: 2.2e-5 was seen). The comparisons are bounded by the measured gaps (triangle inequality).
    fan_in = toy_campaign["models"]["mmd"].bottleneck.in_features
    gamma = fan_in * EPS32 / 2 / (1 - fan_in * EPS32 / 2)
    gaps = {attr: scaling_gaps(paired, reg, ada, attr) for attr in ("z_y10", "z_y1")}
    for attr, gap in gaps.items():
        assert np.all(gap <= 3 * gamma * np.linalg.norm(getattr(ada, attr)[paired.rows["mmd"]], axis=1)), attr
    d_reg, d_mmd = paired.distances["regular"]["Y10-Y1"], paired.distances["mmd"]["Y10-Y1"]
    f64 = 4 * fan_in * EPS64 * (d_mmd + LATENT_SCALE * d_reg)  # the float64 norms on top
    assert np.all(np.abs(d_mmd - LATENT_SCALE * d_reg) <= gaps["z_y10"] + gaps["z_y1"] + f64)
    # ... so on the scale-free axes (divided by the spread over the same images, or between the logits)
    # they are equal. The spread (a median of ||z - mean z|| over the images attacked under both) moves
    # by at most twice the largest gap over those images (+ the float64 means and norms).
    attacked = sorted(set(reg.test_index.tolist()) & set(ada.test_index.tolist()))
    z_reg = reg.z_y10[[reg.test_index.tolist().index(t) for t in attacked]].astype(np.float64)
    z_mmd = ada.z_y10[[ada.test_index.tolist().index(t) for t in attacked]].astype(np.float64)
    assert np.all(np.abs(z_mmd - LATENT_SCALE * z_reg) <= 3 * gamma * np.abs(z_mmd).sum(axis=1, keepdims=True))
    spread_gap = (2 * np.linalg.norm(z_mmd - LATENT_SCALE * z_reg, axis=1).max()
                  + 8 * (len(attacked) + z_mmd.shape[1]) * EPS64 * np.linalg.norm(z_mmd, axis=1).max())
    s_reg, s_mmd = paired.spread["regular"], paired.spread["mmd"]
    assert abs(s_mmd - LATENT_SCALE * s_reg) <= spread_gap
    # |d1/s1 - d0/s0| <= (|d1 - 2 d0| + (d0/s0)|s1 - 2 s0|) / s1 with s1 = spread of mmd
    bound = (gaps["z_y10"] + gaps["z_y1"] + f64 + d_reg / s_reg * spread_gap) / s_mmd
    assert np.all(np.abs(paired.values("mmd", "Y10-Y1", "spread") - paired.values("regular", "Y10-Y1", "spread"))
                  <= bound + 4 * EPS64 * d_mmd / s_mmd)
    models = toy_campaign["models"]
    heads = {m: (lambda z, model=models[m]: model.head(torch.as_tensor(z)).detach().numpy()) for m in models}
    with_heads = paired_distances({"regular": reg, "mmd": ada}, heads)
    for pert in ("Y10-Y1", "Y10-1P"):
        # the logits of the two models differ by their biases (the toy runs' splits: one shift, which no
        # distance sees), W_mmd @ gap and the head's own rounding (K = 256 terms): bounded per image,
        # then the distances by the triangle inequality as above
        def logit_gap(attr, model_out=models["mmd"].output):
            bias_shift = (model_out.bias - models["regular"].output.bias).detach().double().numpy()
            l_reg = heads["regular"](getattr(reg, attr)[with_heads.rows["regular"]]).astype(np.float64) + bias_shift
            z = getattr(ada, attr)[with_heads.rows["mmd"]]
            l_mmd = heads["mmd"](z).astype(np.float64)
            w, b = model_out.weight.detach().double().numpy(), model_out.bias.detach().double().numpy()
            k = model_out.in_features
            g = k * EPS32 / 2 / (1 - k * EPS32 / 2)
            z_gap = np.linalg.norm(z.astype(np.float64) - LATENT_SCALE * getattr(reg, attr)[with_heads.rows["regular"]],
                                   axis=1)
            magnitude = np.abs(z.astype(np.float64)) @ np.abs(w).T + np.abs(b)
            allowed = np.linalg.norm(w, 2) * z_gap / LATENT_SCALE + 3 * g * np.linalg.norm(magnitude, axis=1)
            gap = np.linalg.norm(l_mmd - l_reg, axis=1)
            assert np.all(gap <= allowed), attr
            return gap
        other_attr = "z_y1" if pert == "Y10-Y1" else "z_1p"
        dl_reg, dl_mmd = with_heads.logit["regular"][pert], with_heads.logit["mmd"][pert]
        assert np.all(np.abs(dl_mmd - dl_reg) <= logit_gap("z_y10") + logit_gap(other_attr)
                      + 8 * EPS64 * (dl_mmd + dl_reg))
        for method, data in (("regular", reg), ("mmd", ada)):
            rows = with_heads.rows[method]
            other = data.z_y1 if pert == "Y10-Y1" else data.z_1p
            by_hand = norm_by_hand(heads[method](data.z_y10[rows]), heads[method](other[rows]))
            np.testing.assert_allclose(with_heads.logit[method][pert], by_hand, rtol=1e-4, atol=1e-6)  # float32


def test_distance_tables_and_ratios(toy_campaign):
    reg, ada = load_attack(toy_campaign["regular"]), load_attack(toy_campaign["mmd"])
    paired = paired_distances({"regular": reg, "mmd": ada})
    tables = distance_tables(paired)
    for scale in ("latent", "spread"):
        for pert in ("Y10-Y1", "Y10-1P"):
            row = tables[scale][pert]
            a, b = paired.values("regular", pert, scale), paired.values("mmd", pert, scale)
            assert row["regular"]["median"] == pytest.approx(float(np.median(a)))
            assert row["mmd"]["mean"] == pytest.approx(sum(b) / len(b))
            assert row["ratio_median"] == pytest.approx(float(np.median(b) / np.median(a)))
            assert row["ratio_mean"] == pytest.approx(float(np.mean(b) / np.mean(a)))
            edges = np.histogram_bin_edges(np.concatenate([a, b]), bins="auto")
            assert row["js_bins"] == len(edges) - 1 and row["js_base"] == 2
            assert row["js_distance"] == pytest.approx(js_by_hand(histogram_by_hand(a, edges),
                                                                  histogram_by_hand(b, edges)), abs=1e-12)
    # the medians move by at most the largest per-image bound of the test above (float32 latents)
    d_reg = paired.distances["regular"]["Y10-Y1"]
    worst = (scaling_gaps(paired, reg, ada, "z_y10") + scaling_gaps(paired, reg, ada, "z_y1")).max()
    median_reg = float(np.median(d_reg))
    assert abs(tables["latent"]["Y10-Y1"]["ratio_median"] - LATENT_SCALE) <= \
        (worst + 1e3 * EPS64 * LATENT_SCALE * median_reg) / median_reg


def test_summary_standard_error_is_the_population_std_over_sqrt_n():
    v = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]  # population std exactly 2
    s = summarize(v)
    assert (s["n"], s["median"], s["mean"], s["std"]) == (8, 4.5, 5.0, 2.0)
    assert s["stderr"] == pytest.approx(2.0 / math.sqrt(8))
    empty = summarize([])
    assert empty["n"] == 0 and math.isnan(empty["median"]) and math.isnan(empty["stderr"])


def test_js_distance_by_hand():
    rng = np.random.default_rng(0)
    a, b = rng.normal(10, 2, 120), rng.normal(13, 3, 90)
    res = js_distance(a, b)
    edges = np.histogram_bin_edges(np.concatenate([a, b]), bins="auto")
    np.testing.assert_allclose(res.edges, edges)
    p, q = histogram_by_hand(a, edges), histogram_by_hand(b, edges)
    np.testing.assert_allclose(res.p, p, atol=1e-15)
    np.testing.assert_allclose(res.q, q, atol=1e-15)
    assert res.distance == pytest.approx(js_by_hand(p, q), abs=1e-12) and res.base == 2
    assert js_distance(b, a).distance == pytest.approx(res.distance, abs=1e-15)  # symmetric
    assert js_distance(a, a).distance == pytest.approx(0.0, abs=1e-7)
    assert js_distance(np.zeros(5), np.full(5, 10.0)).distance == pytest.approx(1.0)  # disjoint: 1 in base 2
    # two bins, P = (1, 0), Q = (1/2, 1/2), M = (3/4, 1/4), written out
    two = js_distance([0.0, 0.1, 0.2, 0.3], [0.0, 0.1, 0.9, 1.0], bins=2)
    assert two.p.tolist() == [1.0, 0.0] and two.q.tolist() == [0.5, 0.5]
    m = (0.75, 0.25)
    expected = math.sqrt((1.0 * math.log2(1 / m[0]) + 0.5 * math.log2(0.5 / m[0]) + 0.5 * math.log2(0.5 / m[1])) / 2)
    assert two.distance == pytest.approx(expected, abs=1e-12)
    assert math.isnan(js_distance(a, []).distance)


# ---------------------------------------------------------------------------------------------
# church windows
# ---------------------------------------------------------------------------------------------
def test_grid_is_221_points_with_exact_landmarks():
    g = grid_coordinates()
    assert len(g) == 221 and g[0] == -1.1 and g[-1] == 1.1
    assert g[110] == 0.0 and g[210] == 1.0
    np.testing.assert_allclose(np.diff(g), 0.01)


def test_church_window_axes_on_a_known_head():
    """Linear head whose classes at z0, z1p and zy1 are 0, 1, 2: the axes cannot be swapped unnoticed."""
    head = torch.nn.Linear(2, 3)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
        head.bias.copy_(torch.tensor([0.5, 0.0, 0.0]))
    z0, z1p, zy1 = np.zeros(2), np.array([1.0, 0.0]), np.array([0.0, 1.0])
    w = church_window_grid(head, z0, zy1, z1p)
    assert w.classes.shape == (221, 221)
    assert (w.class_at(0, 0), w.class_at(1, 0), w.class_at(0, 1)) == (0, 1, 2)
    assert w.class_at(-1, -1) == 0 and w.class_at(1.0, 0.4) == 1 and w.class_at(0.4, 1.0) == 2
    # the class regions by hand: class 1 where a > 0.5 and a > b, class 2 where b > 0.5 and b > a
    g = grid_coordinates()
    a, b = np.meshgrid(g, g)  # rows: beta, columns: alpha
    hand = np.where((a > 0.5) & (a >= b), 1, np.where((b > 0.5) & (b > a), 2, 0))
    agree = (w.classes == hand) | np.isclose(np.maximum(a, b), 0.5) | np.isclose(a, b)
    assert agree.all()
    assert w.fractions() == pytest.approx([float((w.classes == c).mean()) for c in range(3)])


def test_church_window_landmarks_are_the_campaigns_predictions(toy_campaign):
    """At (0, 0), (1, 0) and (0, 1) the window has the model's class of the Y10, 1P and Y1 images."""
    for method in ("regular", "mmd"):
        data = load_attack(toy_campaign[method])
        model = toy_campaign["models"][method]
        rows = read_results(toy_campaign[method])
        for k, r in enumerate(rows[:6]):
            w = church_window_grid(model.head, data.z_y10[k], data.z_y1[k], data.z_1p[k])
            assert CLASSES[w.class_at(0, 0)] == r["true"] == r["predicted"]  # only correct images are attacked
            p1p = [float(r[f"p_{c}"]) for c in CLASSES]
            assert w.class_at(1, 0) == int(np.argmax(p1p))
            with torch.no_grad():
                assert w.class_at(0, 1) == int(model.output(torch.from_numpy(data.z_y1[k][None])).argmax())


def test_batched_grid_equals_the_per_point_loop(toy_campaign):
    data = load_attack(toy_campaign["mmd"])
    model = toy_campaign["models"]["mmd"]
    coords = grid_coordinates()
    pick = coords[::20]  # 12 x 12 points spread over the window
    for row in (0, 3):
        z = (data.z_y10[row], data.z_y1[row], data.z_1p[row])
        batched = church_window_grid(model.head, *z)
        loop = church_window_loop(model.head, *z, alphas=pick, betas=pick)
        idx = np.searchsorted(coords, pick)
        np.testing.assert_array_equal(batched.classes[np.ix_(idx, idx)], loop.classes)


# ---------------------------------------------------------------------------------------------
# isomaps
# ---------------------------------------------------------------------------------------------
def isomap_by_hand(x: np.ndarray, k: int, d: int) -> np.ndarray:
    """k-nearest-neighbour graph (symmetrised), Floyd-Warshall geodesics, classical MDS."""
    n = len(x)
    euclid = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    graph = np.full((n, n), np.inf)
    np.fill_diagonal(graph, 0.0)
    for i in range(n):
        for j in np.argsort(euclid[i], kind="stable")[1:k + 1]:
            graph[i, j] = graph[j, i] = euclid[i, j]
    for m in range(n):
        graph = np.minimum(graph, graph[:, m:m + 1] + graph[m:m + 1, :])
    h = np.eye(n) - np.ones((n, n)) / n
    b = -0.5 * h @ (graph**2) @ h
    values, vectors = np.linalg.eigh(b)
    top = np.argsort(values)[::-1][:d]
    return vectors[:, top] * np.sqrt(np.maximum(values[top], 0.0))


def pairwise(y: np.ndarray) -> np.ndarray:
    return np.sqrt(((y[:, None, :] - y[None, :, :]) ** 2).sum(-1))


def test_isomap_equals_a_hand_geodesic_mds():
    rng = np.random.default_rng(1)
    t = np.sort(rng.uniform(0, 1.5 * np.pi, 25))  # a noisy spiral arc in 5-D: the graph is connected
    x = np.c_[np.cos(t) * (1 + t), np.sin(t) * (1 + t), 0.3 * t, rng.normal(0, 0.05, (25, 2))]
    ours = isomap_projection(x, 2, n_neighbors=5)
    hand = isomap_by_hand(x, 5, 2)
    assert ours.shape == (25, 2)
    # the same embedding up to a rotation or reflection: the same pairwise distances
    np.testing.assert_allclose(pairwise(ours), pairwise(hand), atol=1e-8)


def test_isomap_unrolls_a_line_and_a_circle_arc():
    steps = np.arange(12, dtype=float)
    line = np.c_[steps, 2 * steps, -steps] / np.sqrt(6)  # unit spacing along a direction in 3-D
    y = isomap_projection(line, 2, n_neighbors=3)
    np.testing.assert_allclose(pairwise(y), np.abs(steps[:, None] - steps[None, :]), atol=1e-8)
    # points on a half circle: the first axis unrolls the arc, in order, as the hand geodesic MDS does
    angle = np.linspace(0, np.pi, 30)
    arc = np.c_[np.cos(angle), np.sin(angle), np.zeros(30)]
    y = isomap_projection(arc, 2, n_neighbors=2)
    np.testing.assert_allclose(pairwise(y), pairwise(isomap_by_hand(arc, 2, 2)), atol=1e-8)
    first = y[:, 0] * np.sign(y[-1, 0] - y[0, 0])
    assert (np.diff(first) > 0).all()
    chord = 2 * np.sin((angle[1] - angle[0]) / 2)
    assert first[-1] - first[0] == pytest.approx(29 * chord, rel=0.02)  # close to the arc length, not the diameter


def test_isomap_embedding_stacks_the_sample_and_the_triplets():
    rng = np.random.default_rng(1)
    z10, z1 = rng.normal(size=(40, 16)), rng.normal(0.5, 1.0, size=(40, 16))
    trip = [{"z_y10": z10[0], "z_y1": z1[0], "z_1p": z10[0] + 0.1, "pred_y10": 0, "pred_y1": 1, "pred_1p": 2}, None]
    e1 = isomap_embedding(z10, z1, np.zeros(40, int), np.ones(40, int), trip, n_components=3)
    e2 = isomap_embedding(z10, z1, np.zeros(40, int), np.ones(40, int), trip, n_components=3)
    assert isinstance(e1, IsomapEmbedding) and e1.coords.shape == (83, 3)
    np.testing.assert_array_equal(e1.coords, e2.coords)
    assert e1.select("triplet-1P", 0).sum() == 1 and e1.select("triplet-Y10", 1).sum() == 0
    assert e1.predicted[e1.select("triplet-1P", 0)].tolist() == [2]
    stacked = np.concatenate([z10, z1, [z10[0], z1[0], z10[0] + 0.1]])
    np.testing.assert_allclose(pairwise(e1.coords), pairwise(isomap_by_hand(stacked, 5, 3)), atol=1e-7)
    with pytest.raises(OptionError, match="at least 4"):
        isomap_projection(stacked[:3], 2)


def test_isomap_sample_is_deterministic_for_a_seed():
    a, b, c = isomap_sample_indices(500, 250, 7), isomap_sample_indices(500, 250, 7), isomap_sample_indices(500, 250, 8)
    assert len(a) == 250 and len(np.unique(a)) == 250 and a.max() < 500 and (np.diff(a) > 0).all()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len(isomap_sample_indices(20, 250, 0)) == 20


# ---------------------------------------------------------------------------------------------
# examples and comparability
# ---------------------------------------------------------------------------------------------
def _attack_data(method: str, test_index, success, true) -> AttackData:
    n = len(test_index)
    z = np.zeros((n, 4), np.float32)
    config = RunConfig(train=TrainConfig(method=method, preset="tiny"), data="/data")
    return AttackData(run=Path(method), config=config, test_index=np.asarray(test_index), z_y10=z, z_y1=z, z_1p=z,
                      success=np.asarray(success, bool), true=list(true), target=[None] * n,
                      galaxy_id=[""] * n, iterations=[""] * n)


def test_examples_prefer_images_flipped_under_both_and_vary_the_class():
    reg = _attack_data("regular", [0, 1, 2, 3, 4, 5], [1, 1, 1, 1, 0, 1], [0, 0, 1, 2, 0, 2])
    ada = _attack_data("mmd", [0, 1, 2, 3, 4, 6], [1, 0, 1, 1, 1, 1], [0, 0, 1, 2, 0, 1])
    chosen = choose_examples(reg, ada, 3, seed=0)
    assert sorted(e.test_index for e in chosen) == [0, 2, 3]  # flipped under both, one of each class
    assert all(e.flipped_under_both for e in chosen)
    assert chosen[0].rows == {"regular": reg.row(chosen[0].test_index), "mmd": ada.row(chosen[0].test_index)}
    more = choose_examples(reg, ada, 5, seed=0)
    assert sorted(e.status for e in more[3:]) == ["flipped under mmd only", "flipped under regular only"]
    assert choose_examples(reg, ada, 5, seed=0) == more  # deterministic for a seed


def test_runs_are_comparable_only_with_the_same_model_data_and_different_methods():
    def config(model="convnet", method="regular", data="/data"):
        return RunConfig(train=TrainConfig(model=model, method=method, preset="tiny"), data=data)

    check_comparable(config(), config(method="mmd"), Path("r"), Path("a"))
    for other, words in ((config(model="resnet18", method="mmd"), "model"), (config(method="mmd", data="/else"),
                                                                            "dataset"),
                         (config(), "both runs were trained with method 'regular'")):
        with pytest.raises(OptionError, match=words):
            check_comparable(config(), other, Path("r"), Path("a"))


# ---------------------------------------------------------------------------------------------
# the whole analysis of the toy campaign
# ---------------------------------------------------------------------------------------------
FILES = ("distances.csv", "distances.md", "distances_per_image.csv", "attacked_per_image.csv", "fig3_church_isomap.png",
         "fig4_isomap3d.png", "fig5_church_windows.png", "fig6_distances.png", "isomap3d_regular.gif",
         "isomap3d_mmd.gif", "analysis.json")


def test_analyze_writes_every_file_and_the_marker_last(toy_analysis, toy_campaign):
    out, result = toy_analysis["out"], toy_analysis["result"]
    for name in FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    marker = (out / "analysis.json").stat().st_mtime_ns
    assert all((out / n).stat().st_mtime_ns <= marker for n in FILES)
    assert not list(out.glob("*.tmp-*"))
    stored = json.loads((out / "analysis.json").read_text())
    assert stored["methods"] == ["regular", "mmd"] and result["methods"] == ["regular", "mmd"]
    assert stored["runs"] == {m: str(toy_campaign[m]) for m in ("regular", "mmd")}
    assert stored["n_flipped_both"] == len(flipped_under_both_by_hand(toy_campaign["regular"], toy_campaign["mmd"]))
    for method in ("regular", "mmd"):
        rows = read_results(toy_campaign[method])
        assert stored["attack"][method]["n_attacked"] == len(rows)
        assert stored["attack"][method]["n_flipped"] == sum(r["success"] == "True" for r in rows)


def test_figures_have_the_stated_size_and_resolution(toy_analysis):
    out, result = toy_analysis["out"], toy_analysis["result"]
    assert set(result["figures"]) == {"fig3", "fig4", "fig5", "fig6", "gif_regular", "gif_mmd"}
    for key, fig in result["figures"].items():
        with Image.open(out / fig["file"]) as im:
            assert (im.width, im.height) == (fig["width_px"], fig["height_px"]), key
            if fig["file"].endswith(".png"):
                assert im.info["dpi"][0] == pytest.approx(fig["dpi"], abs=0.5)
                assert fig["dpi"] >= 150 and im.width >= 1000
            else:
                assert getattr(im, "n_frames", 1) == fig["frames"] == ANALYZE_PRESETS["tiny"]["gif_frames"]


def test_distance_files_agree_with_the_latents(toy_analysis, toy_campaign):
    """distances.csv / distances_per_image.csv / distances.md against norms and JS computed here."""
    out = toy_analysis["out"]
    both = flipped_under_both_by_hand(toy_campaign["regular"], toy_campaign["mmd"])
    lat = {m: np.load(toy_campaign[m] / "attack" / "latents.npz") for m in ("regular", "mmd")}
    with open(out / "distances_per_image.csv") as fh:
        per_image = list(csv.DictReader(fh))
    with open(out / "distances.csv") as fh:
        table = {(r["perturbation"], r["method"], r["scale"]): r for r in csv.DictReader(fh)}
    assert [int(r["test_index"]) for r in per_image] == both
    values: dict[tuple[str, str], np.ndarray] = {}
    for method in ("regular", "mmd"):
        rows = [lat[method]["test_index"].tolist().index(t) for t in both]
        z10 = lat[method]["z_y10"]
        values["Y10-Y1", method] = norm_by_hand(z10[rows], lat[method]["z_y1"][rows])
        values["Y10-1P", method] = norm_by_hand(z10[rows], lat[method]["z_1p"][rows])
        for pert, col in (("Y10-Y1", "d_y10_y1"), ("Y10-1P", "d_y10_1p")):
            np.testing.assert_allclose([float(r[f"{col}_{method}"]) for r in per_image], values[pert, method],
                                       rtol=1e-6)
    for pert in ("Y10-Y1", "Y10-1P"):
        for method in ("regular", "mmd"):
            row = table[(pert, method, "latent")]
            v = sorted(values[pert, method])
            n = len(v)
            median = v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2
            mean = sum(v) / n
            std = math.sqrt(sum((x - mean) ** 2 for x in v) / n)
            assert int(row["n"]) == n
            assert float(row["median"]) == pytest.approx(median, rel=1e-6)
            assert float(row["mean"]) == pytest.approx(mean, rel=1e-6)
            assert float(row["stderr"]) == pytest.approx(std / math.sqrt(n), rel=1e-6)
        a, b = values[pert, "regular"], values[pert, "mmd"]
        edges = np.histogram_bin_edges(np.concatenate([a, b]), bins="auto")
        assert float(table[(pert, "mmd", "latent")]["js_distance_base2"]) == pytest.approx(
            js_by_hand(histogram_by_hand(a, edges), histogram_by_hand(b, edges)), abs=1e-6)
    md = (out / "distances.md").read_text()
    assert f"n = {len(both)}" in md and "base 2" in md and "| Y10–1P |" in md and "| DA (MMD) |" in md
    # the logit columns: the mmd toy model has the regular one's logits (its latents x2, its head /2)
    # up to float32 rounding of the latents and the heads, bounded per image (logit_distance_bound)
    rows = {m: [lat[m]["test_index"].tolist().index(t) for t in both] for m in lat}
    for col, other in (("d_y10_y1", "z_y1"), ("d_y10_1p", "z_1p")):
        got = np.array([float(r[f"{col}_mmd_logit"]) for r in per_image])
        ref = np.array([float(r[f"{col}_regular_logit"]) for r in per_image])
        bound = logit_distance_bound(toy_campaign["models"], *((lat[m]["z_y10"][rows[m]], lat[m][other][rows[m]])
                                                                for m in ("regular", "mmd")))
        assert np.all(np.abs(got - ref) <= bound + 8 * EPS64 * (got + ref)), col


def test_boundary_distances_of_every_attacked_image(toy_analysis, toy_campaign):
    """attacked_per_image.csv: every image attacked under both runs, with the distance from z(Y10) to its true
    class's decision boundary computed here from the linear head's weights (a loop over the other classes)."""
    with open(toy_analysis["out"] / "attacked_per_image.csv") as fh:
        rows = list(csv.DictReader(fh))
    results = {m: {int(r["test_index"]): r for r in read_results(toy_campaign[m])} for m in ("regular", "mmd")}
    attacked = sorted(set(results["regular"]) & set(results["mmd"]))
    assert [int(r["test_index"]) for r in rows] == attacked
    for method in ("regular", "mmd"):
        lat = np.load(toy_campaign[method] / "attack" / "latents.npz")
        model = toy_campaign["models"][method]
        w, b = model.output.weight.detach().double().numpy(), model.output.bias.detach().double().numpy()
        for r in rows:
            t = int(r["test_index"])
            z = lat["z_y10"][lat["test_index"].tolist().index(t)].astype(np.float64)
            y = CLASSES.index(results[method][t]["true"])
            by_hand = min((float((w[y] - w[k]) @ z + b[y] - b[k]) / float(np.linalg.norm(w[y] - w[k])))
                          for k in range(len(w)) if k != y)
            assert float(r[f"boundary_{method}"]) == pytest.approx(by_hand, rel=1e-5, abs=1e-6)
            assert (r[f"flipped_{method}"] == "True") == (results[method][t]["success"] == "True")


def test_analyze_refuses_to_overwrite_a_finished_analysis(toy_analysis, toy_campaign):
    with pytest.raises(DeepAdvError, match="--overwrite"):
        analyze_runs(toy_campaign["regular"], toy_campaign["mmd"], toy_analysis["out"], preset="tiny")


# ---------------------------------------------------------------------------------------------
# the tiny campaign: real trainings, nothing flipped
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def no_flip_analysis(tiny_campaign, tmp_path_factory) -> dict:
    regular, adapted = tiny_campaign["regular"], tiny_campaign["mmd"]
    assert flipped_under_both_by_hand(regular, adapted) == [], "precondition: the tiny campaign flips nothing"
    out = tmp_path_factory.mktemp("no_flip") / "out"
    result = analyze_runs(regular, adapted, out, n_isomap=10, examples=1, preset="tiny", device="cpu")
    return {"out": out, "result": result}


def test_analyze_with_no_image_flipped_under_both(no_flip_analysis):
    out, result = no_flip_analysis["out"], no_flip_analysis["result"]
    assert result["n_flipped_both"] == 0
    row = result["distances"]["latent"]["Y10-1P"]
    undefined = [row["regular"]["median"], row["mmd"]["mean"], row["js_distance"], row["ratio_median"]]
    assert row["regular"]["n"] == 0 and all(v is None or math.isnan(v) for v in undefined)
    assert any("no image was flipped under both runs" in n for n in result["notes"])
    assert result["examples"][0]["status"].startswith("attacked under")
    md = (out / "distances.md").read_text()
    assert "n = 0" in md and "n/a" in md
    for name in FILES:
        assert (out / name).stat().st_size > 0


def test_analysis_json_is_strict_json_when_nothing_flipped(no_flip_analysis):
    """formatting.py: undefined numbers are stored as null, so every JSON file is strict JSON."""
    text = (no_flip_analysis["out"] / "analysis.json").read_text()
    stored = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in analysis.json (not strict JSON)"))
    assert stored["distances"]["latent"]["Y10-1P"]["regular"]["median"] is None


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
def _copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def test_cli_refuses_runs_of_different_models_datasets_or_the_same_method(toy_campaign, tmp_path, capsys):
    regular = toy_campaign["regular"]
    other = _copy_run(toy_campaign["mmd"], tmp_path / "other")
    config = json.loads((other / "config.json").read_text())
    for change, words in (({"model": "resnet18"}, "differs from the regular run"), ({"data": str(tmp_path)}, "dataset"),
                          ({"method": "regular", "method_settings": {}},  # regular has no settings
                           "both runs were trained with method 'regular'")):
        (other / "config.json").write_text(json.dumps({**config, **change}))
        code = main(["analyze", "--regular", str(regular), "--adapted", str(other), "--out", str(tmp_path / "a")])
        err = capsys.readouterr().err
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "a" / "analysis.json").exists()


def test_cli_analyze_passes_its_options_and_prints_the_tables(toy_campaign, toy_analysis, tmp_path, capsys,
                                                              monkeypatch):
    import deepadversaries.analysis.analyze as analyze

    calls = []

    def stand_in(regular, adapted, out, **kwargs):
        calls.append((Path(regular), Path(adapted), Path(out), kwargs))
        return toy_analysis["result"]

    monkeypatch.setattr(analyze, "analyze_runs", stand_in)
    out = tmp_path / "a"
    code = main(["analyze", "--regular", str(toy_campaign["regular"]), "--da", str(toy_campaign["mmd"]),
                 "--out", str(out), "--n-isomap", "8", "--examples", "2", "--preset", "tiny", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert code == 0
    assert calls == [(toy_campaign["regular"], toy_campaign["mmd"], out,
                      {"n_isomap": 8, "examples": 2, "seed": 0, "preset": "tiny", "overwrite": False, "device": "cpu"})]
    result = toy_analysis["result"]
    n = result["n_flipped_both"]
    assert f"images flipped under both runs: {n}" in printed
    row = result["distances"]["latent"]["Y10-1P"]
    assert f"median d_E regular {row['regular']['median']:.3g}"[:25] in printed


def test_cli_plot_church_window(toy_campaign, tmp_path, capsys):
    run = toy_campaign["regular"]
    index = int(read_results(run)[0]["test_index"])
    out = tmp_path / "cw.png"
    assert main(["plot", "church-window", "--run", str(run), "--index", str(index), "--out", str(out),
                 "--device", "cpu"]) == 0
    with Image.open(out) as im:
        assert im.info["dpi"][0] >= 149.5
    assert main(["plot", "church-window", "--run", str(run), "--index", "999"]) == 2
    assert "test image 999 was not attacked" in capsys.readouterr().err
    assert main(["plot", "church-window", "--run", str(tmp_path), "--index", "0"]) == 2


def test_analyze_needs_finished_attacks(toy_campaign, tmp_path, capsys):
    unattacked = _copy_run(toy_campaign["mmd"], tmp_path / "unattacked")
    (unattacked / "attack" / "summary.json").unlink()
    code = main(["analyze", "--regular", str(toy_campaign["regular"]), "--adapted", str(unattacked),
                 "--out", str(tmp_path / "o")])
    assert code == 2
    assert "no finished attack" in capsys.readouterr().err


def test_load_attack_reads_the_run_config(toy_campaign):
    data = load_attack(toy_campaign["mmd"])
    assert data.method == "mmd" and data.config == read_run_config(toy_campaign["mmd"])
    assert data.summary["kind"] == "deepadv-attack" and data.summary["method"] == "mmd"
    rows = read_results(toy_campaign["mmd"])
    assert [CLASSES[t] for t in data.true] == [r["true"] for r in rows]
    assert [CLASSES[t] if t is not None else "" for t in data.target] == [r["target"] for r in rows]


def test_write_run_helper_gives_a_loadable_run(toy_dataset, tmp_path):
    from deepadversaries.models.networks import build_model, load_model

    torch.manual_seed(0)
    run = write_run(tmp_path / "run", toy_dataset, build_model("convnet"), "mmd")
    assert read_run_config(run).method == "mmd" and not load_model(run).training
