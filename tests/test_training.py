"""Training: the run folder, the loss against hand computations, MMD at work, determinism, resuming, bad input.

The session's real ``tiny`` runs (tests/conftest.py: ``regular_run``, ``mmd_run``) are checked
against numbers written here (the preset's learning rate, the paper's weight decays and λ)
and against the class weights N / (M n_m) counted from the labels; the loss of one step
against the weighted cross-entropy computed by hand; and MMD against a float64 MMD²
written here, on toy two-domain data.
"""

from __future__ import annotations

import csv
import json
import math
import tempfile
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import make_toy_dataset
from lightning.pytorch.callbacks import Callback

from deepadversaries.training import train as training
from deepadversaries.cli import main
from deepadversaries.config import TrainConfig
from deepadversaries.data.dataset import load_dataset
from deepadversaries.errors import DeepAdvError
from deepadversaries.evaluation.evaluate import evaluate_run
from deepadversaries.models.networks import build_model
from deepadversaries.progress import quiet_lightning
from deepadversaries.models.runs import read_run_config
from deepadversaries.training.datamodule import GalaxyDataModule, IndexBatches
from deepadversaries.training.module import GalaxyClassifierModule, log_columns
from deepadversaries.training.train import make_trainer, train_model

#: SPEC 5's kernel widths sigma^2 of the multi-kernel MMD, written out
SIGMAS2 = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 100.0, 1e3, 1e4, 1e5, 1e6)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rows(run):
    with open(run / "log.csv", newline="") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def _losses(rows):
    keys = [k for k in log_columns() if k not in ("epoch_seconds", "epoch_cpu_seconds")]
    return np.array([[r[k] for k in keys] for r in rows])


def _tiny(method: str = "regular", **overrides) -> TrainConfig:
    return TrainConfig.from_preset("tiny", method=method, seed=0, **overrides)


def class_weights_by_hand(labels) -> list[float]:
    counts = [0, 0, 0]
    for c in labels:
        counts[int(c)] += 1
    return [len(labels) / (3 * n) for n in counts]


# ---------------------------------------------------------------------------------------------
# the run folder
# ---------------------------------------------------------------------------------------------
def test_run_folder_contract(regular_run, toy_dataset):
    config = read_run_config(regular_run)
    stored = json.loads((regular_run / "config.json").read_text())
    assert stored == config.to_json() and stored["kind"] == "deepadv-run"
    assert (config.model, config.method, config.seed, config.preset) == ("convnet", "regular", 0, "tiny")
    assert config.data == str(toy_dataset.resolve())
    labels = np.argmax(np.load(toy_dataset / "labels_train.npy"), axis=1)
    assert list(config.class_weights) == pytest.approx(class_weights_by_hand(labels), rel=1e-6)
    assert config.class_counts == {"spiral": 32, "elliptical": 32, "merger": 32}
    # the tiny preset and the paper's weight decay, as numbers
    train = config.train
    assert (train.lr, train.betas, train.epochs, train.batch_size, train.weight_decay) == (1e-3, (0.9, 0.999), 3, 32,
                                                                                          1e-3)
    assert train.method_settings == {} and stored["method_settings"] == {} and stored["lr"] == 0.001
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
    assert [r["lr"] for r in rows] == [1e-3] * 3  # the tiny preset's constant schedule


def test_mmd_run_records_the_papers_settings_and_both_loss_terms(mmd_run):
    config = read_run_config(mmd_run)
    assert config.method == "mmd" and config.train.uses_target_domain
    settings = config.train.method_settings
    assert (settings["weight"], config.train.weight_decay) == (0.05, 1e-4)  # the paper's λ and weight decay
    assert settings["sigmas2"] == pytest.approx(SIGMAS2) and settings["estimator"] == "unbiased"
    assert config.domains == ("Y10", "Y1")
    for row in _rows(mmd_run):
        assert math.isfinite(row["train_ce"]) and math.isfinite(row["train_mmd2"]) and math.isfinite(row["val_mmd2"])


def test_tiny_run_lowers_the_training_loss(regular_run):
    rows = _rows(regular_run)
    assert rows[-1]["train_loss"] < 0.8 * rows[0]["train_loss"]
    assert all(0.0 <= r["val_acc_y10"] <= 1.0 and 0.0 <= r["val_acc_y1"] <= 1.0 for r in rows)


# ---------------------------------------------------------------------------------------------
# the loss against hand computations
# ---------------------------------------------------------------------------------------------
def _tensors(data: Path) -> dict[str, torch.Tensor]:
    ds = load_dataset(data)
    return {"Y10_train": torch.from_numpy(ds.images("Y10", "train")),
            "Y1_train": torch.from_numpy(ds.images("Y1", "train")), "y_train": torch.from_numpy(ds.labels("train")),
            "Y10_valid": torch.from_numpy(ds.images("Y10", "valid")), "y_valid": torch.from_numpy(ds.labels("valid"))}


