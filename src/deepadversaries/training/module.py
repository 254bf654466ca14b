"""The LightningModule of every training method (SPEC 5) and the columns of its epoch log.

One module for all methods: the weighted cross-entropy on labelled Y10, plus the alignment term
of a method that adapts during training (built from the registry, :mod:`deepadversaries.methods`,
with one call for every method: ``term, logs = alignment(z_Y10, z_Y1)``), plus one-pixel
adversarial examples when ``adv_share`` > 0. The epoch means it computes are the ``log.csv``
columns of :func:`log_columns`: the alignment columns come from the specs (``train_<name>`` for
each name a registered method logs), so a method added with
:func:`~deepadversaries.methods.register_method` gets its columns without an edit here.

With ``--augment survey-mix`` (:mod:`deepadversaries.training.survey_mix`) each batch ends with the
augmented views of its Y10 images; ONE forward pass covers the clean images (and the Y1 batch of a
method that adapts), then the views; the loss adds ``JS_WEIGHT · JS(p_clean, p_aug1, p_aug2)`` to the
cross-entropy on the clean images (and to the alignment term), and ``log.csv`` gains the column
``train_js`` (:data:`AUGMENT_COLUMNS`; only in a run that augments, so other runs' logs keep their columns).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

import lightning as L

from deepadversaries import CLASSES
from deepadversaries.adaptation.alignment import alignment_loss
from deepadversaries.adaptation.mmd import MMDLoss
from deepadversaries.adaptation.modules import GaussianKernels
from deepadversaries.config import TrainConfig
from deepadversaries.errors import DeepAdvError
from deepadversaries.methods import alignment_logs, method_spec
from deepadversaries.models.networks import PAPER_SHAPE, build_model
from deepadversaries.training.adversarial import one_pixel_adversarial_batch
from deepadversaries.training.survey_mix import JS_WEIGHT, N_VIEWS, js_consistency

#: one-pixel adversarial training (``adv-1p``, ``--adv-share``): of the images the search changed, the share
#: that the model (evaluation mode) misclassifies after the change, and their mean p(true) (NaN without it)
ADVERSARIAL_COLUMNS = ("train_adv_flip_rate", "train_adv_p_true")
#: ``--augment survey-mix``: the epoch mean of the (unweighted) Jensen–Shannon consistency term, in nats
AUGMENT_COLUMNS = ("train_js",)
#: latents per domain used for the (information-only) validation MMD²
VAL_MMD_SAMPLE = 512


def alignment_columns() -> tuple[str, ...]:
    """The alignment terms' epoch means in log.csv: ``train_<name>`` for every name a registered method
    logs, in registration order (NaN for the methods without them)."""
    return tuple(f"train_{name}" for name in alignment_logs())


def log_columns(augment: str = "none") -> tuple[str, ...]:
    """The columns of ``log.csv``, one row per epoch; a run with ``augment`` other than "none" adds
    :data:`AUGMENT_COLUMNS` at the end."""
    return ("epoch", "train_loss", "train_ce", *alignment_columns(), "train_acc", "val_loss", "val_acc_y10",
            "val_acc_y1", "val_mmd2", "lr", "epoch_seconds", "epoch_cpu_seconds", *ADVERSARIAL_COLUMNS,
            *(AUGMENT_COLUMNS if augment != "none" else ()))


class GalaxyClassifierModule(L.LightningModule):
    """Weighted cross-entropy on labelled Y10, plus the method's alignment term for domain adaptation.

    A method that adapts during training (``mmd``, ``dann``, ``coral``:
    :mod:`deepadversaries.methods`) concatenates each labelled Y10 batch with an unlabelled Y1
    batch of the same size, makes ONE forward pass over both and adds
    ``term, logs = alignment(z_Y10, z_Y1)`` (:func:`deepadversaries.adaptation.alignment.alignment_loss`)
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
        # the information-only validation MMD²: the paper's kernels and estimator, or an MMD run's own
        mmd = method_spec("mmd").resolve(config.method_settings if config.method == "mmd" else None)
        self.mmd_loss = MMDLoss(GaussianKernels(mmd["sigmas2"]), estimator=mmd["estimator"])
        self.alignment = alignment_loss(config.method, config.method_settings)
        self.adv_share, self.adv_positions = config.adv_share, config.adv_positions
        self.augment = config.augment
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
        views: tuple[torch.Tensor, ...] = ()
        if self.augment != "none":  # survey-mix: the augmented views end the batch
            batch, views = tuple(batch[:-N_VIEWS]), tuple(batch[-N_VIEWS:])
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
        n_main = len(x)
        if views:
            x = torch.cat([x, *(v.to(device=x.device, dtype=x.dtype) for v in views)], dim=0)
        logits, z = self._forward(self._prepare(x))
        source_logits = logits[:n].float()
        ce = F.cross_entropy(source_logits, y, weight=self.ce_weight)
        loss = ce
        if views:
            js = js_consistency([source_logits, *logits[n_main:].float().split(n)])
            loss = loss + JS_WEIGHT * js
            self._add("js", js * n)
            z = z[:n_main]
        if self.alignment is not None:
            self.alignment.set_progress(min(1.0, self.global_step / self._total_steps))  # DANN's λ_p schedule
            term, logs = self.alignment(z[:n], z[n:])
            loss = loss + term
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
                    for col in alignment_columns()},
                 "train_acc": s.get("correct", float("nan")) / n}
        n_adv = s.get("adv_n", 0.0) or float("nan")
        train.update(train_adv_flip_rate=s.get("adv_flipped", float("nan")) / n_adv,
                     train_adv_p_true=s.get("adv_p_true", float("nan")) / n_adv)
        if self.augment != "none":
            train["train_js"] = s.get("js", float("nan")) / n
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
