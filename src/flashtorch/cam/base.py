r"""What every class activation map shares: the layer, its activation and gradient, the upsampling.

A CAM explains a target score :math:`y` (a logit, or any scalar per sample) with the activation
:math:`A \in \mathbb{R}^{B \times K \times h \times w}` of one layer and, for the
gradient-based members of the family, its gradient :math:`G = \partial y / \partial A`. Each
method turns them into a coarse ``(B, 1, h, w)`` map; :class:`CAMMethod` then applies the shared
post-processing, in this order:

1. ``relu=True``: :math:`\max(0, \cdot)` (the ReLU in every paper of the family);
2. upsampling to the input's ``(H, W)`` with :func:`upsample` (bilinear, ``align_corners=False`` -
   the same as Captum's ``LayerAttribution.interpolate(..., "bilinear")``, torchcam and OpenCV's
   ``cv2.resize`` used by pytorch-grad-cam);
3. ``normalize=True``: per-image min-max scaling to ``[0, 1]`` with :func:`normalize_maps`.

Layouts
-------
The layer's output - and its gradient, the same way - is read as a ``(B, K, h, w)`` map before
any method sees it, so every member of the family (Score-CAM's masks too, upsampled from the
grid) follows one path (:mod:`flashtorch._tokens`):

* ``(B, C, h, w)`` feature maps as they are;
* transformer tokens ``(B, N, C)``: ``p`` prefix tokens (class, distillation, register tokens)
  dropped, the ``N - p`` patch tokens laid out row-major on their ``h x w`` grid - ``p`` from
  the model (timm's ``num_prefix_tokens``, the prefix-token parameters of torchvision and Hugging
  Face), the grid from the token count and the input size (non-square inputs and timm's
  ``dynamic_img_size`` included);
* channels-last ``(B, h, w, C)`` (timm's and torchvision's Swin) permuted to channels first.

``reshape=`` (a callable ``t -> (B, C, h, w)``, as pytorch-grad-cam's ``reshape_transform``)
overrides the reading. An explicit layer whose output is no map, or reads as several grids
(per-head attention tensors ``(B, heads, N, d)``, 2-D features), raises
:class:`~flashtorch.errors.LayerError` naming ``reshape=`` and the shape - never a guess. A 4-D
output of a model that declares no tokens reads as ``(B, C, h, w)`` (PyTorch's convention) even
when its grid does not match the input's aspect ratio (a model that resizes its input). When the
gradient at every patch token of an explicit token layer is exactly zero (the classifier reads
only the class token after it: the last block's output, the final norm), a warning says so and
names the default layer (one host read of a device value, made only for explicit token
layers).

Layer choice
------------
``layer`` is a module of the model or its dotted name (``"layer4"``, ``"blocks.11.norm1"``). A
name that does not exist raises :class:`~flashtorch.errors.LayerError` listing close matches. A
module that runs more than once in one forward pass (one activation module reused by every block)
raises :class:`~flashtorch.errors.SharedModuleError`: pick another layer or say which call with
``call=i`` (0-based, in execution order) - the first call is never taken silently.

With ``layer=None`` the layer is found by one forward and one backward pass (every submodule gets
a temporary forward hook; the graph starts at the first map, so nothing upstream is
differentiated and no parameter is frozen). The layer is

    the **last module to finish**, among the submodules that ran **exactly once**, whose output
    has a layout (above) with ``h * w > 1`` and **whose map the target score depends on**: a
    non-zero gradient at some grid position.

When the score's gradient is zero at every candidate (a zero-initialised head, such as
torchvision's untrained ViT), the last candidate is used for that call only (not remembered) and
the all-zero map gets the call's warning.

Excluded: adaptive pooling (``nn.AdaptiveAvgPool2d``/``nn.AdaptiveMaxPool2d``: VGG's resampling
to ``7 x 7``), the root, shared modules, everything inside an attention module (class name ending
in ``Attention``: timm's ``Attention``/``WindowAttention``, ``nn.MultiheadAttention``, Hugging
Face's ``ViTAttention``), whose outputs are queries, keys, values and per-head tensors rather
than the token stream, and, in a model with token layers, the maps before the first one (the
patch-embedding convolution, a hybrid's stem). Functional code between modules (``F.relu``,
``torch.flatten``) is invisible to hooks and so never chosen.

Why these conditions, structurally. "Last to finish" prefers the outermost container that ends
with the final feature map (a hook fires when a module returns, so ``layer4`` finishes after
``layer4.1.relu``). The gradient condition is what makes the rule right on class-token
transformers without a second rule: after the last block's attention only the class token
reaches the head, so the gradient at the patch tokens of the last block's output, its MLP and the
final norm is exactly zero, and a Grad-CAM there is empty. The last map the score depends on is
then the last block's first norm (``norm1``, ``ln_1``, ``layernorm_before``): the input of the
last attention, whose patch tokens feed the class token through its keys and values (the layer
pytorch-grad-cam's documentation recommends). Models that pool all tokens (Swin, ViTs with
``global_pool="avg"``) and CNNs get their final map, as before. The measured comparison of
candidate layers on a localisation set is in ``docs/faithfulness.md``.

=================================  ==============================================================
model                              default layer (layout for a 224 x 224 input)
=================================  ==============================================================
torchvision ResNet                 ``layer4``
torchvision DenseNet               ``features`` (the functional ``F.relu`` follows it)
torchvision MobileNetV2 / V3       ``features``
torchvision VGG / AlexNet          ``features`` (before the adaptive average pool)
timm EfficientNet(-Lite)           ``bn2`` (``conv_head`` -> ``bn2`` -> global pool)
timm ConvNeXt                      ``norm_pre``
timm ViT, DeiT, register ViTs      ``blocks.11.norm1`` (``tokens 1+14x14``; DeiT distilled
                                   ``2+14x14``, ``reg_tokens=4`` ``5+14x14``)
timm ViT, ``global_pool="avg"``    ``norm`` (``tokens 0+14x14``)
timm Swin                          ``norm`` (``nhwc 7x7``)
torchvision ViT                    ``encoder.layers.encoder_layer_11.ln_1`` (``tokens 1+14x14``)
torchvision Swin                   ``permute`` (the final norm's output as ``nchw 7x7``)
Hugging Face ``ViTFor...``         the last layer's ``layernorm_before`` (``vit.layers.11.`` in
                                   transformers 5, ``vit.encoder.layer.11.`` before)
=================================  ==============================================================

The name found is remembered per model (weakly referenced, keyed by the module tree, the modules'
train/eval flags and the input's ``(C, H, W)``), so later calls - also through new method
instances - run exactly like an explicit ``layer=``: one forward pass with the graph starting at
the layer, and one backward pass to it. :attr:`CAMMethod.layer_name` and
:attr:`CAMMethod.layer_layout` hold the layer used by the last call and how it was read, and
:func:`default_layer` tells which layer would be chosen for an input.
"""

