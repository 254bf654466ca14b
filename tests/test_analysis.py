"""Latent-space analysis: distances, JS distance, church windows, isomaps, figures, CLI."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.distance import jensenshannon
from sklearn.manifold import Isomap

from deepadversaries import CLASSES
from deepadversaries.analysis import (
    ANALYZE_PRESETS,
    AttackData,
    choose_examples,
    IsomapEmbedding,
    analyze_runs,
    church_window_grid,
    church_window_loop,
    grid_coordinates,
    isomap_embedding,
    isomap_projection,
    isomap_sample_indices,
    js_distance,
    load_attack,
    paired_distances,
    summarize,
)
from deepadversaries.cli import main
from deepadversaries.data import load_dataset
from deepadversaries.errors import DeepAdvError
from deepadversaries.io import write_csv, write_json, write_npz
from deepadversaries.models import build_model, load_model

N_ATTACKED = 24


def _fit(data: Path, seed: int, steps: int = 3) -> torch.nn.Module:
    """A ConvNet fitted a few plain-torch steps on the toy data (Y10, plus Y1 for odd seeds)."""
    torch.manual_seed(seed)
    ds = load_dataset(data)
    x10 = torch.from_numpy(ds.images("Y10", "train"))
    x1 = torch.from_numpy(ds.images("Y1", "train"))
    y = torch.from_numpy(ds.labels("train"))
    model = build_model("convnet")
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(y), (16,), generator=g)
        xb = torch.cat([x10[idx], x1[idx]]) if seed % 2 else x10[idx]
        yb = torch.cat([y[idx], y[idx]]) if seed % 2 else y[idx]
        loss = torch.nn.functional.cross_entropy(model(xb)[0], yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _perturbed(x: torch.Tensor) -> torch.Tensor:
    """A strong stand-in for the attacked image (a bright 15x15 patch): the analysis only needs its latent."""
    xp = x.clone()
    xp[:, :, 35:50, 55:70] = 1.0
    return xp


def _write_run(root: Path, name: str, data: Path, model: torch.nn.Module, *, method: str, seed: int,
               success: np.ndarray, model_name: str = "convnet") -> Path:
    run = root / name
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.save({"model": model_name, "state_dict": model.state_dict(), "epoch": 0, "val_acc": 0.0},
               run / "checkpoints" / "best.pt")
    write_json(run / "config.json", {"kind": "deepadv-run", "model": model_name, "method": method,
                                     "data": str(Path(data).resolve()), "seed": seed})
    ds = load_dataset(data)
    idx = np.arange(N_ATTACKED)
    x10 = torch.from_numpy(ds.images("Y10", "test")[idx])
    x1 = torch.from_numpy(ds.images("Y1", "test")[idx])
    labels = ds.labels("test")[idx]
    with torch.no_grad():
        logits, z10 = model(x10)
        _, z1 = model(x1)
        logits_p, zp = model(_perturbed(x10))
    pred_p = logits_p.argmax(1).numpy()
    prob = torch.softmax(logits_p, 1).numpy()
    rows = []
    for k, i in enumerate(idx):
        target = int(pred_p[k]) if pred_p[k] != labels[k] else int((labels[k] + 1) % 3)
        rows.append({"test_index": int(i), "galaxy_id": 1000 + int(i), "true": CLASSES[labels[k]],
                     "predicted": CLASSES[int(logits[k].argmax())], "target": CLASSES[target],
                     "success": bool(success[k]), "iterations": 3 + k, "x": 62, "y": 42,
                     "value_g": 1.0, "value_r": 1.0, "value_i": 1.0, "p_spiral": float(prob[k, 0]),
                     "p_elliptical": float(prob[k, 1]), "p_merger": float(prob[k, 2])})
    write_csv(run / "attack" / "results.csv", rows)
    write_npz(run / "attack" / "latents.npz", test_index=idx.astype(np.int64), z_y10=z10.numpy(),
              z_y1=z1.numpy(), z_1p=zp.numpy(), success=np.asarray(success, bool))
    write_json(run / "attack" / "summary.json", {"n_attacked": N_ATTACKED, "n_success": int(np.sum(success))})
    return run


@pytest.fixture(scope="module")
def runs(toy_dataset, tmp_path_factory):
    """A regular and a 'DA' run (same model, same data) with attack files; flips: even / not-multiple-of-3."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    root = tmp_path_factory.mktemp("analysis_runs")
    k = np.arange(N_ATTACKED)
    reg_model, da_model = _fit(toy_dataset, 0), _fit(toy_dataset, 1)
    regular = _write_run(root, "regular", toy_dataset, reg_model, method="regular", seed=0, success=k % 2 == 0)
    da = _write_run(root, "da", toy_dataset, da_model, method="mmd", seed=1, success=k % 3 != 0)
    return {"root": root, "regular": regular, "da": da, "data": toy_dataset}


