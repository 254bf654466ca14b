"""The run folder: where a trained model, its config, logs and results live.

Layout (docs/architecture.md)::

    RUN/config.json            RunConfig: the training settings and the dataset facts
    RUN/checkpoints/best.pt    the kept weights (best Y10 validation accuracy)
    RUN/checkpoints/best_y1.pt the same weights adapted for Y1 inference (adabn runs only)
    RUN/checkpoints/last.ckpt  Lightning's checkpoint of the last epoch (resuming)
    RUN/training.json          written last by ``train``: marks a finished training
    RUN/metrics.json           ``evaluate`` (and RUN/predictions.npz: per-image probabilities)
    RUN/attack/                ``attack`` (summary.json written last)

:func:`read_run_config` is the one reader of ``config.json``: it checks the file once and
returns a typed :class:`RunConfig`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .config import TrainConfig
from .errors import DeepAdvError, file_error
from .io import read_json
from .methods import CHECKPOINT_CRITERION

RUN_KIND = "deepadv-run"
CONFIG_NAME = "config.json"
TRAINING_DONE = "training.json"
METRICS_NAME = "metrics.json"
PREDICTIONS_NAME = "predictions.npz"
RELIABILITY_NAME = "reliability.png"
#: keys every config.json must have, with their types
REQUIRED_KEYS: dict[str, type | tuple[type, ...]] = {
    "kind": str, "model": str, "method": str, "data": str, "seed": int,
}


@dataclass(frozen=True)
class RunConfig:
    """What a run's ``config.json`` records: the training settings, where and on what it ran.

    Attributes:
        train: the training settings (model, method, seed, optimiser, …).
        data: absolute path of the dataset folder it was trained on.
        device: the device asked for (``auto``, ``cpu``, ``cuda``) [default: "auto"].
        resolved_device: the device used, e.g. ``cpu`` or ``cuda:0``.
        class_weights: cross-entropy weights w_m = N / (M n_m), one per class.
        class_counts: training images per class name.
        counts: images per split.
        image_shape: (bands, height, width) of the images.
        domains: the domains of the dataset (``Y10``, and ``Y1`` when present).
        stretch: stretch constants (low, high) per domain.
        dataset_seed, dataset_version: from the dataset's ``dataset.json`` (None for the published data).
        started: when the training first started (UTC ISO time).
        resumed_from_epoch: the last finished epoch when the training was continued, else None.
        version: the deepadversaries version that trained it.
    """

    train: TrainConfig
    data: str
    device: str = "auto"
    resolved_device: str = "cpu"
    class_weights: tuple[float, ...] = ()
    class_counts: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    image_shape: tuple[int, ...] = ()
    domains: tuple[str, ...] = ()
    stretch: dict[str, list[float]] = field(default_factory=dict)
    dataset_seed: int | None = None
    dataset_version: int | None = None
    started: str | None = None
    resumed_from_epoch: int | None = None
    version: str = __version__

    @property
    def model(self) -> str:
        return self.train.model

    @property
    def method(self) -> str:
        return self.train.method

    @property
    def seed(self) -> int:
        return self.train.seed

    @property
    def preset(self) -> str:
        return self.train.preset

    def replace(self, **changes: Any) -> "RunConfig":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """The flat ``config.json`` object (``"kind": "deepadv-run"``)."""
        train = self.train.to_json()
        note, overridden = train.pop("preset_note"), train.pop("overridden")
        out: dict[str, Any] = {"kind": RUN_KIND, "deepadv_version": self.version}
        out.update({k: train.pop(k) for k in ("model", "method", "preset")})
        out.update(data=self.data, seed=train.pop("seed"), device=self.device, resolved_device=self.resolved_device)
        out.update({k: train[k] for k in ("epochs", "lr", "betas", "eps", "weight_decay", "batch_size",
                                          "eval_batch_size", "patience")})
        out.update(early_stopping_monitor="val_loss", checkpoint_selection=CHECKPOINT_CRITERION)
        out.update({k: v for k, v in train.items() if k not in out})
        out.update(class_weights=list(self.class_weights), class_counts=dict(self.class_counts),
                   counts=dict(self.counts), image_shape=list(self.image_shape), domains=list(self.domains),
                   stretch={k: list(v) for k, v in self.stretch.items()}, dataset_seed=self.dataset_seed,
                   dataset_version=self.dataset_version, preset_note=note, overridden=overridden)
        if self.resumed_from_epoch is not None:
            out["resumed_from_epoch"] = self.resumed_from_epoch
        if self.started is not None:
            out["started"] = self.started
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], source: str | Path = CONFIG_NAME) -> "RunConfig":
        """Read a ``config.json`` object; a :class:`FileError` naming ``source`` when it is not one."""
        if not isinstance(obj, Mapping) or obj.get("kind") != RUN_KIND:
            raise file_error(source, f"not a deepadv run config (expected \"kind\": \"{RUN_KIND}\")")
        for key, typ in REQUIRED_KEYS.items():
            if key not in obj:
                raise file_error(source, f"missing key {key!r}")
            if not isinstance(obj[key], typ) or isinstance(obj[key], bool):
                raise file_error(source, f"key {key!r} has the wrong type ({type(obj[key]).__name__})")
        try:
            train = TrainConfig.from_json(obj)
        except DeepAdvError as exc:
            raise file_error(source, str(exc)) from exc
        except TypeError as exc:
            raise file_error(source, f"a setting has the wrong type ({exc})") from exc
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name in ("train", "version") or f.name not in obj:
                continue
            value = obj[f.name]
            values[f.name] = tuple(value) if f.name in ("class_weights", "image_shape", "domains") and \
                isinstance(value, list) else value
        return cls(train=train, version=str(obj.get("deepadv_version", __version__)), **values)


def config_path(run: str | Path) -> Path:
    """``RUN/config.json``."""
    return Path(run) / CONFIG_NAME


def best_checkpoint_path(run: str | Path) -> Path:
    """``RUN/checkpoints/best.pt``: the kept weights."""
    return Path(run) / "checkpoints" / "best.pt"


def target_checkpoint_path(run: str | Path) -> Path:
    """``RUN/checkpoints/best_y1.pt``: the kept weights adapted for Y1 inference (``adabn`` runs only)."""
    return Path(run) / "checkpoints" / "best_y1.pt"


def last_checkpoint_path(run: str | Path) -> Path:
    """``RUN/checkpoints/last.ckpt``: Lightning's checkpoint for resuming."""
    return Path(run) / "checkpoints" / "last.ckpt"


#: each search's folder in a run (DE's is the paper's campaign, which the analysis reads)
ATTACK_FOLDERS: dict[str, str] = {"de": "attack", "exhaustive": "attack_exhaustive", "sparse-rs": "attack_sparse_rs"}


def attack_dir(run: str | Path, search: str = "de") -> Path:
    """``RUN/attack`` (differential evolution), ``RUN/attack_exhaustive`` or ``RUN/attack_sparse_rs``."""
    return Path(run) / ATTACK_FOLDERS[search]


def read_run_config(run: str | Path) -> RunConfig:
    """The typed config of a run folder; a :class:`FileError` if the folder is not a run."""
    run = Path(run)
    if not run.is_dir():
        raise file_error(run, "run folder not found")
    path = config_path(run)
    if not path.is_file():
        raise file_error(run, f"not a run folder (no {CONFIG_NAME}); make one with 'deepadv train'")
    return RunConfig.from_json(read_json(path), path)
