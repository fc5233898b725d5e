"""Everything that touches a user's model, and its undo.

Three tools, each undone in ``finally``:

* :func:`preserved_state` - records every module's ``training`` flag and every parameter's
  ``requires_grad`` and ``.grad``, optionally switches to eval mode and freezes parameters for the
  duration of a call (so the backward pass reaches the input only), and puts all of it back;
  outside eval mode it also puts back the running statistics of every normalisation layer in
  training mode (``running_mean``, ``running_var``, ``num_batches_tracked``), which a training
  forward pass updates.
* :class:`RectifierRule` - hooks on the autograd graph of one call that replace the backward pass
  of every rectifier the model *actually ran* (``nn.ReLU`` reused or in place, ``F.relu``,
  ``torch.relu_``, ``Tensor.relu``, ``nn.ReLU6``/``F.relu6``, ``F.hardtanh``, ``clamp(min=0)``,
  ``F.threshold(x, 0, 0)``) by the guided-backprop or deconvnet rule, and warn about
  rectifier-like ops they do not know. Nothing in the model is touched; the hooks return new
  gradients and die with the graph. Autograd internals are read only through
  :mod:`flashtorch._autograd_compat`.
* :class:`LayerRecorder` - forward hooks that capture a layer's output (and count its calls, so a
  module run twice in one forward is detected rather than silently taking the first call).

Threads
-------
A model is shared state: the flags a call switches, the parameters it freezes, the hooks it
adds are seen by every thread that runs the model. :func:`preserved_state` therefore holds a
per-model re-entrant lock (:func:`model_lock`, keyed weakly by the model: no lock outlives its
model) for the whole guarded region, and :class:`~flashtorch.attribution.AttributionMethod`
holds it for the whole call, ``fast=True`` included. Calls on one model from several threads
run one after another and each sees and restores exactly the state the model had before it;
calls on different models run in parallel. The alternative - never mutating the model
(reference-counted shared state, no freezing) - was not taken: the lock costs a few
microseconds a call (``benchmarks/results/cpu-threads.md``), and one model's calls gain little
from running at the same time (they compete for the same cores, or the same GPU stream).
Hooks are also call-local: a hook that :class:`LayerRecorder` (and the CAMs' layer search)
registers ignores forward passes run by other threads (the user's own code running the model
meanwhile, or a second model that shares modules with this one, which has its own lock).
Limits: two *different* models that share submodules are locked separately, so their
train/eval flags and ``requires_grad`` may still interleave when both are explained from two
threads at once; code that runs the model outside flashtorch during a call sees the call's
eval mode and frozen parameters.
"""

from __future__ import annotations

import contextlib
import difflib
import re
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ._autograd_compat import AutogradCompatError, saved_scalar
from .errors import LayerError, LayerTypeError, SharedModuleError

Rule = Literal["guided", "deconvnet"]


class HandleList(list):
    """A list of removable handles that removes them all at once (zennit's pattern)."""

    def remove(self) -> None:  # type: ignore[override]
        """Remove every handle, even if one of them fails, then clear the list."""
        errors: list[BaseException] = []
        for handle in self:
            try:
                handle.remove()
            except Exception as exc:  # pragma: no cover - defensive
                errors.append(exc)
        self.clear()
        if errors:
            raise errors[0]


def model_device(model: nn.Module) -> torch.device:
    """Return the device of the model's first parameter or buffer (CPU if it has none)."""
    for t in model.parameters():
        return t.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


@contextlib.contextmanager
def on_gpu(model: nn.Module, use_gpu: bool) -> Iterator[None]:
    """Move a CPU model to CUDA for one call if asked (and possible), and back in ``finally``.

    The talk's ``use_gpu=True``: the user's model ends where it started. Without CUDA a warning
    says the call runs on the CPU.
    """
    if not use_gpu or model_device(model).type != "cpu":
        yield
        return
    if not torch.cuda.is_available():
        warnings.warn(
            "use_gpu=True but CUDA is not available; computing on the CPU",
            UserWarning,
            stacklevel=4,
        )
        yield
        return
    model.to("cuda")
    try:
        yield
    finally:
        model.to("cpu")


