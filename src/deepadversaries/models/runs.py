"""The run folder: where a trained model, its config, logs and results live.

Layout (docs/architecture.md)::

    RUN/config.json            RunConfig: the training settings and the dataset facts
    RUN/checkpoints/best.pt    the kept weights (best Y10 validation accuracy)
    RUN/checkpoints/model.ts   an adopted TorchScript model (``deepadv train --model-file``), instead of best.pt
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

from deepadversaries import CLASSES, FILE_PREFIX, SPLITS, __version__
from deepadversaries.attacks.searches import search_spec, search_specs
from deepadversaries.config import TrainConfig
from deepadversaries.errors import DeepAdvError, file_error
from deepadversaries.io import read_json
from deepadversaries.methods import CHECKPOINT_CRITERION

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
        classes: the dataset's class names in label order (the model's outputs) [default: the paper's].
        bands: the dataset's band names [default: none recorded].
        domains: the domains of the dataset (``Y10``, and ``Y1`` when present).
        domain_names: the user's names of the domains (``{"Y10": "deep", ...}``) [default: none].
        stretch: the paper stretch's constants (low, high) per domain (empty for another normalisation).
        normalisation: ``{"kind": ..., "params": {domain: {...}}}`` of the dataset [default: none recorded].
        model_file: an adopted TorchScript model: ``{"name", "source", "sha256"}`` [default: None].
        latent_layer: the submodule whose output is an adopted model's latent [default: None].
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
    classes: tuple[str, ...] = CLASSES
    bands: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()
    domain_names: dict[str, str] = field(default_factory=dict)
    stretch: dict[str, list[float]] = field(default_factory=dict)
    normalisation: dict[str, Any] = field(default_factory=dict)
    model_file: dict[str, str] | None = None
    latent_layer: str | None = None
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
    def recipe(self) -> str:
        """The method with the training augmentation, as a grid names it: ``mmd``, ``regular+survey-mix``."""
        augment = getattr(self.train, "augment", "none")
        return self.train.method if augment == "none" else f"{self.train.method}+{augment}"

    @property
    def seed(self) -> int:
        return self.train.seed

    @property
    def preset(self) -> str:
        return self.train.preset

    @property
    def adopted(self) -> bool:
        """Whether the model is a TorchScript model trained elsewhere (``file:NAME``)."""
        return self.train.model.startswith(FILE_PREFIX)

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
                   counts=dict(self.counts), image_shape=list(self.image_shape), classes=list(self.classes),
                   bands=list(self.bands), domains=list(self.domains), domain_names=dict(self.domain_names),
                   stretch={k: list(v) for k, v in self.stretch.items()}, normalisation=dict(self.normalisation),
                   dataset_seed=self.dataset_seed, dataset_version=self.dataset_version, preset_note=note,
                   overridden=overridden)
        if self.model_file is not None:
            out.update(model_file=dict(self.model_file), latent_layer=self.latent_layer)
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
            values[f.name] = tuple(value) if f.name in ("class_weights", "image_shape", "classes", "bands",
                                                        "domains") and isinstance(value, list) else value
        classes = values.get("classes", CLASSES)
        if not isinstance(classes, tuple) or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
            raise file_error(source, f"'classes' must list at least 2 class names, got {classes!r}")
        return cls(train=train, version=str(obj.get("deepadv_version", __version__)), **values)


def check_same_classes(config: RunConfig, classes: tuple[str, ...], data: str | Path) -> None:
    """Refuse a dataset whose classes differ from those the run's model was trained (or adopted) for."""
    if tuple(classes) != tuple(config.classes):
        raise file_error(Path(data) / "dataset.json", f"classes ({', '.join(classes)}) differ from the run's "
                                                      f"({', '.join(config.classes)}); use the dataset the run "
                                                      "was trained on")


