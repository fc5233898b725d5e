"""The Grad-CAM family: class activation maps from one layer (CNN feature maps, transformer tokens).

Every method shares flashtorch's calling convention (``Method(model, layer=..., **options)
(inputs, target=...) -> Attribution``) and is registered for :func:`flashtorch.attribute`:

==================  ==============================  ==========================================
registry name       class                           paper
==================  ==============================  ==========================================
``gradcam``         :class:`GradCAM`                Selvaraju et al. 2017
``gradcam_pp``      :class:`GradCAMPlusPlus`        Chattopadhay et al. 2018
``scorecam``        :class:`ScoreCAM`               Wang et al. 2020
``layercam``        :class:`LayerCAM`               Jiang et al. 2021
``guided_gradcam``  :class:`GuidedGradCAM`          Selvaraju et al. 2017 (x Springenberg 2014)
==================  ==============================  ==========================================

Maps are ``(B, 1, H, W)`` (``(B, C, H, W)`` for Guided Grad-CAM), upsampled to the input size,
ReLU'd and min-max normalised per image unless ``relu=False`` / ``normalize=False``. How the
default layer is chosen, and what happens with shared modules, is described in
:mod:`flashtorch.cam.base`.

Example:
    >>> import torch, torchvision
    >>> from flashtorch import attribute
    >>> model = torchvision.models.resnet18()
    >>> result = attribute(model, torch.randn(1, 3, 64, 64), method="gradcam", layer="layer4")
    >>> result.maps.shape
    torch.Size([1, 1, 64, 64])
"""

from .base import CAMMethod, Capture, default_layer, normalize_maps, upsample
from .gradcam import GradCAM, gradcam_map, gradcam_weights
from .gradcam_pp import GradCAMPlusPlus, gradcam_pp_weights
from .guided_gradcam import GuidedGradCAM
from .layercam import LayerCAM, layercam_map
from .scorecam import ScoreCAM, scorecam_scores

__all__ = [
    "CAMMethod",
    "Capture",
    "GradCAM",
    "GradCAMPlusPlus",
    "GuidedGradCAM",
    "LayerCAM",
    "ScoreCAM",
    "default_layer",
    "gradcam_map",
    "gradcam_pp_weights",
    "gradcam_weights",
    "layercam_map",
    "normalize_maps",
    "scorecam_scores",
    "upsample",
]