def walk(model: nn.Module, params: bool = True) -> tuple[list[nn.Module], list[nn.Parameter]]:
    """Every module and every parameter of ``model``, each once, in one pass.

    Modules come in pre-order, as ``model.modules()``; parameters as ``model.parameters()``
    (none collected when ``params`` is false).

    Several times faster than ``list(model.modules())`` plus ``list(model.parameters())`` (one
    iterative walk instead of two recursive generators), which counts on a per-call path.
    """
    modules: list[nn.Module] = []
    found: list[nn.Parameter] = []
    seen_modules: set[int] = set()
    seen_params: set[int] = set()
    stack = [model]
    while stack:
        module = stack.pop()
        if id(module) in seen_modules:
            continue
        seen_modules.add(id(module))
        modules.append(module)
        if params:
            for p in module._parameters.values():
                if p is not None and id(p) not in seen_params:
                    seen_params.add(id(p))
                    found.append(p)
        children = [c for c in module._modules.values() if c is not None]
        stack.extend(reversed(children))
    return modules, found


#: one re-entrant lock per model (weak keys: a lock dies with its model)
_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The re-entrant lock that serialises flashtorch's guarded calls on ``model``.

    Held by :func:`preserved_state` and by every attribution call; a thread that already holds
    it (a method called inside another's call) takes it again without waiting.
    """
    lock = _LOCKS.get(model)
    if lock is None:
        with _LOCKS_GUARD:
            lock = _LOCKS.get(model)
            if lock is None:
                lock = _LOCKS[model] = threading.RLock()
    return lock


_NORMS = nn.modules.batchnorm._NormBase  # BatchNorm*, SyncBatchNorm, InstanceNorm* (and timm's)


def _running_stats(modules: list[nn.Module]) -> list[tuple[dict, str, Tensor, Tensor]]:
    """Copies of the running statistics a training-mode forward pass would update."""
    saved: list[tuple[dict, str, Tensor, Tensor]] = []
    for m in modules:
        if m.training and isinstance(m, _NORMS) and m.track_running_stats:
            for name, buf in m._buffers.items():
                if buf is not None:
                    saved.append((m._buffers, name, buf, buf.detach().clone()))
    return saved


@contextlib.contextmanager
def preserved_state(
    model: nn.Module, *, eval_mode: bool = True, freeze: bool = True
) -> Iterator[nn.Module]:
    """Run a block with the model in eval mode and frozen parameters, then restore everything.

    Args:
        model: the user's model.
        eval_mode: switch every module to eval mode inside the block.
        freeze: set ``requires_grad=False`` on every parameter inside the block, so autograd
            computes gradients for the input only (one forward + one input-only backward).

    Yields:
        The same model.

    On exit - normal or by exception - each module's ``training`` flag and each parameter's
    ``requires_grad`` and ``.grad`` object are put back exactly as they were; with
    ``eval_mode=False``, the running statistics of every normalisation layer in training mode
    are copied back too (the same tensors, their values bit for bit). The whole block holds
    :func:`model_lock` (see the module docstring on threads). Only what differs is touched (a
    model already in eval mode is not switched again), so the guard is cheap next to a forward
    pass (``benchmarks/profile_call.py`` measures it). Without ``freeze`` the parameters are
    neither walked nor touched (a method that runs no backward pass through them needs none of
    it).
    """
    with model_lock(model):
        modules, params = walk(model, params=freeze)
        modes = [m.training for m in modules]
        flags = [p.requires_grad for p in params]
        grads = [p.grad for p in params]
        stats = [] if eval_mode else _running_stats(modules)
        try:
            if eval_mode and any(modes):
                model.eval()  # through train(False): a module's own train() override still runs
            if freeze:
                for p, flag in zip(params, flags):
                    if flag:
                        p.requires_grad_(False)
            yield model
        finally:
            for m, training in zip(modules, modes):
                if m.training is not training:
                    m.training = training
            for p, flag, grad in zip(params, flags, grads):
                if p.requires_grad is not flag:
                    p.requires_grad_(flag)
                if p.grad is not grad:
                    p.grad = grad
            if stats:
                with torch.no_grad():
                    for buffers, name, buf, copy in stats:
                        buffers[name] = buf  # the same tensor, also if the module replaced it
                        buf.copy_(copy)


# --------------------------------------------------------------------------------------------
# Rectifier rules on the autograd graph
# --------------------------------------------------------------------------------------------


def _always(_node: Any) -> bool:
    return True


def _min_is_zero(node: Any) -> bool:
    return saved_scalar(node, "min") == 0


def _threshold_is_zero(node: Any) -> bool:
    return saved_scalar(node, "threshold") == 0


# The rule table, keyed by ``node.name()`` (public): autograd node of a rectifier -> test on the
# node's saved arguments that it really rectifies at zero (read through flashtorch._autograd_compat,
# the one module that touches autograd internals). nn.ReLU (reused or in place), F.relu,
# torch.relu(_), Tensor.relu(_) record ReluBackward0; nn.ReLU6, F.relu6 and F.hardtanh record
# HardtanhBackward0 (mask: min < x < max); clamp at zero records ClampBackward0/1 or
# ClampMinBackward0/1; F.threshold(x, 0, v) ThresholdBackward0/1.
_RECTIFIER_NODES: dict[str, Callable[[Any], bool]] = {
    "ReluBackward0": _always,
    "ReluBackward1": _always,
    "HardtanhBackward0": _always,
    "HardtanhBackward1": _always,
    "ClampBackward0": _min_is_zero,
    "ClampBackward1": _min_is_zero,
    "ClampMinBackward0": _min_is_zero,
    "ClampMinBackward1": _min_is_zero,
    "ThresholdBackward0": _threshold_is_zero,
    "ThresholdBackward1": _threshold_is_zero,
}

# Smooth activations are not rectifiers: their exact gradient is kept (policy documented in
# flashtorch.saliency). They are collected so that the "no rectifier" warning can name them.
_SMOOTH_NODES = {
    "SiluBackward0": "silu",
    "GeluBackward0": "gelu",
    "MishBackward0": "mish",
    "HardswishBackward0": "hardswish",
    "EluBackward0": "elu",
    "LeakyReluBackward0": "leaky_relu",
    "LeakyReluBackward1": "leaky_relu",
    "SoftplusBackward0": "softplus",
    "SigmoidBackward0": "sigmoid",
    "HardsigmoidBackward0": "hardsigmoid",
    "TanhBackward0": "tanh",
}

#: node names that look like an activation with a kink or a clamp: one that is in neither table
#: above is an op the rules do not know, and the call warns (its gradient stays plain).
_RECTIFIER_LIKE = re.compile(
    r"relu|clamp|threshold|hardtanh|gelu|silu|elu|softplus|mish|leaky|swish", re.IGNORECASE
)

_OTHER, _RECTIFIER, _SMOOTH, _UNKNOWN = range(4)
#: node name -> one of the four kinds above (memo: a few hundred names at most).
_KINDS: dict[str, int] = {}


def _kind(name: str) -> int:
    kind = _KINDS.get(name)
    if kind is None:
        if name in _RECTIFIER_NODES:
            kind = _RECTIFIER
        elif name in _SMOOTH_NODES:
            kind = _SMOOTH
        elif _RECTIFIER_LIKE.search(name):
            kind = _UNKNOWN
        else:
            kind = _OTHER
        _KINDS[name] = kind
    return kind


def _rectifies(node: Any, name: str) -> bool:
    """Whether a node of the rule table rectifies at zero (``False`` when that is unreadable)."""
    try:
        return _RECTIFIER_NODES[name](node)
    except AutogradCompatError:
        return False


def _guided_prehook(grad_outputs: tuple) -> tuple | None:
    """Guided rule as a pre-hook: the node gets ``max(g, 0)`` as a new tensor, then masks it.

    The node applies its own forward mask, giving ``mask * max(g, 0) = max(g * mask, 0)``
    (mask in {0, 1}).

    Clamping before the node rather than after lets the incoming gradient be freed before the
    node allocates its result (one block fewer alive at a time).
    """
    g = grad_outputs[0]
    if g is None:
        return None
    return (g.clamp(min=0), *grad_outputs[1:])


def _deconvnet_hook(grad_inputs: tuple, grad_outputs: tuple) -> tuple | None:
    """Deconvnet rule as a post-hook: the node's result becomes ``max(g_out, 0)`` (a new tensor)."""
    g_out = grad_outputs[0]
    if grad_inputs[0] is None or g_out is None:
        return None
    return (g_out.clamp(min=0), *grad_inputs[1:])


def _layers_like(model: nn.Module | None, name: str) -> list[str]:
    """Dotted names of the model's modules whose type looks like the op of node ``name``."""
    if model is None:
        return []
    stem = re.sub(r"Backward\d*$", "", name).lower()
    found = []
    for dotted, module in model.named_modules():
        kind = type(module).__name__.lower()
        if dotted and len(kind) >= 3 and (stem.startswith(kind) or kind.startswith(stem)):
            found.append(f"{dotted!r} ({type(module).__name__})")
    return found


class RectifierRule:
    """Give every rectifier in a computed graph a guided-backprop or deconvnet backward pass.

    After the forward pass, :meth:`attach` walks the autograd graph from the scores back to the
    input and hooks every rectifier node the model *actually ran* - modules (also one module
    reused many times, or in place) and functional calls alike - so nothing is looked up by
    module type and nothing in the model changes. Nodes are identified by their public
    ``node.name()``; the saved bounds of ``clamp``/``threshold`` nodes are read through
    :mod:`flashtorch._autograd_compat`. The hooks live on the graph, which is freed by the
    backward pass: no cleanup is needed and the forward pass costs nothing extra.

    * guided (Springenberg et al. 2014): a pre-hook hands the node the positive part of its
      incoming gradient, to which the node applies its own forward mask, giving
      ``[lo < x < hi] * max(g, 0) = g * [lo < x < hi] * [g > 0]``.
    * deconvnet (Zeiler & Fergus 2014): a hook returns ``max(g, 0)`` in place of the node's
      result, ignoring the forward mask.

    Hooks return new gradients; they never modify the tensors autograd passes them.

    A node that looks like a rectifier (its name mentions relu, clamp, threshold, hardtanh, an
    ELU/GELU/SiLU-like activation...) but is in neither the rule table nor the list of smooth
    activations keeps its plain gradient; :meth:`warn_if_unused` then warns once, naming the op
    (and the layers of a matching type, when the model has some). Scripted (TorchScript) code
    fuses its graph and hides its rectifiers: :attr:`calls` stays 0 and the caller warns.

    Args:
        rule: ``"guided"`` or ``"deconvnet"``.

    Attributes:
        calls: number of rectifier nodes modified.
        smooth: names of smooth activations seen (left unmodified).
        unknown: rectifier-like node names seen that the rule does not know (left unmodified),
            each with how many times it ran; a known kind whose bounds could not be read is
            listed here too.
    """

    def __init__(self, rule: Rule) -> None:
        if rule not in ("guided", "deconvnet"):
            raise ValueError(f"rule must be 'guided' or 'deconvnet', got {rule!r}")
        self.rule = rule
        self.calls = 0
        self.smooth: set[str] = set()
        self.unknown: dict[str, int] = {}
        self._unreadable: dict[str, str] = {}

    def attach(self, *roots: Tensor) -> None:
        """Hook the rectifier nodes of the graph that produced ``roots``."""
        guided = self.rule == "guided"
        stack = [t.grad_fn for t in roots if t.grad_fn is not None]
        seen: set[int] = set()
        while stack:
            node = stack.pop()
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            name = node.name()
            kind = _KINDS.get(name)
            if kind is None:
                kind = _kind(name)
            if kind == _RECTIFIER:
                try:
                    hit = _RECTIFIER_NODES[name](node)
                except AutogradCompatError as exc:
                    hit = False
                    self.unknown[name] = self.unknown.get(name, 0) + 1
                    self._unreadable[name] = str(exc)
                if hit:
                    self.calls += 1
                    if guided:
                        node.register_prehook(_guided_prehook)
                    else:
                        node.register_hook(_deconvnet_hook)
            elif kind == _SMOOTH:
                self.smooth.add(_SMOOTH_NODES[name])
            elif kind == _UNKNOWN:
                self.unknown[name] = self.unknown.get(name, 0) + 1
            stack.extend(nxt for nxt, _ in node.next_functions if nxt is not None)

    def warn_if_unused(self, method: str, model: nn.Module | None = None) -> None:
        """Warn about rectifier-like ops left plain, and when no rectifier was found at all.

        Args:
            method: the method's name, for the messages.
            model: the model, to name the layers an unknown op probably came from.
        """
        if self.unknown:
            parts = []
            for name, count in sorted(self.unknown.items()):
                where = _layers_like(model, name)
                if name in self._unreadable:
                    detail = self._unreadable[name]
                elif where:
                    detail = "layer " + ", ".join(where[:3]) + (" ..." if len(where) > 3 else "")
                else:
                    detail = "layer unknown: a functional call or a custom autograd.Function"
                parts.append(f"{name} x{count} ({detail})")
            warnings.warn(
                f"{method}: the model ran rectifier-like ops that the {self.rule} rule does not "
                f"know, so they keep their plain gradient: {'; '.join(parts)}. The map mixes "
                f"{self.rule} and plain backward passes; use a supported rectifier (nn.ReLU, "
                "F.relu, nn.ReLU6 / F.hardtanh, clamp(min=0), F.threshold(x, 0, v)) or report "
                f"the op (torch {torch.__version__})",
                UserWarning,
                stacklevel=4,
            )
        if self.calls == 0:
            seen = ", ".join(sorted(self.smooth)) or "none that flashtorch recognises"
            warnings.warn(
                f"{method}: the model ran no rectifier (ReLU/ReLU6/hardtanh/clamp at 0) that "
                f"flashtorch could modify (smooth activations seen: {seen}); the map equals the "
                "plain gradient. Scripted (TorchScript) models hide their activations: pass the "
                "Python model.",
                UserWarning,
                stacklevel=4,
            )


def rectifiers_between(root: Tensor, stop: Tensor) -> int:
    """How many rectifier nodes lie on the autograd paths from ``root`` down to ``stop``.

    These are the rectifiers a guided or deconvnet rule would change in the gradient
    ``d root / d stop``; with none, that gradient is the same under the rule as without it, so
    one backward pass can give both a plain gradient at ``stop`` and a guided one further down
    (single-pass Guided Grad-CAM). ``stop``'s own node (which produced it) is not between.
    Returns -1 when ``stop`` is not reached (no path, or ``stop`` has no node).
    """
    target = stop.grad_fn
    start = root.grad_fn
    if target is None or start is None:
        return -1
    reaches: dict[int, bool] = {id(target): True}
    count = 0
    # iterative post-order DFS: a node is on a path iff one of its children reaches `stop`
    stack: list[tuple[Any, bool]] = [(start, False)]
    while stack:
        node, expanded = stack.pop()
        key = id(node)
        if expanded:
            hit = any(
                reaches.get(id(child), False)
                for child, _ in node.next_functions
                if child is not None
            )
            reaches[key] = hit
            if hit:
                name = node.name()
                if _kind(name) == _RECTIFIER and _rectifies(node, name):
                    count += 1
            continue
        if key in reaches:
            continue
        reaches[key] = False  # provisional: the graph is acyclic
        stack.append((node, True))
        stack.extend(
            (child, False)
            for child, _ in node.next_functions
            if child is not None and id(child) not in reaches
        )
    return count if reaches.get(id(start), False) else -1


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------


def refuse_scripted(model: nn.Module, what: str) -> None:
    """Raise :class:`LayerError` for a TorchScript model: its layers cannot be hooked.

    The message names the registered methods that need no layer (they work on TorchScript).
    """
    if not isinstance(model, torch.jit.ScriptModule):
        return
    from .attribution import METHODS

    usable = [n for n, c in METHODS.items() if not c.needs_layer and not c.needs_attention]
    raise LayerError(
        f"{what}: the model is TorchScript, whose layers cannot be hooked, so layer methods "
        f"(CAMs, layer recording) cannot run on it. Methods that work on it: "
        f"{', '.join(usable) or 'gradient'}; for CAMs load the Python model instead "
        "('package.module:factory:weights.pth', 'torchvision:NAME', 'timm:NAME')"
    )


def find_layer(model: nn.Module, layer: nn.Module | str) -> tuple[str, nn.Module]:
    """Resolve a layer given as a module or a dotted name (``"features.8"``, ``"layer4.1.conv2"``).

    Returns:
        ``(dotted_name, module)``.

    Raises:
        LayerError: the name does not exist (the message lists close matches), the module is
            not part of the model, or the model is TorchScript (no hooks).
    """
    refuse_scripted(model, f"layer {layer if isinstance(layer, str) else type(layer).__name__!r}")
    if isinstance(layer, str) and layer:
        try:  # the common case, without listing every module
            return layer, model.get_submodule(layer)
        except AttributeError:
            pass
    named = dict(model.named_modules())
    if isinstance(layer, nn.Module):
        for name, module in named.items():
            if module is layer:
                return name, module
        raise LayerError(
            f"layer {type(layer).__name__} is not a submodule of {type(model).__name__}; "
            "pass a module of this model or its dotted name (see `flashtorch layers`)"
        )
    if not isinstance(layer, str):
        raise LayerTypeError(f"layer must be a module or a dotted name, got {type(layer).__name__}")
    if layer in named:
        return layer, named[layer]
    candidates = [n for n in named if n]
    close = difflib.get_close_matches(layer, candidates, n=5, cutoff=0.5)
    hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    if not hint:
        shown = ", ".join(repr(c) for c in candidates[-8:])
        hint = f"some of its layers: {shown} (all: `flashtorch layers` or model.named_modules())"
    raise LayerError(f"model {type(model).__name__} has no layer {layer!r}; {hint}")


class LayerRecorder:
    """Capture the output of one layer during forward passes, counting its calls.

    Use as a context manager; the hook is removed on exit, also on error. It records only the
    forward passes of the thread that entered the recorder (module docstring, threads). With
    ``retain_grad=True`` the captured output keeps its gradient after a backward pass
    (``recorder.output.grad`` is *not* used: call ``torch.autograd.grad`` on :attr:`output`).

    Args:
        model: the model.
        layer: module or dotted name.
        call: which call to keep when the module runs several times in one forward
            (``None``: refuse with :class:`~flashtorch.errors.SharedModuleError`).
        leaf: make the selected call's output (call ``call``, or the first call when ``call`` is
            ``None``) a fresh autograd leaf: the recorder keeps ``output.detach()`` (requiring
            grad when grad mode is on) and the model continues with a copy of it. Gradients can
            then be taken with respect to :attr:`output`, the backward pass stops there (nothing
            upstream is differentiated), and in-place operations downstream (``F.relu(x,
            inplace=True)`` after the layer) leave the recorded values intact. Needs
            ``call >= 0``.
        isolate: without ``leaf``, keep the selected call's output as it is (still on the
            graph: gradients flow through it to the input) and let the model continue with a
            clone of it, so that in-place operations downstream leave the recorded tensor - its
            values and its place in the graph - intact. Gradients with respect to
            :attr:`output` are then those of the layer's output.
        start_grad: with ``leaf``, run the forward pass without gradients up to the selected
            call and switch grad mode on when it returns: the graph then starts at the leaf
            even when parameters require grad (nothing needs freezing), and the code before the
            layer records nothing. The grad mode is put back on exit.
    """

    def __init__(
        self,
        model: nn.Module,
        layer: nn.Module | str,
        call: int | None = None,
        *,
        leaf: bool = False,
        start_grad: bool = False,
        isolate: bool = False,
    ) -> None:
        self.name, self.module = find_layer(model, layer)
        if leaf and call is not None and call < 0:
            raise LayerError(
                f"call={call}: with leaf=True the call must be counted from the start (0, 1, ...)"
            )
        if start_grad and not leaf:
            raise ValueError("start_grad needs leaf=True")
        if isolate and (leaf or (call is not None and call < 0)):
            raise ValueError("isolate needs leaf=False and a call counted from the start")
        self.isolate = isolate
        self.call = call
        self.leaf = leaf
        self.start_grad = start_grad
        self._grad_mode = True
        self.outputs: list[Tensor] = []
        #: the version counter of each recorded output when it was recorded: an output whose
        #: ``_version`` moved since was modified in place downstream.
        self.versions: list[int] = []
        self._handles = HandleList()

    def __enter__(self) -> LayerRecorder:
        selected = 0 if self.call is None else self.call
        owner = threading.get_ident()

        def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
            if threading.get_ident() != owner:
                return None  # another thread's forward pass: not this call's (module docstring)
            first = output[0] if isinstance(output, (tuple, list)) else output
            chosen = len(self.outputs) == selected and isinstance(first, Tensor)
            if not (self.leaf and chosen):
                self.outputs.append(first)
                self.versions.append(first._version if isinstance(first, Tensor) else 0)
                if not (self.isolate and chosen):
                    return None
                replaced = first.clone()  # the model goes on with a copy; `first` stays intact
            else:
                replaced = self._leaf(first)
            if isinstance(output, tuple):
                return (replaced, *output[1:])
            if isinstance(output, list):
                return [replaced, *output[1:]]
            return replaced

        self._handles.append(self.module.register_forward_hook(hook))
        if self.start_grad:
            self._grad_mode = torch.is_grad_enabled()
            torch.set_grad_enabled(False)
        return self

    def _leaf(self, first: Tensor) -> Tensor:
        """Record ``first`` as a fresh leaf; the copy the model continues with."""
        captured = first.detach()
        if self.start_grad:
            torch.set_grad_enabled(self._grad_mode)  # from here on (undone in __exit__)
        if torch.is_grad_enabled() and captured.is_floating_point():
            captured.requires_grad_(True)
        self.outputs.append(captured)
        self.versions.append(captured._version)
        return captured.clone()

    def __exit__(self, *exc: object) -> None:
        if self.start_grad:
            torch.set_grad_enabled(self._grad_mode)
        self._handles.remove()

    def reset(self) -> None:
        """Forget captured outputs (before another forward pass)."""
        self.outputs.clear()
        self.versions.clear()

    @property
    def modified_in_place(self) -> bool:
        """Whether the selected output was modified in place after the layer returned."""
        index = 0 if self.call is None else self.call
        output = self.output
        return output._version != self.versions[index]

    @property
    def output(self) -> Tensor:
        """The captured output of the selected call of the layer in the last forward pass."""
        if not self.outputs:
            raise LayerError(
                f"layer {self.name!r} did not run in the forward pass; pick a layer the model "
                "uses (see `flashtorch layers`)"
            )
        if len(self.outputs) > 1 and self.call is None:
            raise SharedModuleError(
                f"layer {self.name!r} ran {len(self.outputs)} times in one forward pass (a shared "
                "module, e.g. one activation reused); its output is ambiguous. Pick another layer "
                f"(e.g. the block that contains it), or pass call=0..{len(self.outputs) - 1} to "
                "say which call to use"
            )
        index = 0 if self.call is None else self.call
        if not -len(self.outputs) <= index < len(self.outputs):
            raise LayerError(
                f"layer {self.name!r} ran {len(self.outputs)} times; call={index} is out of range"
            )
        return self.outputs[index]


def hook_count(model: nn.Module) -> int:
    """Total number of forward, forward-pre and backward hooks on the model's modules."""
    total = 0
    for m in model.modules():
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
            "_forward_hooks_with_kwargs",
        ):
            d = getattr(m, attr, None)
            if d and attr != "_forward_hooks_with_kwargs":
                total += len(d)
    return total


__all__ = [
    "HandleList",
    "LayerRecorder",
    "RectifierRule",
    "find_layer",
    "refuse_scripted",
    "hook_count",
    "model_device",
    "model_lock",
    "on_gpu",
    "preserved_state",
    "rectifiers_between",
    "walk",
]
