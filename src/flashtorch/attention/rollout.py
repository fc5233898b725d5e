r"""Attention rollout (Abnar & Zuidema 2020) and gradient-weighted rollout (Chefer et al. 2021).

Both explain a vision transformer through its self-attention probabilities
:math:`A_l \in \mathbb{R}^{B \times h \times N \times N}`, layer :math:`l = 1..L`, captured
whatever computes them (:mod:`flashtorch.attention.capture`: fused or unfused timm attention,
``nn.MultiheadAttention``, any ``F.scaled_dot_product_attention`` call, Hugging Face ``eager``
and ``sdpa``), with the model left exactly as it was.

**Attention rollout** ("Quantifying Attention Flow in Transformers", ACL 2020,
arXiv:2005.00928): the heads are fused (mean, or max / min with ``head_fusion``), the residual
connection is accounted for by the identity, rows are renormalised, and the layers are
multiplied:

.. math::

    \bar A_l = \operatorname{fuse}_h A_l, \qquad
    \hat A_l = \operatorname{rownorm}(\bar A_l + I), \qquad
    R = \hat A_L \hat A_{L-1} \cdots \hat A_1 .

(For the mean, :math:`\hat A_l = \tfrac12 \bar A_l + \tfrac12 I`, the paper's form.) It is
class-agnostic: the target only selects the reported scores.

**Gradient rollout** ("Generic Attention-model Explainability for Interpreting Bi-Modal and
Encoder-Decoder Transformers", ICCV 2021, arXiv:2103.15679, Eq. 5-6 for self-attention): with
:math:`y` the target score,

.. math::

    \bar A_l = \operatorname{mean}_h \Big( \big(\tfrac{\partial y}{\partial A_l} \odot
    A_l\big)^+ \Big), \qquad R_0 = I, \qquad R_l = R_{l-1} + \bar A_l R_{l-1},

i.e. :math:`R = (I + \bar A_L) \cdots (I + \bar A_1)`. It is target-specific.

**The map** is the row of :math:`R` of the explained token over the patch tokens, reshaped to
the patch grid, upsampled to the input and (``normalize=True``, as the CAMs) scaled to
``[0, 1]`` per image. Only that row is needed, so it is computed as vector-matrix products from
the last layer down, :math:`r^\top \leftarrow r^\top \hat A_l` for :math:`l = L..1` (exactly
:math:`e^\top R`, :math:`O(N^2)` per layer instead of the :math:`O(N^3)` matrix product).

**Which row** (``token=``): ``"cls"`` the class token (row 0: timm, torchvision and Hugging Face
ViTs put it first, before DeiT's distillation token and register tokens); ``"mean"`` the
average of the patch-token rows, which is exact for a model that classifies the mean of its
patch tokens (the rollout is linear in the row: the pooled token's row is the mean of the
rows); an integer, that token's row. ``"auto"`` (default) reads the model: timm's
``global_pool`` (``"token"`` -> ``"cls"``, ``"avg"`` -> ``"mean"``; any other pooling raises
:class:`~flashtorch.errors.MethodError` asking for ``token=``), otherwise ``"cls"`` when the
model has prefix tokens and ``"mean"`` when it has none. The number of prefix tokens and the
grid come from :func:`flashtorch._tokens.token_info` and :func:`~flashtorch._tokens.token_grid`
(DeiT's two prefix tokens and register tokens are dropped from the map).

**Windowed attention** (Swin: the attention batch is ``B x windows`` and ``N`` the window size,
and the token count changes at every patch merging) has no standard rollout - the windows shift
between layers and merging mixes tokens outside attention - so both methods raise
:class:`~flashtorch.errors.MethodError` naming the methods that do work there (the CAM family
and the gradient methods). The same for models whose attention layers see different token
counts.

Cost: ``attention_rollout`` one forward pass without gradients; ``gradient_rollout`` one
forward pass and one backward pass from the score to the attention probabilities (none to the
input or the parameters). Attention runs explicitly (unfused) during the call: fused
attention never materialises :math:`A`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from .._guards import model_input
from .._targets import Target, resolve
from .._tokens import token_grid, token_info
from ..attribution import AttributionMethod, MethodOutput, register
from ..cam.base import INTERPOLATIONS, normalize_maps, upsample
from ..errors import MethodError, TargetError
from .capture import AttentionCapture, AttentionRecord

HEAD_FUSIONS = ("mean", "max", "min")
TOKENS = ("auto", "cls", "mean")


# --------------------------------------------------------------------------------------------
# Functional core
# --------------------------------------------------------------------------------------------


def fuse_heads(attention: Tensor, how: str = "mean") -> Tensor:
    """``(B, h, N, N) -> (B, N, N)``: the mean, max or min over the heads."""
    if how == "mean":
        return attention.mean(dim=1)
    if how == "max":
        return attention.amax(dim=1)
    if how == "min":
        return attention.amin(dim=1)
    raise MethodError(f"head_fusion must be one of {', '.join(HEAD_FUSIONS)}, got {how!r}")


def discard_lowest(fused: Tensor, ratio: float) -> Tensor:
    """Zero the smallest ``floor(ratio * N^2)`` entries of every image's ``(N, N)`` matrix.

    As Gildenblat's ``vit-explain``, which introduced the option, the class token's attention to
    itself (entry ``(0, 0)``) is always kept. ``ratio == 0`` returns ``fused`` unchanged.
    """
    n = fused.shape[-1]
    k = int(n * n * ratio)
    if k <= 0:
        return fused
    flat = fused.flatten(1).clone()
    idx = flat.topk(k, dim=1, largest=False).indices
    keep = flat[:, 0].clone()
    flat.scatter_(1, idx, 0.0)
    flat[:, 0] = keep
    return flat.view_as(fused)


def _exact(t: Tensor) -> Tensor:
    """``t`` in float32, or float64 if it is (reduced-precision autocast results upcast)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _vecmat(row: Tensor, matrix: Tensor) -> Tensor:
    """``(B, N) x (B, N, N) -> (B, N)``: ``row_b^T M_b``."""
    return torch.bmm(row.unsqueeze(1), matrix).squeeze(1)


