"""Print README's verdict tables from committed study results, so that text and data cannot drift.

Usage::

    python scripts/verdict_table.py                     # both tables, from docs/results/
    python scripts/verdict_table.py --check README.md   # exit 1 when README's tables differ
    python scripts/verdict_table.py --write README.md   # replace README's tables with this output
    python scripts/verdict_table.py --extract studies/quick5
        # write docs/results/study_quick5.json (the study's findings) and
        # docs/results/findings_quick5_seed0.json (seed 0 alone, as `deepadv reproduce` pools one seed)

README holds each table between ``<!-- verdict-table:NAME -->`` and ``<!-- /verdict-table -->``
(NAME ``one-seed`` or ``study``); ``tests/test_verdicts.py`` checks that they equal this
script's output for the committed JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
STUDY_JSON = RESULTS / "study_quick5.json"
SEED0_JSON = RESULTS / "findings_quick5_seed0.json"
BEGIN, END = "<!-- verdict-table:{name} -->", "<!-- /verdict-table -->"

NAMES = {"a": "(a) the regular model loses accuracy on Y1", "b": "(b) MMD raises Y1 accuracy",
         "c": "(c) MMD costs little on Y10 (non-inferiority, our 3-point margin)",
         "d": "(d) with MMD the flipped images lie further from their originals",
         "e": "(e) with MMD the one-pixel attack succeeds less often"}
ENDPOINTS = {"a": "regular Y1 − Y10 accuracy", "b": "MMD − regular Y1 accuracy", "c": "MMD − regular Y10 accuracy",
             "d": "MMD / regular median raw d_E(Y10–1P)", "e": "MMD − regular flip rate (DE), paired"}
PAPER = {"a": "−22 points", "b": "+9 points", "c": "−1 point", "d": "×1.3", "e": "no number"}


def _num(x: float | None, ratio: bool, sign: bool = True) -> str:
    if x is None:
        return "n/a"
    if ratio:
        return f"{x:.2f}"
    text = f"{100 * x:.1f}".replace("-", "−")
    return (f"+{text}" if sign and not text.startswith("−") and text != "0.0" else text)


def _queries(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.0f}".replace("-", "−")


def _ci(effect: float | None, low: float | None, high: float | None, ratio: bool) -> str:
    unit = "" if ratio else " points"
    return f"{_num(effect, ratio)}{unit} [{_num(low, ratio, False)}, {_num(high, ratio, False)}]"


def _magnitude(f: dict[str, Any]) -> str:
    return f["magnitude"] if f.get("magnitude") else ("the paper gives no number" if f["id"] == "e" else "—")


def _images(f: dict[str, Any]) -> str:
    if f["id"] == "d":
        n = f["numbers"]["n_flipped_both"]
        used = [p["n_images"] for p in f["per_seed"] if not p.get("excluded")]
        return f"{sum(used)} images flipped under both used ({', '.join(map(str, n))} per seed)"
    if f["id"] == "e":
        return f"{f['n_images']:,} attacked under both"
    return f"{f['n_images']} test images"


def _seeds(k: int) -> str:
    return f"{k} seed{'s' if k != 1 else ''}"


def _seeds_text(f: dict[str, Any]) -> str:
    excluded = f.get("excluded_seeds") or []
    text = _seeds(f["n_seeds"] - len(excluded))
    if excluded:
        text += " (left out, fewer than 5 images: " + ", ".join(f"seed {x['seed']}, n = {x['n_images']}"
                                                               for x in excluded) + ")"
    return text


def _verdict(f: dict[str, Any]) -> str:
    word = f"**{f['verdict']}**"
    if f.get("one_model"):
        word += " (one trained model)"
    if f.get("scale_dependent"):
        word += " (direction depends on the latent scale)"
    return word


def study_table(record: dict[str, Any]) -> str:
    """The study's table: primary endpoints, then (d)'s sensitivity versions and (e)'s secondary measures."""
    findings = [f for f in record["findings"] if f["model"] == "convnet" and f["method"] in ("mmd", "regular")]
    lines = ["| finding (ConvNet, MMD vs regular) | primary endpoint | effect [95 % CI] | verdict | paper | magnitude "
             "| seeds, images |", "|---|---|---|---|---|---|---|"]
    for f in findings:
        ratio = f["id"] == "d"
        lines.append(f"| {NAMES[f['id']]} | {ENDPOINTS[f['id']]} | {_ci(f['effect'], f['ci_low'], f['ci_high'], ratio)}"
                     f" | {_verdict(f)} | {PAPER[f['id']]} | {_magnitude(f)} | {_seeds_text(f)}, {_images(f)} |")
        if f["id"] == "d":
            for key, words in (("logit", "logit space"), ("spread", "÷ each model's latent spread")):
                s = f["sensitivity"][key]
                lines.append(f"| (d) sensitivity: {words} | the same ratio, {words} | "
                             f"{_ci(s['estimate'], s['low'], s['high'], True)} | {s['verdict']} (not the verdict) "
                             f"| | | {_seeds_text(f)} |")
            b = f["numbers"]["boundary_ratio"]
            lines.append(f"| (d) reported: distance from z(Y10) to the decision boundary | MMD / regular median, every "
                         f"attacked image | {_ci(b['estimate'], b['low'], b['high'], True)} | reported | | | "
                         f"{_seeds(f['n_seeds'])}, every image attacked under both |")
        if f["id"] == "e":
            numbers = f["numbers"]
            if "cluster_bootstrap" in numbers:
                c = numbers["cluster_bootstrap"]
                lines.append(f"| (e) sensitivity: galaxy × seed cluster bootstrap | the same difference | "
                             f"{_ci(c['estimate'], c['low'], c['high'], False)} | reported | | | "
                             f"{_seeds(f['n_seeds'])} |")
            q = numbers["queries_flipped_both"]
            lines.append(f"| (e) secondary: queries to flip, images flipped under both | MMD − regular | "
                         f"{_queries(q['estimate'])} [{_queries(q['low'])}, {_queries(q['high'])}] queries | "
                         f"reported | | | {_seeds(sum(p['n_flipped_both'] > 0 for p in f['per_seed']))}, "
                         f"{sum(p['n_flipped_both'] for p in f['per_seed'])} images |")
            for key, words in (("corner_rate", "corner search flip rate (a lower bound)"),
                               ("certified_rate", "flip rate proved by `deepadv certify` ({value_range} value range, "
                                                  "images decided under both)")):
                if key in numbers:
                    r = numbers[key]
                    words = words.format(value_range=r.get("value_range", "input"))
                    lines.append(f"| (e) secondary: {words} | MMD − regular, paired | "
                                 f"{_ci(r['estimate'], r['low'], r['high'], False)} | reported | | | "
                                 f"{_seeds(f['n_seeds'])}, {r['n_images']:,} images |")
    rates = next(f for f in findings if f["id"] == "e")["numbers"]["flip_rates"]
    check = next(f for f in findings if f["id"] == "e")["numbers"]["mcnemar_check"]
    seeds = ", ".join(map(str, record["seeds"]))
    k = len(record["seeds"])
    partial = (f" Only {record['partial']}: {k} seeds make a t-interval with {k - 1} degree"
               f"{'s' if k != 2 else ''} of freedom." if record.get("partial") else "")
    lines += ["", f"Preset `{record['preset']}`, seeds {seeds}.{partial} 95 % intervals: (a)–(c), (e) a t-interval of the "
              "per-seed differences, (d) of the per-seed log ratios. DE flip rates on the same "
              f"{rates['n_images']:,} images: regular {100 * rates['regular']:.1f} %, MMD "
              f"{100 * rates['adapted']:.1f} %. Check conditional on these trained models (not a verdict): McNemar on "
              f"the pairs summed over seeds, b = {check['counts']['b']}, c = {check['counts']['c']}, "
              f"p = {check['p_value']:.2g}."]
    return "\n".join(lines)


