"""Objectives: what a render maximises, composable with ``+``, ``-``, ``*``, ``/`` and ``sum``.

An :class:`Objective` maps one forward pass (a :class:`RenderContext`) to **one value per image**
``(B,)``; the render maximises their sum. Objectives add, subtract and scale like numbers, so
Lucid's idioms read as written::

    channel("blocks.3", 7) - 1e-2 * total_variation()
    channel("blocks.3", 0) - 1e2 * diversity("blocks.3")          # a batch of varied images
    sum(channel("blocks.3", c) for c in (1, 2))                     # two channels at once

A list of indices renders many units in one batched run: ``channel(layer, [0, 1, 2])`` applies
channel ``i`` to batch element ``i`` (the batch must have as many images as indices; ``render``
sizes its default image batch from the objective).

Layers are modules or dotted names (``"features.8"``); activations of shape ``(B, C, H, W)``
(conv) and ``(B, C)`` (linear) are accepted. Indices are checked on the first forward pass:
a channel out of range raises :class:`~flashtorch.errors.InputError` naming the valid range,
a class out of range raises :class:`~flashtorch.errors.TargetError`.

References: Erhan et al. 2009 ("Visualizing Higher-Layer Features of a Deep Network"),
Olah et al. 2017 ("Feature Visualization", Distill), Lucid's ``objectives.py``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ..errors import InputError, TargetError

LayerSpec = nn.Module | str
Index = int | Sequence[int]


class RenderContext(Protocol):
    """What an objective sees of one forward pass."""

    images: Tensor  #: the images ``(B, 3, H, W)`` in ``[0, 1]`` before transforms
    output: Tensor | None  #: the model's output (``None`` when the forward stopped early)

    def activation(self, layer: LayerSpec) -> Tensor:
        """The output of ``layer`` in this forward pass."""
        ...

    def layer_name(self, layer: LayerSpec) -> str:
        """The dotted name of ``layer``."""
        ...


@dataclass(frozen=True)
class Objective:
    """A differentiable function of one forward pass returning a value per image ``(B,)``.

    Args:
        fn: ``fn(ctx) -> Tensor (B,)`` (a scalar is broadcast to the batch).
        name: human-readable description (shown in progress bars and reprs).
        layers: layers whose outputs ``fn`` reads through ``ctx.activation``; the render
            records exactly these.
        needs_output: ``fn`` reads the model output (``ctx.output``); if every part of an
            objective is False the forward pass may stop after the last needed layer.
        batch: number of images the objective is written for (a list of indices), or None.
    """

    fn: Callable[[Any], Tensor]
    name: str = "objective"
    layers: tuple[LayerSpec, ...] = ()
    needs_output: bool = True
    batch: int | None = None

    def __call__(self, ctx: RenderContext) -> Tensor:
        """Evaluate on a forward pass: a tensor ``(B,)``."""
        value = self.fn(ctx)
        b = ctx.images.shape[0]
        if not isinstance(value, Tensor):
            value = torch.as_tensor(value, dtype=ctx.images.dtype, device=ctx.images.device)
        if value.dim() == 0:
            value = value.expand(b)
        if value.shape != (b,):
            raise InputError(
                f"objective {self.name!r} returned shape {tuple(value.shape)}; an objective "
                f"returns one value per image, i.e. shape ({b},)"
            )
        return value

    # ---- algebra ------------------------------------------------------------------------

    def _combine(self, other: Objective | float, op: Callable, sym: str) -> Objective:
        if isinstance(other, Objective):
            batch = _merge_batch(self.batch, other.batch)
            a, b = self, other

            def fn(ctx: Any) -> Tensor:
                return op(a(ctx), b(ctx))

            return Objective(
                fn,
                f"({a.name} {sym} {b.name})",
                _merge_layers(a.layers, b.layers),
                a.needs_output or b.needs_output,
                batch,
            )
        if isinstance(other, (int, float)) and not isinstance(other, bool):
            c = float(other)
            a = self

            def fn_const(ctx: Any) -> Tensor:
                return op(a(ctx), c)

            return Objective(fn_const, f"({a.name} {sym} {c:g})", a.layers, a.needs_output, a.batch)
        return NotImplemented

    def __add__(self, other: Objective | float) -> Objective:
        return self._combine(other, operator.add, "+")

    def __radd__(self, other: Objective | float) -> Objective:
        # ``sum([...])`` starts from 0.
        if isinstance(other, (int, float)) and not isinstance(other, bool) and other == 0:
            return self
        return self._combine(other, operator.add, "+")

    def __sub__(self, other: Objective | float) -> Objective:
        return self._combine(other, operator.sub, "-")

    def __rsub__(self, other: float) -> Objective:
        return (-self)._combine(other, operator.add, "+")

    def __mul__(self, other: Objective | float) -> Objective:
        return self._combine(other, operator.mul, "*")

    def __rmul__(self, other: float) -> Objective:
        if isinstance(other, (int, float)) and not isinstance(other, bool):
            c = float(other)
            a = self
            return Objective(
                lambda ctx: c * a(ctx), f"{c:g} * {a.name}", a.layers, a.needs_output, a.batch
            )
        return NotImplemented

    def __truediv__(self, other: float) -> Objective:
        if isinstance(other, (int, float)) and not isinstance(other, bool):
            if other == 0:
                raise InputError("cannot divide an objective by 0")
            return self._combine(other, operator.truediv, "/")
        return NotImplemented

    def __neg__(self) -> Objective:
        a = self
        return Objective(lambda ctx: -a(ctx), f"-{a.name}", a.layers, a.needs_output, a.batch)

    @staticmethod
    def sum(objectives: Iterable[Objective]) -> Objective:
        """Sum of objectives (same as the built-in ``sum``)."""
        items = list(objectives)
        if not items:
            raise InputError("Objective.sum needs at least one objective")
        total = items[0]
        for o in items[1:]:
            total = total + o
        return total

    def __repr__(self) -> str:
        return f"Objective({self.name})"


def _merge_layers(a: tuple[LayerSpec, ...], b: tuple[LayerSpec, ...]) -> tuple[LayerSpec, ...]:
    out = list(a)
    for x in b:
        if not any(x is y or (isinstance(x, str) and x == y) for y in out):
            out.append(x)
    return tuple(out)


def _merge_batch(a: int | None, b: int | None) -> int | None:
    if a is not None and b is not None and a != b:
        raise InputError(
            f"objectives written for {a} and {b} images cannot be combined; give lists of indices "
            "of the same length"
        )
    return a if a is not None else b


def as_objective(objective: Objective | Callable[[Any], Tensor]) -> Objective:
    """Wrap a plain callable ``fn(ctx) -> (B,)`` as an :class:`Objective` (``needs_output``)."""
    if isinstance(objective, Objective):
        return objective
    if callable(objective):
        name = getattr(objective, "__name__", "custom")
        return Objective(objective, name)
    raise InputError(
        f"objective must be an Objective (e.g. activmax.channel(layer, 0)) or a callable, "
        f"got {type(objective).__name__}"
    )


# ------------------------------------------------------------------------------------------
# Index handling
# ------------------------------------------------------------------------------------------


def _is_int(x: Any) -> bool:
    if isinstance(x, (bool, float, str, bytes)):
        return False
    if isinstance(x, Tensor):
        return x.dim() == 0 and not torch.is_floating_point(x) and x.dtype != torch.bool
    return isinstance(x, int) or hasattr(x, "__index__")  # numpy integers


def _indices(value: Index, what: str) -> tuple[list[int], int | None]:
    """Return (indices, batch) where batch is None for a single index."""
    if _is_int(value):
        return [int(value)], None  # type: ignore[arg-type]
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise InputError(f"{what} must be an int or a list of ints, got {value!r}")
    items = list(value)
    if not items or not all(_is_int(v) for v in items):
        raise InputError(f"{what} must be an int or a non-empty list of ints, got {value!r}")
    return [int(v) for v in items], len(items)


def _per_image(indices: list[int], batch: int | None, b: int, name: str) -> list[int]:
    if batch is None:
        return indices * b
    if batch != b:
        raise InputError(
            f"{name} lists {batch} indices for a batch of {b} images; render a batch of {batch} "
            f"(e.g. param=image(size, batch={batch})) or pass one index"
        )
    return indices


def _check_channels(indices: list[int], n: int, ctx: RenderContext, layer: LayerSpec) -> None:
    bad = [i for i in indices if not 0 <= i < n]
    if bad:
        raise InputError(
            f"channel {bad[0]} is out of range for layer {ctx.layer_name(layer)!r}, which has {n} "
            f"channels: valid indices are 0..{n - 1}"
        )


def _activation(ctx: RenderContext, layer: LayerSpec) -> Tensor:
    a = ctx.activation(layer)
    if a.dim() not in (2, 4):
        raise InputError(
            f"layer {ctx.layer_name(layer)!r} outputs shape {tuple(a.shape)}; objectives need "
            "(B, C, H, W) or (B, C) activations"
        )
    return a


def _layer_label(layer: LayerSpec) -> str:
    return layer if isinstance(layer, str) else type(layer).__name__


# ------------------------------------------------------------------------------------------
# Objectives
# ------------------------------------------------------------------------------------------


def channel(layer: LayerSpec, n: Index) -> Objective:
    r"""Mean activation of channel ``n`` of ``layer``: :math:`\frac{1}{HW}\sum_{x,y} a_{n,x,y}`.

    Args:
        layer: module or dotted name.
        n: channel index, or a list: channel ``n[i]`` for image ``i``.

    Example:
        >>> obj = channel("features.8", [0, 1, 2]) - 1e-2 * total_variation()
    """
    indices, batch = _indices(n, "channel")
    label = _layer_label(layer)

    def fn(ctx: RenderContext) -> Tensor:
        a = _activation(ctx, layer)
        _check_channels(indices, a.shape[1], ctx, layer)
        idx = _per_image(indices, batch, a.shape[0], f"channel({label!r}, ...)")
        sel = a[torch.arange(a.shape[0], device=a.device), idx]
        return sel.flatten(1).mean(1) if sel.dim() > 1 else sel

    return Objective(fn, f"channel({label}, {n})", (layer,), False, batch)


def neuron(layer: LayerSpec, n: Index, x: int | None = None, y: int | None = None) -> Objective:
    """Activation of channel ``n`` at one position ``(x, y)`` (default: the centre).

    Args:
        layer: module or dotted name with a ``(B, C, H, W)`` output.
        n: channel index or a list (one per image).
        x: column in the layer's output grid (default ``W // 2``).
        y: row in the layer's output grid (default ``H // 2``).
    """
    indices, batch = _indices(n, "neuron channel")
    label = _layer_label(layer)

    def fn(ctx: RenderContext) -> Tensor:
        a = _activation(ctx, layer)
        if a.dim() != 4:
            raise InputError(
                f"neuron needs a (B, C, H, W) layer; {ctx.layer_name(layer)!r} outputs "
                f"{tuple(a.shape)} (use channel() for linear layers)"
            )
        _check_channels(indices, a.shape[1], ctx, layer)
        h, w = a.shape[-2:]
        xx = w // 2 if x is None else x
        yy = h // 2 if y is None else y
        if not (0 <= xx < w and 0 <= yy < h):
            raise InputError(
                f"neuron position (x={xx}, y={yy}) is outside layer {ctx.layer_name(layer)!r}'s "
                f"{h}x{w} output grid: valid x 0..{w - 1}, y 0..{h - 1}"
            )
        idx = _per_image(indices, batch, a.shape[0], f"neuron({label!r}, ...)")
        return a[torch.arange(a.shape[0], device=a.device), idx, yy, xx]

    return Objective(fn, f"neuron({label}, {n}, x={x}, y={y})", (layer,), False, batch)


def layer(layer: LayerSpec) -> Objective:
    r"""DeepDream objective: mean squared activation of the whole layer, :math:`\overline{a^2}`.

    Maximising it amplifies whatever the layer already sees (Mordvintsev et al. 2015,
    "Inceptionism: Going Deeper into Neural Networks").
    """
    spec = layer
    label = _layer_label(spec)

    def fn(ctx: RenderContext) -> Tensor:
        a = ctx.activation(spec)
        return a.pow(2).flatten(1).mean(1)

    return Objective(fn, f"layer({label})", (spec,), False, None)


def class_logit(c: Index) -> Objective:
    """The model's output (logit) for class ``c`` (or ``c[i]`` for image ``i``).

    Raises:
        TargetError: on the first step, if ``c`` is outside ``0..num_classes-1``.
    """
    indices, batch = _indices(c, "class")

    def fn(ctx: RenderContext) -> Tensor:
        out = ctx.output
        if out is None or not isinstance(out, Tensor) or out.dim() != 2:
            shape = None if not isinstance(out, Tensor) else tuple(out.shape)
            raise InputError(
                f"class_logit needs a model that returns logits (B, num_classes); got {shape}"
            )
        k = out.shape[1]
        bad = [i for i in indices if not 0 <= i < k]
        if bad:
            raise TargetError(
                f"class {bad[0]} is out of range for a model with {k} outputs: valid 0..{k - 1}"
            )
        idx = _per_image(indices, batch, out.shape[0], "class_logit(...)")
        return out[torch.arange(out.shape[0], device=out.device), idx]

    return Objective(fn, f"class_logit({c})", (), True, batch)


def direction(layer: LayerSpec, vector: Tensor | Sequence[float]) -> Objective:
    r"""Activation along a direction ``v`` in channel space, averaged over positions.

    .. math:: \frac{1}{HW}\sum_{x,y} \langle a_{:,x,y},\, v / \lVert v\rVert \rangle

    Args:
        layer: module or dotted name.
        vector: ``(C,)`` (same for every image) or ``(B, C)`` (one per image).
    """
    v = torch.as_tensor(vector, dtype=torch.float32).detach()
    if v.dim() not in (1, 2) or v.numel() == 0:
        raise InputError(f"direction vector must be (C,) or (B, C), got shape {tuple(v.shape)}")
    if not torch.all(v.norm(dim=-1) > 0):
        raise InputError("direction vector must be non-zero")
    v = v / v.norm(dim=-1, keepdim=True)
    batch = v.shape[0] if v.dim() == 2 else None
    label = _layer_label(layer)

    def fn(ctx: RenderContext) -> Tensor:
        a = _activation(ctx, layer)
        if a.shape[1] != v.shape[-1]:
            raise InputError(
                f"direction has {v.shape[-1]} entries but layer {ctx.layer_name(layer)!r} has "
                f"{a.shape[1]} channels"
            )
        vv = v.to(a)
        if vv.dim() == 2 and vv.shape[0] != a.shape[0]:
            raise InputError(f"direction has {vv.shape[0]} rows for a batch of {a.shape[0]}")
        vv = vv.expand(a.shape[0], -1)
        if a.dim() == 4:
            return torch.einsum("bchw,bc->b", a, vv) / (a.shape[2] * a.shape[3])
        return (a * vv).sum(1)

    return Objective(fn, f"direction({label})", (layer,), False, batch)


def diversity(layer: LayerSpec) -> Objective:
    r"""Diversity across the batch: minus the similarity of each image's Gram matrix to the others.

    .. math::
        d_i = -\frac{1}{B}\sum_{j \ne i} \cos(G_i, G_j), \qquad
        G_b = A_b A_b^{\top},\; A_b \in \mathbb{R}^{C \times HW}

    so ``sum_i d_i`` is Lucid's ``diversity`` (Olah et al. 2017, "Feature Visualization",
    section "Diversity"). Add it with a weight: ``channel(l, 0) + 1e2 * diversity(l)``.

    Raises:
        InputError: the batch has fewer than 2 images.
    """
    label = _layer_label(layer)

    def fn(ctx: RenderContext) -> Tensor:
        a = ctx.activation(layer)
        b = a.shape[0]
        if b < 2:
            raise InputError("diversity compares images of a batch: render at least 2 images")
        flat = a.reshape(b, a.shape[1], -1)
        gram = torch.bmm(flat, flat.transpose(1, 2)).flatten(1)
        gram = gram / gram.norm(dim=1, keepdim=True).clamp_min(1e-10)
        sim = gram @ gram.T
        off = sim.sum(1) - sim.diagonal()
        return -off / b

    return Objective(fn, f"diversity({label})", (layer,), False, None)


def total_variation() -> Objective:
    r"""Total variation of each image (a penalty: subtract it).

    .. math:: \mathrm{TV}(x) = \overline{|x_{:,i+1,j} - x_{:,i,j}|} + \overline{|x_{:,i,j+1} -
        x_{:,i,j}|}

    (means over pixels and channels; Mahendran & Vedaldi 2015, "Understanding Deep Image
    Representations by Inverting Them").
    """

    def fn(ctx: RenderContext) -> Tensor:
        x = ctx.images
        dy = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
        dx = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
        return dx + dy

    return Objective(fn, "total_variation()", (), False, None)


def l2(constant: float = 0.5) -> Objective:
    r"""Mean squared distance of each image from ``constant`` (a penalty: subtract it).

    .. math:: \overline{(x - c)^2}
    """

    def fn(ctx: RenderContext) -> Tensor:
        return (ctx.images - constant).pow(2).flatten(1).mean(1)

    return Objective(fn, f"l2({constant:g})", (), False, None)


__all__ = [
    "Objective",
    "RenderContext",
    "as_objective",
    "channel",
    "class_logit",
    "direction",
    "diversity",
    "l2",
    "layer",
    "neuron",
    "total_variation",
]
