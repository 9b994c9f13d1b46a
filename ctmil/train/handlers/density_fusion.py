"""Fit the network's late fusion with the lung-density model when training ends (``MILNet(density_use="fusion")``).

At ``COMPLETED``, after model selection (``best_weights``, if any) and before the :class:`~ctmil.train.handlers.OperatingPointHandler`
(which names this handler):

1. the density model is the quantitative baseline's (:func:`ctmil.stats.quantitative.fit_baseline`: standardised
   lung-density features, L2 logistic regression, ``C`` chosen by an inner search) fitted on the *training* bags'
   ``density`` (:func:`ctmil.transforms.density_input`), case ids as groups;
2. the MIL logit (the part passes it through until fitted) and the density logit each get a Platt map learnt on
   the calibration cases (the inner validation split, never a test fold), so that both are log-odds on one
   scale before they are averaged with equal weights;
3. the values go into the network's :class:`~ctmil.networks.fusion.DensityFusion` buffers, so that ``model.pt``
   holds them and every later prediction is the fused one; ``result`` says what was fitted (the
   :class:`~ctmil.train.handlers.ModelWriter`, which names this handler, records it in ``model.json``).

Equal weights, fixed before any result was seen: learning them on a dozen inner validation cases would fit noise.
A component whose Platt slope on those cases is <= 0 ranks them against the labels and gets no weight; with no
usable calibration cases (none, or one class) the raw logits are averaged and the reason is recorded.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional

import numpy as np
import torch
from ignite.engine import Engine

from ctmil.data.bags import BagDataset
from ctmil.stats.calibration import fit_calibration
from ctmil.stats.quantitative import fit_baseline
from ctmil.train.engines import predict
from ctmil.train.handlers.best_weights import BestWeights
from ctmil.train.handlers.end_of_training import EndOfTraining
from ctmil.keys import Columns

__all__ = ["DensityFusionHandler"]

logger = logging.getLogger(__name__)


def _density_table(dataset: Optional[BagDataset]):
    """``(features (N, F), labels (N,), case ids)`` of the bags with a 0/1 label; ``None`` when a bag has no density."""
    rows, labels, ids = [], [], []
    for i in range(len(dataset) if dataset is not None else 0):
        bag = dataset[i]
        if "density" not in bag:
            return None
        label = float(bag[Columns.LABEL])
        if label in (0.0, 1.0):
            rows.append(torch.as_tensor(bag["density"], dtype=torch.float64).reshape(-1).numpy())
            labels.append(int(label))
            ids.append(str(bag[Columns.CASE_ID]))
    return (np.stack(rows) if rows else np.zeros((0, 0))), np.asarray(labels, dtype=np.int64), ids


class DensityFusionHandler(EndOfTraining):
    """At ``COMPLETED``: fit ``network.fusion`` (see the module docstring); a network without one is left alone.

    Args:
        network: the bare trained network.
        train_dataset: the training bags (real ones; virtual bags never reach a dataset).
        dataset: the calibration cases (``None``: no Platt maps, raw logits averaged).
        seed: seeds the density model's inner ``C`` search.
        device: where the network runs.
        best_weights: model selection, if any: its weights are restored before the fit.
    """

    def __init__(self, network: torch.nn.Module, train_dataset: BagDataset, dataset: Optional[BagDataset] = None,
                 seed: int = 0, device: "str | torch.device" = "cpu", best_weights: Optional[BestWeights] = None) -> None:  # fmt: skip
        super().__init__(after=[best_weights])
        self.network, self.train_dataset, self.dataset, self.seed, self.device = network, train_dataset, dataset, int(seed), device
        self.result: Optional[Dict[str, Any]] = None

    def run(self, engine: Engine) -> None:
        fusion = getattr(self.network, "fusion", None)
        if fusion is None:
            return
        fusion.reset_()  # the MIL logit alone while the maps are learnt
        self.result = self._fit(fusion)
        logger.info("density fusion: %s", self.result["source"])

    def _fit(self, fusion) -> Dict[str, Any]:
        table = _density_table(self.train_dataset)
        if table is None or np.unique(table[1]).size < 2:
            why = "a training bag records no lung density" if table is None else "the training cases hold one class"
            logger.warning("density fusion not fitted (%s): the model predicts with the MIL network alone", why)
            return {"fitted": False, "source": f"not fitted: {why}; the MIL network alone"}
        x, y, ids = table
        model = fit_baseline(x, y, ids, self.seed)
        keep = model.named_steps["drop"].keep_
        scaler, linear = model.named_steps["scale"], model.named_steps["model"]
        mean, scale, coef = np.zeros(x.shape[1]), np.ones(x.shape[1]), np.zeros(x.shape[1])
        mean[keep], scale[keep], coef[keep] = scaler.mean_, scaler.scale_, linear.coef_[0]
        maps, weights, source = [[1.0, 0.0], [1.0, 0.0]], [1.0, 1.0], "no calibration cases: raw logits averaged"
        calib = _density_table(self.dataset)
        if calib is not None and np.unique(calib[1]).size == 2:
            pred = predict(self.network, self.dataset, device=self.device)
            labelled = [i for i, label in enumerate(pred[Columns.LABEL]) if label in (0.0, 1.0)]
            p_mil, labels = np.asarray(pred["prob"])[labelled], np.asarray(pred[Columns.LABEL])[labelled]
            p_q = model.predict_proba(calib[0])[:, list(model.classes_).index(1)]
            fits = [fit_calibration(p, labels, "platt") for p in (p_mil, p_q)]
            weights = [1.0 if f["coef"] > 0 else 0.0 for f in fits]
            maps = [[f["coef"], f["intercept"]] if f["coef"] > 0 else [1.0, 0.0] for f in fits]
            source = f"Platt maps on {len(labels)} calibration cases ({int(labels.sum())} positive)"
            if not any(weights):
                maps, weights = [[1.0, 0.0], [1.0, 0.0]], [1.0, 1.0]
                source += "; both rank them against the labels: raw logits averaged"
            elif not all(weights):
                source += f"; the {'MIL' if not weights[0] else 'density'} logit ranks them against the labels and gets no weight"
        elif calib is not None and len(calib[1]):
            source = f"the {len(calib[1])} calibration cases hold one class: raw logits averaged"
        fusion.set_fit(mean, scale, coef, float(linear.intercept_[0]), maps, weights)
        return {"fitted": True, "C": float(linear.C), "n_fit": int(y.size), "source": f"density model on {y.size} "
                f"training cases (C={linear.C:g}); {source}", **fusion.summary()}  # fmt: skip
