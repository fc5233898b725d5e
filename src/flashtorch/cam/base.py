r"""What every class activation map shares: the layer, its activation and gradient, the upsampling.

A CAM explains a target score :math:`y` (a logit, or any scalar per sample) with the activation
:math:`A \in \mathbb{R}^{B \times K \times h \times w}` of one convolutional layer and, for the
gradient-based members of the family, its gradient :math:`G = \partial y / \partial A`. Each
method turns them into a coarse ``(B, 1, h, w)`` map; :class:`CAMMethod` then applies the shared
post-processing, in this order:

1. ``relu=True``: :math:`\max(0, \cdot)` (the ReLU in every paper of the family);
2. upsampling to the input's ``(H, W)`` with :func:`upsample` (bilinear, ``align_corners=False`` -
   the same as Captum's ``LayerAttribution.interpolate(..., "bilinear")``, torchcam and OpenCV's
   ``cv2.resize`` used by pytorch-grad-cam);
3. ``normalize=True``: per-image min-max scaling to ``[0, 1]`` with :func:`normalize_maps`.

Layer choice
------------
``layer`` is a module of the model or its dotted name (``"layer4"``, ``"features.18"``). A name
that does not exist raises :class:`~flashtorch.errors.LayerError` listing close matches. A module
that runs more than once in one forward pass (one activation module reused by every block) raises
:class:`~flashtorch.errors.SharedModuleError`: pick another layer or say which call with
``call=i`` (0-based, in execution order) - the first call is never taken silently.

With ``layer=None`` the layer is found by running the model once - the same forward pass that
computes the map, not an extra one: every submodule gets a temporary forward hook, and the layer
is

    the **last module to finish**, in execution order, whose output is a floating-point
    ``(B, C, h, w)`` tensor with the input's batch size and ``h * w > 1``, among the modules
    that ran **exactly once**.

"Last to finish" prefers the outermost container that ends with the final feature map (a
forward hook fires when a module returns, so ``layer4`` finishes after ``layer4.1.relu``);
``h * w > 1`` skips global pooling (``(B, C, 1, 1)``); adaptive pooling modules
(``nn.AdaptiveAvgPool2d``/``nn.AdaptiveMaxPool2d``, e.g. VGG's resampling to ``7 x 7``) are
skipped too, since they resample the map to a fixed size; 2-D outputs (flatten, classifier) are
not maps; the root module is never chosen; shared modules are skipped. Functional code between
modules (``F.relu``, ``F.adaptive_avg_pool2d``, ``torch.flatten``) is invisible to hooks and so
never chosen. For common architectures this gives:

===============================  =====================================================
model                            default layer
===============================  =====================================================
torchvision ResNet               ``layer4``
torchvision DenseNet             ``features`` (the functional ``F.relu`` follows it)
torchvision MobileNetV2 / V3     ``features``
torchvision VGG / AlexNet        ``features`` (before the adaptive average pool)
timm EfficientNet(-Lite)         ``bn2`` (``conv_head`` -> ``bn2`` -> global pool)
===============================  =====================================================

During that discovery pass the autograd graph starts at the first spatial output (never at
the input), so any later layer can be differentiated. When the chosen output was modified in
place after the layer returned (DenseNet's ``F.relu(features, inplace=True)``), its recorded
values are no longer the layer's output; the method then runs the model once more with the layer
fixed, so results never depend on in-place operations. The name found is remembered per model
(weakly referenced, keyed by the module tree, the modules' train/eval flags and the input's
``(C, H, W)``), so later calls - also through new method instances - run exactly like an
explicit ``layer=``: one forward pass with the graph starting at the layer, and one backward pass
to it. :attr:`CAMMethod.layer_name` holds the layer used by the last call, and
:func:`default_layer` tells which layer would be chosen for an input.
"""

from __future__ import annotations

import abc
import weakref
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._surgery import HandleList, LayerRecorder, find_layer, model_device, preserved_state
from .._targets import Target, logits_of, resolve
from .._validate import check_images
from ..attribution import AttributionMethod, MethodOutput
from ..errors import LayerError, MethodError

#: interpolation modes accepted for upsampling maps to the input size.
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


