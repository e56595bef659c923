"""A self-contained HTML page: inline style, figures as ``data:image/png;base64`` images, no scripts."""

from __future__ import annotations

import base64
import html
from typing import Any, Iterable, Sequence

__all__ = ["page", "section", "table", "figure", "kv_table", "note", "fmt"]

_LEFT = ' class="l"'

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1320px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
figure { margin: 0.8em 0; } figcaption { font-size: 0.85em; color: #555; }
img { max-width: 100%; height: auto; } p.note { color: #666; font-size: 0.9em; }
"""


def fmt(value: Any) -> str:
    """A table cell: floats to 4 decimals (or 4 significant digits), the rest as text."""
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value).lower()
    if isinstance(value, float):
        return f"{value:.4f}" if 1e-3 <= abs(value) < 1e4 or value == 0 else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], *, left: int = 1) -> str:
    """An HTML table; the first ``left`` columns are left-aligned."""
    def cells(values: Sequence[Any], tag: str) -> str:
        return "".join(f"<{tag}{_LEFT if i < left else ''}>{html.escape(fmt(v))}</{tag}>" for i, v in enumerate(values))

    body = "\n".join(f"<tr>{cells(r, 'td')}</tr>" for r in rows)
    return f"<table>\n<tr>{cells(header, 'th')}</tr>\n{body}\n</table>"


def kv_table(pairs: Iterable[tuple[str, Any]]) -> str:
    """A two-column table of names and values."""
    return table(("setting", "value"), list(pairs), left=2)


def figure(png: bytes, alt: str, caption: str = "") -> str:
    """An ``<img>`` holding ``png`` inline, with alt text and an optional caption."""
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">{cap}</figure>'


def section(title: str, *parts: str) -> str:
    """An ``<h2>`` and its content (parts are HTML)."""
    return f"<section>\n<h2>{html.escape(title)}</h2>\n" + "\n".join(parts) + "\n</section>"


def note(text: str) -> str:
    """A grey paragraph of plain text."""
    return f'<p class="note">{html.escape(text)}</p>'


def page(title: str, subtitle: str, sections: Sequence[str]) -> str:
    """The whole document."""
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n<p>{html.escape(subtitle)}</p>\n" + "\n".join(sections)
            + "\n</body>\n</html>\n")