from __future__ import annotations

import abc
import threading
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._guards import model_input
from .._surgery import (
    HandleList,
    LayerRecorder,
    find_layer,
    model_device,
    preserved_state,
    refuse_scripted,
)
from .._targets import (
    AnyTarget,
    ResolvedTarget,
    Target,
    detach_output,
    explained_output,
    resolve,
)
from .._tokens import TokenLayout, attention_internals, infer_layout, token_info, try_layout
from .._validate import check_images, syncs_allowed
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


def normalize_maps(maps: Tensor, eps: float = 1e-12, rtol: float | None = None) -> Tensor:
    r"""Scale every image's map to ``[0, 1]`` by its own min and max.

    .. math:: \hat M_b = \frac{M_b - \min M_b}{\max M_b - \min M_b}

    A constant map becomes all zeros rather than NaN, and so does a map that is constant up
    to rounding: one whose range is at most ``rtol`` times its largest magnitude (a Grad-CAM
    layer of 1 x 1, upsampled, differs from a constant by about 1e-7 of its value; stretching
    that to ``[0, 1]`` would draw noise). pytorch-grad-cam returns zeros there too.

    Args:
        maps: ``(B, ...)``; statistics are taken over everything but the batch axis.
        eps: smallest range divided by.
        rtol: relative range below which a map counts as constant; default
            ``64 * torch.finfo(maps.dtype).eps`` (7.6e-6 in float32, 1.4e-14 in float64).
    """
    flat = maps.flatten(1)
    shape = (-1, *([1] * (maps.dim() - 1)))
    lo = flat.amin(1)
    hi = flat.amax(1)
    span = hi - lo
    if rtol is None:
        rtol = 64 * torch.finfo(maps.dtype).eps if maps.is_floating_point() else 0.0
    flat_map = span <= rtol * torch.maximum(hi.abs(), lo.abs())
    scaled = (maps - lo.view(shape)) / span.clamp_min(eps).view(shape)
    return torch.where(flat_map.view(shape), torch.zeros_like(scaled), scaled)


