"""A robustness card as documents: ``card.html``, ``card.md`` and a Hugging Face ``model-index`` block.

:func:`render_card` turns the card dict (:func:`deepadversaries.card.build.card_run`, or
:func:`deepadversaries.card.build.read_card`) into:

- ``card.html``: one self-contained page (no script, style sheet, font or image fetched from
  anywhere; figures embedded as base64 PNG): a headline panel of the five numbers, then the
  tables (clean data per domain, corruptions, one-pixel vulnerability), what is absent and
  why, the unreliable numbers, the figures, and the model, data and protocol;
- ``card.md``: the same tables in Markdown, ending with the ``model-index`` block;
- ``model_index.yaml``: the ``model-index`` block alone, for a model card's README on the
  Hugging Face Hub. Its metric values are strings that keep the interval and n
  (``"0.953 [0.936, 0.967] (n = 704)"``), as that format allows free-form values.

Every number is printed as ``value [ci_low, ci_high]`` with its n; an undefined bound as
``–``. Pure rendering: reads the figures from ``CARD/figures`` and writes three files.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deepadversaries.card.build import FIGURES_DIR, pixel_values_suffix
from deepadversaries.io import write_text

HTML_NAME = "card.html"
MD_NAME = "card.md"
MODEL_INDEX_NAME = "model_index.yaml"
#: figures in the order the page shows them, with their captions
FIGURES = (
    ("reliability.png", "Reliability diagram (test images)"),
    ("confusion_Y10.png", "Confusion matrix, Y10"),
    ("confusion_Y1.png", "Confusion matrix, Y1"),
    ("corruption_accuracy.png", "Accuracy against corruption severity"),
    ("corruption_grid.png", "One test galaxy under every corruption and severity, as the model sees it"),
    ("success_queries.png", "Share of attacked images flipped against queries per image"),
)
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#1b1b1b;padding:0 1em}
h1{margin-bottom:.2em}.sub{color:#555;margin-top:0}
.panel{display:flex;flex-wrap:wrap;gap:12px;margin:1.2em 0}
.tile{flex:1 1 180px;border:1px solid #ccd;border-radius:8px;padding:12px 14px;background:#f6f8fc}
.tile .v{font-size:2em;font-weight:600}.tile .ci{color:#333}.tile .l{font-size:.9em;color:#444}
.tile .n{font-size:.8em;color:#666}
table{border-collapse:collapse;margin:.6em 0 1.4em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#eef}td.t,th.t{text-align:left}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #ddd}figcaption{color:#444;font-size:.9em}
.absent li,.unreliable li{margin:.2em 0}code{background:#f2f2f2;padding:0 3px}
"""


def fmt(x: float | None) -> str:
    """A number as the card prints it: 3 decimals below 10, 1 above, scientific below 0.001;
    ``–`` for None."""
    if x is None:
        return "–"
    if x == 0:
        return "0"
    if abs(x) < 0.001:
        return f"{x:.2e}"
    return f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}"


def fmt_number(num: Mapping[str, Any] | None, *, with_n: bool = True) -> str:
    """``value [ci_low, ci_high] (n = …)`` of a card number; ``–`` when absent."""
    if num is None or num.get("value") is None:
        return "–" + (f" (n = {num['n']})" if num is not None and with_n else "")
    text = f"{fmt(num['value'])} [{fmt(num['ci_low'])}, {fmt(num['ci_high'])}]"
    return text + (f" (n = {num['n']})" if with_n else "")


def _e(x: Any) -> str:
    return html.escape(str(x))


