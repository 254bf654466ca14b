"""Test helpers for the attack tests: models with known answers, plain (unbatched)
forward passes to check claims against, run folders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from deepadversaries.models.networks import ConvNet, build_model

#: the hand-built model's bright-pixel detector fires above this stretched g value
LEVEL = 0.9
#: ...but only in this block of the last feature map (input rows and columns 16..31)
REGION = (2, 4)


def bright_pixel_convnet(split: float = 0.0) -> ConvNet:
    """A ConvNet with hand-set weights whose behaviour is known.

    Channel 0 carries relu(g - 0.9) through the three blocks (so feature (i, j) is the
    brightest excess of the 8x8 input block (i, j)); channel 1 carries g (block maxima).
    Latent z0 sums channel 0 over the 2x2 blocks of input rows/columns 16..31; z1 is the
    mean block maximum of g. Logits: spiral 40 (split - z1), elliptical 200 z0 - 4,
    merger 40 (z1 - split). Clean images (stretched g < 0.9) are spiral or merger by their
    brightness; only a bright pixel (g > ~0.93) inside the region makes them elliptical.
    """
    model = build_model("convnet")
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
        for m in model.features:
            if isinstance(m, nn.BatchNorm2d):  # identity
                m.weight.fill_(1.0)
                m.running_mean.zero_()
                m.running_var.fill_(1.0 - m.eps)
        for conv in convs:
            k = conv.kernel_size[0] // 2
            conv.weight[0, 0, k, k] = 1.0
            conv.weight[1, 1 if conv is not convs[0] else 0, k, k] = 1.0
        convs[0].bias[0] = -LEVEL
        w = model.bottleneck.weight.view(256, 32, 12, 12)
        lo, hi = REGION
        w[0, 0, lo:hi, lo:hi] = 1.0
        w[1, 1] = 1.0 / 144
        model.output.weight[0, 1] = -40.0
        model.output.bias[0] = 40.0 * split
        model.output.weight[1, 0] = 200.0
        model.output.bias[1] = -4.0
        model.output.weight[2, 1] = 40.0
        model.output.bias[2] = -40.0 * split
    return model.eval()


class PixelModel(nn.Module):
    """Known behaviour: class ``target`` wins only when band ``band`` at (row, col) is bright.

    logits = (1 for ``true``, gain (v - level) for ``target``, 0 for the third class),
    v = x[band, row, col]; p(target) > 0.5 needs gain (v - level) > ln(e + 1) = 1.31.
    With ``second`` = (band, row, col), v is the sum of both pixels (an L = 2 attack when
    one bright pixel cannot reach ``level`` + 1.31 / gain). ``calls`` (shared by copies)
    counts the images that went through ``forward``.
    """

    calls: ClassVar[list[int]] = [0]
    #: the attacks read K here (a model that does not say costs them one probe forward pass)
    n_classes = 3

    def __init__(self, row: int = 3, col: int = 7, band: int = 0, true: int = 0, target: int = 2,
                 gain: float = 30.0, level: float = 0.8, second: tuple[int, int, int] | None = None) -> None:
        super().__init__()
        self.row, self.col, self.band, self.true, self.target = row, col, band, true, target
        self.gain, self.level, self.second = gain, level, second

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        PixelModel.calls[0] += len(x)
        v = x[:, self.band, self.row, self.col]
        if self.second is not None:
            b, r, c = self.second
            v = v + x[:, b, r, c]
        logits = torch.zeros(len(x), 3, dtype=x.dtype, device=x.device)
        logits[:, self.true] = 1.0
        logits[:, self.target] = self.gain * (v - self.level)
        return logits, x.flatten(1)[:, :4]


def bright_pixel_convnet_for(images: np.ndarray) -> ConvNet:
    """The bright-pixel ConvNet split at the median z1 of ``images`` (N, 3, H, W): half of
    them spiral, half merger."""
    with torch.no_grad():
        z1 = bright_pixel_convnet().embed(torch.from_numpy(images))[:, 1]
    return bright_pixel_convnet(float(z1.median()))


def bright_pixel_case(n: int, seed: int = 4) -> tuple[np.ndarray, ConvNet, np.ndarray]:
    """``n`` random mid-grey 3 x 100 x 100 images (values 0.45-0.55), the bright-pixel ConvNet
    split at their median, and its labels (N,): elliptical only with a bright g pixel in rows
    and columns 16..31."""
    x = (0.45 + 0.1 * np.random.default_rng(seed).random((n, 3, 100, 100))).astype(np.float32)
    model = bright_pixel_convnet_for(x)
    with torch.no_grad():
        labels = model(torch.from_numpy(x))[0].argmax(1).numpy()
    return x, model, labels


def flat_images(n: int, size: int = 10, value: float = 0.3) -> np.ndarray:
    return np.full((n, 3, size, size), value, dtype=np.float32)


def plain_probabilities(model: nn.Module, image: np.ndarray, changes=()) -> np.ndarray:
    """Softmax of one plain forward pass of ``model`` on ``image`` (3, H, W) with the pixel
    changes [((row, col), (v_g, v_r, v_i)), ...] applied, in the image's precision."""
    x = torch.from_numpy(np.array(image, copy=True))
    for (r, c), v in changes:
        x[:, r, c] = torch.as_tensor(np.asarray(v, dtype=np.float64), dtype=x.dtype)
    with torch.no_grad():
        return torch.softmax(model(x[None])[0], dim=1)[0].double().numpy()


def check_claims(model: nn.Module, images: np.ndarray, results, pixels: int, targeted: bool = True,
                 low: float = 0.0, high: float = 1.0, atol: float = 1e-6) -> None:
    """Independent check of every result: at most L changed positions, values in
    [low, high], the reported probabilities are the plain model's, and every claimed
    success holds for it (p(target) > 0.5, or p(true) < 0.05)."""
    for res in results:
        assert res.image is not None
        img = res.image
        changed = np.any(img != images[res.index], axis=0)
        assert changed.sum() <= pixels
        assert img[:, changed].min() >= np.float32(low) and img[:, changed].max() <= np.float32(high)
        p = plain_probabilities(model, img)
        np.testing.assert_allclose(p, res.probabilities, atol=atol)
        if res.success:
            if targeted:
                assert p[res.target] > 0.5
            else:
                assert p[res.label] < 0.05


def make_run(path: Path, data: Path, model: nn.Module) -> Path:
    """A run folder as 'deepadv train' leaves it (config.json + checkpoints/best.pt)."""
    (path / "checkpoints").mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"kind": "deepadv-run", "model": "convnet", "method": "regular",
                                                  "data": str(data.resolve()), "seed": 0}))
    torch.save({"model": "convnet", "state_dict": model.state_dict(), "epoch": 0, "val_acc": 0.0},
               path / "checkpoints" / "best.pt")
    return path
