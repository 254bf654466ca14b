"""Training runs on the toy dataset: the run folder, both methods, determinism, resuming, bad input."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from conftest import make_toy_dataset
from deepadversaries import training
from deepadversaries.cli import main
from deepadversaries.errors import DeepAdvError
from deepadversaries.evaluation import evaluate_run
from deepadversaries.losses import class_weights
from deepadversaries.models import build_model
from deepadversaries.runs import read_run_config
from deepadversaries.training import IndexBatches, train_model


def _rows(run):
    with open(run / "log.csv", newline="") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def _losses(rows):
    keys = [k for k in training.LOG_COLUMNS if k not in ("epoch_seconds", "epoch_cpu_seconds")]
    return np.array([[r[k] for k in keys] for r in rows])


@pytest.fixture(scope="module")
def regular_run(toy_dataset, tmp_path_factory):
    return train_model(toy_dataset, tmp_path_factory.mktemp("runs") / "regular", preset="tiny", device="cpu",
                       seed=0, progress=False)


@pytest.fixture(scope="module")
def mmd_run(toy_dataset, tmp_path_factory):
    return train_model(toy_dataset, tmp_path_factory.mktemp("runs") / "mmd", method="mmd", preset="tiny",
                       device="cpu", seed=0, progress=False)


def test_run_folder_contract(regular_run, toy_dataset):
    config = read_run_config(regular_run)
    assert config["kind"] == "deepadv-run" and config["model"] == "convnet" and config["method"] == "regular"
    assert config["data"] == str(toy_dataset.resolve()) and config["seed"] == 0
    labels = np.argmax(np.load(toy_dataset / "labels_train.npy"), axis=1)
    assert config["class_weights"] == pytest.approx(class_weights(labels).tolist())
    assert config["lr"] == training.TRAIN_PRESETS["tiny"]["convnet"]["lr"]
    # the kept checkpoint loads with weights_only=True and is the best Y10 validation accuracy
    ckpt = torch.load(regular_run / "checkpoints" / "best.pt", weights_only=True)
    assert {"model", "state_dict", "epoch", "val_acc"} <= set(ckpt)
    rows = _rows(regular_run)
    assert ckpt["val_acc"] == max(r["val_acc_y10"] for r in rows)
    assert ckpt["epoch"] == next(r["epoch"] for r in rows if r["val_acc_y10"] == ckpt["val_acc"])
    build_model("convnet").load_state_dict(ckpt["state_dict"])
    assert (regular_run / "checkpoints" / "last.ckpt").is_file()
    assert list((regular_run / "tensorboard").glob("events.out.tfevents.*"))
    done = json.loads((regular_run / "training.json").read_text())  # strict JSON (no NaN)
    assert done["epochs"] == len(rows) == 3 and done["best_epoch"] == ckpt["epoch"]
    assert all(math.isnan(r["train_mmd2"]) for r in rows)


def test_tiny_run_lowers_the_training_loss(regular_run):
    rows = _rows(regular_run)
    assert rows[-1]["train_loss"] < 0.8 * rows[0]["train_loss"]
    assert all(0.0 <= r["val_acc_y10"] <= 1.0 and 0.0 <= r["val_acc_y1"] <= 1.0 for r in rows)


def test_mmd_run_logs_both_terms(mmd_run):
    config = read_run_config(mmd_run)
    assert config["mmd_weight"] == 0.05 and config["weight_decay"] == 1e-4
    for row in _rows(mmd_run):
        assert math.isfinite(row["train_ce"]) and math.isfinite(row["train_mmd2"])
        assert row["train_loss"] == pytest.approx(row["train_ce"] + 0.05 * row["train_mmd2"], rel=1e-6)
        assert math.isfinite(row["val_mmd2"])


def test_same_seed_same_metrics_and_evaluation(regular_run, toy_dataset, tmp_path):
    again = train_model(toy_dataset, tmp_path / "again", preset="tiny", device="cpu", seed=0, progress=False)
    np.testing.assert_array_equal(_losses(_rows(again)), _losses(_rows(regular_run)))
    assert evaluate_run(again, device="cpu") == evaluate_run(regular_run, device="cpu")


class _Crash(Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise RuntimeError("simulated crash")


def test_resume_after_an_interruption(regular_run, toy_dataset, tmp_path, monkeypatch):
    real = training.make_trainer
    monkeypatch.setattr(training, "make_trainer",
                        lambda *a, **k: real(*a, **{**k, "extra_callbacks": [_Crash()]}))
    run = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_model(toy_dataset, run, preset="tiny", device="cpu", seed=0, progress=False)
    assert not (run / "training.json").exists() and (run / "checkpoints" / "last.ckpt").is_file()
    monkeypatch.setattr(training, "make_trainer", real)
    # without --resume the same command refuses nothing: an unfinished run with the same settings continues
    train_model(toy_dataset, run, preset="tiny", device="cpu", seed=0, progress=False, resume=True)
    assert (run / "training.json").is_file()
    rows = _rows(run)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    np.testing.assert_array_equal(_losses(rows), _losses(_rows(regular_run)))  # as if never interrupted
    ckpt = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    build_model("convnet").load_state_dict(ckpt["state_dict"])


def test_nan_loss_stops_with_epoch_and_step(toy_dataset, tmp_path, monkeypatch):
    real_forward = training.GalaxyClassifierModule._forward
    calls = {"n": 0}

    def poisoned(self, x):
        logits, z = real_forward(self, x)
        calls["n"] += 1
        return (logits * float("nan"), z) if calls["n"] == 2 else (logits, z)

    monkeypatch.setattr(training.GalaxyClassifierModule, "_forward", poisoned)
    with pytest.raises(DeepAdvError, match=r"NaN or infinite at epoch 1, step 2"):
        train_model(toy_dataset, tmp_path / "nan", preset="tiny", device="cpu", progress=False)


def test_index_batches_cover_every_image_once_and_shard():
    sampler = IndexBatches(10, 4, shuffle=True, seed=3, n_target=10)
    sampler.set_epoch(1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3
    src = np.concatenate([b[0] for b in batches])
    assert sorted(src.tolist()) == list(range(10))
    assert all(len(a) == len(b) for a, b in batches)  # Y1 batch as large as the Y10 batch
    sampler.set_epoch(2)
    assert not np.array_equal(np.concatenate([b[0] for b in sampler]), src)
    shards = [list(IndexBatches(10, 2, shuffle=True, seed=3, rank=r, world_size=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1])
    assert sorted(np.concatenate([np.concatenate(s) for s in shards]).tolist()) == list(range(10))


def test_bad_input_exits_2(regular_run, toy_dataset, tmp_path, capsys):
    no_y1 = tmp_path / "no_y1"
    no_y1.mkdir()
    for f in toy_dataset.iterdir():
        if "_Y1_" not in f.name:
            (no_y1 / f.name).symlink_to(f)
    small = make_toy_dataset(tmp_path / "small", n={"train": 6, "valid": 3, "test": 3}, size=64)
    cases = [
        (["train", "--data", str(no_y1), "--out", str(tmp_path / "a"), "--method", "mmd", "--preset", "tiny"], "no Y1"),
        (["train", "--data", str(toy_dataset), "--out", str(tmp_path / "b"), "--model", "vgg"], "unknown model"),
        (["train", "--data", str(small), "--out", str(tmp_path / "c"), "--preset", "tiny"], "do not fit ConvNet"),
        (["train", "--data", str(toy_dataset), "--out", str(regular_run), "--preset", "tiny", "--device", "cpu"],
         "finished training"),
        (["evaluate", "--run", str(toy_dataset)], "not a run folder"),
        (["train", "--data", str(toy_dataset), "--out", str(tmp_path / "d"), "--lr", "0"], "--lr must be positive"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and message in err and "\n" not in err, (argv, err)