# --------------------------------------------------------------------------------------------
# Layer discovery
# --------------------------------------------------------------------------------------------


#: pooling to a fixed output size resamples the map rather than computing features: skipped.
_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def _discover(model: nn.Module, inputs: Tensor, target: AnyTarget) -> tuple[str, bool]:
    """The default layer for ``inputs`` and whether to remember it: one forward and one backward.

    See the module docstring. When the score's gradient is zero at every candidate map, the
    last candidate is returned and not remembered (the choice depends on weights then).

    The forward pass runs without gradients up to the first map, which becomes an autograd leaf
    (nothing upstream is differentiated, no parameter is frozen); the grad mode is restored on
    exit, and every hook is removed, also on error.
    """
    info = token_info(model)
    batch, hw = inputs.shape[0], (inputs.shape[-2], inputs.shape[-1])
    skip = attention_internals(model)
    calls: dict[nn.Module, int] = {}
    found: list[tuple[str, nn.Module, Tensor, TokenLayout]] = []
    owner = threading.get_ident()

    def hook_for(name: str) -> Any:
        def hook(module: nn.Module, _inputs: Any, output: Any) -> Any:
            if threading.get_ident() != owner:
                return None  # another thread's forward pass (flashtorch._surgery, threads)
            calls[module] = calls.get(module, 0) + 1
            if calls[module] > 1 or id(module) in skip or isinstance(module, _POOLS):
                return None
            first = output[0] if isinstance(output, (tuple, list)) else output
            layout = try_layout(first, batch, info, hw)
            if layout is None or layout.grid[0] * layout.grid[1] < 2:
                return None
            if found:
                if first.requires_grad:
                    found.append((name, module, first, layout))
                return None
            leaf = first.detach().requires_grad_(True)  # the graph starts here
            torch.set_grad_enabled(True)
            found.append((name, module, leaf, layout))
            if isinstance(output, (tuple, list)):
                return type(output)([leaf.clone(), *output[1:]])
            return leaf.clone()

        return hook

    handles = HandleList()
    try:
        with torch.no_grad():  # restores the caller's grad mode on exit
            for name, module in model.named_modules():
                if name:
                    handles.append(module.register_forward_hook(hook_for(name)))
            output = model(model_input(inputs))  # a copy: the model may edit its input
            handles.remove()
            usable = [c for c in found if calls[c[1]] == 1]
            scores = resolve(target, output).scores
            grads: tuple[Tensor | None, ...] = ()
            if usable and scores.requires_grad:
                grads = torch.autograd.grad(scores.sum(), [c[2] for c in usable], allow_unused=True)
    finally:
        handles.remove()
    # in a model with token layers, the maps before the first one are its patch embedding
    first_tokens = next((i for i, c in enumerate(usable) if c[3].kind == "tokens"), 0)
    for i in range(len(grads) - 1, first_tokens - 1, -1):
        g = grads[i]
        if g is not None and bool(usable[i][3].to_map(g).ne(0).any()):
            return usable[i][0], True
    if any(g is not None for g in grads):
        # the score's gradient is exactly zero at every map (a zero-initialised head, as
        # torchvision's untrained ViT): nothing to choose by, so the last map, not remembered
        # (the call's all-zero-map warning says why the map is empty)
        return usable[-1][0], False
    shared = sorted({c[0] for c in found if calls[c[1]] > 1})
    extra = (
        f" (modules that ran several times did: {', '.join(shared)}; pass layer= and call=)"
        if shared
        else ""
    )
    raise LayerError(
        f"could not find a default CAM layer in {type(model).__name__}: no submodule that runs "
        "once returned a feature map (B, C, h, w), tokens (B, N, C) or channels-last "
        f"(B, h, w, C) with h * w > 1 on which the target score depends{extra}. Pass layer= "
        "(and reshape= if its output is no such map)"
    )