def _fit_steps(config: TrainConfig, weights, tensors, steps: int, callbacks=()) -> GalaxyClassifierModule:
    """``steps`` optimiser steps of the project's module and trainer on in-memory tensors, no validation."""
    with tempfile.TemporaryDirectory() as tmp, quiet_lightning():
        L.seed_everything(config.seed, verbose=False)
        module = GalaxyClassifierModule(config, weights)
        trainer, _ = make_trainer(Path(tmp), config, progress=False, max_steps=steps, limit_val_batches=0,
                                  extra_callbacks=list(callbacks))
        trainer.fit(module, datamodule=GalaxyDataModule(None, config, tensors=dict(tensors)))
    return module


class _StepRecorder(Callback):
    def __init__(self) -> None:
        self.batches, self.losses = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches.append([t.detach().clone() for t in batch])
        self.losses.append(float(outputs["loss"]))


def test_loss_is_the_class_weighted_cross_entropy(toy_dataset, monkeypatch):
    """loss = sum_i w_{y_i} (-log softmax(logits_i)[y_i]) / sum_i w_{y_i}, in float64, with the weights
    N / (M n_m) of a deliberately unbalanced training set."""
    tensors = _tensors(toy_dataset)
    keep = torch.cat([torch.nonzero(tensors["y_train"] == c).ravel()[:n] for c, n in ((0, 24), (1, 8), (2, 4))])
    tensors["Y10_train"], tensors["y_train"] = tensors["Y10_train"][keep], tensors["y_train"][keep]
    weights = class_weights_by_hand(tensors["y_train"].tolist())
    assert weights == pytest.approx([36 / 72, 36 / 24, 36 / 12])
    logits_seen = []
    real_forward = GalaxyClassifierModule._forward

    def recording_forward(self, x):
        logits, z = real_forward(self, x)
        logits_seen.append(logits.detach().double().clone())
        return logits, z

    monkeypatch.setattr(GalaxyClassifierModule, "_forward", recording_forward)
    recorder = _StepRecorder()
    _fit_steps(_tiny(batch_size=12), weights, tensors, steps=2, callbacks=[recorder])
    assert len(logits_seen) == len(recorder.losses) == 2
    for logits, (x, y), loss in zip(logits_seen, recorder.batches, recorder.losses):
        num = den = 0.0
        for row, label in zip(logits.tolist(), y.tolist()):
            log_z = math.log(sum(math.exp(v) for v in row))
            num += weights[label] * (log_z - row[label])
            den += weights[label]
        assert loss == pytest.approx(num / den, rel=1e-5)
        plain = sum(math.log(sum(math.exp(v) for v in r)) - r[c] for r, c in zip(logits.tolist(), y.tolist())) / len(y)
        assert abs(num / den - plain) > 1e-4  # the weights matter for this batch


def mmd2_by_hand(x: np.ndarray, y: np.ndarray) -> float:
    """Paper eq. 2, float64: the unbiased multi-kernel Gaussian MMD² with SPEC 5's widths."""
    def kernel(a, b):
        d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return sum(np.exp(-d2 / (2 * s)) for s in SIGMAS2)

    x, y = x.astype(np.float64), y.astype(np.float64)
    n, m = len(x), len(y)
    kxx, kyy = kernel(x, x), kernel(y, y)
    return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2 * kernel(x, y).mean())


def test_mmd_steps_bring_the_two_domains_latents_together(toy_dataset):
    """Six optimiser steps with the paper's λ = 0.05 lower MMD²(z_Y10, z_Y1) on held-out images, compared
    with six regular steps and with six steps of the same method at λ = 0 (same seed, same batches)."""
    tensors = _tensors(toy_dataset)
    ds = load_dataset(toy_dataset)
    probe = {d: torch.from_numpy(ds.images(d, "test")[:32]) for d in ("Y10", "Y1")}
    weights = class_weights_by_hand(tensors["y_train"].tolist())

    def mmd2_after(method: str, **overrides) -> float:
        module = _fit_steps(_tiny(method, batch_size=16, epochs=50, **overrides), weights, tensors, steps=6)
        model = module.model.eval()
        with torch.no_grad():
            return mmd2_by_hand(model.embed(probe["Y10"]).numpy(), model.embed(probe["Y1"]).numpy())

    regular = mmd2_after("regular")
    without_term = mmd2_after("mmd", mmd_weight=0.0)  # a method setting by its flat name, as --mmd-weight
    adapted = mmd2_after("mmd")
    assert regular > 0.05 and without_term > 0.05, "the domains must start apart for the test to mean something"
    assert adapted < 0.7 * regular and adapted < 0.5 * without_term, (regular, without_term, adapted)


