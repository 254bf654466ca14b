"""Benchmark of ``deepadv robustness``: the full table on a quick-size test set, one ConvNet run.

Budget (the issue): every corruption x severities 1-5 on the quick preset's test set
(about 700 images) within 2 minutes per ConvNet run on 2 cores. Measured here, side by side
on the same images:

(a) corrupting: seconds per corruption, all five severities, in the stage's chunks;
(b) evaluating: stretch + forward passes of the corrupted images, with the plain model and
    with the stage's BatchNorm-folded copy (``attacks.optimized_for_inference``);
(c) the stage end to end (``robustness_run`` on a run folder with a random ConvNet: speed
    does not depend on training), figures included.

Prints the seconds, the fraction of the budget used and the folded/plain speed-up; the last
line is one JSON object. On a shared machine the wall times depend on the load; the CPU
seconds of this process (``time.process_time``) are printed beside them: on a quiet 2-core
machine the stage's wall time is about its single-threaded corrupting CPU time plus half
its two-threaded evaluating CPU time.

    OMP_NUM_THREADS=2 python benchmarks/robustness.py [--n 700] [--threads 2] [--data DIR]

Without ``--data`` the test set is synthetic: Gaussian-blob galaxies of a few hundred to a
few thousand electrons per pixel at peak on the Y10 sky, Gaussian noise of the survey's
variance (B + S) per pixel, as the simulator's images.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from deepadversaries.attacks import optimized_for_inference
from deepadversaries.corruptions import CORRUPTIONS, SEVERITIES, band_sky
from deepadversaries.data import apply_stretch, image_file, label_file, load_dataset
from deepadversaries.inference import forward_batches
from deepadversaries.io import write_json
from deepadversaries.models import build_model
from deepadversaries.robustness import CHUNK, corrupted_chunk, robustness_run
from deepadversaries.runs import RUN_KIND

BUDGET_S = 120.0


def synthetic_dataset(path: Path, n_test: int, seed: int = 0) -> Path:
    """A published-layout folder of Y10 blobs on the survey's sky (train/valid: 64 images each)."""
    rng = np.random.default_rng(seed)
    sky = band_sky("Y10")
    yy, xx = np.mgrid[0:100, 0:100] - 49.5
    path.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 64), ("valid", 64), ("test", n_test)):
        labels = rng.integers(0, 3, n)
        images = np.empty((n, 3, 100, 100), np.float32)
        for i, c in enumerate(labels):
            width = (6.0, 2.5, 3.0)[c]
            peak = rng.uniform(300, 5000)
            blob = peak * np.exp(-(xx ** 2 + yy ** 2) / (2 * width ** 2))
            if c == 2:
                blob += peak * np.exp(-((xx - 8) ** 2 + yy ** 2) / (2 * width ** 2))
            signal = blob[None] * np.array([0.6, 1.0, 1.2])[:, None, None]
            noise = rng.standard_normal((3, 100, 100)) * np.sqrt(sky[:, None, None] + signal)
            images[i] = signal + noise
        np.save(path / image_file("Y10", split), images)
        np.save(path / label_file(split), np.eye(3, dtype=np.float32)[labels])
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=700, help="test images (quick preset: about 700)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--data", type=Path, default=None, help="a dataset folder instead of synthetic images")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="deepadv-robustness-bench-"))
    data = args.data or synthetic_dataset(tmp / "data", args.n)
    dataset = load_dataset(data)
    raw = dataset.images("Y10", "test", stretched=False)
    n = len(raw)
    lo, hi = dataset.stretch("Y10")
    torch.manual_seed(0)
    model = build_model("convnet").eval()
    fused = optimized_for_inference(model, channels_last=True)
    chunks = range(-(-n // CHUNK))

    # (a) corrupting, per corruption, all severities; (b) evaluating the same images, plain and folded
    per_corruption: dict[str, float] = {}
    evaluate = {"plain": 0.0, "folded": 0.0}
    evaluate_cpu = {"plain": 0.0, "folded": 0.0}
    for name in CORRUPTIONS:
        spent = 0.0
        for severity in SEVERITIES:
            for k in chunks:
                t0 = time.perf_counter()
                images = corrupted_chunk(raw, name, severity, k)
                spent += time.perf_counter() - t0
                stretched = apply_stretch(images, lo, hi)
                for label, m in (("plain", model), ("folded", fused)):
                    t0, c0 = time.perf_counter(), time.process_time()
                    forward_batches(m, stretched, batch_size=256)
                    evaluate[label] += time.perf_counter() - t0
                    evaluate_cpu[label] += time.process_time() - c0
        per_corruption[name] = spent
        print(f"{name:<16} corrupt {spent:6.2f} s (5 severities, {n} images)", flush=True)
    corrupt_s = sum(per_corruption.values())
    print(f"corrupting: {corrupt_s:.1f} s; evaluating {len(CORRUPTIONS) * len(SEVERITIES) * n} images: "
          f"plain model {evaluate['plain']:.1f} s, folded {evaluate['folded']:.1f} s "
          f"(x{evaluate['plain'] / evaluate['folded']:.2f}; CPU {evaluate_cpu['plain']:.1f} s and "
          f"{evaluate_cpu['folded']:.1f} s)")

    # (c) the stage end to end
    run = tmp / "runs" / "convnet_regular"
    (run / "checkpoints").mkdir(parents=True)
    write_json(run / "config.json", {"kind": RUN_KIND, "model": "convnet", "method": "regular",
                                     "data": str(Path(data).resolve()), "seed": 0})
    torch.save({"model": "convnet", "state_dict": model.state_dict(), "epoch": 1, "val_acc": 0.0},
               run / "checkpoints" / "best.pt")
    write_json(run / "training.json", {"epochs": 0})
    t0, c0 = time.perf_counter(), time.process_time()
    summary = robustness_run(run, device="cpu")
    stage_s, stage_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    timing = summary["timing"]
    print(f"stage end to end: {stage_s:.1f} s wall ({stage_cpu_s:.1f} s CPU) = {stage_s / BUDGET_S:.0%} of the "
          f"{BUDGET_S:.0f}-s budget; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
          f"(corrupting {timing['corrupt_s']:.1f} s : evaluating {timing['evaluate_s']:.1f} s = "
          f"{timing['corrupt_s'] / timing['evaluate_s']:.2f}; figures and files the rest)")
    print(json.dumps({
        "n_images": n, "threads": args.threads, "corruptions": len(CORRUPTIONS), "severities": len(SEVERITIES),
        "corrupt_s": round(corrupt_s, 2), "per_corruption_s": {k: round(v, 2) for k, v in per_corruption.items()},
        "evaluate_plain_s": round(evaluate["plain"], 2), "evaluate_folded_s": round(evaluate["folded"], 2),
        "folded_speedup": round(evaluate["plain"] / evaluate["folded"], 3),
        "evaluate_plain_cpu_s": round(evaluate_cpu["plain"], 2), "evaluate_folded_cpu_s": round(evaluate_cpu["folded"], 2),
        "stage_s": round(stage_s, 2), "stage_cpu_s": round(stage_cpu_s, 2),
        "load_average": round(os.getloadavg()[0], 2), "cores": os.cpu_count(), "stage_corrupt_s": timing["corrupt_s"], "stage_evaluate_s": timing["evaluate_s"],
        "budget_s": BUDGET_S, "budget_fraction": round(stage_s / BUDGET_S, 3), "within_budget": stage_s <= BUDGET_S,
    }))


if __name__ == "__main__":
    main()
