r"""Grad-CAM++ (Chattopadhay et al. 2018).

"Grad-CAM++: Generalized Gradient-based Visual Explanations for Deep Convolutional Networks",
WACV 2018, arXiv:1710.11063. Pixel-wise weights :math:`\alpha` make several instances of a class
count fully. With the exponential of the score, :math:`Y = \exp(y)`, the higher derivatives are
powers of the first one, :math:`G = \partial y / \partial A`, giving the closed form (eq. 19):

.. math::

    \alpha_{k,ij} = \frac{G_{k,ij}^2}
        {2 G_{k,ij}^2 + \big(\sum_{a,b} A_{k,ab}\big) G_{k,ij}^3}, \qquad
    w_k = \sum_{i,j} \alpha_{k,ij} \, \mathrm{ReLU}(G_{k,ij}), \qquad
    L = \mathrm{ReLU}\Big(\sum_k w_k A_k\Big)

The common factor :math:`\exp(y)` of the paper's :math:`w_k` is dropped (it scales each image's
map by a constant, which the normalisation removes), as pytorch-grad-cam and torchcam do.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from .._targets import Target
from ..attribution import register
from ..errors import MethodError
from .base import CAMMethod, Capture, Reshape
from .gradcam import weighted_sum


def gradcam_pp_weights(activation: Tensor, gradient: Tensor, eps: float = 0.0) -> Tensor:
    r"""Grad-CAM++ channel weights, ``(B, K, h, w) x 2 -> (B, K)``.

    With ``eps == 0`` the coefficient is computed as
    :math:`\alpha = 1 / (2 + S_k G)` with :math:`S_k = \sum_{ab} A_{k,ab}` - the paper's
    :math:`G^2 / (2 G^2 + S_k G^3)` with :math:`G^2` cancelled, which cannot underflow for small
    gradients. With ``eps > 0`` it is :math:`G^2 / (2 G^2 + S_k G^3 + \epsilon)`, the form of
    pytorch-grad-cam (which uses :math:`\epsilon = 10^{-6}`; note that on trained networks
    :math:`G^2` is often below :math:`10^{-6}`, so that :math:`\epsilon` changes the weights).
    Either way :math:`\alpha = 0` where :math:`G = 0` or the denominator vanishes.
    """
    total = activation.sum(dim=(2, 3), keepdim=True)
    if eps == 0:
        denom = 2 + total * gradient
        ok = (gradient != 0) & (denom != 0)
        alpha = torch.where(ok, 1 / torch.where(ok, denom, torch.ones_like(denom)), 0.0)
    else:
        g2 = gradient.pow(2)
        denom = 2 * g2 + total * g2 * gradient + eps
        ok = (gradient != 0) & (denom != 0)
        alpha = torch.where(ok, g2 / torch.where(ok, denom, torch.ones_like(denom)), 0.0)
    return (alpha * gradient.clamp_min(0)).sum(dim=(2, 3))


@register
class GradCAMPlusPlus(CAMMethod):
    r"""Grad-CAM++: pixel-weighted positive gradients (Chattopadhay et al. 2018).

    .. math::

        \alpha_{k,ij} = \frac{G_{k,ij}^2}
            {2 G_{k,ij}^2 + \big(\sum_{a,b} A_{k,ab}\big) G_{k,ij}^3}, \qquad
        w_k = \sum_{i,j} \alpha_{k,ij} \, \mathrm{ReLU}(G_{k,ij}), \qquad
        L = \mathrm{ReLU}\Big(\sum_k w_k A_k\Big)

    with :math:`G = \partial y / \partial A` ("exponential score" closed form, eq. 19 of
    "Grad-CAM++: Generalized Gradient-based Visual Explanations for Deep Convolutional
    Networks", WACV 2018, arXiv:1710.11063). Same cost as Grad-CAM.

    Args:
        model: the model.
        layer: see :class:`~flashtorch.cam.base.CAMMethod` (also ``call``, ``relu``,
            ``normalize``, ``interpolation``, ``reshape``, ``eval_mode``, ``fast``, ``amp``).
        eps: added to the denominator of :math:`\alpha`; ``0`` (default) is the paper's formula,
            ``1e-6`` reproduces pytorch-grad-cam's ``GradCAMPlusPlus``
            (see :func:`gradcam_pp_weights`).

    ``extras["weights"]`` holds :math:`w`, ``(B, K)``.
    """

    name: ClassVar[str] = "gradcam_pp"

    def __init__(
        self,
        model: nn.Module,
        layer: nn.Module | str | None = None,
        *,
        call: int | None = None,
        relu: bool = True,
        normalize: bool = True,
        interpolation: str = "bilinear",
        reshape: Reshape | None = None,
        eps: float = 0.0,
        eval_mode: bool = True,
        fast: bool = False,
        amp: bool = False,
    ) -> None:
        super().__init__(
            model,
            layer,
            call=call,
            relu=relu,
            normalize=normalize,
            interpolation=interpolation,
            reshape=reshape,
            eval_mode=eval_mode,
            fast=fast,
            amp=amp,
        )
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
            raise MethodError(f"eps must be a non-negative number, got {eps!r}")
        self.eps = float(eps)

    def cam(self, capture: Capture, target: Target) -> tuple[Tensor, dict[str, Tensor]]:
        """Grad-CAM++ weights and weighted sum."""
        weights = gradcam_pp_weights(capture.activation, capture.grad, self.eps)
        return weighted_sum(capture.activation, weights), {"weights": weights}


__all__ = ["GradCAMPlusPlus", "gradcam_pp_weights"]
