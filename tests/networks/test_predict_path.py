"""The one prediction path (ctmil.networks.predict): defined once, and what validation, CV, inference and the bundle
call."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_prediction_path_is_defined_once():
    defined = [f"{p.relative_to(ROOT)}" for p in sorted((ROOT / "ctmil").rglob("*.py"))
               if re.search(r"^(class BagInferer|def predict_batch)\b", p.read_text(), flags=re.M)]
    assert defined == ["ctmil/networks/predict.py"], defined


def test_every_caller_uses_it():
    """Inference and the engines import it from its home, held-out evaluation runs the infer workflow; both bundle
    configs name it there."""
    for module in ("ctmil/infer/model_io.py", "ctmil/train/engines.py", "ctmil/train/steps.py"):
        assert "from ctmil.networks.predict import" in (ROOT / module).read_text(), module
    assert "from ctmil.infer.batch import run_inference" in (ROOT / "ctmil/evaluate/held_out.py").read_text()
    for config in ("train.json", "inference.json"):
        text = (ROOT / "bundles" / "covid19_severity_mil" / "configs" / config).read_text()
        assert "ctmil.networks.predict.BagInferer" in text and "steps.BagInferer" not in text, config
