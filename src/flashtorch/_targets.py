"""Targets: what scalar per sample an attribution explains.

A target is a class index (``int``), a class name (``str``, ImageNet models), a sequence of
either (one per sample, or one for all), a 0-D or 1-D integer tensor, ``None`` (the predicted
class), or a callable ``f(output) -> (B,)`` that turns the model output into one score per
sample (pytorch-grad-cam's "model targets"). Floats, booleans, negative indices, 2-D or
floating tensors and a number of targets that is neither 1 nor the batch size are refused with
:class:`~flashtorch.errors.TargetError` before the model runs; an index beyond the model's
classes as soon as the output's width is known, before any backward pass.

A call normalises its target once, at its entry, into a :class:`ResolvedTarget`: the values
checked on the host, class indices as a ``(B,)`` long tensor on the model's device. Every
method, :func:`flashtorch.graphed`, the metrics and the command line use it.

Targets resolve on the model's logits (:func:`logits_of`: a tensor, an output's ``.logits``, a
dict's ``"logits"``, a tuple's first element). A callable target receives those logits; an
output that holds none (a dict of other heads, say) is passed to it as the model returned it.
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Union

import torch
import torch.utils._pytree as pytree
from torch import Tensor

from .errors import TargetError

#: What a user passes as a target (see the module docstring). A call normalises it once, at
#: its entry, into a :class:`ResolvedTarget`.
Target = Union[None, int, str, Sequence[Union[int, str]], Tensor, Callable[[Tensor], Tensor]]

#: Internal: a user's target or one already normalised (what the methods' helpers accept).
AnyTarget = Union[Target, "ResolvedTarget"]


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


def _wrong_length(count: int, batch: int) -> TargetError:
    return TargetError(
        f"got {count} targets for a batch of {batch}; give one target for all samples or one "
        "per sample"
    )


def _negative(index: int) -> TargetError:
    return TargetError(
        f"target class {index} is out of range: class indices start at 0 (negative indices "
        "are not accepted)"
    )


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool) or type(value).__name__ in ("bool", "bool_")


def _not_an_index(value: Any) -> TargetError:
    if _is_bool(value):
        return TargetError(
            f"target must be a class index or name, got the boolean {value!r}; pass an int"
        )
    if isinstance(value, numbers.Real) or (
        isinstance(value, Tensor) and (value.is_floating_point() or value.is_complex())
    ):
        return TargetError(
            f"target must be a whole class index, got the number {value!r}; pass an int "
            "(round it yourself if that is what you mean)"
        )
    return TargetError(
        "target must be an int, a class name, a sequence of them, a 1-D integer tensor, a "
        f"callable or None, got {type(value).__name__}: {value!r}"
    )


def _one_index(value: Any) -> tuple[int, bool]:
    """``(class index, whether it was a name)`` of one target value, checked on the host."""
    if isinstance(value, str):
        from .utils.imagenet import ImageNetIndex

        return int(ImageNetIndex()[value]), True  # ClassNameError (a TargetError) if unknown
    if _is_bool(value):
        raise _not_an_index(value)
    try:
        index = operator.index(value)  # int, NumPy integer, 0-d integer tensor or array
    except TypeError:
        raise _not_an_index(value) from None
    if index < 0:
        raise _negative(index)
    return index, False


@dataclass(frozen=True, eq=False)  # tensors compare element-wise: identity only
class ResolvedTarget:
    """A target normalised once, at the entry of a call, before the forward pass.

    Made by :meth:`of` from anything :data:`Target` names: the values are checked (type, sign,
    length; class names looked up) on the host before the model runs, and class indices become
    a ``(B,)`` long tensor on the device. What needs the output - the number of classes, the
    predicted class - is checked or read when the target resolves an output
    (:meth:`resolve`), before any backward pass. Resolving reads no device value on the host:
    no synchronisation once a GPU call has started.

    Attributes:
        indices: ``(B,)`` long tensor of class indices on the device; ``None`` for the
            predicted class (read from the output) and for a callable.
        fn: the callable target, else ``None``.
        high: the largest index, checked against the number of classes once the output is
            known; ``None`` when the indices were checked already (:meth:`checked`).
        names: some indices came from ImageNet class names (the model needs 1000 classes).
    """

    indices: Tensor | None = None
    fn: Callable[[Any], Tensor] | None = None
    high: int | None = None
    names: bool = False

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def of(
        cls, target: Any, batch: int, device: torch.device | str | None = None
    ) -> ResolvedTarget:
        """Normalise ``target`` for a batch of ``batch`` images whose model is on ``device``.

        Args:
            target: see the module docstring; a :class:`ResolvedTarget` is checked against
                ``batch`` and returned (its indices moved to ``device``).
            batch: the number of images.
            device: where the class indices go (the model's device); default: the CPU, or a
                tensor target's own device.

        Raises:
            TargetError: a float, a bool, a negative index, an unknown class name, a tensor
                that is not a 0-D or 1-D integer tensor, a number of targets that is neither 1
                nor ``batch``, or a value of another type.
        """
        if isinstance(target, ResolvedTarget):
            if target.indices is None:
                return target
            if target.indices.shape != (batch,):
                raise _wrong_length(target.indices.numel(), batch)
            if device is not None and target.indices.device != torch.device(device):
                return replace(target, indices=target.indices.to(device))
            return target
        if target is None:
            return cls()
        if callable(target) and not isinstance(target, Tensor):
            return cls(fn=target)
        if (
            not isinstance(target, (Tensor, str, Sequence))
            and hasattr(target, "__array__")
            and getattr(target, "ndim", 0) > 0
        ):
            target = torch.as_tensor(target)  # a NumPy array of indices
        if isinstance(target, Tensor):
            return cls._of_tensor(target, batch, device)
        values = (
            list(target)
            if isinstance(target, Sequence) and not isinstance(target, str)
            else [target]
        )
        checked = [_one_index(v) for v in values]
        if len(checked) == 1:
            checked = checked * batch
        if len(checked) != batch:
            raise _wrong_length(len(checked), batch)
        indices = torch.tensor([i for i, _ in checked], dtype=torch.long, device=device)
        return cls(indices, high=max(i for i, _ in checked), names=any(n for _, n in checked))

    @classmethod
    def _of_tensor(
        cls, target: Tensor, batch: int, device: torch.device | str | None
    ) -> ResolvedTarget:
        if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
            raise TargetError(
                f"a target tensor must hold integer class indices, got {target.dtype}; pass "
                "a long tensor such as torch.tensor([3, 7])"
            )
        if target.dim() > 1:
            raise TargetError(
                f"a target tensor must be 0-D or 1-D (one class per image), got shape "
                f"{tuple(target.shape)}; flatten it"
            )
        flat = target.detach().reshape(-1)
        count = flat.numel()
        if count not in (1, batch):
            raise _wrong_length(count, batch)
        # one read of two values, at the start of the call (before the forward pass)
        low, high = (int(v) for v in torch.stack(list(torch.aminmax(flat))).tolist())
        if low < 0:
            raise _negative(low)
        if count == 1:
            flat = flat.expand(batch)
        # a copy: the caller's tensor is never aliased, so never modified
        indices = flat.to(device=device or flat.device, dtype=torch.long, copy=True)
        return cls(indices.contiguous(), high=high)

    @classmethod
    def checked(cls, indices: Tensor) -> ResolvedTarget:
        """Class indices already checked (``(B,)`` long, on the device), resolved unread."""
        return cls(indices)

    # -- what it is --------------------------------------------------------------------------

    @property
    def predicted(self) -> bool:
        """Whether the target is the predicted class (known only from the output)."""
        return self.indices is None and self.fn is None

    def rows(self, rows: Tensor) -> ResolvedTarget:
        """The target of some rows (``rows`` indexes the batch), for batched sampling methods.

        Raises:
            ValueError: for the predicted class, which needs the clean output first.
        """
        if self.indices is None:
            if self.fn is None:
                raise ValueError("the predicted class needs the clean forward pass")
            return self  # a callable applies to any rows
        return replace(self, indices=self.indices[rows.to(self.indices.device)])

    def check_classes(self, num_classes: int) -> None:
        """Raise :class:`TargetError` if the indices do not fit a model of ``num_classes``."""
        if self.names and num_classes != 1000:
            raise TargetError(
                f"class names need an ImageNet model with 1000 outputs, but this model has "
                f"{num_classes}; pass the class index instead"
            )
        if self.high is not None and self.high >= num_classes:
            raise class_out_of_range(self.high, num_classes)

    # -- resolution on an output -------------------------------------------------------------

    def class_indices(self, output: Any) -> Tensor | None:
        """The ``(B,)`` class indices on the output's device (``None`` for a callable).

        ``output`` is the model's output; its logits (:func:`logits_of`) must be
        ``(B, num_classes)``. The predicted class is the logits' ``argmax``.

        Raises:
            TargetError: an output without ``(B, num_classes)`` logits, an index out of range,
                class names on a model that is not an ImageNet classifier, or indices for
                another batch size.
        """
        if self.fn is not None:
            return None
        logits = logits_of(output)
        if logits.dim() != 2:
            raise TargetError(
                f"class targets need a model output of shape (B, num_classes), got "
                f"{tuple(logits.shape)}; pass a callable target that returns one score per "
                "sample"
            )
        batch, num_classes = logits.shape
        if self.indices is None:
            return logits.detach().argmax(1)
        self.check_classes(num_classes)
        if self.indices.shape != (batch,):
            raise _wrong_length(self.indices.numel(), batch)
        return self.indices.to(logits.device)

    def resolve(self, output: Any) -> Resolved:
        """Select the score to explain for every sample of ``output``.

        Returns:
            :class:`Resolved` with ``scores[b] = logits[b, index[b]]`` (or ``fn(logits)``).

        Raises:
            TargetError: see :meth:`class_indices`; a callable that does not return one score
                per sample.
        """
        if self.fn is not None:
            from ._outputs import output_batch

            source = explained_output(output)  # the logits, or an output without them as is
            scores = self.fn(source)
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
        logits = logits_of(output)
        if logits.dim() == 1:  # one logit per sample (a binary classifier): class 0 is it
            logits = logits.unsqueeze(1)
        idx = self.class_indices(logits)
        assert idx is not None
        return Resolved(logits.gather(1, idx[:, None]).squeeze(1), idx)

    def scores(self, output: Any) -> Tensor:
        """The ``(B,)`` scores whose sum a gradient method backpropagates (:meth:`resolve`)."""
        return self.resolve(output).scores


def as_target(target: AnyTarget, output: Any) -> ResolvedTarget:
    """``target`` normalised for ``output`` (a :class:`ResolvedTarget` is returned as it is).

    For helpers given a user's target after the forward pass; the methods' entry points
    normalise theirs before it with :meth:`ResolvedTarget.of`.
    """
    if isinstance(target, ResolvedTarget):
        return target
    if target is None or (callable(target) and not isinstance(target, Tensor)):
        return ResolvedTarget.of(target, 1)
    logits = logits_of(output)
    return ResolvedTarget.of(target, logits.shape[0] if logits.dim() else 1, logits.device)


def resolve(target: AnyTarget, output: Any) -> Resolved:
    """Select the score to explain for every sample (:meth:`ResolvedTarget.resolve`).

    Args:
        target: a :class:`ResolvedTarget`, or a user's target (normalised here, after the
            forward pass: the methods' entry points normalise theirs before it).
        output: the model output; its logits (:func:`logits_of`) are what targets select from.
            A callable target receives the logits, or the output itself if it has none.

    Raises:
        TargetError: a bad target, an output without logits for a class target, or a callable
            that does not return one score per sample.
    """
    return as_target(target, output).resolve(output)


__all__ = [
    "AnyTarget",
    "Resolved",
    "ResolvedTarget",
    "Target",
    "as_target",
    "class_out_of_range",
    "detach_output",
    "explained_output",
    "logits_of",
    "resolve",
]
