r"""Several methods on one batch, one forward pass: the work the gradient and CAM families share.

Vanilla gradient, gradient x input and the gradient-weighted CAMs (Grad-CAM, Grad-CAM++,
Layer-CAM) all need the same two things: the model's forward pass on the batch and the
gradient of the target score. One backward pass from the scores to the input passes through
every layer on the way, so it yields the input gradient
:math:`\partial S_c / \partial x` and every layer's gradient
:math:`\partial S_c / \partial A^{(l)}` at once. Run separately, each method pays its own forward
pass (and each CAM its own backward pass to its layer); run through :class:`SharedPass`, the
group pays one forward and one backward pass, and each method's map is computed from that
pass exactly as the method computes it alone (the same graph, the same operations: equal up to
float rounding).

Which methods join a pass (:func:`shares_pass`): instances of :class:`~flashtorch.saliency.
gradient.Gradient` and :class:`~flashtorch.saliency.gradient.GradientXInput` with the exact
gradient (no guided / deconvnet rule: those change the backward pass itself), and CAM methods
whose map is a function of one layer's activation and gradient (they keep
:class:`~flashtorch.cam.base.CAMMethod`'s own ``capture`` and ``compute``; Score-CAM, which
runs the model once per channel, and Guided Grad-CAM do not). Members of one pass share the
model and the ``eval_mode``, ``fast`` and ``amp`` options; anything else runs on its own.

Layers are recorded with :class:`~flashtorch._surgery.LayerRecorder`'s ``isolate``: the model
continues with a copy of the layer's output, so an in-place operation after the layer cannot
change the recorded activation (the CAMs alone get the same guarantee from ``leaf=True``). A
pass of CAMs only, all at one layer, starts its graph at that layer as a CAM alone does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from . import _guards
from ._guards import model_input
from ._surgery import LayerRecorder
from ._targets import Target, detach_output
from ._validate import syncs_allowed
from .attribution import Attribution, AttributionMethod, MethodOutput, forward_scores
from .errors import LayerError, TargetError


def _is_cam(method: AttributionMethod) -> bool:
    from .cam.base import CAMMethod

    return isinstance(method, CAMMethod)


def shares_pass(method: AttributionMethod) -> bool:
    """Whether ``method``'s map comes from one forward and one exact backward pass.

    True for vanilla gradient and gradient x input (exact gradient) and for CAMs that keep the
    base class's capture (see the module docstring); such methods can join a
    :class:`SharedPass`.
    """
    from .cam.base import CAMMethod
    from .saliency.gradient import Gradient, GradientXInput

    cls = type(method)
    if isinstance(method, Gradient):
        return method.rule is None and cls.compute in (Gradient.compute, GradientXInput.compute)
    if isinstance(method, CAMMethod):
        cam_cls = type(method)
        return (
            cam_cls.compute is CAMMethod.compute
            and cam_cls.capture is CAMMethod.capture
            and method.uses_gradients
        )
    return False


def pass_key(method: AttributionMethod) -> tuple[Any, ...]:
    """What the members of one shared pass must have in common."""
    return (id(method.model), method.eval_mode, method.fast, method.amp)


class SharedPass(AttributionMethod):
    """Run several methods that :func:`shares_pass` accepts on one forward and backward pass.

    Not a registered method: :func:`plan` builds passes, :meth:`attribute` runs one and returns
    one :class:`~flashtorch.attribution.Attribution` per member, each equal (up to float
    rounding) to what the member returns when called alone. Like every method it restores the
    model's state in ``finally`` and holds the model's lock for the call; member instances are
    left unchanged (a CAM's record of its last layer excepted, as in a call of its own).

    Args:
        members: two or more methods with the same :func:`pass_key`.

    Raises:
        ValueError: a member that cannot share a pass, or members that differ in model or
            options.
    """

    name = "shared_pass"

    def __init__(self, members: Sequence[AttributionMethod]) -> None:
        members = list(members)
        if not members:
            raise ValueError("a shared pass needs at least one method")
        for m in members:
            if not shares_pass(m):
                raise ValueError(f"method {m.name!r} cannot share a forward pass")
            if pass_key(m) != pass_key(members[0]):
                raise ValueError(
                    "the methods of a shared pass need one model and one set of options"
                )
        first = members[0]
        super().__init__(first.model, eval_mode=first.eval_mode, fast=first.fast, amp=first.amp)
        self.members = members
        self._gradients = [m for m in members if not _is_cam(m)]
        self._cams: list[Any] = [m for m in members if _is_cam(m)]  # CAMMethod instances
        #: parameters are frozen when the graph reaches the input (as for the gradient alone)
        self.freezes = bool(self._gradients)  # type: ignore[misc]
        self.single_channel = not self._gradients  # type: ignore[misc]
        self.needs_layer = not self._gradients  # type: ignore[misc]

    def attribute(self, inputs: Tensor, target: Target = None) -> list[Attribution]:
        """One :class:`Attribution` per member (in order) for ``inputs`` and ``target``."""
        result = self(inputs, target)
        return self._split(result)

    def _split(self, result: Attribution) -> list[Attribution]:
        out = []
        for i, member in enumerate(self.members):
            prefix = f"{i}/"
            maps = result.extras[f"{prefix}maps"].to(result.maps.dtype)
            extras = {k[len(prefix) :]: v for k, v in result.extras.items() if k.startswith(prefix)}
            extras.pop("maps")
            out.append(
                Attribution(
                    maps=maps,
                    method=member.name,
                    targets=result.targets,
                    predicted=result.predicted,
                    scores=result.scores,
                    extras=extras,
                )
            )
        return out

    def _check_maps(self, result: Attribution) -> None:
        for member, part in zip(self.members, self._split(result)):
            if _guards.maps_checkable(part.maps, syncs_allowed()):
                _guards.check_maps(member.name, part.maps, cam=member.needs_layer)

    def compute(self, net: nn.Module, inputs: Tensor, target: Target) -> MethodOutput:
        """The shared forward and backward pass, then each member's map from it."""
        from .cam.base import _default_name

        layers: dict[tuple[str, int | None], list[AttributionMethod]] = {}
        for cam in self._cams:
            layer = cam.layer if cam.layer is not None else _default_name(net, inputs, target)
            layers.setdefault((layer, cam.call), []).append(cam)
        from_layer = not self._gradients and len(layers) == 1  # start the graph at the layer
        x = inputs.detach().requires_grad_(bool(self._gradients))
        with torch.enable_grad(), contextlib.ExitStack() as stack:
            recorders = {
                key: stack.enter_context(
                    LayerRecorder(
                        net,
                        key[0],
                        key[1],
                        leaf=from_layer,
                        start_grad=from_layer,
                        isolate=not from_layer,
                    )
                )
                for key in layers
            }
            output, scores, indices = forward_scores(net, model_input(x), target)
            activations = {key: rec.output for key, rec in recorders.items()}
            wrt = ([x] if self._gradients else []) + list(activations.values())
            if not scores.requires_grad:
                raise self._independent(None, recorders)
            grads = list(torch.autograd.grad(scores.sum(), wrt, allow_unused=True))
        input_grad = grads.pop(0) if self._gradients else None
        if self._gradients and input_grad is None:
            raise self._independent(None, {})
        layer_grads = dict(zip(activations, grads))
        for key, g in layer_grads.items():
            if g is None:
                raise self._independent(key, recorders)

        output = detach_output(output)
        extras: dict[str, Tensor] = {}
        size = (inputs.shape[-2], inputs.shape[-1])
        for i, member in enumerate(self.members):
            if not _is_cam(member):
                assert input_grad is not None
                extras[f"{i}/maps"] = self._gradient_map(member, input_grad, inputs)
                continue
            key = next(k for k, ms in layers.items() if any(m is member for m in ms))
            rec = recorders[key]
            activation, gradient = activations[key], layer_grads[key]
            layout = member._layout(net, rec.name, activation, inputs)  # type: ignore[attr-defined]
            cap = member._packed(  # type: ignore[attr-defined]
                net, inputs, activation, gradient, output, scores, indices, rec.name, layout
            )
            coarse, cam_extras = member.cam(cap, target)  # type: ignore[attr-defined]
            extras[f"{i}/maps"] = member.finish(coarse, size)  # type: ignore[attr-defined]
            extras.update({f"{i}/{k}": v for k, v in cam_extras.items()})
        first = extras["0/maps"]
        return MethodOutput(first, output, indices, scores.detach(), extras)

    @staticmethod
    def _gradient_map(member: AttributionMethod, grad: Tensor, inputs: Tensor) -> Tensor:
        from .saliency.gradient import GradientXInput

        return grad * inputs if isinstance(member, GradientXInput) else grad

    def _independent(
        self, key: tuple[str, int | None] | None, recorders: dict[tuple[str, int | None], Any]
    ) -> Exception:
        """The error a member alone raises when the score does not depend on its input."""
        if key is None and self._gradients:
            return TargetError(
                f"{self._gradients[0].name}: the target score does not depend on the input; "
                "check the target callable and that the model does not detach its input"
            )
        name = recorders[key].name if key is not None else next(iter(recorders.values())).name
        return LayerError(
            f"the target score does not depend on layer {name!r}; pick a layer on the path to "
            "the output (check also that a callable target uses the model output)"
        )

    def __repr__(self) -> str:
        return f"SharedPass({', '.join(m.name for m in self.members)})"


def plan(methods: Sequence[AttributionMethod]) -> list[list[int]]:
    """Group ``methods`` (by position) into passes: each group runs as one call.

    Methods that :func:`shares_pass` accepts and that have the same :func:`pass_key` form one
    group when the group has a gradient method in it (one backward pass to the input serves
    every layer) or when its CAMs all read one layer; every other method is a group of one.
    Groups are ordered by their first member.
    """
    groups: dict[tuple[Any, ...], list[int]] = {}
    out: list[list[int]] = []
    for i, m in enumerate(methods):
        if shares_pass(m):
            groups.setdefault(pass_key(m), []).append(i)
        else:
            out.append([i])
    for members in groups.values():
        if any(not _is_cam(methods[j]) for j in members):
            out.append(members)
            continue
        by_layer: dict[tuple[Any, ...], list[int]] = {}
        for j in members:
            cam: Any = methods[j]
            by_layer.setdefault((cam.layer, cam.call), []).append(j)
        out.extend(by_layer.values())
    return sorted(out, key=lambda g: g[0])


def attribute_all(
    methods: Sequence[AttributionMethod], inputs: Tensor, target: Target = None
) -> list[Attribution]:
    """Call every method of ``methods`` on ``inputs``, sharing passes (:func:`plan`).

    Returns one :class:`Attribution` per method, in order, each as the method's own call gives
    it (up to float rounding).
    """
    results: list[Attribution | None] = [None] * len(methods)
    for group in plan(methods):
        if len(group) == 1:
            results[group[0]] = methods[group[0]](inputs, target=target)
            continue
        for j, part in zip(
            group, SharedPass([methods[j] for j in group]).attribute(inputs, target)
        ):
            results[j] = part
    return [r for r in results if r is not None]


__all__ = ["SharedPass", "attribute_all", "plan", "pass_key", "shares_pass"]
