"""Train a plain PyTorch CNN outside deepadversaries and ship it as TorchScript (docs/own-data.md).

This stands for "a classifier trained elsewhere": an ordinary ``nn.Module`` with no
``embed``/``head`` methods, trained with a plain loop, exported with
``torch.jit.script(model).save(path)``. Its input is the dataset's model input
(``load_dataset(DATA).images("Y10", split)``: the normalisation ``deepadv import`` fitted),
which is what ``deepadv evaluate`` and ``deepadv attack`` will feed it; a model trained on
another normalisation would see other numbers.

Usage::

    python docs/examples/train_elsewhere.py --data owndata --out user_cnn.pt

then adopt it, taking the latent from its ``features`` block::

    deepadv train --model-file user_cnn.pt --latent-layer features --data owndata --out runs/user_cnn
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deepadversaries.data.dataset import load_dataset


class SmallCNN(nn.Module):
    """Each image normalised on its own, three conv blocks (group norm: no running statistics to
    settle on a few hundred images), global average pooling (the 64-d ``features``) and a linear
    classifier."""

    def __init__(self, bands: int, n_classes: int) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(4, c_out), nn.ReLU(), nn.MaxPool2d(2)]

        self.features = nn.Sequential(nn.InstanceNorm2d(bands), *block(bands, 16), *block(16, 32), *block(32, 64),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(64, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="dataset folder from 'deepadv import'")
    parser.add_argument("--out", type=Path, default=Path("user_cnn.pt"), help="TorchScript file to write")
    parser.add_argument("--epochs", type=int, default=15, help="training epochs [default: 15]")
    parser.add_argument("--seed", type=int, default=0, help="random seed [default: 0]")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    dataset = load_dataset(args.data)
    x = torch.from_numpy(np.ascontiguousarray(dataset.images("Y10", "train")))
    y = torch.from_numpy(dataset.labels("train"))
    x_valid = torch.from_numpy(np.ascontiguousarray(dataset.images("Y10", "valid")))
    y_valid = torch.from_numpy(dataset.labels("valid"))
    model = SmallCNN(x.shape[1], len(dataset.classes))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(args.epochs):
        model.train()
        for idx in torch.randperm(len(x)).split(32):
            optimiser.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            optimiser.step()
        model.eval()
        with torch.no_grad():
            accuracy = (model(x_valid).argmax(1) == y_valid).float().mean().item()
        print(f"epoch {epoch + 1}: loss {loss.item():.3f}, validation accuracy {accuracy:.3f}")
    torch.jit.script(model.eval()).save(str(args.out))
    print(f"wrote {args.out} (TorchScript; classes {', '.join(dataset.classes)})")


if __name__ == "__main__":
    main()