def attention_rollout_row(
    attentions: list[Tensor],
    start: Tensor,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
) -> Tensor:
    r"""The row :math:`s^\top \hat A_L \cdots \hat A_1` of attention rollout (module docstring).

    Args:
        attentions: per layer, in execution order, ``(B, h, N, N)`` probabilities.
        start: ``(B, N)`` the row vector :math:`s` (a one-hot class token, or the mean of the
            patch tokens).
        head_fusion: ``"mean"``, ``"max"`` or ``"min"`` over the heads.
        discard_ratio: fraction of each fused matrix's smallest entries set to zero before the
            identity is added (:func:`discard_lowest`).

    Returns:
        ``(B, N)``.
    """
    row = start
    for attention in reversed(attentions):
        fused = discard_lowest(fuse_heads(attention, head_fusion), discard_ratio)
        # s^T rownorm(F + I) = (s / d)^T F + (s / d)^T, d = rowsum(F) + 1: no identity built
        scaled = row / (fused.sum(dim=-1) + 1.0)
        row = _vecmat(scaled, fused) + scaled
    return row


def gradient_rollout_row(
    attentions: list[Tensor], gradients: list[Tensor], start: Tensor
) -> Tensor:
    r"""The row :math:`s^\top (I + \bar A_L) \cdots (I + \bar A_1)` of gradient rollout.

    :math:`\bar A_l = \operatorname{mean}_h((\partial y / \partial A_l \odot A_l)^+)` (Chefer et
    al. 2021, Eq. 5-6).

    Args:
        attentions: per layer, in execution order, ``(B, h, N, N)`` probabilities.
        gradients: :math:`\partial y / \partial A_l`, same shapes.
        start: ``(B, N)`` the row vector :math:`s`.

    Returns:
        ``(B, N)``.
    """
    row = start
    for attention, gradient in zip(reversed(attentions), reversed(gradients)):
        weighted = (gradient * attention).clamp_min(0).mean(dim=1)
        row = row + _vecmat(row, weighted)
    return row


# --------------------------------------------------------------------------------------------
# Capture checks and token reading
# --------------------------------------------------------------------------------------------

_OTHER_METHODS = (
    "gradcam (and the CAM family) or a gradient method (gradient, integrated_gradients, smoothgrad)"
)


