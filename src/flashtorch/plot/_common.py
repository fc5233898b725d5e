"""Shared figure helpers: headless figures, atomic saving, tensor -> image arrays.

matplotlib is imported inside functions only; ``import flashtorch`` never loads pyplot.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from .. import scaling as _scaling


def new_figure(figsize: tuple[float, float], **kwargs: Any) -> Any:
    """A matplotlib ``Figure`` that needs no GUI backend (works headless, never leaks)."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, **kwargs)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename (no half-written file)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    except BaseException:
        with _suppress():
            os.unlink(tmp)
        raise
    return target


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 100, **kwargs: Any) -> Path:
    """Save a figure atomically; the format follows the file suffix (png, pdf, svg, jpg)."""
    import io

    target = Path(path)
    fmt = (target.suffix[1:] or "png").lower()
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=dpi, bbox_inches="tight", **kwargs)
    return atomic_write_bytes(target, buffer.getvalue())


def finish_figure(
    fig: Any,
    title: str | None,
    save_path: str | os.PathLike | None,
    *,
    tight: bool = True,
    dpi: int = 100,
) -> Any:
    """Give ``fig`` its overall ``title``, lay it out tightly, save it if asked; returns it."""
    if title:
        fig.suptitle(title)
    if tight:
        fig.tight_layout()
    if save_path is not None:
        save_figure(fig, save_path, dpi=dpi)
    return fig


def to_image(tensor: Tensor) -> np.ndarray:
    """``(C, H, W)`` or ``(H, W)`` tensor -> ``(H, W, C)``/``(H, W)`` float numpy in [0, 1]."""
    t = tensor.detach().float().cpu()
    if t.dim() == 3:
        t = t[0] if t.shape[0] == 1 else t.permute(1, 2, 0)
    return t.clamp(0, 1).numpy()


def normalize_map(saliency: Tensor, percentile: float = 99.5, eps: float = 1e-12) -> Tensor:
    """Scale one ``(.., H, W)`` map to [0, 1]: min -> 0, the ``percentile``-th value -> 1.

    Kept for existing code: it is :func:`flashtorch.scaling.scale_maps` with
    ``how="percentile"`` over the whole tensor (``eps`` is no longer used).
    """
    del eps
    return _scaling.scale_maps(saliency, "percentile", percentile=percentile, per_image=False)


def scaled_maps(
    maps: Tensor,
    scale: str = "percentile",
    percentile: float = _scaling.DEFAULT_PERCENTILE,
    per_image: bool = True,
) -> Tensor:
    """The figures' call of :func:`flashtorch.scaling.scale_maps` (looked up at call time)."""
    return _scaling.scale_maps(maps, scale, percentile=percentile, per_image=per_image)


def heat_rgba(
    saliency01: Tensor, cmap: str = "jet", alpha: float = 0.6, signed: bool = False
) -> np.ndarray:
    """``(H, W)`` map in [0, 1] -> RGBA array whose opacity grows with the saliency.

    With ``signed=True`` the map is in [-1, 1] (``scale_maps(..., "signed")``): its colour is
    ``cmap((s + 1) / 2)`` (zero in the middle of a diverging map) and its opacity grows with
    ``|s|``.
    """
    import matplotlib

    s = saliency01.detach().float().cpu().squeeze().numpy()
    if signed:
        rgba = matplotlib.colormaps[cmap]((s + 1.0) / 2.0)
        rgba[..., 3] = alpha * np.sqrt(np.abs(s))
        return rgba
    rgba = matplotlib.colormaps[cmap](s)
    rgba[..., 3] = alpha * np.sqrt(s)
    return rgba
