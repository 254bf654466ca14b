"""The reproduction report: ``report.md``, a self-contained ``report.html`` and ``findings.json``.

Everything in the report is read from the stages' own files in a reproduction folder
(``dataset.json``, each run's ``config.json``/``training.json``/``metrics.json``/
``attack/summary.json``, each model's ``analysis.json``, ``timings.json``) and printed
as it is there: the report derives differences and ratios from those numbers but never
recomputes a metric. ``report.html`` embeds every figure (PNG and GIF) as a base64 data
URI and needs nothing else to open; a small inline script marks each image that decoded
(``data-rendered="yes"``), which the browser test reads.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .errors import file_error
from .io import read_json, write_json, write_text

# --------------------------------------------------------------------------------------
# the paper's numbers (Ćiprijanović et al. 2022, Mach. Learn.: Sci. Technol. 3 035007)
# --------------------------------------------------------------------------------------
#: Test-set metrics. "resnet18": Table 2; "convnet": Table 4 (Y10 and Y1 columns,
#: "Reg" = regular training, "DA" = MMD domain adaptation).
PAPER_METRICS: dict[str, dict[str, dict[str, dict[str, float]]]] = {
    "resnet18": {  # Table 2
        "regular": {"Y10": {"accuracy": 0.72, "precision": 0.76, "recall": 0.72, "f1": 0.72},
                    "Y1": {"accuracy": 0.43, "precision": 0.61, "recall": 0.43, "f1": 0.36}},
        "mmd": {"Y10": {"accuracy": 0.82, "precision": 0.82, "recall": 0.82, "f1": 0.82},
                "Y1": {"accuracy": 0.66, "precision": 0.67, "recall": 0.66, "f1": 0.67}},
    },
    "convnet": {  # Table 4
        "regular": {"Y10": {"accuracy": 0.70, "precision": 0.72, "recall": 0.70, "f1": 0.70},
                    "Y1": {"accuracy": 0.48, "precision": 0.67, "recall": 0.48, "f1": 0.42}},
        "mmd": {"Y10": {"accuracy": 0.69, "precision": 0.70, "recall": 0.69, "f1": 0.69},
                "Y1": {"accuracy": 0.57, "precision": 0.62, "recall": 0.57, "f1": 0.58}},
    },
}
#: Latent distances d_E (median, mean, standard error) on the images flipped under both runs.
#: "resnet18": Table 3 (136 images; JS distance 0.64 for Y10-1P, section 5.3);
#: "convnet": Table 5 (134 images). Keys "regular"/"da" as analysis.json.
PAPER_DISTANCES: dict[str, dict[str, Any]] = {
    "resnet18": {"n": 136,  # Table 3
                 "Y10-Y1": {"regular": (18.1, 20.2, 1.0), "da": (26.4, 29.7, 1.5), "js": None},
                 "Y10-1P": {"regular": (16.0, 16.8, 0.4), "da": (35.8, 38.1, 1.3), "js": 0.64}},
    "convnet": {"n": 134,  # Table 5
                "Y10-Y1": {"regular": (6.3, 6.7, 0.2), "da": (6.9, 8.3, 0.3), "js": None},
                "Y10-1P": {"regular": (2.8, 3.1, 0.1), "da": (3.6, 4.1, 0.2), "js": None}},
}
#: The paper's attack and data sizes (sections 2.1, 2.3, 4.1, 5.2).
PAPER_SIZES = {"n_images": 150, "pop_size": 400, "max_iter": 80, "images": "≈35,000 (70:10:20)",
               "training": "Adam lr 1e-5, betas (0.7, 0.8), batch 128, up to 100 epochs, early stopping"}

#: Thresholds of the findings (issue 6): (a) regular Y1 accuracy at least 10 points below its
#: Y10 accuracy; (b) MMD raises Y1 accuracy by at least 5 points; (c) MMD Y10 accuracy no more
#: than 3 points below regular; (d) median d_E(Y10-1P) larger with MMD; (e) with MMD a lower
#: flip rate or more iterations per successful attack.
THRESHOLDS = {"a_min_drop": 0.10, "b_min_gain": 0.05, "c_max_cost": 0.03}
_EPS = 1e-9  # accuracies are fractions of n: compare thresholds without float noise

MODEL_LABEL = {"convnet": "ConvNet", "resnet18": "ResNet18"}
METHOD_LABEL = {"regular": "Reg", "mmd": "DA (MMD)"}
METRIC_LABEL = {"accuracy": "Accuracy", "precision": "Precision", "recall": "Recall", "f1": "F1 score"}
PERT_LABEL = {"Y10-Y1": "Y10–Y1", "Y10-1P": "Y10–1P"}
TABLE_NUMBERS = {"resnet18": (2, 3), "convnet": (4, 5)}  # (metrics table, distances table)

FINDING_CLAIMS = {
    "a": "The regular model loses much of its accuracy on Y1.",
    "b": "MMD domain adaptation recovers Y1 accuracy.",
    "c": "MMD costs little or nothing on Y10.",
    "d": "With MMD the flipped one-pixel (1P) images lie further from their Y10 originals (median d_E up).",
    "e": "With MMD the one-pixel attack succeeds less often or needs more iterations.",
}
FINDING_TESTS = {
    "a": "regular Y10 accuracy − regular Y1 accuracy ≥ 0.10 (10 points)",
    "b": "MMD Y1 accuracy − regular Y1 accuracy ≥ 0.05 (5 points)",
    "c": "regular Y10 accuracy − MMD Y10 accuracy ≤ 0.03 (3 points)",
    "d": "median d_E(Y10–1P) with MMD > median with regular training, on the images flipped under both",
    "e": "MMD flip rate < regular flip rate, or MMD mean iterations of successful attacks > regular "
         "(not testable when neither model was flipped)",
}


# --------------------------------------------------------------------------------------
# number formatting (the test reads numbers back from the tables)
# --------------------------------------------------------------------------------------
def fmt_fixed(x: Any, decimals: int = 3) -> str:
    """A fixed-point number; "n/a" for None or NaN."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{float(x):.{decimals}f}"


