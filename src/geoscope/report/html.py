"""HTML assembly: escaped text, number cells, tables, figures and the page itself (inline CSS).

Every piece of text from data or the user passes through :func:`esc`; the page loads nothing
from the network.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence

import pandas as pd

from .examples import Example
from .seed import PublishedFigure
from .tables import MetricRow

DASH = "–"


def esc(text: object) -> str:
    """Text escaped for HTML content and attribute values."""
    return html.escape(str(text), quote=True)


def finite_or_none(value: object) -> float | None:
    """A finite float, or None for missing, non-numeric, NaN or infinite values."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def format_value(value: object, kind: str) -> str:
    """A number as the page shows it: ``count`` 1,234; ``km`` 12.3 / 292; ``score`` 3,210;
    ``share`` 14.3%; ``share2`` 14.34%; missing or NaN as a dash."""
    number = finite_or_none(value)
    if number is None:
        return DASH
    if kind == "count":
        return f"{round(number):,d}"
    if kind == "km":
        return f"{number:,.1f}" if number < 100 else f"{number:,.0f}"
    if kind == "share":
        return f"{100 * number:.1f}%"
    if kind == "share2":
        return f"{100 * number:.2f}%"
    return f"{number:,.0f}"


def num_cell(value: object, kind: str, *, best: bool = False, extra: str = "") -> str:
    """A right-aligned number cell carrying the exact value in ``data-value``."""
    number = finite_or_none(value)
    data = f' data-value="{number!r}"' if number is not None else ""
    classes = " ".join(c for c in ("num", "best" if best else "", extra) if c)
    return f'<td class="{classes}"{data}>{esc(format_value(value, kind))}</td>'


def table(header: Sequence[str], rows: Iterable[str], *, table_id: str = "", caption: str = "",
          header_html: str | None = None) -> str:
    """A table from already-rendered ``<tr>`` rows; header cells are escaped."""
    tid = f' id="{esc(table_id)}"' if table_id else ""
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    head = header_html or "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"
    return f"<table{tid}>{cap}<thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def metrics_table(rows: Sequence[MetricRow], names: Sequence[str], display: dict[str, str],
                  *, table_id: str = "metrics-table") -> str:
    """Metrics down, series across: the model's column first, each baseline beside it."""
    body = []
    for row in rows:
        best = row.best()
        cells = "".join(
            num_cell(row.values.get(n), row.kind, best=n == best, extra="model" if i == 0 else "")
            for i, n in enumerate(names)
        )
        body.append(f'<tr data-metric="{esc(row.key)}"><th scope="row">{esc(row.label)}</th>'
                    f"{cells}</tr>")
    header = "<tr><th>metric</th>" + "".join(
        f'<th data-series="{esc(n)}">{esc(display[n])}</th>' for n in names) + "</tr>"
    return table([], body, table_id=table_id, header_html=header)


def comparison_table(rows: Sequence[PublishedFigure]) -> str:
    """Name, dataset, accuracy, mean and median error of every compared model."""
    body = []
    for row in rows:
        kind = {"this evaluation": "ours", "seed": "seed"}.get(row.source, "user")
        body.append(
            f'<tr class="{kind}"><th scope="row">{esc(row.name)}</th><td>{esc(row.dataset)}</td>'
            f'{num_cell(row.accuracy, "share2")}{num_cell(row.mean_km, "km")}'
            f'{num_cell(row.median_km, "km")}<td class="source">{esc(row.source)}</td></tr>'
        )
    return table(["model", "dataset", "accuracy", "mean error (km)", "median error (km)", "source"],
                 body, table_id="comparison-table")


