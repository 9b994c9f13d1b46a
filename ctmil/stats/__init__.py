"""ctmil.stats: the statistics every layer above uses, with no import of them (issue 20).

Metrics and ROC (``metrics``), calibration maps and thresholds (``calibration``), the operating point of a model
(``operating_point``), confidence intervals and paired tests (``statistics``), stratified patient-grouped folds
(``folds``) and the quantitative lung-density baseline model ``Q`` (``quantitative``). Training (the operating-point
and density-fusion handlers), inference (calibrated probabilities) and evaluation (reports, cross-validation) import
these; this package imports only numpy, scipy, scikit-learn, torch and ``ctmil.transforms`` (the density features).
"""
