r"""The model-parameter randomisation test (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

An explanation of a trained model should change when the model's learned weights are destroyed.
Cascading randomisation re-initialises the layers one group at a time *from the top* (logits)
down to the input, recomputes the maps after each step for the same images and the same target
classes, and compares them with the original maps:

* Spearman rank correlation of the (absolute) maps: :math:`\rho = \text{corr}(\text{rank}(A),
  \text{rank}(A'))`, ties given their average rank;
* SSIM (Wang, Bovik, Sheikh & Simoncelli 2004) between the maps scaled to ``[0, 1]`` per map,
  Gaussian window (sigma 1.5, 11 px), :math:`C_1 = (0.01)^2, C_2 = (0.03)^2`.

A method whose maps stay similar (high correlation) while the model is destroyed does not
explain the model - Adebayo et al. found this for guided backprop and guided Grad-CAM, whose maps
look like edge detectors. High similarity is the failure; low is what a faithful method shows.

Randomisation never touches the user's model: it works on a ``copy.deepcopy``. Each parameter
of a randomised layer is redrawn from PyTorch's default initialisation with a seeded
``torch.Generator`` (weights of ``d >= 2`` dimensions and their biases: ``U(-1/sqrt(fan_in),
1/sqrt(fan_in))``, the Kaiming-uniform default of ``nn.Linear``/``nn.Conv*``); normalisation
layers are reset to their initial state (``weight = 1, bias = 0`` and, for BatchNorm, running
mean 0 and variance 1 - what ``reset_parameters()`` does, as in Quantus); other parameters get a
normal draw with the original tensor's mean and standard deviation. Keeping the trained running
statistics instead would normalise the random layers' outputs with statistics that no longer fit
them and make the randomised network's activations nearly independent of the input.

Reference: Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim 2018, "Sanity Checks for Saliency
Maps", NeurIPS, arXiv:1810.03292.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
    ...                       nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    >>> result = model_randomization(model, torch.randn(2, 3, 16, 16), method="gradient")
    >>> result.layers
    ['4', '0']
    >>> result.spearman.shape
    torch.Size([2, 2])
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._surgery import HandleList, find_layer, model_device, preserved_state
from .._targets import ResolvedTarget, Target
from .._validate import check_images
from ..attribution import Attribution
from ..errors import InputError, LayerError
from ._maps import as_maps

MethodLike = Union[str, Callable[[nn.Module, Tensor, Target], Union[Tensor, Attribution]]]

_NORMS = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


@dataclass
class SanityResult:
    """The outcome of a cascading (or independent) randomisation test.

    Attributes:
        layers: one label per step - the layer (group) randomised at that step; with
            ``cascade=True`` every step also keeps all the earlier steps' layers randomised.
        groups: the module names randomised at each step.
        spearman: ``(S, B)`` Spearman rank correlation between original and randomised maps.
        ssim: ``(S, B)`` SSIM between them (maps scaled to ``[0, 1]``).
        original: ``(B, 1, H, W)`` the maps of the intact model.
        maps: ``(S, B, 1, H, W)`` the maps after each step.
        targets: ``(B,)`` the explained classes, held fixed, or ``None`` for a callable target.
    """

    layers: list[str]
    groups: list[list[str]]
    spearman: Tensor
    ssim: Tensor
    original: Tensor
    maps: Tensor
    targets: Tensor | None


# --------------------------------------------------------------------------------------------
# Similarity measures
# --------------------------------------------------------------------------------------------


def _average_ranks(values: Tensor) -> Tensor:
    """Ranks 1..n of a 1-D tensor, ties given their mean rank (as ``scipy.stats.rankdata``)."""
    sorted_vals, order = values.sort(stable=True)
    _, inverse, counts = torch.unique_consecutive(
        sorted_vals, return_inverse=True, return_counts=True
    )
    ends = counts.cumsum(0).to(torch.float64)
    mean_rank = ends - (counts.to(torch.float64) - 1) / 2
    ranks = torch.empty_like(mean_rank[inverse])
    ranks[order] = mean_rank[inverse]
    return ranks


def spearman(a: Tensor, b: Tensor) -> Tensor:
    r"""Spearman rank correlation between paired maps, one value per image.

    .. math:: \rho = \frac{\text{cov}(r_a, r_b)}{\sigma_{r_a} \sigma_{r_b}}

    with :math:`r` the average ranks of the flattened maps. A constant map has no ranking: its
    correlation is defined as 0.

    Args:
        a: ``(B, ...)`` maps.
        b: ``(B, ...)`` maps of the same shape.

    Returns:
        ``(B,)`` float tensor in ``[-1, 1]``.
    """
    if a.shape != b.shape or a.dim() < 2:
        raise InputError(
            "spearman needs two (B, ...) tensors of one shape, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )
    fa, fb = a.detach().flatten(1).double().cpu(), b.detach().flatten(1).double().cpu()
    out = torch.empty(fa.shape[0], dtype=torch.float64)
    for i in range(fa.shape[0]):
        ra, rb = _average_ranks(fa[i]), _average_ranks(fb[i])
        ra, rb = ra - ra.mean(), rb - rb.mean()
        denom = ra.norm() * rb.norm()
        out[i] = (ra * rb).sum() / denom if denom > 0 else 0.0
    return out.float().to(a.device)


def _scale01(maps: Tensor) -> Tensor:
    flat = maps.flatten(1)
    lo = flat.amin(1).view(-1, 1, 1, 1)
    hi = flat.amax(1).view(-1, 1, 1, 1)
    return (maps - lo) / (hi - lo).clamp_min(1e-12)


def ssim(
    a: Tensor,
    b: Tensor,
    *,
    data_range: float = 1.0,
    sigma: float = 1.5,
    truncate: float = 3.5,
) -> Tensor:
    r"""Structural similarity of paired single-channel maps, one value per image.

    .. math:: \text{SSIM} = \text{mean}_p \frac{(2 \mu_a \mu_b + C_1)(2 \sigma_{ab} + C_2)}
              {(\mu_a^2 + \mu_b^2 + C_1)(\sigma_a^2 + \sigma_b^2 + C_2)}

    with Gaussian-weighted local statistics (window ``2 * int(truncate * sigma + 0.5) + 1``,
    11 px by default), :math:`C_1 = (0.01 L)^2`, :math:`C_2 = (0.03 L)^2`, :math:`L` =
    ``data_range``, averaged over the positions where the window fits - equal to
    ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False)``. Wang et al. 2004, "Image Quality Assessment: From Error
    Visibility to Structural Similarity", IEEE TIP.

    Args:
        a: ``(B, 1, H, W)`` or ``(B, H, W)``.
        b: same shape.
        data_range: the value range of the maps.
        sigma: standard deviation of the Gaussian window.
        truncate: window half-width in sigmas.

    Returns:
        ``(B,)`` float tensor.
    """
    if a.shape != b.shape:
        raise InputError(
            f"ssim needs two maps of one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    x = (a.unsqueeze(1) if a.dim() == 3 else a).detach().double()
    y = (b.unsqueeze(1) if b.dim() == 3 else b).detach().double()
    if x.dim() != 4 or x.shape[1] != 1:
        raise InputError(f"ssim takes (B, 1, H, W) or (B, H, W) maps, got {tuple(a.shape)}")
    half = int(truncate * sigma + 0.5)
    size = 2 * half + 1
    if min(x.shape[-2:]) < size:
        raise InputError(
            f"maps of {tuple(x.shape[-2:])} are smaller than the {size} px SSIM window"
        )
    coords = torch.arange(size, dtype=torch.float64, device=x.device) - half
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g.view(-1, 1) * g.view(1, -1)).view(1, 1, size, size)

    def filt(t: Tensor) -> Tensor:
        return F.conv2d(t, kernel)

    mu_x, mu_y = filt(x), filt(y)
    sxx = filt(x * x) - mu_x**2
    syy = filt(y * y) - mu_y**2
    sxy = filt(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1).float()


# --------------------------------------------------------------------------------------------
# Randomisation
# --------------------------------------------------------------------------------------------


def randomize_parameters(module: nn.Module, generator: torch.Generator) -> None:
    """Re-draw the parameters of ``module`` and all its submodules (see the module docstring).

    Runs under ``torch.no_grad``. BatchNorm running statistics are reset (mean 0, variance 1);
    other buffers are left alone. Draws happen on the CPU with ``generator`` and are copied to
    each parameter's device, so results do not depend on it.
    """
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, nn.modules.batchnorm._NormBase) and sub.track_running_stats:
                sub.reset_running_stats()
            direct = dict(sub.named_parameters(recurse=False))
            if not direct:
                continue
            weight = direct.get("weight")
            fan_in = weight[0].numel() if weight is not None and weight.dim() >= 2 else None
            for name, p in direct.items():
                if isinstance(sub, _NORMS) and name in ("weight", "bias"):
                    p.fill_(1.0 if name == "weight" else 0.0)
                    continue
                if p.dim() >= 2:
                    bound = 1.0 / math.sqrt(max(1, p[0].numel()))
                elif fan_in is not None:
                    bound = 1.0 / math.sqrt(max(1, fan_in))
                else:
                    bound = None
                if bound is not None:
                    draw = torch.empty(p.shape, dtype=torch.float32).uniform_(
                        -bound, bound, generator=generator
                    )
                else:
                    std = float(p.float().std()) if p.numel() > 1 else 1.0
                    mean = float(p.float().mean())
                    draw = torch.empty(p.shape, dtype=torch.float32).normal_(
                        mean, std if std > 0 else 1.0, generator=generator
                    )
                p.copy_(draw.to(dtype=p.dtype, device=p.device))


def cascade_layers(model: nn.Module, inputs: Tensor) -> list[str]:
    """Names of the modules that own parameters, from the last to run to the first.

    The order is the order of *execution* (one forward pass of ``inputs[:1]``, hooks removed
    afterwards), reversed - so "from the top layer" means the logits layer first, whatever the
    order of definition. Modules that own parameters but do not run come last.
    """
    owners = [
        (n, m) for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))
    ]
    seen: list[str] = []
    handles = HandleList()

    def hook_for(name: str) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            if name not in seen:
                seen.append(name)

        return hook

    try:
        for name, m in owners:
            handles.append(m.register_forward_hook(hook_for(name)))
        with preserved_state(model, eval_mode=True), torch.no_grad():
            model(inputs[:1].to(model_device(model)))
    finally:
        handles.remove()
    unseen = [n for n, _ in owners if n not in seen]
    return list(reversed(seen)) + unseen


def _group(names: list[str], steps: int) -> list[list[str]]:
    steps = max(1, min(steps, len(names)))
    bounds = [round(i * len(names) / steps) for i in range(steps + 1)]
    return [names[bounds[i] : bounds[i + 1]] for i in range(steps)]


def _compute_maps(
    method: MethodLike, model: nn.Module, inputs: Tensor, target: Target, reduce: str, options: dict
) -> Tensor:
    if isinstance(method, str):
        from ..api import attribute

        result: Tensor | Attribution = attribute(
            model, inputs, target=target, method=method, **options
        )
    else:
        result = method(model, inputs, target)
    size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
    return as_maps(result, reduce, size).cpu()


def model_randomization(
    model: nn.Module,
    inputs: Tensor,
    target: Target = None,
    method: MethodLike = "gradient",
    *,
    layers: Sequence[str | Sequence[str]] | None = None,
    steps: int = 6,
    cascade: bool = True,
    seed: int = 0,
    reduce: str = "max_abs",
    absolute: bool = True,
    options: dict[str, Any] | None = None,
) -> SanityResult:
    """Cascading model-parameter randomisation test of an attribution method.

    Args:
        model: the trained model; never modified (a deep copy is randomised).
        inputs: ``(B, C, H, W)`` normalised images.
        target: the explained classes (resolved once on the intact model, then held fixed);
            ``None``: the intact model's predictions.
        method: a registry name (:func:`flashtorch.available_methods`) or a callable
            ``f(model, inputs, target) -> maps or Attribution``.
        layers: the cascade, top first: each entry a module name or a list of names randomised
            together in one step. Default: every module owning parameters, from the last to
            run to the first (:func:`cascade_layers`), split into ``steps`` contiguous groups.
        steps: number of groups for the default cascade.
        cascade: keep earlier steps randomised (Adebayo's cascading test); ``False``
            randomises each group alone (their "independent" test).
        seed: seed of the re-initialisation.
        reduce: channel reduction of multi-channel maps.
        absolute: compare absolute maps (Adebayo et al.'s main setting) rather than signed ones.
        options: keyword options for the method (e.g. ``{"layer": "net.conv_head"}``).

    Returns:
        A :class:`SanityResult`.

    Raises:
        LayerError: a name in ``layers`` is not a module of the model.
        InputError: bad inputs or steps.
    """
    x = check_images(inputs)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be a positive integer, got {steps!r}")
    options = dict(options or {})
    device = model_device(model)

    resolved = ResolvedTarget.of(target, x.shape[0], device)  # checked before any forward
    if resolved.fn is not None:
        fixed: Target = target
        indices = None
    else:
        with preserved_state(model, eval_mode=True), torch.no_grad():
            indices = resolved.class_indices(model(x.detach().to(device)))
        fixed = indices

    if layers is None:
        groups = _group(cascade_layers(model, x), steps)
    else:
        groups = [[entry] if isinstance(entry, str) else list(entry) for entry in layers]
        if not groups or any(not g for g in groups):
            raise InputError("layers must be a non-empty list of module names (or lists of names)")
        for g in groups:
            for name in g:
                find_layer(model, name)
    if not groups:
        raise LayerError(f"{type(model).__name__} has no parameters to randomise")

    def prepare(m: Tensor) -> Tensor:
        return m.abs() if absolute else m

    original = prepare(_compute_maps(method, model, x, fixed, reduce, options))
    generator = torch.Generator().manual_seed(seed)
    maps: list[Tensor] = []
    copy_model = copy.deepcopy(model)
    for g in groups:
        if not cascade:
            copy_model = copy.deepcopy(model)
        for name in g:
            _, module = find_layer(copy_model, name)
            randomize_parameters(module, generator)
        maps.append(prepare(_compute_maps(method, copy_model, x, fixed, reduce, options)))
    del copy_model
    stacked = torch.stack(maps)
    rho = torch.stack([spearman(original, m) for m in maps])
    o01 = _scale01(original)
    sim = torch.stack([ssim(o01, _scale01(m)) for m in maps])
    labels = [g[0] if len(g) == 1 else f"{g[0]} .. {g[-1]}" for g in groups]
    home = inputs.device
    return SanityResult(
        layers=labels,
        groups=[list(g) for g in groups],
        spearman=rho.to(home),
        ssim=sim.to(home),
        original=original.to(home),
        maps=stacked.to(home),
        targets=None if indices is None else indices.to(home),
    )


__all__ = [
    "SanityResult",
    "cascade_layers",
    "model_randomization",
    "randomize_parameters",
    "spearman",
    "ssim",
]
