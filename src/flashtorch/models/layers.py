"""List a model's layers with the shape of what each one outputs."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._surgery import HandleList, model_device, preserved_state
from .._tokens import attention_internals, token_info, try_layout
from ..errors import InputError


def _first_tensor(output: Any) -> Tensor | None:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            found = _first_tensor(item)
            if found is not None:
                return found
    if isinstance(output, dict):
        for item in output.values():
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def _check_size(input_size: Sequence[int]) -> tuple[int, ...]:
    try:
        size = tuple(int(s) for s in input_size)
    except (TypeError, ValueError):
        raise InputError(
            f"input_size must be a sequence of positive ints such as (1, 3, 224, 224), got "
            f"{input_size!r}"
        ) from None
    if (
        not size
        or any(s < 1 for s in size)
        or any(isinstance(s, bool) or int(s) != s for s in input_size)
    ):
        raise InputError(
            f"input_size must be a sequence of positive ints such as (1, 3, 224, 224), got "
            f"{tuple(input_size)!r}"
        )
    return size


def list_layers(
    model: nn.Module, input_size: Sequence[int] = (1, 3, 224, 224), *, layouts: bool = False
) -> list[tuple[Any, ...]]:
    """Every submodule's dotted name, type name and output shape, from one forward pass.

    The model runs once on zeros of ``input_size`` (on its own device and dtype), in eval mode
    and without gradients; forward hooks record each module's output shape and are removed in
    ``finally``; training flags are restored afterwards. A module that runs several times keeps
    the shape of its first call; a module that does not run (or returns no tensor) gets ``()``.

    Args:
        model: any ``nn.Module`` (a TorchScript model gives names and types only, with a
            warning: its submodules cannot be hooked).
        input_size: the shape of the dummy input, batch first.
        layouts: add a fourth item, how a CAM reads the output as a map
            (:mod:`flashtorch._tokens`): ``"nchw 7x7"``, ``"tokens 1+14x14"`` (prefix tokens +
            patch grid), ``"nhwc 7x7"`` (channels-last), or ``""`` where it is no map (2-D
            features, per-head attention tensors and everything inside attention modules).

    Returns:
        ``[(name, type_name, output_shape), ...]`` (``[(name, type_name, output_shape,
        layout), ...]`` with ``layouts=True``) in ``model.named_modules()`` order, without the
        root module.

    Raises:
        InputError: ``input_size`` is not a shape, or the model fails on such an input (the
            message includes the model's error).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        >>> list_layers(net, (1, 3, 16, 16))
        [('0', 'Conv2d', (1, 8, 16, 16)), ('1', 'ReLU', (1, 8, 16, 16))]
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be an nn.Module, got {type(model).__name__}")
    size = _check_size(input_size)
    named = [(n, m) for n, m in model.named_modules() if n]
    if isinstance(model, torch.jit.ScriptModule):
        warnings.warn(
            "list_layers: a TorchScript model's submodules cannot be hooked; output shapes are "
            "left empty. Load the Python model to see them",
            UserWarning,
            stacklevel=2,
        )
        return [
            (n, getattr(m, "original_name", type(m).__name__), ()) + (("",) * layouts)
            for n, m in named
        ]

    shapes: dict[str, tuple[int, ...]] = {}
    read: dict[str, str] = {}
    info = token_info(model) if layouts else None
    skip = attention_internals(model) if layouts else set()

    def make_hook(name: str) -> Any:
        def hook(module: nn.Module, _inputs: Any, output: Any) -> None:
            if name not in shapes:
                tensor = _first_tensor(output)
                shapes[name] = () if tensor is None else tuple(tensor.shape)
                if (
                    info is not None
                    and tensor is not None
                    and id(module) not in skip
                    and len(size) == 4
                ):
                    layout = try_layout(tensor, size[0], info, (size[2], size[3]))
                    read[name] = layout.describe() if layout is not None else ""

        return hook

    params = next(iter(model.parameters()), None)
    dtype = params.dtype if params is not None and params.is_floating_point() else torch.float32
    x = torch.zeros(size, device=model_device(model), dtype=dtype)
    handles = HandleList()
    try:
        for name, module in named:
            handles.append(module.register_forward_hook(make_hook(name)))
        with preserved_state(model, eval_mode=True, freeze=False), torch.no_grad():
            try:
                model(x)
            except Exception as exc:
                raise InputError(
                    f"the model failed on a dummy input of size {size} "
                    f"({type(exc).__name__}: {exc}); pass the input_size your model expects"
                ) from exc
    finally:
        handles.remove()
    if layouts:
        return [(n, type(m).__name__, shapes.get(n, ()), read.get(n, "")) for n, m in named]
    return [(n, type(m).__name__, shapes.get(n, ())) for n, m in named]


__all__ = ["list_layers"]