# --------------------------------------------------------------------------------------
# tables shared by the HTML and the Markdown
# --------------------------------------------------------------------------------------
def tables(card: Mapping[str, Any]) -> list[tuple[str, str, list[str], list[list[str]]]]:
    """The card's tables: (id, title, header, rows of text cells)."""
    results = card["results"]
    out = []
    clean = results.get("clean") or {}
    if clean:
        keys = [k for k in ("accuracy", "agreement", "ece", "brier", "nll") if any(k in v for v in clean.values())]
        rows = [[f"{v['name']} ({d})" if v["name"] != d else d] + [fmt_number(v.get(k)) for k in keys]
                for d, v in clean.items()]
        if results.get("depth_shift_drop") is not None:
            what = "accuracy" if "accuracy" in keys else "agreement"
            rows.append([f"drop Y10 → Y1 ({what})"] + [fmt_number(results["depth_shift_drop"])] + [""] * (len(keys) - 1))
        out.append(("table_clean", "Clean test images", ["domain", *keys], rows))
    corr = results.get("corruptions")
    if corr:
        keys = [k for k in ("accuracy", "stability") if any(k in r for r in corr["rows"])]
        rows = [[r["corruption"], str(r["severity"])] + [fmt_number(r.get(k)) for k in keys] for r in corr["rows"]]
        for k in keys:
            if f"mean_{k}" in corr:
                rows.append([f"mean {k}", ""] + [fmt_number(corr[f"mean_{k}"]) if kk == k else "" for kk in keys])
        out.append(("table_corruptions", f"Survey corruptions ({corr.get('domain', 'Y10')} test images)",
                    ["corruption", "severity", *keys], rows))
        if corr.get("ce"):
            rows = [[name, fmt_number(num)] for name, num in corr["ce"].items()]
            rows.append(["mCE", fmt_number(corr.get("mce"))])
            if corr.get("held_out_mce"):
                rows.append([f"mCE, held out of survey-mix ({', '.join(corr.get('held_out', []))})",
                             fmt_number(corr["held_out_mce"])])
            out.append(("table_ce", f"Corruption error against {Path(str(corr['baseline'])).name}",
                        ["corruption", "CE"], rows))
    one = results.get("one_pixel") or {}
    rows = []
    for key, search, label in (("de_rate", "de", "differential evolution"),
                               ("corner_search_rate", "corner_search", "corner search (lower bound)")):
        if key in one:
            rows.append([label + pixel_values_suffix(one, search), fmt_number(one[key])])
    for key, num in (one.get("certified") or {}).items():
        rows.append([f"certification: {key.replace('_', ' ')}{pixel_values_suffix(one, 'certified')}",
                     fmt_number(num)])
    if rows:
        out.append(("table_one_pixel", "One-pixel vulnerability (share of attacked images)", ["search", "rate"], rows))
    if one.get("success_against_queries"):
        rows = [[r["search"], str(r["queries"]), fmt_number(r["rate"])] for r in one["success_against_queries"]]
        out.append(("table_queries", "Success against queries", ["search", "queries per image", "flipped"], rows))
    if one.get("dangerous_pixels"):
        rows = [[r["region"], fmt_number(r["share"]), fmt(r["area_share"])] for r in one["dangerous_pixels"]]
        out.append(("table_danger", "Where the flipping pixels lie (corner search)",
                    ["region", "share of flipping positions", "share of the stamp"], rows))
    return out


def _facts(card: Mapping[str, Any]) -> list[tuple[str, str]]:
    m, d, p = card["model"], card["data"], card["protocol"]
    vr = d["value_range"]
    return [
        ("model", f"{m['architecture']} · {m['method']} · {m['parameters']:,} parameters"
                  + (" · adopted TorchScript" if m["adopted"] else "")),
        ("checkpoint", f"{m['checkpoint']} sha256 {m['checkpoint_sha256']}"),
        ("data", f"{d['path']} · {d['n_test']} test images · classes {', '.join(d['classes'])} · bands "
                 f"{', '.join(d['bands'])} · domains {', '.join(f'{k} ({v})' for k, v in d['domains'].items())}"),
        ("data sha256", f"{d['sha256']} (of {', '.join(d['sha256_of'])})"),
        ("pixel values", f"{fmt(vr['p0.1'])} to {fmt(vr['p99.9'])} (0.1/99.9 percentiles; min {fmt(vr['min'])}, "
                         f"max {fmt(vr['max'])}), {vr['unit']}"),
        ("protocol", f"{p['id']} · level {p['level']} · {p['mode']} · seed {p['seed']} · deepadversaries "
                     f"{p['package_version']}"),
        ("images", ", ".join(f"{k} {v}" for k, v in p["images"].items())),
        ("settings", json.dumps(p["settings"], sort_keys=True)),
        ("wall time", ", ".join(f"{k} {v:.1f} s" for k, v in p["timing"].items())),
    ]


# --------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------
def _html_table(tid: str, title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th class='{'t' if i == 0 else ''}'>{_e(h)}</th>" for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"<td class='{'t' if i == 0 else ''}'>{_e(c)}</td>" for i, c in enumerate(r))
                   + "</tr>" for r in rows)
    return f"<h2>{_e(title)}</h2>\n<table id='{tid}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>\n"


def _figure(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f"<figure><img src='data:image/png;base64,{data}' alt='{_e(caption)}' data-file='{_e(path.name)}'>"
            f"<figcaption>{_e(caption)}</figcaption></figure>\n")


