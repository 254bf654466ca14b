"""Adopting a model trained elsewhere: a TorchScript file becomes a run folder, without training.

``deepadv train --model-file model.pt [--latent-layer NAME] --data DATASET --out RUN`` checks
the model on the dataset (:func:`deepadversaries.models.scripted.check_scripted`: it takes the
dataset's images and outputs one score per class) and writes

- ``RUN/checkpoints/model.ts``: a copy of the file, its SHA-256 recorded (every later load
  checks it);
- ``RUN/config.json``: a run config whose model is ``file:<file name>`` (with ``model_file``:
  name, source path, SHA-256, and ``latent_layer``), the dataset's facts as for a trained run;
- ``RUN/training.json``, last: ``"adopted": true``, "trained elsewhere; adopted".

Every other verb then works on RUN as on a trained run (``evaluate``, ``attack``,
``robustness``, ``analyze``): :func:`deepadversaries.models.networks.load_model` returns the wrapped
TorchScript model. ``--method`` records how the model was trained elsewhere (``regular``,
``mmd``, ``dann`` or ``coral``), so that two adopted models can be compared by ``analyze``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from deepadversaries.config import TrainConfig
from deepadversaries.data.dataset import load_dataset
from deepadversaries.devices import resolve_device
from deepadversaries.errors import file_error
from deepadversaries.formatting import utc_now
from deepadversaries.io import LOCK_NAME, OutputLock, atomic_path, remove_temporaries, sha256_of, write_json
from deepadversaries.progress import info
from deepadversaries.models.runs import (
    TRAINING_DONE, RunConfig, config_path, dataset_record, run_outputs, scripted_model_path,
)
from deepadversaries.models.scripted import ScriptedClassifier, check_scripted, load_torchscript

ADOPTED_NOTE = "trained elsewhere; adopted"


def adopt_model(model_file: str | Path, data: str | Path, out: str | Path, *, latent_layer: str | None = None,
                method: str = "regular", seed: int = 0, device: str = "auto", overwrite: bool = False) -> Path:
    """Make a run folder of a TorchScript model trained elsewhere (no training).

    Args:
        model_file: the TorchScript file (``torch.jit.script(model).save(path)``).
        data: the dataset folder it is to be evaluated and attacked on.
        out: the run folder to write (new or empty; see ``overwrite``).
        latent_layer: the submodule whose output is the latent, for a model without
            ``embed``/``head`` methods [default: None].
        method: how the model was trained elsewhere: ``regular``, ``mmd``, ``dann`` or ``coral``
            (a label; nothing is trained) [default: "regular"].
        seed: recorded as the run's seed (the attacks take their own) [default: 0].
        device: recorded as the run's device; the model is checked on the CPU [default: "auto"].
        overwrite: replace the run in a non-empty ``out`` [default: False].

    Returns:
        The run folder's absolute path.

    Raises:
        FileError: a file that is not TorchScript, a model that fails on the dataset's images or
            outputs another number of classes, a bad ``latent_layer``, an ``out`` holding
            something else (or a run, without ``overwrite``).
        OptionError: ``method`` is ``adabn`` or unknown.
    """
    model_file = Path(model_file)
    dataset = load_dataset(data)
    train = TrainConfig(model=f"file:{model_file.name}", method=method, seed=seed,
                        note=f"{ADOPTED_NOTE}: the training settings here do not apply")
    wrapped = ScriptedClassifier(load_torchscript(model_file), latent_layer=latent_layer, source=model_file)
    latent_dim = check_scripted(wrapped, dataset.image_shape, dataset.classes, model_file)
    digest = sha256_of(model_file)
    config = RunConfig(train=train, device=device, resolved_device=str(resolve_device(device)),
                       model_file={"name": model_file.name, "source": str(model_file.resolve()), "sha256": digest},
                       latent_layer=latent_layer or None, **dataset_record(dataset))
    run = Path(out).absolute()
    with OutputLock(run, "train"):
        _prepare(run, overwrite)
        target = scripted_model_path(run)
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            shutil.copyfile(model_file, tmp)
            if sha256_of(tmp) != digest:
                raise file_error(model_file, "changed while it was being copied; run the command again")
        write_json(config_path(run), config.to_json())
        write_json(run / TRAINING_DONE, _record(config, wrapped, latent_dim))
    info(f"{run}: adopted {model_file.name} ({ADOPTED_NOTE}); latent "
         + ("embed(x)" if wrapped.has_head else f"from {latent_layer}") + f", {latent_dim}-d")
    return run


def _prepare(run: Path, overwrite: bool) -> None:
    """A new or empty run folder; with ``overwrite`` a run's outputs are cleared first."""
    remove_temporaries(run)
    existing = [p for p in run.iterdir() if p.name != LOCK_NAME] if run.is_dir() else []
    if not existing:
        return
    if not config_path(run).is_file():
        raise file_error(run, "exists and is not a run folder (no config.json); choose another --out or empty it")
    if not overwrite:
        raise file_error(run, "holds a run already; add --overwrite to adopt the model into it again")
    for path in run_outputs(run):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _record(config: RunConfig, model: ScriptedClassifier, latent_dim: int) -> dict[str, Any]:
    """The content of ``training.json`` for an adopted model."""
    return {
        "adopted": True, "note": ADOPTED_NOTE, "model": config.model, "method": config.method,
        "model_file": dict(config.model_file or {}), "has_head": model.has_head,
        "latent": "embed(x)" if model.has_head else f"output of submodule {config.latent_layer}",
        "latent_dim": latent_dim, "classes": list(config.classes), "image_shape": list(config.image_shape),
        "church_windows": "available (head(z))" if model.has_head else "skipped: the model has no head(z)",
        "epochs": 0, "best_epoch": None, "torch": torch.__version__, "finished": utc_now(),
    }
