"""Training and attack throughput of the `paper` preset on a GPU (one short run).

Makes a synthetic dataset of paper-sized images (published layout), trains each model x
method for two epochs with the `paper` preset, and runs the batched one-pixel attack at
population 400 against a per-candidate reference loop on the same images and seeds.
Prints training images/s, attack model evaluations/s, the engine's speed-up and an
estimate of the `paper` preset's wall time; last line one JSON object.

    python benchmarks/gpu_paper.py [--train-images 8000] [--device cuda] [--workdir DIR]
    python benchmarks/gpu_paper.py --device cpu --train-images 64 --attack-images 2 --models convnet  # smoke run
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from deepadversaries.attacks.de import OnePixelDE, reference_attack  # noqa: E402
from deepadversaries.config import TrainConfig  # noqa: E402
from deepadversaries.data.dataset import image_file, label_file, load_dataset  # noqa: E402
from deepadversaries.models.networks import load_model  # noqa: E402
from deepadversaries.training.train import train_model  # noqa: E402

PAPER_TRAIN_IMAGES = 24_500  # ~35,000 images x 0.7
PAPER_EPOCHS = 100


def make_dataset(path: Path, n_train: int, seed: int = 0) -> Path:
    """Blobs whose shape depends on the class, Y1 sqrt(10) noisier (as tests/conftest.py)."""
    rng = np.random.default_rng(seed)
    yy, xx = (np.mgrid[0:100, 0:100] - 50.0).astype(np.float32)
    sizes = {"train": n_train, "valid": n_train // 7, "test": n_train // 3}
    path.mkdir(parents=True, exist_ok=True)
    for split, n in sizes.items():
        labels = rng.integers(0, 3, n)
        width = np.where(labels == 0, 8.0, np.where(labels == 1, 2.5, 4.0)).astype(np.float32)
        r2 = xx[None] ** 2 + yy[None] ** 2
        scene = (800 * np.exp(-r2 / (2 * width[:, None, None] ** 2))).astype(np.float32)
        scene[labels == 2] += 600 * np.exp(-((xx - 10) ** 2 + yy ** 2) / 18.0)
        scene = np.repeat(scene[:, None], 3, axis=1)
        for domain, years in (("Y10", 10), ("Y1", 1)):
            img = years * scene + rng.normal(0, np.sqrt(50.0 * years), scene.shape).astype(np.float32)
            np.save(path / image_file(domain, split), img.astype(np.float32))
        np.save(path / label_file(split), np.eye(3, dtype=np.float32)[labels])
    return path


def epoch_seconds(run: Path) -> float:
    with open(run / "log.csv") as fh:
        rows = list(csv.DictReader(fh))
    return float(rows[-1]["epoch_seconds"])  # the last (warm) epoch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-images", type=int, default=8000)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--attack-images", type=int, default=32)
    ap.add_argument("--models", default="convnet,resnet18")
    ap.add_argument("--workdir", default=None, help="folder for the dataset and the runs [default: a new temporary "
                    "folder]")
    ap.add_argument("--reference-images", type=int, default=2, help="images of the per-candidate reference loop")
    args = ap.parse_args()
    dev = torch.device(args.device)
    print(f"device: {torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'}, torch {torch.__version__}")
    tmp = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="deepadv-gpu-paper-"))
    tmp.mkdir(parents=True, exist_ok=True)
    data = make_dataset(tmp / "data", args.train_images)
    ds = load_dataset(data)
    result: dict[str, float] = {}
    for model in args.models.split(","):
        for method in ("regular", "mmd"):
            run = tmp / f"{model}_{method}"
            t0 = time.perf_counter()
            config = TrainConfig.from_preset("paper", model=model, method=method, seed=0, device_type=dev.type,
                                             epochs=2)
            train_model(data, run, config, device=args.device, overwrite=True, progress=False)
            sec = epoch_seconds(run)
            ips = args.train_images / sec
            result[f"train_images_per_s_{model}_{method}"] = round(ips, 1)
            hours = PAPER_EPOCHS * PAPER_TRAIN_IMAGES / ips / 3600
            result[f"paper_train_hours_max_{model}_{method}"] = round(hours, 2)
            print(f"train {model:8s} {method:7s}: {ips:9.1f} images/s (epoch {sec:.1f} s incl. validation; "
                  f"total {time.perf_counter() - t0:.0f} s); paper preset <= {hours:.2f} h at 100 epochs")
        # attack: the engine vs the per-candidate reference, same images and seeds
        net = load_model(tmp / f"{model}_regular", device=dev)
        x = ds.images("Y10", "test")[: args.attack_images]
        y = ds.labels("test")[: args.attack_images]
        target = [(int(c) + 1) % 3 for c in y]
        iters = 10
        engine = OnePixelDE(net, pop_size=400, max_iter=iters, seed=0, device=dev)
        engine.results(x[:4], y[:4], targets=target[:4])  # warm-up
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = engine.results(x, y, targets=target)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t_engine = time.perf_counter() - t0
        evals = sum(r.evaluations for r in res)
        n_ref = min(args.reference_images, len(x))
        t0 = time.perf_counter()
        ref_evals = 0
        for i in range(n_ref):
            r = reference_attack(net, x[i], int(y[i]), target[i], pop_size=400, max_iter=iters, seed=0,
                                 key=i, device=dev)
            ref_evals += r.evaluations
        t_ref = time.perf_counter() - t0
        eps_engine, eps_ref = evals / t_engine, ref_evals / t_ref
        result[f"attack_evals_per_s_{model}"] = round(eps_engine, 1)
        result[f"attack_speedup_{model}"] = round(eps_engine / eps_ref, 1)
        full_image_s = 2 * 80 * 400 / eps_engine  # a failed image: 2 targets x 80 generations
        result[f"paper_attack_minutes_max_{model}"] = round(150 * full_image_s / 60, 2)
        print(f"attack {model:8s}: engine {eps_engine:10.0f} evals/s, reference {eps_ref:8.0f} evals/s, "
              f"speed-up {eps_engine / eps_ref:.1f}x; success {np.mean([r.success for r in res]):.2f}; "
              f"150-image paper campaign <= {150 * full_image_s / 60:.1f} min")
    if not args.workdir:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
