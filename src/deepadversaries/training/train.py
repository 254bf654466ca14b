"""Training (SPEC 5): one LightningModule for regular and MMD domain-adaptation training.

``train_model`` is the stage function behind ``deepadv train``. It holds the stretched
images in memory as tensors and draws batches by index (much faster on a small CPU than
a worker-based DataLoader), trains with Lightning, and writes the run folder of
``docs/architecture.md``:

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
import math
import os
import shutil
import signal
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

import lightning as L
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from deepadversaries import CLASSES
from deepadversaries.config import TrainConfig
from deepadversaries.data.dataset import GalaxyDataset, image_file, load_dataset
from deepadversaries.devices import resolve_device
from deepadversaries.errors import DeepAdvError, OptionError, file_error
from deepadversaries.formatting import nan_to_none, utc_now
from deepadversaries.io import (
    LOCK_NAME, OutputLock, atomic_path, read_json, remove_temporaries, write_csv, write_json,
)
from deepadversaries.adaptation.adabn import adapt_batchnorm, batchnorm_layers, check_adabn_model
from deepadversaries.training.adversarial import one_pixel_adversarial_batch
from deepadversaries.adaptation.mmd import GaussianKernels, MMDLoss, alignment_loss, class_weights
from deepadversaries.methods import method_spec
from deepadversaries.models.networks import (
    PAPER_SHAPE, build_model, check_model_available, load_checkpoint, model_from_checkpoint,
)
from deepadversaries.progress import info, make_progress, quiet_lightning
from deepadversaries.models.runs import (
    RUN_KIND, TRAINING_DONE, RunConfig, best_checkpoint_path, config_path, dataset_record,
    last_checkpoint_path, run_outputs, target_checkpoint_path,
)

LOG_NAME = "log.csv"
#: the alignment terms' epoch means in log.csv (NaN for methods without them)
ALIGNMENT_COLUMNS = ("train_mmd2", "train_coral", "train_dann_domain_loss", "train_dann_domain_acc",
                     "train_dann_lambda")
#: one-pixel adversarial training (``adv-1p``, ``--adv-share``): of the images the search changed, the share
#: that the model (evaluation mode) misclassifies after the change, and their mean p(true) (NaN without it)
ADVERSARIAL_COLUMNS = ("train_adv_flip_rate", "train_adv_p_true")
LOG_COLUMNS = ("epoch", "train_loss", "train_ce", *ALIGNMENT_COLUMNS, "train_acc", "val_loss", "val_acc_y10",
               "val_acc_y1", "val_mmd2", "lr", "epoch_seconds", "epoch_cpu_seconds", *ADVERSARIAL_COLUMNS)
#: latents per domain used for the (information-only) validation MMD²
VAL_MMD_SAMPLE = 512


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
# data held in memory, batches drawn by index
# ----------------------------------------------------------------------------------------------
class IndexBatches(Sampler):
    """Batches of indices, reshuffled each epoch from (seed, epoch); sharded over DDP ranks.

    With ``n_target`` it yields pairs (source indices, target indices), the target drawn from
    its own permutation, so that an unlabelled Y1 batch of the same size goes with each Y10 batch.
    """

    def __init__(self, n: int, batch_size: int, *, shuffle: bool, seed: int = 0, drop_last: bool = False,
                 rank: int = 0, world_size: int = 1, n_target: int | None = None) -> None:
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.world_size, self.n_target = rank, world_size, n_target
        # never drop everything: a split smaller than one batch gives one short batch
        self.drop_last = drop_last and n // world_size >= batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _order(self, n: int, stream: int) -> np.ndarray:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch, stream]).permutation(n)
        else:
            order = np.arange(n)
        if self.world_size > 1:  # equal shares on every rank (wrap around), as DistributedSampler
            per_rank = -(-n // self.world_size) if not self.drop_last else n // self.world_size
            order = np.resize(order, per_rank * self.world_size)[self.rank::self.world_size]
        return order

    def _n_local(self) -> int:
        if self.world_size == 1:
            return self.n
        return -(-self.n // self.world_size) if not self.drop_last else self.n // self.world_size

    def __len__(self) -> int:
        m = self._n_local()
        return m // self.batch_size if self.drop_last else -(-m // self.batch_size)

    def __iter__(self):
        source = self._order(self.n, 0)
        target = None
        if self.n_target is not None:
            target = self._order(self.n_target, 1)
            if len(target) < len(source):
                target = np.resize(target, len(source))
        for b in range(len(self)):
            idx = source[b * self.batch_size:(b + 1) * self.batch_size]
            if target is None:
                yield idx
            else:
                yield idx, target[b * self.batch_size:b * self.batch_size + len(idx)]


class TensorBatches(Dataset):
    """Indexes in-memory tensors with a whole batch of indices at once."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, x_target: torch.Tensor | None = None,
                 pair_target: bool = False) -> None:
        self.x, self.y, self.x_target, self.pair_target = x, y, x_target, pair_target

    def __len__(self) -> int:
        return len(self.y)

    @staticmethod
    def _take(t: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
        return t[torch.as_tensor(idx, device=t.device)]

    def __getitem__(self, key):
        if isinstance(key, tuple):  # (source indices, independent target indices)
            idx, idx_t = key
            return self._take(self.x, idx), self._take(self.y, idx), self._take(self.x_target, idx_t)
        if self.x_target is not None and self.pair_target:  # same galaxies in both domains
            return self._take(self.x, key), self._take(self.y, key), self._take(self.x_target, key)
        return self._take(self.x, key), self._take(self.y, key)


class GalaxyDataModule(L.LightningDataModule):
    """Stretched Y10 (and Y1) training and validation images held in memory."""

    def __init__(self, data: str | Path | None, config: TrainConfig,
                 tensors: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.data_path = Path(data) if data is not None else None
        self.config = config
        self.tensors: dict[str, torch.Tensor] = dict(tensors or {})

    def setup(self, stage: str | None = None) -> None:
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        if self.tensors:  # given in memory (benchmarks, notebooks)
            self.tensors = {k: _to_device(v, device) for k, v in self.tensors.items()}
            return
        ds = load_dataset(self.data_path)
        want = [("Y10", "train"), ("Y10", "valid")]
        if self.config.uses_target_domain:
            want.append(("Y1", "train"))
        if ds.has_domain("Y1"):
            want.append(("Y1", "valid"))
        for domain, split in want:
            self.tensors[f"{domain}_{split}"] = _to_device(torch.from_numpy(ds.images(domain, split)), device)
        for split in ("train", "valid"):
            self.tensors[f"y_{split}"] = _to_device(torch.from_numpy(ds.labels(split)), device)

    def _rank(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def train_dataloader(self) -> DataLoader:
        t, c = self.tensors, self.config
        rank, world = self._rank()
        sampler = IndexBatches(len(t["y_train"]), c.batch_size, shuffle=True, seed=c.seed, drop_last=True,
                               rank=rank, world_size=world,
                               n_target=len(t["Y1_train"]) if c.uses_target_domain else None)
        dataset = TensorBatches(t["Y10_train"], t["y_train"], t.get("Y1_train"))
        return DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        t, c = self.tensors, self.config
        rank, world = self._rank()
        sampler = IndexBatches(len(t["y_valid"]), c.eval_batch_size, shuffle=False, rank=rank, world_size=world)
        dataset = TensorBatches(t["Y10_valid"], t["y_valid"], t.get("Y1_valid"), pair_target=True)
        return DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=0)


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda" and x.device != device:
        free, _ = torch.cuda.mem_get_info(device)
        if x.numel() * x.element_size() < 0.4 * free:
            return x.to(device)
        return x.pin_memory()
    return x


# ----------------------------------------------------------------------------------------------
# the LightningModule
# ----------------------------------------------------------------------------------------------
class GalaxyClassifierModule(L.LightningModule):
    """Weighted cross-entropy on labelled Y10, plus the method's alignment term for domain adaptation.

    A method that adapts during training (``mmd``, ``dann``, ``coral``:
    :mod:`deepadversaries.methods`) concatenates each labelled Y10 batch with an unlabelled Y1
    batch of the same size, makes ONE forward pass over both and adds
    ``term, logs = alignment(z_Y10, z_Y1)`` (:func:`deepadversaries.adaptation.mmd.alignment_loss`)
    to the loss; DANN's domain classifier is a submodule trained by the same optimiser. The
    validation MMD² (the paper's kernels) is logged for every method, for information.
    """

    def __init__(self, config: TrainConfig, class_weights: Sequence[float], *,
                 image_shape: Sequence[int] = PAPER_SHAPE, classes: Sequence[str] = CLASSES) -> None:
        super().__init__()
        self.save_hyperparameters({"config": config.to_json(), "class_weights": list(class_weights),
                                   "image_shape": list(image_shape), "classes": list(classes)})
        self.config = config
        self.method = config.method
        self.image_shape = tuple(int(v) for v in image_shape)
        self.classes = tuple(classes)
        self.model = build_model(config.model, self.image_shape, len(self.classes))
        self.channels_last = config.channels_last
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.register_buffer("ce_weight", torch.tensor(list(class_weights), dtype=torch.float32))
        self.mmd_loss = MMDLoss(GaussianKernels(config.mmd_sigmas2), estimator=config.mmd_estimator)
        self.alignment = alignment_loss(config.method, **config.alignment_settings)
        self.adv_share, self.adv_positions = config.adv_share, config.adv_positions
        self.__dict__["_compiled"] = None  # kept out of the module tree: state_dict keys stay plain
        self.nan_check_every = 1
        self._total_steps = 1
        self.epoch_metrics: dict[str, float] = {}
        self._reset_sums()

    # -- helpers ------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.config.compile and self.__dict__["_compiled"] is None:
            self.__dict__["_compiled"] = torch.compile(self.model)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        compiled = self.__dict__["_compiled"]
        return (compiled if compiled is not None else self.model)(x)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _reset_sums(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}

    def _add(self, name: str, value: torch.Tensor) -> None:
        value = value.detach().to(torch.float64)
        self._sums[name] = self._sums[name] + value if name in self._sums else value

    def _reduced(self) -> dict[str, float]:
        names = sorted(self._sums)
        if not names:
            return {}
        stacked = torch.stack([self._sums[n] for n in names])
        if self.trainer is not None and self.trainer.world_size > 1:
            stacked = self.trainer.strategy.reduce(stacked, reduce_op="sum")
        return dict(zip(names, stacked.cpu().tolist()))

    def on_fit_start(self) -> None:
        self._total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        self.nan_check_every = 1 if self.device.type == "cpu" else 25
        self._first_bad_step = torch.full((), -1, dtype=torch.long, device=self.device)
        self._step_counter = torch.zeros((), dtype=torch.long, device=self.device)

    # -- training -----------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        self._reset_sums()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        if self.alignment is not None:
            x_source, y, x_target = batch
            x = torch.cat([x_source, x_target], dim=0)
        else:
            x_source, y = batch
            x = x_source
        if self.adv_share > 0:  # one-pixel adversarial training: the searched share replaces its clean images
            adv = one_pixel_adversarial_batch(self.model, x_source, y, share=self.adv_share,
                                              positions=self.adv_positions)
            x_source = adv.images
            x = torch.cat([x_source, x[len(y):]], dim=0) if self.alignment is not None else x_source
            self._add("adv_n", torch.tensor(float(adv.n_changed), device=x.device))
            self._add("adv_flipped", torch.tensor(float(adv.flipped.sum()), device=x.device))
            self._add("adv_p_true", torch.tensor(float(adv.p_true.sum()), device=x.device))
        n = len(y)
        logits, z = self._forward(self._prepare(x))
        source_logits = logits[:n].float()
        ce = F.cross_entropy(source_logits, y, weight=self.ce_weight)
        loss = ce
        if self.alignment is not None:
            self.alignment.set_progress(min(1.0, self.global_step / self._total_steps))  # DANN's λ_p schedule
            term, logs = self.alignment(z[:n], z[n:])
            loss = ce + term
            for key, value in logs.items():
                self._add(key, value * n)
        self._add("loss", loss * n)
        self._add("ce", ce * n)
        self._add("correct", (source_logits.argmax(1) == y).sum())
        self._add("n", torch.tensor(float(n), device=loss.device))
        self._check_finite(loss, batch_idx)
        self.log("loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False, batch_size=n)
        return loss

    def _check_finite(self, loss: torch.Tensor, batch_idx: int) -> None:
        self._step_counter += 1
        bad = ~torch.isfinite(loss.detach())
        self._first_bad_step = torch.where(bad & (self._first_bad_step < 0), self._step_counter,
                                           self._first_bad_step)
        last = batch_idx + 1 == self.trainer.num_training_batches
        if (batch_idx + 1) % self.nan_check_every == 0 or last:
            step = int(self._first_bad_step)
            if step >= 0:
                raise DeepAdvError(
                    f"training diverged: the loss became NaN or infinite at epoch {self.current_epoch + 1}, "
                    f"step {step} (counting from 1 since the start of this process); try a smaller --lr")

    # -- validation ---------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_sums: dict[str, torch.Tensor] = {}
        self._val_latents: dict[str, list[torch.Tensor]] = {"Y10": [], "Y1": []}

    def validation_step(self, batch, batch_idx: int) -> None:
        has_y1 = len(batch) == 3
        x_source, y = batch[0], batch[1]
        x = torch.cat([x_source, batch[2]], dim=0) if has_y1 else x_source
        n = len(y)
        logits, z = self._forward(self._prepare(x))
        logits = logits.float()
        w = self.ce_weight[y]
        nll = F.cross_entropy(logits[:n], y, reduction="none")
        sums = {"ce_num": (w * nll).sum(), "ce_den": w.sum(), "correct_y10": (logits[:n].argmax(1) == y).sum(),
                "n": torch.tensor(float(n), device=logits.device)}
        if has_y1:  # information only: Y1 labels never reach the loss or the checkpoint choice
            sums["correct_y1"] = (logits[n:].argmax(1) == y).sum()
        for k, v in sums.items():
            v = v.detach().to(torch.float64)
            self._val_sums[k] = self._val_sums[k] + v if k in self._val_sums else v
        if has_y1 and sum(len(t) for t in self._val_latents["Y10"]) < VAL_MMD_SAMPLE:
            self._val_latents["Y10"].append(z[:n].detach().float())
            self._val_latents["Y1"].append(z[n:].detach().float())

    def on_validation_epoch_end(self) -> None:
        names = sorted(self._val_sums)
        stacked = torch.stack([self._val_sums[k] for k in names])
        if self.trainer.world_size > 1:
            stacked = self.trainer.strategy.reduce(stacked, reduce_op="sum")
        s = dict(zip(names, stacked.cpu().tolist()))
        metrics = {"val_loss": s["ce_num"] / s["ce_den"], "val_acc_y10": s["correct_y10"] / s["n"],
                   "val_acc_y1": s["correct_y1"] / s["n"] if "correct_y1" in s else float("nan"),
                   "val_mmd2": float("nan")}
        if self._val_latents["Y10"]:
            z10 = torch.cat(self._val_latents["Y10"])[:VAL_MMD_SAMPLE]
            z1 = torch.cat(self._val_latents["Y1"])[:VAL_MMD_SAMPLE]
            if len(z10) >= 2:
                metrics["val_mmd2"] = float(self.mmd_loss(z10, z1))
        self.epoch_metrics.update(metrics)
        self.log("val_loss", metrics["val_loss"], prog_bar=False, sync_dist=False)
        self.log("val_acc_y10", metrics["val_acc_y10"], prog_bar=True, sync_dist=False)
        if math.isfinite(metrics["val_acc_y1"]):
            self.log("val_acc_y1", metrics["val_acc_y1"], sync_dist=False)

    def collect_train_metrics(self) -> dict[str, float]:
        """Epoch means of the training loss terms and accuracy (reduced over DDP ranks); logs them."""
        s = self._reduced()
        n = s.get("n", 0.0) or float("nan")
        train = {"train_loss": s.get("loss", float("nan")) / n, "train_ce": s.get("ce", float("nan")) / n,
                 **{col: s[col[len("train_"):]] / n if col[len("train_"):] in s else float("nan")
                    for col in ALIGNMENT_COLUMNS},
                 "train_acc": s.get("correct", float("nan")) / n}
        n_adv = s.get("adv_n", 0.0) or float("nan")
        train.update(train_adv_flip_rate=s.get("adv_flipped", float("nan")) / n_adv,
                     train_adv_p_true=s.get("adv_p_true", float("nan")) / n_adv)
        self.epoch_metrics.update(train)
        for key, value in train.items():
            if math.isfinite(value):
                self.log(f"epoch_{key}", value, sync_dist=False)
        return train

    # -- optimisation -------------------------------------------------------------------------
    def configure_optimizers(self):
        c = self.config
        params = list(self.model.parameters()) + (list(self.alignment.parameters()) if self.alignment else [])
        optimizer = torch.optim.Adam(params, lr=c.lr, betas=tuple(c.betas), eps=c.eps, weight_decay=c.weight_decay)
        if c.schedule == "constant":
            return optimizer
        total = max(1, self.trainer.estimated_stepping_batches)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def best_state(self) -> dict[str, torch.Tensor]:
        """The plain model's weights, contiguous, on the CPU (for ``best.pt``)."""
        return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in self.model.state_dict().items()}


# ----------------------------------------------------------------------------------------------
# callbacks: the run record (log.csv, best.pt), progress bar
# ----------------------------------------------------------------------------------------------
class RunRecorder(Callback):
    """Writes ``log.csv`` each epoch and ``best.pt`` when the Y10 validation accuracy improves.

    Its state (rows, best so far, RNG states) travels in Lightning's checkpoint, so a resumed
    run continues the same log and, on a CPU, reproduces the uninterrupted run exactly.
    """

    def __init__(self, run: Path) -> None:
        self.run = Path(run)
        self.rows: list[dict[str, float]] = []
        self.best_val_acc = -1.0
        self.best_val_loss = float("inf")
        self.best_epoch = 0
        self.elapsed_before = 0.0
        self._epoch_start = self._epoch_cpu_start = 0.0
        self._fit_start = 0.0

    def on_fit_start(self, trainer, pl_module) -> None:
        self._fit_start = time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = time.perf_counter()
        self._epoch_cpu_start = time.process_time()

    def on_train_epoch_end(self, trainer, pl_module: GalaxyClassifierModule) -> None:
        pl_module.collect_train_metrics()
        m = pl_module.epoch_metrics
        epoch = trainer.current_epoch + 1
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        timing = {"lr": float(lr), "epoch_seconds": time.perf_counter() - self._epoch_start,
                  "epoch_cpu_seconds": time.process_time() - self._epoch_cpu_start}
        row = {k: timing[k] if k in timing else float(m.get(k, float("nan"))) for k in LOG_COLUMNS[1:]}
        row = {"epoch": epoch, **row}
        self.rows = [r for r in self.rows if r["epoch"] < epoch] + [row]
        acc, vloss = row["val_acc_y10"], row["val_loss"]
        improved = acc > self.best_val_acc or (acc == self.best_val_acc and vloss < self.best_val_loss)
        if improved:
            self.best_val_acc, self.best_val_loss, self.best_epoch = acc, vloss, epoch
        if trainer.is_global_zero:
            write_csv(self.run / LOG_NAME, self.rows, LOG_COLUMNS)
            if improved:
                ckpt = {"model": pl_module.config.model, "state_dict": pl_module.best_state(), "epoch": epoch,
                        "val_acc": float(acc), "val_loss": float(vloss), "method": pl_module.config.method,
                        "image_shape": list(pl_module.image_shape), "n_classes": len(pl_module.classes),
                        "classes": list(pl_module.classes)}
                best = best_checkpoint_path(self.run)
                best.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(best) as tmp:
                    torch.save(ckpt, tmp)

    def wall_time(self) -> float:
        return self.elapsed_before + (time.perf_counter() - self._fit_start if self._fit_start else 0.0)

    def state_dict(self) -> dict[str, Any]:
        state = {"rows": self.rows, "best_val_acc": self.best_val_acc, "best_val_loss": self.best_val_loss,
                 "best_epoch": self.best_epoch, "elapsed": self.wall_time(), "torch_rng": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = list(state["rows"])
        self.best_val_acc = float(state["best_val_acc"])
        self.best_val_loss = float(state["best_val_loss"])
        self.best_epoch = int(state["best_epoch"])
        self.elapsed_before = float(state["elapsed"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            try:
                torch.cuda.set_rng_state_all(state["cuda_rng"])
            except (RuntimeError, IndexError):
                pass  # resumed on a different number of GPUs


class EpochProgress(Callback):
    """The project's rich progress bar: epochs, and batches of the current epoch."""

    def __init__(self, description: str) -> None:
        self.description = description
        self.progress = None

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        self.progress = make_progress()
        self.progress.start()
        self.epochs_task = self.progress.add_task(self.description, total=trainer.max_epochs,
                                                  completed=trainer.current_epoch)
        self.batch_task = self.progress.add_task("  batches", total=trainer.num_training_batches)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self.progress is not None:
            self.progress.reset(self.batch_task, total=trainer.num_training_batches,
                                description=f"  epoch {trainer.current_epoch + 1}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.progress is not None:
            self.progress.advance(self.batch_task)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.progress is not None:
            m = pl_module.epoch_metrics
            self.progress.update(self.epochs_task, advance=1, description=(
                f"{self.description} · loss {m.get('train_loss', float('nan')):.3f} · "
                f"val acc Y10 {m.get('val_acc_y10', float('nan')):.3f}"))

    def _stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def on_train_end(self, trainer, pl_module) -> None:
        self._stop()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._stop()


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
    diffs = [k for k in (*TrainConfig.RESUME_KEYS, "data")
             if _normal(stored.get(k, defaults.get(k))) != _normal(wanted.get(k))]
    if diffs:
        detail = ", ".join(f"{k} {stored.get(k)!r} vs {wanted.get(k)!r}" for k in diffs[:4])
        raise file_error(run, f"holds a run with other settings ({detail}); "
                              "repeat the original options to continue it, or use --overwrite")
    return "finished" if finished else "resume"


def _normal(value: Any) -> Any:
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
