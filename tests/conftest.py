"""Shared fixtures: small generated datasets (never a download) and the session's real tiny runs.

Session fixtures, each made once and only when a test asks for it:

- ``toy_dataset``: Gaussian blobs in the published layout (learnable in a few epochs);
- ``tiny_dataset``: the simulator's ``tiny`` preset;
- ``regular_run`` / ``mmd_run``: real ``tiny`` trainings (``train_model``) on the toy data;
- ``tiny_campaign``: those two runs attacked by the real ``attack_run`` (the ``tiny`` campaign).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deepadversaries import SPLITS
from deepadversaries.data.dataset import image_file, label_file


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


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``):
    its small networks and batches gain nothing from two, and two threads slow down badly when other
    processes share the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def toy_dataset(tmp_path_factory) -> Path:
    """A small learnable dataset in the published layout (no catalogue, no metadata)."""
    return make_toy_dataset(tmp_path_factory.mktemp("toy") / "data")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """The simulator's ``tiny`` preset (60 galaxies), made once per test session."""
    from deepadversaries.config import SimulateConfig
    from deepadversaries.simulation.simulate import simulate_dataset

    return simulate_dataset(tmp_path_factory.mktemp("tiny") / "data", SimulateConfig.from_preset("tiny", seed=0),
                            workers=1)


def _train_tiny(data: Path, out: Path, method: str) -> Path:
    import torch

    from deepadversaries.config import TrainConfig
    from deepadversaries.training.train import train_model

    n = torch.get_num_threads()
    torch.set_num_threads(1)  # a 3-epoch run on small batches: one thread is as fast and immune to load
    try:
        return train_model(data, out, TrainConfig.from_preset("tiny", method=method, seed=0), device="cpu",
                           progress=False)
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="session")
def regular_run(toy_dataset, tmp_path_factory) -> Path:
    """A real ``tiny`` ConvNet run with regular training on the toy data (``train_model``)."""
    return _train_tiny(toy_dataset, tmp_path_factory.mktemp("runs") / "regular", "regular")


@pytest.fixture(scope="session")
def mmd_run(toy_dataset, tmp_path_factory) -> Path:
    """A real ``tiny`` ConvNet run with MMD domain adaptation on the toy data."""
    return _train_tiny(toy_dataset, tmp_path_factory.mktemp("runs") / "mmd", "mmd")


@pytest.fixture(scope="session")
def tiny_campaign(regular_run, mmd_run) -> dict[str, Path]:
    """The two tiny runs attacked by the real ``attack_run`` with the ``tiny`` campaign.

    Three epochs of training leave these models far from the decision boundaries of a
    single pixel: their campaigns attack real images and flip none (the "no image flipped
    under both runs" case of the analysis). ``{"regular": run, "mmd": run}``.
    """
    import torch

    from deepadversaries.attacks.campaign import attack_run
    from deepadversaries.config import AttackConfig

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for run in (regular_run, mmd_run):
            if not (run / "attack" / "summary.json").is_file():
                attack_run(run, AttackConfig.from_preset("tiny", seed=0), device="cpu")
    finally:
        torch.set_num_threads(n)
    return {"regular": regular_run, "mmd": mmd_run}


@pytest.fixture(scope="session")
def toy_campaign(toy_dataset, tmp_path_factory) -> dict:
    """Two run folders of hand-built 'toy models' (regular, mmd) attacked by the real campaign
    so that images flip under both runs (tests/campaign_support.py)."""
    from campaign_support import make_toy_campaign

    return make_toy_campaign(tmp_path_factory.mktemp("toy_campaign"), toy_dataset)


@pytest.fixture(scope="session")
def toy_analysis(toy_campaign, tmp_path_factory) -> dict:
    """``analyze_runs`` of the toy campaign, once; with the figures it drew (before saving).

    ``{"out": folder, "result": analysis.json content, "figures": {file name: Figure}}``.
    """
    import torch
    from campaign_support import FigureRecorder

    from deepadversaries.analysis.analyze import analyze_runs
    from deepadversaries.plots import latent

    out = tmp_path_factory.mktemp("toy_analysis") / "analysis"
    recorder = FigureRecorder()
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(latent, "save_figure", recorder.wrap(latent.save_figure))
            result = analyze_runs(toy_campaign["regular"], toy_campaign["mmd"], out, n_isomap=30, examples=3,
                                  seed=0, preset="tiny", device="cpu")
    finally:
        torch.set_num_threads(n)
    return {"out": out, "result": result, "figures": recorder.figures}
