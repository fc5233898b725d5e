r"""Guided Grad-CAM (Selvaraju et al. 2017).

Guided backpropagation (Springenberg et al. 2014) gives fine, class-unspecific detail; Grad-CAM
gives a coarse, class-specific region. Their product is both:

.. math::

    M = \frac{\partial^{\mathrm{guided}} y}{\partial x} \odot
        \mathrm{Up}\big(L^{\mathrm{Grad\text{-}CAM}}\big)

"Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization", ICCV 2017,
arXiv:1610.02391, section 3.2. The guided pass modifies every rectifier the model runs (see
:mod:`flashtorch.saliency.gradient`).

Cost: **one** forward pass. When no rectifier runs between the layer and the score (ResNet's
``layer4``, EfficientNet's ``bn2``, most default layers) the guided rule leaves
:math:`\partial y / \partial A` unchanged, so a single ``torch.autograd.grad(y, [A, x])`` gives
the plain layer gradient for Grad-CAM and the guided input gradient together: the cost of one
guided backprop. With rectifiers in between (a ReLU after the layer, as DenseNet's functional
``F.relu`` after ``features``) the same forward graph serves two backward passes: a plain one
to the layer (graph retained), then the guided one to the input. Only a layer output modified
in place after the layer returned (``out += identity`` on a ResNet's ``bn2``) takes Grad-CAM
plus a separate guided pass, as Captum's ``GuidedGradCam`` always does. The choice is remembered
per model, layer and input shape; :attr:`GuidedGradCAM.passes` tells what the last call did (the
first call with ``layer=None`` on a model and input shape also runs the default-layer pass of
:mod:`flashtorch.cam.base`, not counted there).
"""

from __future__ import annotations

import weakref
from typing import ClassVar

import torch
from torch import Tensor, nn

from .._guards import model_input
from .._surgery import LayerRecorder, RectifierRule, rectifiers_between
from .._targets import ResolvedTarget, Target
from ..attribution import MethodOutput, register
from ..saliency.gradient import input_gradients
from .base import _default_name, _resolve_scores
from .gradcam import GradCAM

#: model (weakly referenced) -> {(layer, call, input shape): whether one forward serves both}.
_ONE_PASS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, bool]] = weakref.WeakKeyDictionary()


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
    upsampled Grad-CAM factor ``(B, 1, H, W)``; :attr:`passes` says how many
    ``(forward, backward)`` passes the last call took (see the module docstring).
    """

    name: ClassVar[str] = "guided_gradcam"
    single_channel: ClassVar[bool] = False
    freezes = True  # its guided gradient goes back to the input

    #: ``(forward, backward)`` passes of the last call: ``(1, 1)``, ``(1, 2)`` or ``(2, 2)``.
    passes: tuple[int, int] = (0, 0)

    def compute(self, net: nn.Module, inputs: Tensor, target: Target) -> MethodOutput:
        """One pass when exact (see the module docstring), else Grad-CAM then guided backprop."""
        layer = self.layer if self.layer is not None else _default_name(net, inputs, target)
        key = (layer, self.call, tuple(inputs.shape[1:]))
        if _ONE_PASS.get(net, {}).get(key) is not False:
            out = self._one_pass(net, inputs, target, layer, key)
            if out is not None:
                return out
        self.passes = (2, 2)
        cam = super().compute(net, inputs, target)
        same = target if cam.targets is None else ResolvedTarget.checked(cam.targets)
        guided = input_gradients(net, inputs, same, "guided", method=self.name)
        extras = dict(cam.extras)
        extras["cam"] = cam.maps
        return MethodOutput(guided.maps * cam.maps, cam.output, cam.targets, cam.scores, extras)

    def _one_pass(
        self, net: nn.Module, inputs: Tensor, target: Target, layer: str, key: tuple
    ) -> MethodOutput | None:
        """Both gradients from one forward pass, or ``None`` when that is not possible.

        Not possible: the layer's recorded output is not the one the graph continues from
        (modified in place), or the score has no gradient (the two-pass path raises).
        """
        x = inputs.detach().requires_grad_(True)
        with torch.enable_grad():
            with LayerRecorder(net, layer, self.call) as recorder:
                output = net(model_input(x))  # a copy: the model may edit its input
            activation = recorder.output
            layout = self._layout(net, recorder.name, activation, inputs)
            scores, indices = _resolve_scores(target, output)
            usable = (
                scores.requires_grad and activation.requires_grad and not recorder.modified_in_place
            )
            _ONE_PASS.setdefault(net, {})[key] = usable
            if not usable:
                return None  # the two-pass path also gives the precise error, if any
            total = scores.sum()
            rule = RectifierRule("guided")
            if rectifiers_between(scores, activation) == 0:
                # dy/dA is the same under the guided rule: one backward for both gradients
                rule.attach(scores)
                grad_a, grad_x = torch.autograd.grad(total, [activation, x])
                self.passes = (1, 1)
            else:
                (grad_a,) = torch.autograd.grad(total, activation, retain_graph=True)
                rule.attach(scores)
                (grad_x,) = torch.autograd.grad(total, x)
                self.passes = (1, 2)
            rule.warn_if_unused(self.name, self.model)
        capture = self._packed(
            net, inputs, activation, grad_a, output, scores, indices, recorder.name, layout
        )
        coarse, extras = self.cam(capture, target)
        cam = self.finish(coarse, (inputs.shape[-2], inputs.shape[-1]))
        extras["cam"] = cam
        return MethodOutput(grad_x * cam, capture.output, capture.indices, capture.scores, extras)


__all__ = ["GuidedGradCAM"]
