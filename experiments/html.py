"""Self-contained offline HTML pages: plotly.js inlined once, figures as divs, tables as HTML.

Every report (predictability analysis, sweep report, perplexity curves) is built from
:class:`Section` objects and written by :func:`write_page`, atomically. No CDN, no network: the
page renders from a file on a machine without internet.
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from sparsesim.atomic import write_text

PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td.text, th.text { text-align: left; }
p.note { color: #555; font-size: 0.9em; } pre { background: #f7f7f7; padding: 0.5em; overflow-x: auto; }
nav { font-size: 0.85em; color: #555; } nav a { margin-right: 0.8em; }
ul.summary { font-size: 0.9em; padding-left: 1.2em; } ul.summary li { margin: 0.25em 0; }
div.matrices { display: flex; flex-wrap: wrap; gap: 1.2em; } div.matrix h3 { font-size: 1em; margin: 0.4em 0 0.2em; }
td.win { background: #d9f2d9; } td.lose { background: #f8dcdc; } span.bound { color: #666; font-size: 0.9em; }
details summary { cursor: pointer; font-size: 0.9em; margin-top: 0.5em; }
"""


@dataclass
class Section:
    title: str
    text: str = ""                                  # plain text paragraph(s), escaped
    figures: list[Any] = field(default_factory=list)   # plotly figures
    tables: list[str] = field(default_factory=list)    # HTML from table_html()
    anchor: str = ""                                # id of the heading, for links
    lead: bool = False                              # the page's first screen: shown before the contents


def figure_html(fig: Any) -> str:
    """A plotly figure as a div that uses the page's single inlined plotly.js."""
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def table_html(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, caption: str = "") -> str:
    """An HTML table from a list of records (first column left-aligned as a label)."""
    if not rows:
        return "<p class='note'>(no rows)</p>"
    columns = list(columns or rows[0].keys())
    head = "".join(f"<th class='{'text' if i == 0 else ''}'>{html.escape(c)}</th>" for i, c in enumerate(columns))
    body = "".join(
        "<tr>" + "".join(f"<td class='{'text' if i == 0 else ''}'>{_cell(r.get(c, ''))}</td>"
                         for i, c in enumerate(columns)) + "</tr>"
        for r in rows)
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def render_page(title: str, sections: Iterable[Section], provenance: dict[str, Any] | None = None,
                intro: str = "") -> str:
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{PAGE_STYLE}</style><script type='text/javascript'>{_plotly_js()}</script></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    if intro:
        parts.append(f"<p class='note'>{html.escape(intro)}</p>")
    sections = list(sections)
    contents = "<nav>Contents: " + "".join(f"<a href='#{html.escape(s.anchor)}'>{html.escape(s.title)}</a>"
                                           for s in sections if s.anchor) + "</nav>"
    if not any(s.lead for s in sections):
        parts.append(contents)
    for s in sections:
        anchor = f" id='{html.escape(s.anchor)}'" if s.anchor else ""
        parts.append(f"<h2{anchor}>{html.escape(s.title)}</h2>")
        for para in filter(None, s.text.split("\n\n")):
            parts.append(f"<p class='note'>{html.escape(para)}</p>")
        parts.extend(figure_html(f) for f in s.figures)
        parts.extend(s.tables)
        if s.lead:
            parts.append(contents)
    if provenance:
        parts.append("<h2>Provenance</h2><pre>" + html.escape(json.dumps(provenance, indent=2, default=str)) + "</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_page(path: str | os.PathLike, title: str, sections: Iterable[Section],
               provenance: dict[str, Any] | None = None, intro: str = "") -> str:
    """Render and write the page atomically; returns the path."""
    write_text(path, render_page(title, sections, provenance, intro))
    return str(path)
