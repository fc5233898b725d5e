"""Everything that touches a user's model, and its undo.

Three tools, each undone in ``finally``:

* :func:`preserved_state` - records every module's ``training`` flag and every parameter's
  ``requires_grad`` and ``.grad``, optionally switches to eval mode and freezes parameters for the
  duration of a call (so the backward pass reaches the input only), and puts all of it back.
* :class:`RectifierMode` - a :class:`~torch.overrides.TorchFunctionMode` that replaces the backward
  pass of every rectifier the model *actually runs* (``nn.ReLU`` reused or in place, ``F.relu``,
  ``torch.relu_``, ``Tensor.relu``, ``nn.ReLU6``/``F.relu6``, ``F.hardtanh``, ``clamp(min=0)``)
  by the guided-backprop or deconvnet rule. Nothing is swapped in the model; leaving the
  ``with`` block restores normal dispatch.
* :class:`LayerRecorder` - forward hooks that capture a layer's output (and count its calls, so a
  module run twice in one forward is detected rather than silently taking the first call).
"""

from __future__ import annotations

import contextlib
import difflib
import warnings
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .errors import LayerError, SharedModuleError

Rule = Literal["guided", "deconvnet"]


class HandleList(list):
    """A list of removable handles that removes them all at once (zennit's pattern)."""

    def remove(self) -> None:  # type: ignore[override]
        """Remove every handle, even if one of them fails, then clear the list."""
        errors: list[BaseException] = []
        for handle in self:
            try:
                handle.remove()
            except Exception as exc:  # pragma: no cover - defensive
                errors.append(exc)
        self.clear()
        if errors:
            raise errors[0]


def model_device(model: nn.Module) -> torch.device:
    """Return the device of the model's first parameter or buffer (CPU if it has none)."""
    for t in model.parameters():
        return t.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


@contextlib.contextmanager
def preserved_state(
    model: nn.Module, *, eval_mode: bool = True, freeze: bool = True
) -> Iterator[nn.Module]:
    """Run a block with the model in eval mode and frozen parameters, then restore everything.

    Args:
        model: the user's model.
        eval_mode: switch every module to eval mode inside the block.
        freeze: set ``requires_grad=False`` on every parameter inside the block, so autograd
            computes gradients for the input only (one forward + one input-only backward).

    Yields:
        The same model.

    On exit - normal or by exception - each module's ``training`` flag and each parameter's
    ``requires_grad`` and ``.grad`` object are put back exactly as they were.
    """
    modes = [(m, m.training) for m in model.modules()]
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    try:
        if eval_mode:
            model.eval()
        if freeze:
            for p in params:
                p.requires_grad_(False)
        yield model
    finally:
        for m, training in modes:
            m.training = training
        for p, flag, grad in zip(params, flags, grads):
            p.requires_grad_(flag)
            p.grad = grad


# --------------------------------------------------------------------------------------------
# Rectifier interception
# --------------------------------------------------------------------------------------------


