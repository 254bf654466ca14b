"""evaluate: SPEC 6 metrics equal scikit-learn's (and a hand computation) on the same predictions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_score, recall_score

from deepadversaries.data.dataset import load_dataset
from deepadversaries.errors import DeepAdvError
from deepadversaries.evaluation.evaluate import classification_metrics, evaluate_run
from deepadversaries.io import write_json
from deepadversaries.models.networks import build_model
from deepadversaries.models.runs import RUN_KIND


def _weighted_by_hand(y_true, y_pred):
    """Weighted precision/recall/F1 from the confusion matrix, weights = true-class counts."""
    cm = np.zeros((3, 3))
    for t, p in zip(y_true, y_pred):
        cm[t, p] += 1
    support = cm.sum(axis=1)
    precision = np.divide(np.diag(cm), cm.sum(axis=0), out=np.zeros(3), where=cm.sum(axis=0) > 0)
    recall = np.divide(np.diag(cm), support, out=np.zeros(3), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(3), where=(precision + recall) > 0)
    w = support / support.sum()
    return (w * precision).sum(), (w * recall).sum(), (w * f1).sum(), cm


def test_classification_metrics_by_hand():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 3, 200)
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 3, 200))
    m = classification_metrics(y_true, y_pred)
    p, r, f, cm = _weighted_by_hand(y_true, y_pred)
    assert m["precision"] == pytest.approx(p) and m["recall"] == pytest.approx(r) and m["f1"] == pytest.approx(f)
    assert m["accuracy"] == pytest.approx(np.mean(y_true == y_pred))
    assert m["confusion"] == cm.astype(int).tolist()
    # a class never predicted: precision 0 for it, no warning-driven NaN
    m2 = classification_metrics(np.array([0, 1, 2, 2]), np.array([0, 0, 0, 2]))
    assert m2["per_class"]["elliptical"]["precision"] == 0.0 and np.isfinite(m2["f1"])


@pytest.fixture()
def fake_run(toy_dataset, tmp_path):
    """A finished run folder holding a seeded ConvNet whose output layer is a least-squares probe
    of its (random) latents: varied, better-than-chance predictions without a training loop."""
    torch.manual_seed(0)
    model = build_model("convnet")
    ds = load_dataset(toy_dataset)
    x = torch.from_numpy(ds.images("Y10", "train"))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None  # cumulative average: exact statistics from one pass
        model.train()(x)
        z = model.eval().embed(x).double()
        design = torch.cat([z, torch.ones(len(z), 1, dtype=torch.float64)], dim=1)
        target = torch.nn.functional.one_hot(torch.from_numpy(ds.labels("train")), 3).double()
        coef = torch.linalg.lstsq(design, target).solution
        model.output.weight.copy_(coef[:-1].T)
        model.output.bias.copy_(coef[-1])
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    write_json(run / "config.json", {"kind": RUN_KIND, "model": "convnet", "method": "regular",
                                     "data": str(toy_dataset.resolve()), "seed": 0, "eval_batch_size": 16})
    torch.save({"model": "convnet", "state_dict": model.state_dict(), "epoch": 1, "val_acc": 0.0},
               run / "checkpoints" / "best.pt")
    write_json(run / "training.json", {"epochs": 1})
    return run, model.eval()


def test_evaluate_equals_scikit_learn_on_the_same_predictions(fake_run, toy_dataset):
    run, model = fake_run
    metrics = evaluate_run(run, device="cpu")
    assert set(metrics) == {"Y10", "Y1"}
    assert json.loads((run / "metrics.json").read_text()) == metrics
    ds = load_dataset(toy_dataset)
    y = ds.labels("test")
    for domain in ("Y10", "Y1"):
        with torch.no_grad():
            pred = model(torch.from_numpy(ds.images(domain, "test")))[0].argmax(1).numpy()
        assert len(np.unique(pred)) > 1  # a meaningful comparison, not a constant classifier
        m = metrics[domain]
        assert m["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
        assert m["precision"] == pytest.approx(precision_score(y, pred, average="weighted", zero_division=0))
        assert m["recall"] == pytest.approx(recall_score(y, pred, average="weighted", zero_division=0))
        assert m["f1"] == pytest.approx(f1_score(y, pred, average="weighted", zero_division=0))
        assert m["confusion"] == confusion_matrix(y, pred, labels=[0, 1, 2]).tolist()
        png = run / f"confusion_{domain}.png"
        with Image.open(png) as im:
            assert im.info["dpi"][0] >= 149 and im.size[0] > 500


def test_evaluate_refuses_unfinished_runs_and_other_data(fake_run, tmp_path):
    run, _ = fake_run
    (run / "training.json").unlink()
    with pytest.raises(DeepAdvError, match="not finished"):
        evaluate_run(run, device="cpu")
    with pytest.raises(DeepAdvError, match="not a run folder"):
        evaluate_run(tmp_path, device="cpu")
