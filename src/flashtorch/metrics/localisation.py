r"""Localisation scores against ground truth: the pointing game and its energy-based version.

Both take maps ``(B, H, W)``, ``(B, 1, H, W)``, ``(B, C, H, W)`` (channels collapsed with
``reduce``, default ``max_abs``) or an :class:`~flashtorch.Attribution`, and the ground truth as
bool masks ``(B, [1,] H, W)`` (maps are resized to them, bilinearly) or boxes ``(B, 4)`` =
``(x0, y0, x1, y1)`` in the maps' pixel coordinates, end-exclusive. Scores are per image,
``(B,)`` floats in ``[0, 1]``; average them over a dataset. The chance level of both scores for
a map that knows nothing is the fraction of the image the region covers.

* Pointing game - Zhang, Bargal, Lin, Brandt, Shen & Sclaroff 2016/2018, "Top-down Neural
  Attention by Excitation Backprop", ECCV / IJCV, arXiv:1608.00507.
* Energy-based pointing game - Wang, Wang, Du, Yang, Zhang, Ding, Mardziel & Hu 2020,
  "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural Networks",
  CVPR Workshops, arXiv:1910.01279.

Example:
    >>> import torch
    >>> maps = torch.zeros(1, 1, 8, 8); maps[0, 0, 2, 3] = 1.0
    >>> mask = torch.zeros(1, 1, 8, 8, dtype=torch.bool); mask[0, 0, 1:4, 2:5] = True
    >>> pointing_game(maps, mask), energy_pointing_game(maps, mask)
    (tensor([1.]), tensor([1.]))
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError
from ._maps import maps_and_masks


def _dilate(masks: Tensor, radius: int) -> Tensor:
    """Grow bool masks by a disc of ``radius`` pixels (Euclidean)."""
    r = int(radius)
    offsets = torch.arange(-r, r + 1, device=masks.device, dtype=torch.float32)
    disc = (offsets.view(-1, 1) ** 2 + offsets.view(1, -1) ** 2 <= r * r).float()
    grown = F.conv2d(masks.float(), disc.view(1, 1, 2 * r + 1, 2 * r + 1), padding=r)
    return grown > 0.5


def pointing_game(
    maps: Any,
    masks: Tensor | None = None,
    *,
    boxes: Tensor | None = None,
    tolerance: int = 0,
    reduce: str = "max_abs",
) -> Tensor:
    r"""Does the map's maximum fall on the object? One score per image.

    .. math:: \text{hit} = \frac{|\{p : A(p) = \max A\} \cap M_\tau|}{|\{p : A(p) = \max A\}|}

    where :math:`M_\tau` is the ground-truth region grown by ``tolerance`` pixels (Zhang et al.
    use 15 pixels at 224 px). With one maximum this is 1 (hit) or 0 (miss), as in the paper;
    when several pixels share the maximum (e.g. a constant map) the score is the fraction of
    them that hit, so a map without information scores the chance level instead of an arbitrary
    0 or 1.

    Args:
        maps: ``(B, [C,] H, W)`` maps or an ``Attribution``.
        masks: bool ``(B, [1,] H, W)`` ground truth (give this or ``boxes``).
        boxes: ``(B, 4)`` boxes ``(x0, y0, x1, y1)`` in map pixels, end-exclusive.
        tolerance: radius in pixels by which the region is grown (0: exact).
        reduce: channel reduction for multi-channel maps.

    Returns:
        ``(B,)`` float tensor in ``[0, 1]``.

    Raises:
        InputError: shapes disagree, no or both ground truths, negative tolerance.
    """
    if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance < 0:
        raise InputError(f"tolerance must be a non-negative integer (pixels), got {tolerance!r}")
    m, regions = maps_and_masks(maps, masks, boxes, reduce)
    if tolerance:
        regions = _dilate(regions, tolerance)
    flat = m.flatten(1)
    peak = flat == flat.amax(1, keepdim=True)
    hits = (peak & regions.flatten(1)).sum(1).float()
    return hits / peak.sum(1).float()


def energy_pointing_game(
    maps: Any,
    masks: Tensor | None = None,
    *,
    boxes: Tensor | None = None,
    reduce: str = "max_abs",
) -> Tensor:
    r"""The share of the map's positive energy inside the ground truth (Wang et al. 2020).

    .. math:: E = \frac{\sum_{p \in M} A^+(p)}{\sum_{p} A^+(p)}, \qquad A^+ = \max(A, 0)

    Score-CAM's "energy-based pointing game" uses non-negative CAMs; signed maps are clipped at
    zero here (reduce with ``"max_abs"`` - the default - or ``"abs_sum"`` to count negative
    evidence too). A map with no positive value scores 0. A map that is uniform scores the area
    fraction of the region (chance).

    Args:
        maps: ``(B, [C,] H, W)`` maps or an ``Attribution``.
        masks: bool ``(B, [1,] H, W)`` ground truth (give this or ``boxes``).
        boxes: ``(B, 4)`` boxes ``(x0, y0, x1, y1)`` in map pixels, end-exclusive.
        reduce: channel reduction for multi-channel maps.

    Returns:
        ``(B,)`` float tensor in ``[0, 1]``.
    """
    m, regions = maps_and_masks(maps, masks, boxes, reduce)
    positive = m.clamp_min(0).flatten(1)
    inside = (positive * regions.flatten(1)).sum(1)
    total = positive.sum(1)
    return torch.where(total > 0, inside / total.clamp_min(torch.finfo(total.dtype).tiny), 0.0)


__all__ = ["energy_pointing_game", "pointing_game"]
