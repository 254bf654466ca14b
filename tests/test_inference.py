"""Batched inference (inference.py): the numbers of a model whose outputs are known by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tolerances import gamma, unit_roundoff
from torch import nn

from deepadversaries.evaluation.inference import (
    Outputs,
    classify_latents,
    forward_batches,
    softmax,
)


class BandSums(nn.Module):
    """logits = the sums of the three bands (scaled); latents = the band means and the image maximum.

    A BatchNorm on the input (with non-trivial running statistics) makes train and eval mode differ.
    """

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(3)
        with torch.no_grad():
            self.norm.running_mean.copy_(torch.tensor([0.1, 0.2, 0.3]))
            self.norm.running_var.copy_(torch.tensor([4.0, 1.0, 0.25]))
        self.output = nn.Linear(4, 3)
        self.calls: list[int] = []

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(1, 2, 3))[:, None]], dim=1)

    def head(self, z: torch.Tensor) -> torch.Tensor:
        return z[:, :3] * 10.0

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls.append(len(x))
        z = self.embed(x)
        return self.head(z), z


def by_hand(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """BandSums in eval mode, in float64: (x - mean) / sqrt(var + eps), then means and the maximum."""
    mean, var = np.array([0.1, 0.2, 0.3]), np.array([4.0, 1.0, 0.25])
    x = (images.astype(np.float64) - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-5)
    z = np.concatenate([x.mean(axis=(2, 3)), x.max(axis=(1, 2, 3))[:, None]], axis=1)
    return 10 * z[:, :3], z


def float32_error(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounds on |float32 BandSums - exact| per logit and per latent (tests/tolerances.py).

    In float32 the input is rounded (u), the batch norm's per-band scale a = 1/sqrt(var + eps)
    and shift c = -mean a carry 3u and 4u, and x a + c (FMA or not) 2u more: at most
    8u (|x a| + |c|) per pixel. A band mean adds the sum's gamma_n (n = H W); the maximum picks one
    pixel; the logits (10 z) one rounding more.
    """
    u = unit_roundoff(np.float32)
    mean, var = np.array([0.1, 0.2, 0.3]), np.array([4.0, 1.0, 0.25])
    a, c = 1 / np.sqrt(var + 1e-5), -mean / np.sqrt(var + 1e-5)
    x = np.asarray(images, dtype=np.float64)
    pixel = 8 * u * (np.abs(x * a[None, :, None, None]) + np.abs(c)[None, :, None, None])
    y = np.abs(x * a[None, :, None, None] + c[None, :, None, None])
    n = x.shape[2] * x.shape[3]
    bands = gamma(n) * y.mean(axis=(2, 3)) + pixel.mean(axis=(2, 3))
    latents = np.concatenate([bands, pixel.max(axis=(1, 2, 3))[:, None]], axis=1)
    logits = 10 * latents[:, :3] + u * 10 * (y.max(axis=(2, 3)) + latents[:, :3])
    return logits, latents


def test_forward_batches_equals_the_hand_computation_in_input_order():
    images = np.random.default_rng(0).normal(size=(11, 3, 6, 5)).astype(np.float64)  # float64 in, float32 out
    model = BandSums().train()
    out = forward_batches(model, images, batch_size=4, device="cpu")
    assert isinstance(out, Outputs) and not model.training  # put in eval mode
    assert model.calls == [4, 4, 3]  # consecutive batches of batch_size, the rest last
    assert out.logits.dtype == out.latents.dtype == np.float32
    assert out.logits.shape == (11, 3) and out.latents.shape == (11, 4)
    logits, latents = by_hand(images)
    logit_error, latent_error = float32_error(images)
    assert np.all(np.abs(out.logits - logits) <= logit_error)
    assert np.all(np.abs(out.latents - latents) <= latent_error)
    assert model.norm.running_mean.tolist() == pytest.approx([0.1, 0.2, 0.3])  # eval mode: statistics unchanged
    # probabilities and classes by hand
    for row, p in zip(out.logits, out.probabilities):
        exp = [math.exp(v - max(row)) for v in row]
        assert p.tolist() == pytest.approx([e / sum(exp) for e in exp], rel=1e-6)
    assert out.predicted.dtype == np.int64 and out.predicted.tolist() == np.argmax(logits, axis=1).tolist()


def test_the_batch_size_and_a_memory_mapped_input_change_nothing(tmp_path):
    images = np.random.default_rng(1).random((9, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", images)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    model = BandSums()
    whole = forward_batches(model, images, batch_size=64)
    # another batch size may take another kernel (another summation order, FMA or not): two float32
    # evaluations differ by at most twice the bound of each (not bit for bit on every CPU)
    logit_error, latent_error = float32_error(images)
    for batch in (1, 2, 5):
        part = forward_batches(model, mapped, batch_size=batch)
        assert np.all(np.abs(part.logits - whole.logits) <= 2 * logit_error)
        assert np.all(np.abs(part.latents - whole.latents) <= 2 * latent_error)
    tensor = forward_batches(model, torch.from_numpy(images), batch_size=3)
    assert np.all(np.abs(tensor.logits - whole.logits) <= 2 * logit_error)


def test_no_images_give_empty_outputs_of_the_models_sizes():
    from deepadversaries.models.networks import build_model

    out = forward_batches(build_model("convnet"), np.zeros((0, 3, 100, 100), np.float32))
    assert out.logits.shape == (0, 3) and out.latents.shape == (0, 256)
    assert out.predicted.shape == (0,)


def test_softmax_and_classify_latents():
    logits = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [1000.0, 0.0, -1000.0]], np.float32)
    p = softmax(logits)
    assert p.dtype == np.float64
    np.testing.assert_allclose(p[0], [1 / 3] * 3, rtol=1e-6)
    e = np.exp([1.0, 2.0, 3.0])
    np.testing.assert_allclose(p[1], e / e.sum(), rtol=1e-6)
    np.testing.assert_allclose(p[2], [1.0, 0.0, 0.0], atol=1e-12)  # no overflow
    model = BandSums()
    z = np.array([[0.1, 0.5, 0.2, 9.0], [3.0, -1.0, 2.0, 0.0]], np.float32)
    assert classify_latents(model, z).tolist() == [1, 0]  # argmax of 10 z[:3]
    assert classify_latents(model, z).dtype == np.int64
