"""The talk's helpers: ``load_image``, ``apply_transforms``, ``denormalize``, ``visualize``...

``visualize`` draws with matplotlib, imported only when it is called; the image helpers
(torch) are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .imagenet import ImageNetIndex

if TYPE_CHECKING:
    from .image import (
        IMAGENET_MEAN,
        IMAGENET_STD,
        apply_transforms,
        denormalize,
        format_for_plotting,
        load_image,
        standardize_and_clip,
    )

#: The image helpers (they need torch), imported on first use so that ``ImageNetIndex``
#: (``flashtorch classes``) does not import torch.
_IMAGE_NAMES = frozenset(
    {
        "IMAGENET_MEAN",
        "IMAGENET_STD",
        "apply_transforms",
        "denormalize",
        "format_for_plotting",
        "load_image",
        "standardize_and_clip",
    }
)


def __getattr__(name: str) -> Any:
    """The image helpers, imported from :mod:`flashtorch.utils.image` on first use."""
    if name in _IMAGE_NAMES:
        value = getattr(importlib.import_module(f"{__name__}.image"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


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
