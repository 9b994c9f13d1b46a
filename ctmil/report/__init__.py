"""Self-contained HTML reports (one file, inlined images, no network references): :class:`HtmlReport`."""

from ctmil.report.html import GalleryItem, HtmlReport, atomic_write_bytes, atomic_write_text, data_uri, external_references

__all__ = ["GalleryItem", "HtmlReport", "atomic_write_bytes", "atomic_write_text", "data_uri", "external_references"]
