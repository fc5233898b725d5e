r"""Exact-math model rewriting for speed: BatchNorm folded into the preceding convolution.

In eval mode ``BN(conv(x))`` is an affine map per output channel, so it folds exactly into the
convolution (Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference", section 3.2):

.. math::
    W' = W \cdot \frac{\gamma}{\sqrt{\sigma^2 + \epsilon}}, \qquad
    b' = (b - \mu) \frac{\gamma}{\sqrt{\sigma^2 + \epsilon}} + \beta

The rewrite happens on a **copy** of the user's model (the user's model is never modified),
optionally converted to ``channels_last``. Two ways to get one:

* :func:`fold_batchnorm` (``flashtorch.fold_batchnorm``) returns a folded copy to keep and
  use as any model: an explicit object, a snapshot of the model when it was made (later
  changes to the model are not seen: fold again). It costs one copy of the model's parameters
  and buffers (the folded batch norms' are dropped).
* ``fast=True`` on a method uses the copy that :data:`FAST_VIEWS` keeps per model: weakly
  keyed (no copy outlives its model), at most :attr:`FastViews.per_model` copies per model
  (one per input device, dtype and layout), so the memory cost is one copy of the parameters
  and buffers per layout in use. Its copies are checked on every call and rebuilt when the
  model changed (:class:`ModelState`): an in-place update moves a version counter (an
  optimiser step, ``load_state_dict``, ``p.mul_()`` under ``no_grad``), ``.to()`` or
  ``.half()`` gives new storage, a replaced layer or parameter is a new object, and a layer
  added, removed or swapped changes the module tree even without parameters (a ReLU replaced
  by a GELU) - so training or editing the model between calls is safe. The one change it
  cannot see is an in-place update through ``p.data`` (``p.data.mul_(0.9)``: ``.data`` has its
  own version counter, and reading every weight on every call to compare values would cost
  as much as a forward pass of a small batch); after such updates call
  :func:`clear_fast_cache`. The cache is safe to use from several threads (each model's
  entries are built and checked under :func:`~flashtorch._surgery.model_lock`).

Pairs are found by running the copy once on an example input: a convolution is folded only
when its output feeds a batch-norm call and nothing else (checked by counting every
tensor-producing use of that output with a ``TorchFunctionMode``), and both modules run exactly
once. Without an example, :func:`fold_batchnorm` reads the same from a ``torch.fx`` symbolic
trace. Anything else is left as is.
"""

from __future__ import annotations

import copy
import threading
import weakref
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ._surgery import HandleList, model_lock
from .errors import MethodError

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class _UseCounter(TorchFunctionMode):
    """Count, per tensor object, the tensor-producing torch calls that take it as an argument."""

    def __init__(self, watched: dict[int, int]) -> None:
        super().__init__()
        self.watched = watched

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if isinstance(result, Tensor) or (
            isinstance(result, (tuple, list)) and any(isinstance(r, Tensor) for r in result)
        ):
            for a in list(args) + list(kwargs.values()):
                if isinstance(a, Tensor) and id(a) in self.watched:
                    self.watched[id(a)] += 1
        return result


def _bn_replacement(bn: nn.Module) -> nn.Module | None:
    """What stands in for a folded batch norm: nothing, or the activation it fuses (timm)."""
    if type(bn) in _BN:
        return nn.Identity()
    drop, act = getattr(bn, "drop", None), getattr(bn, "act", None)
    if isinstance(drop, nn.Module) and isinstance(act, nn.Module):  # timm BatchNormAct2d
        return nn.Sequential(drop, act)
    return None  # an unknown subclass may do more than BN: leave it alone