def one_seed_table(record: dict[str, Any]) -> str:
    """The one-seed table: each verdict of one trained model, its per-image interval."""
    lines = ["| finding (ConvNet, MMD vs regular) | primary endpoint | effect [95 % CI] | verdict | paper | magnitude "
             "| images |", "|---|---|---|---|---|---|---|"]
    for f in record["findings"]:
        if f["model"] != "convnet" or f["method"] not in ("mmd", "regular"):
            continue
        ratio = f["id"] == "d"
        lines.append(f"| {NAMES[f['id']]} | {ENDPOINTS[f['id']]} | {_ci(f['effect'], f['ci_low'], f['ci_high'], ratio)}"
                     f" | {f['verdict']} | {PAPER[f['id']]} | {_magnitude(f)} | {_images(f)} |")
    lines += ["", f"Seed {record['seeds'][0]} alone: every verdict is of one trained model; see `deepadv study`. "
              "Intervals are bootstraps over the test images, which leave out the seed-to-seed variation."]
    return "\n".join(lines)


def tables() -> dict[str, str]:
    """README's tables from the committed JSON."""
    return {"one-seed": one_seed_table(json.loads(SEED0_JSON.read_text(encoding="utf-8"))),
            "study": study_table(json.loads(STUDY_JSON.read_text(encoding="utf-8")))}