@pytest.fixture(scope="module")
def analysis(runs):
    out = runs["root"] / "analysis"
    result = analyze_runs(runs["regular"], runs["da"], out, n_isomap=30, examples=3, seed=0, preset="tiny")
    return out, result


# ---------------------------------------------------------------------------------------------
# numbers
# ---------------------------------------------------------------------------------------------
def test_distances_equal_numpy_norm_on_images_flipped_under_both(runs):
    reg, da = load_attack(runs["regular"]), load_attack(runs["da"])
    paired = paired_distances(reg, da)
    k = np.arange(N_ATTACKED)
    expected_index = k[(k % 2 == 0) & (k % 3 != 0)]
    assert paired.test_index.tolist() == expected_index.tolist()
    for name, data in (("regular", reg), ("da", da)):
        rows = [int(np.flatnonzero(data.test_index == t)[0]) for t in expected_index]
        np.testing.assert_allclose(paired.distances[name]["Y10-Y1"],
                                   np.linalg.norm(data.z_y10[rows] - data.z_y1[rows], axis=1), rtol=1e-6)
        np.testing.assert_allclose(paired.distances[name]["Y10-1P"],
                                   np.linalg.norm(data.z_y10[rows] - data.z_1p[rows], axis=1), rtol=1e-6)
        scale = np.median(np.linalg.norm(data.z_y10, axis=1))
        np.testing.assert_allclose(paired.normalised(name, "Y10-1P"),
                                   np.linalg.norm(data.z_y10[rows] - data.z_1p[rows], axis=1) / scale, rtol=1e-6)


def test_summary_standard_error_is_std_over_sqrt_n():
    v = np.random.default_rng(3).gamma(2.0, 3.0, size=37)
    s = summarize(v)
    assert s["n"] == 37
    assert s["median"] == pytest.approx(np.median(v))
    assert s["mean"] == pytest.approx(np.mean(v))
    assert s["stderr"] == pytest.approx(np.std(v) / np.sqrt(37))
    empty = summarize([])
    assert empty["n"] == 0 and np.isnan(empty["median"]) and np.isnan(empty["stderr"])


def test_js_distance_equals_scipy_on_the_same_histograms():
    rng = np.random.default_rng(0)
    a, b = rng.normal(10, 2, 120), rng.normal(13, 3, 90)
    res = js_distance(a, b)
    edges = np.histogram_bin_edges(np.concatenate([a, b]), bins="auto")
    np.testing.assert_allclose(res.edges, edges)
    p = np.histogram(a, edges)[0] / len(a)
    q = np.histogram(b, edges)[0] / len(b)
    assert res.p.sum() == pytest.approx(1.0) and res.q.sum() == pytest.approx(1.0)
    assert res.distance == pytest.approx(jensenshannon(p, q, base=2), rel=1e-12)
    assert res.base == 2
    assert js_distance(a, a).distance == pytest.approx(0.0, abs=1e-7)
    assert js_distance(np.zeros(5), np.full(5, 10.0)).distance == pytest.approx(1.0)  # disjoint, base 2
    assert np.isnan(js_distance(a, []).distance)


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


def test_church_window_landmarks_match_model_classes(runs):
    model = load_model(runs["regular"])
    ds = load_dataset(runs["data"])
    x10 = torch.from_numpy(ds.images("Y10", "test")[:6])
    x1 = torch.from_numpy(ds.images("Y1", "test")[:6])
    xp = _perturbed(x10)
    with torch.no_grad():
        (l10, z10), (l1, z1), (lp, zp) = model(x10), model(x1), model(xp)
    for i in range(6):
        w = church_window_grid(model.head, z10[i], z1[i], zp[i])
        assert w.class_at(0, 0) == int(l10[i].argmax())
        assert w.class_at(1, 0) == int(lp[i].argmax())
        assert w.class_at(0, 1) == int(l1[i].argmax())


def test_batched_grid_equals_per_point_loop(runs):
    data = load_attack(runs["da"])
    model = load_model(runs["da"])
    coords = grid_coordinates()
    pick = coords[::20]  # 12 x 12 points spread over the window
    for row in (0, 5):
        z = (data.z_y10[row], data.z_y1[row], data.z_1p[row])
        batched = church_window_grid(model.head, *z)
        loop = church_window_loop(model.head, *z, alphas=pick, betas=pick)
        idx = np.searchsorted(coords, pick)
        np.testing.assert_array_equal(batched.classes[np.ix_(idx, idx)], loop.classes)