# ---------------------------------------------------------------------------------------------
# determinism, resuming, failures
# ---------------------------------------------------------------------------------------------
def test_same_seed_same_metrics_and_evaluation(regular_run, toy_dataset, tmp_path):
    again = train_model(toy_dataset, tmp_path / "again", _tiny(), device="cpu", progress=False)
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
        train_model(toy_dataset, run, _tiny(), device="cpu", progress=False)
    assert not (run / "training.json").exists() and (run / "checkpoints" / "last.ckpt").is_file()
    monkeypatch.setattr(training, "make_trainer", real)
    train_model(toy_dataset, run, _tiny(), device="cpu", progress=False, resume=True)
    assert (run / "training.json").is_file()
    assert read_run_config(run).resumed_from_epoch == 2
    rows = _rows(run)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    np.testing.assert_array_equal(_losses(rows), _losses(_rows(regular_run)))  # as if never interrupted
    ckpt = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    build_model("convnet").load_state_dict(ckpt["state_dict"])


def test_nan_loss_stops_with_epoch_and_step(toy_dataset, tmp_path, monkeypatch):
    real_forward = GalaxyClassifierModule._forward
    calls = {"n": 0}

    def poisoned(self, x):
        logits, z = real_forward(self, x)
        calls["n"] += 1
        return (logits * float("nan"), z) if calls["n"] == 2 else (logits, z)

    monkeypatch.setattr(GalaxyClassifierModule, "_forward", poisoned)
    with pytest.raises(DeepAdvError, match=r"NaN or infinite at epoch 1, step 2"):
        train_model(toy_dataset, tmp_path / "nan", _tiny(), device="cpu", progress=False)


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
    small = make_toy_dataset(tmp_path / "small", n={"train": 6, "valid": 3, "test": 3}, size=6)  # ConvNet needs 8x8
    cases = [
        (["train", "--data", str(no_y1), "--out", str(tmp_path / "a"), "--method", "mmd", "--preset", "tiny"], "no Y1"),
        (["train", "--data", str(toy_dataset), "--out", str(tmp_path / "b"), "--model", "vgg"], "unknown model"),
        (["train", "--data", str(small), "--out", str(tmp_path / "c"), "--preset", "tiny"], "too small for the ConvNet"),
        (["train", "--data", str(toy_dataset), "--out", str(regular_run), "--preset", "tiny", "--device", "cpu"],
         "finished training"),
        (["evaluate", "--run", str(toy_dataset)], "not a run folder"),
        (["train", "--data", str(toy_dataset), "--out", str(tmp_path / "d"), "--lr", "0"], "--lr must be positive"),
        (["train", "--data", str(toy_dataset), "--out", str(tmp_path / "e"), "--mmd-weight", "-1"], "--mmd-weight"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and message in err and "\n" not in err, (argv, err)
        assert not (tmp_path / "e").exists()


def test_quiet_lightning_silences_its_loggers_and_restores_them():
    import logging
    import warnings

    from deepadversaries.progress import LIGHTNING_LOGGERS

    assert "lightning.pytorch" in LIGHTNING_LOGGERS
    logging.getLogger("lightning.pytorch").setLevel(logging.INFO)
    with quiet_lightning():
        assert all(logging.getLogger(n).level == logging.WARNING for n in LIGHTNING_LOGGERS)
        with warnings.catch_warnings(record=True) as caught:
            warnings.warn("The dataloader does not have many workers which may be a bottleneck.", UserWarning)
            warnings.warn("a warning of the package's own", UserWarning)
        assert [str(w.message) for w in caught] == ["a warning of the package's own"]
    assert logging.getLogger("lightning.pytorch").level == logging.INFO


def test_dann_warns_when_its_domain_classifier_wins():
    from deepadversaries.training.train import training_warnings

    diverged = [{"epoch": 1, "train_dann_domain_acc": 0.55}, {"epoch": 2, "train_dann_domain_acc": 0.999}]
    converged = [{"epoch": 1, "train_dann_domain_acc": 1.0}, {"epoch": 2, "train_dann_domain_acc": 0.62}]
    (text,) = training_warnings("dann", diverged)
    assert "0.999" in text and "not adapted" in text
    assert training_warnings("dann", converged) == []  # only the last epoch counts
    assert training_warnings("mmd", [{"epoch": 1, "train_mmd2": 0.1}]) == []
    assert training_warnings("dann", [{"epoch": 1, "train_dann_domain_acc": float("nan")}]) == []
