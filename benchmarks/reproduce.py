"""Wall time of ``deepadv reproduce --preset tiny`` end to end, and of a re-run that skips every stage.

    python benchmarks/reproduce.py [--workdir DIR] [--threads 1] [--budget 90] [--rerun-budget 10]

The test suite checks what the tiny reproduction writes; its speed is measured here (the
wall-clock budgets that used to sit in tests/test_reproduce.py): the whole tiny study within
``--budget`` seconds on two idle cores, and a second invocation, which finds every stage
finished, within ``--rerun-budget`` seconds. Per-stage wall times come from ``timings.json``.
The last line is one JSON object; the exit status is 1 when a budget is exceeded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from deepadversaries.workflow.layout import read_timings
from deepadversaries.workflow.reproduce import reproduce


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=None, help="folder for the reproduction [default: a temporary one, "
                        "removed afterwards]")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (tiny batches: 1 is fastest)")
    parser.add_argument("--budget", type=float, default=90.0, help="seconds allowed for the whole tiny study")
    parser.add_argument("--rerun-budget", type=float, default=10.0, help="seconds allowed for a re-run")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="deepadv-bench-reproduce-"))
    out = work / "out"
    if out.exists():
        shutil.rmtree(out)
    try:
        t0 = time.perf_counter()
        reproduce(out, preset="tiny", seed=0, device="cpu", workers=1)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        reproduce(out, preset="tiny", seed=0, device="cpu", workers=1)
        rerun = time.perf_counter() - t0
        stages = {name: rec.get("wall_s") for name, rec in read_timings(out)["stages"].items()}
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()[0]
    for name, wall in stages.items():
        print(f"  {name:28s} {wall if wall is not None else float('nan'):7.2f} s", file=sys.stderr)
    ok = first <= args.budget and rerun <= args.rerun_budget
    print(f"tiny reproduce: {first:.1f} s (budget {args.budget:g} s), re-run {rerun:.2f} s (budget "
          f"{args.rerun_budget:g} s), load average {load:.1f} on {os.cpu_count()} cores: "
          f"{'within budget' if ok else 'OVER BUDGET'}")
    result = {"tiny_reproduce_s": round(first, 2), "rerun_s": round(rerun, 3), "budget_s": args.budget,
              "rerun_budget_s": args.rerun_budget, "within_budget": ok, "load_average": round(load, 2),
              "torch_threads": args.threads, "stages_s": stages}
    print(json.dumps(result))
    if not ok:
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()
