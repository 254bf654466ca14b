"""`deepadv certify`: completeness on models with known answers, agreement with the corner search,
a trained ConvNet checked on dense value grids, and the stage's files, resumption and errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import beta

from certify_support import (
    blob_images,
    interior_convnet,
    linear_pixel_model,
    tent_pixel_model,
    train_tiny_convnet,
)
from conftest import make_toy_dataset
from deepadversaries.certify import certify as certify_mod
from deepadversaries.attacks.rules import is_success
from deepadversaries.attacks.values import input_range
from deepadversaries.certify.certify import CertifyConfig, ImageCertifier, certify_run
from deepadversaries.cli import main
from deepadversaries.errors import OptionError
from deepadversaries.attacks.exhaustive import ExhaustiveSearch
from deepadversaries.io import read_json, write_json
from deepadversaries.models.networks import ConvNet, D4ConvNet
from deepadversaries.models.runs import RunConfig, attack_dir, best_checkpoint_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def plain_probs(model, image, row, col, value) -> np.ndarray:
    x = torch.from_numpy(np.asarray(image, np.float32)[None].copy())
    x[0, :, row, col] = torch.as_tensor(np.asarray(value, np.float32))
    with torch.no_grad():
        return torch.softmax(model(x)[0].double(), 1)[0].numpy()


def corner_search(model, image, label, targets, bands):
    return ExhaustiveSearch(model, value_range=input_range(bands), device="cpu").results(
        image[None], [label], targets=[targets])[0]


# --------------------------------------------------------------------------------------
# known answers
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("make, scan_levels, interval", [
    (linear_pixel_model, 2, (0.29, 0.71)),  # issue 21's first counterexample; the scan's centre finds it
    (tent_pixel_model, 2, (0.37, 0.63)),  # the tent relu(v) - 2 relu(v - 1/2)
    (lambda: tent_pixel_model(peak=0.2, gain=20.0), 2, (0.14, 0.41)),  # neither corners nor centre: bisection
])
def test_certify_finds_the_interior_flip_the_corner_search_misses(make, scan_levels, interval):
    model = make()
    image = np.zeros((1, 4, 4), np.float32)
    label = int(np.argmax(plain_probs(model, image, 0, 0, [0.0])))
    corners = corner_search(model, image, label, [2], 1)
    assert not corners.success and not corners.flips.any()
    cert = ImageCertifier(model, input_range(1), scan_levels=scan_levels).certify(image, label, [2], budget_s=60)
    assert cert.status == "flippable" and cert.target == 2 and (cert.row, cert.col) == (1, 2)
    assert interval[0] < cert.value[0] < interval[1]
    p = plain_probs(model, image, cert.row, cert.col, cert.value)
    assert is_success(p, label, 2) and p[2] == pytest.approx(cert.p_target, abs=1e-6)


def test_the_bisection_finds_what_the_scan_cannot():
    model = tent_pixel_model(peak=0.2, gain=20.0)
    image = np.zeros((1, 4, 4), np.float32)
    cert = ImageCertifier(model, input_range(1)).certify(image, 0, [1, 2], budget_s=60)
    assert cert.found_by == "branch-and-bound" and cert.boxes > 0


def test_a_convnet_that_flips_only_inside_the_range():
    model = interior_convnet(16)
    image = np.zeros((3, 16, 16), np.float32)
    corners = corner_search(model, image, 0, [1, 2], 3)
    assert not corners.success
    cert = ImageCertifier(model, input_range(3)).certify(image, 0, [1, 2], budget_s=120)
    assert cert.status == "flippable" and cert.target == 2
    assert 0.37 < cert.value[0] < 0.63  # the tent of g is high enough only there
    assert is_success(plain_probs(model, image, cert.row, cert.col, cert.value), 0, 2)


@pytest.mark.parametrize("bias, expected", [(-6.0, "flippable"), (-20.0, "certified")])
def test_certify_agrees_with_the_corner_search_when_flips_lie_at_corners(bias, expected):
    model = interior_convnet(16, monotone=True)  # class-2 logit 8 relu(g) + bias: largest at g = 1
    with torch.no_grad():
        model.output.bias[2] = bias
    image = np.zeros((3, 16, 16), np.float32)
    corners = corner_search(model, image, 0, [1, 2], 3)
    cert = ImageCertifier(model, input_range(3)).certify(image, 0, [1, 2], budget_s=120)
    assert cert.status == expected
    assert corners.success == (expected == "flippable")
    if expected == "flippable":
        assert corners.flips[corners.map_targets.index(cert.target), cert.row, cert.col]
    else:
        assert (cert.status_map == certify_mod.CERTIFIED).all()
        assert np.nanmin(cert.margin_map) > 0


def test_a_split_covers_its_box_exactly():
    low = np.array([[0.0, 0.2, 0.5], [0.1, 0.1, 0.1]])
    high = np.array([[1.0, 0.4, 0.75], [0.3, 0.9, 0.2]])
    lo, hi, parent = certify_mod._split(low, high, np.ones(3))
    assert len(lo) == 2 * 2 ** certify_mod.SPLIT_SIDES and np.bincount(parent).tolist() == [8, 8]
    for k in range(2):
        vol = np.prod(hi[parent == k] - lo[parent == k], axis=1)
        assert vol.sum() == pytest.approx(np.prod(high[k] - low[k]))  # no overlap, no gap (halves)
        assert np.all(lo[parent == k] >= low[k]) and np.all(hi[parent == k] <= high[k])


@pytest.mark.parametrize("bias, expected", [(-6.0, "flippable"), (-20.0, "certified")])
def test_a_depth_cap_of_one_split_changes_no_answer(monkeypatch, bias, expected):
    monkeypatch.setattr(certify_mod, "DEPTH_STEP", 1)  # every box split more than once waits its turn
    model = tent_pixel_model(peak=0.2, gain=20.0)
    image = np.zeros((1, 4, 4), np.float32)
    cert = ImageCertifier(model, input_range(1)).certify(image, 0, [1, 2], budget_s=60)
    assert cert.status == "flippable" and cert.found_by == "branch-and-bound" and 0.14 < cert.value[0] < 0.41
    model = interior_convnet(16, monotone=True)
    with torch.no_grad():
        model.output.bias[2] = bias
    cert = ImageCertifier(model, input_range(3)).certify(np.zeros((3, 16, 16), np.float32), 0, [1, 2], budget_s=120)
    assert cert.status == expected
    if expected == "certified":
        assert (cert.status_map == certify_mod.CERTIFIED).all() and np.nanmin(cert.margin_map) > 0


@pytest.mark.parametrize("architecture", [ConvNet, D4ConvNet])
def test_a_trained_convnet_certificates_hold_on_dense_value_grids(architecture):
    size = 12
    images, labels = blob_images(90, size, seed=1)
    model = train_tiny_convnet(images[:60], labels[:60], steps=80, architecture=architecture)
    with torch.no_grad():
        pred = model(torch.from_numpy(images[60:]))[0].argmax(1).numpy()
    chosen = [60 + i for i in np.flatnonzero(pred == labels[60:])[:3]]
    certifier = ImageCertifier(model, input_range(3))
    grid = np.stack(np.meshgrid(*[np.linspace(0, 1, 6)] * 3, indexing="ij"), -1).reshape(-1, 3)
    rng = np.random.default_rng(0)
    decided = 0
    for i in chosen:
        label = int(labels[i])
        targets = [t for t in range(3) if t != label]
        cert = certifier.certify(images[i], label, targets, budget_s=100)
        print(i, cert.status, cert.boxes, round(cert.seconds, 1))
        decided += cert.status != "undecided"
        if cert.status == "flippable":
            p = plain_probs(model, images[i], cert.row, cert.col, cert.value)
            assert is_success(p, label, cert.target)
        elif cert.status == "certified":
            assert (cert.margin_map > 0).all()  # every leaf box of every position proved
            for pos in rng.choice(size * size, 24, replace=False):
                r, c = divmod(int(pos), size)
                x = torch.from_numpy(np.repeat(images[i][None], len(grid), 0))
                x[:, :, r, c] = torch.from_numpy(grid.astype(np.float32))
                with torch.no_grad():
                    p = torch.softmax(model(x)[0].double(), 1).numpy()
                for t in targets:
                    assert not is_success(p, label, t).any()
    assert decided >= 1


# --------------------------------------------------------------------------------------
# the stage
# --------------------------------------------------------------------------------------
def write_small_run(root: Path, model: torch.nn.Module) -> Path:
    data = make_toy_dataset(root / "data", n={"train": 6, "valid": 3, "test": 12}, size=16)
    from deepadversaries.config import TrainConfig
    from deepadversaries.data.dataset import load_dataset

    ds = load_dataset(data)
    labels = ds.labels("train")
    run = root / "run"
    config = RunConfig(train=TrainConfig(model="convnet", method="regular", preset="tiny"),
                       data=str(data.resolve()), resolved_device="cpu", image_shape=tuple(ds.image_shape),
                       domains=tuple(ds.domains), counts={s: int(len(ds.labels(s))) for s in ("train", "valid", "test")},
                       class_counts={c: int((labels == k).sum()) for k, c in enumerate(ds.classes)})
    best_checkpoint_path(run).parent.mkdir(parents=True)
    write_json(run / "config.json", config.to_json())
    torch.save({"model": "convnet", "state_dict": model.state_dict(), "image_shape": [3, 16, 16], "n_classes": 3},
               best_checkpoint_path(run))
    return run


def stage_model() -> torch.nn.Module:
    """A ConvNet for 16x16 toy images: confident enough that some images flip and some do not."""
    torch.manual_seed(0)
    model = interior_convnet(16, monotone=True)
    return model


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    return write_small_run(tmp_path_factory.mktemp("certify"), stage_model())


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def interrupt_the_second_image(monkeypatch) -> None:
    """Make this process's certifier raise KeyboardInterrupt on its second image (the first is kept)."""
    calls = {"n": 0}
    real = ImageCertifier.certify

    def stops_after_one(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ImageCertifier, "certify", stops_after_one)


