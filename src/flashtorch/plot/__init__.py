"""Figures. matplotlib is imported inside the functions, never at ``import flashtorch``.

Each function returns a matplotlib ``Figure`` (or draws on a given axis) and can save it
atomically; nothing opens a window, so everything works headless.
"""

from ._common import save_figure
from .activmax import channel_grid, image_figure, save_images
from .attribution import attribution_grid, compare_images, compare_methods, display_maps
from .compare import compare_models, model_maps
from .saliency import overlay, visualize

__all__ = [
    "channel_grid",
    "image_figure",
    "save_images",
    "attribution_grid",
    "compare_images",
    "compare_methods",
    "compare_models",
    "display_maps",
    "model_maps",
    "overlay",
    "save_figure",
    "visualize",
]
