"""The train stage (SPEC 5): the run's resolved configuration, the trainer factory and ``train_model``.

``train_model`` is the stage function behind ``deepadv train``. It trains the one
LightningModule of every method (:mod:`~deepadversaries.training.module`) on the images held
in memory (:mod:`~deepadversaries.training.datamodule`), records the run with the callbacks of
:mod:`~deepadversaries.training.callbacks`, and writes the run folder of ``docs/architecture.md``:

- ``config.json``: the fully resolved settings (``"kind": "deepadv-run"``);
- ``checkpoints/best.pt``: the weights with the best Y10 validation accuracy;
- ``checkpoints/last.ckpt``: Lightning's checkpoint of the last epoch, for resuming;
- ``log.csv``: one row per epoch (every loss term, Y10 and Y1 validation accuracy);
- ``tensorboard/``: the same curves for TensorBoard;
- ``training.json``: written last, marks a finished training.

The Y1 labels are never used for training or for choosing the checkpoint: Y1 validation
accuracy is logged for information only.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

import lightning as L
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from deepadversaries.adaptation.adabn import adapt_batchnorm, batchnorm_layers, check_adabn_model
from deepadversaries.config import TrainConfig
from deepadversaries.data.dataset import GalaxyDataset, image_file, load_dataset
from deepadversaries.devices import resolve_device
from deepadversaries.errors import DeepAdvError, OptionError, file_error
from deepadversaries.formatting import nan_to_none, utc_now
from deepadversaries.io import LOCK_NAME, OutputLock, atomic_path, read_json, remove_temporaries, write_json
from deepadversaries.methods import method_spec
from deepadversaries.models.networks import build_model, check_model_available, load_checkpoint, model_from_checkpoint
from deepadversaries.models.runs import (
    RUN_KIND, TRAINING_DONE, RunConfig, best_checkpoint_path, config_path, dataset_record,
    last_checkpoint_path, run_outputs, target_checkpoint_path,
)
from deepadversaries.progress import info, quiet_lightning
from deepadversaries.training.callbacks import LOG_NAME, EpochProgress, RunRecorder
from deepadversaries.training.class_weights import class_weights
from deepadversaries.training.datamodule import GalaxyDataModule
from deepadversaries.training.module import GalaxyClassifierModule


# ----------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------
def resolve_run_config(dataset: GalaxyDataset, train: TrainConfig, *, device: str = "auto") -> RunConfig:
    """The full record of a training run (``config.json``): settings, device and dataset facts.

    Args:
        dataset: the dataset folder the run trains on.
        train: the training settings (``TrainConfig.from_preset``).
        device: ``auto``, ``cpu`` or ``cuda[:k]`` [default: "auto"].

    Raises:
        OptionError: a setting the device cannot run (16-mixed on a CPU, mixed precision with
            several CPU processes).
        FileError: a dataset that cannot serve the method (no second domain for domain
            adaptation), whose images the model cannot take, or whose training split lacks a class.
    """
    check_model_available(train.model)
    torch_device = resolve_device(device)
    if torch_device.type == "cpu" and train.precision == "16-mixed":
        raise OptionError("precision 16-mixed needs a CUDA GPU; use 32-true or bf16-mixed on the CPU")
    if train.precision != "32-true" and torch_device.type == "cpu" and train.devices > 1:
        raise OptionError("mixed precision with several CPU processes is not supported; use --device cuda")
    spec = method_spec(train.method)
    if (train.uses_target_domain or spec.adapts_before_inference) and not dataset.has_domain("Y1"):
        what = ("re-estimates batch-norm statistics on the unlabelled second-domain training images"
                if spec.adapts_before_inference else "aligns the labelled domain with the unlabelled second one")
        raise file_error(dataset.path, f"has no Y1 images (one domain only: no {image_file('Y1', 'train')} etc.); "
                                       f"--method {train.method} {what}: import a second domain "
                                       "(--target-path-column, --target-images-key) or use --method regular")
    try:
        model = build_model(train.model, dataset.image_shape, dataset.n_classes)  # refuses what it cannot take
    except OptionError as exc:
        raise file_error(dataset.path / image_file("Y10", "train"), str(exc)) from None
    if spec.adapts_before_inference:
        check_adabn_model(model)
    classes = dataset.classes
    return RunConfig(
        train=train, device=device, resolved_device=str(torch_device),
        class_weights=tuple(class_weights(dataset.labels("train"), len(classes), classes).tolist()),
        **dataset_record(dataset))


# ----------------------------------------------------------------------------------------------
# trainer factory and the stage function
# ----------------------------------------------------------------------------------------------
def make_trainer(run: str | Path, config: TrainConfig, *, device: torch.device | str = "cpu",
                 progress: bool = True, extra_callbacks: list[Callback] | None = None, max_steps: int = -1,
                 limit_val_batches: int | float | None = None) -> tuple[L.Trainer, RunRecorder]:
    """The one place a Lightning ``Trainer`` is built for a run (Zoobot's trainer factory).

    Args:
        run: the run folder (checkpoints, logs).
        config: the training settings (epochs, patience, precision, DDP devices and nodes).
        device: the resolved device [default: "cpu"].
        progress: show the project's progress bar [default: True].
        extra_callbacks: more Lightning callbacks (benchmarks, tests) [default: none].
        max_steps: stop after this many optimiser steps (-1: no limit) [default: -1].
        limit_val_batches: Lightning's limit (0 turns validation and early stopping off) [default: None].

    Returns:
        The trainer and its :class:`RunRecorder` (log.csv, best.pt, the epoch rows).
    """
    run = Path(run)
    device = torch.device(device)
    recorder = RunRecorder(run)
    callbacks: list[Callback] = [
        recorder,
        # the latest epoch, always to the same file (monitor=None, top-1): checkpoints/last.ckpt
        ModelCheckpoint(dirpath=run / "checkpoints", filename="last", monitor=None, save_top_k=1,
                        save_on_train_epoch_end=True, enable_version_counter=False),
    ]
    if limit_val_batches != 0:
        callbacks.append(EarlyStopping(monitor="val_loss", mode="min", patience=config.patience,
                                       check_on_train_epoch_end=True))
    if progress:
        callbacks.append(EpochProgress(f"train {config.model} {config.method}"))
    callbacks += extra_callbacks or []
    devices: int | list[int] = config.devices
    if device.type == "cuda" and device.index is not None and config.devices == 1:
        devices = [device.index]
    multi = config.devices > 1 or config.num_nodes > 1
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=devices,
        num_nodes=config.num_nodes,
        strategy="ddp" if multi else "auto",
        precision=config.precision,
        max_epochs=config.epochs,
        max_steps=max_steps,
        callbacks=callbacks,
        logger=TensorBoardLogger(save_dir=str(run), name="tensorboard", version="", default_hp_metric=False),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=device.type == "cpu",
        benchmark=device.type == "cuda",
        use_distributed_sampler=False,
        log_every_n_steps=10,
        limit_val_batches=limit_val_batches,
        default_root_dir=str(run),
    )
    return trainer, recorder


def _launch_rank() -> int:
    """Global rank of this process when launched by Lightning's DDP or torchrun (0 otherwise)."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", 0))
    node = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", 0)))
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", 1)) if node else 1
    return node * per_node + local


def _prepare_run_folder(run: Path, config: RunConfig, *, resume: bool, overwrite: bool) -> str:
    """Decide between a fresh start (``"fresh"``), continuing an unfinished run (``"resume"``)
    and a finished run (``"finished"``); clears the outputs of an overwritten run."""
    remove_temporaries(run)
    existing = [p for p in run.iterdir() if p.name != LOCK_NAME] if run.is_dir() else []
    if not existing:
        return "fresh"
    if not config_path(run).is_file():
        raise file_error(run, "exists and is not a run folder (no config.json); choose another --out or empty it")
    if overwrite:
        for p in run_outputs(run):
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        return "fresh"
    stored = read_json(config_path(run))
    if not isinstance(stored, dict) or stored.get("kind") != RUN_KIND:
        raise file_error(config_path(run), f"not a deepadv run config (expected \"kind\": \"{RUN_KIND}\")")
    finished = (run / TRAINING_DONE).is_file()
    if finished and not resume:
        raise file_error(run, "holds a finished training; use --overwrite to train again "
                              "(or --resume, which leaves it as it is)")
    wanted = config.to_json()
    defaults = TrainConfig().to_json()  # a setting added since the run was started had its default then
    try:  # read as the current version writes it (a config.json from before the method registry included)
        stored = {**stored, **TrainConfig.from_json(stored).to_json()}
    except (DeepAdvError, TypeError, ValueError):
        pass  # settings this version refuses: reported below as differences
    diffs = [k for k in (*TrainConfig.RESUME_KEYS, "data")
             if _normal(stored.get(k, defaults.get(k))) != _normal(wanted.get(k))]
    if diffs:
        detail = ", ".join(f"{k} {stored.get(k)!r} vs {wanted.get(k)!r}" for k in diffs[:4])
        raise file_error(run, f"holds a run with other settings ({detail}); "
                              "repeat the original options to continue it, or use --overwrite")
    return "finished" if finished else "resume"


def _normal(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    if isinstance(value, float):
        return float(f"{value:.12g}")
    return value


def train_model(data: str | Path, out: str | Path, config: TrainConfig | None = None, *, device: str = "auto",
                resume: bool = False, overwrite: bool = False, progress: bool = True) -> Path:
    """Train a classifier on a dataset folder and write the run folder ``out``.

    Args:
        data: the dataset folder (``deepadv simulate`` or the published ``.npy`` files).
        out: the run folder to write (layout in :mod:`deepadversaries.models.runs`).
        config: the training settings [default: ``TrainConfig.from_preset("quick")``: ConvNet, regular].
            ``method="mmd"`` adds λ·MMD²(z_Y10, z_Y1) with unlabelled Y1 training images.
        device: ``auto`` (a CUDA GPU when there is one), ``cpu`` or ``cuda`` [default: "auto"].
        resume: continue an interrupted run; a finished run is returned unchanged [default: False].
        overwrite: replace a finished run in ``out`` [default: False].
        progress: show a progress bar [default: True].

    Returns:
        The run folder's absolute path. An unfinished run with the same settings is continued;
        a finished one is refused (:class:`FileError`) unless ``resume`` or ``overwrite``.
    """
    dataset = load_dataset(data)
    run_config = resolve_run_config(dataset, config if config is not None else TrainConfig(), device=device)
    run = Path(out).absolute()
    rank = _launch_rank()
    lock = OutputLock(run, "train") if rank == 0 else None
    if lock is not None:
        lock.acquire()
    try:
        state, run_config = _start_run_folder(run, run_config, rank=rank, resume=resume, overwrite=overwrite)
        if state == "finished":
            info(f"{run}: training already finished; nothing to do")
            return run
        trainer, recorder = _fit_run(run, run_config, state=state, rank=rank, progress=progress)
        if trainer.is_global_zero:
            summary = _training_summary(run, run_config, recorder)
            if method_spec(run_config.method).adapts_before_inference:
                summary["target_adaptation"] = adapt_for_target(run, run_config)
            write_json(run / TRAINING_DONE, nan_to_none(summary))
        return run
    finally:
        if lock is not None:
            lock.release()


def _start_run_folder(run: Path, config: RunConfig, *, rank: int, resume: bool,
                      overwrite: bool) -> tuple[str, RunConfig]:
    """Prepare the folder (rank 0 only) and write ``config.json``; return the state and the config."""
    if rank != 0:
        return "follower", config
    state = _prepare_run_folder(run, config, resume=resume, overwrite=overwrite)
    if state == "finished":
        return state, config
    started = None
    if state == "resume":
        started = read_json(config_path(run)).get("started")
        config = config.replace(resumed_from_epoch=_last_epoch(run))
    config = config.replace(started=started or utc_now())
    write_json(config_path(run), config.to_json())
    return state, config


def _fit_run(run: Path, config: RunConfig, *, state: str, rank: int,
             progress: bool) -> tuple[L.Trainer, "RunRecorder"]:
    """Build the module, the data and the trainer, and fit (from ``last.ckpt`` when resuming)."""
    # rank 0 decided (a fresh start removed old checkpoints); other DDP ranks follow the files
    ckpt = last_checkpoint_path(run)
    ckpt_path = str(ckpt) if ckpt.is_file() and (state == "resume" or rank != 0) else None
    if ckpt_path is not None and not zipfile.is_zipfile(ckpt_path):
        raise file_error(ckpt_path, "damaged checkpoint (an interrupted write?); use --overwrite to start again")
    if state == "resume":
        info(f"{run}: continuing the unfinished training from {ckpt.name}" if ckpt_path is not None
             else f"{run}: no checkpoint of a finished epoch yet; starting the training again")
    with quiet_lightning():
        L.seed_everything(config.seed, workers=True, verbose=False)
        module = GalaxyClassifierModule(config.train, config.class_weights, image_shape=config.image_shape,
                                        classes=config.classes)
        datamodule = GalaxyDataModule(config.data, config.train)
        trainer, recorder = make_trainer(run, config.train, device=config.resolved_device, progress=progress)
        _fit(trainer, module, datamodule, ckpt_path)
    return trainer, recorder


def _training_summary(run: Path, config: RunConfig, recorder: "RunRecorder") -> dict[str, Any]:
    """The content of ``training.json``: epochs run, the kept epoch, timings, versions."""
    rows = recorder.rows
    if not rows:
        raise DeepAdvError(f"{run}: training ended without finishing an epoch")
    seconds = [r["epoch_seconds"] for r in rows]
    cpu_seconds = [r.get("epoch_cpu_seconds", float("nan")) for r in rows]
    return {
        "epochs": len(rows), "max_epochs": config.train.epochs,
        "stopped_early": len(rows) < config.train.epochs,
        "best_epoch": recorder.best_epoch, "best_val_acc_y10": recorder.best_val_acc,
        "best_val_loss": recorder.best_val_loss,
        "val_acc_y1_at_best": next((r["val_acc_y1"] for r in rows if r["epoch"] == recorder.best_epoch), None),
        "wall_time_s": recorder.wall_time(), "mean_epoch_seconds": float(np.mean(seconds)),
        "mean_epoch_cpu_seconds": float(np.mean(cpu_seconds)),
        "last": rows[-1], "device": config.resolved_device, "torch": torch.__version__,
        "lightning": L.__version__, "finished": utc_now(), "warnings": training_warnings(config.method, rows),
    }


#: DANN's domain classifier this accurate in the last epoch means the adversary won the game
DANN_DIVERGED_ACCURACY = 0.95


def training_warnings(method: str, rows: list[dict[str, Any]]) -> list[str]:
    """Label-free signs that an adaptation failed, read from the epochs' logs (also printed).

    DANN: when the domain classifier still tells the domains apart in the last epoch (balanced
    accuracy ≥ ``DANN_DIVERGED_ACCURACY``), the features were not made domain-invariant; in our
    runs this followed a divergence of the adversarial game (the domain loss spiking, then
    collapsing to 0) and came with Y1 accuracy below the regular model's.

    Args:
        method: the training method.
        rows: the epochs' rows of ``log.csv`` (dicts with the logged columns).

    Returns:
        One sentence per problem found (empty when none).
    """
    warnings: list[str] = []
    last = rows[-1] if rows else {}
    accuracy = last.get("train_dann_domain_acc")
    if method == "dann" and accuracy is not None and np.isfinite(accuracy) and accuracy >= DANN_DIVERGED_ACCURACY:
        warnings.append(f"DANN's domain classifier still separates Y10 from Y1 in the last epoch (balanced "
                        f"accuracy {accuracy:.3f}): the adversarial alignment failed and the Y1 predictions are "
                        "probably not adapted (see 'DANN' in docs/training.md)")
    for text in warnings:
        info(f"warning: {text}")
    return warnings


def adapt_for_target(run: Path, config: RunConfig) -> dict[str, Any]:
    """AdaBN (Li et al. 2016): re-estimate the kept model's batch-norm statistics on the
    unlabelled Y1 training images and save the result as ``checkpoints/best_y1.pt``.

    Only the batch-norm running means and variances change; no Y1 label is read.

    Returns:
        What was done, for ``training.json``.
    """
    dataset = load_dataset(config.data)
    ckpt = load_checkpoint(best_checkpoint_path(run))
    model = model_from_checkpoint(best_checkpoint_path(run), expected_model=config.model)
    images = dataset.images("Y1", "train")
    adapted = adapt_batchnorm(model, images, batch_size=config.train.eval_batch_size,
                              device=config.resolved_device)
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in adapted.state_dict().items()}
    with atomic_path(target_checkpoint_path(run)) as tmp:
        torch.save({**ckpt, "state_dict": state, "adapted_on": "Y1 train (unlabelled)"}, tmp)
    return {"method": "adabn", "checkpoint": target_checkpoint_path(run).name, "images": int(len(images)),
            "batch_norm_layers": len(batchnorm_layers(adapted))}


def _fit(trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule,
         ckpt_path: str | None) -> None:
    """``trainer.fit`` with Ctrl-C turned back into KeyboardInterrupt (Lightning exits with 1)."""
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)
    except SystemExit:
        if trainer.interrupted:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt from None
        raise


def _last_epoch(run: Path) -> int:
    """The last epoch recorded in ``log.csv`` (0 when there is none)."""
    try:
        with open(run / LOG_NAME, newline="") as fh:
            rows = list(csv.DictReader(fh))
        return int(rows[-1]["epoch"]) if rows else 0
    except (OSError, KeyError, ValueError):
        return 0
