"""The HTML builder: escaping, inline images, ids, no network references, atomic writes."""

import base64
import io
import re

import numpy as np
import pandas as pd
import pytest
from matplotlib import image as mpimg

from ctmil.report import GalleryItem, HtmlReport, data_uri, external_references


def png_bytes(h: int = 8, w: int = 12) -> bytes:
    buf = io.BytesIO()
    mpimg.imsave(buf, np.linspace(0, 1, h * w).reshape(h, w), format="png")
    return buf.getvalue()


def test_free_text_is_escaped_everywhere():
    evil = '<script>alert("x")</script>'
    page = (HtmlReport(evil).heading(evil).paragraph(evil).bullets([evil])
            .table(pd.DataFrame({"case_id": [evil]}), id="t", caption=evil)
            .gallery([GalleryItem(png_bytes(), caption=evil, case_id=evil + '" onload="x')]).render())
    assert "<script>" not in page and "onload=\"x" not in page
    assert page.count("&lt;script&gt;") == 10  # title, h1, h2, p, li, caption, cell, card: alt, data-case-id, figcaption
    assert 'data-case-id="&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&quot; onload=&quot;x"' in page


def test_images_are_inlined_from_bytes_and_paths(tmp_path):
    data = png_bytes()
    (tmp_path / "a.png").write_bytes(data)
    page = HtmlReport("t").image(tmp_path / "a.png", alt="a", width=100).gallery([(data, "c", "case1")], id="g").render()
    uris = re.findall(r'src="(data:image/png;base64,[^"]+)"', page)
    assert len(uris) == 2 and all(base64.b64decode(u.split(",", 1)[1]) == data for u in uris)
    assert external_references(page) == [] and "http" not in page
    assert 'width="100"' in page and '<div class="gallery" id="g"><figure class="card" data-case-id="case1">' in page


def test_external_references_finds_what_a_browser_would_fetch():
    page = '<img src="http://x/a.png"><a href=\'//cdn/x\'>x</a><link href=style.css><div style="background:url(y.png)">'
    assert external_references(page) == ["http://x/a.png", "//cdn/x", "style.css", "y.png"]
    assert external_references('<img src="data:image/png;base64,AA=="><a href="#top">') == []


def test_table_has_id_class_caption_and_blank_nan():
    frame = pd.DataFrame({"case": ["a", "b"], "p": [0.123456, np.nan], "n": pd.array([3, None], dtype="Int64")})
    page = HtmlReport("t").table(frame, id="preds", caption="one row per case").render()
    assert '<table class="ctmil-table" id="preds"><caption>one row per case</caption>' in page
    assert "<td>0.1235</td>" in page and "<td>3</td>" in page and page.count("<td></td>") == 2
    assert "nan" not in page.lower() and "&lt;NA&gt;" not in page


@pytest.mark.parametrize("bad", ["1x", "a b", 'x"y', ""])
def test_bad_ids_are_refused(bad):
    with pytest.raises(ValueError, match="must match"):
        HtmlReport("t").table(pd.DataFrame({"a": [1]}), id=bad)


def test_duplicate_ids_and_non_images_are_refused(tmp_path):
    report = HtmlReport("t").table(pd.DataFrame({"a": [1]}), id="x")
    with pytest.raises(ValueError, match="used twice"):
        report.gallery([], id="x")
    with pytest.raises(ValueError, match="not a PNG"):
        data_uri(b"<svg onload=alert(1)>")
    with pytest.raises(ValueError, match="data attribute"):
        HtmlReport("t").gallery([GalleryItem(png_bytes(), attrs={"Bad Name": "1"})])


def test_write_is_atomic_and_leaves_no_temporary_file(tmp_path):
    path = HtmlReport("t").paragraph("hello").write(tmp_path / "sub" / "r.html")
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>") and "<p>hello</p>" in path.read_text()
    assert sorted(p.name for p in path.parent.iterdir()) == ["r.html"]


def test_page_renders_in_chromium(tmp_path):
    from tests.report._chromium import dom_cards, dom_images, render, screenshot_is_drawn, table_rows

    frame = pd.DataFrame({"case_id": ["x<1>", "y"], "p": [0.5, 0.25]})
    page = HtmlReport("browser check").table(frame, id="t").gallery([(png_bytes(30, 40), "x", "x<1>"), (png_bytes(), "y", "y")])
    dom, shot = render(page.write(tmp_path / "page.html"), tmp_path / "page.png", window=(800, 600))
    assert table_rows(dom, "t") == [["x<1>", "0.5"], ["y", "0.25"]] and screenshot_is_drawn(shot)
    sizes = [(i["data-natural-width"], i["data-natural-height"]) for i in dom_images(dom)]
    assert sizes == [("40", "30"), ("12", "8")] and [c["data-case-id"] for c in dom_cards(dom)] == ["x<1>", "y"]


def test_browser_tests_skip_without_chromium(monkeypatch):
    from tests.report import _chromium

    monkeypatch.setattr(_chromium.shutil, "which", lambda name: None)
    with pytest.raises(pytest.skip.Exception, match="chromium is not installed"):
        _chromium.render("page.html")
