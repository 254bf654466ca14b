"""Benchmark of ``deepadv robustness``: the quick pipeline's default set on a quick-size test set, one ConvNet.

Budget (issue 22): the default set -- every corruption, Rubin tables, dithered defects, the quick
preset's severities 1, 3, 5 -- on one domain of the quick preset's test set (about 700 images)
within 30 s per ConvNet run on 2 cores. Measured here, side by side on the same images:

(a) corrupting: seconds (wall and CPU of this process) per corruption, the three severities, in the
    stage's chunks (each chunk at its three severities together, the draws made once, as the stage
    does), with the Rubin tables and dithered defects and, beside it, with the stress tables and
    no-dither defects (the first version's model): the ratio of the two;
(b) the stage end to end (``robustness_run`` on a run folder with a random ConvNet: speed does not
    depend on training), figures included: wall and CPU seconds.

Prints the seconds and the fraction of the budget used; the last line is one JSON object. On a shared
machine the wall times depend on the load (printed); the CPU seconds of this process do not: on a
quiet 2-core machine the stage's wall time is about its single-threaded corrupting CPU time plus half
its two-threaded evaluating CPU time.

    OMP_NUM_THREADS=2 python benchmarks/robustness.py [--n 700] [--threads 2] [--data DIR] [--before SRC]

``--before SRC`` (a ``src`` folder of an earlier version, e.g. a copy of the main branch's) runs the
same measurement with that package in a subprocess first and prints both side by side with the
ratios after / before; the JSON line then holds ``before`` and ``ratio_after_before``. ``--src SRC``
measures the package in SRC instead of this checkout's (what ``--before`` uses).

Without ``--data`` the test set is synthetic: Gaussian-blob galaxies of a few hundred to a few
thousand electrons per pixel at peak on the Y10 sky, Gaussian noise of the survey's variance (B + S)
per pixel, as the simulator's images.
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


def _source_folder(argv: list[str]) -> Path:
    """The package source to measure: ``--src SRC`` if given (read before the package is imported)."""
    for i, arg in enumerate(argv):
        if arg == "--src" and i + 1 < len(argv):
            return Path(argv[i + 1]).resolve()
        if arg.startswith("--src="):
            return Path(arg.split("=", 1)[1]).resolve()
    return ROOT / "src"


sys.path.insert(0, str(_source_folder(sys.argv)))

from deepadversaries.corruptions.registry import CORRUPTIONS
from deepadversaries.corruptions.suite import CorruptionOptions, band_sky
from deepadversaries.data.dataset import image_file, label_file, load_dataset
from deepadversaries.io import write_json
from deepadversaries.models.networks import build_model
from deepadversaries.workflow.grid import ROBUSTNESS_SEVERITIES
from deepadversaries.corruptions.benchmark import CHUNK, corrupted_chunk, robustness_run

try:  # draws made once per chunk for all severities (since 6 December 2026)
    from deepadversaries.corruptions.benchmark import corrupted_chunks
except ImportError:  # an earlier version measured with --src
    corrupted_chunks = None
from deepadversaries.models.runs import RUN_KIND

BUDGET_S = 30.0
SEVERITIES = ROBUSTNESS_SEVERITIES["quick"]


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
    parser.add_argument("--src", type=Path, default=None, help="the package source to measure [default: this checkout's]")
    parser.add_argument("--before", type=Path, default=None,
                        help="an earlier version's src folder: measured first in a subprocess, shown side by side")
    args = parser.parse_args()
    before = _measure_before(args) if args.before is not None else None
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="deepadv-robustness-bench-"))
    data = args.data or synthetic_dataset(tmp / "data", args.n)
    dataset = load_dataset(data)
    raw = dataset.images("Y10", "test", stretched=False)
    n = len(raw)
    torch.manual_seed(0)
    model = build_model("convnet").eval()
    chunks = range(-(-n // CHUNK))

    # (a) corrupting, per corruption, the quick severities: the default set and the first version's beside it
    sets = {"default": CorruptionOptions(), "first version": CorruptionOptions("stress", "no-dither")}
    wall: dict[str, dict[str, float]] = {k: {} for k in sets}
    cpu: dict[str, dict[str, float]] = {k: {} for k in sets}
    for name in CORRUPTIONS:
        for label, options in sets.items():
            t0, c0 = time.perf_counter(), time.process_time()
            for k in chunks:
                if corrupted_chunks is not None:  # as the stage does: the severities of a chunk together
                    corrupted_chunks(raw, name, SEVERITIES, k, options=options)
                else:  # an earlier version (--src): one severity at a time
                    for severity in SEVERITIES:
                        corrupted_chunk(raw, name, severity, k, options=options)
            wall[label][name], cpu[label][name] = time.perf_counter() - t0, time.process_time() - c0
        print(f"{name:<20} corrupt CPU {cpu['default'][name]:6.2f} s (first version's model "
              f"{cpu['first version'][name]:6.2f} s) for {len(SEVERITIES)} severities x {n} images", flush=True)
    corrupt_cpu = {k: sum(v.values()) for k, v in cpu.items()}
    print(f"corrupting CPU: default {corrupt_cpu['default']:.1f} s, first version's model "
          f"{corrupt_cpu['first version']:.1f} s (x{corrupt_cpu['default'] / corrupt_cpu['first version']:.2f})")

    # (c) the stage end to end
    run = tmp / "runs" / "convnet_regular"
    (run / "checkpoints").mkdir(parents=True)
    write_json(run / "config.json", {"kind": RUN_KIND, "model": "convnet", "method": "regular",
                                     "data": str(Path(data).resolve()), "seed": 0})
    torch.save({"model": "convnet", "state_dict": model.state_dict(), "epoch": 1, "val_acc": 0.0},
               run / "checkpoints" / "best.pt")
    write_json(run / "training.json", {"epochs": 0})
    t0, c0 = time.perf_counter(), time.process_time()
    summary = robustness_run(run, device="cpu", severities=SEVERITIES)
    stage_s, stage_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    timing = summary["timing"]
    print(f"stage end to end: {stage_s:.1f} s wall ({stage_cpu_s:.1f} s CPU) = {stage_s / BUDGET_S:.0%} of the "
          f"{BUDGET_S:.0f}-s budget; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
          f"(corrupting {timing['corrupt_s']:.1f} s : evaluating {timing['evaluate_s']:.1f} s = "
          f"{timing['corrupt_s'] / timing['evaluate_s']:.2f}; figures and files the rest)")
    result = {
        "n_images": n, "threads": args.threads, "corruptions": len(CORRUPTIONS), "severities": list(SEVERITIES),
        "corrupt_cpu_s": round(corrupt_cpu["default"], 2), "corrupt_cpu_first_version_s": round(corrupt_cpu["first version"], 2),
        "per_corruption_cpu_s": {k: round(v, 2) for k, v in cpu["default"].items()},
        "stage_s": round(stage_s, 2), "stage_cpu_s": round(stage_cpu_s, 2),
        "load_average": round(os.getloadavg()[0], 2), "cores": os.cpu_count(), "stage_corrupt_s": timing["corrupt_s"],
        "stage_evaluate_s": timing["evaluate_s"], "budget_s": BUDGET_S, "budget_fraction": round(stage_s / BUDGET_S, 3),
        "within_budget": stage_s <= BUDGET_S, "src": str(_source_folder(sys.argv)),
    }
    if before is not None:
        keys = ("corrupt_cpu_s", "stage_s", "stage_cpu_s", "stage_corrupt_s", "stage_evaluate_s")
        result["before"] = before
        result["ratio_after_before"] = {k: round(result[k] / before[k], 3) for k in keys if before.get(k)}
        print(f"{'':<22}{'before':>10}{'after':>10}{'after/before':>14}")
        for k in keys:
            if before.get(k):
                print(f"{k:<22}{before[k]:>10.2f}{result[k]:>10.2f}{result[k] / before[k]:>14.3f}")
        for name, after_cpu in result["per_corruption_cpu_s"].items():
            old = before.get("per_corruption_cpu_s", {}).get(name)
            if old:
                print(f"  {name:<20}{old:>10.2f}{after_cpu:>10.2f}{after_cpu / old:>14.3f}")
    print(json.dumps(result))


def _measure_before(args: argparse.Namespace) -> dict:
    """This benchmark run on the package in ``args.before`` in a subprocess; its JSON line."""
    import subprocess

    command = [sys.executable, str(Path(__file__).resolve()), "--src", str(args.before.resolve()),
               "--n", str(args.n), "--threads", str(args.threads)]
    if args.data is not None:
        command += ["--data", str(args.data)]
    print(f"before: {' '.join(command)}", flush=True)
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    print(done.stdout, end="", flush=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
