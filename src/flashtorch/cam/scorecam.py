r"""Score-CAM (Wang et al. 2020).

"Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural Networks", CVPR
Workshops 2020, arXiv:1910.01279. Gradient-free: every channel :math:`A_k` of the layer,
upsampled to the input size and min-max normalised, masks the input; the model's target score
on the masked input says how much the channel matters (Algorithm 1 of the paper):

.. math::

    H_k = s\big(\mathrm{Up}(A_k)\big), \quad
    s(M) = \frac{M - \min M}{\max M - \min M + 10^{-8}}, \qquad
    S_k = y(x \odot H_k), \qquad
    w = \mathrm{softmax}_k(S), \qquad
    L = \mathrm{ReLU}\Big(\sum_k w_k A_k\Big)

(The paper subtracts the baseline score :math:`y(x_b)` from :math:`S_k`; a constant shift
does not change the softmax.) Cost: one forward pass plus :math:`B \cdot K` forward passes on
masked inputs, run ``internal_batch_size`` at a time; masks are made batch by batch, so peak
memory is that of one internal batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import progress
from .._targets import AnyTarget, Target, logits_of, resolve
from .._validate import check_positive_int
from ..attribution import register
from ..errors import InputError, MethodError
from .base import CAMMethod, Capture, Reshape
from .gradcam import weighted_sum

ScoreFn = Callable[[Tensor, Tensor], Tensor]


def score_function(indices: Tensor | None, target: AnyTarget) -> ScoreFn:
    """``f(output, rows) -> (n,)``: the explained score of masked copies of images ``rows``.

    Class targets pick ``output[i, indices[rows[i]]]``; a callable target is applied to the
    masked outputs as they are (it must work row by row, whatever the batch size).
    """
    if indices is not None:
        idx = indices

        def by_index(output: Tensor, rows: Tensor) -> Tensor:
            logits = logits_of(output)
            logits = logits if logits.dim() > 1 else logits[:, None]  # (B,): one logit
            return logits.gather(1, idx[rows][:, None]).squeeze(1)

        return by_index

    def by_callable(output: Tensor, rows: Tensor) -> Tensor:
        return resolve(target, output).scores

    return by_callable


def scorecam_scores(
    model: nn.Module,
    inputs: Tensor,
    activation: Tensor,
    score: ScoreFn,
    internal_batch_size: int = 32,
    align_corners: bool = False,
) -> Tensor:
    r"""The scores :math:`S_{b,k} = y_b(x_b \odot H_{b,k})` of every masked input, ``(B, K)``.

    Masks are upsampled (bilinear), normalised and applied ``internal_batch_size`` at a time
    under ``torch.no_grad()``; only one internal batch of masked inputs exists at any moment.

    Args:
        model: the model (in the state the caller wants).
        inputs: ``(B, C, H, W)``.
        activation: ``(B, K, h, w)`` the layer's activation for ``inputs``.
        score: see :func:`score_function`.
        internal_batch_size: masked inputs per forward pass.
        align_corners: upsampling convention of the masks; ``True`` reproduces
            pytorch-grad-cam (``nn.UpsamplingBilinear2d``), ``False`` matches the CAM's own
            upsampling and the paper's code.
    """
    batch, channels = activation.shape[:2]
    size = (inputs.shape[-2], inputs.shape[-1])
    flat = activation.reshape(batch * channels, 1, *activation.shape[2:])
    total = batch * channels
    scores = torch.empty(total, dtype=activation.dtype, device=activation.device)
    progress.report(0, total, "scorecam")
    with torch.no_grad():
        for start in range(0, total, internal_batch_size):
            stop = min(start + internal_batch_size, total)
            up = F.interpolate(
                flat[start:stop], size=size, mode="bilinear", align_corners=align_corners
            )
            lo = up.amin(dim=(2, 3), keepdim=True)
            hi = up.amax(dim=(2, 3), keepdim=True)
            masks = (up - lo) / (hi - lo + 1e-8)
            rows = torch.arange(start, stop, device=activation.device) // channels
            out = model(inputs[rows] * masks.to(inputs.dtype))  # a float32 map, a half model
            s = score(out, rows)
            scores[start:stop] = s.to(scores.dtype)
            progress.report(stop, total, "scorecam")  # masked inputs scored so far
    return scores.view(batch, channels)


@register
class ScoreCAM(CAMMethod):
    r"""Score-CAM: channels weighted by the score of the input they mask (Wang et al. 2020).

    .. math::

        S_k = y\big(x \odot s(\mathrm{Up}(A_k))\big), \qquad
        w = \mathrm{softmax}_k(S), \qquad
        L = \mathrm{ReLU}\Big(\sum_k w_k A_k\Big)

    "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural Networks", CVPRW
    2020, arXiv:1910.01279 (:math:`s` is per-mask min-max normalisation). No gradients: one
    forward pass for the activation, then :math:`B \cdot K` masked forward passes,
    ``internal_batch_size`` at a time.

    Args:
        model: the model.
        layer: see :class:`~flashtorch.cam.base.CAMMethod` (also ``call``, ``relu``,
            ``normalize``, ``interpolation``, ``reshape``, ``eval_mode``, ``fast``, ``amp``).
        internal_batch_size: masked inputs per forward pass; peak memory is that of one such
            batch.
        mask_align_corners: upsampling convention of the masks (``False``: as the CAM's own
            upsampling and the paper's code; ``True``: as pytorch-grad-cam).

    A callable target is applied to batches of masked inputs of varying size and must work row
    by row. ``extras["weights"]`` holds :math:`w` and ``extras["channel_scores"]`` :math:`S`,
    both ``(B, K)``. Each internal batch is reported to :func:`flashtorch.progress.report_to`
    as ``(masked inputs scored, B * K, "scorecam")``; its callback may cancel the call.
    """

    name: ClassVar[str] = "scorecam"
    uses_gradients: ClassVar[bool] = False
    graph_safe = False  # K / internal_batch_size forward passes: GPU-bound, not launch-bound

    def __init__(
        self,
        model: nn.Module,
        layer: nn.Module | str | None = None,
        *,
        call: int | None = None,
        internal_batch_size: int = 32,
        mask_align_corners: bool = False,
        relu: bool = True,
        normalize: bool = True,
        interpolation: str = "bilinear",
        reshape: Reshape | None = None,
        eval_mode: bool = True,
        fast: bool = False,
        amp: bool = False,
    ) -> None:
        super().__init__(
            model,
            layer,
            call=call,
            relu=relu,
            normalize=normalize,
            interpolation=interpolation,
            reshape=reshape,
            eval_mode=eval_mode,
            fast=fast,
            amp=amp,
        )
        try:
            self.internal_batch_size = check_positive_int(
                internal_batch_size, "internal_batch_size"
            )
        except InputError as exc:
            raise MethodError(str(exc)) from None
        self.mask_align_corners = bool(mask_align_corners)

    def cam(self, capture: Capture, target: Target) -> tuple[Tensor, dict[str, Tensor]]:
        """Score every channel's mask, softmax over channels, weighted sum."""
        scores = scorecam_scores(
            capture.model if capture.model is not None else self.model,
            capture.inputs,
            capture.activation,
            score_function(capture.indices, target),
            self.internal_batch_size,
            self.mask_align_corners,
        )
        weights = torch.softmax(scores, dim=1)
        coarse = weighted_sum(capture.activation, weights)
        return coarse, {"weights": weights, "channel_scores": scores}


__all__ = ["ScoreCAM", "score_function", "scorecam_scores"]
