"""Evaluation of a trained run on the Y10 and Y1 test sets (SPEC 6, the paper's Tables 2 and 4).

Accuracy, weighted precision / recall / F1 (scikit-learn, ``average="weighted"``: per-class
scores weighted by the true-class counts) and the confusion matrix per domain, written to
``RUN/metrics.json`` (last: the finished marker) with one figure per domain
(``confusion_Y10.png``, ``confusion_Y1.png``). The per-image class probabilities are kept in
``RUN/predictions.npz`` (``labels`` (N,), ``probabilities_Y10`` and ``probabilities_Y1``
(N, K) float64 for K classes, the same test galaxies in the same order), from which the report draws
its per-image bootstrap intervals. Calibration (:mod:`deepadversaries.evaluation.calibration`): the
expected calibration error (15 equal-width bins), Brier score and negative log-likelihood per
domain in ``metrics.json`` (``ece``, ``brier``, ``nll``, ``mean_confidence``, ``reliability``)
and the reliability diagram ``reliability.png``. A run adapted before inference (``adabn``)
is evaluated on Y1 with its Y1 model (``checkpoints/best_y1.pt``).

With a test-time augmentation (``tta="d4"``, ``deepadv evaluate --tta d4``) the model's
predictions are averaged over the eight rotations and flips of each image
(:class:`deepadversaries.models.equivariant.D4Average`: the mean of the eight softmaxes) and the same
files are written to ``RUN/tta_d4/`` instead, leaving the run's own evaluation as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from deepadversaries import CLASSES, DOMAINS
from deepadversaries.data.dataset import image_file, load_dataset
from deepadversaries.devices import resolve_device
from deepadversaries.models.equivariant import TTA_CHOICES, with_tta
from deepadversaries.errors import check_choice, file_error
from deepadversaries.evaluation.inference import forward_batches
from deepadversaries.io import OutputLock, write_json, write_npz
from deepadversaries.models.networks import check_input_shape, load_model
from deepadversaries.evaluation.calibration import calibration_metrics_from_logits
from deepadversaries.plots.calibration import plot_reliability_diagram
from deepadversaries.plots.training import plot_confusion_matrix
from deepadversaries.progress import info
from deepadversaries.models.runs import (
    METRICS_NAME, PREDICTIONS_NAME, RELIABILITY_NAME, TRAINING_DONE, check_same_classes, read_run_config,
)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray,
                           classes: Sequence[str] = CLASSES) -> dict[str, Any]:
    """SPEC 6 metrics of one domain: accuracy, weighted precision/recall/F1, confusion, per class.

    Args:
        y_true, y_pred: (N,) class indices.
        classes: the class names in label order (the keys of ``per_class``) [default: the paper's].
    """
    labels = list(range(len(classes)))
    precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="weighted",
                                                               zero_division=0)
    p_c, r_c, f_c, s_c = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None,
                                                         zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "n": int(len(y_true)),
        "per_class": {c: {"precision": float(p_c[i]), "recall": float(r_c[i]), "f1": float(f_c[i]),
                          "support": int(s_c[i])} for i, c in enumerate(classes)},
    }


def evaluation_dir(run: str | Path, tta: str = "none") -> Path:
    """Where an evaluation is written: the run folder, or ``RUN/tta_<name>/`` with a test-time augmentation."""
    return Path(run) if check_choice(tta, TTA_CHOICES, "test-time augmentation") == "none" else Path(run) / f"tta_{tta}"


def evaluate_run(run: str | Path, data: str | Path | None = None, *, device: str = "auto",
                 batch_size: int | None = None, tta: str = "none") -> dict[str, Any]:
    """Evaluate a run's kept checkpoint on the Y10 and Y1 test sets; write ``metrics.json``.

    Args:
        run: a run folder with a finished training.
        data: the dataset folder [default: the one recorded in the run's ``config.json``].
        device: ``auto``, ``cpu`` or ``cuda`` [default: "auto"].
        batch_size: images per forward pass [default: the run's evaluation batch size, at least 64].
        tta: ``none`` or ``d4`` (average over the eight rotations and flips; square images)
            [default: "none"].

    Returns:
        The metrics in SPEC 6 layout, ``{"Y10": {...}, "Y1": {...}}`` (a domain the dataset
        lacks is left out), also written to ``RUN/metrics.json`` with ``confusion_{domain}.png``
        and ``reliability.png`` (with ``tta="d4"``: in ``RUN/tta_d4/``).
    """
    run = Path(run)
    out = evaluation_dir(run, tta)
    config = read_run_config(run)
    if not (run / TRAINING_DONE).is_file():
        raise file_error(run, f"the training has not finished (no {TRAINING_DONE}); run 'deepadv train' first")
    dataset = load_dataset(data if data is not None else config.data)
    check_same_classes(config, dataset.classes, dataset.path)
    torch_device = resolve_device(device)
    check_input_shape(load_model(run, device=torch_device), dataset.image_shape,
                      dataset.path / image_file("Y10", "test"))
    height, width = dataset.image_shape[1:]
    if tta != "none" and height != width:
        raise file_error(dataset.path / image_file("Y10", "test"), f"images of {height}x{width} pixels: the D4 "
                         "average rotates them by 90 degrees, which needs square images")
    label = f"{config.model} {config.method}" + ("" if tta == "none" else f" · TTA {tta}")
    names = dataset.domain_names
    batch_size = batch_size or max(config.train.eval_batch_size, 64)
    labels = dataset.labels("test")
    metrics: dict[str, Any] = {}
    probabilities: dict[str, np.ndarray] = {}
    with OutputLock(run, "evaluate"):
        for domain in DOMAINS:
            if not dataset.has_domain(domain):
                info(f"{dataset.path}: no {domain} images; {domain} is not evaluated")
                continue
            model = with_tta(load_model(run, device=torch_device, domain=domain), tta)  # AdaBN: Y1 statistics for Y1
            outputs = forward_batches(model, dataset.images(domain, "test"), batch_size=batch_size,
                                      device=torch_device, progress=f"evaluate {domain}")
            metrics[domain] = classification_metrics(labels, outputs.predicted, dataset.classes)
            metrics[domain].update(calibration_metrics_from_logits(outputs.logits, labels))
            probabilities[f"probabilities_{domain}"] = outputs.probabilities
            where = domain if names[domain] == domain else f"{names[domain]} ({domain})"
            out.mkdir(parents=True, exist_ok=True)
            plot_confusion_matrix(metrics[domain]["confusion"], out / f"confusion_{domain}.png",
                                  title=f"{label} · {where} test", classes=dataset.classes)
        plot_reliability_diagram(metrics, out / RELIABILITY_NAME, title=f"{label} · test")
        write_npz(out / PREDICTIONS_NAME, labels=labels.astype(np.int64), **probabilities)
        write_json(out / METRICS_NAME, metrics)
    return metrics
