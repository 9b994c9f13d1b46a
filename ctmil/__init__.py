"""ctmil: weakly supervised COVID-19 severity assessment on chest CT (attention MIL, MONAI-based)."""

__version__ = "0.1.0"
