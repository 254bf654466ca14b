"""The domain-adaptation methods wired into training and evaluation (dann, coral, adabn) and the
calibration that evaluate writes — checked on real tiny trainings of the toy dataset."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from deepadversaries.cli import main
from deepadversaries.config import TrainConfig
from deepadversaries.errors import OptionError
from deepadversaries.evaluation.evaluate import evaluate_run
from deepadversaries.evaluation.inference import forward_batches
from deepadversaries.io import read_json
from deepadversaries.models.networks import load_model
from deepadversaries.models.runs import best_checkpoint_path, last_checkpoint_path, target_checkpoint_path
from deepadversaries.training.train import train_model


@pytest.fixture(scope="module")
def runs(toy_dataset, tmp_path_factory) -> dict:
    """dann, coral and adabn runs (3 tiny epochs each, one thread) and their evaluations."""
    root = tmp_path_factory.mktemp("methods")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {}
        for method in ("dann", "coral", "adabn"):
            run = train_model(toy_dataset, root / method, TrainConfig.from_preset("tiny", method=method),
                              device="cpu", progress=False)
            out[method] = (run, evaluate_run(run, device="cpu"))
        return out
    finally:
        torch.set_num_threads(threads)


def _log(run) -> list[dict[str, str]]:
    with open(run / "log.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_weights_belong_to_their_method():
    assert TrainConfig.from_preset("quick", method="coral").method_settings == {"weight": 1.0}
    assert TrainConfig.from_preset("quick", method="dann").method_settings == {"weight": 1.0, "gamma": 10.0, "hidden": 256}
    assert TrainConfig.from_preset("quick", method="mmd").method_settings["weight"] == 0.05
    assert TrainConfig.from_preset("quick", method="coral", coral_weight=0.5).method_settings == {"weight": 0.5}
    assert TrainConfig.from_preset("quick", method="coral", method_settings={"weight": 0.5}).method_settings == \
        {"weight": 0.5}
    assert TrainConfig.from_preset("quick", method="regular").method_settings == {}
    with pytest.raises(OptionError, match="belongs to another method"):
        TrainConfig.from_preset("quick", method="mmd", coral_weight=2.0)
    with pytest.raises(OptionError, match="non-negative"):
        TrainConfig.from_preset("quick", method="dann", dann_weight=-1.0)
    # the paper's weight decay: 1e-4 when adapting during training, 1e-3 otherwise (adabn trains regularly)
    assert TrainConfig.from_preset("quick", method="coral").weight_decay == 1e-4
    assert TrainConfig.from_preset("quick", method="adabn").weight_decay == 1e-3


def test_bad_method_options_exit_2(toy_dataset, tmp_path, capsys):
    code = main(["train", "--data", str(toy_dataset), "--out", str(tmp_path / "r"), "--method", "magic",
                 "--preset", "tiny", "--device", "cpu"])
    assert code == 2 and "unknown method 'magic'" in capsys.readouterr().err
    code = main(["train", "--data", str(toy_dataset), "--out", str(tmp_path / "r"), "--method", "coral",
                 "--coral-weight", "-1", "--preset", "tiny", "--device", "cpu"])
    assert code == 2 and "--coral-weight" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_coral_and_dann_log_their_terms(runs):
    coral = _log(runs["coral"][0])[-1]
    assert math.isfinite(float(coral["train_coral"])) and float(coral["train_coral"]) >= 0
    assert coral["train_mmd2"] in ("", "nan")
    dann = _log(runs["dann"][0])
    lambdas = [float(r["train_dann_lambda"]) for r in dann]
    # Ganin et al.'s schedule rises from 0 towards 1 over the training
    assert 0 < lambdas[0] < lambdas[-1] < 1
    assert all(0 <= float(r["train_dann_domain_acc"]) <= 1 for r in dann)


def test_dann_trains_its_domain_classifier(runs):
    """The domain classifier is a submodule the optimiser moves (else the reversal trains nothing).

    The module is rebuilt as training builds it (same seed, same config), so its alignment
    weights are exactly the ones training started from; every alignment parameter must be
    in the optimiser, and the trained checkpoint must differ from that start.
    """
    import lightning as L

    from deepadversaries.models.runs import read_run_config
    from deepadversaries.training.module import GalaxyClassifierModule

    run = runs["dann"][0]
    config = read_run_config(run)
    L.seed_everything(config.seed, workers=True, verbose=False)  # as training._fit_run does
    module = GalaxyClassifierModule(config.train, config.class_weights, image_shape=config.image_shape,
                                    classes=config.classes)
    alignment = dict(module.alignment.named_parameters())
    assert alignment, "dann has no domain-classifier parameters"
    optimiser = module.configure_optimizers()
    optimiser = optimiser["optimizer"] if isinstance(optimiser, dict) else optimiser
    optimised = {id(p) for group in optimiser.param_groups for p in group["params"]}
    missing = [name for name, p in alignment.items() if id(p) not in optimised]
    assert not missing, f"alignment parameters left out of the optimiser: {missing}"
    start = {k: v.detach().clone() for k, v in module.alignment.state_dict().items()}
    state = torch.load(last_checkpoint_path(run), map_location="cpu", weights_only=True)["state_dict"]
    trained = {k.removeprefix("alignment."): v for k, v in state.items() if k.startswith("alignment.")}
    assert set(trained) == set(start)
    unchanged = [k for k in alignment if torch.equal(trained[k], start[k])]
    assert not unchanged, f"domain-classifier parameters that never moved: {unchanged}"


def test_adabn_adapts_only_batch_norm_statistics_for_y1(runs, toy_dataset):
    run, metrics = runs["adabn"]
    assert target_checkpoint_path(run).is_file()
    y10 = torch.load(best_checkpoint_path(run), weights_only=True)["state_dict"]
    y1 = torch.load(target_checkpoint_path(run), weights_only=True)["state_dict"]
    differ = {k for k in y10 if not torch.equal(y10[k], y1[k])}
    assert differ and all(k.endswith(("running_mean", "running_var")) for k in differ)
    # evaluate used the Y1 model on Y1 and the Y10 model on Y10
    from deepadversaries.data.dataset import load_dataset

    ds = load_dataset(toy_dataset)
    labels = ds.labels("test")
    for domain in ("Y10", "Y1"):
        pred = forward_batches(load_model(run, domain=domain), ds.images(domain, "test")).predicted
        assert metrics[domain]["accuracy"] == pytest.approx(float(np.mean(pred == labels)))
    assert read_json(run / "training.json")["target_adaptation"]["method"] == "adabn"


def test_evaluate_writes_calibration(runs, toy_dataset):
    run, metrics = runs["coral"]
    from deepadversaries.data.dataset import load_dataset

    ds = load_dataset(toy_dataset)
    labels = ds.labels("test")
    for domain in ("Y10", "Y1"):
        out = forward_batches(load_model(run, domain=domain), ds.images(domain, "test"))
        p = out.probabilities
        onehot = np.eye(p.shape[1])[labels]
        assert metrics[domain]["brier"] == pytest.approx(float(np.mean(np.sum((p - onehot) ** 2, axis=1))), abs=1e-6)
        assert metrics[domain]["nll"] == pytest.approx(float(-np.mean(np.log(p[np.arange(len(labels)), labels]))),
                                                       abs=1e-5)
        conf, correct = p.max(axis=1), p.argmax(axis=1) == labels
        bins = np.minimum((conf * 15).astype(int), 14)  # 15 equal-width bins on the confidence
        ece = sum(np.sum(bins == b) / len(p) * abs(correct[bins == b].mean() - conf[bins == b].mean())
                  for b in range(15) if np.any(bins == b))
        assert metrics[domain]["ece"] == pytest.approx(ece, abs=1e-5)
    assert (run / "reliability.png").is_file()
    assert read_json(run / "config.json")["checkpoint_selection"].startswith("best Y10 validation accuracy")
