"""Render a page in a real headless Chromium: the DOM after load (with every image's natural size written into it)
and a screenshot. Tests call :func:`render`; it skips the test when no Chromium is installed.

    dom, shot = render(out / "report.html")
    rows = table_rows(dom, "predictions")           # [[cell, ...], ...] of <tbody>
    images = dom_images(dom)                        # [{"src": ..., "data-natural-width": "640", ...}, ...]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

BINARIES = ("chromium", "chromium-browser", "google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--virtual-time-budget=5000"]
# Written into a copy of the page only (reports carry no script): each image's decoded size as attributes.
PROBE = """<script>window.addEventListener("load", () => { for (const im of document.images) {
  im.setAttribute("data-natural-width", im.naturalWidth); im.setAttribute("data-natural-height", im.naturalHeight);
  im.setAttribute("data-complete", im.complete); } document.body.setAttribute("data-probe", "done"); });</script>"""


def chromium() -> str:
    """The Chromium binary, or skip the test with the reason."""
    found = next((b for b in map(shutil.which, BINARIES) if b), None)
    if found is None:
        pytest.skip("chromium is not installed (apt-get install chromium): browser test skipped")
    return found


def _run(binary: str, args: list[str], profile: Path, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(profile)}  # nothing written to the user's home
    return subprocess.run([binary, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


def render(path: str | os.PathLike, screenshot: str | os.PathLike | None = None, window: tuple[int, int] = (1280, 1600),
           timeout: float = 60.0) -> tuple[str, Path]:
    """``(dom_text, screenshot_path)`` of ``path`` rendered by headless Chromium.

    The DOM is dumped after the load event from a copy of the page with :data:`PROBE` added; the screenshot
    (``window`` = width, height in pixels) is of the page as written. ``screenshot`` defaults to a file next to
    the temporary copy (kept until the process ends).
    """
    binary = chromium()
    path = Path(path).resolve()
    work = Path(tempfile.mkdtemp(prefix="ctmil-chromium-"))
    probed = work / path.name
    text = path.read_text(encoding="utf-8")
    probed.write_text(text.replace("</body>", PROBE + "</body>", 1), encoding="utf-8")
    dump = _run(binary, ["--dump-dom", probed.as_uri()], work / "profile-dom", timeout)
    if dump.returncode != 0 or "<html" not in dump.stdout:
        raise AssertionError(f"chromium --dump-dom failed ({dump.returncode}): {dump.stderr[-2000:]}")
    shot = Path(screenshot) if screenshot is not None else work / "screenshot.png"
    taken = _run(binary, [f"--screenshot={shot}", f"--window-size={window[0]},{window[1]}", path.as_uri()], work / "profile-shot", timeout)
    if taken.returncode != 0 or not shot.is_file():
        raise AssertionError(f"chromium --screenshot failed ({taken.returncode}): {taken.stderr[-2000:]}")
    return dump.stdout, shot


class _Dom(HTMLParser):
    """Collects ``<img>`` attributes, the cells of each table's body by id, and cards' ``data-*`` attributes."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.images: list[dict] = []
        self.cards: list[dict] = []
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._in_body = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a)
        elif tag == "figure" and "card" in (a.get("class") or ""):
            self.cards.append(a)
        elif tag == "table":
            self._table = a.get("id", "")
            self.tables[self._table] = []
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._in_body and self._table is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parse_dom(dom: str) -> _Dom:
    parser = _Dom()
    parser.feed(dom)
    return parser


def table_rows(dom: str, table_id: str) -> list[list[str]]:
    """The text of each body cell of ``<table id=table_id>``, row by row (``KeyError`` if there is no such table)."""
    return parse_dom(dom).tables[table_id]


def dom_images(dom: str) -> list[dict]:
    """The attributes of every ``<img>`` (with the probe's ``data-natural-width`` / ``-height`` / ``data-complete``)."""
    return parse_dom(dom).images


def dom_cards(dom: str) -> list[dict]:
    """The attributes of every gallery card (``figure.card``): ``data-case-id`` and the others."""
    return parse_dom(dom).cards


def screenshot_is_drawn(path: str | os.PathLike) -> bool:
    """The screenshot decodes and is not one flat colour."""
    from matplotlib import image as mpimg

    pixels = mpimg.imread(str(path))
    return pixels.ndim == 3 and float(pixels[..., :3].std()) > 0.01
