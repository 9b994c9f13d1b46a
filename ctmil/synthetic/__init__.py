"""Synthetic chest-CT phantoms for tests and the demo (never used on patient data): volumes, DICOM/NIfTI writers, export trees."""