def test_the_stage_writes_the_sandwich_and_resumes(small_run, monkeypatch):
    out = small_run / "certify"
    real = ImageCertifier.certify
    interrupt_the_second_image(monkeypatch)
    config = CertifyConfig(n_images=3, budget_s=60, subsample=12)
    with pytest.raises(KeyboardInterrupt):
        certify_run(small_run, config, device="cpu")
    assert not (out / "summary.json").exists() and not (out / "results.csv").exists()
    assert len((out / "progress.jsonl").read_text().splitlines()) == 2  # settings + one image
    monkeypatch.setattr(ImageCertifier, "certify", real)
    summary = certify_run(small_run, config, device="cpu")
    assert summary["timing"]["sessions"] == 2
    assert summary["bounds_arithmetic"].startswith("float64; the convolutions after the first relaxation in IEEE float32")
    assert read_json(out / "summary.json")["bounds_arithmetic"] == summary["bounds_arithmetic"]
    rows = read_rows(out / "results.csv")
    assert len(rows) == summary["n_images"] == 3
    counts = {s: sum(r["status"] == s for r in rows) for s in ("flippable", "certified", "undecided")}
    assert {k: summary[k] for k in counts} == counts
    n, k = 3, counts["flippable"]
    lo = summary["rate_lower"]
    assert lo["value"] == pytest.approx(k / n) and lo["n"] == n
    assert lo["ci_low"] == pytest.approx(beta.ppf(0.025, k, n - k + 1) if k else 0.0, abs=1e-9)
    assert lo["ci_high"] == pytest.approx(beta.ppf(0.975, k + 1, n - k) if k < n else 1.0, abs=1e-9)
    assert summary["rate_upper"]["value"] == pytest.approx((k + counts["undecided"]) / n)
    with np.load(out / "certmap.npz") as npz:
        assert npz["status"].shape == (3, 16, 16) and npz["margin_lower"].shape == (3, 16, 16)
        np.testing.assert_array_equal(npz["test_index"], [int(r["test_index"]) for r in rows])
    # every witness re-verifies with the plain model, on the stage's own images
    from deepadversaries.data.dataset import load_dataset

    ds = load_dataset(json.loads((small_run / "config.json").read_text())["data"])
    model = stage_model()
    for r in rows:
        if r["status"] == "flippable":
            idx = int(r["test_index"])
            image = ds.model_input(np.asarray(ds.images("Y10", "test", stretched=False)[[idx]]), "Y10")[0]
            value = [float(r[f"value_{b}"]) for b in ds.bands]
            p = plain_probs(model, image, int(r["row"]), int(r["col"]), value)
            assert is_success(p, int(r["label"]), ds.classes.index(r["target"]))
    # an uninterrupted run gives the same answers
    again = certify_run(small_run, config, device="cpu", overwrite=True)
    assert [(r["test_index"], r["status"]) for r in read_rows(out / "results.csv")] == \
        [(r["test_index"], r["status"]) for r in rows]
    assert again["n_images"] == 3


