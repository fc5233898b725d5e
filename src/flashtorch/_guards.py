"""Guardrails of the calling convention: warnings and fixes for calls that would mislead.

:meth:`flashtorch.attribution.AttributionMethod.__call__` applies them to every method, once per
call (a method that runs inside another's call, as SmoothGrad's base does, adds none):

* **Degenerate maps.** Maps that are all zero for some image, or hold NaN or infinity, get a
  ``UserWarning`` naming the likely cause. The check reads the maps on the host, so it runs
  only where that costs no wait for a device: maps returned on the CPU (a CPU model, or a GPU
  model called with CPU inputs, whose maps were just copied to the host). Maps left on a GPU
  are not checked (reading them would stop the host until the GPU finishes the call, see
  ``tests/test_sync_free.py``), nor inside a CUDA-graph capture (:func:`flashtorch.graphed`).
  :func:`check_maps` runs the same check on any maps.
* **Active dropout.** With ``eval_mode=False`` a model in training mode drops different units
  at every forward pass, so the maps are random. A ``TorchFunctionMode`` watches the call's
  dropout functions (``nn.Dropout`` modules and functional ``F.dropout``, ``torch.dropout``,
  the ``dropout_p`` of ``F.scaled_dot_product_attention``...) and warns when one ran with
  ``p > 0`` in training. It is active only with ``eval_mode=False``: eval-mode calls (the
  default) pay nothing.
* **Gradient modes.** Methods enable gradients where they need them, so they work under
  ``torch.no_grad()``. Under ``torch.inference_mode()`` the call leaves inference mode for its
  own work, and inputs created under it (inference tensors, which autograd cannot record) are
  copied first; a model whose own tensors are inference tensors (built or run for the first
  time under inference mode and caching tensors, say) gets an :class:`~flashtorch.errors.InputError`
  that says what to do instead of autograd's error.
* **Models that edit their input.** The caller's tensor never reaches the model: a call works
  on its own copy where it would otherwise share the caller's memory (:func:`own_copy`), and
  the methods feed the model a copy of any tensor they use again (:func:`model_input`), so
  ``x.mul_(2)`` or an in-place ReLU as the model's first op gives the maps of what the model
  computes from its input (for the gradient methods, instead of autograd's in-place error).
"""

from __future__ import annotations

import contextlib
import contextvars
import re
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from .errors import InputError

#: set while an attribution call runs: a call made inside it (a wrapper's) adds no warning.
_IN_CALL: contextvars.ContextVar[bool] = contextvars.ContextVar("flashtorch_in_call", default=False)


@contextlib.contextmanager
def outermost_call() -> Iterator[bool]:
    """Mark an attribution call; yields whether it is the outermost one (the one that warns)."""
    outer = not _IN_CALL.get()
    token = _IN_CALL.set(True)
    try:
        yield outer
    finally:
        _IN_CALL.reset(token)


# --------------------------------------------------------------------------------------------
# Degenerate maps
# --------------------------------------------------------------------------------------------


def _images(indices: list[int]) -> str:
    shown = ", ".join(str(i) for i in indices[:8])
    return f"image(s) {shown}{', ...' if len(indices) > 8 else ''}"


def check_maps(name: str, maps: Tensor, *, cam: bool = False, stacklevel: int = 2) -> None:
    """Warn when some image's map is all zero, or when maps hold NaN or infinite values.

    Two reductions (each image's largest and smallest value, NaN or infinite as soon as one
    value is) and one read of ``2 B`` values; each warning at most once.

    Args:
        name: the method's name, for the message.
        cam: the maps are class activation maps (the message names the CAM's own causes).
        maps: ``(B, ...)`` maps (read on the host: pass CPU maps to avoid waiting for a device).
        stacklevel: passed to :func:`warnings.warn`.
    """
    if maps.numel() == 0:
        return
    flat = maps.detach().flatten(1)
    highs, lows = torch.stack([flat.amax(1), flat.amin(1)]).float().tolist()  # NaN propagates
    inf = float("inf")
    bad = [i for i, (h, lo) in enumerate(zip(highs, lows)) if not -inf < lo <= h < inf]
    zero = [i for i, (h, lo) in enumerate(zip(highs, lows)) if h == 0 and lo == 0]
    if bad:
        warnings.warn(
            f"{name}: the maps of {_images(bad)} contain NaN or infinite values. Likely causes: "
            "the model overflows (amp=True in float16, or very large inputs or weights), NaN "
            "weights, or a callable target that returns inf or NaN (a log of 0). Check the "
            "model's output on these inputs and compute in float32",
            UserWarning,
            stacklevel=stacklevel + 1,
        )
    if zero:
        first = (
            "the layer's weighted activation is negative everywhere and the CAM's ReLU clips "
            "it (relu=False shows the negative evidence), the score's gradient at the layer is "
            "zero (try another layer), "
            if cam
            else "the explained score does not change with the input there (or the baseline or "
            "fill equals the input): "
        )
        warnings.warn(
            f"{name}: the maps of {_images(zero)} are all zero. Likely causes: {first}an "
            "untrained or zero-initialised classification head (torchvision's vit_b_16 starts "
            "with zero head weights), a target callable that ignores the model output, or a "
            "saturated model (dead ReLUs; softmax or sigmoid outputs at 0 or 1: explain the "
            "logits). Check the weights, the target and the layer",
            UserWarning,
            stacklevel=stacklevel + 1,
        )


