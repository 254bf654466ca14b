"""Robustness cards side by side: ``deepadv leaderboard CARD… --out DIR``.

:func:`leaderboard` reads cards (``card.json`` or folders holding one; each validated against
the shipped schema, :func:`deepadversaries.card.build.read_card`), ranks them and writes
``leaderboard.csv`` (one row per card: every headline number's value, ci_low, ci_high and n),
``leaderboard.md`` and ``leaderboard.html`` (one self-contained page; each column sorts on a
click, in plain inline JavaScript — ``leaderboard.html#sort=K`` opens it sorted by column K,
ascending; every number shown with its 95 % interval and n).

Only cards measured the same way share a ranking: the same test data (the card's
``data.sha256``) and the same protocol (``protocol.id``: protocol version, level and
labelled/label-free mode; and ``protocol.fingerprint``, the settings its stages actually used,
which differ when a card reused stages run with other settings). Cards that differ are refused with one line naming them, or, with
``group=True``, ranked in separate groups, never mixed. The ranking sorts by one headline
number (:data:`DEFAULT_SORT`, the first present; lower first where lower is better), with the
card's name breaking ties; a card without that number comes last. A rank is an order of point
estimates: two cards whose intervals overlap are not shown to differ, and the page says so.

Pooled over seeds (:func:`pool_cards`, :func:`pooled_leaderboard`; ``deepadv study`` writes one):
the cards of one (architecture, method) trained with different seeds become one row whose every
headline number is the mean over seeds with a Student-t interval over seeds
(:func:`deepadversaries.analysis.stats.t_interval`; ``n`` counts seeds, the per-seed image
counts are kept beside it). With one seed the interval is undefined and shown as such: seeds,
not images, are what vary between trained models. Pooled cards must share the protocol;
their datasets may differ (a study's ``--data-seeds``), and the row then says so.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deepadversaries.analysis.stats import t_interval
from deepadversaries.card.build import CARD_NAME, NUMBER_RANGES, read_card
from deepadversaries.card.render import fmt_number
from deepadversaries.errors import OptionError, file_error
from deepadversaries.io import write_csv, write_text

CSV_NAME = "leaderboard.csv"
MD_NAME = "leaderboard.md"
HTML_NAME = "leaderboard.html"
#: the headline numbers a leaderboard ranks by when not told, the first a card has
DEFAULT_SORT = ("corruption_accuracy", "corruption_stability", "clean_accuracy", "one_pixel_flip_rate")
SCRIPT = """
function sortBy(th){const table=th.closest('table');const col=th.cellIndex;const body=table.tBodies[0];
const asc=th.dataset.order!=='asc';for(const h of table.tHead.rows[0].cells){delete h.dataset.order;}
th.dataset.order=asc?'asc':'desc';const rows=Array.from(body.rows);
rows.sort((a,b)=>{const x=a.cells[col].dataset.v,y=b.cells[col].dataset.v;
const fx=parseFloat(x),fy=parseFloat(y);let c;
if(!isNaN(fx)&&!isNaN(fy)){c=fx-fy;}else if(isNaN(fx)&&!isNaN(fy)){return 1;}else if(!isNaN(fx)&&isNaN(fy)){return -1;}
else{c=String(x).localeCompare(String(y));}return asc?c:-c;});for(const r of rows){body.appendChild(r);}}
document.addEventListener('DOMContentLoaded',()=>{for(const th of document.querySelectorAll('th[data-sortable]')){
th.addEventListener('click',()=>sortBy(th));}
const m=/^#sort=(\\d+)$/.exec(location.hash);if(m){for(const t of document.querySelectorAll('table.board')){
const th=t.tHead.rows[0].cells[+m[1]];if(th){sortBy(th);}}}document.body.dataset.ready='yes';});
"""
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1300px;
padding:0 1em;color:#1b1b1b}table{border-collapse:collapse;margin:.6em 0 1.6em}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#eef;cursor:pointer;user-select:none}
th[data-order=asc]::after{content:' ▲'}th[data-order=desc]::after{content:' ▼'}td.t,th.t{text-align:left}
.sub{color:#555}
"""


def _card_path(path: Path) -> Path:
    return path / CARD_NAME if path.is_dir() else path


def _name(path: Path) -> str:
    """A card's name on the board: its folder's name."""
    path = _card_path(path)
    return path.parent.name or path.stem


