"""``flashtorch.attribute`` (one method) and ``attribute_many`` (several, sharing their work)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


def attribute_many(
    model: nn.Module,
    inputs: Tensor,
    methods: Sequence[str] | Mapping[str, Mapping[str, Any]],
    target: Target = None,
) -> dict[str, Attribution]:
    """Several methods on one batch, sharing the work they have in common.

    Vanilla gradient, gradient x input and the gradient-weighted CAMs (``gradcam``,
    ``gradcam_pp``, ``layercam``) with the same model options run on **one** forward and one
    backward pass: the backward pass to the input yields every layer's gradient on the way
    (see :mod:`flashtorch._shared`). Every other method runs as its own call. Each map equals
    the method's own call up to float rounding.

    Args:
        model: the model (as for :func:`attribute`).
        inputs: ``(B, C, H, W)`` normalised images; never modified.
        methods: method names, or ``{name: options}`` (e.g. ``{"gradcam": {"layer": "layer4"},
            "gradient": {}}``).
        target: as for :func:`attribute`; one target for every method.

    Returns:
        ``{name: Attribution}`` in the order of ``methods``.

    Raises:
        MethodError: unknown method name or option, or a method named twice.

    Example:
        >>> import torch, torchvision, flashtorch
        >>> model = torchvision.models.resnet18()
        >>> x = torch.randn(2, 3, 64, 64)
        >>> out = flashtorch.attribute_many(model, x, ["gradient", "gradcam"])
        >>> [tuple(a.maps.shape) for a in out.values()]
        [(2, 3, 64, 64), (2, 1, 64, 64)]
    """
    from ._shared import attribute_all
    from .errors import MethodError

    specs = dict(methods) if isinstance(methods, Mapping) else {m: {} for m in methods}
    if not isinstance(methods, Mapping) and len(specs) != len(methods):
        raise MethodError("a method is named twice; name each method once")
    instances = []
    for name, options in specs.items():
        cls = get_method(name)
        try:
            instances.append(cls(model, **dict(options or {})))
        except TypeError as exc:
            raise MethodError(f"bad option for method {name!r}: {exc}") from None
    results = attribute_all(instances, inputs, target)
    return dict(zip(specs, results))


__all__ = ["attribute", "attribute_many"]
