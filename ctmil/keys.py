"""Named keys of the columns ctmil's tables share, as MONAI's ``CommonKeys`` names its keys: one home for each name.

A case's row is the same case wherever it appears: the manifest of ``ctmil preprocess``, the item of a datalist or
a bag, ``predictions.csv`` of ``ctmil infer``, ``ctmil evaluate`` and ``ctmil cv``. Code says ``Columns.CASE_ID``,
never the string, so a renamed column is renamed everywhere or nowhere (``tests/test_keys.py`` fails on a second
spelling). docs/cli.md tabulates what each column holds.
"""

from __future__ import annotations

__all__ = ["Columns"]


class Columns:
    """The column names (and case-item keys) of ctmil's tables."""

    CASE_ID = "case_id"  #: the case's identifier (from the datalist, or the input's name)
    LABEL = "label"  #: 1 severe, 0 non-severe, empty when unknown
    STATUS = "status"  #: ``ok``, ``cached`` or ``failed`` (a row per case, whatever happened to it)
    RAW_PROBABILITY = "raw_probability"  #: the network's sigmoid
    PROBABILITY = "probability"  #: the calibrated probability of severe COVID-19
    THRESHOLD = "threshold"  #: the operating point the prediction used
    PREDICTION = "prediction"  #: 1 when ``probability`` ≥ ``threshold``
    SETTING = "setting"  #: a cross-validation setting (A–D, Q, ...)
    REPEAT = "repeat"  #: a cross-validation repeat
    FOLD = "fold"  #: a cross-validation fold
