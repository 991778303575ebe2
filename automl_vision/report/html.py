"""Building blocks of the self-contained HTML pages: the page frame, inline images, tables.

Pages open from a file with no network and inside the Kubeflow Pipelines UI's HTML viewer
(an ``iframe`` with ``srcdoc`` and ``sandbox="allow-scripts"``: scripts run, but there is no
same origin, so no storage, no fetch of sibling files). Hence: every image is a ``data:`` URI,
the only script is the small table sorter below, and nothing is loaded from anywhere else.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: figures are only ever written to PNG
import matplotlib.pyplot as plt  # noqa: E402

esc = html.escape

CSS = """
:root { --fg: #1d2433; --muted: #5b6474; --line: #d9dde5; --bg: #f6f7f9; --accent: #1f5fbf; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: var(--fg); background: #fff; }
header { background: var(--bg); border-bottom: 1px solid var(--line); padding: 16px 24px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 0; color: var(--muted); }
nav { padding: 8px 24px; border-bottom: 1px solid var(--line); font-size: 14px; position: sticky; top: 0;
      background: #fff; z-index: 2; }
nav a { color: var(--accent); margin-right: 14px; text-decoration: none; white-space: nowrap; }
main { max-width: 1200px; margin: 0 auto; padding: 8px 24px 40px; }
section { margin-top: 28px; }
h2 { font-size: 19px; border-bottom: 2px solid var(--line); padding-bottom: 4px; margin: 0 0 12px; }
h3 { font-size: 16px; margin: 18px 0 8px; }
p.note, .note { color: var(--muted); font-size: 14px; }
figure { margin: 12px 0; }
/* content-box: the border goes around the picture, never eats into it (shown at its own size) */
figure img { box-sizing: content-box; max-width: calc(100% - 2px); height: auto; border: 1px solid var(--line);
             background: #fff; }
figcaption { color: var(--muted); font-size: 14px; margin-top: 4px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { background: var(--bg); border: 1px solid var(--line); border-radius: 6px; padding: 10px 14px;
        min-width: 150px; }
.card .k { color: var(--muted); font-size: 13px; }
.card .v { font-size: 19px; font-weight: 600; overflow-wrap: anywhere; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 14px; width: 100%; }
th, td { border-bottom: 1px solid var(--line); padding: 5px 8px; text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: var(--bg); white-space: nowrap; }
th.sortable { cursor: pointer; user-select: none; }
th.sortable::after { content: " \\2195"; color: #9aa3b2; }
th[aria-sort="ascending"]::after { content: " \\25B2"; color: var(--fg); }
th[aria-sort="descending"]::after { content: " \\25BC"; color: var(--fg); }
tr.best td { background: #eaf5ea; }
td.nowrap { white-space: nowrap; }
td.why { min-width: 260px; }
.bad { color: #b3261e; }
.good { color: #1b7f3b; }
details summary { cursor: pointer; color: var(--accent); margin: 6px 0; }
pre { background: var(--bg); border: 1px solid var(--line); padding: 8px 10px; overflow-x: auto;
      font-size: 13px; white-space: pre-wrap; }
dl.kv { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 0; font-size: 14px; }
dl.kv dt { color: var(--muted); }
dl.kv dd { margin: 0; overflow-wrap: anywhere; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(180px, 1fr)); gap: 12px; }
.gallery figure { margin: 0; }
.gallery img { width: 100%; image-rendering: auto; }
"""

# Click a header to sort by it; click again to reverse. Cells sort by data-v when present
# (numbers), else by their text. Empty values go last either way.
SORT_JS = """
(function () {
  function key(cell) {
    var v = cell.getAttribute('data-v');
    if (v === null) { v = cell.textContent.trim(); }
    if (v === '' || v === '-') { return null; }
    var n = Number(v);
    return isNaN(n) ? v.toLowerCase() : n;
  }
  document.querySelectorAll('table.sortable').forEach(function (table) {
    var heads = table.querySelectorAll('thead th');
    heads.forEach(function (th, col) {
      th.classList.add('sortable');
      th.setAttribute('title', 'sort by this column');
      th.addEventListener('click', function () {
        var asc = th.getAttribute('aria-sort') !== 'ascending';
        heads.forEach(function (h) { h.removeAttribute('aria-sort'); });
        th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = key(a.cells[col]), y = key(b.cells[col]);
          if (x === null && y === null) { return 0; }
          if (x === null) { return 1; }
          if (y === null) { return -1; }
          if (typeof x !== typeof y) { x = String(x); y = String(y); }
          var c = x < y ? -1 : (x > y ? 1 : 0);
          return asc ? c : -c;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
})();
"""


@dataclass(frozen=True)
class Section:
    """One titled part of a page; ``body`` is trusted HTML built with the helpers of this module."""

    id: str
    title: str
    body: str


def page(title: str, subtitle: str, sections: Sequence[Section], *, script: bool = False) -> str:
    """A whole HTML document with a navigation bar linking every section."""
    nav = "".join(f'<a href="#{esc(s.id)}">{esc(s.title)}</a>' for s in sections)
    body = "\n".join(
        f'<section id="{esc(s.id)}" data-section="{esc(s.id)}">\n<h2>{esc(s.title)}</h2>\n{s.body}\n</section>'
        for s in sections
    )
    js = f"<script>{SORT_JS}</script>" if script else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        # The favicon link stops the browser asking the file's folder (or the viewer's host) for one.
        "<link rel=\"icon\" href=\"data:,\">\n"
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header>\n"
        f"<nav>{nav}</nav>\n<main>\n{body}\n</main>\n{js}\n</body>\n</html>\n"
    )


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure_png(fig, dpi: int = 100) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def image_png(image) -> bytes:
    """A PIL image as PNG bytes."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def img(png: bytes, alt: str, caption: str = "", *, width: int | None = None) -> str:
    """An inline ``<figure>`` showing ``png``."""
    w = f' style="width:{width}px"' if width else ""
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f'<figure><img src="{png_data_uri(png)}" alt="{esc(alt)}"{w}>{cap}</figure>'


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def cards(items: Iterable[tuple[str, Any]]) -> str:
    out = "".join(f'<div class="card"><div class="k">{esc(k)}</div><div class="v">{esc(str(v))}</div></div>'
                  for k, v in items)
    return f'<div class="cards">{out}</div>'


def key_values(items: Iterable[tuple[str, Any]]) -> str:
    out = "".join(f"<dt>{esc(k)}</dt><dd>{esc(str(v))}</dd>" for k, v in items)
    return f'<dl class="kv">{out}</dl>'


@dataclass(frozen=True)
class Cell:
    """A table cell: the text shown, and the value it sorts by (None: the text)."""

    text: str
    sort: float | str | None = None
    numeric: bool = False
    css: str = ""


def table(headers: Sequence[str | tuple[str, bool]], rows: Sequence[Sequence[Cell]], *, sortable: bool = False,
          row_css: Sequence[str] | None = None, table_id: str = "") -> str:
    """An HTML table; a header given as ``(name, True)`` is a numeric column (right-aligned)."""
    heads = []
    for h in headers:
        name, numeric = (h, False) if isinstance(h, str) else h
        heads.append(f'<th class="num">{esc(name)}</th>' if numeric else f"<th>{esc(name)}</th>")
    body = []
    for i, row in enumerate(rows):
        cells = []
        for c in row:
            classes = " ".join(x for x in ("num" if c.numeric else "", c.css) if x)
            attrs = f' class="{classes}"' if classes else ""
            if c.sort is not None:
                attrs += f' data-v="{esc(str(c.sort))}"'
            cells.append(f"<td{attrs}>{esc(c.text)}</td>")
        css = f' class="{row_css[i]}"' if row_css and row_css[i] else ""
        body.append(f"<tr{css}>{''.join(cells)}</tr>")
    cls = ' class="sortable"' if sortable else ""
    ident = f' id="{esc(table_id)}"' if table_id else ""
    return (f'<div class="scroll"><table{cls}{ident}><thead><tr>{"".join(heads)}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def fmt_number(value: Any, digits: int = 4) -> str:
    """A metric or hyperparameter value for display: ``-`` for missing, 4 significant digits for floats."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return "NaN" if value != value else f"{value:.{digits}g}"
    return str(value)
