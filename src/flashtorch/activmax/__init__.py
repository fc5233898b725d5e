"""Feature visualisation: activation maximisation and DeepDream.

Three composable pieces (Lucid's split, Olah et al. 2017, "Feature Visualization", Distill):

* :mod:`.objectives` - what to maximise: ``channel``, ``neuron``, ``layer`` (DeepDream),
  ``class_logit``, ``direction``, ``diversity``, ``total_variation``, ``l2``; they add, subtract,
  scale and ``sum``.
* :mod:`.param` - how the image is parametrised: ``pixel`` or ``fft`` sources chained with
  ``decorrelate`` and ``sigmoid`` stages (``image(size)`` is the standard chain).
* :mod:`.transforms` - seeded, differentiable robustness transforms (``pad``, ``jitter``,
  ``random_scale``, ``random_rotate``; ``standard_transforms()``).

:func:`render` optimises them; :func:`deepdream` dreams on a photo over octaves;
:class:`GradientAscent` is the FlashTorch talk's API on top.

Example:
    >>> from flashtorch.activmax import render, channel, total_variation
    >>> images, history = render(model, channel("net.blocks.3", range(8)), param=128)
"""

from . import objectives, param, transforms
from .deepdream import DreamResult, deepdream
from .gradient_ascent import GradientAscent
from .objectives import (
    Objective,
    channel,
    class_logit,
    direction,
    diversity,
    l2,
    layer,
    neuron,
    total_variation,
)
from .param import image
from .render import IMAGENET_MEAN, IMAGENET_STD, RenderResult, render
from .transforms import standard_transforms

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DreamResult",
    "GradientAscent",
    "Objective",
    "RenderResult",
    "channel",
    "class_logit",
    "deepdream",
    "direction",
    "diversity",
    "image",
    "l2",
    "layer",
    "neuron",
    "objectives",
    "param",
    "render",
    "standard_transforms",
    "total_variation",
    "transforms",
]
