r"""Occlusion (Zeiler & Fergus 2014): how much the target score drops when a patch is hidden.

A window of ``h x w`` pixels (all channels) slides over the image with stride
``(s_h, s_w)``; at each position :math:`p` the patch is replaced by the ``fill`` and the drop of
the target score is recorded. Every pixel gets the mean drop over the windows that cover it:

.. math::

    A(i, j) = \frac{\sum_{p \ni (i, j)} \big(S_c(x) - S_c(x \odot (1 - m_p) + f \odot m_p)\big)}
                   {\#\{p : (i, j) \in p\}}

Window positions are ``0, s, 2s, ...`` up to the first one that reaches the far edge; a window
that sticks out is cut at the border (Captum's ``Occlusion``). Positive values mark evidence for
the class. "Visualizing and Understanding Convolutional Networks", ECCV 2014, arXiv:1311.2901.

The window spans all channels, so the map is one channel, ``(B, 1, H, W)``: Captum's
``Occlusion`` with ``sliding_window_shapes=(C, h, w)`` returns ``(B, C, H, W)`` whose channels
are all equal to it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .. import progress
from .._outputs import explained_output
from .._targets import Target
from ..attribution import AttributionMethod, MethodOutput, register
from ..errors import InputError, MethodError
from ._sampling import (
    broadcast_reference,
    check_internal_batch_size,
    check_option_float,
    chunk_size,
    chunks,
    clean_forward,
    explained_scores,
    gaussian_blur,
)

FILLS = ("mean", "blur")


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, bool):
        raise MethodError(f"{name} must be an int or (height, width), got {value!r}")
    if isinstance(value, int):
        value = (value, value)
    if (
        not isinstance(value, Sequence)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    ):
        raise MethodError(
            f"{name} must be a positive int or a (height, width) pair of positive ints, got "
            f"{value!r}"
        )
    return int(value[0]), int(value[1])


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Window starts on one axis: ``k * stride``, ``k = 0..ceil((size - window) / stride)``."""
    return [k * stride for k in range(math.ceil((size - window) / stride) + 1)]


