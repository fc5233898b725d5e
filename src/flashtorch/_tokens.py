r"""Token layouts: how a layer's output lies on the image grid.

A CAM needs a feature map ``(B, C, h, w)``. Convolutional networks produce one; vision
transformers produce **tokens** ``(B, N, C)`` - ``p`` prefix tokens (a class token, DeiT's
distillation token, register tokens) followed by an ``h x w`` grid of patch tokens in row-major
order - and some models (timm's Swin, torchvision's Swin ``features``) keep maps
**channels-last** ``(B, h, w, C)``. :func:`infer_layout` tells which of the three a tensor is,
and :meth:`TokenLayout.to_map` turns it into ``(B, C, h, w)``.

What the model says comes first (:func:`token_info`): timm's ``num_prefix_tokens`` and
``output_fmt``, the prefix-token parameters of torchvision (``class_token``), Hugging Face
(``embeddings.cls_token``, ``distillation_token``, ``register_tokens``) and timm (``cls_token``,
``dist_token``, ``reg_token``). The grid then follows from the token count and the input size:
``(h, w)`` with ``h * w = N - p`` and ``h ~ H / s``, ``w ~ W / s`` for one stride ``s`` (floor or
ceiling, for padded patch embeddings), which also covers non-square inputs and timm's
``dynamic_img_size``. A reading that is not unique raises :class:`~flashtorch.errors.LayerError`
naming ``reshape=`` and the shapes seen: never a guess.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from .errors import LayerError

Kind = Literal["nchw", "tokens", "nhwc"]

#: names (last dotted component) of prefix-token parameters, shape ``(1, k, C)``.
_PREFIX_PARAMS = frozenset(
    {"cls_token", "class_token", "dist_token", "distillation_token", "reg_token", "register_tokens"}
)
#: most prefix tokens tried when the model does not say how many it has.
MAX_PREFIX = 8


@dataclass(frozen=True)
class TokenInfo:
    """What a model says about its tokens.

    Attributes:
        prefix: number of tokens before the patch grid, or ``None`` when the model does not say.
        channels_last: ``True`` when the model declares channels-last feature maps (timm's
            ``output_fmt == "NHWC"``, torchvision's Swin), else ``False``.
        source: where ``prefix`` came from, for messages.
    """

    prefix: int | None = None
    channels_last: bool = False
    source: str = "the token count"


def token_info(model: nn.Module) -> TokenInfo:
    """Read the prefix-token count and the feature layout a model declares (module docstring)."""
    fmt = getattr(model, "output_fmt", None)
    channels_last = str(getattr(fmt, "value", fmt)).upper() == "NHWC" or (
        type(model).__name__ == "SwinTransformer"
        and type(model).__module__.startswith("torchvision")
    )
    n = getattr(model, "num_prefix_tokens", None)
    if isinstance(n, int) and not isinstance(n, bool):
        return TokenInfo(n, channels_last, f"{type(model).__name__}.num_prefix_tokens")
    prefix = 0
    found = False
    for module in model.modules():  # no dotted names built: this runs on every CAM call
        for key, p in module._parameters.items():
            if key in _PREFIX_PARAMS and p is not None and p.dim() == 3 and p.shape[0] == 1:
                prefix += int(p.shape[1])
                found = True
    if found:
        names = [
            n
            for n, p in model.named_parameters()
            if n.rsplit(".", 1)[-1] in _PREFIX_PARAMS and p.dim() == 3 and p.shape[0] == 1
        ]
        return TokenInfo(prefix, channels_last, "parameters " + ", ".join(names))
    return TokenInfo(None, channels_last)


@dataclass(frozen=True)
class TokenLayout:
    """How a ``(B, ...)`` layer output lies on an ``h x w`` grid.

    Attributes:
        kind: ``"nchw"`` ``(B, C, h, w)``, ``"tokens"`` ``(B, prefix + h * w, C)`` or ``"nhwc"``
            ``(B, h, w, C)``.
        grid: ``(h, w)``.
        prefix: tokens before the grid (``"tokens"`` only).
    """

    kind: Kind
    grid: tuple[int, int]
    prefix: int = 0

    def to_map(self, t: Tensor) -> Tensor:
        """``t`` as a ``(B, C, h, w)`` map (a view where possible; prefix tokens dropped)."""
        if self.kind == "nchw":
            return t
        if self.kind == "nhwc":
            return t.permute(0, 3, 1, 2)
        h, w = self.grid
        patches = t[:, self.prefix : self.prefix + h * w]
        return patches.reshape(t.shape[0], h, w, t.shape[-1]).permute(0, 3, 1, 2)

    def describe(self) -> str:
        """A short human-readable form: ``tokens 1+14x14``, ``nhwc 7x7``, ``nchw 7x7``."""
        h, w = self.grid
        if self.kind == "tokens":
            return f"tokens {self.prefix}+{h}x{w}"
        return f"{self.kind} {h}x{w}"


def _fits(n: int, size: int, stride: float) -> bool:
    """Whether ``n`` cells of ``stride`` pixels cover ``size`` (floor or ceiling)."""
    return n in (math.floor(size / stride), math.ceil(size / stride))


def plausible_grid(h: int, w: int, input_hw: tuple[int, int]) -> bool:
    """Whether an ``h x w`` grid can tile an ``(H, W)`` input with one stride (real-valued).

    True when some stride ``s`` has ``h`` in ``[H/s - 1, H/s + 1]`` and ``w`` in
    ``[W/s - 1, W/s + 1]``: the aspect ratio matches up to one cell of rounding or padding.
    """
    if h < 1 or w < 1:
        return False
    H, W = input_hw
    lo = max(H / (h + 1), W / (w + 1))
    hi = min(H / (h - 1) if h > 1 else math.inf, W / (w - 1) if w > 1 else math.inf)
    return lo <= hi


def grids_for(count: int, input_hw: tuple[int, int]) -> list[tuple[int, int]]:
    """Every ``(h, w)`` with ``h * w == count`` and one integer stride tiling ``input_hw``."""
    H, W = input_hw
    found: list[tuple[int, int]] = []
    for s in range(1, max(H, W) + 1):
        for h in {math.floor(H / s), math.ceil(H / s)}:
            if h < 1 or count % h:
                continue
            w = count // h
            if _fits(w, W, s) and (h, w) not in found:
                found.append((h, w))
    return found


def token_grid(
    n_tokens: int, info: TokenInfo, input_hw: tuple[int, int]
) -> list[tuple[int, tuple[int, int]]]:
    """Every ``(prefix, (h, w))`` reading of ``n_tokens`` tokens for an input of ``input_hw``.

    With ``info.prefix`` known only that prefix is tried; otherwise ``0..MAX_PREFIX``.
    """
    prefixes = [info.prefix] if info.prefix is not None else range(MAX_PREFIX + 1)
    return [(p, g) for p in prefixes if n_tokens - p > 0 for g in grids_for(n_tokens - p, input_hw)]


def _ambiguous(name: str, shape: tuple[int, ...], readings: list[str]) -> LayerError:
    return LayerError(
        f"layer {name!r} returns {shape}, which reads as several grids ({'; '.join(readings)}); "
        "pass reshape= (a callable turning the layer's output into (B, C, h, w), as "
        "pytorch-grad-cam's reshape_transform) or choose another layer"
    )


def infer_layout(
    t: Tensor,
    batch: int,
    info: TokenInfo | Callable[[], TokenInfo],
    input_hw: tuple[int, int],
    name: str = "layer",
    *,
    convention: bool = False,
) -> TokenLayout:
    """The layout of one layer output, or a :class:`~flashtorch.errors.LayerError` saying why not.

    * 4-D ``(B, a, b, c)``: ``nchw`` when ``(b, c)`` is a plausible grid, ``nhwc`` when
      ``(a, b)`` is. When both are, the model's declared format decides (``nhwc`` if it
      declares channels-last maps, else the PyTorch convention ``nchw``).
    * 3-D ``(B, N, C)``: ``tokens`` when exactly one ``(prefix, grid)`` fits ``N``.
    * anything else (or a wrong batch size, a non-float tensor): not a map.

    With ``convention=True`` (a layer the user chose), a 4-D output that is no plausible grid of
    either kind reads as ``nchw`` - PyTorch's convention, e.g. a CNN that resizes its input
    internally - unless the model declares tokens or channels-last maps, where such a tensor is
    a per-head attention tensor ``(B, heads, N, d)`` rather than a map.

    Args:
        t: the layer's output.
        batch: the input's batch size.
        info: :func:`token_info` of the model, or a callable returning it (called only when
            the shapes alone do not decide: 3-D outputs, 4-D outputs with two or no readings).
        input_hw: the input's ``(H, W)``.
        name: the layer's name, for messages.
        convention: read implausible 4-D outputs of token-less models as ``nchw`` (above).

    Raises:
        LayerError: not a map, or more than one reading (the message names ``reshape=``).
    """
    shape = tuple(t.shape)
    if not t.is_floating_point():
        raise LayerError(f"layer {name!r} returns a {t.dtype} tensor; a CAM needs a float map")
    if t.dim() not in (3, 4) or shape[0] != batch:
        raise LayerError(
            f"layer {name!r} returns {shape}; a CAM needs a feature map with the batch size "
            f"{batch}: (B, C, h, w), tokens (B, N, C) or channels-last (B, h, w, C). Pick a "
            "layer before the global pooling, or pass reshape="
        )
    if t.dim() == 4:
        nchw = plausible_grid(shape[2], shape[3], input_hw)
        nhwc = plausible_grid(shape[1], shape[2], input_hw)
        if nchw != nhwc:
            return TokenLayout(
                *(("nchw", (shape[2], shape[3])) if nchw else ("nhwc", (shape[1], shape[2])))
            )
        info = info() if callable(info) else info
        if nchw and nhwc:
            if info.channels_last:
                return TokenLayout("nhwc", (shape[1], shape[2]))
            return TokenLayout("nchw", (shape[2], shape[3]))
        if convention and info.prefix is None and not info.channels_last:
            return TokenLayout("nchw", (shape[2], shape[3]))
        raise LayerError(
            f"layer {name!r} returns {shape}, which is neither a (B, C, h, w) nor a "
            f"(B, h, w, C) grid of a {input_hw[0]}x{input_hw[1]} input (per-head attention "
            "tensors are not maps); pick a token or feature-map layer, or pass reshape="
        )
    info = info() if callable(info) else info
    readings = token_grid(shape[1], info, input_hw)
    if len(readings) == 1:
        prefix, grid = readings[0]
        return TokenLayout("tokens", grid, prefix)
    if not readings:
        said = (
            f"{info.prefix} prefix tokens (from {info.source})"
            if info.prefix is not None
            else f"0-{MAX_PREFIX} prefix tokens"
        )
        raise LayerError(
            f"layer {name!r} returns {shape}: {shape[1]} tokens do not make a grid of a "
            f"{input_hw[0]}x{input_hw[1]} input with {said}; pass reshape="
        )
    raise _ambiguous(name, shape, [f"{p} prefix + {h}x{w}" for p, (h, w) in readings])


def try_layout(
    t: object, batch: int, info: TokenInfo | Callable[[], TokenInfo], input_hw: tuple[int, int]
) -> TokenLayout | None:
    """:func:`infer_layout`, or ``None`` where it would raise (for default-layer discovery)."""
    if not isinstance(t, Tensor):
        return None
    try:
        return infer_layout(t, batch, info, input_hw)
    except LayerError:
        return None


def attention_internals(model: nn.Module) -> set[int]:
    """Ids of the attention submodules (class name ending in ``Attention``) and all inside them.

    Their outputs are queries, keys, values, per-head tensors or the attention's own output,
    not the token stream a CAM reads (timm ``Attention``/``WindowAttention``, torchvision
    ``nn.MultiheadAttention``, Hugging Face ``ViTAttention``/``ViTSelfAttention``...). The root
    module is never counted.
    """
    skip: set[int] = set()
    for name, module in model.named_modules():
        if name and id(module) not in skip and type(module).__name__.endswith("Attention"):
            skip.update(id(m) for m in module.modules())
    return skip


__all__ = [
    "MAX_PREFIX",
    "TokenInfo",
    "TokenLayout",
    "attention_internals",
    "grids_for",
    "infer_layout",
    "plausible_grid",
    "token_grid",
    "token_info",
    "try_layout",
]
