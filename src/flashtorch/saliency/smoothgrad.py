r"""SmoothGrad, SmoothGrad-squared and VarGrad over any gradient method.

For a gradient map :math:`M(x)` (vanilla, guided, deconvnet, gradient x input, Integrated
Gradients...) and :math:`n` noisy copies :math:`x + \epsilon_s`,
:math:`\epsilon_s \sim \mathcal{N}(0, \sigma^2)`, :math:`\sigma = \text{noise} \cdot
(\max x - \min x)` per image (Smilkov et al. 2017 use 10-20 % of the input range):

.. math::

    \text{mean}:    \hat M(x) = \frac1n \sum_{s=1}^n M(x + \epsilon_s)

    \text{squared}: \hat M(x) = \frac1n \sum_{s=1}^n M(x + \epsilon_s)^2

    \text{vargrad}: \hat M(x) = \frac1n \sum_{s=1}^n M(x + \epsilon_s)^2
        - \Big(\frac1n \sum_{s=1}^n M(x + \epsilon_s)\Big)^2

* Smilkov, Thorat, Kim, Viegas & Wattenberg 2017, "SmoothGrad: removing noise by adding noise",
  arXiv:1706.03825.
* SmoothGrad-squared: Hooker, Erhan, Kindermans & Kim 2019, "A Benchmark for Interpretability
  Methods in Deep Neural Networks", NeurIPS, arXiv:1806.10758.
* VarGrad: Adebayo, Gilmer, Goodfellow & Kim 2018, "Local Explanation Methods for Deep Neural
  Networks Lack Sensitivity to Parameter Values", arXiv:1810.03307 (population variance, as
  Captum's ``NoiseTunnel``).

Noise protocol (reproducible, independent of ``internal_batch_size`` and of the batch): with
``g = torch.Generator(device).manual_seed(seed)`` on the model's device, the draws are, for
``s = 0 .. n-1`` in order, ``z_s = torch.randn((1, C, H, W), generator=g, device=g.device,
dtype=x.dtype)``; sample ``s`` of image ``b`` is ``x[b] + sigma_b * z_s``. One draw per sample
serves every image of the batch (each image's own samples stay independent, which is all its
estimate needs), so an image's map is the same whatever batch it comes in - a batch equals
single calls with the same seed - and a batch of ``B`` draws ``B`` times fewer numbers
(drawing is not free next to a small model's pass). Captum's ``NoiseTunnel`` draws
independent noise per image instead. The target is resolved once on the clean input (default:
the predicted class) and held fixed for every noisy copy.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .. import progress
from .._targets import Target
from ..attribution import AttributionMethod, MethodOutput, get_method, register
from ..errors import MethodError
from ._sampling import (
    check_internal_batch_size,
    check_option_float,
    check_option_int,
    chunk_size,
    chunks,
    clean_forward,
    explained_scores,
    image_range,
    make_generator,
    needs_clean_pass,
    randn_like,
    row_target,
    rows_of_target,
)

VARIANTS = ("mean", "squared", "vargrad")
#: map dtypes whose sums and squares are taken in float32 (and whose maps come back float32)
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _base_class(base: str | type[AttributionMethod]) -> type[AttributionMethod]:
    if isinstance(base, str):
        cls = get_method(base)
    elif isinstance(base, type) and issubclass(base, AttributionMethod):
        cls = base
    else:
        raise MethodError(
            f"base must be a method name or an AttributionMethod subclass, got {base!r}; "
            "e.g. base='guided'"
        )
    if not cls.gradient_based or issubclass(cls, SmoothGrad):
        from ..attribution import METHODS

        usable = ", ".join(
            n for n, c in METHODS.items() if c.gradient_based and not issubclass(c, SmoothGrad)
        )
        raise MethodError(
            f"SmoothGrad wraps gradient methods; {cls.name or cls.__name__!r} is not one. "
            f"Choose base from: {usable}"
        )
    return cls


class _NoiseStream:
    """The noisy copies of rows ``[start, stop)`` of the sample-major stream, drawing lazily.

    Row ``s * B + b`` is ``x[b] + sigma_b * z_s``, with one ``randn((1, C, H, W))`` draw ``z_s``
    per sample ``s`` in order (module docstring); only the current internal batch's draws are
    kept.
    """

    def __init__(self, x: Tensor, sigma: Tensor, gen: torch.Generator) -> None:
        self.x, self.sigma, self.gen = x, sigma, gen
        self.drawn: dict[int, Tensor] = {}
        self.next = 0

    def noisy(self, start: int, stop: int, rows: Tensor, img: Tensor) -> Tensor:
        """``x[img] + sigma[img] * z`` for the rows ``rows = arange(start, stop)``."""
        x, batch = self.x, self.x.shape[0]
        first, last = start // batch, (stop - 1) // batch
        while self.next <= last:
            self.drawn[self.next] = randn_like(x[:1], self.gen)
            self.next += 1
        for s in [s for s in self.drawn if s < first]:
            del self.drawn[s]
        if first == last:  # one sample: its draw broadcasts over the rows, no copy
            z = self.drawn[first].expand(stop - start, *x.shape[1:])
        else:
            z = torch.cat([self.drawn[s] for s in range(first, last + 1)])
            z = z.index_select(0, rows // batch - first)
        return torch.addcmul(x[img], z, self.sigma[img])


@register
class SmoothGrad(AttributionMethod):
    r"""SmoothGrad (Smilkov et al. 2017): average a gradient map over noisy copies of the input.

    .. math:: \hat M(x) = \frac1n \sum_{s=1}^n M(x + \epsilon_s), \quad
        \epsilon_s \sim \mathcal N(0, \sigma^2), \; \sigma = \text{noise}\,(\max x - \min x)

    ``variant="squared"`` averages :math:`M^2` (SmoothGrad-squared, Hooker et al. 2019) and
    ``variant="vargrad"`` takes the variance :math:`E[M^2] - E[M]^2` (VarGrad, Adebayo et al.
    2018). The module docstring gives the exact noise protocol.

    Cost: ``n_samples`` forward + input-only backward passes per image, run over the expanded
    batch of ``n_samples x B`` rows in internal batches of ``internal_batch_size`` rows (peak
    memory = one internal batch), plus one gradient-free forward of the clean batch to fix the
    target (``clean_pass=False`` skips it for explicit targets).

    On a float16 or bfloat16 model the per-sample maps are summed and squared in float32 and
    the maps come back as float32: the square of a half-precision gradient underflows.

    Args:
        model: the classifier.
        base: the gradient method to smooth: a registry name (``"gradient"``, ``"guided"``,
            ``"gradient_x_input"``, ``"deconvnet"``, ``"integrated_gradients"``) or an
            :class:`~flashtorch.attribution.AttributionMethod` subclass with
            ``gradient_based = True``.
        n_samples: number of noisy copies :math:`n` (default 50, the paper's). Measured on
            the example photos (total variation of the map against the plain gradient's,
            ``benchmarks/smoothness.py``), smoothness is set by ``n`` far more than by
            ``noise``: with a few samples the map is hardly smoother than the gradient, and it
            still improves at 50.
        noise: :math:`\sigma` as a fraction of each image's value range ``max - min`` (default
            0.15, the middle of the paper's 0.1-0.2, across which the measured smoothness is
            the same); ``0`` gives the base map.
        variant: ``"mean"`` (SmoothGrad), ``"squared"`` or ``"vargrad"``.
        seed: int seed of the :class:`torch.Generator` made on the model's device, a generator
            of your own (draws on its device, then moved), or ``None`` for fresh noise per call.
        internal_batch_size: rows per forward/backward pass (default: the batch size, at least
            32). Forwarded to a base that has its own ``internal_batch_size`` unless
            ``base_options`` sets it.
        base_options: keyword options for the base method (e.g. ``{"steps": 16}`` for IG).
        clean_pass: run one gradient-free forward of the clean batch, which fixes the target
            ``None`` to the predicted class and gives ``Attribution.predicted`` and ``scores``.
            ``False`` skips it when the target is explicit (an index, name, sequence, tensor or
            callable; ``None`` always needs it): ``predicted`` and ``scores`` are then ``None``
            and ``targets`` come from the noisy rows. It costs about half a sample (one forward
            of ``B`` rows against ``n`` forward + backward passes), a share that falls as
            ``1 / (2 n)``. Captum's ``NoiseTunnel`` has no such pass.
        eval_mode: run the model in eval mode during the call (restored afterwards).
        fast: run on the BatchNorm-folded copy of the model (see
            :class:`~flashtorch.attribution.AttributionMethod`).
        amp: run under ``torch.autocast``.

    Progress: each internal batch is reported to :func:`flashtorch.progress.report_to` as
    ``(rows done, rows, name)``; its callback may cancel the call between two batches.

    Example:
        >>> sg = SmoothGrad(model, base="guided", n_samples=50, noise=0.15, seed=0)
        >>> result = sg(images, target=[1, 2])
        >>> result.maps.shape  # (B, C, H, W), like the base method
    """

    name = "smoothgrad"
    #: the variant this registry entry computes by default.
    default_variant: ClassVar[str] = "mean"

    def __init__(
        self,
        model: nn.Module,
        *,
        base: str | type[AttributionMethod] = "gradient",
        n_samples: int = 50,
        noise: float = 0.15,
        variant: str | None = None,
        seed: int | torch.Generator | None = 0,
        internal_batch_size: int | None = None,
        base_options: dict[str, Any] | None = None,
        clean_pass: bool = True,
        eval_mode: bool = True,
        fast: bool = False,
        amp: bool = False,
    ) -> None:
        super().__init__(model, eval_mode=eval_mode, fast=fast, amp=amp)
        self.clean_pass = bool(clean_pass)
        self.n_samples = check_option_int(n_samples, "n_samples")
        self.noise = check_option_float(noise, "noise (sigma as a fraction of the input range)")
        if variant is None:
            variant = self.default_variant
        if variant not in VARIANTS:
            raise MethodError(f"unknown SmoothGrad variant {variant!r}; choose one of {VARIANTS}")
        if variant != self.default_variant and type(self) is not SmoothGrad:
            raise MethodError(
                f"method {self.name!r} computes variant {self.default_variant!r}; for "
                f"{variant!r} use method 'smoothgrad' with variant={variant!r}"
            )
        self.variant = variant
        if seed is not None and not isinstance(seed, torch.Generator):
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise MethodError(f"seed must be an int, a torch.Generator or None, got {seed!r}")
        self.seed = seed
        self.internal_batch_size = check_internal_batch_size(internal_batch_size)
        options = dict(base_options or {})
        cls = _base_class(base)
        if (
            self.internal_batch_size is not None
            and "internal_batch_size" not in options
            and "internal_batch_size" in inspect.signature(cls.__init__).parameters
        ):
            options["internal_batch_size"] = self.internal_batch_size
        accepted = inspect.signature(cls.__init__).parameters
        if "clean_pass" not in options and "clean_pass" in accepted:
            # the base's own clean pass (IG's S(x), S(x'), delta on every noisy copy) would be
            # discarded: skip it (the rows' targets are always explicit here)
            options["clean_pass"] = False
        try:
            self.base: AttributionMethod = cls(model, eval_mode=eval_mode, **options)
        except TypeError as exc:
            raise MethodError(f"bad base_options for {cls.name!r}: {exc}") from None

    def compute(self, net: nn.Module, inputs: Tensor, target: Target) -> MethodOutput:
        """Run the base method on the noisy copies in internal batches and combine them."""
        x = inputs
        batch = x.shape[0]
        size = chunk_size(self.internal_batch_size, batch)
        clean = self.clean_pass or needs_clean_pass(target)
        output: Tensor | None = None
        scores: Tensor | None = None
        indices: Tensor | None = None
        if clean:
            output = clean_forward(net, x, size)
            scores, indices = explained_scores(target, output)

        lo, hi = image_range(x)
        sigma = self.noise * (hi - lo)
        stream = _NoiseStream(x, sigma, make_generator(self.seed, x.device))

        total = self.n_samples * batch
        # Shifted sums (shift = each image's first map) keep VarGrad's E[M^2] - E[M]^2 accurate.
        shift: Tensor | None = None
        acc: Tensor | None = None
        acc_sq: Tensor | None = None
        progress.report(0, total, self.name)
        for start, stop in chunks(total, size):
            rows = torch.arange(start, stop, device=x.device)
            img = rows % batch
            noisy = stream.noisy(start, stop, rows, img)
            row_targets = (
                # indices known: the clean pass, or every image already met
                row_target(target, indices, img)
                if clean or start >= batch
                else rows_of_target(target, batch, start, stop)
            )
            with progress.inner():  # the base's own steps (IG's) are steps of this call
                res = self.base.run_compute(net, noisy, row_targets)  # on this call's network
            maps = res.maps.detach()
            if maps.dtype in _LOW_PRECISION:
                # a half-precision gradient's square underflows (1e-4 squared is below
                # float16's smallest subnormal) and n-term sums lose digits: sum in float32
                maps = maps.float()
            if not clean and res.targets is not None and start < batch:
                if indices is None:
                    indices = res.targets.new_zeros(batch)
                indices[img] = res.targets
            if acc is None:
                shape = (batch, *maps.shape[1:])
                acc = maps.new_zeros(shape)
                acc_sq = maps.new_zeros(shape)
                shift = maps.new_zeros(shape)
            assert acc_sq is not None and shift is not None
            if self.variant == "vargrad":
                if start < batch:  # the first sample of some images (known on the host)
                    first = min(stop, batch) - start
                    shift[start : start + first] = maps[:first]
                maps = maps - shift[img]
            if self.variant != "squared":
                acc.index_add_(0, img, maps)
            if self.variant != "mean":
                acc_sq.index_add_(0, img, maps * maps)
            progress.report(stop, total, self.name)  # noisy copies done
        assert acc is not None and acc_sq is not None
        n = float(self.n_samples)
        if self.variant == "mean":
            result = acc / n
        elif self.variant == "squared":
            result = acc_sq / n
        else:
            mean = acc / n
            result = (acc_sq / n - mean * mean).clamp_min(0)
        return MethodOutput(result, output, indices, scores, {"sigma": sigma.view(batch)})


@register
class SmoothGradSquared(SmoothGrad):
    r"""SmoothGrad-squared (Hooker et al. 2019): :math:`\frac1n \sum_s M(x + \epsilon_s)^2`.

    :class:`SmoothGrad` with ``variant="squared"`` (its own registry entry for the CLI). "A
    Benchmark for Interpretability Methods in Deep Neural Networks", arXiv:1806.10758.
    """

    name = "smoothgrad_sq"
    default_variant = "squared"


@register
class VarGrad(SmoothGrad):
    r"""VarGrad (Adebayo et al. 2018): the variance of a gradient map over noisy copies.

    .. math:: \frac1n \sum_s M(x + \epsilon_s)^2 - \Big(\frac1n \sum_s M(x + \epsilon_s)\Big)^2

    :class:`SmoothGrad` with ``variant="vargrad"`` (its own registry entry for the CLI).
    "Local Explanation Methods for Deep Neural Networks Lack Sensitivity to Parameter Values",
    arXiv:1810.03307.
    """

    name = "vargrad"
    default_variant = "vargrad"


__all__ = ["SmoothGrad", "SmoothGradSquared", "VarGrad", "VARIANTS"]
