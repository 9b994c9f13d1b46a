"""Synthetic chest-CT phantoms for tests and the demo (never used on patient data): volumes, DICOM/NIfTI writers,
export trees. The public entry points are :mod:`ctmil.synthetic.phantoms` and :mod:`ctmil.synthetic.dicom_writer`."""