# ---------------------------------------------------------------------------------------------
# isomaps
# ---------------------------------------------------------------------------------------------
def test_isomap_shape_determinism_and_reference():
    rng = np.random.default_rng(1)
    z10, z1 = rng.normal(size=(40, 16)), rng.normal(0.5, 1.0, size=(40, 16))
    trip = [{"z_y10": z10[0], "z_y1": z1[0], "z_1p": z10[0] + 0.1, "pred_y10": 0, "pred_y1": 1, "pred_1p": 2}, None]
    e1 = isomap_embedding(z10, z1, np.zeros(40, int), np.ones(40, int), trip, n_components=3)
    e2 = isomap_embedding(z10, z1, np.zeros(40, int), np.ones(40, int), trip, n_components=3)
    assert isinstance(e1, IsomapEmbedding) and e1.coords.shape == (83, 3)
    np.testing.assert_array_equal(e1.coords, e2.coords)
    assert e1.select("triplet-1P", 0).sum() == 1 and e1.select("triplet-Y10", 1).sum() == 0
    stacked = np.concatenate([z10, z1, [z10[0], z1[0], z10[0] + 0.1]])
    ref = Isomap(n_neighbors=5, n_components=2, eigen_solver="dense").fit_transform(stacked)
    two = isomap_projection(stacked, 2)
    assert two.shape == (83, 2)
    np.testing.assert_allclose(two, ref, atol=1e-8)
    np.testing.assert_allclose(e1.coords[:, :2], ref, atol=1e-8)  # the 2-D map is the 3-D map's first two axes


def test_isomap_sample_is_deterministic_for_a_seed():
    a, b, c = isomap_sample_indices(500, 250, 7), isomap_sample_indices(500, 250, 7), isomap_sample_indices(500, 250, 8)
    assert len(a) == 250 and len(np.unique(a)) == 250 and a.max() < 500
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len(isomap_sample_indices(20, 250, 0)) == 20


def _attack_data(test_index, success, true) -> AttackData:
    n = len(test_index)
    z = np.zeros((n, 4), np.float32)
    return AttackData(run=Path("."), config={}, test_index=np.asarray(test_index), z_y10=z, z_y1=z, z_1p=z,
                      success=np.asarray(success, bool), true=list(true), target=[None] * n,
                      galaxy_id=[""] * n, iterations=[""] * n)


def test_examples_prefer_images_flipped_under_both_and_vary_the_class():
    reg = _attack_data([0, 1, 2, 3, 4, 5], [1, 1, 1, 1, 0, 1], [0, 0, 1, 2, 0, 2])
    da = _attack_data([0, 1, 2, 3, 4, 6], [1, 0, 1, 1, 1, 1], [0, 0, 1, 2, 0, 1])
    chosen = choose_examples(reg, da, 3, seed=0)
    assert sorted(e.test_index for e in chosen) == [0, 2, 3]  # flipped under both, one of each class
    assert all(e.flipped_under_both for e in chosen)
    more = choose_examples(reg, da, 5, seed=0)
    assert [e.status for e in more[3:]] == ["flipped under DA only", "flipped under regular only"] or \
        [e.status for e in more[3:]] == ["flipped under regular only", "flipped under DA only"]
    assert choose_examples(reg, da, 5, seed=0) == more  # deterministic for a seed


# ---------------------------------------------------------------------------------------------
# the whole analysis
# ---------------------------------------------------------------------------------------------
FILES = ("distances.csv", "distances.md", "distances_per_image.csv", "fig3_church_isomap.png",
         "fig4_isomap3d.png", "fig5_church_windows.png", "fig6_distances.png", "isomap3d_regular.gif",
         "isomap3d_da.gif", "analysis.json")


def test_analyze_writes_every_file_and_marker_last(analysis):
    out, result = analysis
    for name in FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    marker = (out / "analysis.json").stat().st_mtime_ns
    assert all((out / n).stat().st_mtime_ns <= marker for n in FILES)
    assert json.loads((out / "analysis.json").read_text())["n_flipped_both"] == result["n_flipped_both"]
    assert not list(out.glob("*.tmp-*"))


def test_figures_have_the_stated_size_and_resolution(analysis):
    out, result = analysis
    for key, fig in result["figures"].items():
        with Image.open(out / fig["file"]) as im:
            assert (im.width, im.height) == (fig["width_px"], fig["height_px"]), key
            if fig["file"].endswith(".png"):
                assert im.info["dpi"][0] == pytest.approx(fig["dpi"], abs=0.5)
                assert fig["dpi"] >= 150 and im.width >= 1000
            else:
                assert getattr(im, "n_frames", 1) == fig["frames"] == ANALYZE_PRESETS["tiny"]["gif_frames"]


