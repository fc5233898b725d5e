r"""Deletion and insertion curves (Petsiuk, Das & Saenko 2018, "RISE", BMVC, arXiv:1806.07421).

A faithful map ranks pixels by how much the model needs them. Sort the pixels of each image by
decreasing attribution, then

* **deletion**: replace the top-ranked pixels by a baseline, a growing share at every step, and
  record the class score: it should collapse early - *lower* AUC is better;
* **insertion**: start from the baseline and put the top-ranked pixels back: the score should rise
  early - *higher* AUC is better.

With :math:`n_k` pixels changed after step :math:`k` of :math:`S` (``step`` pixels or a
fraction of the :math:`HW` pixels at a time), :math:`t_k = n_k / HW` and the score
:math:`s_k = p(c \mid x_k)` (softmax probability of the explained class, or its logit), the
area under the curve is the trapezoid rule

.. math:: \text{AUC} = \sum_{k=1}^{S} (t_k - t_{k-1}) \frac{s_k + s_{k-1}}{2}.

Baselines follow the paper's code: deletion replaces pixels by a constant (``0`` - the mean
colour of a normalised image), insertion starts from a Gaussian-blurred copy (11 px kernel,
sigma 5). Ties in a map are broken in raster order. The explained class is fixed on the
unperturbed input (default: the predicted class). Every perturbed image is scored once; the
``B x (S + 1)`` forward passes run in chunks of ``batch_size`` under ``torch.no_grad`` with the
model in eval mode (its state is restored afterwards).

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    >>> x, maps = torch.randn(3, 1, 2, 2), torch.rand(3, 1, 2, 2)
    >>> curve = deletion(model, x, maps, target=0, step=1, score="logit")
    >>> curve.scores.shape, curve.auc.shape
    (torch.Size([3, 5]), torch.Size([3]))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._surgery import model_device, preserved_state
from .._targets import ResolvedTarget, Target, explained_output
from .._validate import check_images
from ..errors import InputError
from ._maps import as_maps

Mode = Literal["deletion", "insertion"]
Score = Literal["probability", "logit"]


@dataclass
class Curve:
    """A deletion or insertion curve for each image of a batch.

    Attributes:
        mode: ``"deletion"`` or ``"insertion"``.
        fractions: ``(S + 1,)`` share of pixels changed at each step, from 0 to 1.
        scores: ``(B, S + 1)`` the explained score at each step.
        auc: ``(B,)`` trapezoidal area under each curve (over ``fractions`` in ``[0, 1]``).
        targets: ``(B,)`` explained classes, or ``None`` for a callable target.
    """

    mode: str
    fractions: Tensor
    scores: Tensor
    auc: Tensor
    targets: Tensor | None


def auc(scores: Tensor, fractions: Tensor) -> Tensor:
    """Trapezoidal area under ``scores`` ``(..., S + 1)`` over ``fractions`` ``(S + 1,)``."""
    dx = fractions[1:] - fractions[:-1]
    return ((scores[..., 1:] + scores[..., :-1]) * 0.5 * dx).sum(-1)


def gaussian_blur(inputs: Tensor, sigma: float = 5.0, kernel_size: int = 11) -> Tensor:
    """Blur ``(B, C, H, W)`` images with a separable Gaussian (reflect padding).

    The default (11 px kernel, sigma 5) is the insertion baseline of the RISE reference code.
    """
    if not (isinstance(kernel_size, int) and kernel_size >= 1 and kernel_size % 2 == 1):
        raise InputError(f"kernel_size must be a positive odd integer, got {kernel_size!r}")
    if not sigma > 0:
        raise InputError(f"sigma must be positive, got {sigma!r}")
    half = kernel_size // 2
    coords = torch.arange(kernel_size, dtype=inputs.dtype, device=inputs.device) - half
    kernel = torch.exp(-(coords**2) / (2 * float(sigma) ** 2))
    kernel = kernel / kernel.sum()
    c = inputs.shape[1]
    pad_mode = "reflect" if min(inputs.shape[-2:]) > half else "replicate"
    x = F.pad(inputs, (half, half, half, half), mode=pad_mode)
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _baseline(
    inputs: Tensor, baseline: Any, mode: Mode, fill: float, sigma: float, kernel_size: int
) -> Tensor:
    if baseline is None:
        baseline = "constant" if mode == "deletion" else "blur"
    if isinstance(baseline, str):
        if baseline == "blur":
            return gaussian_blur(inputs, sigma, kernel_size)
        if baseline == "constant":
            return torch.full_like(inputs, float(fill))
        raise InputError(
            f"baseline must be 'blur', 'constant', a number or a tensor, got {baseline!r}"
        )
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(inputs, float(baseline))
    if isinstance(baseline, Tensor):
        b = baseline.detach().to(device=inputs.device, dtype=inputs.dtype)
        try:
            return torch.broadcast_to(b, inputs.shape)
        except RuntimeError:
            raise InputError(
                f"a baseline tensor must broadcast to the inputs {tuple(inputs.shape)}, got "
                f"{tuple(baseline.shape)}"
            ) from None
    raise InputError(f"baseline must be 'blur', 'constant', a number or a tensor, got {baseline!r}")


def _pixels_per_step(step: int | float, pixels: int) -> int:
    if isinstance(step, bool):
        raise InputError(f"step must be a pixel count (int) or a fraction (float), got {step!r}")
    if isinstance(step, int):
        if step < 1:
            raise InputError(f"step in pixels must be at least 1, got {step}")
        return min(step, pixels)
    if isinstance(step, float) and 0 < step <= 1:
        return max(1, round(step * pixels))
    raise InputError(
        f"step must be an int >= 1 (pixels per step) or a float in (0, 1] (fraction of the "
        f"pixels per step), got {step!r}"
    )


def perturbation_curve(
    model: nn.Module,
    inputs: Tensor,
    maps: Any,
    target: Target = None,
    *,
    mode: Mode = "deletion",
    step: int | float = 0.02,
    baseline: str | float | Tensor | None = None,
    fill: float = 0.0,
    sigma: float = 5.0,
    kernel_size: int = 11,
    score: Score = "probability",
    reduce: str = "max_abs",
    batch_size: int = 64,
) -> Curve:
    """Deletion or insertion curve of ``maps`` for ``inputs`` (see the module docstring).

    Args:
        model: the classifier; left as it was found (eval mode during the call).
        inputs: ``(B, C, H, W)`` normalised images; never modified.
        maps: ``(B, [C,] h, w)`` maps or an ``Attribution`` (resized to ``H x W`` if needed;
            channels collapsed with ``reduce``). Higher values are removed/inserted first.
        target: the explained class (index, name, sequence, tensor), ``None`` for the predicted
            class, or a callable ``f(output) -> (B,)`` (then ``score`` is ignored: the callable
            sees the raw output).
        mode: ``"deletion"`` or ``"insertion"``.
        step: pixels changed per step - an ``int`` (pixels, the paper uses 224 at 224 px) or a
            ``float`` fraction of all pixels (default 2 %, 51 points).
        baseline: ``"constant"`` (``fill``), ``"blur"``, a number, or a tensor broadcastable to
            the inputs; ``None``: constant for deletion, blur for insertion (the paper's).
        fill: value of the ``"constant"`` baseline (0 = the dataset mean after normalisation).
        sigma: standard deviation of the blur baseline, pixels.
        kernel_size: side of the blur kernel, odd.
        score: ``"probability"`` (softmax, the paper's) or ``"logit"``.
        reduce: channel reduction for multi-channel maps.
        batch_size: perturbed images per forward pass.

    Returns:
        A :class:`Curve` on the inputs' device.

    Raises:
        InputError: bad shapes, step, baseline or batch size.
        TargetError: bad target.
    """
    if mode not in ("deletion", "insertion"):
        raise InputError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    if score not in ("probability", "logit"):
        raise InputError(f"score must be 'probability' or 'logit', got {score!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    x0 = check_images(inputs)
    home = x0.device
    batch, _, h, w = x0.shape
    m = as_maps(maps, reduce, (h, w))
    if m.shape[0] != batch:
        raise InputError(f"got {m.shape[0]} maps for {batch} images")
    pixels = h * w
    per_step = _pixels_per_step(step, pixels)
    steps = math.ceil(pixels / per_step)
    counts = torch.clamp(torch.arange(steps + 1) * per_step, max=pixels)
    fractions = counts.float() / pixels

    device = model_device(model)
    resolved = ResolvedTarget.of(target, batch, device)  # checked before any forward
    x = x0.detach().to(device)
    base = _baseline(x, baseline, mode, fill, sigma, kernel_size)
    order = m.to(device).flatten(1).argsort(dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(pixels, device=device).expand(batch, -1))
    ranks = ranks.view(batch, 1, h, w)
    counts_dev = counts.to(device)

    callable_target = resolved.fn is not None
    pairs = [(b, k) for b in range(batch) for k in range(steps + 1)]
    values = torch.empty(batch, steps + 1, dtype=torch.float32, device=device)
    with preserved_state(model, eval_mode=True), torch.no_grad():
        indices = None
        if not callable_target:
            indices = resolved.class_indices(model(x))
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            bi = torch.tensor([p[0] for p in chunk], device=device)
            ki = torch.tensor([p[1] for p in chunk], device=device)
            changed = ranks[bi] < counts_dev[ki].view(-1, 1, 1, 1)
            if mode == "deletion":
                xs = torch.where(changed, base[bi], x[bi])
            else:
                xs = torch.where(changed, x[bi], base[bi])
            out = explained_output(model(xs))  # the logits (or, without them, as it is)
            if callable_target:
                s = resolved.scores(out)
            else:
                if score == "probability":
                    out = out.softmax(1)
                assert indices is not None
                s = out.gather(1, indices[bi].view(-1, 1)).squeeze(1)
            values[bi, ki] = s.detach().float()
    values_home = values.to(home)
    fractions_home = fractions.to(home)
    return Curve(
        mode=mode,
        fractions=fractions_home,
        scores=values_home,
        auc=auc(values_home, fractions_home),
        targets=None if indices is None else indices.to(home),
    )


def deletion(
    model: nn.Module, inputs: Tensor, maps: Any, target: Target = None, **kwargs: Any
) -> Curve:
    """Deletion curve: remove the most important pixels first; lower AUC is better.

    Shorthand for :func:`perturbation_curve` with ``mode="deletion"`` (same keyword options).
    """
    return perturbation_curve(model, inputs, maps, target, mode="deletion", **kwargs)


def insertion(
    model: nn.Module, inputs: Tensor, maps: Any, target: Target = None, **kwargs: Any
) -> Curve:
    """Insertion curve: restore the most important pixels first; higher AUC is better.

    Shorthand for :func:`perturbation_curve` with ``mode="insertion"`` (same keyword options).
    """
    return perturbation_curve(model, inputs, maps, target, mode="insertion", **kwargs)


__all__ = ["Curve", "auc", "deletion", "gaussian_blur", "insertion", "perturbation_curve"]