def card_html(card: Mapping[str, Any], figures: Path | None = None) -> str:
    """The self-contained page of a card (figures read from ``figures`` when given)."""
    m = card["model"]
    title = f"Robustness card: {m['name']} ({m['architecture']}, {m['method']})"
    tiles = "".join(
        f"<div class='tile' data-key='{_e(h['key'])}'><div class='l'>{_e(h['label'])}</div>"
        f"<div class='v'>{_e(fmt(h['number']['value']))}</div>"
        f"<div class='ci'>95 % CI [{_e(fmt(h['number']['ci_low']))}, {_e(fmt(h['number']['ci_high']))}]</div>"
        f"<div class='n'>n = {h['number']['n']} · {'higher' if h['better'] == 'higher' else 'lower'} is better"
        f"</div></div>" for h in card["headline"])
    parts = [f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
             f"<style>{STYLE}</style></head><body>\n<h1>{_e(title)}</h1>\n",
             f"<p class='sub'>{_e(card['protocol']['id'])} · {_e(card['data']['n_test'])} test images · made "
             f"{_e(card['created'])} · every number: value [95 % interval] and the n it rests on</p>\n",
             f"<div class='panel' id='headline'>{tiles}</div>\n"]
    for t in tables(card):
        parts.append(_html_table(*t))
    if card["absent"]:
        items = "".join(f"<li><b>{_e(k)}</b>: {_e(v)}</li>" for k, v in card["absent"].items())
        parts.append(f"<h2>Not on this card</h2><ul class='absent' id='absent'>{items}</ul>\n")
    if card["unreliable"]:
        items = "".join(f"<li><code>{_e(u['path'])}</code>: {_e(u['why'])}</li>" for u in card["unreliable"])
        parts.append(f"<h2>Numbers resting on too little data</h2><ul class='unreliable' id='unreliable'>{items}</ul>\n")
    if figures is not None:
        shown = [(figures / name, caption) for name, caption in FIGURES if (figures / name).is_file()]
        if shown:
            parts.append("<h2>Figures</h2>\n" + "".join(_figure(p, c) for p, c in shown))
    facts = "".join(f"<tr><th class='t'>{_e(k)}</th><td class='t'>{_e(v)}</td></tr>" for k, v in _facts(card))
    parts.append(f"<h2>Model, data and protocol</h2><table id='table_facts'>{facts}</table>\n</body></html>\n")
    return "".join(parts)


# --------------------------------------------------------------------------------------
# Markdown and model-index
# --------------------------------------------------------------------------------------
def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _yaml_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a JSON string is a valid YAML double-quoted scalar


def model_index(card: Mapping[str, Any]) -> str:
    """The Hugging Face ``model-index`` YAML block: one result per headline and table number, the
    interval and n kept in the value string."""
    m, d = card["model"], card["data"]
    metrics = [(h["key"], h["label"], h["number"]) for h in card["headline"]]
    lines = ["model-index:", f"- name: {_yaml_string(m['name'])}", "  results:", "  - task:",
             "      type: image-classification", "      name: Galaxy morphology classification",
             "    dataset:", f"      name: {_yaml_string(Path(d['path']).name)}",
             "      type: deepadversaries-dataset", f"      revision: {d['sha256']}",
             "    metrics:"]
    for key, label, num in metrics:
        lines += [f"    - type: {key}", f"      name: {_yaml_string(label)}",
                  f"      value: {_yaml_string(fmt_number(num))}"]
    lines += ["    source:", f"      name: {_yaml_string('deepadv card, ' + card['protocol']['id'])}",
              "      url: https://github.com/deepskies/DeepAdversaries"]
    return "\n".join(lines) + "\n"


def card_markdown(card: Mapping[str, Any]) -> str:
    """``card.md``: headline, tables, absent and unreliable lists, facts, the model-index block."""
    m = card["model"]
    out = [f"# Robustness card: {m['name']} ({m['architecture']}, {m['method']})\n",
           f"{card['protocol']['id']}; every number: value [95 % interval] (n).\n", "## Headline\n",
           _md_table(["", "value [95 % CI] (n)", "better"],
                     [[h["label"], fmt_number(h["number"]), h["better"]] for h in card["headline"]])]
    for _, title, header, rows in tables(card):
        out += [f"## {title}\n", _md_table(header, rows)]
    if card["absent"]:
        out += ["## Not on this card\n", "".join(f"- **{k}**: {v}\n" for k, v in card["absent"].items())]
    if card["unreliable"]:
        out += ["## Numbers resting on too little data\n",
                "".join(f"- `{u['path']}`: {u['why']}\n" for u in card["unreliable"])]
    out += ["## Model, data and protocol\n", _md_table(["", ""], [[k, v] for k, v in _facts(card)])]
    out += ["## Hugging Face model-index\n", "```yaml\n" + model_index(card) + "```\n"]
    return "\n".join(out)


def render_card(card: Mapping[str, Any], out: str | Path) -> dict[str, Path]:
    """Write ``card.html``, ``card.md`` and ``model_index.yaml`` next to ``card.json`` in ``out``.

    Returns:
        ``{"html": path, "md": path, "model_index": path}``.
    """
    out = Path(out)
    paths = {"html": out / HTML_NAME, "md": out / MD_NAME, "model_index": out / MODEL_INDEX_NAME}
    write_text(paths["html"], card_html(card, out / FIGURES_DIR))
    write_text(paths["md"], card_markdown(card))
    write_text(paths["model_index"], model_index(card))
    return paths