# --------------------------------------------------------------------------------------------
# Post-processing
# --------------------------------------------------------------------------------------------


def upsample(maps: Tensor, size: tuple[int, int], mode: str = "bilinear") -> Tensor:
    """Resize ``(B, C, h, w)`` maps to ``size = (H, W)``.

    ``bilinear`` and ``bicubic`` use ``align_corners=False`` (pixel centres aligned, as
    ``F.interpolate``'s default, Captum's ``LayerAttribution.interpolate`` and OpenCV's
    ``cv2.resize``). Maps already of size ``size`` are returned unchanged.
    """
    if mode not in INTERPOLATIONS:
        raise MethodError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {mode!r}")
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    if mode == "nearest":
        return F.interpolate(maps, size=size, mode="nearest")
    return F.interpolate(maps, size=size, mode=mode, align_corners=False)


def normalize_maps(maps: Tensor, eps: float = 1e-12) -> Tensor:
    r"""Scale every image's map to ``[0, 1]`` by its own min and max.

    .. math:: \hat M_b = \frac{M_b - \min M_b}{\max M_b - \min M_b}

    A constant map (e.g. all zeros after the ReLU) becomes all zeros rather than NaN.

    Args:
        maps: ``(B, ...)``; statistics are taken over everything but the batch axis.
        eps: smallest range divided by.
    """
    flat = maps.flatten(1)
    lo = flat.amin(1).view(-1, *([1] * (maps.dim() - 1)))
    hi = flat.amax(1).view(-1, *([1] * (maps.dim() - 1)))
    return (maps - lo) / (hi - lo).clamp_min(eps)


# --------------------------------------------------------------------------------------------
# Layer discovery
# --------------------------------------------------------------------------------------------


#: pooling to a fixed output size resamples the map rather than computing features: skipped.
_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def _is_spatial(t: Any, batch: int) -> bool:
    return (
        isinstance(t, Tensor)
        and t.dim() == 4
        and t.is_floating_point()
        and t.shape[0] == batch
        and t.shape[2] * t.shape[3] > 1
    )


class _Candidate:
    __slots__ = ("name", "module", "tensor", "version")

    def __init__(self, name: str, module: nn.Module, tensor: Tensor) -> None:
        self.name = name
        self.module = module
        self.tensor: Tensor | None = tensor
        self.version = tensor._version


class SpatialTracker:
    """Find the default CAM layer during an ordinary forward pass (see the module docstring).

    A forward hook on every submodule counts calls and records each module's first spatial
    ``(B, C, h, w)`` output in completion order. With ``start_graph=True`` and grad mode on, the
    first spatial output is turned into an autograd leaf (the model continues on a copy), so
    gradients can be taken with respect to any later spatial output while nothing upstream -
    neither the input nor the stem - is differentiated. Only the latest ``keep`` recorded
    tensors are held; hooks are removed on exit, also on error.

    Args:
        model: the model.
        batch: the input's batch size (outputs with another leading size are not maps).
        start_graph: make the first spatial output a leaf when grad mode is on.
        keep: how many of the latest candidate tensors to keep referenced.
    """

    def __init__(
        self, model: nn.Module, batch: int, *, start_graph: bool = False, keep: int = 4
    ) -> None:
        self.model = model
        self.batch = batch
        self.start_graph = start_graph
        self.keep = keep
        self.calls: dict[nn.Module, int] = {}
        self.candidates: list[_Candidate] = []
        self._handles = HandleList()

    def __enter__(self) -> SpatialTracker:
        try:
            for name, module in self.model.named_modules():
                if name:
                    self._handles.append(module.register_forward_hook(self._hook(name)))
        except BaseException:
            self._handles.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._handles.remove()

    def _hook(self, name: str) -> Any:
        def hook(module: nn.Module, _inputs: Any, output: Any) -> Any:
            count = self.calls.get(module, 0) + 1
            self.calls[module] = count
            first = output[0] if isinstance(output, (tuple, list)) else output
            if not _is_spatial(first, self.batch) or isinstance(module, _POOLS):
                return None
            replaced = None
            if self.start_graph and torch.is_grad_enabled() and not first.requires_grad:
                first = first.detach().requires_grad_(True)
                replaced = first.clone()
            if count == 1:
                self.candidates.append(_Candidate(name, module, first))
                if len(self.candidates) > self.keep:
                    self.candidates[-self.keep - 1].tensor = None
            if replaced is None:
                return None
            if isinstance(output, tuple):
                return (replaced, *output[1:])
            if isinstance(output, list):
                return [replaced, *output[1:]]
            return replaced

        return hook

    def choice(self) -> _Candidate:
        """The chosen candidate after the forward pass.

        Raises:
            LayerError: no module produced a usable spatial map.
        """
        for cand in reversed(self.candidates):
            if self.calls.get(cand.module, 0) == 1:
                return cand
        shared = sorted({c.name for c in self.candidates})
        extra = (
            f" (only modules that run several times did: {', '.join(shared)}; pass layer= and "
            "call=)"
            if shared
            else ""
        )
        raise LayerError(
            f"could not find a default CAM layer in {type(self.model).__name__}: no submodule "
            f"that runs once returned a (B, C, h, w) map with h * w > 1{extra}. Pass layer= "
            "with a module or dotted name whose output is a spatial feature map"
        )


