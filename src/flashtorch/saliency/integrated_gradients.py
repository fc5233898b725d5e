r"""Integrated Gradients (Sundararajan, Taly & Yan 2017).

.. math::

    \text{IG}_i(x) = (x_i - x'_i) \int_0^1
        \frac{\partial S_c\big(x' + \alpha (x - x')\big)}{\partial x_i}\, d\alpha
    \;\approx\; (x_i - x'_i) \sum_{k=1}^{m} w_k\,
        \frac{\partial S_c\big(x' + \alpha_k (x - x')\big)}{\partial x_i}

"Axiomatic Attribution for Deep Networks", ICML 2017, arXiv:1703.01365. Completeness:
:math:`\sum_i \text{IG}_i(x) = S_c(x) - S_c(x')`; the quadrature error is returned per sample as
``extras["delta"]`` :math:`= \sum_i \text{IG}_i - (S_c(x) - S_c(x'))`.

Quadrature rules (``m = steps``):

============== ================================= ======================================
rule           nodes :math:`\alpha_k`            weights :math:`w_k`
============== ================================= ======================================
riemann_left   :math:`k/m,\ k=0..m-1`            :math:`1/m`
riemann_right  :math:`k/m,\ k=1..m`              :math:`1/m`
riemann_middle :math:`(k+\tfrac12)/m`            :math:`1/m`
trapezoid      :math:`k/(m-1),\ k=0..m-1`        :math:`1/(m-1)`, halved at both ends
gausslegendre  :math:`(1+t_k)/2`                 :math:`v_k/2`, :math:`(t, v)` = Legendre-Gauss
============== ================================= ======================================

Names match Captum's ``method=`` (``"riemann_trapezoid"`` is accepted for ``"trapezoid"``).
Captum's trapezoid weights are :math:`1/m` (halved at the ends), which sum to
:math:`1 - 1/m`; flashtorch uses the exact trapezoid weights :math:`1/(m-1)`, so its result is
Captum's times :math:`m/(m-1)`.

Baselines :math:`x'`: ``"zero"``; ``"black"`` (a black image in normalised space,
:math:`-\mu/\sigma` per channel); ``"blur"`` (the input blurred by a Gaussian of ``blur_sigma``
pixels, Sturmfels, Lundberg & Lee 2020, "Visualizing the Impact of Feature Attribution
Baselines", Distill); ``"uniform"`` (seeded uniform noise in each image's value range); or a
tensor / number broadcastable to the inputs.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .. import progress
from .._outputs import take_rows
from .._targets import ResolvedTarget, Target
from ..attribution import AttributionMethod, MethodOutput, register
from ..errors import InputError, MethodError
from ._sampling import (
    broadcast_reference,
    check_internal_batch_size,
    check_option_float,
    check_option_int,
    chunk_size,
    chunks,
    clean_forward,
    explained_scores,
    gaussian_blur,
    image_range,
    make_generator,
    needs_clean_pass,
    rand_like,
    row_target,
    rows_of_target,
)
from .gradient import input_gradients

RULES = ("riemann_left", "riemann_right", "riemann_middle", "trapezoid", "gausslegendre")
_ALIASES = {"riemann_trapezoid": "trapezoid"}
BASELINES = ("zero", "black", "blur", "uniform")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def quadrature(rule: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    r"""Nodes :math:`\alpha_k \in [0, 1]` and weights :math:`w_k` of an IG quadrature rule.

    Args:
        rule: one of :data:`RULES` (or ``"riemann_trapezoid"``).
        steps: number of nodes ``m`` (``>= 2`` for the trapezoid rule).

    Returns:
        ``(alphas, weights)``, float64 arrays of length ``steps``; the weights sum to 1.

    Raises:
        MethodError: unknown rule or too few steps.
    """
    rule = _ALIASES.get(rule, rule)
    steps = check_option_int(steps, "steps")
    m = float(steps)
    k = np.arange(steps, dtype=np.float64)
    if rule == "riemann_left":
        return k / m, np.full(steps, 1 / m)
    if rule == "riemann_right":
        return (k + 1) / m, np.full(steps, 1 / m)
    if rule == "riemann_middle":
        return (k + 0.5) / m, np.full(steps, 1 / m)
    if rule == "trapezoid":
        if steps < 2:
            raise MethodError("the trapezoid rule needs steps >= 2 (both end points)")
        w = np.full(steps, 1 / (m - 1))
        w[0] /= 2
        w[-1] /= 2
        return k / (m - 1), w
    if rule == "gausslegendre":
        t, v = np.polynomial.legendre.leggauss(steps)
        return (t + 1) / 2, v / 2
    close = difflib.get_close_matches(str(rule), [*RULES, *_ALIASES], n=2, cutoff=0.5)
    hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
    raise MethodError(f"unknown IG rule {rule!r}{hint}; choose one of {', '.join(RULES)}")


@register
class IntegratedGradients(AttributionMethod):
    r"""Integrated Gradients (Sundararajan et al. 2017) with a choice of baseline and quadrature.

    .. math:: \text{IG}(x) = (x - x') \odot \sum_{k=1}^{m} w_k\,
        \nabla_x S_c\big(x' + \alpha_k (x - x')\big)

    The ``steps x B`` path points are processed in internal batches of ``internal_batch_size``
    rows, each one forward and one input-only backward pass (peak memory = one internal batch).
    The clean inputs and, unless the rule already visits :math:`\alpha = 0`, the baselines go
    through one gradient-free forward (also chunked) that fixes the target (default: the
    predicted class on the clean input) and gives :math:`S_c(x)` and :math:`S_c(x')`
    (``clean_pass=False`` skips it when the target is explicit). A baseline shared by every
    image (``"zero"``, ``"black"``, a number; eval mode) is one row of that pass, not ``B``.

    Args:
        model: the classifier.
        baseline: ``"zero"``, ``"black"``, ``"blur"``, ``"uniform"``, or a tensor / number
            broadcastable to ``(B, C, H, W)`` (in the model's normalised space).
        steps: number of quadrature nodes ``m`` (default 50, Captum's and the paper's range of
            20-300). A ReLU network's path integrand has kinks, so the Gauss-Legendre error
            does not fall smoothly with ``m``: measured on the example photos
            (``benchmarks/smoothness.py``), fewer steps left a completeness error
            (``extras["delta"]``) that was a sizeable share of ``f(x) - f(x')``, and 50 a small
            one. Check ``delta`` and raise ``steps`` when it matters.
        rule: ``"riemann_left"``, ``"riemann_right"``, ``"riemann_middle"``, ``"trapezoid"``
            or ``"gausslegendre"`` (default, as Captum).
        internal_batch_size: rows per forward/backward pass (default: the batch size, at
            least 32).
        mean: per-channel normalisation mean, for ``baseline="black"`` (ImageNet default).
        std: per-channel normalisation std, for ``baseline="black"`` (ImageNet default).
        blur_sigma: Gaussian standard deviation in pixels for ``baseline="blur"``.
        seed: seed (or :class:`torch.Generator`) of the ``"uniform"`` baseline's draws.
        clean_pass: run the gradient-free forward of the clean inputs and baselines that gives
            ``predicted``, ``scores`` and the completeness ``delta``. ``False`` skips it unless
            ``target=None`` needs the prediction (``steps x B`` rows cost ``steps`` forward +
            backward passes, the clean pass about one more forward for ``x`` and, unless the
            baseline is shared, one for ``x'``). Without it, a rule that
            visits :math:`\alpha = 1` (``riemann_right``, ``trapezoid``) still gives
            ``scores``/``predicted`` from the path, and ``trapezoid`` (both ends) the ``delta``;
            otherwise ``Attribution.predicted``/``scores`` are ``None`` and ``extras`` has no
            ``delta``. Captum computes neither unless asked
            (``return_convergence_delta=True``).
        eval_mode: run the model in eval mode during the call (restored afterwards).
        fast: run on the BatchNorm-folded copy of the model (see
            :class:`~flashtorch.attribution.AttributionMethod`).
        amp: run under ``torch.autocast``.

    Returns (via ``__call__``):
        an :class:`~flashtorch.attribution.Attribution` with ``maps`` ``(B, C, H, W)`` and
        ``extras["delta"]`` ``(B,)`` the completeness error, ``extras["baseline_scores"]``
        ``(B,)`` :math:`S_c(x')`.

    Progress: each internal batch is reported to :func:`flashtorch.progress.report_to` as
    ``(rows done, rows, name)``; its callback may cancel the call between two batches.

    Example:
        >>> ig = IntegratedGradients(model, baseline="black", steps=64)
        >>> result = ig(images, target="espresso")
        >>> result.extras["delta"]  # sum(attr) - (f(x) - f(x')) per image
    """

    name = "integrated_gradients"
    gradient_based = True

    def __init__(
        self,
        model: nn.Module,
        *,
        baseline: str | Tensor | float = "zero",
        steps: int = 50,
        rule: str = "gausslegendre",
        internal_batch_size: int | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        blur_sigma: float = 10.0,
        seed: int | torch.Generator | None = 0,
        clean_pass: bool = True,
        eval_mode: bool = True,
        fast: bool = False,
        amp: bool = False,
    ) -> None:
        super().__init__(model, eval_mode=eval_mode, fast=fast, amp=amp)
        self._node_cache: dict[tuple, tuple[Tensor, Tensor]] = {}
        self.clean_pass = bool(clean_pass)
        self.alphas, self.weights = quadrature(rule, steps)
        self.rule = _ALIASES.get(rule, rule)
        self.steps = steps
        if isinstance(baseline, str):
            if baseline not in BASELINES:
                raise MethodError(
                    f"unknown baseline {baseline!r}; choose one of {', '.join(BASELINES)}, or "
                    "pass a tensor broadcastable to the inputs"
                )
        elif isinstance(baseline, bool) or not isinstance(baseline, (Tensor, int, float)):
            raise MethodError(
                f"baseline must be a name ({', '.join(BASELINES)}), a tensor or a number, got "
                f"{type(baseline).__name__}"
            )
        self.baseline = baseline
        self.internal_batch_size = check_internal_batch_size(internal_batch_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if len(self.mean) != len(self.std) or not all(s > 0 for s in self.std):
            raise MethodError(
                f"mean and std need one value per channel and std > 0; got mean={mean}, std={std}"
            )
        self.blur_sigma = check_option_float(blur_sigma, "blur_sigma", positive=True)
        if seed is not None and not isinstance(seed, torch.Generator):
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise MethodError(f"seed must be an int, a torch.Generator or None, got {seed!r}")
        self.seed = seed

    def baselines(self, x: Tensor) -> Tensor:
        """The ``(B, C, H, W)`` baseline :math:`x'` for the inputs ``x``."""
        b = self.baseline
        if isinstance(b, str):
            if b == "zero":
                return torch.zeros_like(x)
            if b == "black":
                if x.shape[1] != len(self.mean):
                    raise InputError(
                        f"baseline='black' needs mean/std with one value per channel: got "
                        f"{len(self.mean)} values for {x.shape[1]}-channel inputs; pass "
                        "mean=..., std=... (the model's normalisation)"
                    )
                mu = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
                sd = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
                return (-mu / sd).expand(x.shape).clone()
            if b == "blur":
                return gaussian_blur(x, self.blur_sigma)
            lo, hi = image_range(x)  # "uniform"
            return lo + (hi - lo) * rand_like(x, make_generator(self.seed, x.device))
        return broadcast_reference(b, x, "baseline")

    def _nodes(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The quadrature nodes and weights on ``x``'s device, kept per device and dtype.

        (A copy from the host in every call would, under SmoothGrad, wait for the GPU mid-call.)
        """
        key = (x.device, x.dtype)
        cache = self._node_cache
        if key not in cache:
            # cast on the host: some devices (MPS) have no float64
            cache[key] = (
                torch.as_tensor(self.alphas, dtype=x.dtype).to(x.device),
                torch.as_tensor(self.weights, dtype=x.dtype).to(x.device),
            )
        return cache[key]

    def shared_baseline(self) -> bool:
        """Whether every image has the same baseline.

        True for ``"zero"``, ``"black"``, a number, or a tensor without a batch axis of its own.
        """
        b = self.baseline
        if isinstance(b, str):
            return b in ("zero", "black")
        if isinstance(b, Tensor):
            return b.dim() < 4 or b.shape[0] == 1
        return True

    def compute(self, net: nn.Module, inputs: Tensor, target: Target) -> MethodOutput:
        """Integrate the gradient along the straight path in internal batches."""
        x = inputs
        batch = x.shape[0]
        size = chunk_size(self.internal_batch_size, batch)
        base = self.baselines(x)
        diff = x - base

        alphas, weights = self._nodes(x)
        zero_node = np.flatnonzero(self.alphas == 0.0)
        one_node = np.flatnonzero(self.alphas == 1.0)
        clean = self.clean_pass or needs_clean_pass(target)
        output: Any = None
        scores: Tensor | None = None
        indices: Tensor | None = None
        base_scores: Tensor | None = None
        if clean:
            if zero_node.size:  # the path visits the baseline: S(x') comes from the gradient run
                output = clean_forward(net, x, size)
                scores, indices = explained_scores(target, output)
            else:  # one gradient-free run on [x; x'] gives S(x) and S(x')
                # a baseline shared by every image runs once (rows are independent in eval
                # mode): B + 1 rows instead of 2B
                shared = self.eval_mode and self.shared_baseline() and batch > 1
                both = clean_forward(net, torch.cat([x, base[:1] if shared else base], 0), size)
                output = take_rows(both, slice(0, batch))
                base_out = (
                    _repeat_row(both, batch, x.device)
                    if shared
                    else take_rows(both, slice(batch, None))
                )
                scores, indices = explained_scores(target, output)
                base_scores, _ = explained_scores(
                    target if indices is None else ResolvedTarget.checked(indices), base_out
                )

        integral = torch.zeros_like(x)
        n_rows = len(self.alphas) * batch
        progress.report(0, n_rows, self.name)
        for start, stop in chunks(n_rows, size):
            rows = torch.arange(start, stop, device=x.device)
            node, img = rows // batch, rows % batch
            a = alphas[node].view(-1, 1, 1, 1)
            path = base[img] + a * diff[img]
            row_targets = (
                # indices known: the clean pass, or every image already met on the path
                row_target(target, indices, img)
                if clean or start >= batch
                else rows_of_target(target, batch, start, stop)
            )
            out = input_gradients(net, path, row_targets, method=self.name)
            row_out, row_scores = out.output, out.scores
            assert row_out is not None and row_scores is not None  # a gradient run has both
            integral.index_add_(0, img, out.maps * weights[node].view(-1, 1, 1, 1))
            if not clean and out.targets is not None and start < batch:
                if indices is None:
                    indices = out.targets.new_zeros(batch)
                indices[img] = out.targets
            # the rows of a node in this chunk are known on the host: no device read
            at_zero = _node_rows(zero_node, batch, start, stop)
            if at_zero is not None:  # S(x') from the rows at alpha = 0
                local, images = at_zero
                if base_scores is None:
                    base_scores = row_scores.new_zeros(batch)
                base_scores[images] = row_scores[local].to(base_scores.dtype)
            at_one = None if clean else _node_rows(one_node, batch, start, stop)
            if at_one is not None:  # S(x) and the output from the rows at alpha = 1
                local, images = at_one
                if scores is None:
                    scores = row_scores.new_zeros(batch)
                    if isinstance(row_out, Tensor):  # (an output without logits is not kept)
                        output = row_out.new_zeros((batch, *row_out.shape[1:]))
                if output is not None:
                    output[images] = row_out[local]
                scores[images] = row_scores[local]
            progress.report(stop, n_rows, self.name)  # path points (x images) done
        maps = diff * integral
        extras: dict[str, Tensor] = {}
        if scores is not None and base_scores is not None:
            extras["delta"] = maps.flatten(1).sum(1) - (scores - base_scores)
            extras["baseline_scores"] = base_scores
        return MethodOutput(maps, output, indices, scores, extras)


def _repeat_row(both: Any, batch: int, device: torch.device) -> Any:
    """Row ``batch`` (the shared baseline's output) repeated ``batch`` times."""
    if isinstance(both, Tensor):
        row = both[batch : batch + 1]
        return row.expand(batch, *row.shape[1:])
    index = torch.full((batch,), batch, dtype=torch.long, device=device)
    return take_rows(both, index)


def _node_rows(node: np.ndarray, batch: int, start: int, stop: int) -> tuple[slice, slice] | None:
    """Where the rows of quadrature node ``node[0]`` (if any) fall in chunk ``[start, stop)``.

    Returns ``(rows of the chunk, their images)``, or ``None`` when the chunk holds none.
    """
    if not node.size:
        return None
    k = int(node[0])
    lo, hi = max(start, k * batch), min(stop, (k + 1) * batch)
    if lo >= hi:
        return None
    return slice(lo - start, hi - start), slice(lo - k * batch, hi - k * batch)


__all__ = ["BASELINES", "RULES", "IntegratedGradients", "quadrature"]
