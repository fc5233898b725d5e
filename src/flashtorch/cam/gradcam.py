r"""Grad-CAM (Selvaraju et al. 2017).

"Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization", ICCV 2017,
arXiv:1610.02391. Each channel :math:`k` of the layer's activation :math:`A` is weighted by its
spatially averaged gradient:

.. math::

    w_k = \frac{1}{hw} \sum_{i,j} \frac{\partial y}{\partial A_{k,ij}}, \qquad
    L = \mathrm{ReLU}\Big(\sum_k w_k A_k\Big)

Cost: one forward pass and one backward pass from the score to the layer (no input gradient,
no parameter gradient).
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from .._targets import Target
from ..attribution import register
from .base import CAMMethod, Capture


def gradcam_weights(gradient: Tensor) -> Tensor:
    r"""Channel weights :math:`w_k = \operatorname{mean}_{ij} G_{k,ij}`, ``(B, K, h, w) -> (B, K)``.

    Args:
        gradient: :math:`G = \partial y / \partial A`.
    """
    return gradient.mean(dim=(2, 3))


def weighted_sum(activation: Tensor, weights: Tensor) -> Tensor:
    r""":math:`\sum_k w_k A_k`: ``(B, K, h, w)``, ``(B, K) -> (B, 1, h, w)`` (no ReLU)."""
    return (weights[:, :, None, None] * activation).sum(dim=1, keepdim=True)


def gradcam_map(activation: Tensor, gradient: Tensor) -> Tensor:
    r"""The coarse Grad-CAM map :math:`\sum_k w_k A_k` before ReLU, ``(B, 1, h, w)``."""
    return weighted_sum(activation, gradcam_weights(gradient))


@register
class GradCAM(CAMMethod):
    r"""Grad-CAM: activation maps weighted by their average gradient (Selvaraju et al. 2017).

    .. math::

        w_k = \frac{1}{hw} \sum_{i,j} \frac{\partial y}{\partial A_{k,ij}}, \qquad
        L = \mathrm{ReLU}\Big(\sum_k w_k A_k\Big)

    "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization",
    ICCV 2017, arXiv:1610.02391. With ``relu=False, normalize=False`` the map equals Captum's
    ``LayerGradCam`` followed by ``LayerAttribution.interpolate(..., "bilinear")``.

    Options are those of :class:`~flashtorch.cam.base.CAMMethod` (``layer``, ``call``,
    ``relu``, ``normalize``, ``interpolation``). ``extras["weights"]`` holds :math:`w`,
    ``(B, K)``.

    Example:
        >>> import torch, torchvision
        >>> from flashtorch.cam import GradCAM
        >>> model = torchvision.models.resnet18()
        >>> result = GradCAM(model)(torch.randn(2, 3, 64, 64), target=[1, 2])
        >>> result.maps.shape
        torch.Size([2, 1, 64, 64])
    """

    name: ClassVar[str] = "gradcam"

    def cam(self, capture: Capture, target: Target) -> tuple[Tensor, dict[str, Tensor]]:
        """Weight each channel by its mean gradient and sum."""
        weights = gradcam_weights(capture.grad)
        return weighted_sum(capture.activation, weights), {"weights": weights}


__all__ = ["GradCAM", "gradcam_map", "gradcam_weights", "weighted_sum"]