def _fold(conv: Any, bn: Any) -> None:
    with torch.no_grad():
        var, mean = bn.running_var, bn.running_mean
        scale = torch.rsqrt(var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -mean * scale
        if bn.bias is not None:
            shift = shift + bn.bias
        w = conv.weight
        conv.weight.copy_(w * scale.view(-1, *([1] * (w.dim() - 1))))
        if conv.bias is None:
            conv.bias = nn.Parameter(shift.clone(), requires_grad=False)
        else:
            conv.bias.copy_(conv.bias * scale + shift)


def _copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with frozen parameters (taken under the model's lock)."""
    with model_lock(model):
        net = copy.deepcopy(model)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _run_pairs(net: nn.Module, example: Tensor) -> list[tuple[nn.Module, nn.Module]]:
    """The foldable (conv, bn) pairs of ``net``, found by running it once on ``example``."""
    conv_out: dict[int, tuple[nn.Module, Tensor]] = {}
    bn_in: list[tuple[nn.Module, Tensor]] = []
    calls: dict[nn.Module, int] = {}
    uses: dict[int, int] = {}
    handles = HandleList()

    def on_conv(module: nn.Module, _inp: Any, out: Any) -> None:
        calls[module] = calls.get(module, 0) + 1
        if isinstance(out, Tensor):
            conv_out[id(out)] = (module, out)  # keep the tensor alive: ids stay unique
            uses[id(out)] = 0

    def on_bn(module: nn.Module, inp: Any) -> None:
        calls[module] = calls.get(module, 0) + 1
        if inp and isinstance(inp[0], Tensor):
            bn_in.append((module, inp[0]))

    try:
        for m in net.modules():
            if isinstance(m, _CONV):
                handles.append(m.register_forward_hook(on_conv))
            elif isinstance(m, _BN):
                handles.append(m.register_forward_pre_hook(on_bn))
        with torch.no_grad(), _UseCounter(uses):
            net(example[:1])
    finally:
        handles.remove()

    pairs: list[tuple[nn.Module, nn.Module]] = []
    for bn_module, tensor in bn_in:
        pair = conv_out.get(id(tensor))
        if pair is None or pair[1] is not tensor:
            continue
        conv = pair[0]
        if calls.get(conv) != 1 or calls.get(bn_module) != 1 or uses.get(id(tensor)) != 1:
            continue
        pairs.append((conv, bn_module))
    return pairs


def _traced_pairs(net: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """The foldable (conv, bn) pairs of ``net`` from a ``torch.fx`` symbolic trace."""
    import torch.fx

    try:
        graph = torch.fx.Tracer().trace(net)
    except Exception as exc:  # fx raises many kinds (TraceError, TypeError, ...)
        raise MethodError(
            f"fold_batchnorm: {type(net).__name__} cannot be traced symbolically by torch.fx "
            f"({type(exc).__name__}: {exc}); pass an example input, "
            "fold_batchnorm(model, example=x), to find the pairs by running the model once"
        ) from None
    modules = dict(net.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs: list[tuple[nn.Module, nn.Module]] = []
    for node in graph.nodes:
        if node.op != "call_module" or type(modules.get(node.target)) not in _BN:
            continue
        src = node.args[0] if node.args else None
        if not (
            isinstance(src, torch.fx.Node)
            and src.op == "call_module"
            and isinstance(modules.get(src.target), _CONV)
        ):
            continue
        if len(src.users) == 1 and calls[src.target] == 1 and calls[node.target] == 1:
            pairs.append((modules[src.target], modules[node.target]))
    return pairs


def _fold_pairs(net: nn.Module, pairs: list[tuple[nn.Module, nn.Module]]) -> int:
    """Fold every usable pair into ``net`` (the BN replaced); the number folded."""
    names = {m: n for n, m in net.named_modules()}
    folded = 0
    for conv_module, bn_module in pairs:
        conv: Any = conv_module
        bn: Any = bn_module
        if bn.running_mean is None or bn.running_var is None:
            continue  # batch statistics even in eval mode: not an affine map
        if conv.weight.shape[0] != bn.running_mean.shape[0]:
            continue
        replacement = _bn_replacement(bn)
        if replacement is None:
            continue
        _fold(conv, bn)
        parent_name, _, leaf = names[bn].rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        setattr(parent, leaf, replacement)
        folded += 1
    return folded


def folded_copy(model: nn.Module, example: Tensor) -> tuple[nn.Module, int]:
    """An eval-mode copy of ``model`` with every foldable conv -> BN pair folded, and the count.

    Args:
        model: the user's model (not modified).
        example: an input batch (one sample is enough) used to trace which BN follows which conv.

    Returns:
        ``(copy, number_of_folded_pairs)``.
    """
    net = _copy(model)
    return net, _fold_pairs(net, _run_pairs(net, example))


def fold_batchnorm(model: nn.Module, example: Tensor | None = None) -> nn.Module:
    """A copy of ``model`` in eval mode with BatchNorm folded into the preceding convolutions.

    The same rewrite that ``fast=True`` uses (module docstring), as an object of your own:
    exact up to float rounding in eval mode, faster (one convolution instead of a convolution
    and a normalisation), and independent of ``model`` (a snapshot: later changes to ``model``
    are not seen, fold again after them). The user's model is never modified.

    Memory: one copy of the model's parameters and buffers (the folded batch norms' dropped).

    Args:
        model: any ``nn.Module``.
        example: an input batch (one sample is used) to find which batch norm follows which
            convolution by running the copy once; ``None`` reads it from a ``torch.fx``
            symbolic trace instead (models with data-dependent control flow need ``example``).

    Returns:
        The folded copy, in eval mode, its parameters frozen (``requires_grad=False``).

    Raises:
        MethodError: ``model`` is not a module, or ``example=None`` and ``torch.fx`` cannot
            trace it.

    Example:
        >>> import torch, torchvision, flashtorch
        >>> model = torchvision.models.resnet18().eval()
        >>> folded = flashtorch.fold_batchnorm(model)
        >>> x = torch.randn(1, 3, 64, 64)
        >>> torch.allclose(model(x), folded(x), atol=1e-4)
        True
    """
    if not isinstance(model, nn.Module):
        raise MethodError(f"fold_batchnorm needs a torch.nn.Module, got {type(model).__name__}")
    net = _copy(model)
    pairs = _traced_pairs(net) if example is None else _run_pairs(net, example)
    _fold_pairs(net, pairs)
    return net


class ModelState:
    """What a cached rewrite of a model depends on, checked cheaply on every call.

    Built from one walk of the module tree; :meth:`matches` then checks flat lists instead of
    walking again (cheaper than a walk that builds a key). It sees:

    * the structure: every module's parameter, buffer and child dictionaries (the same objects,
      the same sizes, the same children), so a replaced, added or removed module is noticed
      even when it has no parameters (a ReLU swapped for a GELU);
    * every parameter and buffer: the same object in its dictionary, the same storage
      address (``.to()``, ``.half()``, ``p.data = ...`` give new storage) and, if
      ``versions``, the same version counter (in-place updates: an optimiser step,
      ``load_state_dict``). An update through ``p.data`` is the one change it cannot see.

    Modules are held weakly, so a cache entry does not keep its model alive.
    """

    __slots__ = ("_modules", "_tensors", "_versions")

    def __init__(self, model: nn.Module, versions: bool = True) -> None:
        self._versions = versions
        self._modules: list[tuple] = []
        self._tensors: list[tuple] = []
        stack = [model]
        seen: set[int] = set()
        while stack:
            module = stack.pop()
            if id(module) in seen:
                continue
            seen.add(id(module))
            params, buffers, children = module._parameters, module._buffers, module._modules
            self._modules.append(
                (
                    weakref.ref(module),
                    params,
                    buffers,
                    children,
                    len(params),
                    len(buffers),
                    tuple(map(id, children.values())),
                )
            )
            for tensors in (params, buffers):
                for name, t in tensors.items():
                    if t is not None:
                        self._tensors.append(
                            (tensors, name, t, t._version if versions else 0, t.data_ptr())
                        )
            stack.extend(c for c in children.values() if c is not None)

    def matches(self, model: nn.Module) -> bool:
        """Whether ``model`` is as it was when this state was taken."""
        if not self._modules or self._modules[0][0]() is not model:
            return False
        for ref, params, buffers, children, n_params, n_buffers, child_ids in self._modules:
            module = ref()
            if (
                module is None
                or module._parameters is not params
                or module._buffers is not buffers
                or module._modules is not children
                or len(params) != n_params
                or len(buffers) != n_buffers
                or tuple(map(id, children.values())) != child_ids
            ):
                return False
        versions = self._versions
        for tensors, name, t, version, ptr in self._tensors:
            if (
                tensors.get(name) is not t
                or t.data_ptr() != ptr
                or (versions and t._version != version)
            ):
                return False
        return True


def fast_channels_last(x: Tensor, amp: bool = False) -> bool:
    """Whether ``fast=True`` runs an image batch ``x`` in ``channels_last``.

    On the CPU always (oneDNN's convolutions are faster in it). On CUDA only where tensor cores
    run the convolutions - TF32 allowed (``torch.backends.cudnn.allow_tf32``, PyTorch's
    default), ``amp``, or half-precision inputs: there ``channels_last`` is faster, while plain
    float32 convolutions are slower in it, so the batch stays contiguous. The measurements are
    in benchmarks/results/docstring-figures.md.
    """
    if x.dim() != 4:
        return False
    if x.device.type == "cpu":
        return True
    if x.device.type == "cuda":
        return amp or x.dtype != torch.float32 or bool(torch.backends.cudnn.allow_tf32)
    return False


class FastViews:
    """A weak per-model cache of folded copies (no entry outlives its model).

    A model keeps one copy per input device, dtype and layout, so that calls that need different
    copies (``amp=True`` in channels_last next to float32 contiguous on a GPU without TF32) do
    not rebuild each other's copy on every call. When the model's weights change, every copy of
    it is stale and dropped at the next call.
    """

    #: copies kept per model (least recently built dropped first)
    per_model = 4

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._cache: weakref.WeakKeyDictionary[
            nn.Module, dict[tuple, tuple[ModelState, nn.Module, int]]
        ] = weakref.WeakKeyDictionary()

    def get(self, model: nn.Module, example: Tensor, channels_last: bool) -> nn.Module:
        """The folded (optionally channels-last) copy of ``model`` for inputs like ``example``."""
        with model_lock(model):
            return self._get(model, example, channels_last)

    def _get(self, model: nn.Module, example: Tensor, channels_last: bool) -> nn.Module:
        slot = (example.device, example.dtype, channels_last)
        entries = self._cache.get(model)
        if entries is None:
            with self._guard:  # the weak dictionary itself is shared by every model
                entries = self._cache.setdefault(model, {})
        hit = entries.get(slot)
        if hit is not None and hit[0].matches(model):
            return hit[1]
        # the model changed (or this slot is new): copies built from its old state are stale
        for other in [s for s, (state, _, _) in entries.items() if not state.matches(model)]:
            del entries[other]
        state = ModelState(model)
        net, count = folded_copy(model, example)
        if channels_last and example.dim() == 4:
            net = net.to(memory_format=torch.channels_last)
        entries[slot] = (state, net, count)
        while len(entries) > self.per_model:
            del entries[next(iter(entries))]
        return net

    def forget(self, model: nn.Module | None = None) -> None:
        """Drop the cached copies of ``model`` (of every model when ``None``)."""
        with self._guard:
            if model is None:
                self._cache.clear()
            else:
                self._cache.pop(model, None)

    def copies(self, model: nn.Module) -> int:
        """How many folded copies of ``model`` are cached."""
        return len(self._cache.get(model, {}))

    def folded_count(self, model: nn.Module) -> int:
        """How many conv -> BN pairs the last cached copy of ``model`` folded (0 if none)."""
        entries = self._cache.get(model)
        if not entries:
            return 0
        return next(reversed(entries.values()))[2]


FAST_VIEWS = FastViews()


def clear_fast_cache(model: nn.Module | None = None) -> None:
    """Forget the ``fast=True`` copy of ``model`` (of every model when ``None``).

    Needed only after updating weights through ``.data`` (``p.data.copy_(...)``), which no
    version counter records; every other change is detected (see the module docstring).
    """
    FAST_VIEWS.forget(model)


__all__ = [
    "FAST_VIEWS",
    "FastViews",
    "ModelState",
    "clear_fast_cache",
    "fast_channels_last",
    "fold_batchnorm",
    "folded_copy",
]
