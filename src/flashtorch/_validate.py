"""Input validation shared by every method."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from .errors import InputError


def check_images(inputs: Any, name: str = "inputs") -> Tensor:
    """Check that ``inputs`` is a floating-point ``(B, C, H, W)`` tensor with finite values.

    Raises:
        InputError: with the expected and actual shapes and how to fix it.
    """
    if not isinstance(inputs, Tensor):
        raise InputError(
            f"{name} must be a torch.Tensor of shape (B, C, H, W), got {type(inputs).__name__}; "
            "use flashtorch.utils.apply_transforms(image) to make one from an image"
        )
    if inputs.dim() != 4:
        fix = " (add a batch dimension with x.unsqueeze(0))" if inputs.dim() == 3 else ""
        raise InputError(f"{name} must have shape (B, C, H, W), got {tuple(inputs.shape)}{fix}")
    if inputs.shape[0] == 0:
        raise InputError(f"{name} is an empty batch: shape {tuple(inputs.shape)}")
    if inputs.is_meta:
        raise InputError(
            f"{name} is a meta tensor (shape {tuple(inputs.shape)}, no data): attribution needs "
            "real values; create the images on 'cpu' or 'cuda' (e.g. torch.rand(..., "
            "device='cpu'), or load them with flashtorch.utils.load_image)"
        )
    if not inputs.dtype.is_floating_point:
        raise InputError(
            f"{name} must be a floating-point tensor, got {inputs.dtype}; convert with "
            "x.float() (and normalise it as the model expects)"
        )
    if not syncs_allowed():
        return inputs  # a CUDA-graph capture: the caller checked the values (flashtorch.graphed)
    if not all_finite(inputs):
        raise InputError(f"{name} contains NaN or infinite values")
    return inputs


#: Set while flashtorch.graphed warms up and captures a call: checks that would read a device
#: value on the host (a synchronisation, illegal in a CUDA-graph capture) are made by the
#: wrapper before the replay instead. Per thread / task, never process-wide.
_NO_SYNC: contextvars.ContextVar[bool] = contextvars.ContextVar("flashtorch_no_sync", default=False)


def syncs_allowed() -> bool:
    """False inside :func:`no_host_sync` (a CUDA-graph warm-up or capture)."""
    return not _NO_SYNC.get()


@contextlib.contextmanager
def no_host_sync() -> Iterator[None]:
    """Skip the checks that read device values on the host (see :data:`_NO_SYNC`)."""
    token = _NO_SYNC.set(True)
    try:
        yield
    finally:
        _NO_SYNC.reset(token)


def all_finite(t: Tensor) -> bool:
    """Whether every value of ``t`` is finite (one device sync).

    A NaN or infinity makes the sum non-finite, so the sum (one reduction, no boolean copy of
    the tensor, much cheaper than ``isfinite(t).all()``) decides; only a non-finite sum of
    finite values (overflow) falls back to the element-wise test.
    """
    if bool(torch.isfinite(t.sum())):
        return True
    return bool(torch.isfinite(t).all())


def check_positive_int(value: Any, name: str) -> int:
    """Return ``value`` as an int if it is a positive integer, else raise InputError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return value
