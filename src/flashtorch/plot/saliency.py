"""Saliency figures: the talk's four panels and overlays."""

from __future__ import annotations

import os
from typing import Any

from torch import Tensor

from ..errors import InputError
from ..scaling import DEFAULT_PERCENTILE, check_scaling
from ..utils.image import denormalize, standardize_and_clip
from ._common import finish_figure, heat_rgba, new_figure, scaled_maps, to_image


def _batched(t: Tensor, channels: int | None, name: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise InputError(f"{name} must be a tensor, got {type(t).__name__}")
    if t.dim() == 3:
        t = t.unsqueeze(0)
    if t.dim() != 4 or (channels is not None and t.shape[1] != channels):
        want = f"({channels}, H, W) or (B, {channels}, H, W)" if channels else "(B, C, H, W)"
        raise InputError(f"{name} must be {want}, got {tuple(t.shape)}")
    return t.detach().cpu()


def visualize(
    input_: Tensor,
    gradients: Tensor,
    max_gradients: Tensor,
    cmap: str = "viridis",
    alpha: float = 0.7,
    figsize: tuple[float, float] = (16, 4),
    save_path: str | os.PathLike | None = None,
    title: str | None = None,
    *,
    scale: str = "percentile",
    percentile: float = DEFAULT_PERCENTILE,
    per_image: bool = True,
) -> Any:
    """The talk's figure: input, gradients across RGB channels, max gradients, overlay.

    The first five arguments are the talk's ``visualize(input_, gradients, max_gradients,
    cmap='viridis', alpha=0.5)``, in its order.

    Args:
        input_: ``(1, 3, H, W)`` or ``(B, 3, H, W)`` normalised input (``apply_transforms``).
        gradients: ``(3, H, W)`` or ``(B, 3, H, W)`` from ``calculate_gradients``.
        max_gradients: ``(1, H, W)`` or ``(B, 1, H, W)`` (``take_max=True`` output).
        cmap: colour map of the max-gradient panels.
        alpha: largest opacity of the saliency in the overlay (it grows with the saliency, so
            low-saliency regions show the photo unchanged).
        figsize: size of one row of four panels; a batch gets one row per image.
        save_path: if given, the figure is also written there (atomically).
        title: optional figure title.
        scale: how the overlay's map is scaled (:func:`flashtorch.scaling.scale_maps`:
            ``"percentile"``, ``"minmax"``, ``"abs"``, ``"signed"``).
        percentile: the percentile that gets the top colour.
        per_image: each image's overlay on its own scale (default), or one scale for the
            batch (a weak map stays weak).

    Returns:
        The matplotlib ``Figure`` (headless; displays in notebooks).
    """
    check_scaling(scale, percentile)
    x = _batched(input_, 3, "input_")
    g = _batched(gradients, None, "gradients")
    m = _batched(max_gradients, 1, "max_gradients")
    if not (x.shape[0] == g.shape[0] == m.shape[0]) or x.shape[-2:] != g.shape[-2:]:
        raise InputError(
            f"input_, gradients and max_gradients disagree: {tuple(x.shape)}, {tuple(g.shape)}, "
            f"{tuple(m.shape)}"
        )
    rows = x.shape[0]
    fig = new_figure((figsize[0], figsize[1] * rows))
    axes = fig.subplots(rows, 4, squeeze=False)
    images = denormalize(x).clamp(0, 1)
    grads = standardize_and_clip(g)
    maxes = standardize_and_clip(m)
    levels = scaled_maps(m, scale, percentile, per_image)
    titles = ("Input image", "Gradients across RGB channels", "Max gradients", "Overlay")
    for r in range(rows):
        panels = (
            (to_image(images[r]), None, None),
            (
                to_image(grads[r]) if grads.shape[1] in (1, 3) else to_image(grads[r].mean(0)),
                None if grads.shape[1] == 3 else cmap,
                None,
            ),
            (to_image(maxes[r]), cmap, None),
        )
        for c, (img, cm, _) in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(img, cmap=cm)
        ax = axes[r][3]
        ax.imshow(to_image(images[r]))
        ax.imshow(heat_rgba(levels[r], cmap=cmap, alpha=alpha, signed=scale == "signed"))
        for c in range(4):
            axes[r][c].set_axis_off()
            if r == 0:
                axes[r][c].set_title(titles[c])
    return finish_figure(fig, title, save_path)


def overlay(
    image: Tensor,
    saliency: Tensor,
    cmap: str = "jet",
    alpha: float = 0.7,
    ax: Any = None,
    *,
    scale: str = "percentile",
    percentile: float = DEFAULT_PERCENTILE,
) -> Any:
    """Draw ``saliency`` ``(1|C, H, W)`` over ``image`` ``(3, H, W)`` in [0, 1] on an axis.

    Multi-channel maps are reduced by ``max_c |A_c|``; the map is scaled by
    :func:`flashtorch.scaling.scale_maps` (``scale``, ``percentile``) and the heat map's
    opacity grows with it (at most ``alpha``), so low-saliency regions show the photo
    unchanged.
    """
    check_scaling(scale, percentile)
    if ax is None:
        ax = new_figure((4, 4)).subplots()
    sal = saliency.detach().cpu()
    if sal.dim() == 3 and sal.shape[0] != 1:
        sal = sal.abs().amax(0, keepdim=True)
    ax.imshow(to_image(image))
    level = scaled_maps(sal, scale, percentile, per_image=False)
    ax.imshow(heat_rgba(level, cmap=cmap, alpha=alpha, signed=scale == "signed"))
    ax.set_axis_off()
    return ax


__all__ = ["overlay", "visualize"]