def checked_attentions(
    records: list[AttentionRecord], batch: int, method: str, model: nn.Module
) -> list[Tensor]:
    """The records as ``(B, h, N, N)`` tensors.

    Raises:
        MethodError: rollout cannot use them (none found, windowed attention, token counts
            that change between layers); the message names methods that work.
    """
    if not records:
        raise MethodError(
            f"{method}: no self-attention ran in the forward pass of {type(model).__name__}; "
            "rollout needs a transformer whose attention goes through "
            "F.scaled_dot_product_attention, nn.MultiheadAttention or a softmax over (..., N, N) "
            f"scores. For a convolutional network use {_OTHER_METHODS}"
        )
    tensors = [r.as_heads(batch) for r in records]
    for r, t in zip(records, tensors):
        if t.shape[0] != batch:
            raise MethodError(
                f"{method}: {type(model).__name__} computes windowed attention (a {r.source} "
                f"over {tuple(t.shape)}: {t.shape[0]} attention maps per head for a batch of "
                f"{batch}, several windows per image, as in Swin). Rollout is defined for global "
                "self-attention over one token sequence per image; windows shift between layers "
                "and patch merging mixes tokens outside attention, so there is no standard "
                f"rollout here. Use {_OTHER_METHODS} for this model"
            )
    sizes = sorted({int(t.shape[-1]) for t in tensors})
    if len(sizes) > 1:
        raise MethodError(
            f"{method}: the attention layers of {type(model).__name__} see different token "
            f"counts ({', '.join(map(str, sizes))}); rollout multiplies N x N matrices through "
            "all layers and needs one token sequence (hierarchical or token-pruning "
            f"transformers are not supported). Use {_OTHER_METHODS} for this model"
        )
    return tensors


def _start_kind(model: nn.Module, token: str | int, prefix: int, method: str) -> str | int:
    if token != "auto":
        return token
    pool = getattr(model, "global_pool", None)
    if isinstance(pool, str):
        if pool == "token":
            return "cls"
        if pool == "avg":
            return "mean"
        raise MethodError(
            f"{method}: {type(model).__name__} pools its tokens with global_pool={pool!r}, "
            "which is not one token's row; pass token='cls' (the class token), token='mean' "
            "(the mean of the patch tokens) or a token index"
        )
    return "cls" if prefix > 0 else "mean"


def start_row(
    token: str | int, n_tokens: int, prefix: int, batch: int, like: Tensor, method: str
) -> Tensor:
    """The ``(B, N)`` row vector explained: one-hot (``"cls"``, an index) or the patch mean."""
    start = like.new_zeros(batch, n_tokens)
    if token == "mean":
        start[:, prefix:] = 1.0 / (n_tokens - prefix)
        return start
    index = 0 if token == "cls" else token
    if token == "cls" and prefix == 0:
        raise MethodError(
            f"{method}: the model has no class token (no prefix tokens before the patch grid); "
            "pass token='mean' (the mean of the patch tokens, exact for global average pooling) "
            "or token='auto'"
        )
    if not isinstance(index, int) or not -n_tokens <= index < n_tokens:
        raise MethodError(f"{method}: token index {token!r} is out of range for {n_tokens} tokens")
    start[:, index] = 1.0
    return start


def patch_grid(
    model: nn.Module, n_tokens: int, input_hw: tuple[int, int], method: str
) -> tuple[int, tuple[int, int]]:
    """``(prefix, (h, w))`` of ``n_tokens`` attention tokens for an input of ``input_hw``."""
    info = token_info(model)
    readings = token_grid(n_tokens, info, input_hw)
    if len(readings) == 1:
        return readings[0]
    said = (
        f"{info.prefix} prefix tokens (from {info.source})"
        if info.prefix is not None
        else "an unknown number of prefix tokens"
    )
    if not readings:
        raise MethodError(
            f"{method}: {n_tokens} attention tokens do not make a patch grid of a "
            f"{input_hw[0]}x{input_hw[1]} input with {said}"
        )
    options = "; ".join(f"{p} prefix + {h}x{w}" for p, (h, w) in readings)
    raise MethodError(
        f"{method}: {n_tokens} attention tokens read as several patch grids of a "
        f"{input_hw[0]}x{input_hw[1]} input ({options}); give the model a num_prefix_tokens "
        "attribute (as timm's models have) so that the grid is known"
    )


# --------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------