#: default layers found so far: model (weakly referenced) -> {(structure, input shape): name}.
_DEFAULT_LAYERS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, str]] = (
    weakref.WeakKeyDictionary()
)


def _memo_key(model: nn.Module, inputs: Tensor) -> tuple:
    """What the default layer depends on: the module tree, the mode, the input's shape.

    One flat tuple from one iterative walk (every module's identity and mode, and the names
    of its children), since it runs on every call: ``named_modules()`` would build every
    dotted name (0.3-0.6 ms a call on EfficientNet-Lite0).
    """
    key: list[Any] = [tuple(inputs.shape[1:])]
    add = key.append
    stack = [model]
    seen: set[int] = set()
    while stack:
        m = stack.pop()
        add(id(m))
        if id(m) in seen:  # a shared module: its subtree is in the key already
            continue
        seen.add(id(m))
        add(m.training)
        for name, child in m._modules.items():
            if child is not None:
                add(name)
                stack.append(child)
    return tuple(key)


def default_layer(model: nn.Module, inputs: Tensor) -> str:
    """The dotted name of the layer a CAM would use for ``inputs`` with ``layer=None``.

    Runs the model once (no gradients, eval mode, state restored); see the module docstring
    for the rule.

    Raises:
        LayerError: no suitable layer.
    """
    x = check_images(inputs)
    with preserved_state(model), torch.no_grad():
        x = x.detach().to(model_device(model))
        with SpatialTracker(model, x.shape[0]) as tracker:
            model(x)
        name = tracker.choice().name
        _DEFAULT_LAYERS.setdefault(model, {})[_memo_key(model, x)] = name
        return name


# --------------------------------------------------------------------------------------------
# Capture: one forward (and one backward to the layer)
# --------------------------------------------------------------------------------------------


@dataclass
class Capture:
    r"""The layer's activation (and gradient) for a batch, with the model's output.

    Attributes:
        inputs: the inputs the model ran on.
        activation: ``(B, K, h, w)`` the layer's output, detached, in float32.
        gradient: ``(B, K, h, w)`` :math:`\partial y_b / \partial A_b` in float32, or ``None``.
        output: the model output, detached.
        scores: ``(B,)`` the explained scores, detached.
        indices: ``(B,)`` target classes or ``None`` for a callable target.
        layer: dotted name of the layer used.
    """

    inputs: Tensor
    activation: Tensor
    gradient: Tensor | None
    output: Tensor
    scores: Tensor
    indices: Tensor | None
    layer: str

    @property
    def grad(self) -> Tensor:
        """The gradient, for gradient-based methods (raises if it was not computed)."""
        if self.gradient is None:
            raise RuntimeError("this capture was made without gradients (uses_gradients=False)")
        return self.gradient


def _check_map(name: str, t: Tensor, batch: int) -> None:
    if not (isinstance(t, Tensor) and t.dim() == 4 and t.shape[0] == batch):
        shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise LayerError(
            f"layer {name!r} returns {shape}; a CAM needs a (B, C, h, w) feature map with the "
            f"batch size {batch}. Pick a convolutional layer before the global pooling "
            "(layer=None picks the last one)"
        )
    if not t.is_floating_point():
        raise LayerError(f"layer {name!r} returns a {t.dtype} tensor; a CAM needs a float map")


