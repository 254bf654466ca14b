"""A real attack campaign that flips images, for the analysis and figure tests.

Three-epoch ``tiny`` trainings are never flipped by one pixel (``tiny_campaign`` in
conftest.py shows it), so the analysis tests that need images flipped under both runs use
"toy models": the hand-built ConvNet of the attack tests (``attack_support.bright_pixel_convnet``:
a bright pixel in a known region makes any image elliptical), put into two run folders as
``deepadv train`` leaves them, and attacked by the real ``attack_run``. The two runs:

- ``regular``: the detector with its spiral/merger split at the median brightness of the
  test set;
- ``mmd``: the same detector with its split at the 40th percentile (so the correctly
  classified, attacked images differ) and its latent space scaled by 2 (bottleneck ×2,
  output layer ÷2: the same logits). Its clean latents are exactly twice the regular
  run's, so every d_E(Y10–Y1) of the mmd run is twice the regular run's — a number the
  tests know without the analysis code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepadversaries.config import TrainConfig
from deepadversaries.data.dataset import load_dataset
from deepadversaries.io import write_json
from deepadversaries.models.runs import RunConfig, best_checkpoint_path

#: the mmd toy model's latent scale relative to the regular one
LATENT_SCALE = 2.0
#: the toy campaign: 24 test images, population 30, 3 generations (flips about two thirds)
TOY_ATTACK = {"n_images": 24, "pop_size": 30, "max_iter": 3}


def write_run(path: Path, data: Path, model: torch.nn.Module, method: str, *, model_name: str = "convnet",
              finished: bool = False) -> Path:
    """A run folder as ``deepadv train`` leaves it: a real ``config.json`` and ``checkpoints/best.pt``."""
    ds = load_dataset(data)
    labels = ds.labels("train")
    config = RunConfig(train=TrainConfig(model=model_name, method=method, preset="tiny"),
                       data=str(Path(data).resolve()), resolved_device="cpu",
                       image_shape=tuple(ds.image_shape), domains=tuple(ds.domains),
                       counts={s: int(len(ds.labels(s))) for s in ("train", "valid", "test")},
                       class_counts={c: int((labels == k).sum()) for k, c in enumerate(("spiral", "elliptical",
                                                                                      "merger"))})
    best = best_checkpoint_path(path)
    best.parent.mkdir(parents=True, exist_ok=True)
    write_json(path / "config.json", config.to_json())
    torch.save({"model": model_name, "state_dict": model.state_dict(), "epoch": 1, "val_acc": 0.0}, best)
    if finished:
        write_json(path / "training.json", {"epochs": 1, "best_epoch": 1})
    return path


def toy_models(data: Path) -> dict[str, torch.nn.Module]:
    """The two hand-built models of the toy campaign (see the module docstring)."""
    from attack_support import bright_pixel_convnet

    ds = load_dataset(data)
    with torch.no_grad():
        brightness = bright_pixel_convnet().embed(torch.from_numpy(ds.images("Y10", "test")))[:, 1].numpy()
    regular = bright_pixel_convnet(float(np.percentile(brightness, 50)))
    adapted = bright_pixel_convnet(float(np.percentile(brightness, 40)))
    with torch.no_grad():
        adapted.bottleneck.weight.mul_(LATENT_SCALE)
        adapted.bottleneck.bias.mul_(LATENT_SCALE)
        adapted.output.weight.div_(LATENT_SCALE)
    return {"regular": regular.eval(), "mmd": adapted.eval()}


def make_toy_campaign(root: Path, data: Path) -> dict[str, Any]:
    """Both toy runs, attacked with the real campaign; {"regular": run, "mmd": run, "models": {...}}."""
    from deepadversaries.attacks.campaign import attack_run
    from deepadversaries.config import AttackConfig

    models = toy_models(data)
    runs: dict[str, Any] = {"models": models, "data": data}
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for method, model in models.items():
            run = write_run(root / f"convnet_{method}", data, model, method)
            attack_run(run, AttackConfig.from_preset("tiny", **TOY_ATTACK), device="cpu")
            runs[method] = run
    finally:
        torch.set_num_threads(n)
    return runs


class FigureRecorder:
    """Keeps every figure a plotting module saves (``save_figure`` wrapped), by file name."""

    def __init__(self) -> None:
        self.figures: dict[str, Any] = {}

    def wrap(self, real):
        def save_figure(fig, path, *args, **kwargs):
            self.figures[Path(path).name] = fig
            return real(fig, path, *args, **kwargs)

        return save_figure
