"""Saliency maps by backpropagation and the wider attribution family.

:class:`Backprop` keeps the talk's API; the method classes share flashtorch's one calling
convention (``Method(model, **options)(inputs, target=...) -> Attribution``).
"""

from .backprop import Backprop
from .gradient import Deconvnet, Gradient, GradientXInput, GuidedBackprop, input_gradients

__all__ = [
    "Backprop",
    "Deconvnet",
    "Gradient",
    "GradientXInput",
    "GuidedBackprop",
    "input_gradients",
]