def maps_checkable(maps: Tensor, syncs_allowed: bool) -> bool:
    """Whether :func:`check_maps` costs no device wait: CPU maps, outside a graph capture."""
    return syncs_allowed and maps.device.type == "cpu"


# --------------------------------------------------------------------------------------------
# Active dropout
# --------------------------------------------------------------------------------------------

#: dropout functions: (position of p, name of p, default p, position of training, its name,
#: default training); ``None`` positions mean keyword-only.
_DROPOUTS: dict[Any, tuple[int | None, str, float, int | None, str | None, bool]] = {
    F.dropout: (1, "p", 0.5, 2, "training", True),
    F.dropout1d: (1, "p", 0.5, 2, "training", True),
    F.dropout2d: (1, "p", 0.5, 2, "training", True),
    F.dropout3d: (1, "p", 0.5, 2, "training", True),
    F.alpha_dropout: (1, "p", 0.5, 2, "training", False),
    F.feature_alpha_dropout: (1, "p", 0.5, 2, "training", False),
    torch.dropout: (1, "p", 0.5, 2, "train", True),
    torch.alpha_dropout: (1, "p", 0.5, 2, "train", True),
    torch.feature_dropout: (1, "p", 0.5, 2, "train", True),
    torch.feature_alpha_dropout: (1, "p", 0.5, 2, "train", True),
    F.scaled_dot_product_attention: (4, "dropout_p", 0.0, None, None, True),
}


def _arg(args: tuple, kwargs: dict, pos: int | None, key: str | None, default: Any) -> Any:
    if key is not None and key in kwargs:
        return kwargs[key]
    if pos is not None and len(args) > pos:
        return args[pos]
    return default


