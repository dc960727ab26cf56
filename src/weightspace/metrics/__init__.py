"""Classification metrics for one model, a batch of models, and ensembles.

Every metric is plain torch and batched over arbitrary *leading* dimensions, so a zoo of
models is scored in one call without a Python loop over models:

- ``logits`` / ``probs`` have shape ``(..., N, C)`` (``N`` samples, ``C`` classes),
- ``labels`` have shape ``(N,)`` or ``(..., N)`` (anything that broadcasts to ``(..., N)``),
  integer class indices,
- ``mask`` (optional, bool) broadcasts to ``(..., N)``; ``False`` marks padded samples
  (the zoo pads tasks of different sizes), which count nowhere: not in a numerator, not
  in a denominator, and their labels and logits are not even validated,
- the result has shape ``(...)``, a 0-dim tensor when there are no leading dims.

The metric set is the one reported by LatentBE [1]_ ("Results on Image Classification
Tasks", Tables 1-2 of ``papers/latentbe_ensemble_distillation_weight_averaging.txt``):
ACC (:func:`accuracy`), NLL (:func:`nll`), ECE (:func:`ece`), and their calibrated
versions cNLL (:func:`calibrated_nll`) and cECE (:func:`calibrated_ece`), for which a
temperature is fitted on validation data and applied on test data before scoring,
following the "calibrated metrics" protocol of Ashukha et al. [3]_. ECE and temperature
scaling are those of Guo et al. [2]_. Deep-ensemble predictions average member
*probabilities* (Eq. (1) of [1]_, :func:`ensemble_probs`). Diversity between ensemble
members is measured by prediction disagreement and the normalized diversity of Fort et
al. [4]_.

The package holds one module per concern: :mod:`~weightspace.metrics.classification`
(accuracy, NLL, Brier), :mod:`~weightspace.metrics.calibration` (reliability bins, ECE,
temperature scaling, cNLL, cECE), :mod:`~weightspace.metrics.ensemble` (ensemble
predictions) and :mod:`~weightspace.metrics.diversity` (disagreement, normalized
diversity); every public name is re-exported here.

Metrics computed from float16/bfloat16 inputs are evaluated in float32; float64 inputs
stay in float64.

References
----------
.. [1] G. Nam, H. Lee, B. Heo, J. Lee. "Improving Ensemble Distillation With Weight
   Averaging and Diversifying Perturbation." ICML 2022.
.. [2] C. Guo, G. Pleiss, Y. Sun, K. Q. Weinberger. "On Calibration of Modern Neural
   Networks." ICML 2017 (ECE: Sec. 2; temperature scaling: Sec. 4.2).
.. [3] A. Ashukha, A. Lyzhov, D. Molchanov, D. Vetrov. "Pitfalls of In-Domain
   Uncertainty Estimation and Ensembling in Deep Learning." ICLR 2020.
.. [4] S. Fort, H. Hu, B. Lakshminarayanan. "Deep Ensembles: A Loss Landscape
   Perspective." arXiv:1912.02757, 2019.
"""

from weightspace.metrics.calibration import (
    ReliabilityBins,
    calibrated_ece,
    calibrated_nll,
    ece,
    reliability_bins,
    temperature_scale,
)
from weightspace.metrics.classification import accuracy, brier, nll
from weightspace.metrics.diversity import (
    disagreement,
    normalized_diversity,
    pairwise_disagreement,
)
from weightspace.metrics.ensemble import ensemble_log_probs, ensemble_logits, ensemble_probs

__all__ = [
    "ReliabilityBins",
    "accuracy",
    "brier",
    "calibrated_ece",
    "calibrated_nll",
    "disagreement",
    "ece",
    "ensemble_log_probs",
    "ensemble_logits",
    "ensemble_probs",
    "nll",
    "normalized_diversity",
    "pairwise_disagreement",
    "reliability_bins",
    "temperature_scale",
]
