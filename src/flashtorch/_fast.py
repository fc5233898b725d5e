r"""Exact-math model rewriting for speed: BatchNorm folded into the preceding convolution.

In eval mode ``BN(conv(x))`` is an affine map per output channel, so it folds exactly into the
convolution (Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference", section 3.2):

.. math::
    W' = W \cdot \frac{\gamma}{\sqrt{\sigma^2 + \epsilon}}, \qquad
    b' = (b - \mu) \frac{\gamma}{\sqrt{\sigma^2 + \epsilon}} + \beta

The rewrite happens on a **copy** of the user's model (the user's model is never modified),
optionally converted to ``channels_last``. The copy is cached per model in a weak dictionary and
rebuilt when the model changes (:class:`ModelState`): an in-place update moves a version
counter (an optimiser step, ``load_state_dict``, ``p.mul_()`` under ``no_grad``), ``.to()`` or
``.half()`` gives new storage, a replaced layer or parameter is a new object, and a layer
added, removed or swapped changes the module tree even without parameters (a ReLU replaced by
a GELU) - so training or editing the model between calls is safe. The one change it cannot
see is an in-place update through ``p.data`` (``p.data.mul_(0.9)``: ``.data`` has its own
version counter); after such updates call :func:`clear_fast_cache`.

Pairs are found by running the copy once: a convolution is folded only when its output feeds a
batch-norm call and nothing else (checked by counting every tensor-producing use of that output
with a ``TorchFunctionMode``), and both modules run exactly once. Anything else is left as is.
"""

from __future__ import annotations

import copy
import weakref
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ._surgery import HandleList

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


def fold_batchnorm(model: nn.Module, example: Tensor) -> tuple[nn.Module, int]:
    """Return an eval-mode copy of ``model`` with every foldable conv -> BN pair folded.

    Args:
        model: the user's model (not modified).
        example: an input batch (one sample is enough) used to trace which BN follows which conv.

    Returns:
        ``(copy, number_of_folded_pairs)``.
    """
    net = copy.deepcopy(model).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    names = {m: n for n, m in net.named_modules()}
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

    folded = 0
    for bn_module, tensor in bn_in:
        bn: Any = bn_module
        pair = conv_out.get(id(tensor))
        if pair is None or pair[1] is not tensor:
            continue
        conv: Any = pair[0]
        if calls.get(conv) != 1 or calls.get(bn) != 1 or uses.get(id(tensor)) != 1:
            continue
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
    return net, folded


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
        self._cache: weakref.WeakKeyDictionary[
            nn.Module, dict[tuple, tuple[ModelState, nn.Module, int]]
        ] = weakref.WeakKeyDictionary()

    def get(self, model: nn.Module, example: Tensor, channels_last: bool) -> nn.Module:
        """The folded (optionally channels-last) copy of ``model`` for inputs like ``example``."""
        slot = (example.device, example.dtype, channels_last)
        entries = self._cache.get(model)
        if entries is None:
            entries = self._cache[model] = {}
        hit = entries.get(slot)
        if hit is not None and hit[0].matches(model):
            return hit[1]
        # the model changed (or this slot is new): copies built from its old state are stale
        for other in [s for s, (state, _, _) in entries.items() if not state.matches(model)]:
            del entries[other]
        state = ModelState(model)
        net, count = fold_batchnorm(model, example)
        if channels_last and example.dim() == 4:
            net = net.to(memory_format=torch.channels_last)
        entries[slot] = (state, net, count)
        while len(entries) > self.per_model:
            del entries[next(iter(entries))]
        return net

    def forget(self, model: nn.Module | None = None) -> None:
        """Drop the cached copies of ``model`` (of every model when ``None``)."""
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
]
