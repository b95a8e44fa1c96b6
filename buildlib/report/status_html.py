"""`doit status --html FILE`: the status matrix as one self-contained HTML file (no network, no script).

The matrix is colored by state; each cell opens (a <details> element) onto the engine's key fields, build time,
size, toolchain, GPUs and measured speed. Below it: a bar chart of recorded build times, build time against
tokens/s (one point per engine; inline SVGs) and the forecast. Every
value from models.yaml or a manifest is HTML-escaped: a model name cannot inject markup into the report.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import Any

from .status import Cell, Matrix

COLORS = {"fresh": "#2e7d32", "stale": "#f9a825", "missing": "#c62828", "blocked": "#9e9e9e",
          "unvalidated": "#6a1b9a", "restorable": "#1565c0", "regressed": "#e65100"}
STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#212121}
table{border-collapse:collapse}
th,td{border:1px solid #bdbdbd;padding:6px 10px;vertical-align:top;text-align:left}
td.cell{min-width:160px;color:#fff}
td.none{background:#fafafa;color:#9e9e9e}
details summary{cursor:pointer;font-weight:600}
details pre{white-space:pre-wrap;font-size:12px;color:#fff;max-width:420px}
.legend span{display:inline-block;padding:2px 8px;margin-right:6px;color:#fff}
"""


def _cell(c: Cell) -> str:
    color = COLORS.get(c.state, "#616161")
    info = {"engine": c.engine, "state": c.state, "reasons": c.reasons, **c.details}
    body = html.escape(json.dumps(info, indent=1, default=str))
    title = html.escape(c.short)
    return (f'<td class="cell state-{html.escape(c.state)}" style="background:{color}" title="{title}">'
            f"<details><summary>{title}</summary><pre>{body}</pre></details></td>")


def _chart(cells: Sequence[Cell]) -> str:
    """Horizontal bars, one per engine with a recorded build, longest first."""
    built = sorted(((c.details.get("seconds") or 0.0, c.engine) for c in cells if c.details.get("seconds")),
                   reverse=True)
    if not built:
        return "<p>No builds recorded yet.</p>"
    top = built[0][0]
    rows = []
    for i, (secs, name) in enumerate(built):
        w = max(1.0, 420 * secs / top)
        y = 22 * i
        rows.append(f'<text x="0" y="{y + 15}" font-size="12">{html.escape(name)}</text>'
                    f'<rect x="300" y="{y + 3}" width="{w:.1f}" height="16" fill="#1565c0"/>'
                    f'<text x="{305 + w:.1f}" y="{y + 15}" font-size="12">{secs:.1f} s</text>')
    return (f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="820" height="{22 * len(built) + 4}">'
            + "".join(rows) + "</svg>")


def _scatter(cells: Sequence[Cell]) -> str:
    """Build seconds (x) against tokens/s (y), one labelled point per engine with both: variants of one model (a
    longer autotuned build, another arch) line up, and what a longer build bought is read off the picture."""
    pts = [(c.details["seconds"], c.details["tokens_per_s"], c.engine) for c in cells
           if c.details.get("seconds") and c.details.get("tokens_per_s")]
    if not pts:
        return "<p>No engine has both a recorded build and a measured speed yet.</p>"
    xmax, ymax = max(p[0] for p in pts) * 1.1, max(p[1] for p in pts) * 1.1
    w, h, left, bottom = 820, 360, 70, 40
    dots = []
    for secs, tps, name in pts:
        x = left + (w - left - 200) * secs / xmax
        y = h - bottom - (h - bottom - 10) * tps / ymax
        dots.append(f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="5" fill="#1565c0"><title>'
                    f'{html.escape(name)}: {secs:.1f} s, {tps:,.0f} tokens/s</title></circle>'
                    f'<text x="{x + 8:.1f}" y="{y + 4:.1f}" font-size="11">{html.escape(name)}</text>')
    axes = (f'<line x1="{left}" y1="{h - bottom}" x2="{w - 190}" y2="{h - bottom}" stroke="#616161"/>'
            f'<line x1="{left}" y1="10" x2="{left}" y2="{h - bottom}" stroke="#616161"/>'
            f'<text x="{left}" y="{h - 10}" font-size="12">build seconds (0 to {xmax:,.1f})</text>'
            f'<text x="4" y="20" font-size="12">tokens/s</text><text x="4" y="36" font-size="11">{ymax:,.0f}</text>')
    return (f'<svg id="tradeoff" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}">{axes}'
            + "".join(dots) + "</svg>")


def render(m: Matrix, forecast: Sequence[str], title: str = "Engines") -> str:
    head = "".join(f"<th>{html.escape(a)}</th>" for a in m.archs)
    rows = []
    for model, par in m.rows:
        tds = "".join(_cell(m.cells[(model, par, a)]) if (model, par, a) in m.cells else '<td class="none">-</td>'
                      for a in m.archs)
        rows.append(f"<tr><th>{html.escape(model)}<br><small>{html.escape(par)}</small></th>{tds}</tr>")
    legend = "".join(f'<span style="background:{c}">{s}</span>' for s, c in COLORS.items())
    counts = ", ".join(f"{n} {html.escape(s)}" for s, n in m.counts().items())
    items = "".join(f"<li>{html.escape(line.removeprefix('forecast  '))}</li>" for line in forecast)
    doc: list[Any] = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><p>{len(m.cells)} engines: {counts}</p>",
        f'<p class="legend">{legend}</p>',
        f'<table id="matrix"><tr><th>model / parallel</th>{head}</tr>{"".join(rows)}</table>',
        "<h2>Build times</h2>", _chart(list(m.cells.values())),
        "<h2>Build time against speed</h2>", _scatter(list(m.cells.values())),
        f"<h2>Forecast</h2><ul>{items}</ul>", "</body></html>",
    ]
    return "\n".join(doc) + "\n"
