"""A small document model rendered to Markdown and to self-contained HTML (the reports).

Blocks: :class:`Heading`, :class:`Para` (``**bold**``, ``*italic*`` and `` `code` `` inline),
:class:`Bullets`, :class:`Table`, :class:`Figure` (a PNG or GIF, embedded in the HTML as a
base64 data URI) and :class:`Code` (a folded block). :func:`render_html` gives one file that
opens offline; a small inline script marks each image that decoded
(``data-rendered="yes"``), which the browser test reads. Table cells holding
``held``/``contradicted``/``inconclusive`` (and the older ``held``/``not held``) are
coloured.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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


VERDICT_CLASSES = {"held": "held", "not held": "notheld", "contradicted": "notheld", "not testable": "na",
                   "inconclusive": "na"}


def _cell_class(text: str, column: str) -> str:
    classes = []
    if text in VERDICT_CLASSES:
        classes.append(VERDICT_CLASSES[text])
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
