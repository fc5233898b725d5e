"""Image parametrisations: what the optimiser actually changes.

A parametrisation is a small module whose ``forward()`` (no argument) returns a batch of images
``(B, 3, H, W)``. Sources hold the learnable tensor; stages map one image tensor to another and
know their inverse, so a chain can start from a photo. The chain Lucid made standard is::

    chain(fft(224), decorrelate(), sigmoid())          # == image(224)

* :class:`PixelImage` - one free value per pixel and channel.
* :class:`FFTImage` - the image is the inverse real FFT of a learnable spectrum whose
  coefficients are scaled by ``1 / max(f, 1/max(H, W)) ** decay_power``; gradient steps then move
  low frequencies as much as high ones, which removes the high-frequency noise of pixel ascent
  (Olah et al. 2017, "Feature Visualization", Distill; Mordvintsev et al. 2018, "Differentiable
  Image Parameterizations", Distill).
* :class:`DecorrelateColor` - the three channels are coordinates in a decorrelated colour basis:
  ``rgb = M @ z`` with ``M`` the square root of ImageNet's colour covariance (Lucid's
  ``color_correlation_svd_sqrt``), normalised so its largest column has unit norm.
* :class:`Sigmoid` - valid RGB: ``rgb = sigmoid(z)`` lies in ``(0, 1)``.

Parameters are created by :meth:`ImageParam.initialize` (called by
:func:`~flashtorch.activmax.render` with its seeded ``torch.Generator`` and device), never at
import or construction, so a render's seed alone fixes its result.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn

from ..errors import InputError

#: Square root of ImageNet's colour correlation matrix (Lucid, ``lucid/optvis/param/color.py``).
COLOR_CORRELATION_SVD_SQRT = (
    (0.26, 0.09, 0.02),
    (0.27, 0.00, -0.05),
    (0.27, -0.09, 0.03),
)

#: Lucid divides the FFT image by this constant (it keeps the sigmoid out of saturation at start).
FFT_MAGIC = 4.0

Size = int | tuple[int, int]


def _hw(size: Size) -> tuple[int, int]:
    if isinstance(size, bool):
        raise InputError(f"size must be an int or (height, width), got {size!r}")
    if isinstance(size, int):
        h = w = size
    elif isinstance(size, Sequence) and len(size) == 2:
        h, w = (int(s) for s in size)
    else:
        raise InputError(f"size must be an int or (height, width), got {size!r}")
    if h < 1 or w < 1:
        raise InputError(f"image size must be positive, got {(h, w)}")
    return h, w


def _check_batch(batch: int) -> int:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InputError(f"batch must be a positive int, got {batch!r}")
    return batch


def _check_image(init: Tensor) -> Tensor:
    if not isinstance(init, Tensor):
        raise InputError(f"init must be a tensor (B, 3, H, W) in [0, 1], got {type(init).__name__}")
    if init.dim() == 3:
        init = init.unsqueeze(0)
    if init.dim() != 4 or init.shape[1] != 3:
        raise InputError(f"init must have shape (B, 3, H, W) or (3, H, W), got {tuple(init.shape)}")
    if not torch.is_floating_point(init):
        raise InputError(f"init must be a float tensor in [0, 1], got dtype {init.dtype}")
    return init.detach()


class ImageParam(nn.Module, abc.ABC):
    """A parametrised batch of images: ``forward()`` returns ``(B, 3, H, W)``.

    Attributes:
        batch: number of images.
        height: image height in pixels.
        width: image width in pixels.
    """

    batch: int
    height: int
    width: int

    @abc.abstractmethod
    def initialize(
        self, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> None:
        """(Re)create the learnable tensors on ``device``, drawing noise from ``generator``."""

    @abc.abstractmethod
    def forward(self) -> Tensor:  # type: ignore[override]
        """Return the current images ``(B, 3, H, W)``."""

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(B, 3, H, W)`` of the images this parametrisation produces."""
        return (self.batch, 3, self.height, self.width)


