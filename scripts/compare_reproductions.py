"""Compare two reproduction folders: identical dataset arrays, checkpoints, metrics and findings.

One command (used for the layout change of issue 23: ``reproduce --preset tiny`` before and after)::

    python scripts/compare_reproductions.py BEFORE AFTER

Arrays (``.npy``, ``.npz``) must be equal bit for bit; checkpoints (``.pt``) must hold equal
tensors under the same keys; JSON files (metrics, findings, summaries) must be equal after
dropping what legitimately differs between two runs: wall times, timestamps, absolute paths
and versions (``timings.json``, the stages' markers, is skipped); CSV tables without their
time columns. Prints one line per difference and a last line with the counts; exit status 1
when anything differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

#: JSON keys whose values differ between two identical runs (times, places, versions)
VOLATILE = ("time", "seconds", "elapsed", "date", "created", "started", "finished", "path", "out", "data",
            "host", "version", "python", "torch", "duration", "wall", "load", "threads", "log", "fingerprint")


def _volatile(key: str) -> bool:
    key = key.lower()
    return key.endswith("_s") or any(word in key for word in VOLATILE)


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if not _volatile(str(k))}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    if isinstance(obj, str) and obj.startswith("/"):
        return "<path>"
    return obj


def _stable_columns(path: Path) -> list[list[str]]:
    """A CSV table without its volatile columns (wall and CPU times)."""
    rows = [line.split(",") for line in path.read_text().splitlines()]
    if not rows:
        return rows
    keep = [i for i, name in enumerate(rows[0]) if not _volatile(name)]
    return [[row[i] for i in keep if i < len(row)] for row in rows]


def _same_arrays(a, b) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


def compare(before: Path, after: Path) -> tuple[list[str], dict[str, int]]:
    """Differences between two folders (relative paths with what differs) and counts per file kind."""
    problems: list[str] = []
    counts = {"npy": 0, "npz": 0, "pt": 0, "json": 0, "csv": 0}
    for path in sorted(before.rglob("*")):
        rel = path.relative_to(before)
        kind = path.suffix.lstrip(".")
        if kind not in counts or "logs" in rel.parts:
            continue
        other = after / rel
        if not other.exists():
            problems.append(f"{rel}: missing in {after}")
            continue
        counts[kind] += 1
        if kind == "npy":
            if not _same_arrays(np.load(path), np.load(other)):
                problems.append(f"{rel}: arrays differ")
        elif kind == "npz":
            with np.load(path) as x, np.load(other) as y:
                if sorted(x.files) != sorted(y.files):
                    problems.append(f"{rel}: keys differ")
                problems += [f"{rel}[{k}]: arrays differ" for k in x.files if k in y.files and not _same_arrays(x[k], y[k])]
        elif kind == "pt":
            x = torch.load(path, map_location="cpu", weights_only=True)
            y = torch.load(other, map_location="cpu", weights_only=True)
            xs, ys = x.get("state_dict", x), y.get("state_dict", y)
            if sorted(xs) != sorted(ys):
                problems.append(f"{rel}: state_dict keys differ")
            problems += [f"{rel}[{k}]: tensors differ" for k in xs if k in ys and not torch.equal(xs[k], ys[k])]
        elif kind == "json":
            if rel.name == "timings.json":
                continue  # stage markers' modification times and sizes: volatile by nature
            x = json.loads(path.read_text().replace(str(before), "<root>"))
            y = json.loads(other.read_text().replace(str(after), "<root>"))
            if _strip(x) != _strip(y):
                problems.append(f"{rel}: contents differ")
        elif kind == "csv":
            if _stable_columns(path) != _stable_columns(other):
                problems.append(f"{rel}: contents differ")
    return problems, counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args()
    problems, counts = compare(args.before, args.after)
    for line in problems:
        print(line)
    print(json.dumps({"identical": not problems, "differences": len(problems), "files_compared": counts}))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
