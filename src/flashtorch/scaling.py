r"""One map scaling for display, shared by the figures, the HTML report and the command line.

An attribution map's values are in the model's units (a gradient, a relevance, a CAM weight):
to draw it, it is mapped to the colour range. :func:`scale_maps` is the one function that does
this everywhere (:mod:`flashtorch.plot`, :func:`flashtorch.report.overlay_rgb` and so the
``flashtorch explain`` / ``report`` commands), so the same map is drawn the same way by all of
them. It needs only torch (no matplotlib).

The ways (``how``) of scaling a map :math:`S`:

- ``"percentile"`` (default): :math:`\hat S = \text{clip}\big((S - \min S) / (q_p - \min S),
  0, 1\big)` with :math:`q_p` the ``percentile``-th percentile of :math:`S`; a few extreme
  pixels of a spiky gradient map take the top colour instead of the whole range. Where
  :math:`q_p = \min S` (a map that is mostly constant) the maximum is used instead.
- ``"minmax"``: :math:`(S - \min S) / (\max S - \min S)`, the plain stretch (``percentile``
  is ignored).
- ``"abs"``: :math:`\text{clip}(|S| / q_p(|S|), 0, 1)`: the magnitude, zero stays zero.
- ``"signed"``: :math:`\text{clip}(S / q_p(|S|), -1, 1)` in :math:`[-1, 1]`: the sign is kept
  and zero stays zero (draw it with a diverging colour map, e.g. ``"coolwarm"``).

Per image or global: with ``per_image=True`` (default) every image's map gets its own
:math:`\min`, :math:`q_p`, :math:`\max`, which shows each map's pattern at full contrast but
hides that one map is much weaker than another (a near-zero map is stretched to the full range,
see Captum's issue #1103). With ``per_image=False`` one scale is computed over all the maps
given, so maps of different strength look different. Non-finite values are drawn as zero; a
constant map becomes zeros.

Example:
    >>> import torch
    >>> from flashtorch.scaling import scale_maps
    >>> maps = torch.stack([torch.rand(8, 8), 0.01 * torch.rand(8, 8)])  # (B, H, W)
    >>> each = scale_maps(maps)                    # both reach 1
    >>> both = scale_maps(maps, per_image=False)   # the weak one stays dark
    >>> bool(each[1].max() == 1.0), bool(both[1].max() < 0.1)
    (True, True)
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .errors import InputError, InputTypeError

#: The ways :func:`scale_maps` can scale a map (the ``how`` argument).
SCALINGS: tuple[str, ...] = ("percentile", "minmax", "abs", "signed")
#: The default percentile of ``"percentile"``, ``"abs"`` and ``"signed"``.
DEFAULT_PERCENTILE = 99.5
#: At most this many values per image enter a percentile (a strided sample beyond: exact for
#: any map up to this size; ``torch.quantile`` refuses very large inputs).
_QUANTILE_SAMPLE = 1_000_000

Scaling = Literal["percentile", "minmax", "abs", "signed"]


def _check(how: str, percentile: float) -> None:
    if not isinstance(how, str) or how not in SCALINGS:
        raise InputError(f"unknown map scaling {how!r}; choose one of {', '.join(SCALINGS)}")
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float)):
        raise InputTypeError(f"percentile must be a number in (0, 100], got {percentile!r}")
    if not 0.0 < float(percentile) <= 100.0:
        raise InputError(f"percentile must be in (0, 100], got {percentile}")


def _quantile(rows: Tensor, q: float) -> Tensor:
    """Per-row ``q``-quantile of a ``(N, M)`` tensor -> ``(N, 1)``."""
    if q >= 1.0:
        return rows.amax(dim=1, keepdim=True)
    budget = max(1, min(_QUANTILE_SAMPLE, 16_000_000 // rows.shape[0]))
    if rows.shape[1] > budget:  # a strided sample is enough for display
        rows = rows[:, :: -(-rows.shape[1] // budget)]
    return torch.quantile(rows, q, dim=1, keepdim=True)


def scale_maps(
    maps: Tensor,
    how: Scaling | str = "percentile",
    *,
    percentile: float = DEFAULT_PERCENTILE,
    per_image: bool = True,
) -> Tensor:
    """Scale attribution maps for display: to ``[0, 1]``, or ``[-1, 1]`` for ``"signed"``.

    Args:
        maps: one ``(H, W)`` map, or a batch ``(B, H, W)`` / ``(B, C, H, W)`` whose first
            dimension is the image (each image's channels share its scale).
        how: ``"percentile"``, ``"minmax"``, ``"abs"`` or ``"signed"`` (see the module's text).
        percentile: the percentile that gets the top colour, in ``(0, 100]`` (100: the
            maximum). Ignored by ``"minmax"``.
        per_image: one scale per image (default), or one over all the maps given
            (``False``), so that a weak map stays weak next to a strong one.

    Returns:
        A new float32 tensor of the shape of ``maps``, on its device (``maps`` is not
        modified).

    Raises:
        InputError: an unknown ``how``, a ``percentile`` out of range, or not a tensor.
    """
    if not isinstance(maps, Tensor):
        raise InputTypeError(f"maps must be a tensor, got {type(maps).__name__}")
    _check(how, percentile)
    s = torch.nan_to_num(maps.detach().float(), nan=0.0, posinf=0.0, neginf=0.0)
    if s.numel() == 0:
        return s.clone()
    rows = s.reshape(s.shape[0], -1) if per_image and s.dim() >= 3 else s.reshape(1, -1)
    q = float(percentile) / 100.0
    if how in ("abs", "signed"):
        mag = rows.abs()
        hi = _quantile(mag, q)
        hi = torch.where(hi > 0, hi, mag.amax(dim=1, keepdim=True))
        hi = torch.where(hi > 0, hi, torch.ones_like(hi))  # all zeros: stays zeros
        out = (mag if how == "abs" else rows) / hi
        out = out.clamp(0.0, 1.0) if how == "abs" else out.clamp(-1.0, 1.0)
        return out.reshape(s.shape)
    shifted = rows - rows.amin(dim=1, keepdim=True)
    top = shifted.amax(dim=1, keepdim=True)
    hi = top if how == "minmax" else _quantile(shifted, q)
    hi = torch.where(hi > 0, hi, top)  # q_p = min (mostly constant map): use the maximum
    scaled = torch.where(hi > 0, shifted / torch.where(hi > 0, hi, 1.0), 0.0)
    return scaled.clamp(0.0, 1.0).reshape(s.shape)


def check_scaling(how: str, percentile: float = DEFAULT_PERCENTILE) -> None:
    """Raise :class:`~flashtorch.errors.InputError` for an unknown scaling or bad percentile.

    For callers that want to fail before any work (the command line, long figures).
    """
    _check(how, percentile)


__all__ = ["DEFAULT_PERCENTILE", "SCALINGS", "check_scaling", "scale_maps"]
