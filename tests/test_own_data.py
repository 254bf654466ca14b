"""Bring your own data: datasets of another shape, band count and class list through every verb.

Data are generated here (HDF5 written with h5py; the FITS catalogue of docs/own-data.md by
its own script) and imported with ``deepadv import``; every stage then runs through the
command line at the ``tiny`` sizes. References are independent: class lists and shapes
written here, ``stretches.apply`` and the survey's sky levels for the normalisation and the
corruptions.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from deepadversaries.data import stretches
from deepadversaries.attacks.values import make_value_range
from deepadversaries.simulation.survey import FULL_WELL_ELECTRONS
from deepadversaries.cli import main
from deepadversaries.corruptions.suite import SKY_ERROR_FRACTION, corrupt
from deepadversaries.data.dataset import apply_stretch, load_dataset
from deepadversaries.errors import FileError, OptionError
from deepadversaries.simulation.survey import sky_level

CLASSES4 = ("disk", "compact", "pair", "edge")
ROOT = Path(__file__).resolve().parents[1]


def _scenes(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, size, size) one-band scenes of four learnable shapes and their class indices."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] - size / 2
    labels = np.arange(n) % 4
    rng.shuffle(labels)
    out = np.zeros((n, size, size), np.float32)
    for i, c in enumerate(labels):
        dx, dy = rng.normal(0, 1.5, 2)
        r2 = (xx - dx) ** 2 + (yy - dy) ** 2
        out[i] = [300 * np.exp(-r2 / 72), 1500 * np.exp(-r2 / 8),
                  800 * (np.exp(-((xx - dx - 7) ** 2 + (yy - dy) ** 2) / 8)
                         + np.exp(-((xx - dx + 7) ** 2 + (yy - dy) ** 2) / 8)),
                  700 * np.exp(-((xx - dx) ** 2 / 128 + (yy - dy) ** 2 / 4))][c]
    return out, labels


def _import(tmp: Path, out: str, *args: str, n: int = 80, size: int = 64, target: bool = True) -> Path:
    """An HDF5 file of one-band (N, H, W) images, class names as byte strings, imported by the CLI."""
    scenes, labels = _scenes(n, size, seed=1)
    rng = np.random.default_rng(2)
    h5 = tmp / f"{out}.h5"
    with h5py.File(h5, "w") as f:
        f["images"] = (10 * scenes + rng.normal(0, 20, scenes.shape)).astype(np.float32)
        if target:
            f["wide"] = (scenes + rng.normal(0, 7, scenes.shape)).astype(np.float32)
        f["labels"] = np.array(CLASSES4)[labels].astype("S")
    argv = ["import", "--out", str(tmp / out), "--input", str(h5), "--classes", ",".join(CLASSES4), *args]
    if target:
        argv += ["--target-images-key", "wide", "--domain-names", "deep,wide"]
    assert main(argv) == 0
    return tmp / out


@pytest.fixture(scope="module")
def own(tmp_path_factory) -> dict[str, Path]:
    """A 1 x 64 x 64, 4-class, two-domain dataset with a regular and an MMD tiny run, both attacked."""
    tmp = tmp_path_factory.mktemp("own")
    data = _import(tmp, "data")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = {}
        for method in ("regular", "mmd"):
            runs[method] = tmp / f"convnet_{method}"
            assert main(["train", "--data", str(data), "--out", str(runs[method]), "--method", method, "--preset",
                         "tiny", "--epochs", "4", "--batch-size", "4", "--device", "cpu"]) == 0
            assert main(["attack", "--run", str(runs[method]), "--preset", "tiny", "--n-images", "8",
                         "--device", "cpu"]) == 0
    finally:
        torch.set_num_threads(n)
    return {"data": data, "tmp": tmp, **runs}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_non_default_shapes_train_evaluate_and_attack(own):
    run = own["regular"]
    config = json.loads((run / "config.json").read_text())
    assert config["classes"] == list(CLASSES4) and config["image_shape"] == [1, 64, 64]
    assert config["domain_names"] == {"Y10": "deep", "Y1": "wide"} and config["normalisation"]["kind"] == "paper"
    ckpt = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert (ckpt["image_shape"], ckpt["n_classes"], ckpt["classes"]) == ([1, 64, 64], 4, list(CLASSES4))
    assert ckpt["state_dict"]["features.0.weight"].shape == (8, 1, 5, 5)
    assert ckpt["state_dict"]["output.weight"].shape == (4, 256)
    # evaluate: four classes on both domains
    assert main(["evaluate", "--run", str(run), "--device", "cpu"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    for domain in ("Y10", "Y1"):
        assert list(metrics[domain]["per_class"]) == list(CLASSES4)
        assert np.asarray(metrics[domain]["confusion"]).shape == (4, 4)
        assert sum(map(sum, metrics[domain]["confusion"])) == len(load_dataset(own["data"]).labels("test"))
    # DE: one value per band, one probability per class, the other three classes as targets
    rows = _rows(run / "attack" / "results.csv")
    assert rows and {f"p_{c}" for c in CLASSES4} <= set(rows[0]) and "value_band0" in rows[0]
    assert not {"value_g", "value_r", "value_i"} & set(rows[0])
    for r in rows:
        assert abs(sum(float(r[f"p_{c}"]) for c in CLASSES4) - 1.0) < 1e-5
        tried = r["targets_tried"].split()
        assert tried == sorted(tried, key=CLASSES4.index) and r["true"] not in tried
        if r["success"] == "False":
            assert len(tried) == 3
    with np.load(run / "attack" / "latents.npz") as npz:
        assert npz["z_y10"].shape == (len(rows), 256) and np.isfinite(npz["z_y1"]).all()
    summary = json.loads((run / "attack" / "summary.json").read_text())
    assert summary["classes"] == list(CLASSES4) and summary["image_shape"] == [1, 64, 64]
    # the exhaustive map (2 corners for one band) and Sparse-RS
    assert main(["attack", "--run", str(run), "--search", "exhaustive", "--preset", "tiny", "--n-images", "3",
                 "--values", "0.7", "--device", "cpu"]) == 0
    with np.load(run / "attack_exhaustive" / "flipmap.npz") as npz:
        assert npz["values_tried"].tolist() == [[0.0], [1.0], [0.7]]
        assert npz["flips"].shape[1:] == (3, 64, 64)
    assert main(["attack", "--run", str(run), "--search", "sparse-rs", "--preset", "tiny", "--device", "cpu"]) == 0
    assert {"p_edge", "value_band0"} <= set(_rows(run / "attack_sparse_rs" / "results.csv")[0])


def test_timm_backbone_trains_evaluates_and_attacks(own):
    from deepadversaries.evaluation.inference import forward_batches
    from deepadversaries.models.networks import TimmClassifier, load_model

    run = own["tmp"] / "timm_test_resnet"
    assert main(["train", "--data", str(own["data"]), "--out", str(run), "--model", "timm:test_resnet", "--preset",
                 "tiny", "--epochs", "1", "--device", "cpu"]) == 0
    assert json.loads((run / "config.json").read_text())["model"] == "timm:test_resnet"
    model = load_model(run)
    assert isinstance(model, TimmClassifier) and model.output.out_features == 4
    assert main(["evaluate", "--run", str(run), "--device", "cpu"]) == 0
    ds = load_dataset(own["data"])
    predicted = forward_batches(model, ds.images("Y10", "test"), batch_size=8).predicted
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["Y10"]["accuracy"] == pytest.approx(float(np.mean(predicted == ds.labels("test"))))
    assert main(["attack", "--run", str(run), "--preset", "tiny", "--n-images", "4", "--device", "cpu"]) == 0
    assert (run / "attack" / "summary.json").is_file()


def test_analysis_of_two_runs_on_own_data(own, capsys):
    out = own["tmp"] / "analysis"
    assert main(["analyze", "--regular", str(own["regular"]), "--adapted", str(own["mmd"]), "--out", str(out),
                 "--preset", "tiny", "--n-isomap", "16", "--examples", "2", "--device", "cpu"]) == 0
    analysis = json.loads((out / "analysis.json").read_text())
    assert analysis["classes"] == list(CLASSES4) and analysis["skipped"] == []
    for example in analysis["examples"]:
        for run in example["runs"].values():
            if run is not None:
                assert list(run["window_fractions"]) == list(CLASSES4)
    assert len(analysis["isomap_sample"]["regular"]["predicted_fractions_Y10"]) == 4
    assert (out / "fig5_church_windows.png").is_file()
    # the corruption table models LSST bands: "band0" is refused with the fix
    capsys.readouterr()
    assert main(["robustness", "--run", str(own["regular"]), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "dataset.json" in err and "--bands g,r" in err


def test_dataset_describes_itself_and_normalises_once(tmp_path):
    zscore = load_dataset(_import(tmp_path, "z", "--stretch", "zscore", "--bands", "r", n=40, size=24))
    assert zscore.classes == CLASSES4 and zscore.bands == ("r",) and zscore.image_shape == (1, 24, 24)
    assert zscore.domain_names == {"Y10": "deep", "Y1": "wide"} and zscore.normalisation_kind == "zscore"
    meta = json.loads((zscore.path / "dataset.json").read_text())
    for domain in ("Y10", "Y1"):
        raw = np.asarray(zscore.images(domain, "test", stretched=False))
        params = meta["normalisation"]["params"][domain]
        np.testing.assert_array_equal(zscore.images(domain, "test"), stretches.apply("zscore", params, raw))
    with pytest.raises(FileError, match="normalisation is zscore, not the paper stretch"):
        zscore.stretch("Y10")
    # the physical value range of a zscore dataset: (0 - mean) / std ... (full well - mean) / std
    forward, inverse = zscore.input_transform("Y10")
    phys = make_value_range("physical", forward, inverse, bands=1)
    mean, std = meta["normalisation"]["params"]["Y10"]["mean"][0], meta["normalisation"]["params"]["Y10"]["std"][0]
    assert phys.low[0] == pytest.approx(-mean / std, rel=1e-6)
    assert phys.high[0] == pytest.approx((FULL_WELL_ELECTRONS - mean) / std, rel=1e-6)
    # paper: the paper stretch of dataset.json's constants, bit for bit
    paper = load_dataset(_import(tmp_path, "p", n=40, size=24, target=False))
    lo, hi = paper.stretch("Y10")
    np.testing.assert_array_equal(paper.images("Y10", "valid"),
                                  apply_stretch(np.asarray(paper.images("Y10", "valid", stretched=False)), lo, hi))
    assert paper.domains == ("Y10",) and paper.bands == ("band0",)
    # none: the stored pixels are model input, with no raw electrons behind them
    none = load_dataset(_import(tmp_path, "n", "--stretch", "none", n=40, size=24, target=False))
    np.testing.assert_array_equal(none.images("Y10", "test"), none.images("Y10", "test", stretched=False))
    with pytest.raises(OptionError, match="needs raw electrons"):
        none.input_transform("Y10")


def test_one_domain_and_stored_model_input_limits(tmp_path, capsys):
    data = _import(tmp_path, "one", "--stretch", "none", "--bands", "r", n=40, size=24, target=False)
    run = tmp_path / "run"
    cases = [
        (["train", "--data", str(data), "--out", str(tmp_path / "mmd"), "--method", "mmd", "--preset", "tiny"],
         "no Y1"),
        (["train", "--data", str(data), "--out", str(tmp_path / "adabn"), "--method", "adabn", "--preset", "tiny"],
         "no Y1"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and message in err and not Path(argv[4]).exists()
    assert main(["train", "--data", str(data), "--out", str(run), "--preset", "tiny", "--epochs", "1",
                 "--device", "cpu"]) == 0
    assert main(["evaluate", "--run", str(run), "--device", "cpu"]) == 0
    assert list(json.loads((run / "metrics.json").read_text())) == ["Y10"]  # one domain: Y10 only
    capsys.readouterr()
    assert main(["robustness", "--run", str(run), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "already normalised (--stretch none)" in err
    assert not (run / "robustness").exists()
    # a run's classes must be the dataset's
    other = _import(tmp_path, "other", "--stretch", "none", "--bands", "r", n=40, size=24, target=False)
    meta = json.loads((other / "dataset.json").read_text())
    meta["classes"] = ["a", "b", "c", "d"]
    (other / "dataset.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--data", str(other), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "classes (a, b, c, d) differ from the run's (disk, compact, pair, edge)" in err


def _docs_script():
    spec = importlib.util.spec_from_file_location("make_fits_catalog", ROOT / "docs" / "examples" /
                                                  "make_fits_catalog.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_fits_catalogue_imports_and_runs_robustness_in_lsst_bands(tmp_path):
    cat = _docs_script().write(tmp_path / "owncat", galaxies=40, seed=0)
    data = tmp_path / "owndata"
    assert main(["import", "--out", str(data), "--catalog", str(cat), "--path-column", "deep",
                 "--target-path-column", "wide", "--label-column", "morph", "--id-column", "galaxy_id",
                 "--classes", "disk,spheroid,merger,ring", "--bands", "g,r", "--domain-names", "deep,wide"]) == 0
    ds = load_dataset(data)
    assert ds.image_shape == (2, 64, 64) and ds.bands == ("g", "r") and ds.n_classes == 4
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--preset", "tiny", "--epochs", "1",
                 "--device", "cpu"]) == 0
    assert main(["robustness", "--run", str(run), "--corruptions", "sky_error,depth", "--severities", "1",
                 "--device", "cpu"]) == 0
    summary = json.loads((run / "robustness" / "summary.json").read_text())
    assert [(r["corruption"], r["severity"]) for r in summary["results"]] == [("sky_error", 1), ("depth", 1)]
    assert summary["settings"]["bands"] == ["g", "r"] and (run / "robustness" / "corruption_grid.png").is_file()
    # each band gets its own sky: a sky error of exactly +-f B_band (the survey's sky level)
    x = np.zeros((4, 2, 8, 8), np.float32)
    shifted = corrupt(x, "sky_error", 2, np.random.default_rng(0), "Y10", ("r", "g"))
    for b, band in enumerate(("r", "g")):
        expected = SKY_ERROR_FRACTION[2] * sky_level(band, 10)
        np.testing.assert_allclose(np.abs(shifted[:, b]), expected, rtol=1e-6)
    with pytest.raises(OptionError, match="bands band0 are not among them"):
        corrupt(x[:, :1], "depth", 1, 0, "Y10", ("band0",))
