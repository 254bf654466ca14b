"""Simulator throughput: accepted galaxies per second with 1 and 2 workers, and where the time goes.

    python benchmarks/simulate.py [--quick] [--n-galaxies N]

1. Stage shares: ``simulate_galaxy`` for a sample of slots in this process, timing the
   rendering (GalSim + structured layers, every draw's r band and the accepted galaxy's
   g and i), Poisson noise and the Gini-M20 measurement; also the acceptance rate of
   drawn galaxies (quota rejection) and, side by side on a few galaxies, statmorph's cost
   for the same Gini/M20 (its full ``SourceMorphology`` as a labelling pipeline would use it).
2. Throughput: ``simulate_dataset`` end to end (sampling, shards, assembly) on the same
   number of galaxies with 1 and with 2 worker processes, one after the other.

The machine may be shared: read the 2-vs-1 ratio and the shares more than absolute speed; the
CPU seconds per galaxy (this process and its workers) are what two idle cores would divide.
The last line is one JSON object (``galaxies_per_s_2_workers`` and the rest).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from deepadversaries.data import dataset as _data  # noqa: F401  (import torch before timing: assembly needs it)
from deepadversaries.simulation import galaxies, morphology
from deepadversaries.config import SimulateConfig
from deepadversaries.simulation.simulate import simulate_dataset, simulate_galaxy, target_classes


def stage_shares(n: int) -> dict[str, float]:
    config = SimulateConfig.from_preset("paper", seed=123)
    targets = target_classes(config)
    # warm GalSim's Sérsic tables first (each worker does this once, ~0.3 s)
    for k in range(20):
        simulate_galaxy(10_000 + k, int(targets[10_000 + k]), config)
    timings: dict[str, float] = {}
    t0, c0 = time.perf_counter(), time.process_time()
    for k in range(n):
        simulate_galaxy(k, int(targets[k]), config, timings)
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    other = total - timings["render"] - timings["morphology"] - timings["noise"]
    return {
        "accepted": n,
        "draws": int(timings["draws"]),
        "acceptance_rate": n / timings["draws"],
        "seconds_per_galaxy_1_process": total / n,
        "cpu_seconds_per_galaxy": cpu / n,
        "share_render": timings["render"] / total,
        "share_noise": timings["noise"] / total,
        "share_morphology": timings["morphology"] / total,
        "share_other": other / total,
        "morphology_ms_per_draw": 1e3 * timings["morphology"] / timings["draws"],
    }


def statmorph_ratio(n: int) -> dict[str, float]:
    """Our Gini/M20 vs statmorph's SourceMorphology on the same noiseless r-band images."""
    import statmorph

    rng = np.random.default_rng(7)
    images = [galaxies.draw_galaxy(f, rng).render("r") for f in galaxies.FAMILIES for _ in range(n)]
    segmaps = [morphology.segmentation(im) for im in images]
    t0 = time.perf_counter()
    ours = [morphology.gini_m20(im, seg) for im, seg in zip(images, segmaps)]
    t1 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = [statmorph.SourceMorphology(im, seg.astype(np.int32), 1, gain=1.0) for im, seg in zip(images, segmaps)]
    t2 = time.perf_counter()
    return {
        "ours_ms_per_galaxy": 1e3 * (t1 - t0) / len(images),
        "statmorph_ms_per_galaxy": 1e3 * (t2 - t1) / len(images),
        "statmorph_over_ours": (t2 - t1) / (t1 - t0),
        "max_abs_dgini": float(max(abs(a.gini - b.gini) for a, b in zip(ours, ref))),
        "max_abs_dm20": float(max(abs(a.m20 - b.m20) for a, b in zip(ours, ref))),
    }


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def throughput(n: int, workers: int) -> tuple[float, float]:
    """(galaxies per wall-clock second, CPU seconds per galaxy) of simulate_dataset end to end."""
    folder = Path(tempfile.mkdtemp(prefix="deepadv-bench-"))
    try:
        t0, c0 = time.perf_counter(), _cpu_seconds()
        simulate_dataset(folder / "data", SimulateConfig.from_preset("paper", n_galaxies=n, seed=workers),
                         workers=workers)
        return n / (time.perf_counter() - t0), (_cpu_seconds() - c0) / n
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small samples (about a minute)")
    parser.add_argument("--n-galaxies", type=int, default=None, help="galaxies per throughput run")
    parser.add_argument("--stage-sample", type=int, default=None, help="galaxies timed stage by stage "
                        "[default: 60 with --quick, else 300]")
    args = parser.parse_args()
    n = args.n_galaxies or (200 if args.quick else 1000)

    shares = stage_shares(args.stage_sample or (60 if args.quick else 300))
    print(f"acceptance rate of drawn galaxies: {shares['acceptance_rate']:.3f} "
          f"({shares['accepted']} accepted of {shares['draws']} draws)")
    print(f"time per accepted galaxy (1 process): {1e3 * shares['seconds_per_galaxy_1_process']:.1f} ms wall, "
          f"{1e3 * shares['cpu_seconds_per_galaxy']:.1f} ms CPU — "
          f"render {shares['share_render']:.0%}, noise {shares['share_noise']:.0%}, "
          f"morphology {shares['share_morphology']:.0%}, other {shares['share_other']:.0%}")
    ratio = statmorph_ratio(1 if args.quick else 3)
    print(f"Gini/M20: ours {ratio['ours_ms_per_galaxy']:.1f} ms, statmorph {ratio['statmorph_ms_per_galaxy']:.0f} ms "
          f"per galaxy (x{ratio['statmorph_over_ours']:.0f}); max |dG| {ratio['max_abs_dgini']:.4f}, "
          f"max |dM20| {ratio['max_abs_dm20']:.4f}")
    gps1, cpu1 = throughput(n, 1)
    gps2, cpu2 = throughput(n, 2)
    load = os.getloadavg()[0]
    idle2 = min(2, os.cpu_count() or 1) / cpu2
    print(f"simulate_dataset, {n} galaxies: {gps1:.1f} galaxies/s with 1 worker, {gps2:.1f} with 2 "
          f"(x{gps2 / gps1:.2f}); paper preset (25,005) at this rate: {25005 / gps2 / 60:.1f} min")
    print(f"CPU per galaxy end to end: {1e3 * cpu1:.0f} ms (1 worker), {1e3 * cpu2:.0f} ms (2 workers); "
          f"two idle cores would give about {idle2:.0f} galaxies/s (load average now {load:.1f} "
          f"on {os.cpu_count()} cores)")
    result = {
        "n_galaxies": n,
        "galaxies_per_s_1_worker": round(gps1, 2),
        "galaxies_per_s_2_workers": round(gps2, 2),
        "speedup_2_vs_1": round(gps2 / gps1, 3),
        "paper_minutes_2_workers": round(25005 / gps2 / 60, 1),
        "cpu_s_per_galaxy_1_worker": round(cpu1, 4),
        "cpu_s_per_galaxy_2_workers": round(cpu2, 4),
        "galaxies_per_s_2_idle_cores_from_cpu": round(idle2, 1),
        "load_average": round(load, 2),
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in shares.items()},
        **{k: round(v, 4) for k, v in ratio.items()},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
