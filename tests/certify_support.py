"""Hand-built and small models with known one-pixel answers, for the certification tests.

- :func:`linear_pixel_model`: issue 21's first counterexample: logits (4(v - 1/2), -4(v - 1/2), 1)
  of one pixel's value v (one band); class 2 wins only for v in about [0.30, 0.70], where no
  corner of [0, 1] lies.
- :func:`tent_pixel_model`: the second: logit 8 tent(v) - 2 for class 2 with
  tent(v) = relu(v) - 2 relu(v - 1/2), which peaks at v = 1/2 and is 0 at both ends.
- :func:`interior_convnet`: the package's ConvNet whose first layer makes the same tent of
  the g band at every position (flips only at an interior value of g), and with
  ``monotone=True`` the ramp 8 relu(g) - 6 (flips only near g = 1, the corners' side).
- :func:`random_network`: random small networks with every layer type certify bounds
  (random weights, BatchNorm with non-trivial running statistics, max-pool, a ResNet
  BasicBlock with a downsampling shortcut, the d4-convnet's equivariant blocks and invariant
  pooling).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from deepadversaries.models.equivariant import GroupBatchNorm, GroupConv2d, LiftingConv2d
from deepadversaries.models.networks import ConvNet, D4ConvNet, GalaxyClassifier


def _pixel_head(model: GalaxyClassifier, feature: int, n_features: int, out_weight, out_bias) -> GalaxyClassifier:
    with torch.no_grad():
        model.bottleneck.weight.zero_()
        model.bottleneck.bias.zero_()
        model.bottleneck.weight[0, feature] = 1.0
        model.output.weight.zero_()
        model.output.bias.copy_(torch.tensor(out_bias, dtype=torch.float32))
        model.output.weight[:, 0] = torch.tensor(out_weight, dtype=torch.float32)
    return model.eval()


def linear_pixel_model(size: int = 4, row: int = 1, col: int = 2) -> GalaxyClassifier:
    """Logits (4(v - 1/2), -4(v - 1/2), 1) of the value v of pixel (row, col) of a 1-band image."""
    conv = nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.zero_()
    model = GalaxyClassifier(nn.Sequential(conv), size * size, 3)
    return _pixel_head(model, row * size + col, size * size, [4.0, -4.0, 0.0], [-2.0, 2.0, 1.0])


def tent_pixel_model(size: int = 4, row: int = 1, col: int = 2, peak: float = 0.5, gain: float = 8.0) -> GalaxyClassifier:
    """Logits (1/2, 0, gain tent(v) - 2) of the value v of pixel (row, col) of a 1-band image, with
    tent(v) = relu(v) - relu(v - peak) / (1 - peak): rises to ``peak`` at v = peak, 0 at v = 0 and 1
    (the issue's relu(v) - 2 relu(v - 1/2) at peak 1/2)."""
    conv = nn.Conv2d(1, 2, 1)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.copy_(torch.tensor([0.0, -peak]))
    model = GalaxyClassifier(nn.Sequential(conv, nn.ReLU()), 2 * size * size, 3)
    feature = row * size + col
    _pixel_head(model, feature, 2 * size * size, [0.0, 0.0, gain], [0.5, 0.0, -2.0])
    with torch.no_grad():
        model.bottleneck.weight[0, size * size + feature] = -1.0 / (1.0 - peak)
    return model


def interior_convnet(size: int = 16, monotone: bool = False) -> ConvNet:
    """A ConvNet for (3, size, size) images whose class-2 logit is 8 tent(g) - 2 of any one changed
    pixel's g value on a black image (``monotone``: 8 relu(g) - 6); class 0 has 1/2, class 1 has 0."""
    model = ConvNet((3, size, size))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.zero_()
                m.bias.zero_()
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
                m.weight.fill_(1.0)
                m.bias.zero_()
                m.eps = 0.0
        c1, c2, c3 = model.features[0], model.features[4], model.features[8]
        c1.weight[0, 0, 2, 2] = 1.0  # relu(g)
        c1.weight[1, 0, 2, 2] = 1.0  # relu(g - 1/2)
        c1.bias[1] = -0.5
        c2.weight[0, 0, 1, 1] = 1.0
        c2.weight[0, 1, 1, 1] = 0.0 if monotone else -2.0
        c3.weight[0, 0, 1, 1] = 1.0
        n = (size // 8) ** 2
        model.bottleneck.weight.zero_()
        model.bottleneck.bias.zero_()
        model.bottleneck.weight[0, :n] = 1.0  # channel 0 of the final map, every cell
        model.output.weight.zero_()
        model.output.weight[2, 0] = 8.0
        model.output.bias.copy_(torch.tensor([0.5, 0.0, -6.0 if monotone else -2.0]))
    return model.eval()


def _randomise_bn(bn: nn.BatchNorm2d, gen: torch.Generator) -> None:
    with torch.no_grad():
        n = bn.num_features
        bn.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
        bn.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.25)
        bn.weight.copy_(torch.rand(n, generator=gen) + 0.5)
        bn.bias.copy_(torch.randn(n, generator=gen) * 0.3)


def random_network(seed: int, kind: str = "convnet", size: int = 8, bands: int = 3) -> GalaxyClassifier:
    """A random GalaxyClassifier for (bands, size, size) images, eval mode, float64.

    ``convnet``: conv-BN-ReLU-maxpool twice, flatten; ``resnet``: conv-BN-ReLU, a 3x3 max-pool
    with padding, a BasicBlock with a stride-2 downsampling shortcut, average pooling to 1 x 1;
    ``d4``: the package's d4-convnet (lifting and group convolutions, group batch norm, symmetric
    max-pools: 2 x 2 on even maps, 3 x 3 on odd ones, invariant pooling).
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if kind == "d4":
        model = D4ConvNet((bands, size, size), 3)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, GroupBatchNorm):
                    _randomise_bn(m, gen)
                elif isinstance(m, (LiftingConv2d, GroupConv2d)):
                    m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * 0.6)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.3)
            model.bottleneck.weight.copy_(torch.randn(model.bottleneck.weight.shape, generator=gen) * 0.3)
            model.output.weight.copy_(torch.randn(model.output.weight.shape, generator=gen) * 0.3)
        return model.eval().double()
    if kind == "convnet":
        features = nn.Sequential(nn.Conv2d(bands, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2))
        n_features = 6 * (size // 4) ** 2
    else:
        down = nn.Sequential(nn.Conv2d(4, 6, 1, stride=2, bias=False), nn.BatchNorm2d(6))
        features = nn.Sequential(nn.Conv2d(bands, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                                 nn.MaxPool2d(3, stride=1, padding=1), BasicBlock(4, 6, stride=2, downsample=down),
                                 nn.Dropout(0.5), nn.AdaptiveAvgPool2d(1))
        n_features = 6
    model = GalaxyClassifier(features, n_features, 3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                _randomise_bn(m, gen)
            elif isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * 0.6)
        model.bottleneck.weight.copy_(torch.randn(model.bottleneck.weight.shape, generator=gen) * 0.3)
        model.output.weight.copy_(torch.randn(model.output.weight.shape, generator=gen) * 0.3)
    return model.eval().double()


def train_tiny_convnet(images: np.ndarray, labels: np.ndarray, steps: int = 60, seed: int = 0,
                       architecture: type[GalaxyClassifier] = ConvNet) -> GalaxyClassifier:
    """The package's ConvNet (or ``architecture``: D4ConvNet) trained with Adam for ``steps`` full-batch
    steps on (N, 3, H, W) images."""
    torch.manual_seed(seed)
    model = architecture(images.shape[1:])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = torch.from_numpy(images.astype(np.float32))
    y = torch.from_numpy(labels.astype(np.int64))
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x)[0], y)
        loss.backward()
        opt.step()
    return model.eval()


def blob_images(n: int, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3, size, size) images in [0, 1] of three classes (a wide blob, a narrow one, two blobs), labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] - (size - 1) / 2
    labels = np.arange(n) % 3
    out = np.zeros((n, 3, size, size), np.float32)
    for i, c in enumerate(labels):
        dx, dy = rng.normal(0, 0.7, 2)
        if c == 0:
            blob = 0.5 * np.exp(-((xx - dx) ** 2 + (yy - dy) ** 2) / (2 * 3.0 ** 2))
        elif c == 1:
            blob = 0.9 * np.exp(-((xx - dx) ** 2 + (yy - dy) ** 2) / (2 * 1.2 ** 2))
        else:
            blob = 0.7 * (np.exp(-((xx - dx - 3) ** 2 + (yy - dy) ** 2) / 2.0)
                          + np.exp(-((xx - dx + 3) ** 2 + (yy - dy) ** 2) / 2.0))
        out[i] = np.clip(blob[None] + rng.normal(0, 0.03, (3, size, size)), 0, 1)
    return out, labels
