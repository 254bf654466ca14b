"""Support for the reproduce/report tests: fake stage functions and table readers.

``FakePipeline`` installs stand-ins for the five stage functions that write the stage
files of the architecture contracts (markers last) with fabricated but well-formed
numbers, and records which stages ran. ``tiny_reproduction`` runs the real ``tiny``
preset once per test session (shared by test_reproduce.py and test_report_browser.py).
"""

from __future__ import annotations

import html.parser
import importlib
import re
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np

from deepadversaries.analysis import js_distance, summarize
from deepadversaries.io import write_csv, write_json, write_npz

MODELS_METHODS = (("convnet", "regular"), ("convnet", "mmd"))


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


def fake_metrics(rng: np.random.Generator) -> dict[str, Any]:
    out = {}
    for dom in ("Y10", "Y1"):
        conf = rng.integers(1, 30, size=(3, 3))
        acc = float(np.trace(conf) / conf.sum())
        out[dom] = {"accuracy": acc, "precision": float(rng.uniform(0.3, 0.9)), "recall": acc,
                    "f1": float(rng.uniform(0.3, 0.9)), "confusion": conf.tolist()}
    return out


def fake_analysis(rng: np.random.Generator, model: str) -> dict[str, Any]:
    n = int(rng.integers(5, 20))
    tables: dict[str, Any] = {}
    scale = {"regular": float(rng.uniform(5, 10)), "da": float(rng.uniform(5, 10))}
    for sc in ("latent", "normalised"):
        tables[sc] = {}
        for pert in ("Y10-Y1", "Y10-1P"):
            reg = rng.gamma(3.0, 1.0, n)
            da = rng.gamma(3.0, 1.3, n)
            if sc == "normalised":
                reg, da = reg / scale["regular"], da / scale["da"]
            js = js_distance(reg, da)
            tables[sc][pert] = {"regular": summarize(reg), "da": summarize(da), "js_distance": js.distance,
                                "js_base": 2, "ratio_median_da_over_regular": float(np.median(da) / np.median(reg)),
                                "ratio_mean_da_over_regular": float(np.mean(da) / np.mean(reg))}
    return {"kind": "deepadv-analysis", "model": model, "n_flipped_both": n, "n_attacked_both": n + 3,
            "attack": {tr: {"n_attacked": n + 3, "n_flipped": n, "flip_rate": n / (n + 3),
                            "median_latent_norm_Y10": scale[tr]} for tr in ("regular", "da")},
            "distances": tables, "js_base": 2, "notes": ["a fabricated analysis"]}


def fake_summary(rng: np.random.Generator) -> dict[str, Any]:
    attacked = int(rng.integers(8, 15))
    flipped = int(rng.integers(1, attacked))
    return {"kind": "deepadv-attack", "images_drawn": 20, "correctly_classified": attacked, "attacked": attacked,
            "flipped": flipped, "success_rate": flipped / attacked, "mean_iterations": float(rng.uniform(5, 10)),
            "median_iterations": float(rng.integers(0, 10)), "mean_iterations_flipped": float(rng.uniform(0, 5)),
            "median_iterations_flipped": float(rng.integers(0, 5)), "flipped_in_initial_population": 1,
            "settings": {"n_images": 20, "pop_size": 40, "max_iter": 10, "seed": 0, "mode": "targeted"},
            "departures_from_paper": ["images in the subsample 20 (paper: 150)"]}


class FakePipeline:
    """Fake stage modules (installed into sys.modules by ``install``) recording what ran."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail: dict[str, BaseException] = {}
        self.rng = np.random.default_rng(1)

    def _maybe_fail(self, name: str) -> None:
        if name in self.fail:
            raise self.fail[name]

    # the stage functions, with the signatures of docs/architecture.md
    def simulate_dataset(self, out, preset="quick", *, n_galaxies=None, seed=0, workers=1, split_mode="galaxy",
                         overwrite=False):
        self.calls.append("simulate")
        self._maybe_fail("simulate")
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "dataset.json", {"version": 1, "seed": seed, "counts": {"train": 70, "valid": 10,
                                                                                 "test": 20},
                                          "config": {"preset": preset, "split_mode": split_mode}})
        return out

    def train_model(self, data, out, *, model="convnet", method="regular", preset="quick", seed=0, device="auto",
                    overrides=None, resume=False):
        name = f"train:{model}_{method}"
        self.calls.append(name)
        self._maybe_fail(name)
        out = Path(out)
        write_json(out / "config.json", {"kind": "deepadv-run", "model": model, "method": method, "preset": preset,
                                         "data": str(Path(data).resolve()), "seed": seed, "lr": 1e-3, "epochs": 2})
        write_json(out / "training.json", {"epochs": 2, "best_epoch": 1})
        return out

    def evaluate_run(self, run, data=None, *, device="auto"):
        name = f"evaluate:{Path(run).name}"
        self.calls.append(name)
        self._maybe_fail(name)
        metrics = fake_metrics(self.rng)
        write_json(Path(run) / "metrics.json", metrics)
        return metrics

    def attack_run(self, run, data=None, *, preset="quick", n_images=None, pop_size=None, max_iter=None, pixels=1,
                   mode="targeted", seed=0, batch_images=None, device="auto"):
        name = f"attack:{Path(run).name}"
        self.calls.append(name)
        self._maybe_fail(name)
        a = Path(run) / "attack"
        write_csv(a / "results.csv", [{"test_index": 0, "success": True}])
        write_npz(a / "latents.npz", test_index=np.zeros(1, np.int64))
        summary = fake_summary(self.rng)
        write_json(a / "summary.json", summary)
        return summary

    def analyze_runs(self, regular, da, out, *, n_isomap=250, examples=4, seed=0, preset="quick",
                     overwrite=False, device="auto"):
        out = Path(out)
        name = f"analyze:{out.name}"
        self.calls.append(name)
        self._maybe_fail(name)
        for i, fig in enumerate(("fig3_church_isomap", "fig4_isomap3d", "fig5_church_windows", "fig6_distances")):
            _png(out / f"{fig}.png", (40 * i, 100, 200))
        for tr in ("regular", "da"):
            _gif(out / f"isomap3d_{tr}.gif")
        write_text_files = {"distances.csv": "perturbation\n", "distances.md": "# d\n"}
        for k, v in write_text_files.items():
            (out / k).write_text(v)
        result = fake_analysis(self.rng, Path(regular).name.split("_")[0])
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
        for modname, fn in (("simulate", "simulate_dataset"), ("training", "train_model"),
                            ("evaluation", "evaluate_run"), ("campaign", "attack_run"),
                            ("analysis", "analyze_runs")):
            try:
                mod = importlib.import_module(f"deepadversaries.{modname}")
            except ImportError:  # not written yet: a stand-in module
                mod = types.ModuleType(f"deepadversaries.{modname}")
                monkeypatch.setitem(sys.modules, f"deepadversaries.{modname}", mod)
            monkeypatch.setattr(mod, fn, getattr(self, fn), raising=False)
        import deepadversaries.report as report

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
        from deepadversaries.reproduce import reproduce

        out = tmp_path_factory.mktemp("tiny_reproduce") / "out"
        t0 = time.perf_counter()
        reproduce(out, preset="tiny", seed=0, device="cpu")
        _TINY.update(out=out, seconds=time.perf_counter() - t0)
    return _TINY
