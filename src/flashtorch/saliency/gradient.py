"""Gradient saliency: vanilla, gradient x input, guided backprop, deconvnet.

All four cost one forward pass plus one backward pass to the input (``torch.autograd.grad`` with
respect to the input, parameters frozen: no parameter gradient is computed).

Rectifier policy (guided / deconvnet): the modified backward rule is applied to every rectifier
the model actually runs - ``nn.ReLU`` (reused, in place), ``F.relu``, ``torch.relu(_)``,
``Tensor.relu(_)``, ``nn.ReLU6``/``F.relu6``, ``F.hardtanh``, ``clamp(min=0)`` and
``F.threshold(x, 0, 0)`` - found on the autograd graph of the call
(:class:`flashtorch._surgery.RectifierRule`), not by module type. Smooth
activations (SiLU, GELU, Mish, hard-swish, sigmoid gates) are not rectifiers: they keep their
exact gradient. If a model runs no rectifier, a ``UserWarning`` says the map equals the plain
gradient; if it runs a rectifier-like op the rule does not know (a custom ``autograd.Function``
named like a ReLU, ``nn.CELU``, ``F.rrelu``...), one ``UserWarning`` per call names the op (and the
layer, where the model has one of a matching type): that op keeps its plain gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._guards import model_input
from .._outputs import detach_output
from .._surgery import RectifierRule, Rule
from .._targets import AnyTarget, Target
from ..attribution import AttributionMethod, MethodOutput, forward_scores, register


def input_gradients(
    model: nn.Module,
    inputs: Tensor,
    target: AnyTarget,
    rule: Rule | None = None,
    *,
    method: str = "gradient",
) -> MethodOutput:
    """One forward and one input-only backward: ``d score_b / d x_b`` for every sample.

    Args:
        model: the model, already in the state the caller wants (see ``preserved_state``).
        inputs: ``(B, C, H, W)`` on the model's device; not modified.
        target: see :mod:`flashtorch._targets`.
        rule: ``None`` (exact gradient), ``"guided"`` or ``"deconvnet"``.
        method: name used in warnings.

    Returns:
        :class:`~flashtorch.attribution.MethodOutput` whose ``maps`` are the gradients.
    """
    x = inputs.detach().requires_grad_(True)
    with torch.enable_grad():
        # a copy of the leaf: the model may edit its input in place
        output, scores, indices = forward_scores(model, model_input(x), target)
        if rule is not None:
            rectifiers = RectifierRule(rule)
            rectifiers.attach(scores)
            rectifiers.warn_if_unused(method, model)
        if not scores.requires_grad:
            from ..errors import TargetError

            raise TargetError(
                f"{method}: the target score does not depend on the input; check the target "
                "callable and that the model does not detach its input"
            )
        (grad,) = torch.autograd.grad(scores.sum(), x)
    return MethodOutput(grad, detach_output(output), indices, scores.detach())


@register
class Gradient(AttributionMethod):
    r"""Vanilla gradient saliency (Simonyan, Vedaldi & Zisserman 2013).

    .. math:: A = \frac{\partial S_c(x)}{\partial x}

    "Deep Inside Convolutional Networks: Visualising Image Classification Models and Saliency
    Maps", arXiv:1312.6034. Use ``Attribution.reduce("max_abs")`` for the paper's
    ``max_c |A_c|`` map.
    """

    name = "gradient"
    gradient_based = True
    graph_safe = True
    rule: Rule | None = None

    def compute(self, net: nn.Module, inputs: Tensor, target: Target) -> MethodOutput:
        """See :func:`input_gradients`."""
        return input_gradients(net, inputs, target, self.rule, method=self.name)


@register
class GradientXInput(Gradient):
    r"""Gradient times input (Shrikumar et al. 2016).

    .. math:: A = x \odot \frac{\partial S_c(x)}{\partial x}

    "Not Just a Black Box: Learning Important Features Through Propagating Activation
    Differences", arXiv:1605.01713.
    """

    name = "gradient_x_input"

    def compute(self, net: nn.Module, inputs: Tensor, target: Target) -> MethodOutput:
        """Gradient times input."""
        out = super().compute(net, inputs, target)
        out.maps = out.maps * inputs
        return out


@register
class GuidedBackprop(Gradient):
    r"""Guided backpropagation (Springenberg et al. 2014).

    At every rectifier the backward signal is
    :math:`R_{in} = R_{out} \cdot [x > 0] \cdot [R_{out} > 0]` (for ReLU6/hardtanh the forward mask
    is the linear region ``lo < x < hi``). "Striving for Simplicity: The All Convolutional Net",
    arXiv:1412.6806.
    """

    name = "guided"
    rule = "guided"


@register
class Deconvnet(Gradient):
    r"""Deconvnet backward pass (Zeiler & Fergus 2014).

    At every rectifier :math:`R_{in} = \max(R_{out}, 0)`, ignoring the forward mask.
    "Visualizing and Understanding Convolutional Networks", ECCV 2014, arXiv:1311.2901.
    """

    name = "deconvnet"
    rule = "deconvnet"


__all__ = ["Deconvnet", "Gradient", "GradientXInput", "GuidedBackprop", "input_gradients"]
