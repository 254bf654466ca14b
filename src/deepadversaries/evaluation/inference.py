"""Batched inference: a model's logits and latents for many images, in fixed batches.

This is the one place that turns an array of model-input (stretched) images into outputs;
evaluation, the attack campaign, the analysis and the robustness benchmark all call it.

Contract: the model is put in eval mode; rows are computed in consecutive batches of
``batch_size`` images, in input order, under ``torch.inference_mode``; inputs are cast to
float32. So one (model, images, batch_size, device) always gives the same numbers, and a
memory-mapped array is read one batch at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from deepadversaries.progress import make_progress


@dataclass(frozen=True)
class Outputs:
    """What a model says about N images.

    Attributes:
        logits: (N, n_classes) float32.
        latents: (N, latent_dim) float32, the 256-d bottleneck ``z`` of the package's models.
    """

    logits: np.ndarray
    latents: np.ndarray

    @property
    def probabilities(self) -> np.ndarray:
        """Softmax of the logits, computed in float32 and returned as float64, (N, n_classes)."""
        return softmax(self.logits)

    @property
    def predicted(self) -> np.ndarray:
        """The predicted class of each image, (N,) int64."""
        return self.logits.argmax(axis=1).astype(np.int64)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities of float32 logits (N, C): torch's softmax in float32, as float64."""
    t = torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))
    return torch.softmax(t, dim=1).double().numpy()


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter (the CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@torch.inference_mode()
def forward_batches(model: nn.Module, images: np.ndarray | torch.Tensor, *, batch_size: int = 256,
                    device: str | torch.device | None = None, progress: str | None = None) -> Outputs:
    """Logits and latents of ``images`` from a model returning ``(logits, z)``.

    Args:
        model: a classifier whose ``forward`` returns ``(logits, latents)``; it is moved to
            ``device`` and put in eval mode.
        images: (N, bands, H, W) model-input images (a memory-mapped array is fine).
        batch_size: images per forward pass [default: 256].
        device: where to run [default: the model's device].
        progress: a description for a transient progress bar [default: None, no bar].

    Returns:
        :class:`Outputs` with (N, C) logits and (N, D) latents, float32, in input order.
    """
    device = model_device(model) if device is None else torch.device(device)
    model = model.to(device).eval()
    n = len(images)
    logits_parts: list[np.ndarray] = []
    latent_parts: list[np.ndarray] = []
    bar = make_progress(transient=True) if progress else None
    task = bar.add_task(progress, total=n) if bar is not None else None
    if bar is not None:
        bar.start()
    try:
        for start in range(0, n, batch_size):
            chunk = images[start:start + batch_size]
            x = chunk if torch.is_tensor(chunk) else torch.from_numpy(np.require(chunk, np.float32, ["C", "W"]))
            logits, z = model(x.to(device, torch.float32))
            logits_parts.append(logits.float().cpu().numpy())
            latent_parts.append(z.float().cpu().numpy())
            if bar is not None:
                bar.advance(task, len(x))
    finally:
        if bar is not None:
            bar.stop()
    if not logits_parts:
        n_classes = getattr(getattr(model, "output", None), "out_features", 0)
        latent_dim = getattr(getattr(model, "output", None), "in_features", 0)
        return Outputs(np.zeros((0, n_classes), np.float32), np.zeros((0, latent_dim), np.float32))
    return Outputs(np.concatenate(logits_parts), np.concatenate(latent_parts))


@torch.inference_mode()
def classify_latents(model: nn.Module, latents: np.ndarray) -> np.ndarray:
    """The model's class of each latent row: ``argmax head(z)``, (N,) int64.

    Args:
        model: a classifier with a ``head(z) -> logits`` method.
        latents: (N, D) latent vectors.
    """
    device = model_device(model)
    z = torch.from_numpy(np.asarray(latents, np.float32).reshape(len(latents), -1)).to(device)
    return model.head(z).argmax(dim=1).cpu().numpy().astype(np.int64)
