"""The simulated dataset (SPEC 3.2-3.6): quotas, splits, augmentation, S/N regime, resumption, CLI."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from deepadversaries import CLASSES, SPLITS
from deepadversaries.cli import main
from deepadversaries.config import SimulateConfig
from deepadversaries.data.dataset import load_dataset, stretch_constants
from deepadversaries.errors import OptionError
from deepadversaries.simulation.simulate import (
    AUGMENTATIONS,
    WORK_DIR,
    augment,
    class_quotas,
    dataset_config,
    plan_splits,
    simulate_dataset,
    simulate_galaxy,
    target_classes,
)

ARRAYS = [f"images_{d}_{s}.npy" for d in ("Y10", "Y1") for s in SPLITS] + [f"labels_{s}.npy" for s in SPLITS]


def _catalog(folder: Path, split: str) -> list[dict[str, str]]:
    with open(folder / f"catalog_{split}.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_quotas_are_the_papers_mix():
    assert class_quotas(25005) == (14312, 8151, 2542)
    assert class_quotas(2500) == (1431, 815, 254)
    assert sum(class_quotas(61)) == 61


def test_tiny_dataset_layout_counts_and_labels(tiny_dataset):
    meta = json.loads((tiny_dataset / "dataset.json").read_text())
    quotas = class_quotas(meta["config"]["n_galaxies"])
    galaxies_per_class = np.zeros(3, dtype=int)
    seen: dict[int, str] = {}
    for split in SPLITS:
        y10 = np.load(tiny_dataset / f"images_Y10_{split}.npy")
        y1 = np.load(tiny_dataset / f"images_Y1_{split}.npy")
        labels = np.load(tiny_dataset / f"labels_{split}.npy")
        rows = _catalog(tiny_dataset, split)
        assert y10.dtype == np.float32 and y1.dtype == np.float32 and labels.dtype == np.float32
        assert y10.shape == y1.shape == (len(labels), 3, 100, 100) == (len(rows), 3, 100, 100)
        assert np.isfinite(y10).all() and np.isfinite(y1).all()
        # one-hot in [spiral, elliptical, merger] order, matching the catalogue's class names
        assert set(np.unique(labels)) <= {0.0, 1.0} and (labels.sum(axis=1) == 1).all()
        assert [CLASSES[k] for k in labels.argmax(axis=1)] == [r["label"] for r in rows]
        # no galaxy in two splits (galaxy mode)
        for r in rows:
            gid = int(r["galaxy_id"])
            assert seen.setdefault(gid, split) == split
        # each merger appears x5 (the five augmentations), every other galaxy once
        by_galaxy: dict[int, list[str]] = {}
        for r in rows:
            by_galaxy.setdefault(int(r["galaxy_id"]), []).append(r["augmentation"])
        for gid, augs in by_galaxy.items():
            label = next(r["label"] for r in rows if int(r["galaxy_id"]) == gid)
            assert sorted(augs) == sorted(AUGMENTATIONS if label == "merger" else ("none",))
            galaxies_per_class[CLASSES.index(label)] += 1
        assert meta["counts"][split]["total"] == len(rows)
    assert tuple(galaxies_per_class) == quotas
    assert meta["counts"]["galaxies"] == dict(zip(CLASSES, quotas))


def test_augmented_copies_are_flips_and_rotations(tiny_dataset):
    rows = _catalog(tiny_dataset, "train")
    y10 = np.load(tiny_dataset / "images_Y10_train.npy")
    y1 = np.load(tiny_dataset / "images_Y1_train.npy")
    index = {(int(r["galaxy_id"]), r["augmentation"]): i for i, r in enumerate(rows)}
    mergers = {gid for gid, aug in index if aug == "rot90"}
    assert mergers
    for gid in mergers:
        original = index[gid, "none"]
        np.testing.assert_array_equal(y10[index[gid, "hflip"]], y10[original][:, :, ::-1])
        np.testing.assert_array_equal(y10[index[gid, "vflip"]], y10[original][:, ::-1, :])
        np.testing.assert_array_equal(y1[index[gid, "rot90"]], np.rot90(y1[original], 1, axes=(1, 2)))
        np.testing.assert_array_equal(y1[index[gid, "rot180"]], y1[original][:, ::-1, ::-1])


def test_stretch_constants_come_from_the_training_split(tiny_dataset):
    meta = json.loads((tiny_dataset / "dataset.json").read_text())
    for domain in ("Y10", "Y1"):
        train = np.load(tiny_dataset / f"images_{domain}_train.npy")
        assert meta["stretch"][domain] == pytest.approx(list(stretch_constants(train)))
    ds = load_dataset(tiny_dataset)
    assert ds.stretch("Y1") == pytest.approx(tuple(meta["stretch"]["Y1"]))
    x = ds.images("Y10", "test")
    assert x.shape[1:] == (3, 100, 100) and 0.0 <= x.min() and x.max() <= 1.0


def test_signal_to_noise_regime(tiny_dataset):
    """SPEC 3.2: median Y10 r-band peak S/N near 20 and Y1 near 6 (60 galaxies: loose bounds)."""
    rows = [r for s in SPLITS for r in _catalog(tiny_dataset, s) if r["augmentation"] == "none"]
    y10 = np.array([float(r["snr_r_Y10"]) for r in rows])
    y1 = np.array([float(r["snr_r_Y1"]) for r in rows])
    assert 13 < np.median(y10) < 30
    assert 4 < np.median(y1) < 10
    assert np.median(y10 / y1) == pytest.approx(np.sqrt(10), rel=0.1)
    assert y10.min() < 8 and y10.max() > 60  # a spread from a few to ~a hundred or more
    meta = json.loads((tiny_dataset / "dataset.json").read_text())
    assert meta["peak_snr"]["Y10"]["r"]["median"] == pytest.approx(np.median(y10))


def test_brightness_scales_flux_but_not_the_label():
    base = SimulateConfig.from_preset("tiny", seed=3)
    bright = SimulateConfig.from_preset("tiny", seed=3, brightness=2.0)
    for gid, target in ((0, 0), (1, 2)):
        a = simulate_galaxy(gid, target, base).row
        b = simulate_galaxy(gid, target, bright).row
        assert a["gini"] == pytest.approx(b["gini"], abs=1e-9) and a["m20"] == pytest.approx(b["m20"], abs=1e-9)
        assert b["mag_r"] == pytest.approx(a["mag_r"] - 2.5 * np.log10(2.0), abs=1e-9)
        assert b["snr_r_Y10"] > 1.4 * a["snr_r_Y10"]


def test_split_modes():
    config = SimulateConfig.from_preset("tiny", n_galaxies=300, seed=1)
    targets = target_classes(config)
    assert np.bincount(targets).tolist() == list(class_quotas(300))
    galaxy = plan_splits(targets, 1, "galaxy")
    paper = plan_splits(targets, 1, "paper")
    n_images = sum(len(v) for v in galaxy.values())
    assert n_images == sum(len(v) for v in paper.values()) == 300 + 4 * class_quotas(300)[2]

    def ids(plan, split):
        return {gid for gid, _ in plan[split]}

    assert not ids(galaxy, "train") & ids(galaxy, "test") and not ids(galaxy, "valid") & ids(galaxy, "test")
    assert ids(paper, "train") & ids(paper, "test")  # the paper's random split leaks merger copies
    for split, fraction in (("train", 0.7), ("valid", 0.1), ("test", 0.2)):
        assert len(paper[split]) == pytest.approx(fraction * n_images, abs=1)
        assert len(ids(galaxy, split)) == pytest.approx(fraction * 300, abs=3)
    assert plan_splits(targets, 1, "galaxy") == galaxy  # seeded
    assert plan_splits(targets, 2, "galaxy") != galaxy


def test_augment_rejects_unknown():
    with pytest.raises(ValueError):
        augment(np.zeros((3, 4, 4)), "shear")


def test_resume_after_kill_with_two_workers_is_bit_identical(tiny_dataset, tmp_path, capsys):
    """SIGKILL a run after its first shard, resume it with 2 workers through the CLI: same arrays as 1 worker."""
    out = tmp_path / "data"
    code = ("from deepadversaries.simulation.simulate import simulate_dataset; "
            "from deepadversaries.config import SimulateConfig; "
            f"simulate_dataset({str(out)!r}, SimulateConfig.from_preset('tiny', seed=0), workers=1)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = out / WORK_DIR
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None and not list(work.glob("shard_*.npz")):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(work.glob("shard_*.npz")), "the run did not get as far as one shard"
    assert not (out / "dataset.json").exists()

    assert main(["simulate", "--preset", "tiny", "--seed", "0", "--workers", "2", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "resuming" in captured.err and "median peak S/N" in captured.out
    assert (out / "dataset.json").exists() and not work.exists()
    for name in ARRAYS:
        np.testing.assert_array_equal(np.load(out / name), np.load(tiny_dataset / name), err_msg=name)
    for split in SPLITS:
        assert _catalog(out, split) == _catalog(tiny_dataset, split)


def _error(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error:") and "Traceback" not in err
    return err


def test_bad_options_exit_2_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "new"
    assert "unknown preset" in _error(capsys, ["simulate", "--preset", "huge", "--out", str(out)])
    assert "too few" in _error(capsys, ["simulate", "--preset", "tiny", "--n-galaxies", "5", "--out", str(out)])
    assert "split mode" in _error(capsys, ["simulate", "--split-mode", "random", "--out", str(out)])
    assert "--workers" in _error(capsys, ["simulate", "--preset", "tiny", "--workers", "0", "--out", str(out)])
    assert "--brightness" in _error(capsys, ["simulate", "--preset", "tiny", "--brightness", "-1", "--out", str(out)])
    assert not out.exists()


def test_bad_output_folders_exit_2_and_stay_untouched(tmp_path, capsys, tiny_dataset):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert "not empty" in _error(capsys, ["simulate", "--preset", "tiny", "--out", str(busy)])
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]

    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert "not a folder" in _error(capsys, ["simulate", "--preset", "tiny", "--out", str(a_file)])
    assert "not a folder" in _error(capsys, ["simulate", "--preset", "tiny", "--out", str(a_file / "sub")])

    before = sorted(p.name for p in tiny_dataset.iterdir())
    assert "finished dataset" in _error(capsys, ["simulate", "--preset", "tiny", "--out", str(tiny_dataset)])
    assert sorted(p.name for p in tiny_dataset.iterdir()) == before

    other = tmp_path / "other"
    (other / WORK_DIR).mkdir(parents=True)
    record = dataset_config(SimulateConfig.from_preset("tiny", seed=9))
    (other / WORK_DIR / "config.json").write_text(json.dumps(record))
    assert "different configuration" in _error(capsys, ["simulate", "--preset", "tiny", "--out", str(other)])


def test_api_errors_are_option_errors(tmp_path):
    with pytest.raises(OptionError, match="unknown preset"):
        SimulateConfig.from_preset("medium")
    with pytest.raises(OptionError, match="too few"):
        simulate_dataset(tmp_path / "x", SimulateConfig.from_preset("quick", n_galaxies=10))
    with pytest.raises(OptionError, match="--workers"):
        simulate_dataset(tmp_path / "x", SimulateConfig.from_preset("tiny"), workers=0)
    assert not (tmp_path / "x").exists()


def test_dataset_figures(tiny_dataset, tmp_path, capsys):
    import matplotlib.image as mpimg

    f1, f2 = tmp_path / "fig1.png", tmp_path / "fig2.png"
    assert main(["plot", "gm20", "--data", str(tiny_dataset), "--out", str(f1)]) == 0
    assert main(["plot", "examples", "--data", str(tiny_dataset), "--out", str(f2)]) == 0
    for f in (f1, f2):
        img = mpimg.imread(f)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
    assert main(["plot", "examples", "--data", str(tiny_dataset), "--split", "nope"]) == 2


def test_gm20_figure_needs_a_catalogue(toy_dataset, capsys):
    assert "no catalogue" in _error(capsys, ["plot", "gm20", "--data", str(toy_dataset)])


#: SPEC 3.1, written out: zero point (e-/s at m = 24), sky (mag/arcsec^2), exposure per year (s)
SPEC_BANDS = {"g": (50.70, 22.3, 240.0), "r": (43.70, 21.2, 552.0), "i": (32.36, 20.5, 552.0)}


def test_sky_levels_recorded_are_the_spec_formula(tiny_dataset):
    """electrons per pixel = t · zp · 10^(-0.4 (m_sky - 24)) · 0.2², t = years x exposure per year."""
    meta = json.loads((tiny_dataset / "dataset.json").read_text())
    for domain, years in (("Y10", 10), ("Y1", 1)):
        for band, (zp, sky_mag, per_year) in SPEC_BANDS.items():
            expected = years * per_year * zp * 10 ** (-0.4 * (sky_mag - 24)) * 0.2**2
            assert meta["sky_per_pixel"][domain][band] == pytest.approx(expected, rel=1e-9), (domain, band)
    assert meta["sky_per_pixel"]["Y10"]["r"] == pytest.approx(127198.07, rel=1e-6)  # 5520 s x 43.70 x 10^1.12 x 0.04


def test_dataset_json_records_the_config(tiny_dataset):
    meta = json.loads((tiny_dataset / "dataset.json").read_text())
    config = SimulateConfig.from_preset("tiny", seed=0)
    assert meta["config"] == json.loads(json.dumps(dataset_config(config)))
    assert meta["config"]["n_galaxies"] == 60 and meta["config"]["quotas"] == {"spiral": 34, "elliptical": 20,
                                                                                "merger": 6}
    assert SimulateConfig.from_json(meta["config"]) == config
