"""Test helpers for the attack tests: a ConvNet with known behaviour, run folders."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from deepadversaries.models import ConvNet, build_model

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


def make_run(path: Path, data: Path, model: nn.Module) -> Path:
    """A run folder as 'deepadv train' leaves it (config.json + checkpoints/best.pt)."""
    (path / "checkpoints").mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"kind": "deepadv-run", "model": "convnet", "method": "regular",
                                                  "data": str(data.resolve()), "seed": 0}))
    torch.save({"model": "convnet", "state_dict": model.state_dict(), "epoch": 0, "val_acc": 0.0},
               path / "checkpoints" / "best.pt")
    return path
