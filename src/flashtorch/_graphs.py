"""CUDA-graph replay of attribution calls: small batches on a GPU without the launch cost.

At batch 1 a GPU call is bound by the host, not the GPU: resnet50's forward and input backward
launch several hundred kernels, and launching them (Python, autograd, the CUDA driver) takes
longer than running them. A CUDA graph records the kernels of one call once and replays them
with one launch (``torch.cuda.CUDAGraph``; NVIDIA, "CUDA Graphs", CUDA C++ Programming Guide).

:func:`graphed` wraps a method: the first call with a new input shape warms the method up on a
side stream and captures one call; every later call copies the new batch (and target) into the
captured input buffers and replays. What a replay cannot notice is checked before it:

* the inputs are validated as usual (shape, dtype, finite values) and the target on the host;
* exact mode reads the model's own parameters: in-place updates (an optimizer step,
  ``load_state_dict``) are seen by the next replay; new storage (``.to()``, ``.half()``,
  ``p.data = ...``) or a changed module tree (a layer replaced, added or removed) is noticed
  (:class:`~flashtorch._fast.ModelState`) and the call is captured again;
* ``fast=True`` replays the BatchNorm-folded copy; when its cache key changes (any weight
  update, see :mod:`flashtorch._fast`) the copy is rebuilt and the call captured again.

Not captured: Python side effects. Forward hooks that the user registered run at capture time
only, and a replay runs the model in the state it was captured in (eval mode). Methods that
draw noise or loop over data-dependent chunks (SmoothGrad, IG, occlusion, Score-CAM) are refused
(their ``graph_safe`` is False).
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ._fast import FAST_VIEWS, ModelState, fast_channels_last
from ._surgery import model_device, preserved_state
from ._targets import ResolvedTarget, Target, explained_output
from ._validate import check_images, no_host_sync
from .attribution import Attribution, AttributionMethod
from .errors import MethodError, TargetError


@dataclass
class _Captured:
    graph: Any  # torch.cuda.CUDAGraph
    inputs: Tensor  # static input buffer
    target: Tensor | None  # static target buffer (None: predicted class)
    out: Attribution  # static outputs, overwritten by every replay
    weights: Any  # what the captured kernels read (see GraphedMethod._weights)


@contextlib.contextmanager
def _syncs_raise() -> Iterator[None]:
    """Make any host synchronisation raise.

    A capture would fail on it, and a failed capture can leave CUDA's random-number state
    unusable for the rest of the process.
    """
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


class GraphedMethod:
    """An attribution method whose calls are replayed as CUDA graphs (see :func:`graphed`).

    Args:
        method: a constructed method whose model is on a CUDA device, with ``graph_safe``
            (gradient, gradient x input, guided, deconvnet, Grad-CAM, Grad-CAM++, Layer-CAM,
            Guided Grad-CAM) and ``eval_mode=True``.
        warmup: eager calls on a side stream before a capture (at least 2: the first call
            builds caches such as the folded copy; the last one must not synchronise).
        max_graphs: input shapes kept captured at once (least recently used dropped first).

    Attributes:
        captures: how many graphs were captured so far (for monitoring recaptures).
    """

    def __init__(self, method: AttributionMethod, *, warmup: int = 2, max_graphs: int = 4) -> None:
        if not isinstance(method, AttributionMethod):
            raise MethodError(
                f"graphed() takes a constructed attribution method such as "
                f"flashtorch.METHODS['gradient'](model), got {type(method).__name__}"
            )
        if not method.graph_safe:
            raise MethodError(
                f"method {method.name!r} cannot be replayed as a CUDA graph (it draws noise or "
                "loops over chunks on the host); call it directly. Graph-safe methods: "
                + ", ".join(_graph_safe_names())
            )
        if not method.eval_mode:
            raise MethodError(
                "graphed() needs eval_mode=True: in train mode BatchNorm would update its "
                "running statistics on every replay"
            )
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 2:
            raise MethodError(f"warmup must be an int >= 2, got {warmup!r}")
        if isinstance(max_graphs, bool) or not isinstance(max_graphs, int) or max_graphs < 1:
            raise MethodError(f"max_graphs must be a positive int, got {max_graphs!r}")
        self.method = method
        self.warmup = warmup
        self.max_graphs = max_graphs
        self.captures = 0
        self._graphs: collections.OrderedDict[tuple, _Captured] = collections.OrderedDict()
        self._classes: int | None = None

    @property
    def name(self) -> str:
        return self.method.name

    def reset(self) -> None:
        """Drop every captured graph and its memory pool."""
        self._graphs.clear()

    def __call__(self, inputs: Tensor, target: Target = None) -> Attribution:
        """Explain ``target`` for every image of ``inputs`` (see the method's ``__call__``).

        Targets: ``None`` (predicted class), a class index or name, a sequence of them, or an
        integer tensor; a callable target would run Python on every call and is refused.
        """
        x = check_images(inputs)
        device = model_device(self.method.model)
        if device.type != "cuda":
            raise MethodError(
                f"graphed() replays CUDA graphs: the model is on {device}; move it to a GPU "
                "(model.cuda()) or call the method directly"
            )
        x = x.detach().to(device)
        key = (
            tuple(x.shape),
            x.dtype,
            x.is_contiguous(memory_format=torch.channels_last),
            target is None,
        )
        cap = self._graphs.get(key)
        stale = cap is None or not self._still_valid(cap, x)
        if stale:
            self._classes = None  # the model may have a new head: learn its width again
        indices = self._indices(target, x)
        if stale:
            self._graphs.pop(key, None)
            cap = self._capture(x, indices, self._weights(x))
            self._graphs[key] = cap
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        assert cap is not None
        self._graphs.move_to_end(key)
        cap.inputs.copy_(x)
        if indices is not None:
            assert cap.target is not None
            cap.target.copy_(indices)
        cap.graph.replay()
        home = inputs.device
        out = cap.out

        def take(t: Tensor | None) -> Tensor | None:
            if t is None:
                return None
            return t.to(home, copy=True)  # the next replay overwrites the static outputs

        return Attribution(
            maps=out.maps.to(home, copy=True),
            method=out.method,
            targets=take(out.targets),
            predicted=take(out.predicted),
            scores=take(out.scores),
            extras={k: v.to(home, copy=True) for k, v in out.extras.items()},
        )

    # ----------------------------------------------------------------------------------------

    def _indices(self, target: Target, x: Tensor) -> Tensor | None:
        """The target as a ``(B,)`` long tensor on the device, checked on the host."""
        if callable(target) and not isinstance(target, Tensor):
            raise TargetError(
                "graphed() takes class targets (index, name, sequence, integer tensor or None); "
                "a callable target runs Python on every call: use the method directly"
            )
        resolved = ResolvedTarget.of(target, x.shape[0], x.device)  # before any forward
        if resolved.indices is None:  # the predicted class
            return None
        if self._classes is None:
            self._classes = self._probe_classes(x)
        resolved.check_classes(self._classes)
        return resolved.indices

    def _probe_classes(self, x: Tensor) -> int:
        model = self.method.model
        with preserved_state(model, eval_mode=True), torch.no_grad():
            output = explained_output(model(x[:1]))
        if not isinstance(output, Tensor) or output.dim() != 2:
            shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise TargetError(
                f"class targets need a model output of shape (B, num_classes), got {shape}"
            )
        return int(output.shape[1])

    def _weights(self, x: Tensor) -> Any:
        """What the captured kernels read.

        The folded copy (fast), or the model's structure and parameter storage (exact; not
        their versions: a replay reads in-place updates).
        """
        method = self.method
        if method.fast:
            return FAST_VIEWS.get(method.model, x, fast_channels_last(x, method.amp))
        return ModelState(method.model, versions=False)

    def _still_valid(self, cap: _Captured, x: Tensor) -> bool:
        method = self.method
        if method.fast:  # rebuilt by the cache when the model changed: a new object
            return self._weights(x) is cap.weights
        return bool(cap.weights.matches(method.model))

    def _capture(self, x: Tensor, indices: Tensor | None, weights: Any) -> _Captured:
        device = x.device
        static_x = x.clone()
        static_t = None if indices is None else indices.clone()
        method = self.method
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        # the target buffer as indices already checked: resolved without reading it
        target: Any = None if static_t is None else ResolvedTarget.checked(static_t)
        with no_host_sync(), torch.cuda.stream(side):
            for i in range(self.warmup):
                if i < self.warmup - 1:
                    method(static_x, target)
                    continue
                try:
                    with _syncs_raise():
                        method(static_x, target)
                except RuntimeError as exc:
                    if "synchroniz" not in str(exc):
                        raise
                    raise MethodError(
                        f"{method.name}: this call reads a device value on the host, which a "
                        f"CUDA graph cannot record ({exc}); call the method directly"
                    ) from None
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with no_host_sync(), torch.cuda.graph(graph):
            out = method(static_x, target)
        self.captures += 1
        return _Captured(graph, static_x, static_t, out, weights)

    def __repr__(self) -> str:
        return f"graphed({self.method!r})"


def _graph_safe_names() -> list[str]:
    from .attribution import METHODS

    return [n for n, cls in METHODS.items() if cls.graph_safe]


def graphed(method: AttributionMethod, *, warmup: int = 2, max_graphs: int = 4) -> GraphedMethod:
    """Replay ``method``'s calls as CUDA graphs: for repeated same-shape batches on a GPU.

    Worth it where a call is launch-bound (small batches): a replay skips the per-op launch
    cost that dominates a small batch on a fast GPU (benchmarks/results/cuda-tf32-graphs.md
    has the figures). Each new input shape costs one
    capture; each weight update under ``fast=True`` refolds and captures again.

    Args:
        method: e.g. ``flashtorch.METHODS["gradient"](model.cuda(), fast=True)``; see
            :class:`GraphedMethod`.
        warmup: eager calls before each capture.
        max_graphs: shapes kept captured at once.

    Returns:
        A callable with the method's ``(inputs, target=None) -> Attribution`` signature.

    Raises:
        MethodError: a method that cannot be captured, or ``eval_mode=False``; at call time, a
            model that is not on a CUDA device.

    Example:
        >>> g = flashtorch.graphed(flashtorch.METHODS["guided"](model.cuda(), fast=True))
        >>> for x, y in loader:          # batches of one shape
        ...     maps = g(x.cuda(), target=y.cuda()).maps
    """
    return GraphedMethod(method, warmup=warmup, max_graphs=max_graphs)


__all__ = ["GraphedMethod", "graphed"]