def test_workers_give_the_serial_answers_and_resume_a_serial_run(tmp_path, monkeypatch):
    """Two worker processes decide every image as one process does (the same status, witness and
    boxes: nothing depends on timing with a budget no image reaches), and pick up a run that one
    process left after its first image."""
    run = write_small_run(tmp_path, stage_model())
    config = CertifyConfig(n_images=3, budget_s=600, subsample=12)
    events: list[tuple[int, int, int]] = []  # (image, positions decided, positions): the per-image bars' feed
    original = certify_mod._certificates

    def spied(*args, on_progress=None, **kwargs):
        def record(k, decided, positions):
            events.append((k, decided, positions))
            on_progress(k, decided, positions)
        return original(*args, on_progress=record, **kwargs)

    def check_reports(rows):
        certified = [k for k, r in enumerate(rows) if r["status"] == "certified"]
        assert certified  # the reports come from branch and bound
        for k, r in enumerate(rows):
            mine = [(d, n) for i, d, n in events if i == k]
            assert [d for d, _ in mine] == sorted(d for d, _ in mine)  # never backwards
            if k in certified:  # the last report: every position decided
                assert mine and mine[-1][0] == mine[-1][1] == 16 * 16 == int(r["positions_certified"])

    monkeypatch.setattr(certify_mod, "_certificates", spied)
    serial = certify_run(run, config, device="cpu")
    serial_rows = read_rows(run / "certify" / "results.csv")
    assert serial["undecided"] == 0 and serial["timing"]["workers"] == 1
    check_reports(serial_rows)
    events.clear()

    def not_here(self, *args, **kwargs):
        raise AssertionError("the main process certified an image itself")

    monkeypatch.setattr(ImageCertifier, "certify", not_here)  # the spawned workers import their own
    parallel = certify_run(run, CertifyConfig(n_images=3, budget_s=600, subsample=12, workers=2), device="cpu",
                           overwrite=True)
    keys = ("test_index", "status", "target", "row", "col", "value_g", "value_r", "value_i", "boxes",
            "positions_certified")
    assert [[r[k] for k in keys] for r in read_rows(run / "certify" / "results.csv")] == \
        [[r[k] for k in keys] for r in serial_rows]
    assert parallel["timing"]["workers"] == 2 and parallel["settings"] == serial["settings"]
    check_reports(serial_rows)  # the workers report their images' positions too
    # a serial run stopped after one image, resumed by two workers
    monkeypatch.undo()  # the real certifier, then stopped on its second image
    interrupt_the_second_image(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        certify_run(run, config, device="cpu", overwrite=True)
    monkeypatch.setattr(ImageCertifier, "certify", not_here)
    resumed = certify_run(run, CertifyConfig(n_images=3, budget_s=600, subsample=12, workers=2), device="cpu")
    assert resumed["timing"]["sessions"] == 2
    assert [[r[k] for k in keys] for r in read_rows(run / "certify" / "results.csv")] == \
        [[r[k] for k in keys] for r in serial_rows]


def test_workers_are_refused_on_a_gpu(small_run, monkeypatch):
    monkeypatch.setattr(certify_mod, "resolve_device", lambda device: torch.device("cuda"))
    with pytest.raises(OptionError, match="--workers 2 certifies on the CPU"):
        certify_run(small_run, CertifyConfig(n_images=1, workers=2), device="cuda")


@pytest.mark.parametrize("workers", [0, -1, 1.5, True])
def test_workers_must_be_a_positive_whole_number(workers):
    with pytest.raises(OptionError, match="--workers"):
        CertifyConfig(workers=workers)


def _fake_corner_campaign(run: Path, test_index: list[int], value_range: dict, success: str = "paper",
                          mode: str = "targeted") -> None:
    """A finished corner-search campaign that claims a flip on every one of ``test_index``."""
    folder = attack_dir(run, "exhaustive")
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "results.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["test_index", "success"])
        writer.writerows([[t, True] for t in test_index])
    write_json(folder / "summary.json", {"settings": {"search": "exhaustive", "success": success, "mode": mode,
                                                      "value_range": value_range["kind"]},
                                         "value_range": value_range})


def test_a_campaign_is_compared_only_when_it_answers_the_same_question(tmp_path):
    """A flip found under another value range, success rule or targeting is no contradiction of a
    certificate: such a campaign is named in ``not_compared`` and not counted; one that matches is."""
    run = write_small_run(tmp_path, stage_model())
    config = CertifyConfig(n_images=2, budget_s=60, subsample=12)
    first = certify_run(run, config, device="cpu")
    assert first["corner_search"] is None and first["not_compared"] == {}  # no campaign yet
    index = first["test_index"]
    physical = {"kind": "physical", "low": [0.5] * 3, "high": [0.88] * 3, "electrons": [0.0, 1e5]}
    _fake_corner_campaign(run, index, physical)
    other = certify_run(run, config, device="cpu", overwrite=True)
    assert other["corner_search"] is None
    assert "value range is physical" in other["not_compared"]["corner_search"]
    wider = {"kind": "input", "low": [0.0] * 3, "high": [2.0] * 3}
    _fake_corner_campaign(run, index, wider)
    assert "high limits" in certify_run(run, config, device="cpu", overwrite=True)["not_compared"]["corner_search"]
    _fake_corner_campaign(run, index, {"kind": "input", "low": [0.0] * 3, "high": [1.0] * 3}, success="top-class")
    assert "success rule" in certify_run(run, config, device="cpu", overwrite=True)["not_compared"]["corner_search"]
    _fake_corner_campaign(run, index, {"kind": "input", "low": [0.0] * 3, "high": [1.0] * 3}, mode="untargeted")
    assert "untargeted" in certify_run(run, config, device="cpu", overwrite=True)["not_compared"]["corner_search"]
    # the same question: compared, and a claimed flip on a certified image is reported as a contradiction
    _fake_corner_campaign(run, index, {"kind": "input", "low": [0.0] * 3, "high": [1.0] * 3})
    same = certify_run(run, config, device="cpu", overwrite=True)
    assert same["not_compared"] == {}
    assert same["corner_search"]["rate"]["value"] == pytest.approx(1.0)
    certified = [int(r["test_index"]) for r in read_rows(run / "certify" / "results.csv") if r["status"] == "certified"]
    assert certified and same["corner_search"]["flipped_but_certified"] == sorted(certified)


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, small_run, capsys):
    run = tmp_path / "untrained"
    run.mkdir()
    (run / "config.json").write_text((small_run / "config.json").read_text())
    assert main(["certify", "--run", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "checkpoint not found" in err
    assert not (run / "certify").exists()
    assert main(["certify", "--run", str(small_run), "--budget", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--budget" in err
    with pytest.raises(OptionError, match="--budget"):
        CertifyConfig(budget_s=-1)
    assert main(["certify", "--run", str(run), "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--workers" in err
    assert not (run / "certify").exists()


def test_an_unsupported_layer_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys):
    run = write_small_run(tmp_path, stage_model())
    from torch import nn

    def gelu_model(*args, **kwargs):
        model = stage_model()
        model.features[2] = nn.GELU()
        return model

    monkeypatch.setattr(certify_mod, "load_model", gelu_model)
    assert main(["certify", "--run", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "GELU" in err
    assert not (run / "certify").exists()
