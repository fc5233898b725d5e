"""``flashtorch.attribute``: every registered method behind one call."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ._targets import Target
from .attribution import Attribution, get_method


def attribute(
    model: nn.Module,
    inputs: Tensor,
    target: Target = None,
    method: str = "guided",
    **options: Any,
) -> Attribution:
    """Explain a model's decision for a batch of images with any registered method.

    Equivalent to ``METHODS[method](model, **options)(inputs, target=target)``.

    Args:
        model: an image model mapping ``(B, C, H, W)`` to ``(B, num_classes)`` logits: a
            tensor, a Hugging Face ``ImageClassifierOutput``, a dict with ``"logits"`` or a
            tuple whose first element is the logits (targets resolve on the logits).
        inputs: ``(B, C, H, W)`` normalised images; never modified.
        target: class index, ImageNet class name, a sequence or tensor of them (one per image),
            a callable ``f(logits) -> (B,)`` (it gets an output without logits as it is), or
            ``None`` for each image's predicted class.
        method: a name from :func:`flashtorch.available_methods`.
        **options: the method's options (e.g. ``layer=`` for CAMs, ``steps=`` for IG).

    Returns:
        An :class:`~flashtorch.attribution.Attribution` (maps, targets, predictions, scores).

    Raises:
        MethodError: unknown method name or option.
    """
    cls = get_method(method)
    try:
        instance = cls(model, **options)
    except TypeError as exc:
        from .errors import MethodError

        raise MethodError(f"bad option for method {method!r}: {exc}") from None
    return instance(inputs, target=target)


__all__ = ["attribute"]
