"""Seeded synthetic chest-CT phantoms with COVID-19-like lesions, and writers for DICOM / NIfTI cohorts.

No patient data is ever committed: tests, benchmarks and the demo run on these phantoms. A phantom is a
drawing of a chest made of ellipses and smooth random fields, not anatomy (see ``docs/phantoms.md``).

This module is the public entry point; the work is done in

* :mod:`ctmil.synthetic.labels` -- tissue and lesion codes, the severity rule and draws;
* :mod:`ctmil.synthetic.chest` -- :func:`make_phantom`, composed from :mod:`~ctmil.synthetic.chest_frame`,
  :mod:`~ctmil.synthetic.anatomy`, :mod:`~ctmil.synthetic.lungs` and :mod:`~ctmil.synthetic.lesions`;
* :mod:`ctmil.synthetic.nifti_writer`, :mod:`ctmil.synthetic.dicom_writer` -- the file writers;
* :mod:`ctmil.synthetic.cohort` -- :func:`generate_cohort`; :mod:`ctmil.synthetic.export_tree` -- a messy
  hospital export for discovery tests.

Array convention (the ``(S, H, W)`` volume returned by :func:`make_phantom`):

* axis 0 -- slices from the **feet (index 0, inferior) to the head** (last index, superior);
* axis 1 -- rows from **anterior (row 0)** to posterior;
* axis 2 -- columns from the **patient's right (column 0)** to the patient's left (radiological display).

``spacing`` is ``(z, y, x)`` in mm. World coordinates are DICOM LPS; ``info["affine_ras"]`` maps ``(s, r, c)``
indices to RAS mm (NIfTI world).
"""

from __future__ import annotations

from ctmil.synthetic.chest import make_phantom
from ctmil.synthetic.cohort import generate_cohort
from ctmil.synthetic.export_tree import write_export_tree
from ctmil.synthetic.labels import (  # noqa: F401  (the draw ranges stay importable from here)
    LESION_LABELS,
    NON_SEVERE_CONSOLIDATION,
    NON_SEVERE_RANGE,
    P_NO_LESION,
    SEVERE_CONSOLIDATION,
    SEVERE_RANGE,
    SEVERE_THRESHOLD,
    TISSUE_LABELS,
    SeverityParams,
    assign_labels,
    sample_severity,
)
from ctmil.synthetic.nifti_writer import write_nifti

__all__ = [
    "TISSUE_LABELS",
    "LESION_LABELS",
    "SEVERE_THRESHOLD",
    "SeverityParams",
    "sample_severity",
    "assign_labels",
    "make_phantom",
    "write_nifti",
    "generate_cohort",
    "write_export_tree",
]