@register
class Occlusion(AttributionMethod):
    r"""Occlusion sensitivity (Zeiler & Fergus 2014), batched over windows.

    .. math:: A(i, j) = \operatorname{mean}_{p \ni (i, j)}
        \big(S_c(x) - S_c(x \text{ with window } p \text{ filled})\big)

    All ``P x B`` occluded copies (``P`` windows) go through the model without gradients, in
    internal batches of ``internal_batch_size`` rows (peak memory = one internal batch); one more
    chunked forward of the clean batch fixes the target (default: predicted class) and
    :math:`S_c(x)`.

    Args:
        model: the classifier.
        window: window size, an int or ``(height, width)`` in pixels; spans all channels.
        stride: step between windows, an int or ``(height, width)`` (default: half the window,
            at least 1); must not exceed the window (pixels would never be occluded).
        fill: what replaces the patch: a number (in the model's normalised space; ``0`` is the
            dataset's mean colour for normalised inputs), ``"mean"`` (each image's per-channel
            mean), ``"blur"`` (the image blurred with ``blur_sigma``), or a tensor broadcastable
            to the inputs.
        internal_batch_size: rows per forward pass (default: the batch size, at least 32).
        blur_sigma: Gaussian standard deviation in pixels for ``fill="blur"``.
        eval_mode: run the model in eval mode during the call (restored afterwards).
        fast: run on the BatchNorm-folded copy of the model (see
            :class:`~flashtorch.attribution.AttributionMethod`).
        amp: run under ``torch.autocast``.

    Progress: each internal batch is reported to :func:`flashtorch.progress.report_to` as
    ``(rows done, rows, name)``; its callback may cancel the call between two batches.

    Example:
        >>> occ = Occlusion(model, window=32, stride=16)
        >>> occ(images, target=[1, 2]).maps.shape  # (B, 1, H, W)
    """

    name = "occlusion"
    single_channel = True
    freezes = False  # forward passes only

    def __init__(
        self,
        model: nn.Module,
        *,
        window: int | Sequence[int] = 16,
        stride: int | Sequence[int] | None = None,
        fill: float | str | Tensor = 0.0,
        internal_batch_size: int | None = None,
        blur_sigma: float = 10.0,
        eval_mode: bool = True,
        fast: bool = False,
        amp: bool = False,
    ) -> None:
        super().__init__(model, eval_mode=eval_mode, fast=fast, amp=amp)
        self.window = _pair(window, "window")
        if stride is None:
            self.stride = (max(1, self.window[0] // 2), max(1, self.window[1] // 2))
        else:
            self.stride = _pair(stride, "stride")
        if self.stride[0] > self.window[0] or self.stride[1] > self.window[1]:
            raise MethodError(
                f"stride {self.stride} is larger than the window {self.window}: some pixels "
                "would never be occluded; use stride <= window"
            )
        if isinstance(fill, str):
            if fill not in FILLS:
                raise MethodError(
                    f"unknown fill {fill!r}; use a number, a tensor, or one of {', '.join(FILLS)}"
                )
        elif isinstance(fill, bool) or not isinstance(fill, (int, float, Tensor)):
            raise MethodError(
                f"fill must be a number, a tensor, 'mean' or 'blur', got {type(fill).__name__}"
            )
        self.fill = fill
        self.internal_batch_size = check_internal_batch_size(internal_batch_size)
        self.blur_sigma = check_option_float(blur_sigma, "blur_sigma", positive=True)

    def fill_images(self, x: Tensor) -> Tensor:
        """The ``(B, C, H, W)`` images whose pixels replace the occluded patches."""
        if isinstance(self.fill, str):
            if self.fill == "mean":
                return x.mean((2, 3), keepdim=True).expand(x.shape).clone()
            return gaussian_blur(x, self.blur_sigma)
        return broadcast_reference(self.fill, x, "fill")

    def compute(self, net: nn.Module, inputs: Tensor, target: Target) -> MethodOutput:
        """Score every occluded copy in internal batches and average the drops per pixel."""
        x = inputs
        batch, _, height, width = x.shape
        (wh, ww), (sh, sw) = self.window, self.stride
        if wh > height or ww > width:
            raise InputError(
                f"occlusion window {self.window} is larger than the images "
                f"({height}, {width}); use a smaller window"
            )
        size = chunk_size(self.internal_batch_size, batch)
        # host values go to the device before the forward pass (a copy or a check after it
        # would wait for the GPU to finish it)
        fill = self.fill_images(x)
        tops = torch.tensor(window_starts(height, wh, sh), device=x.device)
        lefts = torch.tensor(window_starts(width, ww, sw), device=x.device)
        output = clean_forward(net, x, size)
        scores, indices = explained_scores(target, output)
        top = tops.repeat_interleave(len(lefts))  # window p = (p // n_w, p % n_w)
        left = lefts.repeat(len(tops))
        iy = torch.arange(height, device=x.device).view(1, 1, -1, 1)
        ix = torch.arange(width, device=x.device).view(1, 1, 1, -1)

        def masks(p: Tensor) -> Tensor:
            t, lf = top[p].view(-1, 1, 1, 1), left[p].view(-1, 1, 1, 1)
            return (iy >= t) & (iy < t + wh) & (ix >= lf) & (ix < lf + ww)

        windows = len(top)
        counts = torch.zeros(1, 1, height, width, dtype=x.dtype, device=x.device)
        for start, stop in chunks(windows, max(size, 1)):
            counts += masks(torch.arange(start, stop, device=x.device)).to(x.dtype).sum(0)

        total = torch.zeros(batch, 1, height, width, dtype=x.dtype, device=x.device)
        n_rows = windows * batch
        progress.report(0, n_rows, self.name)
        with torch.no_grad():
            for start, stop in chunks(n_rows, size):
                rows = torch.arange(start, stop, device=x.device)
                p, img = rows // batch, rows % batch
                m = masks(p)
                occluded = torch.where(m, fill[img], x[img])
                out = explained_output(net(occluded))
                if indices is None:
                    occ_scores, _ = explained_scores(target, out)
                else:
                    occ_scores = (
                        (out if out.dim() > 1 else out[:, None])
                        .gather(  # (B,): one logit
                            1, indices[img][:, None]
                        )
                        .squeeze(1)
                    )
                drop = (scores[img] - occ_scores.to(scores.dtype)).to(x.dtype)
                total.index_add_(0, img, drop.view(-1, 1, 1, 1) * m.to(x.dtype))
                progress.report(stop, n_rows, self.name)  # occluded copies scored
        return MethodOutput(total / counts, output, indices, scores)


__all__ = ["FILLS", "Occlusion", "window_starts"]
