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
"""

from __future__ import annotations

__version__ = "1.0.0"

# Importing the method packages registers their methods (gradient family first, then CAMs,
# then the attention methods).
from . import saliency  # noqa: E402,F401

# isort: split
from . import activmax, attention, cam, metrics  # noqa: E402,F401
from ._fast import clear_fast_cache, fold_batchnorm  # noqa: E402
from ._graphs import GraphedMethod, graphed  # noqa: E402
from .api import attribute  # noqa: E402
from .attribution import (  # noqa: E402
    METHODS,
    Attribution,
    AttributionMethod,
    available_methods,
    get_method,
    reduce_channels,
)
from .saliency import Backprop  # noqa: E402

__all__ = [
    "activmax",
    "attention",
    "cam",
    "metrics",
    "saliency",
    "METHODS",
    "Attribution",
    "AttributionMethod",
    "Backprop",
    "GraphedMethod",
    "__version__",
    "attribute",
    "available_methods",
    "clear_fast_cache",
    "fold_batchnorm",
    "get_method",
    "graphed",
    "reduce_channels",
    "open_run",
    "run",
]

_LAZY = {"run": "run", "open_run": "open_run"}


def __getattr__(name: str) -> object:
    """``flashtorch.run`` and ``flashtorch.open_run``, imported on first use.

    So ``import flashtorch`` stays light: zarr and pyarrow are needed only when a run starts.
    """
    if name in _LAZY:
        from . import runs

        return getattr(runs, _LAZY[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
