"""Training throughput: the project's Lightning loop against a bare PyTorch loop.

Both loops train the same model with the same batch size, loss (weighted cross-entropy, plus
the method's alignment term over one forward pass of Y10 + Y1 for ``mmd``, ``dann`` and
``coral``; ``adabn`` trains regularly and re-estimates batch-norm statistics afterwards, which
is not a training step), optimiser, precision and memory format, on the same in-memory images,
on the same device. They run alternately in one
process (bare, project, bare, project, ...) and each side's best repetition is kept, so
machine noise hits both alike. Timed: the optimisation steps after a warm-up, inside one
epoch (per-epoch validation and checkpointing are left out of both).

    python benchmarks/train.py [--quick] [--device auto|cpu|cuda] [--models convnet,resnet18,d4-convnet]
                               [--methods regular,mmd,dann,coral,adabn,adv-1p]
    python benchmarks/train.py --defences [--quick] [--device auto|cpu|cuda]

The last line printed is one JSON object with ``ratio_<model>_<method>`` = project images/s
divided by bare images/s (goal: every ratio >= 0.9) and ``vs_mmd_<model>_<method>`` = the
method's time per training step over MMD's (the issue's budget: at most 1.5).

``--defences`` (issue 25) times the project's training step, side by side in one process
(alternating, best repetition of each kept), for the ConvNet (regular), the d4-convnet
(regular) and the ConvNet with one-pixel adversarial training (adv-1p, its default share and
positions), at 100 x 100 x 3 and batch 128 (quick: 32); its JSON has ``step_s_<model>_<method>``,
``d4_vs_convnet`` = the d4-convnet's step time over the ConvNet's (goal: at most 4) and
``adv1p_vs_regular`` = adv-1p's step time over regular training's, which is also its cost per
epoch (both draw the same number of batches per epoch), and ``surveymix_vs_regular`` = the ConvNet
with ``--augment survey-mix`` over regular training (goal: at most 3; its step includes building the
two AugMix views from raw electrons and the three-way forward and backward pass). Its two parts are
timed apart in the same run: ``triple_batch_vs_regular`` = the regular step over three times the
images (clean + two views, no augmentation) over the regular step, and ``views_vs_regular`` = building
one batch's two views alone over the regular step; their sum is the floor of ``surveymix_vs_regular``. The survey-mix
cell trains on raw images (sky-subtracted Gaussian blobs with Y10 noise) whose model input is
the paper stretch of them; the other cells' tensors are unchanged.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from deepadversaries.training.adversarial import one_pixel_adversarial_batch
from deepadversaries.config import TrainConfig
from deepadversaries.devices import resolve_device
from deepadversaries.adaptation.alignment import alignment_loss
from deepadversaries.models.networks import build_model
from deepadversaries.progress import quiet_lightning
from deepadversaries.training.datamodule import GalaxyDataModule
from deepadversaries.training.module import GalaxyClassifierModule
from deepadversaries.training.survey_mix import SurveyMix
from deepadversaries.training.train import make_trainer
from deepadversaries.data.stretches import apply_paper as apply_stretch

CLASS_WEIGHTS = [0.58, 1.02, 3.3]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_tensors(n: int, size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "Y10_train": torch.rand(n, 3, size, size, generator=gen),
        "Y1_train": torch.rand(n, 3, size, size, generator=gen),
        "y_train": torch.randint(0, 3, (n,), generator=gen),
        "Y10_valid": torch.rand(8, 3, size, size, generator=gen),
        "y_valid": torch.randint(0, 3, (8,), generator=gen),
    }


def make_config(model: str, method: str, batch: int, device: torch.device, augment: str | None = None) -> TrainConfig:
    """The quick preset's settings with this benchmark's batch and a warm-up-sized schedule."""
    return TrainConfig.from_preset(
        "quick", model=model, method=method, seed=0, device_type=device.type, epochs=1, lr=1e-4,
        batch_size=batch, eval_batch_size=8, weight_decay=1e-4, schedule="cosine",
        precision="bf16-mixed" if device.type == "cuda" else "32-true", augment=augment)


#: the paper stretch's constants for :func:`make_raw`'s images (electrons)
RAW_LOW, RAW_HIGH = -60.0, 3000.0


def make_raw(n: int, size: int, seed: int = 0) -> np.ndarray:
    """(n, 3, size, size) float32 raw electrons: a Gaussian blob (random width and flux) on Y10 sky noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] - size / 2
    width = rng.uniform(2.0, 8.0, n)[:, None, None, None]
    flux = rng.uniform(300.0, 3000.0, n)[:, None, None, None]
    blob = flux * np.exp(-(xx[None, None] ** 2 + yy[None, None] ** 2) / (2 * width**2))
    blob = blob * np.array([0.6, 1.0, 1.2])[None, :, None, None]
    return (blob + rng.normal(0.0, 25.0, (n, 3, size, size))).astype(np.float32)


