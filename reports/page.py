"""The pages recchaos writes: the HTML shell every report shares (inline CSS, a
Content-Security-Policy that forbids loading anything, a few lines of hover script), tables in
HTML and markdown, and writing a page by atomic replace."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reports.svg import esc, fmt

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;
color:#111;max-width:1000px}
h1{font-size:22px;margin:0 0 6px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.verdict{display:inline-block;padding:3px 12px;border-radius:4px;color:#fff;font-weight:bold}
.PASS{background:#2e7d32}.FAIL{background:#c62828}.INCONCLUSIVE{background:#ef6c00}
.NONE{background:#616161}.REGRESSION{background:#c62828}.OK{background:#2e7d32}
.KILLED{background:#6a1b9a}
.partial{background:#fff3e0;border:1px solid #ef6c00;padding:8px 12px;margin:10px 0}
.meta{color:#555;font-size:13px}code,pre{background:#f6f6f6;padding:2px 4px;font-size:12.5px}
pre{padding:8px;overflow-x:auto}svg{display:block;margin:8px 0;max-width:100%;height:auto}
#tip{position:fixed;pointer-events:none;background:#222;color:#fff;font-size:12px;
padding:3px 6px;border-radius:3px;display:none;z-index:9}
circle.pt{opacity:.55}circle.pt:hover{opacity:1;r:4}.note{color:#555;font-size:12.5px}
"""

# The page may load nothing from anywhere: a violation shows up as a console error.
CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"

JS = """
(function(){var t=document.getElementById('tip');
document.addEventListener('mousemove',function(e){var n=e.target.closest?e.target.closest('[data-tip]'):null;
if(!n){t.style.display='none';return;}t.textContent=n.getAttribute('data-tip');t.style.display='block';
t.style.left=(e.clientX+12)+'px';t.style.top=(e.clientY+12)+'px';});
document.documentElement.setAttribute('data-js','ok');})();
"""


def page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f'{body}<div id="tip"></div><script>{JS}</script></body></html>\n'
    )


class Raw:
    """Cell content that is already HTML."""

    def __init__(self, html: str) -> None:
        self.html = html


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    out = []
    for row in rows:
        cells = []
        for v in row:
            if isinstance(v, Raw):
                cells.append(f"<td>{v.html}</td>")
            elif isinstance(v, int | float) and not isinstance(v, bool):
                cells.append(f'<td class="num">{esc(fmt(float(v)))}</td>')
            else:
                cells.append(f"<td>{esc(v)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="{cls}"><tr>{head}</tr>{"".join(out)}</table>'


def badge(verdict: str | None, css: str | None = None) -> str:
    v = css or verdict or "NONE"
    return f'<span class="verdict {esc(v)}">{esc(verdict or "no verdict")}</span>'


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            v = fmt(v)
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_text(path: Path, text: str) -> None:
    """Atomic replace: a reader (a CI upload, a browser) never sees half a page."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
