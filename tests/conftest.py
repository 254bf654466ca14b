"""Shared fixtures: small generated datasets (never a download)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deepadversaries import SPLITS
from deepadversaries.data import image_file, label_file


def make_toy_dataset(path: Path, n: dict[str, int] | None = None, size: int = 100, seed: int = 0,
                     with_y1: bool = True) -> Path:
    """Write a published-layout dataset of Gaussian blobs whose shape depends on the class.

    Class 0 is a wide, faint blob, class 1 a narrow bright blob, class 2 two blobs; Y1 has
    the same scenes with sqrt(10) more relative noise. Learnable in a few epochs.
    """
    n = n or {"train": 96, "valid": 24, "test": 48}
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] - size / 2
    path.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        k = n[split]
        labels = np.arange(k) % 3
        rng.shuffle(labels)
        scenes = np.zeros((k, 3, size, size), np.float32)
        for i, c in enumerate(labels):
            dx, dy = rng.normal(0, 2, 2)
            if c == 0:
                blob = 300 * np.exp(-((xx - dx) ** 2 + (yy - dy) ** 2) / (2 * 8.0**2))
            elif c == 1:
                blob = 1500 * np.exp(-((xx - dx) ** 2 + (yy - dy) ** 2) / (2 * 2.5**2))
            else:
                blob = 800 * (np.exp(-((xx - dx - 8) ** 2 + (yy - dy) ** 2) / (2 * 3.0**2))
                              + np.exp(-((xx - dx + 8) ** 2 + (yy - dy) ** 2) / (2 * 3.0**2)))
            scenes[i] = blob[None] * np.array([0.6, 1.0, 1.2], np.float32)[:, None, None]
        sky = 50.0
        y10 = 10 * scenes + rng.normal(0, np.sqrt(10 * sky), scenes.shape)
        np.save(path / image_file("Y10", split), y10.astype(np.float32))
        if with_y1:
            y1 = scenes + rng.normal(0, np.sqrt(sky), scenes.shape)
            np.save(path / image_file("Y1", split), y1.astype(np.float32))
        np.save(path / label_file(split), np.eye(3, dtype=np.float32)[labels])
    return path


@pytest.fixture(scope="session")
def toy_dataset(tmp_path_factory) -> Path:
    """A small learnable dataset in the published layout (no catalogue, no metadata)."""
    return make_toy_dataset(tmp_path_factory.mktemp("toy") / "data")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """The simulator's ``tiny`` preset (about 60 galaxies), made once per test session."""
    from deepadversaries.simulate import simulate_dataset

    return simulate_dataset(tmp_path_factory.mktemp("tiny") / "data", preset="tiny", seed=0, workers=1)