def group_key(card: Mapping[str, Any]) -> tuple[str, str]:
    """What must be equal for two cards to share a ranking: (data SHA-256, protocol id with the
    fingerprint of the settings its stages used, when the card records one)."""
    fingerprint = card["protocol"].get("fingerprint")
    return card["data"]["sha256"], card["protocol"]["id"] + (f" ({fingerprint})" if fingerprint else "")


def _describe(key: tuple[str, str], card: Mapping[str, Any]) -> str:
    return f"data {Path(card['data']['path']).name} (sha256 {key[0][:12]}…), protocol {key[1]}"


def _numbers(card: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """A card's headline numbers, then its board numbers (schema 1.1), each ``{key, label, number, better}``."""
    return [*card["headline"], *card.get("board", [])]


def _measured_differently(cards: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Headline keys whose label differs between the cards (the one-pixel flip rate is the certified
    bound, the corner search's or DE's rate, whichever a card has): {key: [labels]}."""
    labels: dict[str, list[str]] = {}
    for card in cards:
        for h in card.get("headline", []):
            if h["label"] not in labels.setdefault(h["key"], []):
                labels[h["key"]].append(h["label"])
    return {k: v for k, v in labels.items() if len(v) > 1}


def _columns(cards: Sequence[Mapping[str, Any]], drop_repeats: bool = True) -> list[dict[str, str]]:
    """The board's columns: every headline key, then every board key, of any card, each once. A
    headline key that the cards measure differently (:func:`_measured_differently`) gets no column:
    its numbers are not comparable, and each method's own board column shows them. With
    ``drop_repeats`` (a board, not a pooling) a board column that repeats a headline number on every
    card (DE's rate, where DE is the only one-pixel search the cards ran) is left out."""
    mixed = _measured_differently(cards)
    cols: dict[str, dict[str, str]] = {}
    for part in ("headline", "board"):
        for card in cards:
            for h in card.get(part, []):
                if part == "headline" and h["key"] in mixed:
                    continue
                cols.setdefault(h["key"], {"key": h["key"], "label": h["label"], "better": h["better"],
                                           "part": part})
    headline_keys = [k for k, c in cols.items() if c["part"] == "headline"]
    return [c for c in cols.values() if c["part"] == "headline" or not drop_repeats
            or not any(_repeats(cards, c["key"], h) for h in headline_keys)]


def _repeats(cards: Sequence[Mapping[str, Any]], board_key: str, headline_key: str) -> bool:
    """Whether, on every card, the board number ``board_key`` is the headline number ``headline_key``."""
    def number(card: Mapping[str, Any], part: str, key: str) -> Any:
        return next((h["number"] for h in card.get(part, []) if h["key"] == key), None)

    return all(number(c, "board", board_key) == number(c, "headline", headline_key) for c in cards)


def _value(card: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    for h in _numbers(card):
        if h["key"] == key:
            return h["number"]
    return None


def rank(entries: Sequence[dict[str, Any]], sort: str, better: str) -> list[dict[str, Any]]:
    """Entries ({"name", "card"}) ordered by the headline number ``sort`` (higher first when
    ``better`` is "higher"), ties by name, cards without the number last; adds ``rank`` (1…)."""
    def key(e: dict[str, Any]) -> tuple[int, float, str]:
        num = _value(e["card"], sort)
        if num is None or num["value"] is None:
            return (1, 0.0, e["name"])
        return (0, -num["value"] if better == "higher" else num["value"], e["name"])

    ordered = sorted(entries, key=key)
    return [{**e, "rank": i + 1} for i, e in enumerate(ordered)]


def leaderboard(cards: Sequence[str | Path], out: str | Path, *, group: bool = False,
                sort: str | None = None, pool_seeds: bool = False) -> dict[str, Any]:
    """Rank cards and write ``leaderboard.{csv,md,html}`` in ``out``.

    Args:
        cards: ``card.json`` files or card folders (at least one; each read once).
        out: the folder to write.
        group: rank cards of different data or protocols in separate groups [default: False:
            refuse them].
        sort: the headline key to rank by [default: the first of :data:`DEFAULT_SORT` present].
        pool_seeds: one row per (architecture, method) and protocol: the cards of its training
            seeds pooled (:func:`pool_cards`: means with a t-interval over seeds), e.g. the cards
            of several studies; rows of different data or protocols are ranked in separate
            groups [default: False: one row per card].

    Returns:
        ``{"groups": [{"data_sha256", "protocol", "sort", "rows": [{"rank", "name", "path"}]}],
        "files": [...]}``.

    Raises:
        FileError: a missing or invalid card, one of an unknown schema version, cards of
            different data or protocols without ``group``, the same card twice.
        OptionError: no card, or a ``sort`` key no card has.
    """
    if not cards:
        raise OptionError("give at least one card (card.json or a card folder)")
    if pool_seeds:
        return _seed_pooled_board(cards, Path(out), sort)
    out = Path(out)
    entries, seen = [], {}
    for path in map(Path, cards):
        card = read_card(path)
        resolved = _card_path(path).resolve()
        if resolved in seen:
            raise file_error(path, "is given twice")
        seen[resolved] = True
        entries.append({"name": _name(path), "path": str(_card_path(path)), "card": card})
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for e in entries:
        groups.setdefault(group_key(e["card"]), []).append(e)
    if len(groups) > 1 and not group:
        (k1, g1), (k2, g2) = list(groups.items())[:2]
        raise file_error(g2[0]["path"], f"cannot share a ranking with {g1[0]['path']}: {_describe(k2, g2[0]['card'])} "
                                        f"against {_describe(k1, g1[0]['card'])}; rank cards of one dataset and "
                                        "protocol, or pass --group to rank each group apart")
    return _write_board(out, *_ranked_groups(groups, sort))


def _seed_pooled_board(cards: Sequence[str | Path], out: Path, sort: str | None) -> dict[str, Any]:
    """:func:`leaderboard` with ``pool_seeds``: cards sorted into rows by (architecture, method, data,
    protocol id), each row's seeds pooled; two cards of one row with the same training seed are refused."""
    rows: dict[tuple[str, str, str, str], list[Path]] = {}
    seeds: dict[tuple[str, str, str, str], dict[Any, Path]] = {}
    seen: set[Path] = set()
    for path in map(Path, cards):
        card = read_card(path)
        resolved = _card_path(path).resolve()
        if resolved in seen:
            raise file_error(path, "is given twice")
        seen.add(resolved)
        m = card["model"]
        row = (m["architecture"], m["method"], card["data"]["sha256"], card["protocol"]["id"])
        seed = m.get("training_seed")
        if seed in seeds.setdefault(row, {}):
            raise file_error(path, f"has the training seed {seed} of {seeds[row][seed]} ({m['architecture']}, "
                                   f"{m['method']}); pool the cards of different seeds only")
        seeds[row][seed] = path
        rows.setdefault(row, []).append(path)
    cell_cards: dict[str, Sequence[str | Path]] = {}
    for key, paths in rows.items():
        name = f"{key[0]}_{key[1]}".replace(":", "-").replace("+", "-")
        if sum(k[:2] == key[:2] for k in rows) > 1:  # the same model on other data or protocols: another group's row
            name += f" ({sum(n.startswith(name + ' (') for n in cell_cards) + 1})"
        cell_cards[name] = paths
    return pooled_leaderboard(cell_cards, out, sort=sort)


def _ranked_groups(groups: Mapping[tuple[str, str], list[dict[str, Any]]], sort: str | None
                   ) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Each group of entries ranked by ``sort`` (or the first of :data:`DEFAULT_SORT` its cards have), and the
    board's columns.

    Raises:
        OptionError: a ``sort`` key no card has, or one the cards measure differently.
    """
    all_cards = [e["card"] for members in groups.values() for e in members]
    columns = _columns(all_cards)
    keys = [c["key"] for c in columns]
    mixed = _measured_differently(all_cards)
    if sort is not None and sort in mixed:
        raise OptionError(f"--sort {sort}: the cards measure it differently ({'; '.join(mixed[sort])}); "
                          f"sort by one of {', '.join(keys)}")
    if sort is not None and sort not in keys:
        raise OptionError(f"unknown --sort {sort!r}; choose one of {', '.join(keys)}")
    result_groups = []
    for (sha, protocol), members in groups.items():
        present = [c["key"] for c in _columns([e["card"] for e in members]) if c["key"] in keys]
        key = sort or next((k for k in DEFAULT_SORT if k in present), present[0] if present else keys[0])
        better = next(c["better"] for c in columns if c["key"] == key)
        result_groups.append({"data_sha256": sha, "protocol": protocol, "data": members[0]["card"]["data"]["path"],
                              "sort": key, "better": better, "rows": rank(members, key, better)})
    return result_groups, columns


def _write_board(out: Path, result_groups: list[dict[str, Any]], columns: list[dict[str, str]]) -> dict[str, Any]:
    """Write ``leaderboard.{csv,md,html}`` of ranked groups; the summary :func:`leaderboard` returns."""
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / CSV_NAME, result_groups, columns)
    write_text(out / MD_NAME, leaderboard_markdown(result_groups, columns))
    write_text(out / HTML_NAME, leaderboard_html(result_groups, columns))
    return {"groups": [{k: v if k != "rows" else [{"rank": r["rank"], "name": r["name"], "path": r["path"]}
                                                  for r in v] for k, v in g.items()} for g in result_groups],
            "files": [str(out / n) for n in (CSV_NAME, MD_NAME, HTML_NAME)]}


def pool_cards(cards: Sequence[Mapping[str, Any]], name: str) -> dict[str, Any]:
    """One leaderboard entry from the cards of one (architecture, method) over seeds.

    Args:
        cards: validated cards (``read_card``), one per seed, all of one architecture, method and
            protocol id.
        name: the row's name (e.g. ``convnet_mmd``).

    Returns:
        A card-shaped dict (``model``, ``data``, ``protocol``, ``headline``) whose every headline
        number is ``{"value": mean over seeds, "ci_low", "ci_high": t-interval over seeds (None
        with one seed), "n": seeds, "method", "per_seed": [values], "images": [n per seed]}``.

    Raises:
        OptionError: no card, or cards of different architectures, methods or protocols.
    """
    if not cards:
        raise OptionError("pooling needs at least one card")
    first = cards[0]
    for key, what in ((lambda c: c["model"]["architecture"], "architecture"), (lambda c: c["model"]["method"], "method"),
                      (lambda c: c["protocol"]["id"], "protocol")):
        values = sorted({str(key(c)) for c in cards})
        if len(values) > 1:
            raise OptionError(f"cannot pool cards of different {what}s over seeds: {', '.join(values)}")
    shas = [c["data"]["sha256"] for c in cards]
    same_data = len(set(shas)) == 1
    data = dict(first["data"]) if same_data else {
        "sha256": "per-seed:" + ",".join(s[:12] for s in shas), "path": str(Path(first["data"]["path"]).parent)}
    pooled: dict[str, list[dict[str, Any]]] = {"headline": [], "board": []}
    for column in _columns(cards, drop_repeats=False):  # every number pooled; the board drops repeats
        numbers = [_value(c, column["key"]) for c in cards]
        values = [float("nan") if n is None or n["value"] is None else float(n["value"]) for n in numbers]
        interval = t_interval(values, bounds=NUMBER_RANGES.get(column["key"]))
        finite = lambda x: None if x is None or x != x else float(x)  # noqa: E731 (NaN -> None)
        part = column.pop("part")
        pooled[part].append({**column, "number": {
            "value": finite(interval.estimate), "ci_low": finite(interval.low), "ci_high": finite(interval.high),
            "n": interval.n, "method": f"mean over seeds, {interval.method}",
            "per_seed": [finite(v) for v in values], "images": [None if n is None else n.get("n") for n in numbers]}})
    protocol = {"id": f"{first['protocol']['id']}, pooled over seeds"}
    return {"name": name, "model": first["model"], "data": data, "protocol": protocol, "headline": pooled["headline"],
            "board": pooled["board"],
            "seeds": len(cards), "same_data": same_data}


def pooled_leaderboard(cell_cards: Mapping[str, Sequence[str | Path]], out: str | Path, *,
                       sort: str | None = None) -> dict[str, Any]:
    """The leaderboard of a study: one row per cell (architecture, method) pooled over its seeds.

    Args:
        cell_cards: row name → the card files or folders of its seeds (each read and validated).
        out: the folder to write ``leaderboard.{csv,md,html}`` in.
        sort: the headline key to rank by [default: the first of :data:`DEFAULT_SORT` present].

    Returns:
        As :func:`leaderboard`; rows of different protocols are ranked in separate groups.

    Raises:
        FileError: a missing or invalid card. OptionError: no row, a row without cards, or a
            ``sort`` key no row has.
    """
    if not cell_cards:
        raise OptionError("give at least one cell's cards")
    entries = []
    for name, paths in cell_cards.items():
        pooled = pool_cards([read_card(Path(p)) for p in paths], name)
        entries.append({"name": name, "path": ", ".join(str(_card_path(Path(p))) for p in paths), "card": pooled})
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for e in entries:
        groups.setdefault(group_key(e["card"]), []).append(e)
    return _write_board(Path(out), *_ranked_groups(groups, sort))


def _write_csv(path: Path, groups: Sequence[Mapping[str, Any]], columns: Sequence[Mapping[str, str]]) -> None:
    fields = ["group", "rank", "name", "architecture", "method", "parameters", "data_sha256", "protocol", "card"]
    for c in columns:
        fields += [c["key"], f"{c['key']}_ci_low", f"{c['key']}_ci_high", f"{c['key']}_n"]
    rows = []
    for gi, g in enumerate(groups, 1):
        for r in g["rows"]:
            m = r["card"]["model"]
            row = {"group": gi, "rank": r["rank"], "name": r["name"], "architecture": m["architecture"],
                   "method": m["method"], "parameters": m["parameters"], "data_sha256": g["data_sha256"],
                   "protocol": g["protocol"], "card": r["path"]}
            for c in columns:
                num = _value(r["card"], c["key"]) or {}
                row.update({c["key"]: num.get("value"), f"{c['key']}_ci_low": num.get("ci_low"),
                            f"{c['key']}_ci_high": num.get("ci_high"), f"{c['key']}_n": num.get("n")})
            rows.append(row)
    write_csv(path, rows, fields)


def _heading(g: Mapping[str, Any], i: int, total: int) -> str:
    prefix = f"Group {i}: " if total > 1 else ""
    return (f"{prefix}{Path(g['data']).name} (sha256 {g['data_sha256'][:12]}…), {g['protocol']}; "
            f"ranked by {g['sort']} ({g['better']} is better)")


def leaderboard_markdown(groups: Sequence[Mapping[str, Any]], columns: Sequence[Mapping[str, str]]) -> str:
    """``leaderboard.md``: one table per group, every number value [95 % CI] (n)."""
    out = ["# Robustness leaderboard\n",
           "Every number: value [95 % interval] (n). A rank orders point estimates; cards whose intervals "
           "overlap are not shown to differ.\n"]
    for i, g in enumerate(groups, 1):
        header = ["rank", "card", "model", *[c["label"] for c in columns]]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in g["rows"]:
            m = r["card"]["model"]
            cells = [str(r["rank"]), r["name"], f"{m['architecture']} {m['method']}"]
            cells += [fmt_number(_value(r["card"], c["key"])) if _value(r["card"], c["key"]) else "–" for c in columns]
            lines.append("| " + " | ".join(cells) + " |")
        out += [f"## {_heading(g, i, len(groups))}\n", "\n".join(lines) + "\n"]
    return "\n".join(out)


def _sort_value(num: Mapping[str, Any] | None) -> str:
    return "" if num is None or num["value"] is None else repr(float(num["value"]))


def leaderboard_html(groups: Sequence[Mapping[str, Any]], columns: Sequence[Mapping[str, str]]) -> str:
    """``leaderboard.html``: a self-contained page, one sortable table per group."""
    e = html.escape
    parts = ["<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>Robustness leaderboard</title>"
             f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body>\n<h1>Robustness leaderboard</h1>\n"
             "<p class='sub'>Every number: value [95 % interval] and the n it rests on. Click a column to sort. "
             "A rank orders point estimates; cards whose intervals overlap are not shown to differ.</p>\n"]
    for i, g in enumerate(groups, 1):
        head = ("<th data-sortable class='t'>rank</th><th data-sortable class='t'>card</th>"
                "<th data-sortable class='t'>model</th><th data-sortable>parameters</th>"
                + "".join(f"<th data-sortable title='{e(c['better'])} is better'>{e(c['label'])}</th>"
                          for c in columns))
        body = []
        for r in g["rows"]:
            m = r["card"]["model"]
            cells = [f"<td class='t' data-v='{r['rank']}'>{r['rank']}</td>",
                     f"<td class='t' data-v='{e(r['name'])}'>{e(r['name'])}</td>",
                     f"<td class='t' data-v='{e(m['architecture'] + ' ' + m['method'])}'>"
                     f"{e(m['architecture'])} {e(m['method'])}</td>",
                     f"<td data-v='{m['parameters']}'>{m['parameters']:,}</td>"]
            for c in columns:
                num = _value(r["card"], c["key"])
                cells.append(f"<td data-v='{_sort_value(num)}'>{e(fmt_number(num) if num else '–')}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        parts.append(f"<h2>{e(_heading(g, i, len(groups)))}</h2>\n<table class='board' id='board{i}'><thead><tr>"
                     f"{head}</tr></thead><tbody>{''.join(body)}</tbody></table>\n")
    parts.append(f"<p class='sub'>{e(json.dumps([c['key'] for c in columns]))}</p></body></html>\n")
    return "".join(parts)

