"""The talk's image helpers, fixed: loading, transforms, (de)normalisation, plotting prep."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from ..errors import ImageLoadError, InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ImageSource = Union[str, os.PathLike, Image.Image, np.ndarray, bytes, bytearray, Any]


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


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image.copy()  # a plain PIL.Image.Image, never an alias of the caller's
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = (arr / top * 255.0).round().clip(0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(image_path: ImageSource) -> Image.Image:
    """Load an image as an RGB PIL image.

    Args:
        image_path: a path (``str``/``Path``), a PIL image, a numpy array (HW, HWC or CHW; uint8,
            uint16, or float in [0, 1]), ``bytes``, or a binary file object. Grayscale, RGBA
            (composited on white), palette and 16-bit images are converted.

    Returns:
        An RGB ``PIL.Image.Image``. (The argument keeps FlashTorch 0.1.3's name,
        ``image_path``, whatever it holds.)

    Raises:
        FileNotFoundError: the path does not exist.
        ImageLoadError: the data is not an image.
    """
    src = image_path
    if isinstance(src, Image.Image):
        return _to_rgb(src)
    if isinstance(src, np.ndarray):
        return _from_array(src)
    if isinstance(src, Tensor):
        raise ImageLoadError(
            "load_image takes a path, PIL image, numpy array or bytes, not a tensor; a tensor "
            "is already an input for the model"
        )
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.exists():
            raise FileNotFoundError(f"no image file at {str(path)!r}; check the path")
        if path.is_dir():
            raise ImageLoadError(f"{str(path)!r} is a folder, not an image file")
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
    try:
        with Image.open(opener) as image:
            image.load()
            return _to_rgb(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(f"{label} is not a readable image ({exc})") from None


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
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "apply_transforms",
    "denormalize",
    "format_for_plotting",
    "load_image",
    "standardize_and_clip",
]
