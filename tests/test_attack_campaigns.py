"""The attack suite as campaigns: ``deepadv attack --search exhaustive|sparse-rs``, the physical
value range, and the analysis's success-against-queries table — on the hand-built "toy" models
whose answer is known (a bright pixel in input rows and columns 16–31 makes any image
elliptical: tests/attack_support.py)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from attack_support import REGION
from campaign_support import TOY_ATTACK, toy_models, write_run
from deepadversaries import CLASSES
from deepadversaries.analysis.latent import dangerous_pixel_shares, queries_to_reach
from deepadversaries.analysis.analyze import analyze_runs
from deepadversaries.attacks.campaign import attack_run
from deepadversaries.cli import main
from deepadversaries.config import AttackConfig
from deepadversaries.data.dataset import apply_stretch, invert_stretch, load_dataset

ELLIPTICAL = CLASSES.index("elliptical")
FULL_WELL = 100_000.0


@pytest.fixture(scope="module")
def suite(toy_dataset, tmp_path_factory) -> dict:
    """Both toy runs attacked by DE, the exhaustive search and Sparse-RS on the same images."""
    root = tmp_path_factory.mktemp("suite")
    models = toy_models(toy_dataset)
    runs = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for method, model in models.items():
            run = write_run(root / f"convnet_{method}", toy_dataset, model, method, finished=True)
            for search in ("de", "exhaustive", "sparse-rs"):
                # 10 images: the corner search tries 10^4 positions x 8 corners per image and target
                attack_run(run, AttackConfig.from_preset("tiny", search=search, max_queries=200,
                                                         **{**TOY_ATTACK, "n_images": 10}), device="cpu")
            runs[method] = run
    finally:
        torch.set_num_threads(threads)
    return {"runs": runs, "models": models, "data": toy_dataset}


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_exhaustive_flipmap_is_the_known_region(suite):
    """Every position that makes an image elliptical lies in the model's 16×16 region (the other
    targets follow the mean brightness and can flip anywhere), and an attacked image with a flip
    is a success."""
    run = suite["runs"]["regular"]
    folder = run / "attack_exhaustive"
    summary = json.loads((folder / "summary.json").read_text())
    with np.load(folder / "flipmap.npz") as npz:
        flips, index, targets = npz["flips"], npz["test_index"], npz["map_targets"]
    rows = _rows(folder)
    assert [int(r["test_index"]) for r in rows] == index.tolist()
    lo, hi = REGION[0] * 8, REGION[1] * 8  # feature blocks 2..3 of the 12×12 map = input pixels 16..31
    outside = np.ones(flips.shape[-2:], bool)
    outside[lo:hi, lo:hi] = False
    to_elliptical = [flips[k, j] for k in range(len(flips)) for j, t in enumerate(targets[k]) if t == ELLIPTICAL]
    assert to_elliptical and any(f.any() for f in to_elliptical)
    assert not any(f[outside].any() for f in to_elliptical)
    for k, row in enumerate(rows):
        assert (row["success"] == "True") == bool(flips[k].any())
        if row["success"] == "True" and row["target"] == "elliptical":
            assert lo <= int(row["y"]) < hi and lo <= int(row["x"]) < hi
    corner_rate = float(np.mean(flips.reshape(len(flips), -1).any(axis=1)))
    assert summary["corner_flip_rate"] == pytest.approx(corner_rate)
    assert summary["exact_flip_rate"] == summary["corner_flip_rate"]  # the old name, kept for old readers
    assert summary["search"] == "exhaustive"
    # the share of the images the corner search flips that DE found, by hand from the two tables
    de = {int(r["test_index"]) for r in _rows(run / "attack") if r["success"] == "True"}
    corner = {int(r["test_index"]) for r in rows if r["success"] == "True"}
    assert summary["de_found"]["flippable"] == len(corner)
    assert summary["de_found"]["found_by_de"] == len(corner & de)


def test_every_success_of_every_search_is_real(suite):
    """The rebuilt image of each claimed flip, through the plain model, has p(target) > 0.5."""
    ds = load_dataset(suite["data"])
    lo, hi = ds.stretch("Y10")
    raw = ds.images("Y10", "test", stretched=False)
    for method, run in suite["runs"].items():
        model = suite["models"][method]
        for folder in ("attack", "attack_exhaustive", "attack_sparse_rs"):
            for row in _rows(run / folder):
                if row["success"] != "True":
                    continue
                image = apply_stretch(np.asarray(raw[int(row["test_index"])]), lo, hi).copy()
                image[:, int(row["y"]), int(row["x"])] = [float(row[f"value_{b}"]) for b in "gri"]
                with torch.no_grad():
                    p = torch.softmax(model(torch.from_numpy(image[None]))[0], dim=1)[0]
                assert p[CLASSES.index(row["target"])] > 0.5, (method, folder, row["test_index"])


def test_physical_values_never_exceed_the_full_well(suite, tmp_path):
    ds = load_dataset(suite["data"])
    lo, hi = ds.stretch("Y10")
    run = tmp_path / "physical"
    shutil.copytree(suite["runs"]["regular"], run, ignore=shutil.ignore_patterns("attack*"))
    summary = attack_run(run, AttackConfig.from_preset("tiny", value_range="physical", **TOY_ATTACK), device="cpu")
    assert summary["value_range"]["kind"] == "physical"
    values = np.array([[float(r[f"value_{b}"]) for b in "gri"] for r in _rows(run / "attack")])
    electrons = invert_stretch(values, hi)
    assert electrons.min() >= 0.0 and electrons.max() <= FULL_WELL
    assert any("detector" in d for d in summary["departures_from_paper"])


def test_success_against_queries_in_the_analysis(suite, tmp_path):
    out = tmp_path / "analysis"
    result = analyze_runs(suite["runs"]["regular"], suite["runs"]["mmd"], out, n_isomap=10, examples=1,
                          preset="tiny", device="cpu", figures=False)
    table = result["success_against_queries"]
    for method, run in suite["runs"].items():
        de_rate = json.loads((run / "attack" / "summary.json").read_text())["success_rate"]
        for search, folder in (("de", "attack"), ("exhaustive", "attack_exhaustive"),
                               ("sparse-rs", "attack_sparse_rs")):
            rows = _rows(run / folder)
            flipped = [r["success"] == "True" for r in rows]
            queries = sorted(float(r["evaluations"]) for r, f in zip(rows, flipped) if f)
            # by hand: the smallest query count at which the flipped share reaches DE's rate
            need = int(np.ceil(de_rate * len(rows) - 1e-9))
            expected = 0.0 if need == 0 else (queries[need - 1] if need <= len(queries) else None)
            assert table[method][search]["queries_to_de_rate"] == expected, (method, search)
            assert table[method][search]["success_rate"] == pytest.approx(np.mean(flipped))


def test_dangerous_pixel_shares_by_hand():
    flips = np.zeros((2, 20, 20), bool)
    flips[0, 10, 10] = flips[0, 10, 16] = True  # r = 0 and 6 px from (10, 10): rp 2 → 0 and 3 r_p
    flips[1, 2, 2] = True  # 8·√2 ≈ 11.3 px from (10, 10): rp 2 → 5.7 r_p, the sky
    out = dangerous_pixel_shares(flips, np.array([[10.0, 10.0], [10.0, 10.0]]), np.array([2.0, 2.0]))
    assert out["n_positions"] == 3
    assert out["shares"] == pytest.approx({"< 1 r_p": 1 / 3, "1–2 r_p": 0.0, "2–4 r_p": 1 / 3,
                                           "> 4 r_p (sky)": 1 / 3})
    assert queries_to_reach(np.array([5.0, 9.0, 9.0, 20.0]), np.array([True, True, False, False]), 0.5) == 9.0
    assert queries_to_reach(np.array([5.0, 9.0]), np.array([True, False]), 0.75) is None


@pytest.mark.parametrize("args, words", [
    (["--search", "bogus"], "unknown --search"),
    (["--pixels", "0"], "--pixels"),
    (["--search", "exhaustive", "--pixels", "2"], "changes one pixel"),
    (["--search", "exhaustive", "--values", "2,0,0"], "--values"),
    (["--search", "exhaustive", "--values", "0.5,0.5"], "three bands"),
    (["--values", "0.5,0.5,0.5"], "exhaustive search"),
    (["--value-range", "electrons"], "unknown --value-range"),
])
def test_bad_attack_options_are_one_line_exit_2(suite, args, words, capsys):
    code = main(["attack", "--run", str(suite["runs"]["regular"]), "--preset", "tiny", "--device", "cpu", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and words in err[0], err


def test_finding_e_states_the_corner_search_rate_difference_when_both_runs_have_it(suite, tmp_path):
    from deepadversaries.reporting.findings import collect_evidence, finding_e

    from deepadversaries.evaluation.evaluate import evaluate_run

    runs = {m: Path(shutil.copytree(run, tmp_path / run.name)) for m, run in suite["runs"].items()}
    for run in runs.values():
        evaluate_run(run, suite["data"], device="cpu")
    out = tmp_path / "analysis"
    analyze_runs(runs["regular"], runs["mmd"], out, n_isomap=10, examples=1, preset="tiny", device="cpu",
                 figures=False)
    evidence = collect_evidence(runs["regular"], runs["mmd"], out, model="convnet", method="mmd", seed=0)
    finding = finding_e([evidence])
    # by hand: the images both exhaustive campaigns attacked, flipped under one run only
    flips = {m: {int(r["test_index"]): r["success"] == "True" for r in _rows(run / "attack_exhaustive")}
             for m, run in runs.items()}
    both = sorted(set(flips["regular"]) & set(flips["mmd"]))
    b = sum(flips["regular"][i] and not flips["mmd"][i] for i in both)
    c = sum(flips["mmd"][i] and not flips["regular"][i] for i in both)
    corner = finding["numbers"]["corner_rate"]  # secondary: a paired difference on one shared denominator
    assert corner["n_images"] == len(both) and corner["estimate"] == pytest.approx((c - b) / len(both))
    assert corner["regular_rate"] == pytest.approx(sum(flips["regular"][i] for i in both) / len(both))
    assert "corner search (a lower bound on one-pixel vulnerability)" in finding["statement"]
    # without the corner search of one run, nothing is said (the pooled numbers: tests/test_findings.py)
    evidence.corner_flipped = {}
    assert "corner_rate" not in finding_e([evidence])["numbers"]
