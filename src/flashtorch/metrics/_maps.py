"""Shared input handling for the metrics: maps and regions to ``(B, 1, H, W)`` tensors."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..attribution import Attribution, reduce_channels
from ..errors import InputError


def as_maps(maps: Any, reduce: str = "max_abs", size: tuple[int, int] | None = None) -> Tensor:
    """One float map per image, ``(B, 1, H, W)``.

    Args:
        maps: an :class:`~flashtorch.Attribution`, or a tensor ``(B, H, W)``, ``(B, 1, H, W)``
            or ``(B, C, H, W)`` (channels are collapsed with ``reduce``).
        reduce: channel reduction for multi-channel maps (see
            :meth:`flashtorch.Attribution.reduce`).
        size: ``(H, W)`` to resize to (bilinear) when the map has another size, e.g. a CAM
            at feature resolution.
    """
    if isinstance(maps, Attribution):
        maps = maps.maps
    if not isinstance(maps, Tensor):
        raise InputError(
            f"maps must be a tensor (B, H, W) / (B, C, H, W) or an Attribution, got "
            f"{type(maps).__name__}"
        )
    if maps.dim() == 3:
        maps = maps.unsqueeze(1)
    if maps.dim() != 4:
        raise InputError(f"maps must have shape (B, H, W) or (B, C, H, W), got {tuple(maps.shape)}")
    if maps.shape[0] == 0:
        raise InputError("maps is an empty batch")
    maps = maps.detach()
    if not maps.dtype.is_floating_point:
        maps = maps.float()
    if maps.shape[1] != 1:
        maps = reduce_channels(maps, reduce)
    if not bool(torch.isfinite(maps).all()):
        raise InputError("maps contain NaN or infinite values")
    if size is not None and tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)
    return maps


def boxes_to_masks(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Turn boxes ``(B, 4)`` = ``(x0, y0, x1, y1)`` into masks ``(B, 1, H, W)``.

    A box covers the pixels ``x0 <= x < x1`` and ``y0 <= y < y1`` (end-exclusive pixel
    coordinates, as ``image[:, y0:y1, x0:x1]``); fractional corners are rounded to the nearest
    pixel edge.

    Raises:
        InputError: wrong shape, or a box with ``x1 <= x0`` or ``y1 <= y0``.
    """
    if not isinstance(boxes, Tensor):
        boxes = torch.as_tensor(boxes)
    if boxes.dim() == 1:
        boxes = boxes.unsqueeze(0)
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise InputError(
            f"boxes must have shape (B, 4) as (x0, y0, x1, y1), got {tuple(boxes.shape)}"
        )
    b = boxes.detach().float().round().long().cpu()
    if bool(((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])).any()):
        raise InputError("every box needs x1 > x0 and y1 > y0 (format (x0, y0, x1, y1))")
    h, w = int(size[0]), int(size[1])
    ys = torch.arange(h).view(1, h, 1)
    xs = torch.arange(w).view(1, 1, w)
    x0, y0, x1, y1 = (b[:, k].view(-1, 1, 1) for k in range(4))
    masks = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
    return masks.unsqueeze(1).to(boxes.device)


def as_masks(
    masks: Tensor | None, boxes: Tensor | None, batch: int, size: tuple[int, int]
) -> Tensor:
    """Ground-truth regions as a bool ``(B, 1, H, W)`` tensor, from masks or boxes.

    ``size`` is only used to draw boxes and to check masks; give masks at the size of the maps
    (see :func:`maps_and_masks`).
    """
    if (masks is None) == (boxes is None):
        raise InputError("give the ground truth as exactly one of masks=... or boxes=...")
    if boxes is not None:
        out = boxes_to_masks(boxes, size)
    else:
        if not isinstance(masks, Tensor):
            raise InputError(
                f"masks must be a tensor (B, H, W) or (B, 1, H, W), got {type(masks).__name__}"
            )
        out = masks.unsqueeze(1) if masks.dim() == 3 else masks
        if out.dim() != 4 or out.shape[1] != 1:
            raise InputError(
                f"masks must have shape (B, H, W) or (B, 1, H, W), got {tuple(masks.shape)}"
            )
        out = out.detach() > 0.5 if out.dtype != torch.bool else out.detach()
    if out.shape[0] != batch:
        raise InputError(f"got {out.shape[0]} ground-truth regions for {batch} maps")
    if tuple(out.shape[-2:]) != tuple(size):
        raise InputError(
            f"masks are {tuple(out.shape[-2:])} but the maps are {tuple(size)}; give masks at the "
            "image size (maps are resized to it)"
        )
    return out


def maps_and_masks(
    maps: Any, masks: Tensor | None, boxes: Tensor | None, reduce: str
) -> tuple[Tensor, Tensor]:
    """Maps ``(B, 1, H, W)`` and bool regions of the same size.

    With masks, the maps are resized (bilinear) to the masks' size; boxes are read in the maps'
    pixel coordinates.
    """
    if masks is not None and isinstance(masks, Tensor) and masks.dim() in (3, 4):
        size = (int(masks.shape[-2]), int(masks.shape[-1]))
        m = as_maps(maps, reduce, size)
    else:
        m = as_maps(maps, reduce)
        size = (int(m.shape[-2]), int(m.shape[-1]))
    regions = as_masks(masks, boxes, m.shape[0], size)
    return m, regions.to(m.device)