def fmt_sig(x: Any, digits: int = 3) -> str:
    """``digits`` significant digits without exponent for ordinary magnitudes; "n/a" for NaN."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    x = float(x)
    if x == 0:
        return "0"
    mag = math.floor(math.log10(abs(x)))
    if mag < -4 or mag > 6:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{max(0, digits - 1 - mag)}f}"


def fmt_seconds(s: Any) -> str:
    if s is None:
        return "n/a"
    s = float(s)
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    return f"{m} min {sec:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


def _pts(x: float) -> str:
    return f"{round(100 * x, 1) + 0.0:+.1f} points"


def fmt_pm(x: Any) -> str:
    """A standard error as "±value" ("n/a" when undefined)."""
    text = fmt_sig(x)
    return text if text == "n/a" else "±" + text


# --------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------
@dataclass
class RunFiles:
    """The finished files of one run folder."""

    path: Path
    config: dict[str, Any]
    training: dict[str, Any]
    metrics: dict[str, Any]
    summary: dict[str, Any]


@dataclass
class ReportInputs:
    """Everything the report reads from a reproduction folder."""

    root: Path
    manifest: dict[str, Any]
    timings: dict[str, Any]
    dataset: dict[str, Any]
    runs: dict[tuple[str, str], RunFiles]
    analyses: dict[str, dict[str, Any]]
    models: tuple[str, ...]

    def run(self, model: str, method: str) -> RunFiles:
        return self.runs[(model, method)]


def _need(path: Path) -> Any:
    if not path.is_file():
        raise file_error(path, "file not found; finish the reproduction first ('deepadv reproduce' resumes it)")
    return read_json(path)


def load_inputs(out: str | Path) -> ReportInputs:
    """Read every stage file of a reproduction folder (clear errors for missing ones)."""
    from .reproduce import METHODS, Layout, read_manifest, read_timings

    manifest = read_manifest(out)
    layout = Layout.of(out)
    models = tuple(manifest["models"])
    runs = {}
    for model in models:
        for method in METHODS:
            rd = layout.run(model, method)
            runs[(model, method)] = RunFiles(rd, _need(rd / "config.json"), _need(rd / "training.json"),
                                             _need(rd / "metrics.json"), _need(rd / "attack" / "summary.json"))
    analyses = {m: _need(layout.analysis(m) / "analysis.json") for m in models}
    if layout.dataset is None:
        dataset = _need(layout.data / "dataset.json")
    else:  # an external folder: its own metadata when it has some, else our check of it
        meta = layout.data / "dataset.json"
        dataset = read_json(meta) if meta.is_file() else {"check": _need(layout.data_check)}
        dataset["external"] = str(layout.data)
    return ReportInputs(layout.root, manifest, read_timings(layout.root), dataset, runs, analyses, models)


def n_test_images(metrics: dict[str, Any], domain: str) -> int:
    """How many test images a metrics block rests on (the sum of its confusion matrix)."""
    conf = metrics[domain].get("confusion")
    return int(sum(sum(row) for row in conf)) if conf else 0


# --------------------------------------------------------------------------------------
# findings
# --------------------------------------------------------------------------------------
def _held_word(held: bool | None) -> str:
    return "not testable" if held is None else ("held" if held else "not held")


def compute_findings(inp: ReportInputs) -> list[dict[str, Any]]:
    """Findings (a)-(e) for every model of the grid, with the numbers, thresholds and flags."""
    findings = []
    for model in inp.models:
        reg, mmd = inp.run(model, "regular"), inp.run(model, "mmd")
        mr, mm = reg.metrics, mmd.metrics
        seeds = {"training": sorted({reg.config["seed"], mmd.config["seed"]}),
                 "attack": sorted({_attack_seed(reg, inp), _attack_seed(mmd, inp)})}
        n = {"Y10": n_test_images(mr, "Y10"), "Y1": n_test_images(mr, "Y1")}
        paper = PAPER_METRICS[model]
        src_r = f"runs/{reg.path.name}/metrics.json"
        src_m = f"runs/{mmd.path.name}/metrics.json"
        label = MODEL_LABEL[model]

        r10, r1 = mr["Y10"]["accuracy"], mr["Y1"]["accuracy"]
        m10, m1 = mm["Y10"]["accuracy"], mm["Y1"]["accuracy"]
        drop, gain, cost = r10 - r1, m1 - r1, r10 - m10
        common = {"model": model, "n_images": n, "seeds": seeds}
        findings.append({
            "id": "a", **common, "claim": FINDING_CLAIMS["a"], "test": FINDING_TESTS["a"],
            "threshold": THRESHOLDS["a_min_drop"], "held": bool(drop >= THRESHOLDS["a_min_drop"] - _EPS),
            "numbers": {"regular_Y10_accuracy": r10, "regular_Y1_accuracy": r1, "drop": drop},
            "paper": {"regular_Y10_accuracy": paper["regular"]["Y10"]["accuracy"],
                      "regular_Y1_accuracy": paper["regular"]["Y1"]["accuracy"]},
            "sources": [src_r],
            "statement": (f"{label} regular: Y10 accuracy {fmt_fixed(r10)}, Y1 accuracy {fmt_fixed(r1)}, "
                          f"a drop of {100 * drop:.1f} points (threshold ≥ 10) on {n['Y10']} Y10 and {n['Y1']} "
                          f"Y1 test images, training seed {_seeds(seeds['training'])}. Paper: "
                          f"{paper['regular']['Y10']['accuracy']:.2f} → {paper['regular']['Y1']['accuracy']:.2f}."),
        })
        findings.append({
            "id": "b", **common, "claim": FINDING_CLAIMS["b"], "test": FINDING_TESTS["b"],
            "threshold": THRESHOLDS["b_min_gain"], "held": bool(gain >= THRESHOLDS["b_min_gain"] - _EPS),
            "numbers": {"regular_Y1_accuracy": r1, "mmd_Y1_accuracy": m1, "gain": gain},
            "paper": {"regular_Y1_accuracy": paper["regular"]["Y1"]["accuracy"],
                      "mmd_Y1_accuracy": paper["mmd"]["Y1"]["accuracy"]},
            "sources": [src_r, src_m],
            "statement": (f"{label} Y1 accuracy: regular {fmt_fixed(r1)}, MMD {fmt_fixed(m1)} ({_pts(gain)}, "
                          f"threshold ≥ +5) on {n['Y1']} Y1 test images, one training seed per run "
                          f"({_seeds(seeds['training'])}). Paper: {paper['regular']['Y1']['accuracy']:.2f} → "
                          f"{paper['mmd']['Y1']['accuracy']:.2f}."),
        })
        findings.append({
            "id": "c", **common, "claim": FINDING_CLAIMS["c"], "test": FINDING_TESTS["c"],
            "threshold": THRESHOLDS["c_max_cost"], "held": bool(cost <= THRESHOLDS["c_max_cost"] + _EPS),
            "numbers": {"regular_Y10_accuracy": r10, "mmd_Y10_accuracy": m10, "cost": cost},
            "paper": {"regular_Y10_accuracy": paper["regular"]["Y10"]["accuracy"],
                      "mmd_Y10_accuracy": paper["mmd"]["Y10"]["accuracy"]},
            "sources": [src_r, src_m],
            "statement": (f"{label} Y10 accuracy: regular {fmt_fixed(r10)}, MMD {fmt_fixed(m10)} "
                          f"({_pts(-cost)}, threshold: no more than 3 points lower) on {n['Y10']} Y10 test images, "
                          f"training seed {_seeds(seeds['training'])}. Paper: "
                          f"{paper['regular']['Y10']['accuracy']:.2f} → {paper['mmd']['Y10']['accuracy']:.2f}."),
        })

        an = inp.analyses[model]
        d1p = an["distances"]["latent"]["Y10-1P"]
        n_both = int(an["n_flipped_both"])
        med_r, med_d = d1p["regular"]["median"], d1p["da"]["median"]
        ratio = d1p["ratio_median_da_over_regular"]
        held_d = None if n_both == 0 or not _finite(med_r, med_d) else bool(med_d > med_r)
        norm = an["distances"]["normalised"]["Y10-1P"]
        pd = PAPER_DISTANCES[model]
        findings.append({
            "id": "d", "model": model, "n_images": {"flipped_under_both": n_both,
                                                    "attacked_under_both": int(an["n_attacked_both"])},
            "seeds": seeds, "claim": FINDING_CLAIMS["d"], "test": FINDING_TESTS["d"], "threshold": 1.0,
            "held": held_d,
            "numbers": {"regular_median_dE_Y10_1P": med_r, "mmd_median_dE_Y10_1P": med_d,
                        "ratio_median_mmd_over_regular": ratio,
                        "regular_median_dE_Y10_1P_normalised": norm["regular"]["median"],
                        "mmd_median_dE_Y10_1P_normalised": norm["da"]["median"],
                        "js_distance_Y10_1P": d1p["js_distance"]},
            "paper": {"regular_median_dE_Y10_1P": pd["Y10-1P"]["regular"][0],
                      "mmd_median_dE_Y10_1P": pd["Y10-1P"]["da"][0], "n": pd["n"]},
            "sources": [f"analysis/{model}/analysis.json"],
            "statement": (f"{label} median d_E(Y10–1P): regular {fmt_sig(med_r)}, MMD {fmt_sig(med_d)} "
                          f"(ratio {fmt_sig(ratio)}; divided by each model's median ‖z(Y10)‖: "
                          f"{fmt_sig(norm['regular']['median'])} vs {fmt_sig(norm['da']['median'])}) on the "
                          f"{n_both} images flipped under both runs, attack seed {_seeds(seeds['attack'])}. "
                          f"Paper: {pd['Y10-1P']['regular'][0]} → {pd['Y10-1P']['da'][0]} on {pd['n']} images."
                          + _scale_caveat(med_r, med_d, norm["regular"]["median"], norm["da"]["median"])
                          + (" Too few images for a firm conclusion." if 0 < n_both < 10 else "")
                          + (" No image was flipped under both runs." if n_both == 0 else "")),
        })

        sr, sm = reg.summary, mmd.summary
        rate_r, rate_m = sr.get("success_rate"), sm.get("success_rate")
        it_r, it_m = sr.get("mean_iterations_flipped"), sm.get("mean_iterations_flipped")
        # testable when both models were attacked and at least one of them was ever flipped
        testable = bool(sr.get("attacked")) and bool(sm.get("attacked")) and bool(sr.get("flipped") or sm.get("flipped"))
        lower_rate = _finite(rate_r, rate_m) and rate_m < rate_r
        more_iter = _finite(it_r, it_m) and it_m > it_r
        cap = _get(sr, "settings.max_iter")
        findings.append({
            "id": "e", "model": model,
            "n_images": {"attacked_regular": sr.get("attacked"), "attacked_mmd": sm.get("attacked"),
                         "flipped_regular": sr.get("flipped"), "flipped_mmd": sm.get("flipped")},
            "seeds": seeds, "claim": FINDING_CLAIMS["e"], "test": FINDING_TESTS["e"], "threshold": None,
            "held": None if not testable else bool(lower_rate or more_iter),
            "numbers": {"regular_success_rate": rate_r, "mmd_success_rate": rate_m,
                        "regular_mean_iterations_flipped": it_r, "mmd_mean_iterations_flipped": it_m,
                        "regular_mean_iterations": sr.get("mean_iterations"),
                        "mmd_mean_iterations": sm.get("mean_iterations"),
                        "max_iter": cap, "mmd_flip_rate_lower": bool(lower_rate),
                        "mmd_more_iterations": bool(more_iter)},
            "paper": {"statement": "more differential-evolution iterations needed with DA; ResNet18 DA flipped "
                                   "136 of 150 images within 80 iterations (section 5.2)"},
            "sources": [f"runs/{reg.path.name}/attack/summary.json", f"runs/{mmd.path.name}/attack/summary.json"],
            "statement": (f"{label} one-pixel attack: regular flipped {sr.get('flipped')} of {sr.get('attacked')} "
                          f"attacked images (rate {fmt_fixed(rate_r)}, mean iterations of the flips "
                          f"{fmt_sig(it_r)}), MMD {sm.get('flipped')} of {sm.get('attacked')} (rate "
                          f"{fmt_fixed(rate_m)}, mean iterations {fmt_sig(it_m)}); at most {cap} iterations, "
                          f"attack seed {_seeds(seeds['attack'])}, one trained model per method."
                          + (_attack_basis(lower_rate, more_iter, sr, sm) if testable else "")),
        })
    return findings


def _scale_caveat(med_r: Any, med_d: Any, norm_r: Any, norm_d: Any) -> str:
    """A sentence when the raw and the scale-free medians point in opposite directions."""
    if not _finite(med_r, med_d, norm_r, norm_d) or (med_d > med_r) == (norm_d > norm_r):
        return ""
    return " The scale-free comparison points the other way."


def _attack_basis(lower_rate: bool, more_iter: bool, sr: dict[str, Any], sm: dict[str, Any]) -> str:
    """Say which half of finding (e) carried the verdict, and how many flips it rests on."""
    if lower_rate and more_iter:
        text = " Both halves agree: MMD lowers the flip rate and needs more iterations."
    elif lower_rate:
        text = " Held on the flip rate only; MMD needs no more iterations."
    elif more_iter:
        text = " Held on the iterations only; the MMD flip rate is not lower."
    else:
        text = " Neither half held."
    flips = min(int(sr.get("flipped") or 0), int(sm.get("flipped") or 0))
    if flips < 20:
        text += f" The iteration means rest on {sr.get('flipped')} and {sm.get('flipped')} flips."
    return text


def _finite(*xs: Any) -> bool:
    return all(isinstance(x, (int, float)) and math.isfinite(float(x)) for x in xs)


def _attack_seed(run: RunFiles, inp: ReportInputs) -> int:
    seed = _get(run.summary, "settings.seed")
    return int(inp.manifest["seed"] if seed is None else seed)


def _seeds(seeds: list[int]) -> str:
    return ", ".join(str(s) for s in seeds)


# --------------------------------------------------------------------------------------
# document blocks, rendered to Markdown and to HTML
# --------------------------------------------------------------------------------------
@dataclass
class Heading:
    text: str
    level: int = 2
    anchor: str | None = None


@dataclass
class Para:
    text: str  # may hold **bold** and `code`


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str | None = None
    name: str | None = None  # id of the HTML table (the browser test looks for them)


@dataclass
class Figure:
    path: Path
    caption: str
    root: Path


@dataclass
class Code:
    text: str
    summary: str


@dataclass
class Document:
    title: str
    blocks: list[Any] = field(default_factory=list)

    def add(self, *blocks: Any) -> None:
        self.blocks.extend(blocks)


def _inline_html(text: str) -> str:
    s = html.escape(text, quote=False)
    s = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", s)
    s = re.sub(r"`(.+?)`", r"<code>\1</code>", s)
    s = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<em>\1</em>", s)
    return s


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(doc: Document) -> str:
    out = [f"# {doc.title}", ""]
    for b in doc.blocks:
        if isinstance(b, Heading):
            out += [f"{'#' * b.level} {b.text}", ""]
        elif isinstance(b, Para):
            out += [b.text, ""]
        elif isinstance(b, Bullets):
            out += [f"- {item}" for item in b.items] + [""]
        elif isinstance(b, Table):
            if b.caption:
                out += [f"*{b.caption}*", ""]
            out.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
            out.append("|" + "|".join("---" for _ in b.header) + "|")
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            out.append("")
        elif isinstance(b, Figure):
            rel = b.path.relative_to(b.root).as_posix()
            out += [f"![{b.caption}]({rel})", "", f"*{b.caption}*", ""]
        elif isinstance(b, Code):
            out += [f"<details><summary>{html.escape(b.summary)}</summary>", "", "```json", b.text, "```", "",
                    "</details>", ""]
    return "\n".join(out).rstrip() + "\n"


_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;background:#f6f6f4;color:#222;line-height:1.45}
main{max-width:1100px;margin:0 auto;padding:24px 32px 64px;background:#fff}
h1{font-size:1.7em;margin-top:0.2em}h2{border-bottom:2px solid #003f5c;padding-bottom:4px;margin-top:2em}
h3{margin-top:1.5em}
table{border-collapse:collapse;margin:8px 0 18px;font-size:0.92em}
th,td{border:1px solid #ccc;padding:4px 9px;text-align:left;vertical-align:top}
th{background:#eef2f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.paper{color:#666;background:#fafafa}
td.held{background:#dcf3dc;font-weight:600}td.notheld{background:#fadcdc;font-weight:600}td.na{background:#eee}
caption{caption-side:top;text-align:left;font-style:italic;padding-bottom:4px}
figure{margin:14px 0 26px}figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:0.9em;color:#444;margin-top:4px}
code,pre{font-family:Menlo,Consolas,monospace;font-size:0.88em}pre{background:#f3f3f3;padding:10px;overflow-x:auto}
details{margin:6px 0}summary{cursor:pointer;color:#003f5c}
"""

