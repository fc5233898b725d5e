"""The talk's image helpers, fixed: loading, transforms, (de)normalisation, plotting prep.

Reading a file is bounded: the header's width and height are checked before any pixel is
decoded, so a small file that claims enormous or extremely elongated dimensions (a
decompression bomb) is refused with :class:`~flashtorch.errors.ImageLoadError` instead of
taking gigabytes. The limits are per call (``max_pixels``, ``max_aspect`` of
:func:`load_image`, or the ``FLASHTORCH_MAX_IMAGE_PIXELS`` environment variable); PIL's own
global ``PIL.Image.MAX_IMAGE_PIXELS`` is read, never changed, and its
``DecompressionBombWarning`` is not silenced.
"""

from __future__ import annotations

import io
import math
import os
import stat
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from ..errors import ImageLoadError, InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ImageSource = Union[str, os.PathLike, Image.Image, np.ndarray, bytes, bytearray, Any]

#: Largest image, in pixels (width x height), that :func:`load_image` decodes by default:
#: 100 megapixels (about 300 MB as RGB). Override per call (``max_pixels``) or with the
#: ``FLASHTORCH_MAX_IMAGE_PIXELS`` environment variable (e.g. ``200e6``).
DEFAULT_MAX_PIXELS = 100_000_000
#: Largest ratio of an image's longer side to its shorter side: resizing the shorter side to
#: the model's input size multiplies the longer one, so a 1 x 10^6 strip would become
#: gigapixels. Override per call (``max_aspect``).
DEFAULT_MAX_ASPECT = 100.0
MAX_PIXELS_ENV = "FLASHTORCH_MAX_IMAGE_PIXELS"


def _pixel_budget(max_pixels: int | float | None) -> int:
    if max_pixels is None:
        text = os.environ.get(MAX_PIXELS_ENV, "").strip()
        if not text:
            return DEFAULT_MAX_PIXELS
        try:
            max_pixels = float(text)
        except ValueError:
            raise InputError(
                f"{MAX_PIXELS_ENV}={text!r} is not a number of pixels (e.g. 200e6)"
            ) from None
    if (
        isinstance(max_pixels, bool)
        or not isinstance(max_pixels, (int, float))
        or not (max_pixels >= 1 and math.isfinite(max_pixels))
    ):
        raise InputError(f"max_pixels must be a positive number of pixels, got {max_pixels!r}")
    return int(max_pixels)


def _check_dimensions(
    size: tuple[int, int], label: str, max_pixels: int | None, max_aspect: float
) -> None:
    """Refuse a ``(width, height)`` with no pixels, too many, or too elongated."""
    w, h = size
    if w < 1 or h < 1:
        raise ImageLoadError(f"{label} has no pixels ({w} x {h})")
    if max_pixels is not None and w * h > max_pixels:
        raise ImageLoadError(
            f"{label} is {w} x {h} = {w * h / 1e6:.1f} megapixels, over the limit of "
            f"{max_pixels / 1e6:g} megapixels (a decompression bomb?); downscale it first, or "
            f"raise the limit (load_image(..., max_pixels=N) or {MAX_PIXELS_ENV}=N) if you "
            "trust the file"
        )
    ratio = max(w, h) / min(w, h)
    if ratio > max_aspect:
        raise ImageLoadError(
            f"{label} is {w} x {h}, {ratio:.0f} times longer than wide, over the limit of "
            f"{max_aspect:g} (resizing it would take gigabytes); crop it first, or pass "
            "load_image(..., max_aspect=R) if you mean it"
        )


