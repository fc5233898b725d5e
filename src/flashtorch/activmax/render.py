r"""The render loop: optimise a parametrised image so that an objective rises.

.. math::
    \theta^* = \arg\max_\theta \; \mathbb{E}_{t \sim T}\,
        \mathrm{objective}\bigl(f(\mathrm{normalize}(t(p_\theta)))\bigr)

with ``p_theta`` a parametrised image batch in ``[0, 1]`` (:mod:`.param`), ``t`` a random
differentiable transform drawn each step (:mod:`.transforms`), ``normalize`` the model's input
normalisation and ``f`` the model, whose parameters stay frozen (Erhan et al. 2009; Olah et al.
2017, "Feature Visualization", Distill; Lucid's ``render_vis``).

The user's model is left exactly as found: :func:`~flashtorch._surgery.preserved_state` puts the
training flags, ``requires_grad`` and ``.grad`` back, every hook is removed in ``finally``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .. import progress as _report
from .._surgery import HandleList, LayerRecorder, find_layer, model_device, preserved_state
from ..errors import InputError, LayerError
from .objectives import LayerSpec, Objective, as_objective
from .param import ImageParam, Size, as_param
from .transforms import Transform, as_transform

#: ImageNet mean and standard deviation (torchvision's preprocessing).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Normalize = str | tuple[Sequence[float], Sequence[float]] | Callable[[Tensor], Tensor] | None
OptimizerFactory = Callable[[Iterable[Tensor]], torch.optim.Optimizer]


class RenderResult(NamedTuple):
    """What :func:`render` returns.

    Attributes:
        images: the rendered images ``(B, 3, H, W)`` in ``[0, 1]``, detached.
        history: the objective's value for each image at each step ``(steps, B)`` (on CPU),
            measured on the transformed image the step optimised.
    """

    images: Tensor
    history: Tensor


class _StopForward(Exception):
    """Raised by a hook once every recorded layer has run: the rest of the net is not needed."""


def make_normalizer(normalize: Normalize) -> Callable[[Tensor], Tensor]:
    """Build the map from ``[0, 1]`` RGB to the model's input.

    Args:
        normalize: ``"imagenet"`` (mean/std of :data:`IMAGENET_MEAN`/:data:`IMAGENET_STD`), a
            ``(mean, std)`` pair, a callable, or ``None`` (the model takes ``[0, 1]`` RGB).
    """
    if normalize is None:
        return lambda x: x
    if isinstance(normalize, str):
        if normalize.lower() != "imagenet":
            raise InputError(
                f"normalize must be 'imagenet', (mean, std), a callable or None, got {normalize!r}"
            )
        normalize = (IMAGENET_MEAN, IMAGENET_STD)
    if callable(normalize):
        return normalize
    try:
        mean_v, std_v = normalize
        mean = torch.as_tensor(mean_v, dtype=torch.float32).reshape(1, -1, 1, 1)
        std = torch.as_tensor(std_v, dtype=torch.float32).reshape(1, -1, 1, 1)
    except (TypeError, ValueError) as exc:
        raise InputError(
            f"normalize must be (mean, std) with 3 values each, got {normalize!r}"
        ) from exc
    if mean.numel() != 3 or std.numel() != 3 or not torch.all(std > 0):
        raise InputError(
            f"normalize must be (mean, std) with 3 values each, std > 0; got {normalize!r}"
        )

    def fn(x: Tensor) -> Tensor:
        return (x - mean.to(x)) / std.to(x)

    return fn


class _Context:
    """One forward pass as objectives see it (see :class:`.objectives.RenderContext`)."""

    def __init__(self, session: _Session, images: Tensor, output: Tensor | None) -> None:
        self._session = session
        self.images = images
        self.output = output

    def layer_name(self, layer: LayerSpec) -> str:
        return self._session.name_of(layer)

    def activation(self, layer: LayerSpec) -> Tensor:
        return self._session.recorders[self._session.name_of(layer)].output


class _Session:
    """Model prepared for optimisation: frozen, eval mode, layers recorded; undone on exit.

    Args:
        model: the user's model.
        objective: what will be evaluated (its ``layers`` are recorded).
        normalize: see :func:`make_normalizer`.
        early_stop: stop the forward pass once the last needed layer ran (only when the
            objective does not read the model output; checked after one full pass).
    """

    def __init__(
        self, model: nn.Module, objective: Objective, normalize: Normalize, early_stop: bool = True
    ) -> None:
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.objective = objective
        self.normalizer = make_normalizer(normalize)
        self._names: dict[Any, str] = {}
        for spec in objective.layers:
            name, _ = find_layer(model, spec)
            self._names[self._key(spec)] = name
        self.recorders: dict[str, LayerRecorder] = {}
        self._handles = HandleList()
        self._early = early_stop and not objective.needs_output and bool(self._names)
        self._stop_armed = False
        self._state: Any = None

    @staticmethod
    def _key(spec: LayerSpec) -> Any:
        return ("m", id(spec)) if isinstance(spec, nn.Module) else ("s", spec)

    def name_of(self, spec: LayerSpec) -> str:
        name = self._names.get(self._key(spec))
        if name is None:
            raise LayerError(
                f"the objective read layer {spec if isinstance(spec, str) else type(spec).__name__}"
                " that it did not declare; pass layers=(...) to Objective(...)"
            )
        return name

    def __enter__(self) -> _Session:
        self._state = preserved_state(self.model)
        self._state.__enter__()
        try:
            for name in dict.fromkeys(self._names.values()):
                rec = LayerRecorder(self.model, name)
                rec.__enter__()
                self.recorders[name] = rec
            if self._early:
                for rec in self.recorders.values():
                    self._handles.append(rec.module.register_forward_hook(self._stop_hook))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._handles.remove()
            for rec in self.recorders.values():
                rec.__exit__(None, None, None)
            self.recorders.clear()
        finally:
            if self._state is not None:
                state, self._state = self._state, None
                state.__exit__(None, None, None)

    def _stop_hook(self, *_: Any) -> None:
        if self._stop_armed and all(rec.outputs for rec in self.recorders.values()):
            raise _StopForward

    def evaluate(self, images: Tensor, x: Tensor) -> Tensor:
        """Run the model on ``normalize(x)`` and return the objective ``(B,)``.

        Args:
            images: the untransformed images (what penalties such as TV see).
            x: the transformed images in ``[0, 1]`` fed to the model.
        """
        for rec in self.recorders.values():
            rec.reset()
        output: Any = None
        try:
            output = self.model(self.normalizer(x))
        except _StopForward:
            output = None
        except RuntimeError as exc:
            if "too small" not in str(exc):
                raise
            if not (self._early and all(rec.outputs for rec in self.recorders.values())):
                raise InputError(
                    f"the model cannot run on {tuple(x.shape[-2:])} images ({exc}); use a "
                    "larger image size"
                ) from exc
            # the layers the objective reads ran; only a later layer (which the objective
            # does not need) is too small for these images
            output = None
        if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
            output = output[0]
        values = self.objective(_Context(self, images, output))
        if self._early and not self._stop_armed:
            # The first pass ran the whole model: every recorded layer ran exactly once (the
            # recorder raised SharedModuleError otherwise), so later passes may stop early.
            self._stop_armed = True
        return values


def _generator(seed: int | None) -> torch.Generator:
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InputError(f"seed must be an int or None, got {seed!r}")
        g.manual_seed(seed)
    return g


def _resolve_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    found = model_device(model)
    if device is None:
        return found
    dev = torch.device(device)
    if dev.type != found.type or (
        dev.index is not None and found.index is not None and dev.index != found.index
    ):
        raise InputError(
            f"device {dev} differs from the model's device {found}; move the model first "
            f"(model.to({str(dev)!r})) or leave device=None"
        )
    return found


def _progress(total: int, enabled: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, leave=False)


def render(
    model: nn.Module,
    objective: Objective | Callable[[Any], Tensor],
    param: ImageParam | Size | None = None,
    transforms: Transform | Iterable[Transform] | str | None = "standard",
    steps: int = 256,
    optimizer: OptimizerFactory | None = None,
    seed: int | None = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
    *,
    lr: float = 0.05,
    normalize: Normalize = "imagenet",
    callback: Callable[[int, Tensor, Tensor], None] | None = None,
) -> RenderResult:
    """Render images that maximise ``objective`` (feature visualisation).

    Each step: ``images = param()``; ``x = transforms(images)``; ``values = objective(model(
    normalize(x)))``; ascend ``sum(values)``. The model's parameters are frozen for the call and
    its state (train flags, ``requires_grad``, ``.grad``, hooks) is restored afterwards.

    Args:
        model: any ``nn.Module`` classifier or feature extractor (its device is used).
        objective: an :class:`~flashtorch.activmax.objectives.Objective` such as
            ``channel("blocks.3", 5) - 1e-3 * total_variation()``, or ``fn(ctx) -> (B,)``.
        param: an :class:`~flashtorch.activmax.param.ImageParam`, or an image size (int or
            ``(H, W)``) for Lucid's ``fft -> decorrelate -> sigmoid`` image with one image per
            index of the objective (default 224 px).
        transforms: ``"standard"`` (Lucid's pad/jitter/scale/rotate), ``None``, or transforms
            ``t(x, generator)``.
        steps: number of optimisation steps.
        optimizer: ``factory(params) -> torch.optim.Optimizer``; default Adam with ``lr``.
        seed: seeds the one ``torch.Generator`` used for initial noise and every transform
            (``None``: random). Same seed, same device -> same images.
        device: must match the model's device (default: the model's device).
        progress: show a tqdm progress bar. (Each step is also reported to
            :func:`flashtorch.progress.report_to`, whose callback may cancel the call.)
        lr: Adam's learning rate when ``optimizer`` is None (Lucid's 0.05).
        normalize: the model's input normalisation: ``"imagenet"`` (default), ``(mean, std)``, a
            callable, or ``None`` for models that take ``[0, 1]`` RGB.
        callback: ``callback(step, images, values)`` after each step, with the images after the
            update and the objective values before it (e.g. to keep snapshots).

    Returns:
        :class:`RenderResult` ``(images, history)``: images ``(B, 3, H, W)`` in ``[0, 1]`` and
        the objective per step and image ``(steps, B)``.

    Raises:
        LayerError: a layer of the objective is not in the model.
        InputError: a channel or position is out of range (the message gives the valid range),
            or the batch does not match the objective's list of indices.
        TargetError: a class index is out of range.

    Example:
        >>> from flashtorch.activmax import render, channel
        >>> images, history = render(model, channel("features.8", [0, 1, 2, 3]), param=128,
        ...                          steps=128, progress=False)
    """
    obj = as_objective(objective)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be a positive int, got {steps!r}")
    generator = _generator(seed)
    transform = as_transform(transforms)
    p = as_param(param, obj.batch or 1)
    with _Session(model, obj, normalize) as session:
        dev = _resolve_device(model, device)
        p.initialize(generator, dev)
        params = [t for t in p.parameters() if t.requires_grad]
        opt = (optimizer or (lambda ps: torch.optim.Adam(ps, lr=lr)))(params)
        history: list[Tensor] = []
        bar = _progress(steps, progress, "render")
        try:
            _report.report(0, steps, "render")
            with torch.enable_grad():
                for step in range(steps):
                    opt.zero_grad(set_to_none=True)
                    images = p()
                    values = session.evaluate(images, transform(images, generator))
                    (-values.sum()).backward()
                    opt.step()
                    history.append(values.detach().to("cpu", torch.float32))
                    if callback is not None:
                        with torch.no_grad():
                            callback(step, p().detach(), values.detach())
                    bar.update(1)
                    _report.report(step + 1, steps, "render")
                    if step % 16 == 0 or step == steps - 1:
                        bar.set_postfix(objective=f"{history[-1].mean().item():.3g}")
        finally:
            bar.close()
        with torch.no_grad():
            final = p().detach().clamp(0, 1)
    return RenderResult(final, torch.stack(history))


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RenderResult",
    "make_normalizer",
    "render",
]
