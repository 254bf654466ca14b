"""Evaluation of a trained run on the Y10 and Y1 test sets (SPEC 6, the paper's Tables 2 and 4).

Accuracy, weighted precision / recall / F1 (scikit-learn, ``average="weighted"``: per-class
scores weighted by the true-class counts) and the confusion matrix per domain, written to
``RUN/metrics.json`` with one figure per domain (``confusion_Y10.png``, ``confusion_Y1.png``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from . import CLASSES, DOMAINS
from .data import image_file, load_dataset
from .devices import resolve_device
from .errors import file_error
from .io import OutputLock, write_json
from .models import GalaxyClassifier, check_input_shape, load_model
from .progress import info, make_progress
from .runs import TRAINING_DONE, read_run_config

METRICS_NAME = "metrics.json"


@torch.no_grad()
def predict(model: GalaxyClassifier, images: np.ndarray | torch.Tensor, *, batch_size: int = 256,
            device: str | torch.device = "cpu", progress: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Logits (N, 3) and latents (N, 256) of stretched images, in eval mode, batch by batch."""
    device = torch.device(device)
    model = model.to(device).eval()
    n = len(images)
    logits_out = np.empty((n, model.output.out_features), dtype=np.float32)
    latents_out = np.empty((n, model.output.in_features), dtype=np.float32)
    bar = make_progress(transient=True) if progress else None
    task = bar.add_task(progress, total=n) if bar else None
    if bar:
        bar.start()
    try:
        for start in range(0, n, batch_size):
            chunk = images[start:start + batch_size]
            x = torch.as_tensor(np.asarray(chunk, dtype=np.float32) if not torch.is_tensor(chunk) else chunk)
            logits, z = model(x.to(device, torch.float32))
            logits_out[start:start + len(x)] = logits.float().cpu().numpy()
            latents_out[start:start + len(x)] = z.float().cpu().numpy()
            if bar:
                bar.advance(task, len(x))
    finally:
        if bar:
            bar.stop()
    return logits_out, latents_out


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """SPEC 6 metrics of one domain: accuracy, weighted precision/recall/F1, confusion, per class."""
    labels = list(range(len(CLASSES)))
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
                          "support": int(s_c[i])} for i, c in enumerate(CLASSES)},
    }


def evaluate_run(run: str | Path, data: str | Path | None = None, *, device: str = "auto",
                 batch_size: int | None = None) -> dict[str, Any]:
    """Evaluate a run's kept checkpoint on the Y10 and Y1 test sets; write ``metrics.json``.

    ``data=None`` uses the dataset recorded in the run's ``config.json``. Returns the
    metrics (SPEC 6 layout: ``{"Y10": {...}, "Y1": {...}}``).
    """
    from .plots.training import plot_confusion_matrix

    run = Path(run)
    config = read_run_config(run)
    if not (run / TRAINING_DONE).is_file():
        raise file_error(run, f"the training has not finished (no {TRAINING_DONE}); run 'deepadv train' first")
    dataset = load_dataset(data if data is not None else config["data"])
    torch_device = resolve_device(device)
    model = load_model(run, device=torch_device)
    check_input_shape(model, dataset.image_shape, dataset.path / image_file("Y10", "test"))
    batch_size = batch_size or max(int(config.get("eval_batch_size", 64)), 64)
    labels = dataset.labels("test")
    metrics: dict[str, Any] = {}
    with OutputLock(run, "evaluate"):
        for domain in DOMAINS:
            if not dataset.has_domain(domain):
                info(f"{dataset.path}: no {domain} images; {domain} is not evaluated")
                continue
            logits, _ = predict(model, dataset.images(domain, "test"), batch_size=batch_size, device=torch_device,
                                progress=f"evaluate {domain}")
            metrics[domain] = classification_metrics(labels, logits.argmax(axis=1))
            plot_confusion_matrix(metrics[domain]["confusion"], run / f"confusion_{domain}.png",
                                  title=f"{config['model']} {config['method']} · {domain} test")
        write_json(run / METRICS_NAME, metrics)
    return metrics