class _Source(ImageParam):
    """A parametrisation that owns the learnable tensor."""

    def __init__(self, size: Size, batch: int = 1, sd: float = 0.01) -> None:
        super().__init__()
        self.height, self.width = _hw(size)
        self.batch = _check_batch(batch)
        if not sd >= 0:
            raise InputError(f"sd must be >= 0, got {sd!r}")
        self.sd = float(sd)
        self.value: nn.Parameter | None = None

    def _noise(self, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
        return torch.randn(shape, generator=generator) * self.sd

    def _require(self) -> nn.Parameter:
        if self.value is None:
            raise InputError(
                f"{type(self).__name__} has no values yet: call .initialize(generator, device) "
                "(render() does it for you)"
            )
        return self.value

    @abc.abstractmethod
    def set_image(self, image: Tensor) -> None:
        """Set the parameter so that :meth:`forward` returns ``image`` (the inverse map)."""


class PixelImage(_Source):
    """One free parameter per pixel and channel: ``forward() = value``.

    Args:
        size: ``H`` (square) or ``(H, W)``.
        batch: number of images.
        sd: standard deviation of the initial Gaussian noise.
    """

    def initialize(
        self, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> None:
        """Draw ``value ~ N(0, sd^2)`` of shape ``(B, 3, H, W)``."""
        noise = self._noise((self.batch, 3, self.height, self.width), generator)
        self.value = nn.Parameter(noise.to(device))

    def set_image(self, image: Tensor) -> None:
        """Copy ``image`` (``(B, 3, H, W)``) into the parameter."""
        self.value = nn.Parameter(image.detach().clone())

    def forward(self) -> Tensor:  # type: ignore[override]
        """Return the parameter itself."""
        return self._require()


def _freq_scale(h: int, w: int, decay_power: float, device: torch.device | None) -> Tensor:
    fy = torch.fft.fftfreq(h, device=device)[:, None]
    fx = torch.fft.rfftfreq(w, device=device)[None, :]
    freqs = torch.sqrt(fx * fx + fy * fy)
    return 1.0 / freqs.clamp(min=1.0 / max(h, w)) ** decay_power


class FFTImage(_Source):
    r"""Images as the inverse FFT of a spectrum with :math:`1/f` scaling.

    .. math::
        x = \frac{1}{4}\,\mathrm{irfft2}\bigl(s(f) \cdot z\bigr), \qquad
        s(f) = \max\bigl(\lVert f\rVert, 1/\max(H, W)\bigr)^{-\text{decay\_power}}

    with ``z`` the complex learnable spectrum (stored as real and imaginary parts) and an
    orthonormal inverse FFT. Because the scale equalises the spectrum of natural images, each
    Adam step changes all frequencies alike (Olah et al. 2017, Distill, "Feature
    Visualization"; Lucid's ``fft_image``).

    Args:
        size: ``H`` (square) or ``(H, W)``.
        batch: number of images.
        sd: standard deviation of the initial spectrum noise.
        decay_power: exponent of the ``1/f`` scaling (1 = Lucid's default).
    """

    scale: Tensor

    def __init__(
        self, size: Size, batch: int = 1, sd: float = 0.01, decay_power: float = 1.0
    ) -> None:
        super().__init__(size, batch, sd)
        self.decay_power = float(decay_power)
        self.register_buffer(
            "scale", _freq_scale(self.height, self.width, self.decay_power, None), persistent=False
        )

    def initialize(
        self, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> None:
        """Draw the spectrum ``~ N(0, sd^2)`` (real and imaginary parts)."""
        self.to(device)
        shape = (self.batch, 3, self.height, self.width // 2 + 1, 2)
        self.value = nn.Parameter(self._noise(shape, generator).to(self.scale.device))

    def set_image(self, image: Tensor) -> None:
        """Set the spectrum so that :meth:`forward` returns ``image`` (exact inverse)."""
        self.to(image.device)
        spectrum = torch.fft.rfftn(
            image.detach() * FFT_MAGIC, s=(self.height, self.width), norm="ortho"
        )
        spectrum = spectrum / self.scale
        self.value = nn.Parameter(torch.view_as_real(spectrum).contiguous())

    def forward(self) -> Tensor:  # type: ignore[override]
        """Return ``irfft2(scale * spectrum) / 4``."""
        spectrum = torch.view_as_complex(self._require()) * self.scale
        image = torch.fft.irfftn(spectrum, s=(self.height, self.width), norm="ortho")
        return image / FFT_MAGIC


class Stage(nn.Module, abc.ABC):
    """An invertible map from images to images, used after a source in :func:`chain`."""

    @abc.abstractmethod
    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        """Map ``x`` ``(B, 3, H, W)`` forward."""

    @abc.abstractmethod
    def inverse(self, y: Tensor) -> Tensor:
        """Return ``x`` with ``forward(x) == y`` (used to start from a photo)."""


class DecorrelateColor(Stage):
    r"""Linear colour decorrelation: ``rgb = M z`` at every pixel.

    ``M = C / max_j \lVert C_{:, j}\rVert`` with ``C`` = :data:`COLOR_CORRELATION_SVD_SQRT`,
    the square root of ImageNet's colour covariance (Olah et al. 2017; Lucid's
    ``_linear_decorrelate_color``). Optimising ``z`` decorrelates the colour channels, so the
    optimiser does not waste steps on colour noise.
    """

    def __init__(self) -> None:
        super().__init__()
        c = torch.tensor(COLOR_CORRELATION_SVD_SQRT, dtype=torch.float64)
        m = c / c.norm(dim=0).max()
        self.register_buffer("matrix", m.float(), persistent=False)
        self.register_buffer("inverse_matrix", torch.linalg.inv(m).float(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        """``rgb[b, i] = sum_j M[i, j] z[b, j]``."""
        return torch.einsum("ij,bjhw->bihw", self.matrix.to(x), x)

    def inverse(self, y: Tensor) -> Tensor:
        """``z = M^{-1} rgb``."""
        return torch.einsum("ij,bjhw->bihw", self.inverse_matrix.to(y), y)


class Sigmoid(Stage):
    """Valid RGB: ``rgb = sigmoid(z)`` lies in ``(0, 1)`` (Lucid's ``to_valid_rgb``)."""

    def __init__(self, eps: float = 1e-3) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        """``sigmoid(x)``."""
        return torch.sigmoid(x)

    def inverse(self, y: Tensor) -> Tensor:
        """``logit(y)``, with ``y`` clamped to ``[eps, 1 - eps]`` so photos stay finite."""
        return torch.logit(y.clamp(self.eps, 1 - self.eps))


class Chain(ImageParam):
    """A source followed by stages: ``forward() = stage_n(...stage_1(source()))``.

    Args:
        source: a :class:`PixelImage` or :class:`FFTImage`.
        *stages: :class:`Stage` modules applied in order.
        init: optional photo(s) ``(B, 3, H, W)`` in ``[0, 1]`` to start from; the stages are
            inverted so that ``forward()`` returns ``init`` before the first step.
    """

    def __init__(self, source: ImageParam, *stages: Stage, init: Tensor | None = None) -> None:
        super().__init__()
        if not isinstance(source, _Source):
            raise InputError(
                "a chain starts with a source (pixel(...) or fft(...)), got "
                f"{type(source).__name__}"
            )
        for s in stages:
            if not isinstance(s, Stage):
                raise InputError(f"chain stages must be Stage modules, got {type(s).__name__}")
        self.source: _Source = source
        self.stages = nn.ModuleList(stages)
        self.batch, self.height, self.width = source.batch, source.height, source.width
        self.init: Tensor | None = None
        if init is not None:
            init = _check_image(init)
            if tuple(init.shape) != self.shape:
                raise InputError(
                    f"init has shape {tuple(init.shape)} but the source makes {self.shape}"
                )
            self.init = init

    def initialize(
        self, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> None:
        """Initialise the source with noise, or from ``init`` through the inverse stages."""
        self.to(device)
        if self.init is None:
            self.source.initialize(generator, device)
            return
        z = self.init.to(device=device, dtype=torch.float32)
        for stage in reversed(list(self.stages)):
            z = cast(Stage, stage).inverse(z)
        self.source.set_image(z)

    def forward(self) -> Tensor:  # type: ignore[override]
        """Apply the source and every stage."""
        x = self.source()
        for stage in self.stages:
            x = stage(x)
        return x


# ------------------------------------------------------------------------------------------
# Constructors
# ------------------------------------------------------------------------------------------


def pixel(size: Size, batch: int = 1, sd: float = 0.01) -> PixelImage:
    """Pixel parametrisation (a source): see :class:`PixelImage`."""
    return PixelImage(size, batch, sd)


def fft(size: Size, batch: int = 1, sd: float = 0.01, decay_power: float = 1.0) -> FFTImage:
    """Fourier parametrisation with ``1/f`` scaling (a source): see :class:`FFTImage`."""
    return FFTImage(size, batch, sd, decay_power)


def decorrelate() -> DecorrelateColor:
    """Decorrelated-colour stage: see :class:`DecorrelateColor`."""
    return DecorrelateColor()


def sigmoid() -> Sigmoid:
    """Valid-RGB stage: see :class:`Sigmoid`."""
    return Sigmoid()


def chain(source: ImageParam, *stages: Stage, init: Tensor | None = None) -> Chain:
    """Chain a source and stages: see :class:`Chain`."""
    return Chain(source, *stages, init=init)


def image(
    size: Size = 224,
    batch: int = 1,
    *,
    fft: bool = True,
    decorrelate: bool = True,
    sd: float = 0.01,
    decay_power: float = 1.0,
    init: Tensor | None = None,
) -> Chain:
    """Lucid's standard image: ``fft -> decorrelate -> sigmoid`` (each step optional).

    Args:
        size: ``H`` or ``(H, W)``; ignored when ``init`` is given (its size is used).
        batch: number of images; ignored when ``init`` is given.
        fft: use the Fourier source (else pixels).
        decorrelate: insert the colour-decorrelation stage.
        sd: initial noise scale of the source.
        decay_power: ``1/f`` exponent of the Fourier source.
        init: photo(s) ``(B, 3, H, W)`` or ``(3, H, W)`` in ``[0, 1]`` to start from.

    Returns:
        A :class:`Chain` whose output lies in ``(0, 1)``.

    Example:
        >>> p = image(64, batch=2)
        >>> p.initialize(torch.Generator().manual_seed(0))
        >>> p().shape
        torch.Size([2, 3, 64, 64])
    """
    if init is not None:
        init = _check_image(init)
        batch, size = init.shape[0], (init.shape[2], init.shape[3])
    src: _Source = FFTImage(size, batch, sd, decay_power) if fft else PixelImage(size, batch, sd)
    stages: list[Stage] = [DecorrelateColor()] if decorrelate else []
    stages.append(Sigmoid())
    return Chain(src, *stages, init=init)


def as_param(param: ImageParam | Size | None, batch: int) -> ImageParam:
    """Turn ``render``'s ``param`` argument into an :class:`ImageParam`.

    ``None`` -> ``image(224, batch)``; an int or ``(H, W)`` -> ``image(size, batch)``; an
    :class:`ImageParam` is returned as is.
    """
    if param is None:
        return image(224, batch)
    if isinstance(param, ImageParam):
        return param
    if isinstance(param, (int, tuple, list)) and not isinstance(param, bool):
        return image(_hw(param), batch)
    raise InputError(
        "param must be an ImageParam (e.g. activmax.param.image(224)), an int size or (H, W), "
        f"got {type(param).__name__}"
    )


__all__ = [
    "COLOR_CORRELATION_SVD_SQRT",
    "Chain",
    "DecorrelateColor",
    "FFTImage",
    "ImageParam",
    "PixelImage",
    "Sigmoid",
    "Stage",
    "as_param",
    "chain",
    "decorrelate",
    "fft",
    "image",
    "pixel",
    "sigmoid",
]
