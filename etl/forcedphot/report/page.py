"""The report's HTML: one page, its PNGs referenced by relative name (no script, no network)."""

from __future__ import annotations

import html
from dataclasses import dataclass, field

import polars as pl

GENERATOR = "forcedphot report"  # <meta name="generator">: marks a folder --overwrite may replace

STYLE = """
body { font-family: sans-serif; margin: 1.5em auto; max-width: 1250px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
td, th { border: 1px solid #ccc; padding: 2px 6px; text-align: right; } th { background: #f2f2f2; }
img { max-width: 100%; display: block; margin: 0.4em 0; }
figure { margin: 0.8em 0; } figcaption { font-size: 0.85em; color: #444; }
p.note { color: #666; font-style: italic; }
div.grid { display: grid; grid-template-columns: 1fr 1fr; gap: 0 1.5em; }
"""


@dataclass
class Section:
    title: str
    text: str = ""  # HTML (already escaped)
    images: list[tuple[str, str, str]] = field(default_factory=list)  # (file name, caption, details)
    grid: bool = False  # images two per row (the gallery)
    tables: list[pl.DataFrame] = field(default_factory=list)
    missing: str = ""  # why the section has no plot


def table_html(df: pl.DataFrame, *, max_rows: int = 40) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in df.columns)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>"
                   for row in df.head(max_rows).iter_rows())
    return f"<table><tr>{head}</tr>{rows}</table>"


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render(*, title: str, summary: str, sections: list[Section]) -> str:
    body = []
    for s in sections:
        body.append(f"<section><h2>{html.escape(s.title)}</h2>")
        if s.text:
            body.append(f"<p>{s.text}</p>")
        body.extend(table_html(t) for t in s.tables)
        body.append('<div class="grid">' if s.grid else "<div>")
        for name, caption, details in s.images:
            more = f"<details><summary>more</summary>{html.escape(details)}</details>" if details else ""
            body.append(f'<figure><img src="{html.escape(name)}" alt="{html.escape(caption)}">'
                        f"<figcaption>{html.escape(caption)}{more}</figcaption></figure>")
        body.append("</div>")
        if s.missing:
            body.append(f'<p class="note">{html.escape(s.missing)}</p>')
        body.append("</section>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="generator" content="{GENERATOR}"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head>\n<body><h1>{html.escape(title)}</h1><p>{summary}</p>\n"
            + "\n".join(body) + "\n</body></html>\n")
