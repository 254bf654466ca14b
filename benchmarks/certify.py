"""Benchmark: `deepadv certify` against the corner search on a run's attacked images.

One command (nothing is written into the run)::

    python benchmarks/certify.py --run RUN [--n-images 10] [--budget 60] [--threads 2] [--float64-too]

For the first N images of the run's DE campaign (``RUN/attack/results.csv``; without one,
the campaign's seeded subsample) it times, side by side on the same images:

- the corner search (``ExhaustiveSearch``: every position × the 8 corners), seconds per image;
- the certification (``ImageCertifier.certify`` with ``--budget`` seconds per image): status,
  wall and CPU seconds (the machine is shared: CPU time is the work done), positions certified,
  boxes bounded;
- with ``--float64-too``, the same certification with every convolution bounded in float64 (the
  bounds before float32 convolutions with rounding margins were the default), alternating with
  the default per image: the ratio of their CPU seconds, and whether the answers agree.

It prints one line per image, the medians and the ratio certify / corner search, the issue-21
goals (at least 99 % of the images decided, median at most 5 s, slowest at most 30 s) with
whether they were met, and as its last line a JSON object with every number. It says what
else was running (the load average) since the machine's cores are shared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from deepadversaries.certify.certify import CertifyConfig, ImageCertifier, _choose_images, _success_rule, _value_range  # noqa: E402
from deepadversaries.data.dataset import load_dataset  # noqa: E402
from deepadversaries.attacks.exhaustive import ExhaustiveSearch  # noqa: E402
from deepadversaries.models.networks import load_model  # noqa: E402
from deepadversaries.models.runs import read_run_config  # noqa: E402

GOALS = {"decided_share": 0.99, "median_s": 5.0, "max_s": 30.0}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--n-images", type=int, default=10)
    parser.add_argument("--budget", type=float, default=60.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--value-range", choices=("input", "physical"), default="input",
                        help="the values a pixel may take: the model input's [0, 1] or 0 e- to full well")
    parser.add_argument("--skip-corner", action="store_true",
                        help="time the certification alone (the corner search is slow on a loaded machine)")
    parser.add_argument("--float64-too", action="store_true",
                        help="also certify each image with every convolution in float64 and give the CPU-time ratio")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    run_config = read_run_config(args.run)
    dataset = load_dataset(run_config.data)
    model = load_model(args.run, "cpu")
    config = CertifyConfig(n_images=args.n_images, budget_s=args.budget)
    rule, de_settings = _success_rule(args.run, config)
    chosen = _choose_images(args.run, model, dataset, config, de_settings)
    value_range = _value_range(args.value_range, dataset)
    certifier = ImageCertifier(model, value_range, rule)
    certifier64 = ImageCertifier(model, value_range, rule, float32_convolutions=False) if args.float64_too else None
    corner = ExhaustiveSearch(model, value_range=value_range, success=rule, device="cpu")
    rows = []
    for k, t in enumerate(chosen.test_index):
        label = int(chosen.labels[k])
        targets = [c for c in range(certifier.net.n_classes) if c != label]
        t0 = time.perf_counter()
        ex = None if args.skip_corner else next(corner.run(chosen.images[k: k + 1], [label], targets=[targets]))
        corner_s = time.perf_counter() - t0 if ex is not None else float("nan")
        cpu0 = time.process_time()
        cert = certifier.certify(chosen.images[k], label, targets, args.budget)
        cpu_s = time.process_time() - cpu0
        f64 = {}
        if certifier64 is not None:
            cpu0 = time.process_time()
            cert64 = certifier64.certify(chosen.images[k], label, targets, args.budget)
            f64 = {"float64_status": cert64.status, "float64_cpu_seconds": round(time.process_time() - cpu0, 3),
                   "float64_boxes": cert64.boxes}
            print(f"image {int(t):5d}, float64 convolutions: {cert64.status:10s} {f64['float64_cpu_seconds']:7.1f} s "
                  f"CPU ({cert64.boxes} boxes)", flush=True)
        n_pos = cert.status_map.size
        done = int((cert.status_map == 0).sum())
        rows.append({"test_index": int(t), "status": cert.status, "seconds": round(cert.seconds, 3),
                     "cpu_seconds": round(cpu_s, 3), "boxes": cert.boxes, "found_by": cert.found_by,
                     "positions_certified": done, "positions": n_pos,
                     "corner_flip": None if ex is None else bool(ex.success),
                     "corner_s": round(corner_s, 3), "load_average_1min": round(os.getloadavg()[0], 2), **f64})
        print(f"image {int(t):5d}: {cert.status:10s} {cert.seconds:7.1f} s wall, {cpu_s:7.1f} s CPU ({cert.boxes} "
              f"boxes, {done}/{n_pos} positions certified, {cert.found_by}); corner search "
              f"{'skipped' if ex is None else 'flips' if ex.success else 'no flip'} in {corner_s:.1f} s; "
              f"load {os.getloadavg()[0]:.2f}", flush=True)
    seconds = np.array([r["seconds"] for r in rows])
    corner_s = np.array([r["corner_s"] for r in rows])
    decided = float(np.mean([r["status"] != "undecided" for r in rows]))
    out = {
        "benchmark": "certify", "run": str(args.run), "model": run_config.model, "method": run_config.method,
        "n_images": len(rows), "budget_s": args.budget, "value_range": args.value_range, "threads": args.threads,
        "counts": {s: sum(r["status"] == s for r in rows) for s in ("flippable", "certified", "undecided")},
        "missed_by_corner_search": (None if args.skip_corner else
                                    sum(r["status"] == "flippable" and not r["corner_flip"] for r in rows)),
        "certify_median_s": float(np.median(seconds)), "certify_max_s": float(seconds.max()),
        "certify_median_cpu_s": float(np.median([r["cpu_seconds"] for r in rows])),
        "boxes_per_cpu_second": float(sum(r["boxes"] for r in rows) / max(sum(r["cpu_seconds"] for r in rows), 1e-9)),
        "corner_median_s": float(np.median(corner_s)),
        "ratio_median_certify_to_corner": float(np.median(seconds) / np.median(corner_s)),
        "decided_share": decided,
        **({} if certifier64 is None else {
            "float64_cpu_s_median": float(np.median([r["float64_cpu_seconds"] for r in rows])),
            "ratio_cpu_float64_to_float32": float(sum(r["float64_cpu_seconds"] for r in rows)
                                                  / max(sum(r["cpu_seconds"] for r in rows), 1e-9)),
            "same_answers": all(r["float64_status"] == r["status"] for r in rows)}),
        "goals": GOALS,
        "goals_met": {"decided_share": decided >= GOALS["decided_share"],
                      "median_s": float(np.median(seconds)) <= GOALS["median_s"],
                      "max_s": float(seconds.max()) <= GOALS["max_s"]},
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "images": rows,
    }
    print(f"certify: median {out['certify_median_s']:.1f} s, slowest {out['certify_max_s']:.1f} s per image; "
          f"corner search median {out['corner_median_s']:.1f} s; ratio {out['ratio_median_certify_to_corner']:.1f}x; "
          f"decided {decided:.0%} (goal {GOALS['decided_share']:.0%}); load average "
          f"{out['load_average_before'][0]} -> {out['load_average_after'][0]} on {os.cpu_count()} cores")
    if certifier64 is not None:
        print(f"float64 convolutions: median {out['float64_cpu_s_median']:.1f} s CPU per image; CPU float64 / "
              f"float32 {out['ratio_cpu_float64_to_float32']:.2f}x; same answers: {out['same_answers']}")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