# marks every image that decoded (the browser test reads these attributes from the DOM)
_RENDER_CHECK = """
window.addEventListener('load', function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) {
    var good = imgs[i].complete && imgs[i].naturalWidth > 0;
    imgs[i].setAttribute('data-rendered', good ? 'yes' : 'no');
    imgs[i].setAttribute('data-natural-width', String(imgs[i].naturalWidth));
    if (good) { ok++; }
  }
  document.body.setAttribute('data-images-rendered', ok + '/' + imgs.length);
});
"""

_MIME = {".png": "image/png", ".gif": "image/gif", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}
_NUMERIC = re.compile(r"^[±+\-−]?\d[\d.,]*(e[+\-]?\d+)?( %)?$|^n/a$")


def _cell_class(text: str, column: str) -> str:
    classes = []
    if text in ("held", "not held", "not testable"):
        classes.append({"held": "held", "not held": "notheld", "not testable": "na"}[text])
    if _NUMERIC.match(text.strip()):
        classes.append("num")
    if "paper" in column.lower():
        classes.append("paper")
    return f' class="{" ".join(classes)}"' if classes else ""


def render_html(doc: Document) -> str:
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{html.escape(doc.title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>", "<main>",
             f"<h1>{html.escape(doc.title)}</h1>"]
    for b in doc.blocks:
        if isinstance(b, Heading):
            anchor = f' id="{b.anchor}"' if b.anchor else ""
            parts.append(f"<h{b.level}{anchor}>{_inline_html(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            parts.append(f"<p>{_inline_html(b.text)}</p>")
        elif isinstance(b, Bullets):
            parts.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            name = f' id="{b.name}"' if b.name else ""
            rows = ["<tr>" + "".join(f"<th>{_inline_html(h)}</th>" for h in b.header) + "</tr>"]
            for row in b.rows:
                rows.append("<tr>" + "".join(f"<td{_cell_class(c, b.header[k])}>{_inline_html(c)}</td>"
                                             for k, c in enumerate(row)) + "</tr>")
            cap = f"<caption>{_inline_html(b.caption)}</caption>" if b.caption else ""
            parts.append(f'<table{name} class="report-table">{cap}' + "".join(rows) + "</table>")
        elif isinstance(b, Figure):
            data = base64.b64encode(b.path.read_bytes()).decode("ascii")
            mime = _MIME.get(b.path.suffix.lower(), "application/octet-stream")
            alt = html.escape(b.caption, quote=True)
            parts.append(f'<figure><img src="data:{mime};base64,{data}" alt="{alt}" '
                         f'data-file="{html.escape(b.path.relative_to(b.root).as_posix(), quote=True)}">'
                         f"<figcaption>{_inline_html(b.caption)}</figcaption></figure>")
        elif isinstance(b, Code):
            parts.append(f"<details><summary>{html.escape(b.summary)}</summary><pre>{html.escape(b.text)}</pre>"
                         "</details>")
    parts += ["</main>", f"<script>{_RENDER_CHECK}</script>", "</body>", "</html>"]
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------------------
# building the document
# --------------------------------------------------------------------------------------
def _metrics_table(inp: ReportInputs, model: str) -> Table:
    number = TABLE_NUMBERS[model][0]
    header = ["Training", "Metric", "Y10 (ours)", "Y10 (paper)", "Y1 (ours)", "Y1 (paper)"]
    rows = []
    paper = PAPER_METRICS[model]
    present = (model, "regular") in inp.runs
    for method in ("regular", "mmd"):
        for k, metric in enumerate(("accuracy", "precision", "recall", "f1")):
            row = [METHOD_LABEL[method] if k == 0 else "", METRIC_LABEL[metric]]
            for dom in ("Y10", "Y1"):
                ours = fmt_fixed(inp.run(model, method).metrics[dom][metric]) if present else "—"
                row += [ours, f"{paper[method][dom][metric]:.2f}"]
            rows.append(row)
    if present:
        m = inp.run(model, "regular").metrics
        n = f"ours on {n_test_images(m, 'Y10')} Y10 and {n_test_images(m, 'Y1')} Y1 test images"
    else:
        n = "not trained in this run"
    return Table(header, rows, f"Table {number}. {MODEL_LABEL[model]} test metrics ({n}; weighted precision, "
                               "recall and F1). Paper numbers from its Table " f"{number}.", f"table{number}")


def _distance_table(inp: ReportInputs, model: str) -> Table:
    number = TABLE_NUMBERS[model][1]
    header = ["Perturb.", "Training", "Median (ours)", "Median (paper)", "Mean (ours)", "Mean (paper)",
              "St. Err. (ours)", "St. Err. (paper)", "n (ours)", "JS distance (ours)", "JS (paper)"]
    paper = PAPER_DISTANCES[model]
    an = inp.analyses.get(model)
    rows = []
    for pert in ("Y10-Y1", "Y10-1P"):
        for k, tr in enumerate(("regular", "da")):
            p = paper[pert][tr]
            if an is not None:
                t = an["distances"]["latent"][pert]
                s = t[tr]
                ours = [fmt_sig(s["median"]), fmt_sig(s["mean"]), fmt_pm(s["stderr"]), str(s["n"]),
                        fmt_sig(t["js_distance"]) if k == 0 else ""]
            else:
                ours = ["—"] * 4 + [""]
            js_paper = (str(paper[pert]["js"]) if paper[pert]["js"] is not None else "—") if k == 0 else ""
            rows.append([PERT_LABEL[pert] if k == 0 else "", "Reg" if tr == "regular" else "DA",
                         ours[0], f"{p[0]}", ours[1], f"{p[1]}", ours[2], f"±{p[2]}", ours[3], ours[4], js_paper])
    n = (f"ours on the {an['n_flipped_both']} images flipped under both runs" if an is not None
         else "not trained in this run")
    return Table(header, rows, f"Table {number}. {MODEL_LABEL[model]} latent distances d_E ({n}; paper on "
                               f"{paper['n']} images). JS distance base {an['js_base'] if an else 2}.",
                 f"table{number}")


def _normalised_table(inp: ReportInputs, model: str) -> Table:
    an = inp.analyses[model]
    rows = []
    for pert in ("Y10-Y1", "Y10-1P"):
        t = an["distances"]["normalised"][pert]
        for k, tr in enumerate(("regular", "da")):
            s = t[tr]
            rows.append([PERT_LABEL[pert] if k == 0 else "", "Reg" if tr == "regular" else "DA", fmt_sig(s["median"]),
                         fmt_sig(s["mean"]), fmt_pm(s["stderr"]), str(s["n"]),
                         fmt_sig(t["js_distance"]) if k == 0 else ""])
    scale = an["attack"]
    return Table(["Perturb.", "Training", "Median", "Mean", "St. Err.", "n", "JS distance"], rows,
                 f"{MODEL_LABEL[model]}: d_E divided by each model's median ‖z(Y10)‖ (regular "
                 f"{fmt_sig(scale['regular']['median_latent_norm_Y10'])}, DA "
                 f"{fmt_sig(scale['da']['median_latent_norm_Y10'])}): the two latent spaces differ in scale.",
                 f"normalised_{model}")


def _attack_table(inp: ReportInputs) -> Table:
    rows = []
    for model in inp.models:
        for method in ("regular", "mmd"):
            s = inp.run(model, method).summary
            rows.append([MODEL_LABEL[model], METHOD_LABEL[method], str(s.get("images_drawn", "n/a")),
                         str(s.get("correctly_classified", "n/a")), str(s.get("attacked", "n/a")),
                         str(s.get("flipped", "n/a")), fmt_fixed(s.get("success_rate")),
                         fmt_sig(s.get("mean_iterations_flipped")), fmt_sig(s.get("median_iterations_flipped")),
                         fmt_sig(s.get("mean_iterations")), str(s.get("flipped_in_initial_population", "n/a"))])
    s0 = inp.run(inp.models[0], "regular").summary
    st = s0.get("settings", {})
    return Table(["Model", "Training", "Images drawn", "Correctly classified", "Attacked", "Flipped",
                  "Flip rate", "Mean iterations (flips)", "Median iterations (flips)",
                  "Mean iterations (all, failures at the cap)", "Flipped by the initial population"], rows,
                 f"One-pixel attack: seeded random test subsample, correctly classified images attacked, "
                 f"{st.get('mode', 'targeted')}, the other two classes tried in turn, first success kept; "
                 f"population {st.get('pop_size', 'n/a')}, at most {st.get('max_iter', 'n/a')} iterations "
                 f"(paper: {PAPER_SIZES['n_images']} images, population {PAPER_SIZES['pop_size']}, "
                 f"{PAPER_SIZES['max_iter']} iterations).", "table_attack")


def _departures(inp: ReportInputs) -> list[str]:
    ds = inp.dataset
    counts = ds.get("counts") or inp.run(inp.models[0], "regular").config.get("counts", {})
    if "external" in ds:
        made_here = ds.get("kind") == "deepadv-dataset"
        items = [f"Data: the existing dataset folder `{ds['external']}`"
                 + (" (made by deepadv simulate)" if made_here else " (the published layout, e.g. the paper's "
                                                                  "Zenodo data)") + "."]
    else:
        items = ["Data: parametric GalSim galaxies through an LSST-like Y10/Y1 observing model (the paper rendered "
                 "IllustrisTNG100 galaxies). Labels from the same Gini–M20 rule."]
    items.append(f"Dataset size: {_counts_text(counts)} (paper: {PAPER_SIZES['images']}); split mode "
                 f"`{_get(ds, 'split_mode', 'config.split_mode', default='n/a')}`.")
    if _snr_text(ds):
        items.append(_snr_text(ds))
    for model in inp.models:
        reg, mmd = inp.run(model, "regular"), inp.run(model, "mmd")
        items.append(f"{MODEL_LABEL[model]} training, regular: {_training_text(reg)}; MMD: {_training_text(mmd)} "
                     f"(paper: {PAPER_SIZES['training']})."
                     + (f" Preset note: {reg.config['preset_note']}." if reg.config.get("preset_note") else ""))
    s = inp.run(inp.models[0], "regular").summary
    dep = s.get("departures_from_paper") or []
    items.append("Attack: " + ("; ".join(dep) if dep else "the paper's sizes") + f" (paper: {PAPER_SIZES['n_images']} "
                 f"images, population {PAPER_SIZES['pop_size']}, {PAPER_SIZES['max_iter']} iterations).")
    items.append("Seeds: one training seed per run and one attack seed; the paper also reports one run per "
                 "configuration. Differences of a few points are within seed-to-seed variation on small test sets.")
    return items


def _get(d: dict[str, Any], *paths: str, default: Any = None) -> Any:
    """The first of several dotted paths present in ``d`` (metadata written by different stages)."""
    for path in paths:
        cur: Any = d
        for part in path.split("."):
            if isinstance(cur, dict) and part in cur:
                cur = cur[part]
            else:
                cur = None
                break
        if cur is not None:
            return cur
    return default


def _counts_text(counts: Any) -> str:
    if not isinstance(counts, dict) or not counts:
        return "n/a"
    parts = []
    for split in ("train", "valid", "test"):
        v = counts.get(split)
        if isinstance(v, dict):
            v = v.get("total", v.get("images"))
        if v is not None:
            parts.append(f"{split} {v}")
    text = ", ".join(parts) + " images per domain" if parts else "n/a"
    gal = counts.get("galaxies")
    if isinstance(gal, dict):
        text += f" from {sum(gal.values())} galaxies (" + ", ".join(f"{k} {v}" for k, v in gal.items()) + \
            "; mergers augmented)"
    return text


def _snr_text(ds: dict[str, Any]) -> str | None:
    snr = ds.get("peak_snr")
    try:
        y10, y1 = snr["Y10"]["r"]["median"], snr["Y1"]["r"]["median"]
    except (KeyError, TypeError):
        return None
    return (f"Signal-to-noise: median r-band peak S/N per pixel {fmt_sig(y10)} at Y10 and {fmt_sig(y1)} at Y1 "
            f"(5-95 %: {fmt_sig(snr['Y10']['r'].get('p5'))}-{fmt_sig(snr['Y10']['r'].get('p95'))} at Y10).")


def _training_text(run: RunFiles) -> str:
    """Optimiser, schedule and length of a training run, from its config.json and training.json."""
    cfg, tr = run.config, run.training
    parts = [f"Adam lr {cfg.get('lr', 'n/a')}"]
    if cfg.get("betas"):
        parts[0] += f" (betas {tuple(cfg['betas'])})"
    if cfg.get("schedule"):
        parts.append(f"{cfg['schedule']} schedule")
    parts.append(f"batch {cfg.get('batch_size', 'n/a')}")
    parts.append(f"weight decay {cfg.get('weight_decay', 'n/a')}")
    if cfg.get("method") == "mmd":
        parts.append(f"λ {cfg.get('mmd_weight', 'n/a')} ({cfg.get('mmd_estimator', 'n/a')} MMD²)")
    epochs = f"up to {cfg.get('epochs', 'n/a')} epochs"
    if "epochs" in tr:
        epochs += f", ran {tr['epochs']}, kept epoch {tr.get('best_epoch', 'n/a')}"
    parts.append(epochs)
    return ", ".join(parts)


def _figure_blocks(inp: ReportInputs, figures: dict[str, Path | str]) -> list[Any]:
    from .reproduce import Layout

    layout = Layout.of(inp.root)
    root = inp.root
    blocks: list[Any] = [Heading("Figures", 2, "figures")]
    for key, caption in (("fig1", "Figure 1. Gini–M20 plane of the simulated galaxies (noiseless, PSF-convolved r "
                                  "band) with the merger and elliptical/spiral boundaries."),
                         ("fig2", "Figure 2. Example Y10 and Y1 images of each class (r band, model input).")):
        item = figures.get(key)
        if isinstance(item, Path):
            blocks.append(Figure(item, caption, root))
        elif item:
            blocks.append(Para(f"{caption.split('.')[0]} is not available: {item}"))
    for model in inp.models:
        a = layout.analysis(model)
        label = MODEL_LABEL[model]
        blocks.append(Heading(f"{label}", 3))
        for name, cap in (
            ("fig3_church_isomap.png", f"Figure 3 ({label}). Church window (left) and 2-D isomap (right) of one "
                                       "example triplet: regular training on top, MMD below. × Y10, ▲ 1P, ★ Y1."),
            ("fig4_isomap3d.png", f"Figure 4 ({label}). 3-D isomaps of Y10 (orange surface) and Y1 (blue surface) "
                                  "test latents from four view angles; regular on top, MMD below."),
            ("isomap3d_regular.gif", f"Figure 4, animated ({label}, regular training)."),
            ("isomap3d_da.gif", f"Figure 4, animated ({label}, MMD)."),
            ("fig5_church_windows.png", f"Figure 5 ({label}). Church windows of several attacked images; "
                                        "regular on top, MMD below; titles 'true → target'."),
            ("fig6_distances.png", f"Figure 6 ({label}). Distributions of d_E(Y10–Y1) and d_E(Y10–1P), regular vs "
                                   "MMD, with mean and median lines and the JS distance."),
        ):
            path = a / name
            if path.is_file():
                blocks.append(Figure(path, cap, root))
            else:
                blocks.append(Para(f"Missing figure: `{path.relative_to(root).as_posix()}`."))
        for method in ("regular", "mmd"):
            for dom in ("Y10", "Y1"):
                p = layout.run(model, method) / f"confusion_{dom}.png"
                if p.is_file():
                    blocks.append(Figure(p, f"Confusion matrix, {label} {METHOD_LABEL[method]}, {dom} test set.",
                                         root))
    return blocks


def _timings_table(inp: ReportInputs) -> Table:
    rows = []
    total = 0.0
    for name, rec in inp.timings.get("stages", {}).items():
        wall = rec.get("wall_s")
        total += wall or 0.0
        rows.append([name, rec.get("status", "n/a"), fmt_seconds(wall), str(rec.get("device", "n/a")),
                     str(rec.get("finished", "n/a"))])
    rows.append(["total", "", fmt_seconds(total), "", ""])
    return Table(["Stage", "Status (last invocation)", "Wall time", "Device", "Finished"], rows,
                 "Wall time of each stage, from timings.json (the run that produced its outputs).", "table_timings")


def build_document(inp: ReportInputs, findings: list[dict[str, Any]], figures: dict[str, Path | str]) -> Document:
    """The whole report as blocks (rendered to Markdown and HTML alike)."""
    from .reproduce import DROPPED_MODEL_REASON

    m = inp.manifest
    env = inp.timings.get("environment", {})
    doc = Document("DeepAdversaries reproduction report")
    grid = ", ".join(MODEL_LABEL[x] for x in inp.models)
    total = sum((r.get("wall_s") or 0.0) for r in inp.timings.get("stages", {}).values())
    doc.add(Para(f"Preset **{m['preset']}**, seed **{m['seed']}**, models: {grid} × {{regular, MMD}}; device "
                 f"`{env.get('device', 'n/a')}` ({env.get('device_name', '')}); stage wall time in total "
                 f"{fmt_seconds(total)}. deepadversaries {m.get('version', __version__)}; paper: Ćiprijanović et al. "
                 "2022, *DeepAdversaries: examining the robustness of deep learning models for galaxy morphology "
                 "classification*."))
    if "resnet18" not in inp.models:
        doc.add(Para(DROPPED_MODEL_REASON.get(m["preset"], "ResNet18 was not part of this run's grid.")
                     + " Tables 2 and 3 show the paper's numbers only."))

    doc.add(Heading("Findings", 2, "findings"))
    doc.add(Para("Each of the paper's findings, tested on this run's numbers. Thresholds: "
                 + "; ".join(f"({k}) {v}" for k, v in FINDING_TESTS.items()) + "."))
    doc.add(Table(["Finding", "Model", "Claim", "Our numbers", "Result"],
                  [[f"({f['id']})", MODEL_LABEL[f["model"]], f["claim"], f["statement"], _held_word(f["held"])]
                   for f in findings], None, "table_findings"))

    doc.add(Heading("Where this run departs from the paper", 2, "departures"))
    doc.add(Bullets(_departures(inp)))

    doc.add(Heading("Classification metrics (Tables 2 and 4)", 2, "metrics"))
    doc.add(_metrics_table(inp, "resnet18"), _metrics_table(inp, "convnet"))
    doc.add(Heading("Latent-space distances (Tables 3 and 5)", 2, "distances"))
    doc.add(_distance_table(inp, "resnet18"), _distance_table(inp, "convnet"))
    for model in inp.models:
        doc.add(_normalised_table(inp, model))
        for note in inp.analyses[model].get("notes", []):
            doc.add(Para(f"Note ({MODEL_LABEL[model]} analysis): {note}"))
    doc.add(Heading("One-pixel attack", 2, "attack"))
    doc.add(_attack_table(inp))
    doc.add(*_figure_blocks(inp, figures))

    doc.add(Heading("Run record", 2, "record"))
    doc.add(_timings_table(inp))
    versions = env.get("versions", {})
    doc.add(Table(["Package", "Version"], [[k, str(v)] for k, v in versions.items()],
                  f"Package versions; device {env.get('device', 'n/a')} ({env.get('device_name', '')}), "
                  f"{env.get('cpu_count', 'n/a')} CPUs, {env.get('platform', '')}.", "table_versions"))
    seeds = [[f"{MODEL_LABEL[k[0]]} {METHOD_LABEL[k[1]]}", str(r.config.get("seed")),
              str(_attack_seed(r, inp))] for k, r in inp.runs.items()]
    doc.add(Table(["Run", "Training seed", "Attack seed"], seeds, f"Seeds (dataset seed "
                  f"{_get(inp.dataset, 'seed', 'config.seed', default='n/a')}).", "table_seeds"))
    doc.add(Code(json.dumps(m, indent=2), "reproduce.json (the grid)"))
    doc.add(Code(json.dumps(_get(inp.dataset, "config", default=inp.dataset), indent=2, default=str),
                 "Dataset config (dataset.json)"))
    for (model, method), r in inp.runs.items():
        doc.add(Code(json.dumps(r.config, indent=2, default=str), f"Run config: {model}_{method} (config.json)"))
        attack_cfg = r.summary.get("settings", {})
        doc.add(Code(json.dumps(attack_cfg, indent=2, default=str), f"Attack settings: {model}_{method}"))
    return doc


def _dataset_figures(inp: ReportInputs) -> dict[str, Path | str]:
    """Figures 1 and 2 of the dataset, made into OUT/figures; a reason instead when impossible.

    (Figure 1 needs the G–M20 catalogue, which only folders made by ``deepadv simulate`` have.)
    """
    from .data import load_dataset
    from .errors import DeepAdvError
    from .plots import dataset as dataset_plots
    from .reproduce import Layout

    layout = Layout.of(inp.root)
    ds = load_dataset(layout.data)
    out: dict[str, Path | str] = {}
    for key, name, plot in (("fig1", "fig1_gini_m20.png", dataset_plots.plot_gm20),
                            ("fig2", "fig2_examples.png", dataset_plots.plot_examples)):
        try:
            out[key] = plot(ds, layout.figures / name)
        except DeepAdvError as exc:
            out[key] = str(exc)
    return out


def _nan_to_none(obj: Any) -> Any:
    """NaN (undefined: no images) as JSON null, so that findings.json is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


def write_report(out_dir: str | Path, *, make_dataset_figures: bool = True) -> Path:
    """Write findings.json, report.md and (last) report.html into a reproduction folder.

    Returns the path of report.html. Every number comes from the stages' JSON files.
    """
    from .reproduce import Layout

    out_dir = Path(out_dir)
    layout = Layout.of(out_dir)
    inp = load_inputs(out_dir)
    figures = _dataset_figures(inp) if make_dataset_figures else {}
    findings = compute_findings(inp)
    doc = build_document(inp, findings, figures)
    write_json(layout.findings, _nan_to_none({
        "kind": "deepadv-findings", "version": __version__, "preset": inp.manifest["preset"],
        "seed": inp.manifest["seed"], "models": list(inp.models), "thresholds": THRESHOLDS,
        "tests": FINDING_TESTS, "findings": findings,
    }))
    write_text(layout.report_md, render_markdown(doc))
    write_text(layout.report_html, render_html(doc))
    return layout.report_html


__all__ = ["PAPER_DISTANCES", "PAPER_METRICS", "THRESHOLDS", "compute_findings", "load_inputs", "render_html",
           "render_markdown", "write_report"]
