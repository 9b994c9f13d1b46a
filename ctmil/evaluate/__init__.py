"""Evaluation: metrics, folds and cross-validation, reports."""