def dataset_record(dataset: Any) -> dict[str, Any]:
    """What a run's config records about its dataset (:class:`RunConfig` fields): counts, image
    shape, classes (with the training images per class), bands, domains and their names, and
    the normalisation.

    Args:
        dataset: a :class:`~deepadversaries.data.dataset.GalaxyDataset`.
    """
    labels = dataset.labels("train")
    classes = dataset.classes
    kinds = {d: dataset.normalisation(d) for d in dataset.domains}
    imported = "normalisation" in dataset.metadata
    return {
        "data": str(Path(dataset.path).resolve()),
        "class_counts": {c: int((labels == k).sum()) for k, c in enumerate(classes)},
        "counts": {s: int(len(dataset.labels(s))) for s in SPLITS},
        "image_shape": tuple(int(v) for v in dataset.image_shape), "classes": tuple(classes),
        "bands": tuple(dataset.bands), "domains": tuple(dataset.domains),
        "domain_names": dataset.domain_names if "domain_names" in dataset.metadata else {},
        "stretch": {d: list(dataset.stretch(d)) for d in dataset.domains if kinds[d][0] == "paper"},
        "normalisation": {"kind": dataset.normalisation_kind, "params": {d: p for d, (_, p) in kinds.items()}}
        if imported else {},
        "dataset_seed": dataset.metadata.get("seed"), "dataset_version": dataset.metadata.get("version"),
    }


def config_path(run: str | Path) -> Path:
    """``RUN/config.json``."""
    return Path(run) / CONFIG_NAME


def best_checkpoint_path(run: str | Path) -> Path:
    """``RUN/checkpoints/best.pt``: the kept weights."""
    return Path(run) / "checkpoints" / "best.pt"


def scripted_model_path(run: str | Path) -> Path:
    """``RUN/checkpoints/model.ts``: an adopted TorchScript model (``deepadv train --model-file``)."""
    return Path(run) / "checkpoints" / "model.ts"


def kept_model_path(run: str | Path, config: RunConfig) -> Path:
    """The file holding a run's kept model: ``best.pt``, or ``model.ts`` for an adopted model."""
    return scripted_model_path(run) if config.adopted else best_checkpoint_path(run)


def target_checkpoint_path(run: str | Path) -> Path:
    """``RUN/checkpoints/best_y1.pt``: the kept weights adapted for Y1 inference (``adabn`` runs only)."""
    return Path(run) / "checkpoints" / "best_y1.pt"


def last_checkpoint_path(run: str | Path) -> Path:
    """``RUN/checkpoints/last.ckpt``: Lightning's checkpoint for resuming."""
    return Path(run) / "checkpoints" / "last.ckpt"


def attack_folders() -> dict[str, str]:
    """Each registered search's folder in a run, by search name (:mod:`deepadversaries.attacks.searches`;
    DE's, ``attack``, is the paper's campaign, which the analysis reads)."""
    return {spec.name: spec.folder for spec in search_specs()}


def attack_dir(run: str | Path, search: str = "de") -> Path:
    """``RUN/<the search's folder>``: ``RUN/attack`` (differential evolution), ``RUN/attack_exhaustive``,
    ``RUN/attack_sparse_rs``, or a registered search's.

    Raises:
        OptionError: an unknown search.
    """
    return Path(run) / search_spec(search).folder


def run_outputs(run: str | Path) -> list[Path]:
    """Everything ``train`` (or an adoption) and the later stages write into a run folder
    (what ``--overwrite`` clears)."""
    run = Path(run)
    names = [CONFIG_NAME, TRAINING_DONE, "checkpoints", "log.csv", "tensorboard", METRICS_NAME, PREDICTIONS_NAME,
             "confusion_Y10.png", "confusion_Y1.png", RELIABILITY_NAME, *attack_folders().values(), "robustness"]
    return [run / n for n in names]


def read_run_config(run: str | Path) -> RunConfig:
    """The typed config of a run folder; a :class:`FileError` if the folder is not a run."""
    run = Path(run)
    if not run.is_dir():
        raise file_error(run, "run folder not found")
    path = config_path(run)
    if not path.is_file():
        raise file_error(run, f"not a run folder (no {CONFIG_NAME}); make one with 'deepadv train'")
    return RunConfig.from_json(read_json(path), path)
