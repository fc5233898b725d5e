r"""Layer-CAM (Jiang et al. 2021).

"LayerCAM: Exploring Hierarchical Class Activation Maps for Localization", IEEE Transactions on
Image Processing 30, 2021, doi:10.1109/TIP.2021.3089943. Every activation *pixel* is weighted by
its own positive gradient instead of a channel average, which keeps fine detail and works on
shallow layers too:

.. math::

    L = \mathrm{ReLU}\Big(\sum_k \mathrm{ReLU}\big(\tfrac{\partial y}{\partial A_k}\big)
        \odot A_k\Big)
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from .._targets import Target
from ..attribution import register
from .base import CAMMethod, Capture


def layercam_map(activation: Tensor, gradient: Tensor) -> Tensor:
    r""":math:`\sum_k \mathrm{ReLU}(G_k) \odot A_k` before the final ReLU, ``(B, 1, h, w)``."""
    return (gradient.clamp_min(0) * activation).sum(dim=1, keepdim=True)


@register
class LayerCAM(CAMMethod):
    r"""Layer-CAM: activations weighted pixel by pixel by their positive gradients.

    .. math::

        L = \mathrm{ReLU}\Big(\sum_k \mathrm{ReLU}\big(\tfrac{\partial y}{\partial A_k}\big)
            \odot A_k\Big)

    Jiang et al., "LayerCAM: Exploring Hierarchical Class Activation Maps for Localization",
    IEEE TIP 2021. Same cost as Grad-CAM; options are those of
    :class:`~flashtorch.cam.base.CAMMethod`. (The paper's ``tanh`` rescaling applies only when
    fusing maps of several layers, which this class does not do.)
    """

    name: ClassVar[str] = "layercam"

    def cam(self, capture: Capture, target: Target) -> tuple[Tensor, dict[str, Tensor]]:
        """Pixel-wise positive-gradient weighting."""
        return layercam_map(capture.activation, capture.grad), {}


__all__ = ["LayerCAM", "layercam_map"]