def test_distance_tables_agree_with_per_image_file(analysis, runs):
    out, result = analysis
    k = np.arange(N_ATTACKED)
    n_both = int(((k % 2 == 0) & (k % 3 != 0)).sum())
    assert result["n_flipped_both"] == n_both
    with open(out / "distances_per_image.csv") as fh:
        per_image = list(csv.DictReader(fh))
    with open(out / "distances.csv") as fh:
        table = {(r["perturbation"], r["training"], r["scale"]): r for r in csv.DictReader(fh)}
    assert len(per_image) == n_both
    for pert, col in (("Y10-Y1", "d_y10_y1"), ("Y10-1P", "d_y10_1p")):
        values = {tr: np.array([float(r[f"{col}_{tr}"]) for r in per_image]) for tr in ("regular", "da")}
        for tr in ("regular", "da"):
            row = table[(pert, tr, "latent")]
            assert int(row["n"]) == n_both
            assert float(row["median"]) == pytest.approx(np.median(values[tr]))
            assert float(row["stderr"]) == pytest.approx(np.std(values[tr]) / np.sqrt(n_both))
        assert float(table[(pert, "regular", "latent")]["js_distance_base2"]) == pytest.approx(
            js_distance(values["regular"], values["da"]).distance)
    md = (out / "distances.md").read_text()
    assert f"n = {n_both}" in md and "base 2" in md and "| Y10–1P |" in md


def test_analyze_with_no_image_flipped_under_both(runs, tmp_path):
    none_run = runs["root"] / "da_none"
    if not none_run.exists():
        _write_run(runs["root"], "da_none", runs["data"], load_model(runs["da"]), method="mmd", seed=1,
                   success=np.zeros(N_ATTACKED, bool))
    result = analyze_runs(runs["regular"], none_run, tmp_path / "out", n_isomap=10, examples=1, preset="tiny")
    assert result["n_flipped_both"] == 0
    row = result["distances"]["latent"]["Y10-1P"]
    assert row["regular"]["n"] == 0 and np.isnan(row["regular"]["median"]) and np.isnan(row["js_distance"])
    assert any("no image was flipped under both runs" in n for n in result["notes"])
    assert result["examples"][0]["status"] == "flipped under regular only"
    md = (tmp_path / "out" / "distances.md").read_text()
    assert "n = 0" in md and "NaN" in md
    for name in FILES:
        assert (tmp_path / "out" / name).stat().st_size > 0


def test_analyze_refuses_to_overwrite_a_finished_analysis(analysis, runs):
    out, _ = analysis
    with pytest.raises(DeepAdvError, match="--overwrite"):
        analyze_runs(runs["regular"], runs["da"], out, preset="tiny")


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
def test_cli_refuses_runs_of_different_models_or_datasets(runs, tmp_path, capsys):
    other = tmp_path / "other_model"
    shutil.copytree(runs["da"], other)
    config = json.loads((other / "config.json").read_text())
    write_json(other / "config.json", {**config, "model": "resnet18"})
    code = main(["analyze", "--regular", str(runs["regular"]), "--da", str(other), "--out", str(tmp_path / "a")])
    assert code == 2
    assert "differs from the regular run" in capsys.readouterr().err
    write_json(other / "config.json", {**config, "data": str(tmp_path)})
    code = main(["analyze", "--regular", str(runs["regular"]), "--da", str(other), "--out", str(tmp_path / "a")])
    assert code == 2
    assert "dataset" in capsys.readouterr().err
    assert not (tmp_path / "a" / "analysis.json").exists()


def test_cli_plot_church_window(runs, tmp_path, capsys):
    out = tmp_path / "cw.png"
    assert main(["plot", "church-window", "--run", str(runs["regular"]), "--index", "4", "--out", str(out)]) == 0
    with Image.open(out) as im:
        assert im.info["dpi"][0] >= 149.5
    assert main(["plot", "church-window", "--run", str(runs["regular"]), "--index", "999"]) == 2
    assert "test image 999 was not attacked" in capsys.readouterr().err
    assert main(["plot", "church-window", "--run", str(tmp_path), "--index", "0"]) == 2


def test_analyze_needs_finished_attacks(runs, tmp_path, capsys):
    unattacked = tmp_path / "unattacked"
    shutil.copytree(runs["da"], unattacked)
    (unattacked / "attack" / "summary.json").unlink()
    code = main(["analyze", "--regular", str(runs["regular"]), "--da", str(unattacked), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "no finished attack" in capsys.readouterr().err
