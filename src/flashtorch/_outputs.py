"""Model outputs that are not a plain tensor: what the methods explain and how rows are handled.

Models return scores in several forms: a ``(B, num_classes)`` tensor, a Hugging Face
``ImageClassifierOutput`` (``.logits``), a dict with ``"logits"``, or a tuple whose first
element is the logits (``return_dict=False``, torchvision's ``InceptionOutputs``). Every method
reads such an output through :func:`explained_output`: the logits
(:func:`flashtorch._targets.logits_of`) when the output has them - targets (indices, names and
callables) resolve on them - and otherwise the output as the model returned it, which only a
callable target can reduce to one score per sample (class targets raise a
:class:`~flashtorch.errors.TargetError`). The n-sample methods split and join such outputs by
rows with :func:`take_rows` and :func:`cat_outputs` (any nesting of tuples, lists, dicts and
Hugging Face ``ModelOutput`` objects, through ``torch.utils._pytree``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import Tensor

from ._targets import detach_output, explained_output
from .errors import TargetError


def output_batch(output: Any) -> int | None:
    """The batch size of an output: the leading size of its first tensor (``None``: none)."""
    if isinstance(output, Tensor):
        return int(output.shape[0]) if output.dim() else None
    for leaf in pytree.tree_leaves(output):
        if isinstance(leaf, Tensor) and leaf.dim():
            return int(leaf.shape[0])
    return None


def _rows_error(output: Any) -> TargetError:
    return TargetError(
        f"the model returned a {type(output).__name__} without logits whose rows flashtorch "
        "cannot split or join (it reads tensors, tuples, lists, dicts and Hugging Face "
        "ModelOutputs); wrap the model so that it returns a tensor, or raise "
        "internal_batch_size so that every pass fits in one batch"
    )


def take_rows(output: Any, rows: Tensor | slice) -> Any:
    """Rows ``rows`` (an index tensor or a slice) of every batched tensor in ``output``."""
    if isinstance(output, Tensor):
        if output.dim() == 0:
            raise TargetError(
                "the model returned a scalar (shape ()), not one output per image: attribution "
                "needs a batch dimension; return (B, num_classes) logits or (B,) scores from "
                "forward"
            )
        return output[rows]
    batch = output_batch(output)
    leaves, spec = pytree.tree_flatten(output)
    if batch is None or not any(isinstance(t, Tensor) for t in leaves):
        raise _rows_error(output)
    picked = [
        t[rows] if isinstance(t, Tensor) and t.dim() and t.shape[0] == batch else t for t in leaves
    ]
    return pytree.tree_unflatten(picked, spec)


def cat_outputs(outputs: Sequence[Any]) -> Any:
    """Join the outputs of consecutive row chunks along the batch axis.

    Tensors with a batch axis are concatenated; anything else is taken from the first chunk.

    Raises:
        TargetError: outputs of a type that cannot be joined (see :func:`take_rows`).
    """
    if len(outputs) == 1:
        return outputs[0]
    if all(isinstance(o, Tensor) for o in outputs):
        return torch.cat(list(outputs), 0)
    flat = [pytree.tree_flatten(o) for o in outputs]
    leaves0, spec = flat[0]
    if not any(isinstance(t, Tensor) for t in leaves0) or any(s != spec for _, s in flat):
        raise _rows_error(outputs[0])
    joined = []
    for i, leaf in enumerate(leaves0):
        if isinstance(leaf, Tensor) and leaf.dim():
            joined.append(torch.cat([leaves[i] for leaves, _ in flat], 0))
        else:
            joined.append(leaf)
    return pytree.tree_unflatten(joined, spec)


__all__ = ["cat_outputs", "detach_output", "explained_output", "output_batch", "take_rows"]
