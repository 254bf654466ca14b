"""Church-window grid: one batched ``head`` call vs a per-point loop (the published code's way).

    python benchmarks/church_window.py [--model convnet|resnet18] [--run RUN] [--repeats 5]

Classifies the same 221 x 221 grid with one batched head call and with two per-point loops
(a lean one, ``analysis.church_window_loop``, and one with the published code's steps) on the
same model and latents, checks that the classes agree, and prints the speed-ups; the last line
is JSON with ``speedup`` (vs the lean loop) and ``speedup_vs_published_loop``.
Timings are measured side by side in one process (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from deepadversaries.analysis.latent import (
    church_window_grid,
    church_window_loop,
    grid_coordinates,
)
from deepadversaries.analysis.analyze import load_attack
from deepadversaries.models.networks import build_model, load_model


def published_style_loop(head, z_y10, z_y1, z_1p) -> np.ndarray:
    """Per-point loop with the published code's steps (``cw_plotter``): device moves, softmax module, item."""
    device = "cpu"
    embedding1 = torch.as_tensor(z_y10).reshape(1, -1)
    adv_direction = (torch.as_tensor(z_1p).reshape(1, -1) - embedding1).squeeze(0)
    noisy_direction = (torch.as_tensor(z_y1).reshape(1, -1) - embedding1).squeeze(0)
    x = grid_coordinates()
    out = np.zeros((len(x), len(x)), np.int8)
    with torch.no_grad():
        for a in range(x.size):
            for b in range(x.size):
                update = x[a] * noisy_direction + x[b] * adv_direction
                image_adv = embedding1.to(device) + update.to(device)
                logits = head(image_adv.unsqueeze(0).to(device)).squeeze(0)
                softmax_output = torch.nn.Softmax(dim=1)(1.0 * logits)
                out[a][b] = torch.argmax(softmax_output).item()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="convnet", choices=["convnet", "resnet18"],
                        help="architecture with random weights (ignored with --run)")
    parser.add_argument("--run", default=None, help="use this run's model and its first attacked triplet")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of the batched grid (median)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(args.seed)

    if args.run:
        model = load_model(args.run)
        data = load_attack(args.run)
        z = (data.z_y10[0], data.z_y1[0], data.z_1p[0])
        source = f"run {args.run}, test image {int(data.test_index[0])}"
    else:
        model = build_model(args.model).eval()
        x = torch.rand(3, 3, 100, 100)
        with torch.no_grad():
            zs = model.embed(x).numpy()
        z = (zs[0], zs[1], zs[2])
        source = f"{args.model} with random weights, latents of random images"

    church_window_grid(model.head, *z)  # warm-up
    batched_times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        batched = church_window_grid(model.head, *z)
        batched_times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    loop = church_window_loop(model.head, *z)
    loop_time = time.perf_counter() - t0
    t0 = time.perf_counter()
    published = published_style_loop(model.head, *z)
    published_time = time.perf_counter() - t0
    batched_time = statistics.median(batched_times)
    equal = bool(np.array_equal(batched.classes, loop.classes))
    mismatches = int(np.sum(batched.classes != loop.classes))
    n = batched.classes.size
    print(f"source: {source}")
    print(f"grid: {batched.classes.shape[0]} x {batched.classes.shape[1]} = {n} points")
    print(f"batched (one head call): {batched_time * 1e3:.1f} ms (median of {args.repeats})")
    print(f"per-point loop (lean: head, softmax, argmax per point): {loop_time:.2f} s "
          f"({loop_time / n * 1e6:.1f} us per point) -> speed-up {loop_time / batched_time:.0f}x")
    print(f"per-point loop (published code's steps): {published_time:.2f} s "
          f"({published_time / n * 1e6:.1f} us per point) -> speed-up {published_time / batched_time:.0f}x")
    print(f"classes identical to both loops: {equal and bool(np.array_equal(published, batched.classes))} "
          f"({mismatches} differing points)")
    print(json.dumps({"speedup": round(loop_time / batched_time, 1),
                      "speedup_vs_published_loop": round(published_time / batched_time, 1),
                      "batched_s": round(batched_time, 5), "loop_s": round(loop_time, 3),
                      "published_loop_s": round(published_time, 3), "points": n, "identical": equal,
                      "mismatches": mismatches}))


if __name__ == "__main__":
    main()