class DropoutWatch(TorchFunctionMode):
    """Records whether a dropout function ran with ``p > 0`` in training mode."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: str | None = None

    def __torch_function__(
        self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        spec = _DROPOUTS.get(func) if self.seen is None else None
        if spec is not None:
            p_pos, p_key, p_default, t_pos, t_key, t_default = spec
            p = _arg(args, kwargs, p_pos, p_key, p_default)
            training = _arg(args, kwargs, t_pos, t_key, t_default)
            if bool(training) and isinstance(p, (int, float)) and p > 0:
                self.seen = f"{getattr(func, '__name__', func)}(p={p:g})"
        return func(*args, **kwargs)


def warn_dropout(name: str, seen: str, *, stacklevel: int = 2) -> None:
    """The warning for dropout active during a call (``seen`` names the function)."""
    warnings.warn(
        f"{name}: the model ran with dropout active ({seen}) because eval_mode=False and the "
        "model is in training mode: every forward pass drops different units, so the maps "
        "are random and change from call to call. Leave eval_mode=True (the default) or call "
        "model.eval() first; if you average over dropout on purpose, ignore this warning",
        UserWarning,
        stacklevel=stacklevel + 1,
    )


# --------------------------------------------------------------------------------------------
# Gradient modes
# --------------------------------------------------------------------------------------------


def leave_inference_mode() -> contextlib.AbstractContextManager[Any]:
    """``torch.inference_mode(False)`` when inference mode is on, else a no-op."""
    if torch.is_inference_mode_enabled():
        return torch.inference_mode(False)
    return contextlib.nullcontext()


def usable_input(x: Tensor) -> Tensor:
    """``x``, or a normal copy of it if it is an inference tensor (call outside inference mode)."""
    return x.clone() if x.is_inference() else x


def own_copy(x: Tensor, caller: Tensor) -> Tensor:
    """``x``, or a copy of it where it shares memory with the caller's tensor ``caller``.

    A model may edit its input in place (``x.mul_(...)``, ``F.relu(x, inplace=True)`` as its
    first op): the tensor it gets must be flashtorch's own, never the caller's. ``x`` is often
    a new tensor already (cast, moved to the model's device); a copy is made only where it
    is not.
    """
    if (
        x.device == caller.device
        and x.numel()
        and (x.untyped_storage().data_ptr() == caller.untyped_storage().data_ptr())
    ):
        return x.clone()
    return x


def model_input(x: Tensor) -> Tensor:
    """What a method feeds the model when it uses ``x`` again afterwards: a copy of ``x``.

    A model that edits its input in place then edits the copy: ``x`` keeps its values for the
    method's next steps (the noisy copies, the occluded copies, the masked inputs, the input
    gradient of Guided Grad-CAM), and a leaf ``x`` that requires grad is not refused by
    autograd (in-place operation on a leaf); the gradient with respect to ``x`` goes through
    one clone node and is that of what the model computes from its input. The copy costs one
    pass over the batch, small against a forward pass.
    """
    return x.clone()


def is_inference_tensor_error(exc: BaseException) -> bool:
    """Whether ``exc`` is autograd refusing an inference tensor."""
    return isinstance(exc, RuntimeError) and "nference tensor" in str(exc)


def inference_tensor_error(name: str) -> InputError:
    """The error for a model whose own tensors were made under ``torch.inference_mode()``."""
    return InputError(
        f"{name}: a tensor the model uses (a parameter, a buffer or a cached value) was created "
        "under torch.inference_mode(), and autograd cannot record it. Create or load the model "
        "outside inference mode (or clone its parameters and buffers there); flashtorch "
        "methods work under torch.no_grad(), which you can use instead of inference_mode"
    )


#: What a model's own forward pass says when the images do not fit it: torch's convolution
#: (channel count), a linear layer after a flatten (image size), timm's and Hugging Face's checks.
_CHANNELS = re.compile(r"expected input\[[^\]]*\] to have (\d+) channels, but got (\d+)")
_HF_CHANNELS = re.compile(r"channel dimension of the pixel values .*Expected (\d+) but got (\d+)")
_SIZE = (
    re.compile(r"mat1 and mat2 shapes cannot be multiplied"),
    re.compile(r"Input (height|width|image size) \(.*\) doesn't match model"),
)


def model_input_error(name: str, exc: BaseException, shape: tuple[int, ...]) -> InputError | None:
    """An :class:`InputError` saying how to fix images that the model's forward refused, or None.

    Only the model's own messages for a wrong channel count or image size are translated (the
    original error is chained); anything else is left to propagate as it is.
    """
    text = str(exc)
    match = _CHANNELS.search(text) or _HF_CHANNELS.search(text)
    if match:
        want, got = int(match.group(1)), int(match.group(2))
        fix = {
            (3, 1): "grey images: repeat the channel with x.expand(-1, 3, -1, -1)",
            (3, 4): "RGBA images: drop the alpha channel with x[:, :3]",
        }.get((want, got), f"give the images {want} channels")
        return InputError(
            f"{name}: the model expects {want} input channels, the images have {got} "
            f"(shape {shape}); {fix} (flashtorch.utils.apply_transforms makes RGB tensors)"
        )
    if any(p.search(text) for p in _SIZE):
        return InputError(
            f"{name}: the model's forward pass refused images of shape {shape} "
            f"({text.splitlines()[0][:160]}); the model most likely expects another input "
            "size: resize the images to it (flashtorch.utils.apply_transforms(image, size=...))"
        )
    return None


def meta_model_error(name: str) -> InputError:
    """The error for a model whose parameters are on the meta device (no values yet)."""
    return InputError(
        f"{name}: the model's parameters are on the 'meta' device and hold no values; "
        "materialise it first (model.to_empty(device='cpu') and load_state_dict(...)), "
        "then explain it"
    )


__all__ = [
    "DropoutWatch",
    "check_maps",
    "inference_tensor_error",
    "meta_model_error",
    "model_input_error",
    "is_inference_tensor_error",
    "leave_inference_mode",
    "maps_checkable",
    "model_input",
    "outermost_call",
    "own_copy",
    "usable_input",
    "warn_dropout",
]
