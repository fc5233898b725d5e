"""The talk's helpers: ``load_image``, ``apply_transforms``, ``denormalize``, ``visualize``...

``visualize`` draws with matplotlib, imported only when it is called.
"""

from __future__ import annotations

from typing import Any

from .image import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    apply_transforms,
    denormalize,
    format_for_plotting,
    load_image,
    standardize_and_clip,
)
from .imagenet import ImageNetIndex


def visualize(*args: Any, **kwargs: Any) -> Any:
    """The talk's four-panel figure; see :func:`flashtorch.plot.visualize`."""
    from ..plot import visualize as _visualize

    return _visualize(*args, **kwargs)


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageNetIndex",
    "apply_transforms",
    "denormalize",
    "format_for_plotting",
    "load_image",
    "standardize_and_clip",
    "visualize",
]
