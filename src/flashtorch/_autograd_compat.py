"""The one place flashtorch reads autograd internals that PyTorch does not offer publicly.

The guided-backprop and deconvnet rules (:class:`flashtorch._surgery.RectifierRule`) find
rectifiers on the autograd graph of a call. Everything they need is public
(:class:`torch.autograd.graph.Node`: ``name()``, ``next_functions``, ``register_hook``) except
one thing: whether a ``clamp`` or ``threshold`` node really rectifies *at zero*. That lives in the
node's saved arguments, which PyTorch exposes only as generated ``_saved_<argument>`` attributes
(documented in the autograd notes, "Saved tensors", but named after the arguments of
``derivatives.yaml`` and so free to change between releases). This module owns every such read:

* :data:`SAVED` - which saved argument of which node the rules read;
* :func:`saved_scalar` - the read itself, raising :class:`AutogradCompatError` (naming the node,
  the attribute and the torch version) instead of guessing;
* :data:`PROBES` and :func:`self_check` - one tiny op per rectifier kind, run on the installed
  PyTorch: the node name it records and the saved values the rules read. The test suite calls
  :func:`self_check`, so a PyTorch release that renames a node or an attribute fails a test with
  a message saying what moved, rather than silently turning guided backprop into the plain
  gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import FlashTorchError


class AutogradCompatError(FlashTorchError, RuntimeError):
    """An autograd node lacks a saved argument flashtorch reads (PyTorch renamed or freed it)."""


#: node name -> the saved arguments the rectifier rules read from it (without ``_saved_``).
SAVED: dict[str, tuple[str, ...]] = {
    "ClampBackward0": ("min",),  # clamp with tensor bounds
    "ClampBackward1": ("min",),  # clamp with scalar bounds
    "ClampMinBackward0": ("min",),  # clamp_min with a scalar
    "ClampMinBackward1": ("min",),  # clamp_min with a tensor
    "ThresholdBackward0": ("threshold",),
    "ThresholdBackward1": ("threshold",),  # in place
}


def saved_scalar(node: Any, argument: str) -> float | None:
    """The saved scalar argument ``argument`` of autograd node ``node``.

    Args:
        node: a :class:`torch.autograd.graph.Node`.
        argument: the argument's name in PyTorch's ``derivatives.yaml`` (``"min"``,
            ``"threshold"``), one of those listed in :data:`SAVED` for the node.

    Returns:
        The value as a Python number; ``None`` when the argument was not given (``clamp(max=6)``
        has no ``min``) or is a tensor with more than one element (not a scalar bound).

    Raises:
        AutogradCompatError: the node has no such attribute (PyTorch renamed it) or its saved
            tensor was already freed by a backward pass.
    """
    attribute = "_saved_" + argument
    try:
        value = getattr(node, attribute)
    except AttributeError:
        raise AutogradCompatError(
            f"torch {torch.__version__}: autograd node {node.name()} has no attribute "
            f"{attribute!r}, which flashtorch reads to tell whether it rectifies at zero "
            "(PyTorch renamed it); update flashtorch/_autograd_compat.py (SAVED) for this "
            "PyTorch, or use a PyTorch version flashtorch supports"
        ) from None
    except RuntimeError as exc:
        raise AutogradCompatError(
            f"torch {torch.__version__}: the saved {attribute!r} of {node.name()} was freed "
            f"({exc}); attach the rule before the backward pass"
        ) from None
    if isinstance(value, Tensor):
        return value.item() if value.numel() == 1 else None
    return value


@dataclass(frozen=True)
class Probe:
    """One rectifier kind as a model runs it, and what the installed PyTorch must record for it.

    Attributes:
        call: how a model writes the op (shown in messages).
        op: runs the op on a tensor that requires grad.
        node: the name the op's autograd node must have (``node.name()``).
        saved: the saved arguments the rules read, with the values this ``op`` must give.
    """

    call: str
    op: Callable[[Tensor], Tensor]
    node: str
    saved: tuple[tuple[str, float | None], ...] = ()


#: every rectifier kind the rules support, as models run it.
PROBES: tuple[Probe, ...] = (
    Probe("F.relu(x)", F.relu, "ReluBackward0"),
    Probe("x.relu_()", lambda x: x.clone().relu_(), "ReluBackward0"),
    Probe("F.relu6(x)", F.relu6, "HardtanhBackward0"),
    Probe("F.hardtanh(x, 0, 6)", lambda x: F.hardtanh(x, 0.0, 6.0), "HardtanhBackward0"),
    Probe("x.clamp(min=0)", lambda x: x.clamp(min=0), "ClampBackward1", (("min", 0),)),
    Probe("x.clamp(-1, 1)", lambda x: x.clamp(-1, 1), "ClampBackward1", (("min", -1),)),
    Probe("x.clamp(max=6)", lambda x: x.clamp(max=6), "ClampBackward1", (("min", None),)),
    Probe(
        "x.clamp(min=torch.tensor(0.))",
        lambda x: x.clamp(min=torch.tensor(0.0)),
        "ClampBackward0",
        (("min", 0),),
    ),
    Probe(
        "torch.clamp_min(x, 0)", lambda x: torch.clamp_min(x, 0), "ClampMinBackward0", (("min", 0),)
    ),
    Probe(
        "torch.clamp_min(x, torch.tensor(0.))",
        lambda x: torch.clamp_min(x, torch.tensor(0.0)),
        "ClampMinBackward1",
        (("min", 0),),
    ),
    Probe(
        "F.threshold(x, 0, 0)",
        lambda x: F.threshold(x, 0.0, 0.0),
        "ThresholdBackward0",
        (("threshold", 0),),
    ),
    Probe(
        "F.threshold(x, 0, 0, inplace=True)",
        lambda x: F.threshold(x.clone(), 0.0, 0.0, inplace=True),
        "ThresholdBackward1",
        (("threshold", 0),),
    ),
)


def self_check() -> list[str]:
    """Run every :data:`PROBES` op on the installed PyTorch; describe each mismatch.

    Returns:
        One line per problem (empty when everything the rules rely on is where they look):
        a node recorded under another name, or a saved argument that is missing or has another
        value. Each line names the op, the node, the attribute and the torch version.
    """
    problems: list[str] = []
    version = torch.__version__
    for probe in PROBES:
        x = torch.randn(4, requires_grad=True)
        node = probe.op(x).grad_fn
        name = node.name() if node is not None else None
        if name != probe.node:
            problems.append(
                f"torch {version}: {probe.call} records autograd node {name!r}, flashtorch "
                f"expects {probe.node!r} (update the rule table in flashtorch/_surgery.py and "
                "PROBES in flashtorch/_autograd_compat.py)"
            )
            continue
        for argument, want in probe.saved:
            if argument not in SAVED.get(name, ()):
                problems.append(
                    f"torch {version}: {probe.call}: '_saved_{argument}' of {name} is read but "
                    "not listed in SAVED (flashtorch/_autograd_compat.py)"
                )
                continue
            try:
                got = saved_scalar(node, argument)
            except AutogradCompatError as exc:
                problems.append(f"{probe.call}: {exc}")
                continue
            if got != want:
                problems.append(
                    f"torch {version}: {probe.call}: '_saved_{argument}' of {name} is "
                    f"{got!r}, flashtorch expects {want!r}"
                )
    return problems


__all__ = ["PROBES", "SAVED", "AutogradCompatError", "Probe", "saved_scalar", "self_check"]
