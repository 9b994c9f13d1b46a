"""A self-contained HTML report: one file, images inlined as ``data:`` URIs, no script, no network reference.

Every piece of free text (titles, paragraphs, captions, case ids, table cells) is escaped, so a hostile case id
cannot inject markup. Tables carry an ``id`` and the class ``ctmil-table``; gallery cards carry
``data-case-id`` (and any other ``data-*`` attribute given), so tests and tools can find them in the DOM::

    report = HtmlReport("ctmil infer")
    report.heading("Predictions").table(frame, id="predictions", caption="one row per case")
    report.gallery([GalleryItem("cases/a/overlay_s012.png", "a: p = 0.91", case_id="a")], id="overlays")
    report.write(out_dir / "report.html")  # atomic
"""

from __future__ import annotations

import base64
import html
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ctmil.io.atomic import atomic_write_bytes, atomic_write_text

__all__ = ["GalleryItem", "HtmlReport", "atomic_write_bytes", "atomic_write_text", "data_uri", "external_references"]

_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_DATA_ATTR = re.compile(r"^[a-z][a-z0-9-]*$")
_MIME = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"))

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5em auto;max-width:1200px;padding:0 1em;color:#222}
h1{font-size:1.6em;border-bottom:2px solid #ddd;padding-bottom:.2em}h2{font-size:1.25em;margin-top:1.6em}
table.ctmil-table{border-collapse:collapse;font-size:.85em;margin:.5em 0 1em}
table.ctmil-table th,table.ctmil-table td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
table.ctmil-table th{background:#f2f2f2}table.ctmil-table tr:nth-child(even) td{background:#fafafa}
p.ctmil-warning{background:#fff4e5;border-left:4px solid #e67e22;padding:.4em .6em;font-weight:600}
caption{caption-side:top;text-align:left;font-style:italic;color:#555;padding:.2em 0}
.gallery{display:flex;flex-wrap:wrap;gap:12px}
figure.card{margin:0;border:1px solid #ccc;border-radius:4px;padding:6px;background:#fff;max-width:100%}
figure.card img,figure.image img{max-width:100%;height:auto;display:block}
figcaption{font-size:.85em;color:#333;margin-top:4px;max-width:600px;overflow-wrap:anywhere}
figure.image{margin:.5em 0}
"""


def data_uri(source: "str | os.PathLike | bytes") -> str:
    """A ``data:image/...;base64,`` URI of a PNG/JPEG/GIF given as a path or as its bytes.

    Raises:
        ValueError: the bytes are not a PNG, JPEG or GIF image.
    """
    data = bytes(source) if isinstance(source, (bytes, bytearray, memoryview)) else Path(source).read_bytes()
    mime = next((m for magic, m in _MIME if data.startswith(magic)), None)
    if mime is None:
        raise ValueError("not a PNG, JPEG or GIF image" + ("" if isinstance(source, (bytes, bytearray, memoryview)) else f": {source}"))
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def external_references(text: str) -> list[str]:
    """Attribute values and CSS that would make a browser fetch something (``src``/``href`` other than ``data:``
    or ``#anchor``, ``url(...)`` other than ``data:``, ``@import``): empty for a self-contained page."""
    values = re.findall(r"""\b(?:src|href|srcset|action|poster|data)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""", text, flags=re.I)
    found = [v for groups in values for v in groups if v and not v.startswith(("data:", "#"))]
    urls = re.findall(r"""url\(\s*["']?([^)"']*)""", text, flags=re.I)
    found += [u for u in urls if not u.strip().startswith("data:")]
    found += re.findall(r"@import[^;]*", text, flags=re.I)
    return found


def _check_id(value: str, what: str) -> str:
    if not _ID.match(value):
        raise ValueError(f"{what} must match {_ID.pattern}, got {value!r}")
    return value


@dataclass(frozen=True)
class GalleryItem:
    """One gallery card: an image (path or bytes), its caption, the case it shows, extra ``data-*`` attributes.

    ``attrs`` keys are the part after ``data-`` (lower case, digits, dashes), e.g. ``{"slice": "12"}``.
    """

    image: "str | os.PathLike | bytes"
    caption: str = ""
    case_id: str = ""
    alt: str = ""
    attrs: Mapping[str, str] = field(default_factory=dict)


class HtmlReport:
    """Build a self-contained HTML page piece by piece; :meth:`write` it atomically.

    Methods return ``self`` so calls can be chained. Text arguments are plain text (escaped here), never markup.

    Args:
        title: the page title and its first heading.
    """

    def __init__(self, title: str) -> None:
        self.title = str(title)
        self._parts: list[str] = [f"<h1>{html.escape(self.title)}</h1>"]
        self._ids: set[str] = set()

    def _unique(self, value: str, what: str) -> str:
        _check_id(value, what)
        if value in self._ids:
            raise ValueError(f"{what} {value!r} is used twice in this report")
        self._ids.add(value)
        return value

    def heading(self, text: str, level: int = 2, id: str | None = None) -> "HtmlReport":
        """An ``<h2>`` (or ``<h1>``..``<h4>``) with ``text``; ``id`` for an anchor."""
        if level not in (1, 2, 3, 4):
            raise ValueError(f"level must be 1..4, got {level}")
        anchor = f' id="{self._unique(id, "heading id")}"' if id else ""
        self._parts.append(f"<h{level}{anchor}>{html.escape(str(text))}</h{level}>")
        return self

    def paragraph(self, text: str, css_class: str | None = None) -> "HtmlReport":
        """A ``<p>`` of plain text (escaped; newlines kept as line breaks)."""
        cls = f' class="{_check_id(css_class, "css_class")}"' if css_class else ""
        body = "<br>".join(html.escape(line) for line in str(text).split("\n"))
        self._parts.append(f"<p{cls}>{body}</p>")
        return self

    def bullets(self, items: Iterable[str], id: str | None = None) -> "HtmlReport":
        """A ``<ul>`` of plain-text items."""
        anchor = f' id="{self._unique(id, "list id")}"' if id else ""
        lis = "".join(f"<li>{html.escape(str(i))}</li>" for i in items)
        self._parts.append(f"<ul{anchor}>{lis}</ul>")
        return self

    def table(self, frame: pd.DataFrame, id: str, caption: str | None = None, float_format: str = "{:.4g}",
              index: bool = False) -> "HtmlReport":
        """``frame`` as ``<table id=id class="ctmil-table">`` (``DataFrame.to_html``, cells escaped, NaN blank).

        Args:
            id: the table's unique ``id`` (letters, digits, ``_``, ``-``; starts with a letter).
            caption: plain text shown above the table.
            float_format: format of float cells.
            index: include the frame's index as the first column.
        """
        self._unique(id, "table id")
        frame = frame.copy()
        for column in frame.columns:  # nullable ints/strings show <NA> otherwise: blank, like NaN
            if isinstance(frame[column].dtype, pd.api.extensions.ExtensionDtype):
                frame[column] = frame[column].astype(object).where(frame[column].notna(), "")
        body = frame.to_html(index=index, table_id=id, classes="ctmil-table", border=0, escape=True, na_rep="",
                             float_format=float_format.format, justify="left")
        body = body.replace(' class="dataframe ctmil-table"', ' class="ctmil-table"')
        if caption:
            body = body.replace(">", f"><caption>{html.escape(str(caption))}</caption>", 1)
        self._parts.append(body)
        return self

    def image(self, source: "str | os.PathLike | bytes", alt: str = "", width: int | None = None,
              caption: str | None = None) -> "HtmlReport":
        """An image inlined as a ``data:`` URI (PNG/JPEG/GIF from a path or bytes), ``width`` in CSS pixels."""
        self._parts.append(f'<figure class="image">{_img(source, alt, width)}'
                           + (f"<figcaption>{html.escape(str(caption))}</figcaption>" if caption else "") + "</figure>")
        return self

    def gallery(self, items: Iterable["GalleryItem | tuple"], id: str | None = None, width: int | None = None) -> "HtmlReport":
        """A wrapping row of cards, each an inlined image with its caption.

        Args:
            items: :class:`GalleryItem` s, or tuples ``(image, caption[, case_id])``.
            id: the gallery's unique ``id``.
            width: CSS width of each image (default its natural width, at most the card's).
        """
        anchor = f' id="{self._unique(id, "gallery id")}"' if id else ""
        cards = []
        for item in items:
            item = item if isinstance(item, GalleryItem) else GalleryItem(*item)
            attrs = {"case-id": item.case_id, **{_check_attr(k): v for k, v in item.attrs.items()}}
            data = "".join(f' data-{k}="{html.escape(str(v), quote=True)}"' for k, v in attrs.items())
            alt = item.alt or item.caption or item.case_id
            cards.append(f'<figure class="card"{data}>{_img(item.image, alt, width)}'
                         f"<figcaption>{html.escape(str(item.caption))}</figcaption></figure>")
        self._parts.append(f'<div class="gallery"{anchor}>{"".join(cards)}</div>')
        return self

    def render(self) -> str:
        """The whole page as one string."""
        head = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f"<title>{html.escape(self.title)}</title><style>{CSS}</style></head>\n<body>\n")
        return head + "\n".join(self._parts) + "\n</body></html>\n"

    def write(self, path: str | os.PathLike) -> Path:
        """Write the page to ``path`` atomically (temporary file + rename); returns the path."""
        return atomic_write_text(self.render(), path)


def _check_attr(name: str) -> str:
    if not _DATA_ATTR.match(name):
        raise ValueError(f"data attribute names must match {_DATA_ATTR.pattern}, got {name!r}")
    return name


def _img(source, alt: str, width: int | None) -> str:
    size = f' width="{int(width)}"' if width else ""
    return f'<img src="{data_uri(source)}" alt="{html.escape(str(alt), quote=True)}"{size}>'
