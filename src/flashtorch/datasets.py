r"""A synthetic localisation dataset with ground truth: which pixels decide the class.

Every image is a natural-looking scene - a fractal (:math:`1/f^\alpha`) noise background mapped
through a random colour palette, fine grain, and a few solid distractor shapes (discs, ellipses,
rotated rectangles, triangles) in random colours - with **one small square texture patch** at a
random place. The patch's texture alone decides the label:

======  ================  ===================================================================
label   name              texture (two random colours, random period, orientation and phase)
======  ================  ===================================================================
0       ``stripes``       a square-wave grating
1       ``checkerboard``  a checkerboard
2       ``dots``          dots on a square lattice
3       ``rings``         concentric rings around the patch centre
======  ================  ===================================================================

Background, distractors and colours are drawn independently of the label, so a model that
classifies correctly must use the patch, and an explanation of its decision should point at it.
The mask returned with each image covers exactly the patch (a square, drawn last, on top of
everything), which makes the dataset a benchmark for the pointing game and the energy-based
pointing game (:mod:`flashtorch.metrics.localisation`). The patch covers 3-6 % of a 224 px image
with the default ``patch_fraction`` - the chance level of both scores.

Reproducibility: image ``i`` of ``SyntheticLocalization(seed=s)`` is drawn from its own
``torch.Generator`` seeded with ``(mix(s) + i) mod 2**32`` (``mix`` is the SplitMix64 hash; CPU
generators keep only 32 bits of a seed), so any item can be regenerated alone, in any order, by
any worker, and the items of one seed never share a generator seed; nothing is downloaded or
stored. Labels are balanced: ``label = i % 4``.

Example:
    >>> from flashtorch.datasets import SyntheticLocalization
    >>> data = SyntheticLocalization(length=100, seed=0)
    >>> image, label, mask = data[0]
    >>> image.shape, mask.shape, data.classes[label]
    (torch.Size([3, 224, 224]), torch.Size([1, 224, 224]), 'stripes')
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .errors import InputError
from .utils.image import IMAGENET_MEAN, IMAGENET_STD

CLASSES: tuple[str, ...] = ("stripes", "checkerboard", "dots", "rings")

_SHAPES = ("disc", "ellipse", "rectangle", "triangle")


@dataclass(frozen=True)
class SyntheticSample:
    """One rendered scene, with everything needed to check it.

    Attributes:
        image: ``(3, H, W)`` float image in ``[0, 1]`` (not normalised).
        background: the same scene without the patch, ``(3, H, W)`` in ``[0, 1]``.
        label: the class index (the patch's texture).
        mask: ``(1, H, W)`` bool, ``True`` exactly on the patch.
        box: ``(4,)`` long tensor ``(x0, y0, x1, y1)``; the patch is
            ``image[:, y0:y1, x0:x1]`` (end-exclusive).
    """

    image: Tensor
    background: Tensor
    label: int
    mask: Tensor
    box: Tensor


class SyntheticLocalization(Dataset):
    """Textured scenes whose class is decided only by a small patch, with its mask.

    Args:
        length: number of images.
        size: side of the square images in pixels (at least 16).
        seed: dataset seed; different seeds give disjoint, independent images (use one seed
            for training and another for held-out data).
        normalize: return images normalised with ImageNet mean/std (what
            :func:`flashtorch.utils.apply_transforms` and
            :func:`flashtorch.models.load_pretrained` use); ``False`` returns ``[0, 1]`` images.
        patch_fraction: ``(min, max)`` side of the patch as a fraction of ``size``.
        distractors: ``(min, max)`` number of distractor shapes (inclusive).
        periods: ``(min, max)`` number of texture periods across the patch.

    Items are ``(image (3, H, W) float32, label int, mask (1, H, W) bool)``.

    Raises:
        InputError: invalid sizes or ranges.
    """

    classes: tuple[str, ...] = CLASSES

    def __init__(
        self,
        length: int = 1000,
        *,
        size: int = 224,
        seed: int = 0,
        normalize: bool = True,
        patch_fraction: tuple[float, float] = (0.18, 0.25),
        distractors: tuple[int, int] = (3, 6),
        periods: tuple[float, float] = (4.0, 7.0),
    ) -> None:
        if isinstance(length, bool) or not isinstance(length, int) or length < 0:
            raise InputError(f"length must be a non-negative integer, got {length!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 16:
            raise InputError(f"size must be an integer of at least 16 pixels, got {size!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise InputError(f"seed must be a non-negative integer, got {seed!r}")
        lo, hi = _pair(patch_fraction, "patch_fraction")
        if not 0 < lo <= hi <= 1:
            raise InputError(
                f"patch_fraction must satisfy 0 < min <= max <= 1, got {patch_fraction}"
            )
        dlo, dhi = _pair(distractors, "distractors")
        if dlo != int(dlo) or dhi != int(dhi) or not 0 <= dlo <= dhi:
            raise InputError(f"distractors must be integers 0 <= min <= max, got {distractors}")
        plo, phi = _pair(periods, "periods")
        if not 1 <= plo <= phi:
            raise InputError(f"periods must satisfy 1 <= min <= max, got {periods}")
        self.length = length
        self.size = size
        self.seed = seed
        self.normalize = normalize
        self.patch_fraction = (lo, hi)
        self.distractors = (int(dlo), int(dhi))
        self.periods = (plo, phi)

    @property
    def num_classes(self) -> int:
        """Number of classes (4)."""
        return len(self.classes)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[Tensor, int, Tensor]:
        """``(image, label, mask)`` of item ``index`` (see the class docstring)."""
        s = self.sample(index)
        image = s.image
        if self.normalize:
            mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
            std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
            image = (image - mean) / std
        return image, s.label, s.mask

    def stack(self, indices: Sequence[int] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Items stacked into a batch: ``(images (N,3,H,W), labels (N,), masks (N,1,H,W))``.

        Args:
            indices: which items (default: all of them - mind the memory for large datasets).
        """
        idx = range(len(self)) if indices is None else list(indices)
        items = [self[i] for i in idx]
        if not items:
            raise InputError("stack() needs at least one index")
        return (
            torch.stack([it[0] for it in items]),
            torch.tensor([it[1] for it in items], dtype=torch.long),
            torch.stack([it[2] for it in items]),
        )

    def _check_index(self, index: int) -> int:
        if isinstance(index, bool) or not hasattr(index, "__index__"):
            raise TypeError(f"dataset indices must be integers, got {type(index).__name__}")
        i = int(index)
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError(f"index {index} is out of range for a dataset of {self.length}")
        return i

    def sample(self, index: int) -> SyntheticSample:
        """Render item ``index`` with its patch-free background, mask and box."""
        i = self._check_index(index)
        gen = torch.Generator().manual_seed((_splitmix64(self.seed) + i) % 2**32)
        label = i % self.num_classes
        n = self.size
        yy, xx = torch.meshgrid(
            torch.arange(n, dtype=torch.float32) + 0.5,
            torch.arange(n, dtype=torch.float32) + 0.5,
            indexing="ij",
        )

        # Background: fractal noise through a three-colour palette, plus fine grain.
        field = _fractal_noise(n, _uniform(gen, 1.2, 1.9), gen)
        palette = torch.rand(3, 3, generator=gen)
        scene = _palette(field, palette)
        grain = _fractal_noise(n, _uniform(gen, 0.3, 0.8), gen) - 0.5
        scene = (scene + _uniform(gen, 0.04, 0.12) * grain).clamp(0, 1)

        # The patch position is drawn before the distractors (they may be occluded by it).
        lo, hi = self.patch_fraction
        side = max(4, round(_uniform(gen, lo, hi) * n))
        side = min(side, n)
        x0 = int(torch.randint(0, n - side + 1, (1,), generator=gen))
        y0 = int(torch.randint(0, n - side + 1, (1,), generator=gen))

        dlo, dhi = self.distractors
        count = int(torch.randint(dlo, dhi + 1, (1,), generator=gen))
        for _ in range(count):
            scene = _draw_shape(scene, xx, yy, side, gen)
        background = scene.clone()

        # The class patch, drawn last: two contrasting colours, a label-specific texture.
        c_a, c_b = _contrasting_colours(gen)
        period = side / _uniform(gen, *self.periods)
        theta = _uniform(gen, 0.0, math.pi)
        phase = torch.rand(2, generator=gen)
        u = xx[y0 : y0 + side, x0 : x0 + side] - (x0 + side / 2)
        v = yy[y0 : y0 + side, x0 : x0 + side] - (y0 + side / 2)
        on = _texture(label, u, v, period, theta, phase)
        patch = torch.where(on, c_a.view(3, 1, 1), c_b.view(3, 1, 1))
        scene[:, y0 : y0 + side, x0 : x0 + side] = patch
        mask = torch.zeros(1, n, n, dtype=torch.bool)
        mask[:, y0 : y0 + side, x0 : x0 + side] = True
        box = torch.tensor([x0, y0, x0 + side, y0 + side], dtype=torch.long)
        return SyntheticSample(scene, background, label, mask, box)

    def __repr__(self) -> str:
        return (
            f"SyntheticLocalization(length={self.length}, size={self.size}, seed={self.seed}, "
            f"normalize={self.normalize})"
        )


def _splitmix64(value: int) -> int:
    """SplitMix64 finaliser: a well-mixed 64-bit hash of ``value``."""
    z = (value + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return z ^ (z >> 31)


def _pair(value: tuple[float, float], name: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a (min, max) pair, got {value!r}") from None
    return lo, hi


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def _fractal_noise(n: int, alpha: float, gen: torch.Generator) -> Tensor:
    """``(n, n)`` noise with amplitude spectrum ``1 / f**alpha``, squashed into ``[0, 1]``."""
    white = torch.randn(n, n, generator=gen)
    radius = torch.sqrt(torch.fft.fftfreq(n)[:, None] ** 2 + torch.fft.rfftfreq(n)[None, :] ** 2)
    radius[0, 0] = 1.0
    spectrum = torch.fft.rfft2(white) / radius**alpha
    spectrum[0, 0] = 0.0
    noise = torch.fft.irfft2(spectrum, s=(n, n))
    noise = (noise - noise.mean()) / noise.std().clamp_min(1e-8)
    return torch.sigmoid(1.3 * noise)


def _palette(t: Tensor, colours: Tensor) -> Tensor:
    """Map ``t`` in [0, 1] through a piecewise-linear palette of three ``colours`` (3, 3)."""
    t2 = (t * 2).clamp(0, 2)
    low = (t2 <= 1).unsqueeze(0)
    w = torch.where(low.squeeze(0), t2, t2 - 1).unsqueeze(0)
    c0, c1, c2 = (colours[k].view(3, 1, 1) for k in range(3))
    return torch.where(low, c0 * (1 - w) + c1 * w, c1 * (1 - w) + c2 * w)


def _luminance(c: Tensor) -> float:
    return float(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2])


def _contrasting_colours(gen: torch.Generator) -> tuple[Tensor, Tensor]:
    a = torch.rand(3, generator=gen)
    b = torch.rand(3, generator=gen)
    for _ in range(100):
        if abs(_luminance(a) - _luminance(b)) >= 0.35:
            break
        b = torch.rand(3, generator=gen)
    else:  # pragma: no cover - practically unreachable
        b = 1.0 - a.round()
    return a, b


def _draw_shape(scene: Tensor, xx: Tensor, yy: Tensor, side: int, gen: torch.Generator) -> Tensor:
    """Paint one solid, softly shaded distractor shape of about the patch's size (in place)."""
    n = scene.shape[-1]
    kind = _SHAPES[int(torch.randint(0, len(_SHAPES), (1,), generator=gen))]
    cx, cy = _uniform(gen, 0, n), _uniform(gen, 0, n)
    r = 0.5 * side * _uniform(gen, 0.7, 1.5)
    angle = _uniform(gen, 0, math.pi)
    # Every shape lies within radius r of its centre: work on that window only.
    xa, xb = max(0, int(cx - r) - 1), min(n, int(cx + r) + 2)
    ya, yb = max(0, int(cy - r) - 1), min(n, int(cy + r) + 2)
    dx, dy = xx[ya:yb, xa:xb] - cx, yy[ya:yb, xa:xb] - cy
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    if kind == "disc":
        inside = dx**2 + dy**2 <= r**2
    elif kind == "ellipse":
        ratio = _uniform(gen, 0.35, 0.8)
        inside = (u / r) ** 2 + (v / (r * ratio)) ** 2 <= 1
    elif kind == "rectangle":
        ratio = _uniform(gen, 0.3, 0.7)
        inside = (u.abs() <= r * 0.7) & (v.abs() <= r * ratio)
    else:
        angles = torch.rand(3, generator=gen) * 2 * math.pi
        px = [r * math.cos(float(a)) for a in angles]
        py = [r * math.sin(float(a)) for a in angles]
        signs = []
        for k in range(3):
            j = (k + 1) % 3
            signs.append((px[j] - px[k]) * (dy - py[k]) - (py[j] - py[k]) * (dx - px[k]))
        inside = ((signs[0] >= 0) & (signs[1] >= 0) & (signs[2] >= 0)) | (
            (signs[0] <= 0) & (signs[1] <= 0) & (signs[2] <= 0)
        )
    colour = torch.rand(3, generator=gen).view(3, 1, 1)
    if xb <= xa or yb <= ya:
        return scene
    shade = 1.0 + 0.15 * (u / max(r, 1.0)).clamp(-1, 1)
    painted = (colour * shade).clamp(0, 1)
    window = scene[:, ya:yb, xa:xb]
    scene[:, ya:yb, xa:xb] = torch.where(inside.unsqueeze(0), painted, window)
    return scene


def _texture(
    label: int, u: Tensor, v: Tensor, period: float, theta: float, phase: Tensor
) -> Tensor:
    """Boolean texture of class ``label`` at patch-centred coordinates ``(u, v)``."""
    ru = (u * math.cos(theta) + v * math.sin(theta)) / period
    rv = (-u * math.sin(theta) + v * math.cos(theta)) / period
    pu, pv = float(phase[0]), float(phase[1])
    if label == 0:  # stripes
        return torch.frac(ru + pu + 100.0) < 0.5
    if label == 1:  # checkerboard (cells of half a period)
        cells = torch.floor(2 * ru + pu + 100.0) + torch.floor(2 * rv + pv + 100.0)
        return torch.remainder(cells, 2) == 0
    if label == 2:  # dots
        du = torch.frac(ru + pu + 100.0) - 0.5
        dv = torch.frac(rv + pv + 100.0) - 0.5
        return du**2 + dv**2 < 0.3**2
    radius = torch.sqrt(u**2 + v**2) / period  # rings
    return torch.frac(radius + pu) < 0.5


__all__ = ["CLASSES", "SyntheticLocalization", "SyntheticSample"]
