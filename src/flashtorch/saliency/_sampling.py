"""Shared machinery of the n-sample methods (SmoothGrad, Integrated Gradients, occlusion).

Each of them expands a batch of ``B`` images into ``N x B`` rows (noise draws, path points,
occluded copies) and never materialises them all: rows are produced and fed to the model in
internal batches of at most ``internal_batch_size`` rows, so peak memory is that of one internal
batch, whatever ``N``. Row ``r`` of the expanded stream is sample ``r // B`` of image ``r % B``
("sample-major", Captum's order).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._guards import model_input
from .._outputs import cat_outputs, explained_output
from .._targets import AnyTarget, ResolvedTarget, resolve
from ..errors import InputError, MethodError

#: internal batch used when ``internal_batch_size=None``: the caller's batch, at least this.
DEFAULT_MIN_CHUNK = 32


def check_option_int(value: Any, name: str, minimum: int = 1) -> int:
    """Return ``value`` if it is an int ``>= minimum``, else raise :class:`MethodError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise MethodError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_option_float(value: Any, name: str, *, positive: bool = False) -> float:
    """Return ``value`` as a finite float ``>= 0`` (``> 0`` if ``positive``), else MethodError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MethodError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        bound = "> 0" if positive else ">= 0"
        raise MethodError(f"{name} must be a finite number {bound}, got {value!r}")
    return v


def check_internal_batch_size(value: Any) -> int | None:
    """Validate ``internal_batch_size`` (``None`` or a positive int)."""
    if value is None:
        return None
    return check_option_int(value, "internal_batch_size")


def chunk_size(internal_batch_size: int | None, batch: int) -> int:
    """Rows per internal batch: the option, or ``max(batch, DEFAULT_MIN_CHUNK)``."""
    return internal_batch_size if internal_batch_size is not None else max(batch, DEFAULT_MIN_CHUNK)


def chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    """``[start, stop)`` row ranges of at most ``size`` rows covering ``range(total)``."""
    for start in range(0, total, size):
        yield start, min(start + size, total)


def make_generator(seed: int | torch.Generator | None, device: torch.device) -> torch.Generator:
    """A :class:`torch.Generator` for ``device`` seeded with ``seed``.

    Args:
        seed: an int (reproducible draws on that device), ``None`` (a fresh random seed), or a
            generator, returned as is (draws then happen on the generator's device).
        device: where the draws are used.
    """
    if isinstance(seed, torch.Generator):
        return seed
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise MethodError(f"seed must be an int, a torch.Generator or None, got {seed!r}")
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


def randn_like(x: Tensor, gen: torch.Generator) -> Tensor:
    """Standard normal noise shaped like ``x``, drawn on the generator's device."""
    return torch.randn(x.shape, generator=gen, device=gen.device, dtype=x.dtype).to(x.device)


def rand_like(x: Tensor, gen: torch.Generator) -> Tensor:
    """Uniform ``[0, 1)`` noise shaped like ``x``, drawn on the generator's device."""
    return torch.rand(x.shape, generator=gen, device=gen.device, dtype=x.dtype).to(x.device)


def image_range(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image ``(min, max)`` over ``(C, H, W)``, each shaped ``(B, 1, 1, 1)``."""
    flat = x.flatten(1)
    return flat.amin(1).view(-1, 1, 1, 1), flat.amax(1).view(-1, 1, 1, 1)


@torch.no_grad()
def clean_forward(model: nn.Module, x: Tensor, size: int) -> Any:
    """The model's logits on ``x`` without gradients, in internal batches of ``size`` rows.

    An output without logits is returned as the model gives it, chunks joined by rows
    (:mod:`flashtorch._outputs`). The model gets copies of the rows (it may edit its input in
    place; the method uses ``x`` again).
    """
    return cat_outputs(
        [explained_output(model(model_input(x[a:b]))) for a, b in chunks(x.shape[0], size)]
    )


def explained_scores(target: AnyTarget, output: Any) -> tuple[Tensor, Tensor | None]:
    """Resolve ``target`` on the clean output: ``(scores (B,), class indices (B,) or None)``."""
    resolved = resolve(target, output)
    return resolved.scores.detach(), resolved.indices


def row_target(target: AnyTarget, indices: Tensor | None, rows: Tensor) -> AnyTarget:
    """The target for a chunk of expanded rows: the fixed class indices, or the callable."""
    return target if indices is None else ResolvedTarget.checked(indices[rows])


def needs_clean_pass(target: AnyTarget) -> bool:
    """Whether the target can only be resolved on the clean output (the predicted class)."""
    return target is None or (isinstance(target, ResolvedTarget) and target.predicted)


def rows_of_target(target: AnyTarget, batch: int, start: int, stop: int) -> ResolvedTarget:
    """The target of expanded rows ``[start, stop)``, without a forward pass of the clean batch.

    Row ``r`` is image ``r % batch``. A callable applies to every row as it is; class indices
    (one per image, checked at the call's entry) are indexed by the rows' images on the device.
    The predicted class needs the clean output: use :func:`explained_scores`.

    Raises:
        TargetError: a user's target (not yet normalised) that is refused for ``batch``.
    """
    target = ResolvedTarget.of(target, batch)
    if target.predicted:  # pragma: no cover - callers check needs_clean_pass first
        raise ValueError("the predicted class needs the clean forward pass")
    if target.indices is None:
        return target
    return target.rows(torch.arange(start, stop, device=target.indices.device) % batch)


def _reflect_index(size: int, radius: int, device: torch.device) -> Tensor:
    """Indices of a symmetric (half-sample) reflection ``d c b a | a b c d | d c b a``.

    Repeats the reflection as often as needed, so ``radius`` may exceed ``size``.
    """
    idx = torch.arange(-radius, size + radius, device=device) % (2 * size)
    return torch.where(idx >= size, 2 * size - 1 - idx, idx)


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    r"""Separable Gaussian blur of every channel, kernel radius ``ceil(3 sigma)``.

    .. math:: G_\sigma(u) \propto \exp(-u^2 / 2\sigma^2)

    The border is extended by symmetric reflection (``scipy.ndimage``'s ``"reflect"``): a
    constant image stays constant and a blur much wider than the image tends to each channel's
    mean.

    Args:
        x: ``(B, C, H, W)`` images.
        sigma: standard deviation in pixels (``> 0``).
    """
    radius = max(1, math.ceil(3 * sigma))
    u = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (u / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c, height, width = x.shape[1:]
    out = x.index_select(3, _reflect_index(width, radius, x.device))
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = out.index_select(2, _reflect_index(height, radius, x.device))
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def broadcast_reference(value: Tensor | float, x: Tensor, name: str) -> Tensor:
    """A tensor or number as a ``(B, C, H, W)`` reference image for ``x`` (broadcast, copied)."""
    ref = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    if not ref.dtype.is_floating_point:  # pragma: no cover - as_tensor casts to x.dtype
        ref = ref.to(x.dtype)
    try:
        shape = torch.broadcast_shapes(ref.shape, x.shape)
    except RuntimeError:
        shape = None
    if shape != x.shape:
        raise InputError(
            f"{name} of shape {tuple(ref.shape)} does not broadcast to the inputs' shape "
            f"{tuple(x.shape)}; give a (C, H, W), (1, C, H, W), (B, C, H, W), (C, 1, 1) "
            "tensor or a number"
        )
    if not bool(torch.isfinite(ref).all()):
        raise InputError(f"{name} contains NaN or infinite values")
    return ref.expand(x.shape).clone()


__all__ = [
    "DEFAULT_MIN_CHUNK",
    "broadcast_reference",
    "check_internal_batch_size",
    "check_option_float",
    "check_option_int",
    "chunk_size",
    "chunks",
    "clean_forward",
    "explained_scores",
    "gaussian_blur",
    "image_range",
    "make_generator",
    "rand_like",
    "randn_like",
    "needs_clean_pass",
    "row_target",
    "rows_of_target",
]
