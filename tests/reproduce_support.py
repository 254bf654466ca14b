"""Support for the reproduce/report tests: fake stage functions and table readers.

``FakePipeline`` installs stand-ins for the five stage functions that the stage graph calls
(``deepadversaries.workflow.grid``'s names) and for the report's dataset figures. They take the
stages' real arguments (typed configs) and write the files of the architecture contracts
(markers last) with fabricated but self-consistent numbers: ``metrics.json`` from the
fabricated per-image ``predictions.npz``, ``summary.json`` from the ``results.csv`` rows,
``analysis.json`` and ``distances_per_image.csv`` from per-image distances of the images
flipped under both fabricated campaigns. They record which stages ran.
``tiny_reproduction`` runs the real ``tiny`` preset once per test session (shared by
test_reproduce.py, test_report_browser.py and the reliability tests).
"""

from __future__ import annotations

import csv
import html.parser
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from deepadversaries import CLASSES
from deepadversaries.analysis.latent import js_distance, summarize
from deepadversaries.io import write_csv, write_json, write_npz
from deepadversaries.models.runs import RunConfig

MODELS_METHODS = (("convnet", "regular"), ("convnet", "mmd"))
N_TEST = 40


# --------------------------------------------------------------------------------------
# fake stage files
# --------------------------------------------------------------------------------------
def _png(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (60, 40)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def _gif(path: Path) -> None:
    from PIL import Image

    frames = [Image.new("P", (30, 30), i * 40) for i in range(3)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)


def _read_results(run: Path) -> dict[int, dict[str, str]]:
    with open(run / "attack" / "results.csv", newline="") as fh:
        return {int(r["test_index"]): r for r in csv.DictReader(fh)}


class FakePipeline:
    """Fake stage functions (installed into ``deepadversaries.workflow.grid`` by ``install``) recording what ran."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail: dict[str, BaseException] = {}
        self.rng = np.random.default_rng(1)
        self.labels = np.arange(N_TEST) % 3

    def _maybe_fail(self, name: str) -> None:
        if name in self.fail:
            raise self.fail[name]

    # the stage functions, with the signatures the stage actions call
    def simulate_dataset(self, out, config=None, *, workers=1, overwrite=False, **options):
        self.calls.append("simulate")
        self._maybe_fail("simulate")
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "dataset.json", {
            "kind": "deepadv-dataset", "version": 1, "seed": config.seed,
            "counts": {"train": {"total": 70}, "valid": {"total": 10}, "test": {"total": N_TEST},
                       "galaxies": {"spiral": 40, "elliptical": 25, "merger": 8}},
            "config": {"preset": config.preset, "split_mode": config.split_mode, "seed": config.seed}})
        return out

    def train_model(self, data, out, config=None, *, device="auto", resume=False, overwrite=False, progress=True,
                    **options):
        name = f"train:{config.model}_{config.method}"
        self.calls.append(name)
        self._maybe_fail(name)
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", RunConfig(train=config, data=str(Path(data).resolve())).to_json())
        write_json(out / "training.json", {"epochs": 2, "best_epoch": 1})
        return out

    def evaluate_run(self, run, data=None, *, device="auto", **options):
        name = f"evaluate:{Path(run).name}"
        self.calls.append(name)
        self._maybe_fail(name)
        metrics, probabilities = {}, {}
        for domain, skill in (("Y10", 0.8), ("Y1", 0.5)):
            right = self.rng.random(N_TEST) < skill
            predicted = np.where(right, self.labels, (self.labels + 1 + self.rng.integers(0, 2, N_TEST)) % 3)
            p = np.full((N_TEST, 3), 0.1)
            p[np.arange(N_TEST), predicted] = 0.8
            probabilities[f"probabilities_{domain}"] = p
            confusion = np.zeros((3, 3), int)
            for t, q in zip(self.labels, predicted):
                confusion[t, q] += 1
            metrics[domain] = {"accuracy": float(np.mean(predicted == self.labels)),
                               "precision": float(self.rng.uniform(0.3, 0.9)), "recall": float(np.mean(right)),
                               "f1": float(self.rng.uniform(0.3, 0.9)), "confusion": confusion.tolist(),
                               "n": N_TEST}
        write_npz(Path(run) / "predictions.npz", labels=self.labels.astype(np.int64), **probabilities)
        write_json(Path(run) / "metrics.json", metrics)
        return metrics

    def attack_run(self, run, config=None, *, data=None, device="auto", **kwargs):
        name = f"attack:{Path(run).name}"
        self.calls.append(name)
        self._maybe_fail(name)
        folder = Path(run) / "attack"
        drawn = np.arange(20)
        attacked = drawn[self.rng.random(20) < 0.7]
        success = self.rng.random(len(attacked)) < 0.6
        iterations = np.where(success, self.rng.integers(0, config.max_iter, len(attacked)), config.max_iter)
        rows = [{"test_index": int(t), "galaxy_id": int(t), "true": CLASSES[self.labels[t]],
                 "predicted": CLASSES[self.labels[t]], "target": CLASSES[(self.labels[t] + 1) % 3],
                 "success": bool(ok), "iterations": int(it), "evaluations": int(config.pop_size * (it + 1))}
                for t, ok, it in zip(attacked, success, iterations)]
        write_csv(folder / "results.csv", rows)
        write_npz(folder / "latents.npz", test_index=attacked.astype(np.int64),
                  z_y10=self.rng.normal(size=(len(attacked), 8)).astype(np.float32), success=success)
        flipped = iterations[success]
        summary = {"kind": "deepadv-attack", "model": "convnet", "method": Path(run).name.split("_")[-1],
                   "images_drawn": len(drawn), "correctly_classified": len(attacked), "attacked": len(attacked),
                   "flipped": int(success.sum()), "success_rate": float(success.mean()),
                   "mean_iterations": float(iterations.mean()), "median_iterations": float(np.median(iterations)),
                   "mean_iterations_flipped": float(flipped.mean()) if len(flipped) else None,
                   "median_iterations_flipped": float(np.median(flipped)) if len(flipped) else None,
                   "flipped_in_initial_population": int((flipped == 0).sum()), "settings": config.to_json(),
                   "departures_from_paper": config.departures_from_paper()}
        write_json(folder / "summary.json", summary)
        return summary

    def robustness_run(self, run, data=None, *, baseline=None, seed=0, device="auto", **options):
        name = f"robustness:{Path(run).name}"
        self.calls.append(name)
        self._maybe_fail(name)
        from deepadversaries.corruptions.registry import CORRUPTIONS

        corruption = next(iter(CORRUPTIONS))
        accuracy = [float(a) for a in self.rng.uniform(0.3, 0.8, 2)]
        summary = {"kind": "deepadv-robustness", "clean": {"accuracy": 0.8},
                   "results": [{"corruption": corruption, "severity": s, "accuracy": a}
                               for s, a in zip((1, 3), accuracy)],
                   "mean_error": 1 - sum(accuracy) / 2, "mce": None if baseline is None else 1.1}
        write_json(Path(run) / "robustness" / "summary.json", summary)
        return summary

    def analyze_runs(self, regular, adapted, out, *, seed=0, preset="quick", device="auto", **options):
        out = Path(out)
        name = f"analyze:{out.name}"
        self.calls.append(name)
        self._maybe_fail(name)
        for i, fig in enumerate(("fig3_church_isomap", "fig4_isomap3d", "fig5_church_windows", "fig6_distances")):
            _png(out / f"{fig}.png", (40 * i, 100, 200))
        methods = ("regular", Path(adapted).name.split("_")[-1])
        for method in methods:
            _gif(out / f"isomap3d_{method}.gif")
        results = {m: _read_results(Path(run)) for m, run in zip(methods, (regular, adapted))}
        both = sorted(t for t in set(results[methods[0]]) & set(results[methods[1]])
                      if results[methods[0]][t]["success"] == "True" and results[methods[1]][t]["success"] == "True")
        n = len(both)
        scale = {m: float(self.rng.uniform(5, 10)) for m in methods}
        per_image = {m: {p: self.rng.gamma(3.0, 1.0 + 0.3 * k, n) for p in ("Y10-Y1", "Y10-1P")}
                     for k, m in enumerate(methods)}
        logit = {m: {p: self.rng.gamma(2.0, 1.0 + 0.2 * k, n) for p in ("Y10-Y1", "Y10-1P")}
                 for k, m in enumerate(methods)}
        tables: dict[str, Any] = {}
        for sc in ("latent", "logit", "spread"):
            tables[sc] = {}
            for pert in ("Y10-Y1", "Y10-1P"):
                a, b = ((logit if sc == "logit" else per_image)[m][pert] / (scale[m] if sc == "spread" else 1.0)
                        for m in methods)
                js = js_distance(a, b)
                tables[sc][pert] = {methods[0]: summarize(a), methods[1]: summarize(b), "js_distance": js.distance,
                                    "js_base": 2, "ratio_median": float(np.median(b) / np.median(a)) if n else None,
                                    "ratio_mean": float(np.mean(b) / np.mean(a)) if n else None}
        rows = []
        for k, t in enumerate(both):
            row = {"test_index": t}
            for m in methods:
                for pert in ("Y10-Y1", "Y10-1P"):
                    key = pert.lower().replace("-", "_")
                    row[f"d_{key}_{m}"] = float(per_image[m][pert][k])
                    row[f"d_{key}_{m}_logit"] = float(logit[m][pert][k])
            rows.append(row)
        write_csv(out / "distances_per_image.csv", rows,
                  ["test_index"] + [f"d_{p}_{m}{s}" for s in ("", "_logit") for m in methods
                                    for p in ("y10_y1", "y10_1p")])
        attacked = sorted(set(results[methods[0]]) & set(results[methods[1]]))
        write_csv(out / "attacked_per_image.csv",
                  [{"test_index": t, **{f"flipped_{m}": results[m][t]["success"] == "True" for m in methods},
                    **{f"boundary_{m}": float(self.rng.gamma(2.0, 1.0)) for m in methods}} for t in attacked],
                  ["test_index"] + [f"flipped_{m}" for m in methods] + [f"boundary_{m}" for m in methods])
        (out / "distances.csv").write_text("perturbation\n")
        (out / "distances.md").write_text("# d\n")
        attacked_both = len(set(results[methods[0]]) & set(results[methods[1]]))
        result = {"kind": "deepadv-analysis", "model": Path(regular).name.split("_")[0], "methods": list(methods),
                  "n_flipped_both": n, "n_attacked_both": attacked_both,
                  "attack": {m: {"n_attacked": len(results[m]),
                                 "n_flipped": sum(r["success"] == "True" for r in results[m].values()),
                                 "latent_spread_Y10": scale[m]} for m in methods},
                  "distances": tables, "js_base": 2, "notes": ["a fabricated analysis"]}
        write_json(out / "analysis.json", result)
        return result

    def dataset_figures(self, inp):
        """Stands in for Figures 1-2 (called once per report, so it records the report stage)."""
        self.calls.append("report")
        root = inp.root
        _png(root / "figures" / "fig1_gini_m20.png", (255, 166, 0))
        _png(root / "figures" / "fig2_examples.png", (0, 63, 92))
        return {"fig1": root / "figures" / "fig1_gini_m20.png", "fig2": root / "figures" / "fig2_examples.png"}

    def install(self, monkeypatch) -> "FakePipeline":
        import deepadversaries.workflow.grid as grid
        import deepadversaries.reporting.report as report

        for fn in ("simulate_dataset", "train_model", "evaluate_run", "attack_run", "robustness_run", "analyze_runs"):
            monkeypatch.setattr(grid, fn, getattr(self, fn))
        monkeypatch.setattr(report, "_dataset_figures", self.dataset_figures)
        return self


# --------------------------------------------------------------------------------------
# reading the report back
# --------------------------------------------------------------------------------------
def markdown_tables(text: str) -> dict[str, list[list[str]]]:
    """Markdown tables keyed by the caption line above them ("*Table 4. ...*" -> "Table 4")."""
    tables: dict[str, list[list[str]]] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^\*(Table \d+)\.", lines[i])
        if m:
            j = i + 1
            while j < len(lines) and not lines[j].startswith("|"):
                j += 1
            rows = []
            while j < len(lines) and lines[j].startswith("|"):
                cells = [c.strip() for c in re.split(r"(?<!\\)\|", lines[j].strip())[1:-1]]
                rows.append(cells)
                j += 1
            tables[m.group(1)] = [r for r in rows[2:]]  # drop header and separator
            i = j
        else:
            i += 1
    return tables


class _TableParser(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._has_td = False
        self.images: list[dict[str, str]] = []
        self.body_attrs: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id") or f"table{len(self.tables)}"
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self._row = []
            self._has_td = False
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
            self._has_td = self._has_td or tag == "td"
        elif tag == "img":
            self.images.append({k: v or "" for k, v in attrs})
        elif tag == "body":
            self.body_attrs = {k: v or "" for k, v in attrs}

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table:
            if self._has_td:  # header rows (all <th>) are dropped
                self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parse_html(text: str) -> _TableParser:
    """Tables (by id, header row dropped), images and body attributes of an HTML document."""
    p = _TableParser()
    p.feed(text)
    return p


def close_to_display(cell: str, value: float) -> bool:
    """Whether a displayed number is ``value`` rounded to the digits it shows ("n/a" for NaN/None)."""
    if value is None or value != value:
        return cell.strip() == "n/a"
    text = cell.replace("±", "").replace("−", "-").strip()
    shown = float(text)
    if "e" in text.lower():
        mant = text.lower().split("e")[0]
        decimals = len(mant.split(".")[1]) if "." in mant else 0
        exp = int(text.lower().split("e")[1])
        tol = 0.5 * 10 ** (exp - decimals)
    else:
        decimals = len(text.split(".")[1]) if "." in text else 0
        tol = 0.5 * 10 ** (-decimals)
    return abs(shown - value) <= tol * (1 + 1e-9)


# --------------------------------------------------------------------------------------
# the real tiny reproduction, once per session
# --------------------------------------------------------------------------------------
_TINY: dict[str, Any] = {}


def tiny_reproduction(tmp_path_factory) -> dict[str, Any]:
    """Run ``reproduce(preset='tiny')`` once per session: {"out": Path, "seconds": float}."""
    if "out" not in _TINY:
        from deepadversaries.workflow.reproduce import reproduce

        out = tmp_path_factory.mktemp("tiny_reproduce") / "out"
        t0 = time.perf_counter()
        import torch

        n = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny batches: one thread, and immune to a loaded machine
        try:
            reproduce(out, preset="tiny", seed=0, device="cpu")
        finally:
            torch.set_num_threads(n)
        _TINY.update(out=out, seconds=time.perf_counter() - t0)
    return _TINY