class RolloutMethod(AttributionMethod):
    """Shared options and post-processing of the rollout methods (module docstring).

    Args:
        model: a vision transformer mapping ``(B, C, H, W)`` images to scores.
        token: the row explained: ``"auto"``, ``"cls"``, ``"mean"`` or a token index.
        normalize: scale every map to ``[0, 1]`` (per image, after upsampling), as the CAMs.
        interpolation: ``"bilinear"`` (default), ``"bicubic"`` or ``"nearest"``.
        eval_mode: run the model in eval mode during the call (restored afterwards).
        fast: see :class:`~flashtorch.attribution.AttributionMethod`.
        amp: run under autocast; the rollout itself is computed in float32.

    Raises:
        MethodError: an invalid option; at call time, a model without global self-attention
            (no attention at all, windowed attention, changing token counts) or a token row
            that cannot be read.
    """

    single_channel: ClassVar[bool] = True
    #: the method reads the model's attention probabilities (transformers only).
    needs_attention: ClassVar[bool] = True

    def __init__(
        self,
        model: nn.Module,
        *,
        token: str | int = "auto",
        normalize: bool = True,
        interpolation: str = "bilinear",
        eval_mode: bool = True,
        fast: bool = False,
        amp: bool = False,
    ) -> None:
        super().__init__(model, eval_mode=eval_mode, fast=fast, amp=amp)
        if isinstance(token, bool) or not (token in TOKENS or isinstance(token, int)):
            raise MethodError(
                f"token must be one of {', '.join(TOKENS)} or a token index, got {token!r}"
            )
        if interpolation not in INTERPOLATIONS:
            raise MethodError(
                f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}"
            )
        self.token = token
        self.normalize = bool(normalize)
        self.interpolation = interpolation

    def _row_setup(
        self, net: nn.Module, tensors: list[Tensor], inputs: Tensor
    ) -> tuple[Tensor, int, tuple[int, int]]:
        """The start row, the prefix-token count and the patch grid."""
        batch, n_tokens = inputs.shape[0], int(tensors[0].shape[-1])
        prefix, grid = patch_grid(net, n_tokens, (inputs.shape[-2], inputs.shape[-1]), self.name)
        kind = _start_kind(net, self.token, prefix, self.name)
        start = start_row(kind, n_tokens, prefix, batch, _exact(tensors[0]), self.name)
        return start, prefix, grid

    def _finish(self, row: Tensor, prefix: int, grid: tuple[int, int], inputs: Tensor) -> Tensor:
        h, w = grid
        coarse = row[:, prefix : prefix + h * w].reshape(row.shape[0], 1, h, w)
        maps = upsample(coarse, (inputs.shape[-2], inputs.shape[-1]), self.interpolation)
        return normalize_maps(maps) if self.normalize else maps

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.model).__name__}, token={self.token!r})"


@register
class AttentionRollout(RolloutMethod):
    r"""Attention rollout: attention fused over heads, plus identity, multiplied through layers.

    .. math::

        \hat A_l = \operatorname{rownorm}\big(\operatorname{fuse}_h A_l + I\big), \qquad
        R = \hat A_L \cdots \hat A_1, \qquad \text{map} = R_{t,\,\text{patches}}

    Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020, arXiv:2005.00928.
    Class-agnostic (the target only selects the reported scores). One forward pass, no
    gradients. ``extras["row"]`` holds the whole row :math:`R_{t,:}`, ``(B, N)``, prefix tokens
    included.

    Args:
        model: a vision transformer.
        head_fusion: ``"mean"`` (the paper), ``"max"`` or ``"min"`` over the heads.
        discard_ratio: fraction of each layer's smallest fused attention weights set to zero
            (default 0, the paper; see :func:`discard_lowest`).
        token, normalize, interpolation, eval_mode, fast, amp: see :class:`RolloutMethod`.

    Example:
        >>> import torch, timm
        >>> from flashtorch import attribute
        >>> vit = timm.models.VisionTransformer(img_size=32, patch_size=8, embed_dim=32,
        ...                                     depth=2, num_heads=2, num_classes=5)
        >>> attribute(vit, torch.randn(2, 3, 32, 32), method="attention_rollout").maps.shape
        torch.Size([2, 1, 32, 32])
    """

    name: ClassVar[str] = "attention_rollout"
    freezes: ClassVar[bool] = False  # no backward pass

    def __init__(
        self,
        model: nn.Module,
        *,
        head_fusion: str = "mean",
        discard_ratio: float = 0.0,
        token: str | int = "auto",
        normalize: bool = True,
        interpolation: str = "bilinear",
        eval_mode: bool = True,
        fast: bool = False,
        amp: bool = False,
    ) -> None:
        super().__init__(
            model,
            token=token,
            normalize=normalize,
            interpolation=interpolation,
            eval_mode=eval_mode,
            fast=fast,
            amp=amp,
        )
        if head_fusion not in HEAD_FUSIONS:
            raise MethodError(
                f"head_fusion must be one of {', '.join(HEAD_FUSIONS)}, got {head_fusion!r}"
            )
        if isinstance(discard_ratio, bool) or not 0.0 <= float(discard_ratio) < 1.0:
            raise MethodError(f"discard_ratio must be in [0, 1), got {discard_ratio!r}")
        self.head_fusion = head_fusion
        self.discard_ratio = float(discard_ratio)

    def compute(self, net: nn.Module, inputs: Tensor, target: Target) -> MethodOutput:
        """One forward pass with the attention captured, then the rollout row."""
        with torch.no_grad():
            with AttentionCapture() as capture:
                output = net(inputs)
            resolved = resolve(target, output)
            tensors = checked_attentions(capture.records, inputs.shape[0], self.name, net)
            start, prefix, grid = self._row_setup(net, tensors, inputs)
            row = attention_rollout_row(
                [_exact(t) for t in tensors], start, self.head_fusion, self.discard_ratio
            )
        maps = self._finish(row, prefix, grid, inputs)
        return MethodOutput(maps, output, resolved.indices, resolved.scores, {"row": row})