def _regular_file(path: Path) -> None:
    """Refuse what is not a regular file (before opening: reading a FIFO would block)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"no image file at {str(path)!r}; check the path") from None
    except OSError as exc:
        raise ImageLoadError(f"{str(path)!r} cannot be read ({exc.strerror})") from None
    if stat.S_ISDIR(mode):
        raise ImageLoadError(f"{str(path)!r} is a folder, not an image file")
    if not stat.S_ISREG(mode):
        kind = (
            "a FIFO (named pipe)"
            if stat.S_ISFIFO(mode)
            else "a device"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "not a regular file"
        )
        raise ImageLoadError(
            f"{str(path)!r} is {kind}, not an image file; save the image to a regular file "
            "and pass that"
        )


def _open(opener: Any, label: str) -> Image.Image:
    """``Image.open`` (reads the header only), PIL's bomb refusal as an ``ImageLoadError``."""
    try:
        return Image.open(opener)
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(
            f"{label} is refused as a possible decompression bomb ({exc}); downscale it first, "
            "or raise PIL.Image.MAX_IMAGE_PIXELS yourself if you trust the file"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(f"{label} is not a readable image ({exc})") from None


def _jpeg_draft(image: Image.Image, max_pixels: int, label: str) -> None:
    """Let a JPEG over the budget decode at 1/2, 1/4 or 1/8 scale (cheap; libjpeg's DCT)."""
    if image.format != "JPEG":
        return
    w, h = image.size
    if w * h <= max_pixels:
        return
    for k in (2, 4, 8):
        rw, rh = -(-w // k), -(-h // k)
        if rw * rh <= max_pixels:
            image.draft(None, (rw, rh))
            warnings.warn(
                f"{label} is {w} x {h} = {w * h / 1e6:.1f} megapixels, over the limit of "
                f"{max_pixels / 1e6:g}: decoded at 1/{k} scale ({image.size[0]} x "
                f"{image.size[1]})",
                UserWarning,
                stacklevel=4,
            )
            return


def probe_image(
    path: str | os.PathLike,
    *,
    max_pixels: int | float | None = None,
    max_aspect: float = DEFAULT_MAX_ASPECT,
) -> tuple[int, int]:
    """Check that ``path`` is an image :func:`load_image` would read, without decoding it.

    It must be a regular file (not a folder, FIFO or device) whose header names a known format
    and dimensions within the limits (see :func:`load_image`).

    Returns:
        The ``(width, height)`` of the header.

    Raises:
        FileNotFoundError: the path does not exist.
        ImageLoadError: anything else that :func:`load_image` would refuse at the header.
    """
    path = Path(path)
    label = repr(str(path))
    _regular_file(path)
    budget = _pixel_budget(max_pixels)
    with _open(path, label) as image:
        w, h = size = image.size
        drafted = image.format == "JPEG" and -(-w // 8) * -(-h // 8) <= budget
        _check_dimensions(size, label, None if drafted else budget, max_aspect)
    return size


def _from_array(arr: np.ndarray) -> Image.Image:
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # CHW -> HWC
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ImageLoadError(
            f"a numpy image must be HW, HWC or CHW with 1, 3 or 4 channels, got shape {arr.shape}"
        )
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ImageLoadError("a float image contains NaN or infinite values")
        if arr.min() < 0 or arr.max() > 1:
            raise ImageLoadError(
                "a float numpy image must hold values in [0, 1]; got range "
                f"[{arr.min():.3g}, {arr.max():.3g}] (divide by 255 for 8-bit data)"
            )
        arr = np.round(arr * 255).astype(np.uint8)
    elif arr.dtype == np.uint16 or (np.issubdtype(arr.dtype, np.integer) and arr.max() > 255):
        arr = (arr.astype(np.float64) / 65535.0 * 255.0).round().clip(0, 255).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.integer):
        arr = arr.astype(np.uint8)
    else:
        raise ImageLoadError(f"unsupported numpy image dtype {arr.dtype}")
    return _to_rgb(Image.fromarray(arr))


def _wide_to_uint8(image: Image.Image) -> np.ndarray:
    """16-bit, 32-bit integer and float (``F``) grey images -> ``uint8``.

    ``I;16``: ``/ 65535``. ``I``: ``/ 255`` if every value is in [0, 255], ``/ 65535`` if in
    [0, 65535] (16-bit PNGs), else stretched from its minimum to its maximum. ``F``: values
    in [0, 1] are taken as fractions (``* 255``), values in [0, 255] as 8-bit levels, anything
    else is stretched from its minimum to its maximum; NaN or infinite values are refused.
    """
    arr = np.asarray(image, dtype=np.float64)
    if arr.size == 0:
        return arr.astype(np.uint8)
    lo, hi = float(arr.min()), float(arr.max())
    if image.mode == "F" and not (math.isfinite(lo) and math.isfinite(hi)):
        raise ImageLoadError("a float image contains NaN or infinite values")
    if image.mode.startswith("I;16"):
        top = 65535.0
    elif image.mode == "F" and lo >= 0.0 and hi <= 1.0:
        top = 1.0
    elif lo >= 0.0 and hi <= 255.0:
        top = 255.0
    elif image.mode == "I" and lo >= 0.0 and hi <= 65535.0:
        top = 65535.0
    else:  # no natural range: stretch
        arr, top = arr - lo, max(hi - lo, 1e-12)
    return (arr / top * 255.0).round().clip(0, 255).astype(np.uint8)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image.copy()  # a plain PIL.Image.Image, never an alias of the caller's
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        return Image.fromarray(_wide_to_uint8(image)).convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(
    image_path: ImageSource,
    *,
    max_pixels: int | float | None = None,
    max_aspect: float = DEFAULT_MAX_ASPECT,
) -> Image.Image:
    """Load an image as an RGB PIL image.

    Files (paths, bytes, file objects) are read with bounds: the header's width and height
    are checked before decoding, and the EXIF orientation is applied (a photo taken
    sideways comes out upright). A JPEG over ``max_pixels`` is decoded at 1/2, 1/4 or 1/8
    scale when that fits (with a warning); any other image over it is refused.

    Args:
        image_path: a path (``str``/``Path``), a PIL image, a numpy array (HW, HWC or CHW; uint8,
            uint16, or float in [0, 1]), ``bytes``, or a binary file object. Grayscale, RGBA
            (composited on white), palette, 16-bit, 32-bit and float (TIFF ``F``) images are
            converted.
        max_pixels: largest ``width * height`` decoded from a file (default
            :data:`DEFAULT_MAX_PIXELS`, or the ``FLASHTORCH_MAX_IMAGE_PIXELS`` environment
            variable). PIL refuses images over twice ``PIL.Image.MAX_IMAGE_PIXELS`` on its
            own, whatever this says.
        max_aspect: largest ratio of the longer side to the shorter (any source).

    Returns:
        An RGB ``PIL.Image.Image``. (The argument keeps FlashTorch 0.1.3's name,
        ``image_path``, whatever it holds.)

    Raises:
        FileNotFoundError: the path does not exist.
        ImageLoadError: the data is not an image, the path is not a regular file (folder,
            FIFO, device), or the image is over the limits.
    """
    src = image_path
    if (
        isinstance(max_aspect, bool)
        or not isinstance(max_aspect, (int, float))
        or not (max_aspect >= 1)
    ):
        raise InputError(f"max_aspect must be a number >= 1, got {max_aspect!r}")
    if isinstance(src, Image.Image):
        _check_dimensions(src.size, "the given image", None, max_aspect)
        return _to_rgb(src)
    if isinstance(src, np.ndarray):
        if src.ndim >= 2:
            hw = src.shape[:2] if src.ndim == 2 or src.shape[-1] in (1, 3, 4) else src.shape[1:3]
            _check_dimensions((int(hw[1]), int(hw[0])), "the given array", None, max_aspect)
        return _from_array(src)
    if isinstance(src, Tensor):
        raise ImageLoadError(
            "load_image takes a path, PIL image, numpy array or bytes, not a tensor; a tensor "
            "is already an input for the model"
        )
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        _regular_file(path)
        opener: Any = path
        label = repr(str(path))
    elif isinstance(src, (bytes, bytearray, memoryview)):
        opener = io.BytesIO(bytes(src))
        label = "the given bytes"
    elif hasattr(src, "read"):
        opener = src
        label = "the given file object"
    else:
        raise ImageLoadError(
            f"cannot load an image from {type(src).__name__}; pass a path, PIL image, numpy "
            "array, bytes or a binary file object"
        )
    budget = _pixel_budget(max_pixels)
    with _open(opener, label) as image:
        _check_dimensions(image.size, label, None, max_aspect)
        _jpeg_draft(image, budget, label)
        _check_dimensions(image.size, label, budget, max_aspect)
        try:
            image.load()
            turned = image.getexif().get(0x0112, 1) not in (None, 1)  # EXIF Orientation
            upright = ImageOps.exif_transpose(image) if turned else image
        except Image.DecompressionBombError as exc:
            raise ImageLoadError(
                f"{label} is refused as a possible decompression bomb ({exc})"
            ) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise ImageLoadError(f"{label} is not a readable image ({exc})") from None
        return _to_rgb(upright)


def _resize_crop(image: Image.Image, size: int) -> Image.Image:
    """Exactly torchvision's ``CenterCrop(size)(Resize(size)(image))`` on a PIL image.

    The shorter side becomes ``size`` and the longer ``int(size * long / short)`` (truncated,
    as ``torchvision.transforms.Resize`` does), bilinear; the crop offsets are
    ``int(round((side - size) / 2))`` (``torchvision.transforms.CenterCrop``).
    """
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    if short != size:
        new_long = int(size * long / short)
        nw, nh = (size, new_long) if w <= h else (new_long, size)
        image = image.resize((nw, nh), Image.Resampling.BILINEAR)
    nw, nh = image.size
    left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def apply_transforms(
    image: ImageSource | Sequence[ImageSource],
    size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Tensor:
    r"""Resize (shorter side), centre-crop and ImageNet-normalise images into a batch.

    .. math:: x = (\text{crop}(\text{resize}(I)) / 255 - \mu) / \sigma

    Equal, value for value, to torchvision's ``Compose([Resize(size), CenterCrop(size),
    ToTensor(), Normalize(mean, std)])`` (FlashTorch 0.1.3's pipeline) on the RGB image.

    Args:
        image: anything :func:`load_image` accepts, or a list of them (-> a batch).
        size: output side in pixels.
        mean: per-channel mean to subtract (ImageNet by default).
        std: per-channel standard deviation to divide by.

    Returns:
        A ``(B, 3, size, size)`` float32 leaf tensor (``B = 1`` for a single image) with
        ``requires_grad=True``, as in FlashTorch 0.1.3, so that ``model(x)[0, c].backward()``
        fills ``x.grad``. flashtorch's own methods never write to it (they differentiate a
        detached copy); use ``x.detach()`` for a tensor without gradient tracking.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise InputError(f"size must be a positive integer, got {size!r}")
    images = list(image) if isinstance(image, (list, tuple)) else [image]
    if not images:
        raise InputError("apply_transforms got an empty list of images")
    arrays = [np.asarray(_resize_crop(load_image(im), size), dtype=np.float32) for im in images]
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return ((batch - m) / s).contiguous().requires_grad_(True)


def _stats(tensor: Tensor, values: Sequence[float]) -> Tensor:
    shape = [1] * tensor.dim()
    shape[-3] = -1
    return torch.as_tensor(values, dtype=tensor.dtype, device=tensor.device).view(shape)


def denormalize(
    tensor: Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Tensor:
    """Undo the normalisation: ``x * std + mean``, on a new tensor (never in place).

    Works on ``(3, H, W)`` and ``(B, 3, H, W)``.
    """
    if (
        not isinstance(tensor, Tensor)
        or tensor.dim() not in (3, 4)
        or tensor.shape[-3] != len(mean)
    ):
        shape = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
        raise InputError(f"denormalize expects (3, H, W) or (B, 3, H, W), got {shape}")
    t = tensor.detach()
    return t * _stats(t, std) + _stats(t, mean)


def standardize_and_clip(
    tensor: Tensor,
    min_value: float = 0.0,
    max_value: float = 1.0,
    saturation: float = 0.1,
    brightness: float = 0.5,
) -> Tensor:
    r"""Standardise each image to mean ``brightness`` and std ``saturation``, then clip.

    .. math:: y = \text{clip}((x - \mu_x) / \sigma_x \cdot s + b, \min, \max)

    :math:`\sigma_x` is the sample standard deviation (as in FlashTorch 0.1.3). Statistics are
    per image for ``(B, C, H, W)`` input (0.1.3: over the whole batch) and over the tensor
    otherwise. A constant image becomes ``brightness`` everywhere. Returns a new tensor.
    """
    t = tensor.detach()
    dims = tuple(range(1, t.dim())) if t.dim() == 4 else tuple(range(t.dim()))
    mean = t.mean(dim=dims, keepdim=True)
    count = t.numel() // (t.shape[0] if t.dim() == 4 and t.shape[0] else 1)
    # the sample standard deviation (torch's default, as in FlashTorch 0.1.3)
    std = t.std(dim=dims, keepdim=True) if count > 1 else torch.zeros_like(mean)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return ((t - mean) / std * saturation + brightness).clamp(min_value, max_value)


def format_for_plotting(tensor: Tensor) -> Tensor:
    """``(1, C, H, W)``/``(C, H, W)`` -> ``(H, W, C)`` (``(H, W)`` if one channel), on the CPU."""
    t = tensor.detach().cpu()
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise InputError(
                f"format_for_plotting takes one image, got a batch of {t.shape[0]}; index it "
                "first, e.g. tensor[0]"
            )
        t = t[0]
    if t.dim() != 3:
        raise InputError(f"format_for_plotting expects (C, H, W), got {tuple(tensor.shape)}")
    if t.shape[0] == 1:
        return t[0]
    return t.permute(1, 2, 0)


__all__ = [
    "DEFAULT_MAX_ASPECT",
    "DEFAULT_MAX_PIXELS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "apply_transforms",
    "denormalize",
    "format_for_plotting",
    "load_image",
    "probe_image",
    "standardize_and_clip",
]
