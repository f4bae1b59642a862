"""Self-contained HTML reports: one file with inline CSS and figures embedded as base64 PNG.

A report never references the network or a file beside it, so it can be mailed or archived
alone. Every piece of text passed in is escaped; only the HTML built by these helpers (and
``raw`` sections) is inserted as is.
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #446; padding-bottom: .2em; }
h2 { margin-top: 1.8em; color: #334; }
table { border-collapse: collapse; margin: .8em 0; font-size: .92em; }
th, td { border: 1px solid #ccd; padding: .3em .7em; text-align: left; vertical-align: top; }
th { background: #eef; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #f8f8fc; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { color: #555; font-size: .9em; }
p.note { color: #555; font-size: .92em; }
.bad { color: #a00; }
.good { color: #070; }
"""


class Raw(str):
    """HTML that is already safe and is inserted without escaping (built by this module)."""


def escape(value: Any) -> str:
    """``value`` as text safe inside HTML elements and attributes."""
    return value if isinstance(value, Raw) else html.escape(str(value), quote=True)


def format_value(value: Any, digits: int = 4) -> str:
    """Numbers with ``digits`` significant digits, None as "-", the rest as ``str``."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:.0f}"
    return str(value)


def shorten(name: str, width: int) -> str:
    """``name`` cut to ``width`` characters from the left ("…" then its end), for titles and labels."""
    return name if len(name) <= width else "…" + name[-(width - 1):]


def png_file_to_data_uri(path: str | os.PathLike) -> str:
    """A PNG file on disk as a ``data:`` URI, to embed figures already saved."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def html_image(data_uri: str, caption: str = "", alt: str = "") -> Raw:
    """An embedded figure; ``data_uri`` must be a ``data:image/...`` URI (no external files)."""
    if not data_uri.startswith("data:image/"):
        raise ValueError("html_image embeds data: URIs only, so the report stays self-contained")
    cap = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    return Raw(f'<figure><img src="{data_uri}" alt="{escape(alt or caption)}">{cap}</figure>')


def html_table(headers: Sequence[Any], rows: Iterable[Sequence[Any]], digits: int = 4) -> Raw:
    """A table; numbers are right-aligned and rounded to ``digits`` significant digits."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for v in row:
            numeric = isinstance(v, (int, float)) and not isinstance(v, bool)
            cls = ' class="num"' if numeric else ""
            cells.append(f"<td{cls}>{escape(v) if isinstance(v, Raw) else escape(format_value(v, digits))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return Raw(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


def html_paragraph(text: str, cls: str = "") -> Raw:
    """One escaped paragraph, optionally with a CSS class ("note", "bad", "good")."""
    attr = f' class="{escape(cls)}"' if cls else ""
    return Raw(f"<p{attr}>{escape(text)}</p>")


def html_list(items: Iterable[Any]) -> Raw:
    """An escaped bullet list."""
    return Raw("<ul>" + "".join(f"<li>{escape(i)}</li>" for i in items) + "</ul>")


def html_page(title: str, body_sections: Iterable[tuple[str, Any] | Any]) -> str:
    """A complete HTML5 page with inline CSS.

    ``body_sections`` holds ``(heading, content)`` pairs or bare content; content is a
    :class:`Raw` fragment (from the helpers above), plain text (escaped into a paragraph), or a
    list of either.
    """
    parts = [f"<h1>{escape(title)}</h1>"]
    for section in body_sections:
        if isinstance(section, tuple):
            heading, content = section
            parts.append(f"<section><h2>{escape(heading)}</h2>{_content(content)}</section>")
        else:
            parts.append(f"<section>{_content(section)}</section>")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{escape(title)}</title>\n"
        f"<style>{CSS}</style>\n</head>\n<body>\n" + "\n".join(parts) + "\n</body>\n</html>\n"
    )


def _content(content: Any) -> str:
    if isinstance(content, Raw):
        return content
    if isinstance(content, (list, tuple)):
        return "".join(_content(c) for c in content)
    return html_paragraph(str(content))
