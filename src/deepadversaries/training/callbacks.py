"""Lightning callbacks of a training run: the run record (``log.csv``, ``best.pt``) and the progress bar.

:class:`RunRecorder` writes one ``log.csv`` row per epoch (the columns of
:func:`deepadversaries.training.module.log_columns`) and keeps ``checkpoints/best.pt``, the
weights with the best Y10 validation accuracy (ties: the lower Y10 validation loss); its state
travels in Lightning's checkpoint, so a resumed run continues the same log.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from deepadversaries.io import atomic_path, write_csv
from deepadversaries.models.runs import best_checkpoint_path
from deepadversaries.progress import make_progress
from deepadversaries.training.module import GalaxyClassifierModule, log_columns

LOG_NAME = "log.csv"


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
        columns = log_columns(pl_module.config.augment)
        row = {k: timing[k] if k in timing else float(m.get(k, float("nan"))) for k in columns[1:]}
        row = {"epoch": epoch, **row}
        self.rows = [r for r in self.rows if r["epoch"] < epoch] + [row]
        acc, vloss = row["val_acc_y10"], row["val_loss"]
        improved = acc > self.best_val_acc or (acc == self.best_val_acc and vloss < self.best_val_loss)
        if improved:
            self.best_val_acc, self.best_val_loss, self.best_epoch = acc, vloss, epoch
        if trainer.is_global_zero:
            write_csv(self.run / LOG_NAME, self.rows, columns)
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
