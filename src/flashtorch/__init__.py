"""flashtorch: see what a vision model sees.

Saliency maps, attribution methods, CAMs, feature visualisation and trust metrics for PyTorch
image models, batched, device-agnostic and leaving the user's model exactly as it was found.

Example:
    >>> from flashtorch import attribute
    >>> from flashtorch.models import load_pretrained
    >>> from flashtorch.utils import apply_transforms, load_image
    >>> model = load_pretrained()
    >>> x = apply_transforms(load_image("examples/images/coffee.jpg"))
    >>> result = attribute(model, x, target="espresso", method="guided")

``import flashtorch`` is light: the names below are imported on first use (PEP 562), so that
``flashtorch --help``, ``--version``, ``classes`` and ``methods`` start without importing torch.
Reading any of them (or :data:`flashtorch.attribution.METHODS`) imports every method family
first, so the registry is always complete.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "1.0.0"

if TYPE_CHECKING:  # what the lazy names are, for type checkers and editors
    from . import activmax, attention, cam, metrics, progress, saliency
    from ._fast import clear_fast_cache, fold_batchnorm
    from ._graphs import GraphedMethod, graphed
    from .api import attribute, attribute_many
    from .attribution import (
        METHODS,
        Attribution,
        AttributionMethod,
        available_methods,
        get_method,
        reduce_channels,
    )
    from .runs import open_run, run
    from .saliency import Backprop

__all__ = [
    "activmax",
    "attention",
    "cam",
    "metrics",
    "progress",
    "saliency",
    "METHODS",
    "Attribution",
    "AttributionMethod",
    "Backprop",
    "GraphedMethod",
    "__version__",
    "attribute",
    "attribute_many",
    "available_methods",
    "clear_fast_cache",
    "fold_batchnorm",
    "get_method",
    "graphed",
    "reduce_channels",
    "open_run",
    "run",
]

#: Public name -> the submodule that defines it (``None``: the name is a submodule).
_LAZY: dict[str, str | None] = {
    "activmax": None,
    "attention": None,
    "cam": None,
    "metrics": None,
    "progress": None,  # light: no method family is imported for it
    "saliency": None,
    "METHODS": "attribution",
    "Attribution": "attribution",
    "AttributionMethod": "attribution",
    "available_methods": "attribution",
    "get_method": "attribution",
    "reduce_channels": "attribution",
    "Backprop": "saliency",
    "GraphedMethod": "_graphs",
    "graphed": "_graphs",
    "clear_fast_cache": "_fast",
    "fold_batchnorm": "_fast",
    "attribute": "api",
    "attribute_many": "api",
    "run": "runs",  # zarr and pyarrow are needed only when a run starts
    "open_run": "runs",
}


def load_methods() -> None:
    """Import every method family, which registers its methods in ``METHODS``.

    The order is the registry's: the gradient family first, then the CAMs, then the attention
    methods. Idempotent and cheap once done.
    """
    for family in _FAMILIES:  # import_module: `from . import x` would call __getattr__
        importlib.import_module(f"{__name__}.{family}")


#: The method packages in registry order (importing one registers its methods).
_FAMILIES = ("saliency", "activmax", "attention", "cam", "metrics")


def __getattr__(name: str) -> object:
    """The public names, imported on first use (PEP 562)."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = _LAZY[name]
    if module != "runs" and name != "progress":
        load_methods()
    if module is None:
        return importlib.import_module(f"{__name__}.{name}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
