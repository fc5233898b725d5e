r"""Guided Grad-CAM (Selvaraju et al. 2017).

Guided backpropagation (Springenberg et al. 2014) gives fine, class-unspecific detail; Grad-CAM
gives a coarse, class-specific region. Their product is both:

.. math::

    M = \frac{\partial^{\mathrm{guided}} y}{\partial x} \odot
        \mathrm{Up}\big(L^{\mathrm{Grad\text{-}CAM}}\big)

"Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization", ICCV 2017,
arXiv:1610.02391, section 3.2. The guided pass modifies every rectifier the model runs (see
:mod:`flashtorch.saliency.gradient`). Cost: Grad-CAM plus one guided-backprop pass.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from .._targets import Target
from ..attribution import MethodOutput, register
from ..saliency.gradient import input_gradients
from .gradcam import GradCAM


@register
class GuidedGradCAM(GradCAM):
    r"""Guided Grad-CAM: guided backprop times the upsampled Grad-CAM map.

    .. math::

        M = \frac{\partial^{\mathrm{guided}} y}{\partial x} \odot
            \mathrm{Up}\Big(\mathrm{ReLU}\big(\textstyle\sum_k w_k A_k\big)\Big)

    Selvaraju et al., ICCV 2017, arXiv:1610.02391. Maps are ``(B, C, H, W)`` like the input.
    With ``normalize=False`` the map equals Captum's ``GuidedGradCam`` with
    ``interpolate_mode="bilinear"`` (on models whose rectifiers Captum sees); with
    ``normalize=True`` (default) the Grad-CAM factor is scaled to ``[0, 1]`` per image first.
    Options are those of :class:`~flashtorch.cam.base.CAMMethod`. ``extras["cam"]`` holds the
    upsampled Grad-CAM factor ``(B, 1, H, W)``.
    """

    name: ClassVar[str] = "guided_gradcam"
    single_channel: ClassVar[bool] = False

    def compute(self, inputs: Tensor, target: Target) -> MethodOutput:
        """Grad-CAM, then guided backprop for the same targets, multiplied."""
        cam = super().compute(inputs, target)
        same = cam.targets if cam.targets is not None else target
        guided = input_gradients(self.model, inputs, same, "guided", method=self.name)
        extras = dict(cam.extras)
        extras["cam"] = cam.maps
        return MethodOutput(guided.maps * cam.maps, cam.output, cam.targets, cam.scores, extras)


__all__ = ["GuidedGradCAM"]