def _gradient(scores: Tensor, activation: Tensor, name: str) -> Tensor:
    if not scores.requires_grad:
        raise LayerError(
            f"the target score does not depend on layer {name!r}; pick a layer on the path to "
            "the output (check also that a callable target uses the model output)"
        )
    (grad,) = torch.autograd.grad(scores.sum(), activation, allow_unused=True)
    if grad is None:
        raise LayerError(
            f"the target score does not depend on layer {name!r}; pick a layer on the path to "
            "the output"
        )
    return grad


def _resolve_scores(target: Target, output: Tensor) -> tuple[Tensor, Tensor | None]:
    resolved = resolve(target, output)
    return resolved.scores, resolved.indices


class CAMMethod(AttributionMethod):
    """Base class of the CAM family: layer resolution, capture, post-processing.

    Subclasses implement :meth:`cam`, turning a :class:`Capture` into a coarse ``(B, 1, h, w)``
    map (or override :meth:`compute`). The capture costs one forward pass plus, for
    gradient-based methods, one backward pass from the scores to the layer only
    (``torch.autograd.grad(scores.sum(), A)``: no input gradient). The forward pass runs
    without gradients up to the layer and with them after it, so nothing upstream records a
    graph and the parameters are left as they are (no per-call freezing: on
    EfficientNet-Lite0 at batch 1 that took Grad-CAM from 1.10x to 1.08x its limit).

    Args:
        model: an image model mapping ``(B, C, H, W)`` to ``(B, num_classes)``.
        layer: module or dotted name; ``None`` finds the last spatial layer (module docstring).
        call: which call of a module that runs several times in one forward pass (0-based);
            ``None`` refuses such modules with :class:`~flashtorch.errors.SharedModuleError`.
        relu: keep only the positive part of the coarse map.
        normalize: scale every map to ``[0, 1]`` (per image, after upsampling).
        interpolation: ``"bilinear"`` (default), ``"bicubic"`` or ``"nearest"``.
        eval_mode: run the model in eval mode during the call (restored afterwards).
        fast: run on a BatchNorm-folded copy (see :class:`~flashtorch.attribution.
            AttributionMethod`); the layer is looked up there by its dotted name.
        amp: run the model under autocast; the map itself is combined in float32.

    Raises:
        LayerError: unknown layer name, or a module that is not part of the model.
        MethodError: invalid option value.
    """

    single_channel: ClassVar[bool] = True
    needs_layer: ClassVar[bool] = True
    graph_safe = True
    #: the graph starts at the layer (:class:`~flashtorch._surgery.LayerRecorder`'s
    #: ``start_grad``): nothing before it records gradients, so parameters need no freezing.
    freezes = False
    #: the method needs the gradient of the score with respect to the activation.
    uses_gradients: ClassVar[bool] = True

    def __init__(
        self,
        model: nn.Module,
        layer: nn.Module | str | None = None,
        *,
        call: int | None = None,
        relu: bool = True,
        normalize: bool = True,
        interpolation: str = "bilinear",
        eval_mode: bool = True,
        fast: bool = False,
        amp: bool = False,
    ) -> None:
        super().__init__(model, eval_mode=eval_mode, fast=fast, amp=amp)
        if layer is not None:
            # fail early on an unknown name; keep the name, which also finds the layer in the
            # rewritten copy that fast=True runs on
            layer = find_layer(model, layer)[0]
        elif call is not None:
            raise MethodError("call= selects a call of an explicit layer; pass layer= too")
        if call is not None and (isinstance(call, bool) or not isinstance(call, int) or call < 0):
            raise MethodError(f"call must be a non-negative integer (0-based), got {call!r}")
        if interpolation not in INTERPOLATIONS:
            raise MethodError(
                f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}"
            )
        #: dotted name of the explicit layer, or ``None`` for the default layer.
        self.layer: str | None = layer
        self.call = call
        self.relu = bool(relu)
        self.normalize = bool(normalize)
        self.interpolation = interpolation
        #: dotted name of the layer used by the last call (``None`` before the first call).
        self.layer_name: str | None = None

    # -- capture -------------------------------------------------------------------------------

    def capture(self, inputs: Tensor, target: Target) -> Capture:
        """Run the model once, recording the layer's activation (and gradient if needed).

        Call inside the guarded state (:meth:`compute` is); ``inputs`` on the model's device.
        """
        grad = self.uses_gradients
        with torch.enable_grad() if grad else torch.no_grad():
            layer = self.layer
            if layer is None:
                key = _memo_key(self.model, inputs)
                layer = _DEFAULT_LAYERS.get(self.model, {}).get(key)
                if layer is None:
                    # the discovery pass starts its graph at the first spatial output and
                    # relies on frozen parameters for the rest (once per model and shape)
                    with preserved_state(self.model, eval_mode=False, freeze=grad):
                        found = self._discover(inputs, target, grad, key)
                    if isinstance(found, Capture):
                        return found
                    layer = found
            with LayerRecorder(self.model, layer, self.call, leaf=True,
                               start_grad=grad) as recorder:
                output = self.model(inputs)
            activation = recorder.output
            _check_map(recorder.name, activation, inputs.shape[0])
            scores, indices = _resolve_scores(target, output)
            gradient = _gradient(scores, activation, recorder.name) if grad else None
            return self._packed(
                inputs, activation, gradient, output, scores, indices, recorder.name
            )

    def _discover(self, inputs: Tensor, target: Target, grad: bool, key: tuple) -> Capture | str:
        """Find the default layer in the forward pass itself; the capture, or a name to rerun."""
        with SpatialTracker(self.model, inputs.shape[0], start_graph=grad) as tracker:
            output = self.model(inputs)
        cand = tracker.choice()
        _DEFAULT_LAYERS.setdefault(self.model, {})[key] = cand.name
        tensor = cand.tensor
        if tensor is None or tensor._version != cand.version or (grad and not tensor.requires_grad):
            return cand.name  # dropped, or modified in place downstream: run again with it fixed
        scores, indices = _resolve_scores(target, output)
        gradient = _gradient(scores, tensor, cand.name) if grad else None
        return self._packed(inputs, tensor, gradient, output, scores, indices, cand.name)

    def _packed(
        self,
        inputs: Tensor,
        activation: Tensor,
        gradient: Tensor | None,
        output: Tensor,
        scores: Tensor,
        indices: Tensor | None,
        name: str,
    ) -> Capture:
        self.layer_name = name
        return Capture(
            inputs=inputs,
            activation=activation.detach().float(),
            gradient=None if gradient is None else gradient.detach().float(),
            output=logits_of(output).detach(),
            scores=scores.detach(),
            indices=indices,
            layer=name,
        )

    # -- post-processing -------------------------------------------------------------------------

    def finish(self, coarse: Tensor, size: tuple[int, int]) -> Tensor:
        """ReLU (if ``relu``), upsample to ``size``, normalise (if ``normalize``)."""
        maps = coarse.clamp_min(0) if self.relu else coarse
        maps = upsample(maps, size, self.interpolation)
        return normalize_maps(maps) if self.normalize else maps

    # -- the method ----------------------------------------------------------------------------

    @abc.abstractmethod
    def cam(self, capture: Capture, target: Target) -> tuple[Tensor, dict[str, Tensor]]:
        """The coarse ``(B, 1, h, w)`` map and extras (e.g. channel weights) for a capture."""

    def compute(self, inputs: Tensor, target: Target) -> MethodOutput:
        """Capture the layer, combine it into a coarse map, post-process."""
        cap = self.capture(inputs, target)
        coarse, extras = self.cam(cap, target)
        maps = self.finish(coarse, (inputs.shape[-2], inputs.shape[-1]))
        return MethodOutput(maps, cap.output, cap.indices, cap.scores, extras)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.model).__name__}, layer={self.layer!r})"


__all__ = [
    "INTERPOLATIONS",
    "CAMMethod",
    "Capture",
    "SpatialTracker",
    "default_layer",
    "normalize_maps",
    "upsample",
]