def split_table(per_split: dict[str, dict[str, dict]], names: Sequence[str],
                display: dict[str, str]) -> str:
    """One row per split; each metric's column group holds the model and every baseline."""
    labelled = any(finite_or_none(m.get("label_accuracy")) is not None
                   for per in per_split.values() for m in per.values())
    metrics = [("median_km", "median error (km)", "km", None),
               ("within_km", "within 25 km", "share", "25"),
               ("within_km", "within 750 km", "share", "750")]
    if labelled:
        metrics.append(("label_accuracy", "label accuracy", "share", None))
    top = '<tr><th rowspan="2">split</th><th rowspan="2">items</th>' + "".join(
        f'<th colspan="{len(names)}" class="group">{esc(title)}</th>' for _, title, _, _ in metrics
    ) + "</tr>"
    short = {n: "model" if i == 0 else display[n].removesuffix(" baseline")
             for i, n in enumerate(names)}
    sub = "<tr>" + "".join(f'<th class="sub" title="{esc(display[n])}">{esc(short[n])}</th>'
                           for _ in metrics for n in names) + "</tr>"
    body = []
    for split, per in per_split.items():
        count = per[names[0]].get("n")
        cells = []
        for key, _, kind, sub_key in metrics:
            values = {n: per.get(n, {}).get(key) for n in names}
            if sub_key is not None:
                values = {n: (v or {}).get(sub_key) for n, v in values.items()}
            better = "lower" if kind == "km" else "higher"
            best = MetricRow(key, "", kind, better, values).best()
            cells += [num_cell(values[n], kind, best=n == best, extra="model" if i == 0 else "")
                      for i, n in enumerate(names)]
        body.append(f'<tr data-split="{esc(split)}"><th scope="row">{esc(split)}</th>'
                    f'{num_cell(count, "count")}{"".join(cells)}</tr>')
    return table([], body, table_id="split-table", header_html=top + sub)


