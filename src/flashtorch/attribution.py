"""The one calling convention: :class:`AttributionMethod`, :class:`Attribution`, the registry.

Every method - gradients, SmoothGrad, Integrated Gradients, occlusion, the CAM family - is a
subclass of :class:`AttributionMethod` registered under a name in :data:`METHODS`. The registry
feeds :func:`flashtorch.attribute`, the ``flashtorch`` command's choices, the docs table and the
test parametrisation.

Example:
    >>> import torch, torchvision
    >>> from flashtorch import attribute
    >>> model = torchvision.models.resnet18()
    >>> result = attribute(model, torch.randn(2, 3, 64, 64), target=[1, 2], method="guided")
    >>> result.maps.shape
    torch.Size([2, 3, 64, 64])
"""

from __future__ import annotations

import abc
import contextlib
import difflib
import inspect
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from . import _guards
from ._fast import FAST_VIEWS, fast_channels_last
from ._outputs import explained_output
from ._surgery import model_device, model_lock, preserved_state
from ._targets import AnyTarget, ResolvedTarget, Target, resolve
from ._validate import check_images, syncs_allowed
from .errors import FlashTorchError, MethodError


@dataclass
class Attribution:
    """The result of an attribution method on a batch.

    Attributes:
        maps: ``(B, C, H, W)`` for per-pixel-per-channel methods (gradients, IG...),
            ``(B, 1, H, W)`` for CAMs and occlusion; on the input's device, detached.
        method: registry name of the method.
        targets: ``(B,)`` class indices explained, or ``None`` for a callable target.
        predicted: ``(B,)`` the model's top-1 classes on the inputs; ``None`` when the method
            ran no forward pass of the clean inputs (``clean_pass=False`` of SmoothGrad and
            Integrated Gradients) or the model's output has no logits (see
            :mod:`flashtorch._outputs`).
        scores: ``(B,)`` the explained scores (logits, or the callable's values) on the inputs;
            ``None`` like ``predicted``.
        extras: method-specific tensors, e.g. ``{"delta": ...}`` for Integrated Gradients.
    """

    maps: Tensor
    method: str
    targets: Tensor | None
    predicted: Tensor | None
    scores: Tensor | None
    extras: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.maps.shape[0])

    def reduce(self, how: str = "max_abs") -> Tensor:
        """Collapse the channel axis to one map per image, ``(B, 1, H, W)``.

        Args:
            how: ``"max_abs"`` (Simonyan et al. 2013: ``max_c |A_c|``), ``"sum"``, ``"abs_sum"``,
                ``"mean"``, ``"l2"`` or ``"max"``.
        """
        return reduce_channels(self.maps, how)

    def cpu(self) -> Attribution:
        """A copy with every tensor on the CPU."""
        return Attribution(
            self.maps.cpu(),
            self.method,
            None if self.targets is None else self.targets.cpu(),
            None if self.predicted is None else self.predicted.cpu(),
            None if self.scores is None else self.scores.cpu(),
            {k: v.cpu() for k, v in self.extras.items()},
        )


_REDUCERS: dict[str, Callable[[Tensor], Tensor]] = {
    "max_abs": lambda m: m.abs().amax(1, keepdim=True),
    "max": lambda m: m.amax(1, keepdim=True),
    "sum": lambda m: m.sum(1, keepdim=True),
    "abs_sum": lambda m: m.abs().sum(1, keepdim=True),
    "mean": lambda m: m.mean(1, keepdim=True),
    "l2": lambda m: m.pow(2).sum(1, keepdim=True).sqrt(),
}


def reduce_channels(maps: Tensor, how: str = "max_abs") -> Tensor:
    """Collapse ``(B, C, H, W)`` maps to ``(B, 1, H, W)`` (see :meth:`Attribution.reduce`)."""
    try:
        return _REDUCERS[how](maps)
    except KeyError:
        raise MethodError(
            f"unknown channel reduction {how!r}; choose one of {', '.join(_REDUCERS)}"
        ) from None


@dataclass
class MethodOutput:
    """What a method's :meth:`AttributionMethod.compute` returns (before packaging).

    ``output`` and ``scores`` are the model's output and the explained scores on the clean
    inputs, or ``None`` when the method did not run them.
    """

    maps: Tensor
    #: the logits, or an output without logits as the model returned it (detached)
    output: Any
    targets: Tensor | None
    scores: Tensor | None
    extras: dict[str, Tensor] = field(default_factory=dict)


