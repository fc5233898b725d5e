"""Differentiable, seeded image transforms applied at every optimisation step.

Feature visualisations are made robust by optimising the image through small random
transformations (Mordvintsev et al. 2015, "Inceptionism"; Olah et al. 2017, "Feature
Visualization", Distill): an image that still activates the unit after being padded,
shifted, rescaled and rotated has no adversarial high-frequency pattern.

Every transform is a callable ``t(images, generator) -> images`` on ``(B, 3, H, W)`` tensors,
differentiable with respect to ``images``. All random choices are drawn from the explicit
``torch.Generator`` (a CPU generator; the images may live on any device), never from global
state, so a render is reproducible from its seed. One random choice applies to the whole
batch, as in Lucid.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError


def _choice(values: Sequence[float], generator: torch.Generator | None) -> float:
    index = int(torch.randint(len(values), (1,), generator=generator).item())
    return float(values[index])


class Transform(abc.ABC):
    """Base class: ``__call__(images, generator) -> images``, differentiable in ``images``."""

    @abc.abstractmethod
    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Transform a batch ``(B, C, H, W)``."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Pad(Transform):
    """Pad every side by ``width`` pixels (constant ``value`` or ``"reflect"``/``"replicate"``).

    Lucid pads with grey (0.5) so that jitter and rotation never show the image's edge as a
    hard border the optimiser could exploit.
    """

    def __init__(self, width: int, mode: str = "constant", value: float = 0.5) -> None:
        if width < 0:
            raise InputError(f"pad width must be >= 0, got {width}")
        if mode not in ("constant", "reflect", "replicate"):
            raise InputError(f"pad mode must be constant, reflect or replicate, got {mode!r}")
        self.width, self.mode, self.value = int(width), mode, float(value)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Pad by ``width`` on all four sides."""
        if self.width == 0:
            return x
        if self.mode == "constant":
            return F.pad(x, [self.width] * 4, mode="constant", value=self.value)
        return F.pad(x, [self.width] * 4, mode=self.mode)


class Jitter(Transform):
    """Random crop of size ``(H - d + 1, W - d + 1)``: a shift by 0..d-1 pixels (Lucid's jitter).

    Cropping is exact (no interpolation) and its gradient is a shifted copy.
    """

    def __init__(self, d: int) -> None:
        if d < 1:
            raise InputError(f"jitter d must be >= 1, got {d}")
        self.d = int(d)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Crop at a random offset in ``[0, d)`` along each axis."""
        if self.d == 1:
            return x
        h, w = x.shape[-2:]
        if h <= self.d or w <= self.d:
            raise InputError(f"jitter {self.d} is too large for an image of {h}x{w}")
        oy, ox = (int(v) for v in torch.randint(self.d, (2,), generator=generator))
        return x[..., oy : oy + h - self.d + 1, ox : ox + w - self.d + 1]


class RandomScale(Transform):
    """Resize by a factor drawn from ``scales`` (bilinear), e.g. ``[0.9, ..., 1.1]``."""

    def __init__(self, scales: Iterable[float]) -> None:
        self.scales = tuple(float(s) for s in scales)
        if not self.scales or min(self.scales) <= 0:
            raise InputError(f"scales must be a non-empty list of positive factors, got {scales}")

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Bilinear resize to ``ceil(scale * (H, W))``."""
        s = _choice(self.scales, generator)
        if s == 1.0:
            return x
        h, w = x.shape[-2:]
        size = (max(1, math.ceil(s * h)), max(1, math.ceil(s * w)))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class RandomRotate(Transform):
    """Rotate about the centre by an angle (degrees) drawn from ``angles``; same output size.

    Implemented with ``affine_grid`` / ``grid_sample`` (bilinear, border padding), with the
    aspect ratio taken into account so non-square images are rotated, not sheared.
    """

    def __init__(self, angles: Iterable[float]) -> None:
        self.angles = tuple(float(a) for a in angles)
        if not self.angles:
            raise InputError("angles must be a non-empty list of degrees")

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Rotate the whole batch by one random angle."""
        angle = _choice(self.angles, generator)
        if angle == 0.0:
            return x
        return rotate(x, angle)


class Resize(Transform):
    """Deterministic bilinear resize to ``size`` (int or ``(H, W)``)."""

    def __init__(self, size: int | tuple[int, int]) -> None:
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Resize to :attr:`size`."""
        if tuple(x.shape[-2:]) == self.size:
            return x
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)


class Compose(Transform):
    """Apply transforms in order, all drawing from the same generator."""

    def __init__(self, transforms: Iterable[Transform]) -> None:
        self.transforms = list(transforms)
        for t in self.transforms:
            if not callable(t):
                raise InputError(f"transforms must be callables, got {type(t).__name__}")

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Apply each transform."""
        for t in self.transforms:
            x = t(x, generator)
        return x

    def __len__(self) -> int:
        return len(self.transforms)


def rotate(x: Tensor, degrees: float) -> Tensor:
    """Rotate ``(B, C, H, W)`` images about their centre by ``degrees`` (differentiable)."""
    h, w = x.shape[-2:]
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    # In normalised coordinates ([-1, 1] on each axis) a rotation needs the aspect ratio.
    theta = torch.tensor(
        [[c, -s * h / w, 0.0], [s * w / h, c, 0.0]], dtype=x.dtype, device=x.device
    ).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def pad(width: int, mode: str = "constant", value: float = 0.5) -> Pad:
    """See :class:`Pad`."""
    return Pad(width, mode, value)


def jitter(d: int) -> Jitter:
    """See :class:`Jitter`."""
    return Jitter(d)


def random_scale(scales: Iterable[float]) -> RandomScale:
    """See :class:`RandomScale`."""
    return RandomScale(scales)


def random_rotate(angles: Iterable[float]) -> RandomRotate:
    """See :class:`RandomRotate`."""
    return RandomRotate(angles)


def compose(transforms: Iterable[Transform]) -> Compose:
    """See :class:`Compose`."""
    return Compose(transforms)


def standard_transforms() -> Compose:
    """Lucid's ``standard_transforms``.

    ``pad(12, grey) -> jitter(8) -> scale in {0.9 .. 1.1} -> rotate in {-10 .. 10} deg ->
    jitter(4)``, with the rotation set weighted towards 0 as in Lucid
    (``list(range(-10, 11)) + 5 * [0]``).
    """
    return Compose(
        [
            Pad(12, "constant", 0.5),
            Jitter(8),
            RandomScale([1 + (i - 5) / 50 for i in range(11)]),
            RandomRotate(list(range(-10, 11)) + 5 * [0]),
            Jitter(4),
        ]
    )


def as_transform(transforms: Transform | Iterable[Transform] | str | None) -> Compose:
    """Turn ``render``'s ``transforms`` argument into a :class:`Compose`.

    ``"standard"`` -> :func:`standard_transforms`; ``None`` -> no transform; a transform or a list
    of transforms -> their composition.
    """
    if transforms is None:
        return Compose([])
    if isinstance(transforms, str):
        if transforms == "standard":
            return standard_transforms()
        raise InputError(f"transforms must be 'standard', None or a list, got {transforms!r}")
    if isinstance(transforms, Compose):
        return transforms
    if isinstance(transforms, Transform) or callable(transforms):
        return Compose([transforms])  # type: ignore[list-item]
    return Compose(transforms)


__all__ = [
    "Compose",
    "Jitter",
    "Pad",
    "RandomRotate",
    "RandomScale",
    "Resize",
    "Transform",
    "as_transform",
    "compose",
    "jitter",
    "pad",
    "random_rotate",
    "random_scale",
    "rotate",
    "standard_transforms",
]