def bare_loop(config: dict, tensors: dict, device: torch.device, warmup: int, steps: int) -> float:
    """Images per second of a plain PyTorch loop doing the same work."""
    torch.manual_seed(0)
    model = build_model(config.model).to(device)
    channels_last = config.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=tuple(config.betas), eps=config.eps,
                                 weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=warmup + steps)
    weight = torch.tensor(CLASS_WEIGHTS, device=device)
    alignment = alignment_loss(config.method, config.method_settings)
    if alignment is not None:
        alignment = alignment.to(device)
        optimizer.add_param_group({"params": list(alignment.parameters())})
    x10, y, x1 = (tensors[k].to(device) for k in ("Y10_train", "y_train", "Y1_train"))
    b = config.batch_size
    rng = np.random.default_rng(0)
    order, order_t = rng.permutation(len(y)), rng.permutation(len(y))
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if config.precision == "bf16-mixed"
                else contextlib.nullcontext())
    model.train()
    start = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            _sync(device)
            start = time.perf_counter()
        idx = torch.as_tensor(order[step * b:(step + 1) * b], device=device)
        xs, ys = x10[idx], y[idx]
        if config.adv_share > 0:
            xs = one_pixel_adversarial_batch(model, xs, ys, share=config.adv_share,
                                             positions=config.adv_positions).images
        if alignment is not None:
            xb = torch.cat([xs, x1[torch.as_tensor(order_t[step * b:(step + 1) * b], device=device)]])
        else:
            xb = xs
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with autocast:
            logits, z = model(xb)
            loss = F.cross_entropy(logits[:b].float(), ys, weight=weight)
            if alignment is not None:
                alignment.set_progress(step / (warmup + steps))
                loss = loss + alignment(z[:b], z[b:])[0]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    _sync(device)
    return steps * b / (time.perf_counter() - start)


class _StepTimer(Callback):
    def __init__(self, warmup: int, steps: int, batch: int, device: torch.device) -> None:
        self.warmup, self.steps, self.batch, self.device = warmup, steps, batch, device
        self.start = self.end = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            _sync(self.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.warmup + self.steps - 1:
            _sync(self.device)
            self.end = time.perf_counter()

    def images_per_second(self) -> float:
        return self.steps * self.batch / (self.end - self.start)


def project_loop(config: dict, tensors: dict, device: torch.device, warmup: int, steps: int,
                 raw: np.ndarray | None = None) -> float:
    """Images per second of the project's loop (the LightningModule and trainer of train_model); with
    ``config.augment`` survey-mix, ``raw`` holds the electrons whose paper stretch ``tensors["Y10_train"]`` is."""
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp, quiet_lightning():
        module = GalaxyClassifierModule(config, CLASS_WEIGHTS)
        augmenter = None
        if config.augment != "none":
            augmenter = SurveyMix(lambda electrons: apply_stretch(electrons, RAW_LOW, RAW_HIGH))
        datamodule = GalaxyDataModule(None, config, tensors=tensors, raw_train=raw, augmenter=augmenter)
        timer = _StepTimer(warmup, steps, config.batch_size, device)
        trainer, _ = make_trainer(Path(tmp), config, device=device, progress=False, extra_callbacks=[timer],
                                  max_steps=warmup + steps, limit_val_batches=0)
        trainer.fit(module, datamodule=datamodule)
        return timer.images_per_second()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few steps, small batches (a CPU smoke run)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--repeats", type=int, default=None, help="alternating repetitions per side")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch (CPU runs)")
    parser.add_argument("--models", default="convnet,resnet18", help="comma-separated models to time")
    parser.add_argument("--methods", default="regular,mmd,dann,coral,adabn", help="comma-separated methods")
    parser.add_argument("--defences", action="store_true",
                        help="time the defences' training steps side by side (d4-convnet, adv-1p, survey-mix; "
                             "issue 25)")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    if args.defences:
        return defences(device, quick=args.quick, repeats=args.repeats)
    if device.type == "cuda":
        sizes = {"convnet": (128, 10, 60), "resnet18": (128, 10, 40)}
        repeats = args.repeats or 3
    elif args.quick:
        sizes = {"convnet": (64, 2, 5), "resnet18": (16, 1, 3)}
        repeats = args.repeats or 2
    else:
        sizes = {"convnet": (128, 2, 10), "resnet18": (32, 2, 6)}
        repeats = args.repeats or 3
    sizes["d4-convnet"] = sizes["convnet"]
    result: dict[str, float | str] = {"device": str(device), "torch_threads": torch.get_num_threads()}
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        batch, warmup, steps = sizes[model]
        tensors = make_tensors(batch * (warmup + steps) + batch, 100)
        for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
            config = make_config(model, method, batch, device)
            bare, project = [], []
            for _ in range(repeats):
                bare.append(bare_loop(config, tensors, device, warmup, steps))
                project.append(project_loop(config, tensors, device, warmup, steps))
            key = f"{model}_{method}"
            result[f"bare_{key}_img_s"] = round(max(bare), 1)
            result[f"project_{key}_img_s"] = round(max(project), 1)
            result[f"ratio_{key}"] = round(max(project) / max(bare), 3)
            print(f"{key:18s} batch {batch:4d}  bare {max(bare):8.1f} img/s  project {max(project):8.1f} img/s  "
                  f"ratio {max(project) / max(bare):.3f}   (bare runs {[round(v) for v in bare]}, "
                  f"project runs {[round(v) for v in project]})", file=sys.stderr, flush=True)
        if f"project_{model}_mmd_img_s" in result:
            for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
                result[f"vs_mmd_{model}_{method}"] = round(result[f"project_{model}_mmd_img_s"]
                                                           / result[f"project_{model}_{method}_img_s"], 3)
    print(json.dumps(result))
    return result