def readme_tables(text: str) -> dict[str, str]:
    """The tables README holds between the markers."""
    out = {}
    for name in ("one-seed", "study"):
        match = re.search(re.escape(BEGIN.format(name=name)) + r"\n(.*?)" + re.escape(END), text, re.S)
        if match:
            out[name] = match.group(1).removesuffix("\n")
    return out


def _compact(record: dict[str, Any]) -> dict[str, Any]:
    """What the tables need: the grid and the findings without their source lists."""
    return {**({"partial": record["partial"]} if record.get("partial") else {}),
            "kind": record.get("kind", "deepadv-findings"), "version": record.get("version"),
            "preset": record.get("preset"), "seeds": record.get("seeds") or [record.get("seed", 0)],
            "findings": [{k: v for k, v in f.items() if k != "sources"} for f in record["findings"]]}


def extract(study_dir: Path) -> None:
    """Write the committed JSON from a finished study: its findings, and seed 0's alone."""
    sys.path.insert(0, str(ROOT / "src"))
    from deepadversaries import REFERENCE_METHOD
    from deepadversaries.reporting.findings import collect_evidence, compute_findings
    from deepadversaries.formatting import nan_to_none
    from deepadversaries.workflow.layout import Layout, read_manifest

    record = json.loads((study_dir / "study.json").read_text(encoding="utf-8"))
    RESULTS.mkdir(parents=True, exist_ok=True)
    STUDY_JSON.write_text(json.dumps(_compact(record), indent=1) + "\n", encoding="utf-8")
    manifest, layout = read_manifest(study_dir), Layout.of(study_dir)
    seed = int(manifest["seeds"][0])
    pairs = {(model, method): [collect_evidence(layout.run(model, REFERENCE_METHOD, seed), layout.run(model, method, seed),
                                                layout.analysis(model, method, seed), model=model, method=method,
                                                seed=seed, root=study_dir)]
             for model in manifest["models"] for method in manifest["methods"] if method != REFERENCE_METHOD}
    one = {"kind": "deepadv-findings", "version": record.get("version"), "preset": manifest["preset"],
           "seeds": [seed], "findings": compute_findings(pairs)}
    SEED0_JSON.write_text(json.dumps(nan_to_none(_compact(one)), indent=1) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", type=Path, help="compare with the tables in this README; exit 1 if they differ")
    parser.add_argument("--extract", type=Path, help="write docs/results/*.json from this finished study folder")
    parser.add_argument("--write", type=Path, help="replace the tables between the markers of this README")
    args = parser.parse_args(argv)
    if args.extract:
        extract(args.extract)
    made = tables()
    if args.write:
        text = args.write.read_text(encoding="utf-8")
        for name, table in made.items():
            begin = BEGIN.format(name=name)
            if begin not in text:
                print(f"{args.write}: no {begin} marker")
                return 1
            text = re.sub(re.escape(begin) + r"\n.*?" + re.escape(END), lambda _: f"{begin}\n{table}\n{END}", text,
                          flags=re.S)
        args.write.write_text(text, encoding="utf-8")
        return 0
    if args.check:
        found = readme_tables(args.check.read_text(encoding="utf-8"))
        differ = [name for name in made if found.get(name) != made[name]]
        if differ:
            print(f"{args.check}: verdict tables differ from the committed results: {', '.join(differ)}")
            return 1
        return 0
    for name, table in made.items():
        print(BEGIN.format(name=name))
        print(table)
        print(END)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