@register
class GradientRollout(RolloutMethod):
    r"""Gradient-weighted attention rollout (Chefer, Gur & Wolf 2021).

    .. math::

        \bar A_l = \operatorname{mean}_h\Big(\big(\tfrac{\partial y}{\partial A_l} \odot
        A_l\big)^+\Big), \qquad R = (I + \bar A_L) \cdots (I + \bar A_1), \qquad
        \text{map} = R_{t,\,\text{patches}}

    "Generic Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder
    Transformers", ICCV 2021, arXiv:2103.15679 (Eq. 5-6, self-attention rules). Target-specific.
    One forward pass and one backward pass from the target score to the attention probabilities.
    ``extras["row"]`` holds the whole row :math:`R_{t,:}`, ``(B, N)``.

    Args:
        model: a vision transformer.
        token, normalize, interpolation, eval_mode, fast, amp: see :class:`RolloutMethod`.

    Example:
        >>> import torch, timm
        >>> from flashtorch import attribute
        >>> vit = timm.models.VisionTransformer(img_size=32, patch_size=8, embed_dim=32,
        ...                                     depth=2, num_heads=2, num_classes=5)
        >>> attribute(vit, torch.randn(2, 3, 32, 32), target=[1, 4],
        ...           method="gradient_rollout").maps.shape
        torch.Size([2, 1, 32, 32])
    """

    name: ClassVar[str] = "gradient_rollout"

    def compute(self, net: nn.Module, inputs: Tensor, target: Target) -> MethodOutput:
        """One forward pass with the attention captured, one backward pass to it, the row."""
        # frozen parameters (freezes=True) and an input that requires grad: the graph is the
        # model's own, the backward pass computes only what reaches the probabilities
        x = inputs.detach().requires_grad_(True)
        with torch.enable_grad():
            with AttentionCapture() as capture:
                output = net(model_input(x))  # a copy: the model may edit its input
            resolved = resolve(target, output)
            tensors = checked_attentions(capture.records, inputs.shape[0], self.name, net)
            scores = resolved.scores
            if not scores.requires_grad:
                raise TargetError(
                    f"{self.name}: the target score does not depend on the input; check the "
                    "target callable and that the model does not detach its input"
                )
            used = [r.tensor for r in capture.records]
            grads = torch.autograd.grad(scores.sum(), used, allow_unused=True)
        gradients = [
            torch.zeros_like(t) if g is None else r.view(g, inputs.shape[0])
            for r, t, g in zip(capture.records, tensors, grads)
        ]
        with torch.no_grad():
            start, prefix, grid = self._row_setup(net, tensors, inputs)
            row = gradient_rollout_row(
                [_exact(t.detach()) for t in tensors], [_exact(g) for g in gradients], start
            )
        maps = self._finish(row, prefix, grid, inputs)
        return MethodOutput(
            maps,
            output.detach() if isinstance(output, Tensor) else output,
            resolved.indices,
            scores.detach(),
            {"row": row},
        )


__all__ = [
    "HEAD_FUSIONS",
    "AttentionRollout",
    "GradientRollout",
    "RolloutMethod",
    "attention_rollout_row",
    "checked_attentions",
    "discard_lowest",
    "fuse_heads",
    "gradient_rollout_row",
    "patch_grid",
    "start_row",
]
