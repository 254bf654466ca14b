"""ResNet18 end to end at the ``tiny`` preset: train, evaluate, attack (the grid's ConvNet runs are
tested everywhere else; this is the one place the second architecture goes through every stage)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from conftest import make_toy_dataset

from deepadversaries import CLASSES
from deepadversaries.attacks.campaign import attack_run
from deepadversaries.config import AttackConfig, TrainConfig
from deepadversaries.data.dataset import load_dataset
from deepadversaries.evaluation.evaluate import evaluate_run
from deepadversaries.models.networks import count_parameters, load_model
from deepadversaries.models.runs import read_run_config
from deepadversaries.training.train import train_model


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("resnet18")
        data = make_toy_dataset(root / "data", n={"train": 24, "valid": 6, "test": 12}, seed=4)
        config = TrainConfig.from_preset("tiny", model="resnet18", method="mmd", seed=0, batch_size=8, epochs=2)
        run = train_model(data, root / "run", config, device="cpu", progress=False)
        metrics = evaluate_run(run, device="cpu")
        summary = attack_run(run, AttackConfig.from_preset("tiny", n_images=6, pop_size=8, max_iter=1), device="cpu")
        yield {"data": data, "run": run, "metrics": metrics, "summary": summary}
    finally:
        torch.set_num_threads(n)


def test_resnet18_trains_with_mmd(resnet_run):
    run = resnet_run["run"]
    config = read_run_config(run)
    assert (config.model, config.method, config.train.batch_size, config.train.epochs) == ("resnet18", "mmd", 8, 2)
    assert not config.train.channels_last  # ResNet18 on a CPU: NCHW (channels_last is 2x slower there)
    done = json.loads((run / "training.json").read_text())
    assert done["epochs"] == 2 and done["best_epoch"] in (1, 2)
    model = load_model(run)
    assert count_parameters(model) == 11_308_611 and not model.training
    with open(run / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(np.isfinite(float(r["train_mmd2"])) and np.isfinite(float(r["train_ce"])) for r in rows)


def test_resnet18_evaluation_is_its_models_predictions(resnet_run):
    ds = load_dataset(resnet_run["data"])
    model = load_model(resnet_run["run"])
    labels = ds.labels("test")
    for domain in ("Y10", "Y1"):
        with torch.no_grad():
            predicted = model(torch.from_numpy(ds.images(domain, "test")))[0].argmax(1).numpy()
        m = resnet_run["metrics"][domain]
        assert m["n"] == 12 and m["accuracy"] == pytest.approx(float(np.mean(predicted == labels)))
        confusion = np.zeros((3, 3), int)
        for t, p in zip(labels, predicted):
            confusion[t, p] += 1
        assert m["confusion"] == confusion.tolist()


def test_resnet18_attack_campaign_files(resnet_run):
    run, summary = resnet_run["run"], resnet_run["summary"]
    assert summary["model"] == "resnet18" and summary["method"] == "mmd" and summary["images_drawn"] == 6
    with open(run / "attack" / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == summary["attacked"] == summary["correctly_classified"] >= 1
    lat = np.load(run / "attack" / "latents.npz")
    assert lat["z_y10"].shape == lat["z_1p"].shape == (len(rows), 256)
    model = load_model(run)
    ds = load_dataset(resnet_run["data"])
    x = ds.images("Y10", "test")
    for k, r in enumerate(rows):
        img = x[int(r["test_index"])].copy()
        img[:, int(r["y"]), int(r["x"])] = [float(r["value_g"]), float(r["value_r"]), float(r["value_i"])]
        with torch.no_grad():
            logits, z = model(torch.from_numpy(img[None]))
        np.testing.assert_allclose(torch.softmax(logits, 1)[0].numpy(), [float(r[f"p_{c}"]) for c in CLASSES],
                                   atol=1e-5)
        np.testing.assert_allclose(lat["z_1p"][k], z[0].numpy(), atol=1e-4)
        assert int(r["iterations"]) <= 1 and r["true"] == r["predicted"]
