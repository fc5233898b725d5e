"""Targets: what scalar per sample an attribution explains.

A target is a class index (``int``), a class name (``str``, ImageNet models), a sequence of
either (one per sample, or one for all), an integer tensor, ``None`` (the predicted class), or
a callable ``f(output) -> (B,)`` that turns the model output into one score per sample
(pytorch-grad-cam's "model targets").

Targets resolve on the model's logits (:func:`logits_of`: a tensor, an output's ``.logits``, a
dict's ``"logits"``, a tuple's first element). A callable target receives those logits; an
output that holds none (a dict of other heads, say) is passed to it as the model returned it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch
import torch.utils._pytree as pytree
from torch import Tensor

from .errors import TargetError

Target = Union[
    None, int, str, Sequence[int | str], Tensor, Callable[[Tensor], Tensor], "CheckedIndices"
]


@dataclass(frozen=True)
class CheckedIndices:
    """Class indices prepared before the forward pass: a ``(B,)`` long tensor on the device.

    Made by :func:`prepare_target` (from an int, a sequence of ints or an integer tensor, with
    ``high`` their largest value, checked against the number of classes on the host once the
    output's shape is known) or from indices already checked (``high=None``). Resolving them
    reads no device value on the host: no synchronisation in the middle of a GPU call.
    """

    indices: Tensor
    high: int | None = None

    def rows(self, rows: Tensor) -> CheckedIndices:
        """The indices of some rows (``rows`` indexes the batch)."""
        return CheckedIndices(self.indices[rows], self.high)


@dataclass(frozen=True)
class Resolved:
    """Scores to differentiate and the class indices they came from.

    Attributes:
        scores: ``(B,)`` one scalar per sample, connected to the autograd graph.
        indices: ``(B,)`` long tensor of target classes, or ``None`` for a callable target.
    """

    scores: Tensor
    indices: Tensor | None


def logits_of(output: Any) -> Tensor:
    """The logits tensor inside a model's output.

    Accepted: a tensor; an object with a tensor attribute ``logits`` (Hugging Face
    ``ImageClassifierOutput`` and other ``ModelOutput`` classes); a mapping with a ``"logits"``
    entry; a tuple or list whose first element is a tensor (``return_dict=False`` outputs,
    torchvision's ``InceptionOutputs``). Targets (indices, names and callables) resolve on
    what this returns.

    Raises:
        TargetError: the output holds no recognisable logits tensor.
    """
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, Mapping) and isinstance(output.get("logits"), Tensor):
        return output["logits"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TargetError(
        f"the model returned a {type(output).__name__}, not a tensor of scores; flashtorch "
        "reads a tensor, an output's .logits, a dict's 'logits' or a tuple's first element. "
        "Wrap the model so that it returns a (B, num_classes) tensor"
    )


def explained_output(output: Any) -> Any:
    """What targets read: the logits of ``output``, else ``output`` itself.

    The logits are :func:`logits_of`'s; an output without them is returned unchanged, for a
    callable target to reduce to one score per sample.
    """
    if isinstance(output, Tensor):
        return output
    try:
        return logits_of(output)
    except TargetError:
        return output


def detach_output(output: Any) -> Any:
    """``output`` with every tensor in it detached (other values kept)."""
    if isinstance(output, Tensor):
        return output.detach()
    return pytree.tree_map(lambda t: t.detach() if isinstance(t, Tensor) else t, output)


def class_out_of_range(value: int, num_classes: int) -> TargetError:
    """The error for a class index outside ``0..num_classes - 1``."""
    return TargetError(
        f"target class {value} is out of range: the model has {num_classes} classes "
        f"(valid: 0..{num_classes - 1})"
    )


def _name_to_index(name: str, num_classes: int) -> int:
    if num_classes != 1000:
        raise TargetError(
            f"class name {name!r} needs an ImageNet model with 1000 outputs, but this model has "
            f"{num_classes}; pass the class index instead"
        )
    from .utils.imagenet import ImageNetIndex

    return int(ImageNetIndex()[name])


def target_indices(target: Target, output: Any) -> Tensor | None:
    """Turn a target specification into a ``(B,)`` long tensor of class indices.

    Args:
        target: see the module docstring. ``None`` picks ``output.argmax(1)``.
        output: the model output, ``(B, num_classes)``.

    Returns:
        Class indices on ``output.device``, or ``None`` when ``target`` is callable.

    Raises:
        TargetError: out-of-range index, unknown name, wrong length or dtype.
    """
    if callable(target) and not isinstance(target, Tensor):
        return None
    output = logits_of(output)
    if output.dim() != 2:
        raise TargetError(
            f"class targets need a model output of shape (B, num_classes), got "
            f"{tuple(output.shape)}; pass a callable target that returns one score per sample"
        )
    batch, num_classes = output.shape
    if target is None:
        return output.detach().argmax(1)
    if isinstance(target, CheckedIndices):
        if target.high is not None and target.high >= num_classes:
            raise class_out_of_range(target.high, num_classes)
        if target.indices.shape != (batch,):
            raise TargetError(
                f"got {target.indices.numel()} targets for a batch of {batch}; give one target "
                "for all samples or one per sample"
            )
        return target.indices.to(output.device)
    if isinstance(target, bool):
        raise TargetError(f"target must be a class index or name, got {target!r}")
    if isinstance(target, Tensor):
        if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
            raise TargetError(f"target tensor must hold integer class indices, got {target.dtype}")
        values = target.reshape(-1).tolist()
    elif isinstance(target, (int, str)):
        values = [target]
    elif isinstance(target, Sequence):
        values = list(target)
    else:
        try:  # numpy integers and the like
            values = [int(target)]  # type: ignore[call-overload]
        except (TypeError, ValueError):
            raise TargetError(
                f"target must be an int, a class name, a sequence, an integer tensor or a "
                f"callable, got {type(target).__name__}"
            ) from None
    indices: list[int] = []
    for v in values:
        if isinstance(v, str):
            indices.append(_name_to_index(v, num_classes))
            continue
        if isinstance(v, bool) or not hasattr(v, "__index__"):
            raise TargetError(f"target must be a class index or name, got {v!r}")
        i = int(v)
        if not 0 <= i < num_classes:
            raise class_out_of_range(i, num_classes)
        indices.append(i)
    if len(indices) == 1:
        indices = indices * batch
    if len(indices) != batch:
        raise TargetError(
            f"got {len(indices)} targets for a batch of {batch}; give one target for all "
            "samples or one per sample"
        )
    return torch.tensor(indices, dtype=torch.long, device=output.device)


def prepare_target(target: Target, batch: int, device: torch.device) -> Target:
    """Turn class indices into :class:`CheckedIndices` on ``device`` before the forward pass.

    An int, a sequence of ints or an integer tensor (one value, or one per sample, none
    negative) becomes a device tensor now, while the device is idle, instead of after the
    forward pass, where reading a CUDA tensor's values or copying a list to the GPU would wait
    for the forward pass to finish. Anything else (``None``, names, callables, invalid values)
    is returned as it is, for :func:`target_indices` to resolve or reject with its messages.
    """
    if isinstance(target, CheckedIndices) or target is None:
        return target
    if isinstance(target, Tensor):
        if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
            return target
        values = target.reshape(-1).tolist()  # one read at the start of the call
    elif isinstance(target, bool):
        return target
    elif isinstance(target, int):
        values = [target]
    elif isinstance(target, Sequence) and not isinstance(target, str):
        values = list(target)
    else:
        return target
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
        return target
    if len(values) == 1:
        values = values * batch
    if len(values) != batch:
        return target
    indices = torch.tensor(values, dtype=torch.long, device=device)
    return CheckedIndices(indices, max(values))


def resolve(target: Target, output: Any) -> Resolved:
    """Select the score to explain for every sample.

    Args:
        target: see the module docstring.
        output: the model output; its logits (:func:`logits_of`) are what targets select from.
            A callable target receives the logits, or the output itself if it has none.

    Returns:
        :class:`Resolved` with ``scores[b] = logits[b, index[b]]`` (or ``target(logits)``).

    Raises:
        TargetError: a bad target, an output without logits for a class target, or a callable
            that does not return one score per sample.
    """
    if callable(target) and not isinstance(target, Tensor):
        from ._outputs import output_batch

        source = explained_output(output)  # the logits, or an output without them as it is
        scores = target(source)
        batch = output_batch(source)
        if (
            not isinstance(scores, Tensor)
            or scores.dim() != 1
            or (batch is not None and scores.shape[0] != batch)
        ):
            got = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
            want = f"({batch},)" if batch is not None else "(B,)"
            raise TargetError(
                f"a callable target must return one score per sample, shape {want}, got {got}"
            )
        return Resolved(scores, None)
    output = logits_of(output)
    if output.dim() == 1:  # one logit per sample (a binary classifier): class 0 is that logit
        output = output.unsqueeze(1)
    idx = target_indices(target, output)
    assert idx is not None
    return Resolved(output.gather(1, idx[:, None]).squeeze(1), idx)


__all__ = [
    "CheckedIndices",
    "Resolved",
    "Target",
    "class_out_of_range",
    "detach_output",
    "explained_output",
    "logits_of",
    "prepare_target",
    "resolve",
    "target_indices",
]