class _ModifiedRectifier(torch.autograd.Function):
    """``clamp(x, lo, hi)`` forward with a guided / deconvnet backward.

    Guided backprop (Springenberg et al. 2014, "Striving for Simplicity"): the backward signal
    through a rectifier is ``g * [lo < x < hi] * [g > 0]`` - the forward mask of the linear
    region *and* the sign of the incoming gradient. Deconvnet (Zeiler & Fergus 2014) ignores the
    forward mask and passes ``max(g, 0)``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, lo: float | None, hi: float | None, inplace: bool, rule: str
    ) -> Tensor:
        if inplace:
            out = x.clamp_(lo, hi)
            ctx.mark_dirty(x)
        else:
            out = x.clamp(lo, hi)
        ctx.rule = rule
        if rule == "guided":
            mask = out > lo if lo is not None else torch.ones_like(out, dtype=torch.bool)
            if hi is not None:
                mask &= out < hi
            ctx.save_for_backward(mask)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        positive = grad.clamp(min=0)
        if ctx.rule == "guided":
            (mask,) = ctx.saved_tensors
            positive = positive * mask
        return positive, None, None, None, None


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _relu_spec(args: tuple, kwargs: dict, inplace: bool | None) -> tuple[float, float | None, bool]:
    ip = bool(_arg(args, kwargs, 1, "inplace", False)) if inplace is None else inplace
    return 0.0, None, ip


def _relu6_spec(args: tuple, kwargs: dict, inplace: bool | None) -> tuple[float, float, bool]:
    ip = bool(_arg(args, kwargs, 1, "inplace", False)) if inplace is None else inplace
    return 0.0, 6.0, ip


def _hardtanh_spec(args: tuple, kwargs: dict, inplace: bool | None) -> tuple[float, float, bool]:
    lo = float(_arg(args, kwargs, 1, "min_val", -1.0))
    hi = float(_arg(args, kwargs, 2, "max_val", 1.0))
    ip = bool(_arg(args, kwargs, 3, "inplace", False)) if inplace is None else inplace
    return lo, hi, ip


def _clamp_spec(
    args: tuple, kwargs: dict, inplace: bool | None
) -> tuple[float, float | None, bool] | None:
    lo = _arg(args, kwargs, 1, "min", None)
    hi = _arg(args, kwargs, 2, "max", None)
    # Only a clamp at zero from below is a rectifier; anything else is left alone.
    if isinstance(lo, Tensor) or isinstance(hi, Tensor) or lo is None or float(lo) != 0.0:
        return None
    return 0.0, (None if hi is None else float(hi)), bool(inplace)


def _build_table() -> dict[Callable, tuple[Callable, bool | None]]:
    table: dict[Callable, tuple[Callable, bool | None]] = {
        F.relu: (_relu_spec, None),
        F.relu_: (_relu_spec, True),
        torch.relu: (_relu_spec, False),
        torch.relu_: (_relu_spec, True),
        Tensor.relu: (_relu_spec, False),
        Tensor.relu_: (_relu_spec, True),
        F.relu6: (_relu6_spec, None),
        F.hardtanh: (_hardtanh_spec, None),
        F.hardtanh_: (_hardtanh_spec, True),
        torch.clamp: (_clamp_spec, False),
        torch.clip: (_clamp_spec, False),
        torch.clamp_min: (_clamp_spec, False),
        Tensor.clamp: (_clamp_spec, False),
        Tensor.clip: (_clamp_spec, False),
        Tensor.clamp_: (_clamp_spec, True),
        Tensor.clamp_min: (_clamp_spec, False),
        Tensor.clamp_min_: (_clamp_spec, True),
    }
    for name in ("relu6", "hardtanh", "hardtanh_"):
        fn = getattr(torch._C._nn, name, None)
        if fn is not None:
            spec = _relu6_spec if name == "relu6" else _hardtanh_spec
            table[fn] = (spec, True if name.endswith("_") else None)
    return table


_RECTIFIERS = _build_table()

# Smooth activations are not rectifiers: guided backprop / deconvnet leave their exact
# gradient unchanged (policy documented in flashtorch.saliency). They are counted so that the
# warning "no rectifier ran" can name what the model runs instead.
_SMOOTH = {
    F.silu: "silu",
    F.gelu: "gelu",
    F.mish: "mish",
    F.hardswish: "hardswish",
    F.elu: "elu",
    F.leaky_relu: "leaky_relu",
    F.softplus: "softplus",
    torch.sigmoid: "sigmoid",
    Tensor.sigmoid: "sigmoid",
    F.hardsigmoid: "hardsigmoid",
}


class RectifierMode(TorchFunctionMode):
    """Give every rectifier the model runs a guided-backprop or deconvnet backward pass.

    Works on what actually runs - modules (also one module reused many times, or in place) and
    functional calls alike - because it intercepts calls at the ``__torch_function__`` level
    instead of looking for ``nn.ReLU`` instances. Scripted (TorchScript) code bypasses Python and
    is not seen: :attr:`calls` stays 0 and the caller warns.

    Args:
        rule: ``"guided"`` (Springenberg et al. 2014) or ``"deconvnet"`` (Zeiler & Fergus 2014).

    Attributes:
        calls: number of rectifier calls that were modified.
        smooth: names of smooth activations seen (left unmodified).
    """

    def __init__(self, rule: Rule) -> None:
        super().__init__()
        if rule not in ("guided", "deconvnet"):
            raise ValueError(f"rule must be 'guided' or 'deconvnet', got {rule!r}")
        self.rule = rule
        self.calls = 0
        self.smooth: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        entry = _RECTIFIERS.get(func)
        if entry is not None and args and isinstance(args[0], Tensor):
            spec, inplace = entry
            parsed = spec(args, kwargs, inplace)
            x = args[0]
            if parsed is not None and x.requires_grad and torch.is_grad_enabled():
                lo, hi, ip = parsed
                self.calls += 1
                return _ModifiedRectifier.apply(x, lo, hi, ip, self.rule)
        else:
            name = _SMOOTH.get(func)
            if name is not None:
                self.smooth.add(name)
        return func(*args, **kwargs)


def warn_if_no_rectifier(mode: RectifierMode, method: str) -> None:
    """Warn that a guided/deconvnet map equals a plain gradient when no rectifier ran."""
    if mode.calls == 0:
        seen = ", ".join(sorted(mode.smooth)) or "none that flashtorch recognises"
        warnings.warn(
            f"{method}: the model ran no rectifier (ReLU/ReLU6/hardtanh) that flashtorch could "
            f"modify (smooth activations seen: {seen}); the map equals the plain gradient. "
            "Scripted (TorchScript) models hide their activations: pass the Python model.",
            UserWarning,
            stacklevel=3,
        )


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------


def find_layer(model: nn.Module, layer: nn.Module | str) -> tuple[str, nn.Module]:
    """Resolve a layer given as a module or a dotted name (``"features.8"``, ``"layer4.1.conv2"``).

    Returns:
        ``(dotted_name, module)``.

    Raises:
        LayerError: the name does not exist (the message lists close matches), or the module is
            not part of the model.
    """
    named = dict(model.named_modules())
    if isinstance(layer, nn.Module):
        for name, module in named.items():
            if module is layer:
                return name, module
        raise LayerError(
            f"layer {type(layer).__name__} is not a submodule of {type(model).__name__}; "
            "pass a module of this model or its dotted name (see `flashtorch layers`)"
        )
    if not isinstance(layer, str):
        raise LayerError(f"layer must be a module or a dotted name, got {type(layer).__name__}")
    if layer in named:
        return layer, named[layer]
    candidates = [n for n in named if n]
    close = difflib.get_close_matches(layer, candidates, n=5, cutoff=0.5)
    hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    if not hint:
        shown = ", ".join(repr(c) for c in candidates[-8:])
        hint = f"some of its layers: {shown} (all: `flashtorch layers` or model.named_modules())"
    raise LayerError(f"model {type(model).__name__} has no layer {layer!r}; {hint}")


class LayerRecorder:
    """Capture the output of one layer during forward passes, counting its calls.

    Use as a context manager; the hook is removed on exit, also on error. With
    ``retain_grad=True`` the captured output keeps its gradient after a backward pass
    (``recorder.output.grad`` is *not* used: call ``torch.autograd.grad`` on :attr:`output`).

    Args:
        model: the model.
        layer: module or dotted name.
        call: which call to keep when the module runs several times in one forward
            (``None``: refuse with :class:`~flashtorch.errors.SharedModuleError`).
        leaf: make the selected call's output (call ``call``, or the first call when ``call`` is
            ``None``) a fresh autograd leaf: the recorder keeps ``output.detach()`` (requiring
            grad when grad mode is on) and the model continues with a copy of it. Gradients can
            then be taken with respect to :attr:`output`, the backward pass stops there (nothing
            upstream is differentiated), and in-place operations downstream (``F.relu(x,
            inplace=True)`` after the layer) leave the recorded values intact. Needs
            ``call >= 0``.
    """

    def __init__(
        self,
        model: nn.Module,
        layer: nn.Module | str,
        call: int | None = None,
        *,
        leaf: bool = False,
    ) -> None:
        self.name, self.module = find_layer(model, layer)
        if leaf and call is not None and call < 0:
            raise LayerError(
                f"call={call}: with leaf=True the call must be counted from the start (0, 1, ...)"
            )
        self.call = call
        self.leaf = leaf
        self.outputs: list[Tensor] = []
        self._handles = HandleList()

    def __enter__(self) -> LayerRecorder:
        selected = 0 if self.call is None else self.call

        def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
            first = output[0] if isinstance(output, (tuple, list)) else output
            if not (self.leaf and len(self.outputs) == selected and isinstance(first, Tensor)):
                self.outputs.append(first)
                return None
            captured = first.detach()
            if torch.is_grad_enabled() and captured.is_floating_point():
                captured.requires_grad_(True)
            self.outputs.append(captured)
            replaced = captured.clone()
            if isinstance(output, tuple):
                return (replaced, *output[1:])
            if isinstance(output, list):
                return [replaced, *output[1:]]
            return replaced

        self._handles.append(self.module.register_forward_hook(hook))
        return self

    def __exit__(self, *exc: object) -> None:
        self._handles.remove()

    def reset(self) -> None:
        """Forget captured outputs (before another forward pass)."""
        self.outputs.clear()

    @property
    def output(self) -> Tensor:
        """The captured output of the selected call of the layer in the last forward pass."""
        if not self.outputs:
            raise LayerError(
                f"layer {self.name!r} did not run in the forward pass; pick a layer the model "
                "uses (see `flashtorch layers`)"
            )
        if len(self.outputs) > 1 and self.call is None:
            raise SharedModuleError(
                f"layer {self.name!r} ran {len(self.outputs)} times in one forward pass (a shared "
                "module, e.g. one activation reused); its output is ambiguous. Pick another layer "
                f"(e.g. the block that contains it), or pass call=0..{len(self.outputs) - 1} to "
                "say which call to use"
            )
        index = 0 if self.call is None else self.call
        if not -len(self.outputs) <= index < len(self.outputs):
            raise LayerError(
                f"layer {self.name!r} ran {len(self.outputs)} times; call={index} is out of range"
            )
        return self.outputs[index]


def hook_count(model: nn.Module) -> int:
    """Total number of forward, forward-pre and backward hooks on the model's modules."""
    total = 0
    for m in model.modules():
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
            "_forward_hooks_with_kwargs",
        ):
            d = getattr(m, attr, None)
            if d and attr != "_forward_hooks_with_kwargs":
                total += len(d)
    return total


__all__ = [
    "HandleList",
    "LayerRecorder",
    "RectifierMode",
    "find_layer",
    "hook_count",
    "model_device",
    "preserved_state",
    "warn_if_no_rectifier",
]
