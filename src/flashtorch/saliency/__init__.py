"""Saliency maps by backpropagation and the wider attribution family.

:class:`Backprop` keeps the talk's API; the method classes share flashtorch's one calling
convention (``Method(model, **options)(inputs, target=...) -> Attribution``).
"""

from .backprop import Backprop
from .gradient import Deconvnet, Gradient, GradientXInput, GuidedBackprop, input_gradients
from .integrated_gradients import IntegratedGradients
from .occlusion import Occlusion
from .smoothgrad import SmoothGrad, SmoothGradSquared, VarGrad

__all__ = [
    "Backprop",
    "Deconvnet",
    "Gradient",
    "GradientXInput",
    "GuidedBackprop",
    "IntegratedGradients",
    "Occlusion",
    "SmoothGrad",
    "SmoothGradSquared",
    "VarGrad",
    "input_gradients",
]
