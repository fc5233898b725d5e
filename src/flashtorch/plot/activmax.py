"""Feature-visualisation figures: a grid of rendered channels, and PNG export.

matplotlib is imported inside the functions (through :func:`._common.new_figure`); figures are
headless ``Figure`` objects that display in notebooks and never open a window.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError
from ._common import atomic_write_bytes, finish_figure, new_figure, save_figure, to_image


def _images(images: Tensor | Sequence[Tensor], name: str = "images") -> Tensor:
    """Tensor (B, 3, H, W) / (3, H, W) or a list of same-size images -> (B, 3, H, W) on CPU."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise InputError(f"{name} is an empty list")
        items = [_images(t, name) for t in images]
        if len({tuple(t.shape[1:]) for t in items}) != 1:
            raise InputError(f"{name} must all have the same size to share a grid")
        return torch.cat(items)
    if not isinstance(images, Tensor):
        raise InputError(f"{name} must be a tensor (B, 3, H, W), got {type(images).__name__}")
    t = images.detach()
    if t.dim() == 3:
        t = t.unsqueeze(0)
    if t.dim() != 4 or t.shape[1] not in (1, 3):
        raise InputError(f"{name} must be (B, 3, H, W) or (3, H, W), got {tuple(images.shape)}")
    return t.float().cpu()


def channel_grid(
    images: Tensor | Sequence[Tensor],
    titles: Sequence[str] | None = None,
    ncols: int = 4,
    title: str | None = None,
    figsize: tuple[float, float] | None = None,
    save_path: str | os.PathLike | None = None,
) -> Any:
    """Show rendered images (one per channel) in a grid with a title per cell.

    Args:
        images: ``(B, 3, H, W)`` in ``[0, 1]`` (e.g. :func:`flashtorch.activmax.render`'s
            images), or a list of same-size images.
        titles: one label per image (e.g. ``"channel 3"``); default none.
        ncols: number of columns (fewer if there are fewer images).
        title: figure title.
        figsize: figure size in inches; default ``3`` inches per cell.
        save_path: also save the figure there (PNG/PDF/SVG by suffix, atomically).

    Returns:
        A matplotlib ``Figure``.
    """
    x = _images(images)
    n = x.shape[0]
    if titles is not None and len(titles) != n:
        raise InputError(f"{len(titles)} titles for {n} images")
    if isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1:
        raise InputError(f"ncols must be a positive int, got {ncols!r}")
    cols = min(ncols, n)
    rows = math.ceil(n / cols)
    fig = new_figure(
        figsize or (3.0 * cols, 3.2 * rows + (0.4 if title else 0.0)), layout="constrained"
    )
    for i in range(rows * cols):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.set_axis_off()
        if i < n:
            ax.imshow(to_image(x[i]), interpolation="nearest")
            if titles is not None:
                ax.set_title(titles[i], fontsize=10)
    return finish_figure(fig, title, save_path, tight=False)


def image_figure(
    image: Tensor,
    title: str | None = None,
    figsize: tuple[float, float] = (4, 4),
    save_path: str | os.PathLike | None = None,
) -> Any:
    """One rendered image ``(3, H, W)`` / ``(1, 3, H, W)`` in ``[0, 1]`` as a figure."""
    x = _images(image, "image")
    if x.shape[0] != 1:
        raise InputError(f"image_figure shows one image, got a batch of {x.shape[0]}")
    fig = new_figure(figsize, layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    ax.set_axis_off()
    ax.imshow(to_image(x[0]))
    if title:
        ax.set_title(title)
    if save_path is not None:
        save_figure(fig, save_path)
    return fig


def tile(
    images: Tensor | Sequence[Tensor],
    ncols: int | None = None,
    padding: int = 2,
    pad_value: float = 1.0,
) -> Tensor:
    """Tile ``(B, 3, H, W)`` images into one ``(3, H', W')`` image (row-major, white gaps)."""
    x = _images(images).clamp(0, 1)
    n, c, h, w = x.shape
    cols = min(ncols or math.ceil(math.sqrt(n)), n)
    rows = math.ceil(n / cols)
    out = torch.full(
        (c, rows * h + (rows - 1) * padding, cols * w + (cols - 1) * padding), float(pad_value)
    )
    for i in range(n):
        r, k = divmod(i, cols)
        top, left = r * (h + padding), k * (w + padding)
        out[:, top : top + h, left : left + w] = x[i]
    return out


def save_images(
    images: Tensor | Sequence[Tensor],
    path: str | os.PathLike,
    ncols: int | None = None,
    padding: int = 2,
) -> Path:
    """Save images in ``[0, 1]`` as one PNG (a grid if several), without matplotlib.

    Returns:
        The path written (atomically).
    """
    from PIL import Image

    grid = tile(images, ncols, padding)
    arr = (grid.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    if arr.shape[2] == 1:
        arr = arr[..., 0]
    buffer = io.BytesIO()
    fmt = (Path(path).suffix[1:] or "png").upper()
    Image.fromarray(arr).save(buffer, format="JPEG" if fmt == "JPG" else fmt)
    return atomic_write_bytes(path, buffer.getvalue())


__all__ = ["channel_grid", "image_figure", "save_images", "tile"]