def per_label_html(frame: pd.DataFrame, names: Sequence[str], display: dict[str, str],
                   *, limit: int = 30) -> str:
    """Per-label accuracy, best first; beyond ``limit`` rows the middle is elided."""
    series = [n for n in names if n in frame]
    shown = frame
    if len(frame) > limit:
        shown = pd.concat([frame.head(limit // 2), frame.tail(limit // 2)])
    body = []
    for position, (_, row) in enumerate(shown.iterrows()):
        if len(frame) > limit and position == limit // 2:
            body.append(f'<tr class="elided"><td colspan="{len(series) + 3}">… '
                        f'{len(frame) - limit:,} more labels in per_label.csv …</td></tr>')
        cells = "".join(num_cell(row[n], "share", extra="model" if i == 0 else "")
                        for i, n in enumerate(series))
        body.append(f'<tr><th scope="row">{esc(row["label"])}</th>{num_cell(row["n"], "count")}'
                    f'{cells}{num_cell(row["median_km"], "km")}</tr>')
    header = ["label", "items", *(f"{display[n]} accuracy" for n in series), "median error (km)"]
    return table(header, body, table_id="per-label-table")


def figure(src: str, alt: str, caption: str = "", *, fig_id: str = "", narrow: bool = False) -> str:
    """An image figure with an optional caption; ``narrow`` caps its width (square plots)."""
    fid = f' id="{esc(fig_id)}"' if fig_id else ""
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    cls = "plot narrow" if narrow else "plot"
    return f'<figure class="{cls}"{fid}><img src="{esc(src)}" alt="{esc(alt)}">{cap}</figure>'


def example_grid(examples: Sequence[Example], grid_id: str) -> str:
    """Thumbnails captioned "Predicted: X  True: Y" and the error in km."""
    cards = []
    for ex in examples:
        state = {True: " hit", False: " miss"}.get(ex.correct, "")
        img = (f'<img src="{esc(ex.thumbnail)}" alt="{esc(ex.title)}" title="{esc(ex.source)}">'
               if ex.thumbnail else f'<div class="missing">{esc(ex.source)}</div>')
        cards.append(f'<figure class="example{state}">{img}<figcaption>'
                     f'<span class="title">{esc(ex.title)}</span>'
                     f'<span class="error">{esc(ex.error)}</span></figcaption></figure>')
    if not cards:
        return f'<p class="note" id="{esc(grid_id)}">No predictions to show.</p>'
    return f'<div class="grid" id="{esc(grid_id)}">{"".join(cards)}</div>'


def section(section_id: str, title: str, body: str, intro: str = "") -> str:
    """A top-level report section; ``intro`` is escaped, ``body`` is HTML."""
    lead = f'<p class="intro">{esc(intro)}</p>' if intro else ""
    return (f'<section id="{esc(section_id)}"><h2>{esc(title)}</h2>{lead}{body}</section>')


def note(text: str) -> str:
    """An escaped explanatory paragraph (why a section has nothing to show)."""
    return f'<p class="note">{esc(text)}</p>'


def page(title: str, facts: Sequence[tuple[str, str]], sections: Sequence[tuple[str, str, str]],
         *, generator: str) -> str:
    """The whole document: header with key facts, a table of contents, then the sections.

    ``sections`` holds ``(id, heading, html)``.
    """
    toc = "".join(f'<li><a href="#{esc(sid)}">{esc(heading)}</a></li>'
                  for sid, heading, _ in sections)
    fact_html = "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(v)}</dd></div>" for k, v in facts)
    body = "".join(html_ for _, _, html_ in sections)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="{esc(generator)}">
<title>{esc(title)}</title>
<style>{CSS}</style>
</head>
<body>
<header><h1>{esc(title)}</h1><dl class="facts">{fact_html}</dl>
<nav><ol>{toc}</ol></nav></header>
<main>{body}</main>
<footer>Written by {esc(generator)}. Opens offline: every figure lies beside this file.</footer>
</body>
</html>
"""


CSS = """
:root { --ink: #1d2430; --muted: #5b6573; --line: #dde2e8; --accent: #1f5fa8; --bg: #f7f8fa; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
header, main, footer { max-width: 1180px; margin: 0 auto; padding: 0 24px; }
header { padding-top: 28px; }
h1 { font-size: 26px; margin: 0 0 10px; }
h2 { font-size: 20px; margin: 0 0 6px; }
h3 { font-size: 16px; margin: 22px 0 8px; }
.facts { display: flex; flex-wrap: wrap; gap: 8px 28px; margin: 0 0 12px; }
.facts dt { font-size: 12px; color: var(--muted); text-transform: uppercase;
  letter-spacing: .04em; }
.facts dd { margin: 0; font-weight: 600; }
nav ol { display: flex; flex-wrap: wrap; gap: 6px 18px; list-style: none; padding: 10px 0;
  margin: 0; border-top: 1px solid var(--line); border-bottom: 1px solid var(--line); }
nav a { color: var(--accent); text-decoration: none; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px;
  padding: 18px 22px; margin: 20px 0; }
.intro, .note { color: var(--muted); margin: 0 0 12px; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 14px; }
caption { text-align: left; color: var(--muted); padding-bottom: 4px; }
th, td { padding: 5px 12px; border-bottom: 1px solid var(--line); text-align: left; }
thead th { background: #eef2f7; font-weight: 600; }
th.group { text-align: center; border-left: 2px solid #fff; }
th.sub { font-weight: 500; font-size: 12px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.model { background: #f1f6fd; }
td.best { font-weight: 700; color: #145a32; }
tbody tr:hover { background: #fafbfd; }
tr.seed th, tr.seed td, tr.user th, tr.user td { color: #3c4654; }
tr.ours th { color: var(--accent); }
tr.elided td { text-align: center; color: var(--muted); font-style: italic; }
td.source { color: var(--muted); font-size: 12px; }
.scroll { overflow-x: auto; }
figure { margin: 0; }
figure.plot { margin: 10px 0 16px; }
figure.plot img { max-width: 100%; max-height: 900px; height: auto; display: block;
  border: 1px solid var(--line); border-radius: 4px; }
figure.plot.narrow img { max-width: min(100%, 720px); }
figure.plot figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
.grid { display: grid; grid-template-columns: repeat(4, minmax(0, 1fr)); gap: 14px; }
@media (max-width: 900px) { .grid { grid-template-columns: repeat(2, minmax(0, 1fr)); } }
figure.example { background: var(--bg); border: 1px solid var(--line); border-radius: 6px;
  overflow: hidden; }
figure.example img { width: 100%; height: auto; display: block; }
figure.example .missing { height: 150px; padding: 10px; font-size: 12px; color: var(--muted); }
figure.example figcaption { padding: 6px 8px; font-size: 13px; }
figure.example .title { display: block; white-space: pre-wrap; font-weight: 600; }
figure.example .error { display: block; color: var(--muted); }
figure.example.hit { border-top: 3px solid #2a9d5c; }
figure.example.miss { border-top: 3px solid #c0392b; }
footer { color: var(--muted); font-size: 12px; padding-bottom: 30px; }
"""