#: default layers found so far: model (weakly referenced) -> {(structure, input shape): name}.
_DEFAULT_LAYERS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, str]] = (
    weakref.WeakKeyDictionary()
)


def _memo_key(model: nn.Module, inputs: Tensor) -> tuple:
    """What the default layer depends on: the module tree, the mode, the input's shape.

    One flat tuple from one iterative walk (every module's identity and mode, and the names
    of its children), since it runs on every call: ``named_modules()`` would build every
    dotted name.
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


def _default_name(model: nn.Module, inputs: Tensor, target: AnyTarget) -> str:
    """The remembered default layer for this model and input shape, found first if needed."""
    key = _memo_key(model, inputs)
    name = _DEFAULT_LAYERS.get(model, {}).get(key)
    if name is None:
        name, remember = _discover(model, inputs, target)
        if remember:
            _DEFAULT_LAYERS.setdefault(model, {})[key] = name
    return name


def default_layer(model: nn.Module, inputs: Tensor, target: Target = None) -> str:
    """The dotted name of the layer a CAM would use for ``inputs`` with ``layer=None``.

    Runs the model once forward and once backward to the first map (eval mode, state
    restored); see the module docstring for the rule. ``target`` is the score whose dependence
    on the candidate maps is checked (``None``: the predicted class).

    Raises:
        LayerError: no suitable layer.
    """
    x = check_images(inputs)
    with preserved_state(model, freeze=False):
        x = x.detach().to(model_device(model))
        return _default_name(model, x, ResolvedTarget.of(target, x.shape[0], x.device))


# --------------------------------------------------------------------------------------------
# Capture: one forward (and one backward to the layer)
# --------------------------------------------------------------------------------------------

#: ``t -> (B, C, h, w)``: how a layer's output (and its gradient) is read as a map.
Reshape = Callable[[Tensor], Tensor]


@dataclass
class Capture:
    r"""The layer's activation (and gradient) for a batch, with the model's output.

    Attributes:
        inputs: the inputs the model ran on.
        activation: ``(B, K, h, w)`` the layer's output read as a map (prefix tokens dropped,
            channels first), detached, in float32 (float64 for a float64 model).
        gradient: ``(B, K, h, w)`` :math:`\partial y_b / \partial A_b` read the same way, in
            the same dtype, or ``None``.
        output: the model output, detached.
        scores: ``(B,)`` the explained scores, detached.
        indices: ``(B,)`` target classes or ``None`` for a callable target.
        layer: dotted name of the layer used.
        layout: how the layer's output was read (``None`` with ``reshape=``).
        model: the network the capture ran on (the model, or its ``fast=True`` copy), for
            methods that run it again (Score-CAM).
    """

    inputs: Tensor
    activation: Tensor
    gradient: Tensor | None
    output: Tensor
    scores: Tensor
    indices: Tensor | None
    layer: str
    layout: TokenLayout | None = None
    model: nn.Module | None = None

    @property
    def grad(self) -> Tensor:
        """The gradient, for gradient-based methods (raises if it was not computed)."""
        if self.gradient is None:
            raise RuntimeError("this capture was made without gradients (uses_gradients=False)")
        return self.gradient


def _reshaped(reshape: Reshape, t: Tensor, name: str, batch: int) -> Tensor:
    """``reshape(t)``, checked to be a float ``(B, C, h, w)`` map."""
    out = reshape(t)
    if not (
        isinstance(out, Tensor)
        and out.dim() == 4
        and out.shape[0] == batch
        and out.is_floating_point()
    ):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise LayerError(
            f"reshape= turned the output {tuple(t.shape)} of layer {name!r} into {shape}; it "
            f"must return a float (B, C, h, w) map with the batch size {batch}"
        )
    return out


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


def _resolve_scores(target: AnyTarget, output: Tensor) -> tuple[Tensor, Tensor | None]:
    resolved = resolve(target, output)
    return resolved.scores, resolved.indices


class CAMMethod(AttributionMethod):
    """Base class of the CAM family: layer resolution, capture, post-processing.

    Subclasses implement :meth:`cam`, turning a :class:`Capture` into a coarse ``(B, 1, h, w)``
    map (or override :meth:`compute`). The capture costs one forward pass plus, for
    gradient-based methods, one backward pass from the scores to the layer only
    (``torch.autograd.grad(scores.sum(), A)``: no input gradient). The forward pass runs
    without gradients up to the layer and with them after it, so nothing upstream records a
    graph and the parameters are left as they are (no per-call freezing, which would walk
    every parameter on every call for no saving: the graph starts at the layer anyway).

    Args:
        model: an image model mapping ``(B, C, H, W)`` to ``(B, num_classes)``.
        layer: module or dotted name; ``None`` finds the default layer: the last map the target
            score depends on (module docstring).
        call: which call of a module that runs several times in one forward pass (0-based);
            ``None`` refuses such modules with :class:`~flashtorch.errors.SharedModuleError`.
        relu: keep only the positive part of the coarse map.
        normalize: scale every map to ``[0, 1]`` (per image, after upsampling).
        interpolation: ``"bilinear"`` (default), ``"bicubic"`` or ``"nearest"``.
        reshape: a callable turning the layer's output - and, the same way, its gradient -
            into a ``(B, C, h, w)`` map (pytorch-grad-cam's ``reshape_transform``). ``None``
            reads the output by its layout: ``(B, C, h, w)``, tokens ``(B, N, C)`` (prefix
            tokens dropped, the patch grid from the model and the input size) or channels-last
            ``(B, h, w, C)`` (:mod:`flashtorch._tokens`); an output that reads as no map or as
            several raises :class:`~flashtorch.errors.LayerError` naming ``reshape=``.
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
        reshape: Reshape | None = None,
        eval_mode: bool = True,
        fast: bool = False,
        amp: bool = False,
    ) -> None:
        super().__init__(model, eval_mode=eval_mode, fast=fast, amp=amp)
        refuse_scripted(model, self.name)
        if reshape is not None and not callable(reshape):
            raise MethodError(
                f"reshape must be a callable t -> (B, C, h, w), got {type(reshape).__name__}"
            )
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
        #: ``t -> (B, C, h, w)`` applied to the layer's output and gradient, or ``None``.
        self.reshape = reshape
        #: dotted name of the layer used by the last call (``None`` before the first call): a
        #: record that each call writes and none reads (with threads, the latest call's).
        self.layer_name: str | None = None
        #: how the last call read that layer's output (``None`` with ``reshape=``).
        self.layer_layout: TokenLayout | None = None

    # -- capture -------------------------------------------------------------------------------

    def capture(self, net: nn.Module, inputs: Tensor, target: Target) -> Capture:
        """Run ``net`` once, recording the layer's activation (and gradient if needed).

        With ``layer=None`` and no remembered default for this model and input shape, the
        default is found first (:func:`default_layer`'s pass). Call inside the guarded state
        (:meth:`compute` is); ``inputs`` on the model's device.
        """
        grad = self.uses_gradients
        layer = self.layer if self.layer is not None else _default_name(net, inputs, target)
        with torch.enable_grad() if grad else torch.no_grad():
            with LayerRecorder(net, layer, self.call, leaf=True, start_grad=grad) as recorder:
                output = net(model_input(inputs))  # a copy: the model may edit its input
            activation = recorder.output
            layout = self._layout(net, recorder.name, activation, inputs)
            scores, indices = _resolve_scores(target, output)
            gradient = _gradient(scores, activation, recorder.name) if grad else None
        return self._packed(
            net, inputs, activation, gradient, output, scores, indices, recorder.name, layout
        )

    def _layout(self, net: nn.Module, name: str, output: Any, inputs: Tensor) -> TokenLayout | None:
        """How the layer's output reads as a map (``None`` with ``reshape=``); or LayerError."""
        if self.reshape is not None:
            return None
        if not isinstance(output, Tensor):
            raise LayerError(
                f"layer {name!r} returns {type(output).__name__}, not a tensor; pick another "
                "layer or pass reshape="
            )
        return infer_layout(
            output,
            inputs.shape[0],
            lambda: token_info(net),
            (inputs.shape[-2], inputs.shape[-1]),
            name,
            convention=True,
        )

    def _as_map(self, t: Tensor, layout: TokenLayout | None, name: str) -> Tensor:
        if layout is None:
            assert self.reshape is not None
            return _reshaped(self.reshape, t, name, t.shape[0])
        return layout.to_map(t)

    def _packed(
        self,
        net: nn.Module,
        inputs: Tensor,
        activation: Tensor,
        gradient: Tensor | None,
        output: Tensor,
        scores: Tensor,
        indices: Tensor | None,
        name: str,
        layout: TokenLayout | None,
    ) -> Capture:
        """The capture, with the activation and gradient read as ``(B, C, h, w)`` maps."""
        self.layer_name = name
        self.layer_layout = layout
        dtype = torch.promote_types(activation.dtype, torch.float32)  # float64 stays float64
        act = self._as_map(activation.detach(), layout, name).to(dtype)
        grad = None if gradient is None else self._as_map(gradient.detach(), layout, name).to(dtype)
        if (
            grad is not None
            and self.layer is not None
            and layout is not None
            and layout.kind == "tokens"
        ):
            self._warn_if_blind(net, grad, gradient, layout, name, inputs)
        return Capture(
            inputs=inputs,
            activation=act,
            gradient=grad,
            output=detach_output(explained_output(output)),
            scores=scores.detach(),
            indices=indices,
            layer=name,
            layout=layout,
            model=net,
        )

    def _warn_if_blind(
        self,
        net: nn.Module,
        grid_grad: Tensor,
        raw: Tensor,
        layout: TokenLayout,
        name: str,
        inputs: Tensor,
    ) -> None:
        """Warn when no patch token of a token layer receives gradient (reads a device value)."""
        if not syncs_allowed() or bool(grid_grad.ne(0).any()):
            return
        reads_prefix = layout.prefix > 0 and bool(raw[:, : layout.prefix].ne(0).any())
        why = (
            "the classifier reads only the prefix (class) tokens after it"
            if reads_prefix
            else "the target score does not depend on it"
        )
        try:
            hint = f"; the default layer {_default_name(net, inputs, None)!r} works"
        except LayerError:  # pragma: no cover - nothing better to suggest
            hint = ""
        warnings.warn(
            f"{self.name}: the gradient at every patch token of layer {name!r} is exactly zero "
            f"({why}), so the map is empty. Pick an earlier layer, e.g. the last block's first "
            f"norm (layer=None finds one){hint}",
            UserWarning,
            stacklevel=4,
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

    def compute(self, net: nn.Module, inputs: Tensor, target: Target) -> MethodOutput:
        """Capture the layer, combine it into a coarse map, post-process."""
        cap = self.capture(net, inputs, target)
        coarse, extras = self.cam(cap, target)
        maps = self.finish(coarse, (inputs.shape[-2], inputs.shape[-1]))
        return MethodOutput(maps, cap.output, cap.indices, cap.scores, extras)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.model).__name__}, layer={self.layer!r})"


__all__ = [
    "INTERPOLATIONS",
    "Reshape",
    "CAMMethod",
    "Capture",
    "default_layer",
    "normalize_maps",
    "upsample",
]