class AttributionMethod(abc.ABC):
    """Base class of every attribution method: construct with the model, call with inputs.

    Subclasses set :attr:`name` and implement :meth:`compute`, which runs inside
    :func:`~flashtorch._surgery.preserved_state` (eval mode, frozen parameters, all restored in
    ``finally``) with inputs already validated and on the model's device, and receives the
    network of the call explicitly (the model, or its ``fast=True`` copy).

    Re-entrant and thread-safe: a call changes nothing on the method instance (its records of
    the last call, such as a CAM's :attr:`layer_name`, excepted), and calls on one model from
    several threads - through one instance or several - run one after another under the
    model's lock (:func:`~flashtorch._surgery.model_lock`), each restoring exactly the state it
    found; see :mod:`flashtorch._surgery` for the choice and its limits.

    Args:
        model: any ``nn.Module`` mapping ``(B, C, H, W)`` images to ``(B, num_classes)`` scores:
            a tensor, a Hugging Face ``ImageClassifierOutput`` (``.logits``), a dict with
            ``"logits"`` or a tuple whose first element is the logits (targets resolve on the
            logits); or to anything a callable target can reduce to ``(B,)``.
        eval_mode: run the model in eval mode during the call (restored afterwards).
        fast: run on a cached copy of the model with BatchNorm folded into the preceding
            convolutions (exact up to float rounding; see :mod:`flashtorch._fast`), in
            ``channels_last`` where that is faster (the CPU; CUDA with tensor cores, see
            :func:`~flashtorch._fast.fast_channels_last`). The user's model is never modified.
            Implies eval mode.
        amp: run under ``torch.autocast`` (float16 on CUDA, bfloat16 on CPU); maps are returned
            in float32. On CUDA, float16 input-gradient maps agreed with float32 at cosine
            0.985-0.991 (H200, resnet50 and EfficientNet-Lite0, random inputs); that is the
            maps' own sensitivity rather than a defect: rounding just the input by float16's
            relative step moves a float32 map by as much (cosine 0.94-0.98 on photos,
            ``benchmarks/amp_agreement.py``). On the CPU a warning says that bfloat16 maps
            agree only approximately (cosine 0.75-0.93).
    """

    name: ClassVar[str] = ""
    #: maps have one channel (CAMs, occlusion) rather than the input's channels.
    single_channel: ClassVar[bool] = False
    #: the method needs a layer (CAM family).
    needs_layer: ClassVar[bool] = False
    #: the method reads attention probabilities (vision transformers only).
    needs_attention: ClassVar[bool] = False
    #: the method is built on input gradients and can be wrapped (SmoothGrad...).
    gradient_based: ClassVar[bool] = False

    #: the method may run on a rewritten copy of the model (``fast=True``).
    supports_fast: ClassVar[bool] = True
    #: one call is a fixed sequence of device work (no random draws, no host-side loop over
    #: data-dependent sizes): it can be captured and replayed as a CUDA graph
    #: (:func:`flashtorch.graphed`).
    graph_safe: ClassVar[bool] = False
    #: the method backpropagates through the parameters' layers to the input: they are frozen
    #: (``requires_grad=False``) for the call, so that the forward pass records no parameter
    #: gradients. Methods whose backward pass stops at a layer (the CAMs start the graph there)
    #: or that run none (occlusion) leave the parameters untouched and skip their walk.
    freezes: ClassVar[bool] = True

    def __init__(
        self, model: nn.Module, *, eval_mode: bool = True, fast: bool = False, amp: bool = False
    ) -> None:
        if not isinstance(model, nn.Module):
            raise MethodError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if fast and not self.supports_fast:
            raise MethodError(
                f"method {self.name!r} does not support fast=True (it needs the model's own "
                "layers); leave fast off"
            )
        self.model = model
        self.eval_mode = eval_mode or fast
        self.fast = fast
        self.amp = amp

    def __call__(self, inputs: Tensor, target: Target = None) -> Attribution:
        """Explain ``target`` for every image of ``inputs``.

        Works under ``torch.no_grad()`` and ``torch.inference_mode()`` (gradients are enabled
        where the method needs them). Warns, once per call, when the maps are all zero for some
        image or not finite, and when dropout was active (``eval_mode=False`` on a model in
        training mode); see :mod:`flashtorch._guards`.

        Args:
            inputs: ``(B, C, H, W)`` float tensor, normalised as the model expects. Never modified.
            target: class index, name, sequence, 0-D or 1-D integer tensor, callable or ``None``
                (predicted class); see :mod:`flashtorch._targets`.

        Returns:
            An :class:`Attribution` on the inputs' device, its maps in the inputs' dtype
            (:func:`map_dtype`: float32 and float64 as they are; float16 and bfloat16 images
            are computed in the model's dtype and give float32 maps).

        Raises:
            InputError: bad inputs, or a model whose tensors were created under
                ``torch.inference_mode()``.
            TargetError: a float, bool, negative or wrongly shaped target, or the wrong number
                of targets (before the model runs); a class beyond the model's outputs (once
                the output is known, before any backward pass).
        """
        x = check_images(inputs)
        with _guards.outermost_call() as outer, _guards.leave_inference_mode():
            watch = _guards.DropoutWatch() if outer and not self.eval_mode else None
            try:
                # one call at a time on a model: its flags, frozen parameters, hooks and
                # fast=True copy are shared by every thread (flashtorch._surgery, threads)
                with (
                    watch if watch is not None else contextlib.nullcontext(),
                    model_lock(self.model),
                ):
                    result = self._attribute(inputs, x, target)
            except FlashTorchError:
                raise
            except (RuntimeError, ValueError, AssertionError) as exc:
                if _guards.is_inference_tensor_error(exc):
                    raise _guards.inference_tensor_error(self.name) from exc
                translated = _guards.model_input_error(self.name, exc, tuple(x.shape))
                if translated is not None:
                    raise translated from exc
                raise
        if outer:
            if watch is not None and watch.seen is not None:
                _guards.warn_dropout(self.name, watch.seen)
            self._check_maps(result)
        return result

    def _check_maps(self, result: Attribution) -> None:
        """Warn when the maps of ``result`` are all zero for some image or not finite."""
        if _guards.maps_checkable(result.maps, syncs_allowed()):
            _guards.check_maps(self.name, result.maps, cam=self.needs_layer)

    def _attribute(self, inputs: Tensor, x: Tensor, target: Target) -> Attribution:
        """The call itself (``x``: the validated inputs), outside inference mode."""
        first = next(self.model.parameters(), None)
        if first is not None and first.is_inference():  # before any change to the model
            raise _guards.inference_tensor_error(self.name)
        if first is not None and first.is_meta:
            raise _guards.meta_model_error(self.name)
        device = model_device(self.model)
        x = _guards.usable_input(x.detach().to(device, model_dtype(self.model, x.dtype)))
        x = _guards.own_copy(x, inputs)  # a model that edits its input edits this copy
        # the target, checked and on the device, before the forward pass (_targets.py)
        target = ResolvedTarget.of(target, x.shape[0], device)
        net = self.model
        if self.fast:
            # channels_last where it is faster: the CPU, and CUDA with tensor cores
            # (fast_channels_last has the measurements)
            channels_last = fast_channels_last(x, self.amp)
            net = FAST_VIEWS.get(self.model, x, channels_last)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        if self.amp and device.type == "cpu" and not self.single_channel:
            # input-gradient maps (CAMs and occlusion keep a correlation > 0.99 in bfloat16)
            warnings.warn(
                f"{self.name}: amp=True on the CPU computes in bfloat16 (8-bit mantissa); its "
                "gradient maps agree with float32 only at cosine 0.75-0.93 on resnet50 and "
                "EfficientNet-Lite0 (benchmarks/results/cpu.md, amp-agreement-cpu.md). Use it "
                "for speed, not for fine detail (fast=True is exact and speeds calls up too)",
                UserWarning,
                stacklevel=3,
            )
        autocast = (
            torch.autocast(
                device.type,
                dtype=torch.float16 if device.type == "cuda" else torch.bfloat16,
                # a CUDA-graph capture must not cache casts (torch.cuda.graph docs)
                cache_enabled=syncs_allowed(),
            )
            if self.amp
            else contextlib.nullcontext()
        )
        # The fast copy is private to flashtorch and already in eval mode with frozen
        # parameters: no per-call guard (it walks every module and parameter, which counts
        # when a GPU call is short; benchmarks/results/docstring-figures.md).
        guard = (
            contextlib.nullcontext(net)
            if self.fast
            else preserved_state(net, eval_mode=self.eval_mode, freeze=self.freezes)
        )
        with guard, autocast:
            out = self.run_compute(net, x, target)  # the network of this call, passed on
        home = inputs.device
        predicted: Tensor | None = None
        if isinstance(out.output, Tensor):  # the logits (an output without them: None)
            output = out.output.detach()
            predicted = (
                output.argmax(1)
                if output.dim() == 2
                else output.new_zeros(output.shape[0], dtype=torch.long)
            )
            predicted = predicted.to(home)
        return Attribution(
            maps=out.maps.detach().to(home, map_dtype(inputs.dtype)).contiguous(),
            method=self.name,
            targets=None if out.targets is None else out.targets.to(home),
            predicted=predicted,
            scores=None if out.scores is None else out.scores.detach().to(home),
            extras={k: v.detach().to(home) for k, v in out.extras.items()},
        )

    def run_compute(self, net: nn.Module, inputs: Tensor, target: Target) -> MethodOutput:
        """:meth:`compute` on ``net``; also for a subclass written with the old signature.

        A subclass whose ``compute(self, inputs, target)`` predates the explicit network reads
        ``self.model``: it runs only where ``net`` is that model (not with ``fast=True``).
        """
        if not self._legacy_compute:
            return self.compute(net, inputs, target)
        if net is not self.model:
            raise MethodError(
                f"method {self.name!r} defines compute(self, inputs, target), which runs on "
                "self.model only; define compute(self, net, inputs, target) and run on net to "
                "use fast=True (or leave fast off)"
            )
        return self.compute(inputs, target)  # type: ignore[call-arg]

    #: ``compute`` has the old ``(self, inputs, target)`` signature (set per subclass).
    _legacy_compute: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        compute = cls.__dict__.get("compute")
        if compute is not None and not getattr(compute, "__isabstractmethod__", False):
            params = list(inspect.signature(compute).parameters)
            cls._legacy_compute = len(params) == 3 and params[1] != "net"
            if cls._legacy_compute:
                warnings.warn(
                    f"{cls.__name__}.compute(self, inputs, target) is deprecated: define "
                    "compute(self, net, inputs, target) and run the network passed in (the "
                    "fast=True copy, say) instead of self.model",
                    DeprecationWarning,
                    stacklevel=2,
                )

    @abc.abstractmethod
    def compute(self, net: nn.Module, inputs: Tensor, target: Target) -> MethodOutput:
        """Compute the maps for a validated batch on the model's device (state is guarded).

        Args:
            net: the network this call runs on: the method's model, or the BatchNorm-folded
                copy with ``fast=True``. Run it, never ``self.model``: nothing on the method
                instance changes during a call, so one instance serves several threads.
            inputs: ``(B, C, H, W)`` on the network's device and in its dtype; flashtorch's own
                tensor (never the caller's), which ``net`` may modify in place.
            target: the prepared target (:mod:`flashtorch._targets`).
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.model).__name__})"


def map_dtype(input_dtype: torch.dtype) -> torch.dtype:
    """The dtype of the maps for inputs of ``input_dtype``: the input's, at least float32.

    float32 and float64 inputs give maps of their own dtype. float16 and bfloat16 inputs give
    float32 maps: input gradients are often below float16's smallest normal number (6e-5) and
    bfloat16 keeps 8 bits of mantissa, so maps in those types would lose most of their values
    (``amp=True`` is the way to compute in half precision).
    """
    return torch.promote_types(input_dtype, torch.float32)


def model_dtype(model: nn.Module, default: torch.dtype) -> torch.dtype:
    """The floating dtype of the model's first floating parameter or buffer, else ``default``.

    Inputs are cast to it, so that float16 photos run on a float32 model (and float32 ones on
    a ``.double()`` model) instead of failing inside the first layer.
    """
    for t in model.parameters():
        if t.is_floating_point():
            return t.dtype
    for b in model.buffers():
        if b.is_floating_point():
            return b.dtype
    return default


def forward_scores(model: nn.Module, inputs: Tensor, target: AnyTarget) -> tuple[Any, Tensor, Any]:
    """Run the model and pick the target scores: ``(output, scores, indices)``.

    ``output`` is the model's logits (:func:`~flashtorch._outputs.explained_output`), or its
    output as it is when that holds no logits (only a callable target can read it).
    """
    output = explained_output(model(inputs))
    resolved = resolve(target, output)
    return output, resolved.scores, resolved.indices


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


class _Registry(dict):  # type: ignore[type-arg]
    """``METHODS``: a dict that imports every built-in method family before it is first read.

    ``import flashtorch`` imports its method packages lazily (so the command line starts
    without torch); this keeps the registry complete however the package was entered (e.g.
    ``from flashtorch.cam import GradCAM`` alone). :func:`register` writes without loading.
    """

    _state = {"loaded": False, "loading": False}
    #: Re-entrant: the importing thread reads the registry again while it loads; another
    #: thread waits for the whole registry instead of seeing part of it.
    _lock = threading.RLock()

    def _load(self) -> None:
        state = self._state
        if state["loaded"]:
            return
        with self._lock:
            if state["loaded"] or state["loading"]:
                return
            state["loading"] = True
            try:
                from . import load_methods

                load_methods()
                state["loaded"] = True
                self._sort()
            finally:
                state["loading"] = False

    def _sort(self) -> None:
        """Registry order whatever the import order: gradient family, CAMs, attention, others."""
        families = ("saliency", "cam", "attention")

        def rank(item: tuple[str, type]) -> int:
            parts = item[1].__module__.split(".")
            family = parts[1] if len(parts) > 1 and parts[0] == "flashtorch" else ""
            return families.index(family) if family in families else len(families)

        ordered = sorted(dict.items(self), key=rank)  # stable: registration order within
        dict.clear(self)
        dict.update(self, ordered)

    def __getitem__(self, key: str) -> type[AttributionMethod]:
        self._load()
        return dict.__getitem__(self, key)

    def __contains__(self, key: object) -> bool:
        self._load()
        return dict.__contains__(self, key)

    def __iter__(self) -> Iterator[str]:
        self._load()
        return dict.__iter__(self)

    def __len__(self) -> int:
        self._load()
        return dict.__len__(self)

    def __repr__(self) -> str:
        self._load()
        return dict.__repr__(self)

    def get(self, key: str, default: Any = None) -> Any:  # noqa: D102
        self._load()
        return dict.get(self, key, default)

    def keys(self) -> Any:  # noqa: D102
        self._load()
        return dict.keys(self)

    def values(self) -> Any:  # noqa: D102
        self._load()
        return dict.values(self)

    def items(self) -> Any:  # noqa: D102
        self._load()
        return dict.items(self)

    def copy(self) -> dict[str, type[AttributionMethod]]:  # noqa: D102
        self._load()
        return dict(dict.items(self))


METHODS: dict[str, type[AttributionMethod]] = _Registry()

M = TypeVar("M", bound=type[AttributionMethod])


def register(cls: M) -> M:
    """Class decorator adding a method to :data:`METHODS` under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no registry name")
    known = dict.get(METHODS, cls.name)  # no lazy loading while a family registers
    if known is not None and known is not cls:
        raise ValueError(f"method name {cls.name!r} is already registered")
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[AttributionMethod]:
    """Look a method up by registry name.

    Raises:
        MethodError: unknown name; the message lists close matches and every method.
    """
    try:
        return METHODS[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), list(METHODS), n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        raise MethodError(
            f"unknown method {name!r}; {hint}available: {', '.join(sorted(METHODS))}"
        ) from None


def available_methods() -> list[str]:
    """Names of every registered method, in registration order."""
    return list(METHODS)


__all__ = [
    "Attribution",
    "AttributionMethod",
    "MethodOutput",
    "METHODS",
    "available_methods",
    "forward_scores",
    "get_method",
    "map_dtype",
    "model_dtype",
    "reduce_channels",
    "register",
]
