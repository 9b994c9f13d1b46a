"""Batch inference on exports: model loading, per-study predictions, attention maps and overlays."""
