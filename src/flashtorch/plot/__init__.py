"""Figures. matplotlib is imported inside the functions, never at ``import flashtorch``.

Each function returns a matplotlib ``Figure`` (or draws on a given axis) and can save it
atomically; nothing opens a window, so everything works headless.
"""

from ._common import save_figure
from .saliency import overlay, visualize

__all__ = ["overlay", "save_figure", "visualize"]
