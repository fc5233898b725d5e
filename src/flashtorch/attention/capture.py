r"""Capture the attention probabilities a model computes, whatever computes them.

Attention rollout needs, per self-attention layer, the probabilities

.. math:: A = \operatorname{softmax}\big(Q K^\top s + M\big) \in \mathbb{R}^{B \times h \times N
    \times N}

(``s`` the scale, usually :math:`1/\sqrt{d}`, ``M`` an additive mask), and gradient rollout also
their gradient :math:`\partial y / \partial A`. Models compute ``A`` in several ways, and the
fused kernels never materialise it. :class:`AttentionCapture` is a
:class:`torch.overrides.TorchFunctionMode`, active for one forward pass and thread-local, that
sees every call and:

* replaces ``F.scaled_dot_product_attention`` (timm ``Attention`` with ``fused_attn`` on, Hugging
  Face ``sdpa``, any direct call) by the explicit computation ``softmax((Q s) K^T + M) V``
  (boolean and additive masks, ``is_causal``, ``enable_gqa``, ``dropout_p`` as the fused call)
  and records the ``A`` it computed - the tensor the rest of the model then uses, so
  ``torch.autograd.grad(y, A)`` is the gradient of the model's own computation;
* records the output of a softmax over the last axis of square ``(..., N, N)`` scores
  (``Tensor.softmax``, ``torch.softmax``, ``F.softmax``, ``nn.Softmax``: timm with
  ``fused_attn`` off, Hugging Face ``eager``);
* runs ``F.multi_head_attention_forward`` (``nn.MultiheadAttention``; torchvision's ViT calls it
  with ``need_weights=False``) with per-head weights computed explicitly and records them; the
  caller still gets what it asked for (``None`` weights, or the head average).
  ``nn.MultiheadAttention``'s fused inference fast path is not taken while a mode is active
  (PyTorch checks for one), so the explicit path always runs.

Nothing in the model is modified: no flag is toggled (timm ``fused_attn``, Hugging Face
``config._attn_implementation`` stay as they are), no hook is attached, and the mode is popped
when the ``with`` block ends, also by an exception. TorchFunctionMode stacks are per thread, so
another thread running the same model at the same time is not affected.

A fused kernel and the explicit computation agree up to float rounding, not bit for bit.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

_SDPA = {F.scaled_dot_product_attention, torch._C._nn.scaled_dot_product_attention}
_SOFTMAX = {Tensor.softmax, torch.softmax, F.softmax, torch.special.softmax}
_MHA = F.multi_head_attention_forward
_MHA_SIGNATURE = inspect.signature(F.multi_head_attention_forward)
_SDPA_ARGS = ("attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


@dataclass(frozen=True)
class AttentionRecord:
    """One attention computation seen during the forward pass.

    Attributes:
        tensor: the probabilities as the model uses them (upstream of its output, so they can be
            differentiated); ``(B, h, N, N)`` or, from ``nn.MultiheadAttention``, ``(B * h, N,
            N)``.
        heads: the number of heads; ``None`` for a 3-D softmax whose caller did not say.
        source: what computed it, for messages: ``"scaled_dot_product_attention"``,
            ``"softmax"`` or ``"multi_head_attention_forward"``.
    """

    tensor: Tensor
    heads: int | None
    source: str

    def as_heads(self, batch: int) -> Tensor:
        """``tensor`` (or a gradient of the same shape) viewed as ``(B', h, N, N)``.

        A 4-D tensor is returned as it is (``B'`` may differ from ``batch`` for windowed
        attention); a 3-D ``(B * h, N, N)`` one is split batch-major, as
        ``nn.MultiheadAttention`` lays it out (``heads`` from the record, else ``B * h /
        batch``).
        """
        return self.view(self.tensor, batch)

    def view(self, t: Tensor, batch: int) -> Tensor:
        """``t`` (the record's tensor or its gradient) as ``(B', h, N, N)`` (:meth:`as_heads`)."""
        if t.dim() == 4:
            return t
        heads = self.heads
        if heads is None:
            heads = t.shape[0] // batch if t.shape[0] % batch == 0 else t.shape[0]
        return t.reshape(t.shape[0] // heads, heads, t.shape[-2], t.shape[-1])


def explicit_sdpa(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> tuple[Tensor, Tensor]:
    r"""``F.scaled_dot_product_attention`` computed explicitly: ``(output, A)``.

    .. math:: A = \operatorname{softmax}\big((Q s) K^\top + M\big), \qquad O = \operatorname{
        dropout}(A) V

    with :math:`s = 1/\sqrt{d}` unless ``scale`` is given; a boolean mask keeps the ``True``
    entries (the others get :math:`-\infty`), a float mask is added; ``is_causal`` masks the
    upper triangle; ``enable_gqa`` repeats the key/value heads for grouped queries, as the fused
    call does. ``A`` is returned before dropout (dropout, when ``dropout_p > 0``, is applied to
    it on the way to ``O``).
    """
    s = 1.0 / math.sqrt(query.size(-1)) if scale is None else scale
    if enable_gqa and key.dim() >= 3 and key.size(-3) != query.size(-3):
        groups = query.size(-3) // key.size(-3)
        key = key.repeat_interleave(groups, dim=-3)
        value = value.repeat_interleave(groups, dim=-3)
    scores = (query * s) @ key.transpose(-2, -1)
    n_q, n_k = scores.shape[-2], scores.shape[-1]
    if is_causal:
        keep = torch.ones(n_q, n_k, dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    probs = scores.softmax(dim=-1)
    used = F.dropout(probs, p=dropout_p, training=True) if dropout_p > 0 else probs
    return used @ value, probs


def _softmax_dim(args: tuple, kwargs: dict) -> Any:
    if "dim" in kwargs:
        return kwargs["dim"]
    return args[1] if len(args) > 1 else None


def _is_square_scores(t: Any, dim: Any) -> bool:
    """A softmax over the last axis of ``(..., N, N)`` attention scores (3-D or 4-D)."""
    if not isinstance(t, Tensor) or not isinstance(dim, int) or t.dim() not in (3, 4):
        return False
    return dim in (-1, t.dim() - 1) and t.shape[-1] == t.shape[-2] and t.shape[-1] > 1


class AttentionCapture(TorchFunctionMode):
    """Record every self-attention probability tensor computed inside the ``with`` block.

    See the module docstring for what is seen and how. Use one instance per forward pass::

        with AttentionCapture() as capture:
            output = model(x)
        capture.records  # in execution order

    Only square attention (as many queries as keys) is recorded: cross-attention and
    attention-pooling heads (one learned query) are not self-attention layers of a rollout.
    """

    def __init__(self) -> None:
        super().__init__()
        #: the attention computations, in execution order.
        self.records: list[AttentionRecord] = []

    def __torch_function__(
        self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func in _SDPA:
            return self._sdpa(args, kwargs)
        if func is _MHA:
            return self._mha(args, kwargs)
        out = func(*args, **kwargs)
        if func in _SOFTMAX and _is_square_scores(out, _softmax_dim(args, kwargs)):
            self.records.append(
                AttentionRecord(out, out.shape[1] if out.dim() == 4 else None, "softmax")
            )
        return out

    def _sdpa(self, args: tuple, kwargs: dict) -> Tensor:
        query, key, value, *rest = args
        options = dict(zip(_SDPA_ARGS, rest))
        options.update(kwargs)
        out, probs = explicit_sdpa(query, key, value, **options)
        if probs.shape[-1] == probs.shape[-2] and probs.dim() in (3, 4):
            heads = probs.shape[1] if probs.dim() == 4 else None
            self.records.append(AttentionRecord(probs, heads, "scaled_dot_product_attention"))
        return out

    def _mha(self, args: tuple, kwargs: dict) -> tuple[Tensor, Tensor | None]:
        bound = _MHA_SIGNATURE.bind(*args, **kwargs)
        bound.apply_defaults()
        need = bound.arguments["need_weights"]
        average = bound.arguments["average_attn_weights"]
        bound.arguments["need_weights"] = True
        bound.arguments["average_attn_weights"] = False
        out, weights = _MHA(*bound.args, **bound.kwargs)
        # ``weights`` is a (B, h, L, S) view of the (B * h, L, S) probabilities the output was
        # computed from; the view is not upstream of the output, its base is
        used = weights._base if weights._base is not None else weights
        if weights.shape[-1] == weights.shape[-2]:
            self.records.append(
                AttentionRecord(
                    used, int(bound.arguments["num_heads"]), "multi_head_attention_forward"
                )
            )
        if not need:
            return out, None
        # (B, h, L, S), or (h, L, S) for an unbatched call: average over the heads axis
        return out, weights.mean(dim=-3) if average else weights


__all__ = ["AttentionCapture", "AttentionRecord", "explicit_sdpa"]
