"""Trust metrics for attribution maps: faithfulness, localisation, sanity.

* :mod:`~flashtorch.metrics.faithfulness` - deletion / insertion curves and their AUC
  (Petsiuk et al. 2018).
* :mod:`~flashtorch.metrics.localisation` - pointing game (Zhang et al. 2016) and energy-based
  pointing game (Wang et al. 2020) against masks or boxes.
* :mod:`~flashtorch.metrics.sanity` - cascading model-parameter randomisation with Spearman rank
  correlation and SSIM (Adebayo et al. 2018).

All of them take maps as tensors or :class:`~flashtorch.Attribution` results, work batch-first,
and leave the model as they found it.
"""

from ._maps import boxes_to_masks
from .faithfulness import Curve, auc, deletion, gaussian_blur, insertion, perturbation_curve
from .localisation import energy_pointing_game, pointing_game
from .sanity import (
    SanityResult,
    cascade_layers,
    model_randomization,
    randomize_parameters,
    spearman,
    ssim,
)

__all__ = [
    "Curve",
    "SanityResult",
    "auc",
    "boxes_to_masks",
    "cascade_layers",
    "deletion",
    "energy_pointing_game",
    "gaussian_blur",
    "insertion",
    "model_randomization",
    "perturbation_curve",
    "pointing_game",
    "randomize_parameters",
    "spearman",
    "ssim",
]