#: the defences' cells, timed side by side: (model, method, augment)
DEFENCE_CELLS = (("convnet", "regular", "none"), ("d4-convnet", "regular", "none"), ("convnet", "adv-1p", "none"),
                 ("convnet", "regular", "survey-mix"))


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def defences(device: torch.device, *, quick: bool = False, repeats: int | None = None) -> dict:
    """Seconds per training step of the project's loop for :data:`DEFENCE_CELLS`, alternating, best kept."""
    batch, warmup, steps = (32, 1, 3) if quick else (128, 1, 4)
    if device.type == "cuda":
        batch, warmup, steps = 128, 5, 20
    repeats = repeats or (2 if quick else 3)
    n = batch * (warmup + steps) + batch
    tensors = make_tensors(n, 100)
    raw = make_raw(n, 100)
    raw_tensors = {**tensors, "Y10_train": torch.from_numpy(apply_stretch(raw, RAW_LOW, RAW_HIGH))}
    best = {cell: 0.0 for cell in DEFENCE_CELLS}
    for _ in range(repeats):
        for model, method, augment in DEFENCE_CELLS:
            config = make_config(model, method, batch, device, None if augment == "none" else augment)
            cell_tensors, cell_raw = (raw_tensors, raw) if augment != "none" else (tensors, None)
            best[(model, method, augment)] = max(best[(model, method, augment)],
                                                 project_loop(config, cell_tensors, device, warmup, steps, cell_raw))
    step_s = {cell: batch / best[cell] for cell in DEFENCE_CELLS}
    # the floor of any AugMix-style step: the regular step over three times the images (clean + two
    # views), and the views built alone, each measured beside the cells above
    triple = 3 * batch
    big = make_tensors(triple * (warmup + steps) + triple, 100, seed=1)
    config = make_config("convnet", "regular", triple, device)
    triple_s = min(triple / project_loop(config, big, device, warmup, steps) for _ in range(repeats))
    augmenter = SurveyMix(lambda electrons: apply_stretch(electrons, RAW_LOW, RAW_HIGH))
    augmenter(raw[:batch], np.random.default_rng(0))  # warm-up (first calls build cached tables)
    views_s = min(_timed(lambda: augmenter(raw[:batch], np.random.default_rng(r))) for r in range(1, 4))
    result: dict[str, float | str] = {"device": str(device), "torch_threads": torch.get_num_threads(),
                                      "batch": batch, "steps": steps, "repeats": repeats}
    for (model, method, augment), seconds in step_s.items():
        key = f"{model}_{method}" + (f"_{augment.replace('-', '')}" if augment != "none" else "")
        result[f"step_s_{key}"] = round(seconds, 4)
        print(f"{model:11s} {method:8s} {augment:10s} batch {batch:4d}  {seconds:7.3f} s per step  "
              f"({best[(model, method, augment)]:.1f} img/s)", file=sys.stderr, flush=True)
    regular = step_s[("convnet", "regular", "none")]
    result["d4_vs_convnet"] = round(step_s[("d4-convnet", "regular", "none")] / regular, 3)
    result["adv1p_vs_regular"] = round(step_s[("convnet", "adv-1p", "none")] / regular, 3)
    result["surveymix_vs_regular"] = round(step_s[("convnet", "regular", "survey-mix")] / regular, 3)
    result["step_s_convnet_regular_triple_batch"] = round(triple_s, 4)
    result["views_s"] = round(views_s, 4)
    result["triple_batch_vs_regular"] = round(triple_s / regular, 3)
    result["views_vs_regular"] = round(views_s / regular, 3)
    print(f"survey-mix's parts: the regular step over {triple} images / regular {result['triple_batch_vs_regular']}, "
          f"building the two views of {batch} images / regular {result['views_vs_regular']} "
          f"(their sum is the floor of the survey-mix ratio)", file=sys.stderr, flush=True)
    print(f"d4-convnet / convnet step time {result['d4_vs_convnet']} (goal <= 4); adv-1p / regular "
          f"{result['adv1p_vs_regular']} (per step and per epoch); survey-mix / regular "
          f"{result['surveymix_vs_regular']} (goal <= 3)", file=sys.stderr, flush=True)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
