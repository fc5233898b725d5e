r"""DeepDream: amplify what a layer sees in a photo, octave by octave.

Algorithm (Mordvintsev, Olah & Tyka 2015, "Inceptionism: Going Deeper into Neural Networks";
the reference notebook's ``deepdream`` with octaves and detail transfer):

1. Build an image pyramid of ``octaves`` sizes, each ``octave_scale`` times the previous one.
2. Starting at the smallest size, for ``steps`` steps: shift the image by a random offset
   (``jitter``, undone after the step), compute :math:`g = \nabla_x\,\mathrm{objective}`, and take
   a step normalised by the gradient's mean magnitude,

   .. math:: x \leftarrow \mathrm{clip}_{[0,1]}\bigl(x + \mathrm{lr}\, g / \overline{|g|}\bigr)

3. Move to the next size: upsample the *detail* added so far (dream minus photo at this
   size) and add it to the photo at the next size, so the photo's own detail stays sharp.

The default objective is :func:`~flashtorch.activmax.objectives.layer` (mean squared
activation). Works on batches; the model is restored as in :func:`~flashtorch.activmax.render`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import progress as _report
from ..errors import InputError
from .objectives import LayerSpec, Objective, as_objective
from .objectives import layer as layer_objective
from .render import Normalize, _generator, _progress, _resolve_device, _Session


class DreamResult(NamedTuple):
    """What :func:`deepdream` returns.

    Attributes:
        image: the dream ``(B, 3, H, W)`` in ``[0, 1]`` at the photo's size.
        history: the objective per step and image ``(octaves * steps, B)`` on CPU.
        octaves: the dream at the end of each octave, smallest first.
    """

    image: Tensor
    history: Tensor
    octaves: list[Tensor]


def _as_images(image: Any, size: int | tuple[int, int] | None) -> Tensor:
    """A path/PIL image/array/tensor -> ``(B, 3, H, W)`` float in [0, 1]."""
    if isinstance(image, Tensor):
        x = image.detach()
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[1] != 3 or not torch.is_floating_point(x):
            raise InputError(
                f"image must be a float tensor (B, 3, H, W) or (3, H, W) in [0, 1], got "
                f"{tuple(x.shape)} {x.dtype}"
            )
        if x.min() < -1e-3 or x.max() > 1 + 1e-3:
            raise InputError(
                "image tensor must hold RGB values in [0, 1]; a normalised tensor "
                "(apply_transforms) must be denormalised first (flashtorch.utils.denormalize)"
            )
        x = x.clamp(0, 1).float()
    else:
        import numpy as np

        from ..utils.image import load_image

        arr = np.asarray(load_image(image), dtype=np.float32) / 255.0
        x = torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()
    if size is not None:
        hw = (size, size) if isinstance(size, int) else tuple(size)
        x = F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True)
    return x


def _octave_sizes(
    h: int, w: int, octaves: int, scale: float, min_size: int
) -> list[tuple[int, int]]:
    sizes = []
    for k in reversed(range(octaves)):
        s = (round(h / scale**k), round(w / scale**k))
        if min(s) >= min_size:
            sizes.append(s)
    return sizes or [(h, w)]


def deepdream(
    model: nn.Module,
    image: Any,
    objective: Objective | LayerSpec | Callable[[Any], Tensor],
    *,
    octaves: int = 4,
    octave_scale: float = 1.4,
    steps: int = 10,
    lr: float = 0.01,
    jitter: int = 32,
    size: int | tuple[int, int] | None = None,
    normalize: Normalize = "imagenet",
    seed: int | None = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
    min_size: int = 32,
    callback: Callable[[int, Tensor, Tensor], None] | None = None,
) -> DreamResult:
    """Dream on a photo: gradient ascent of ``objective`` over an octave pyramid.

    Args:
        model: the network (its device is used; state restored afterwards).
        image: a path, PIL image, numpy array, or a tensor ``(B, 3, H, W)`` / ``(3, H, W)`` of
            RGB values in ``[0, 1]``.
        objective: an Objective (``channel(layer, c)``, ``layer(l) + ...``) or a layer (module or
            dotted name) for the classic ``layer(l)`` objective.
        octaves: number of scales (octaves smaller than ``min_size`` pixels are skipped; one
            too small for the model raises :class:`~flashtorch.errors.InputError`).
        octave_scale: size ratio between consecutive octaves.
        steps: gradient steps per octave.
        lr: step size in ``[0, 1]`` RGB units per step, for a gradient normalised to mean
            magnitude 1 (0.01 ~ 2.5 grey levels of 255).
        jitter: maximal random shift in pixels (a roll, undone after the step).
        size: resize the photo first (int side or ``(H, W)``); default: keep its size.
        normalize: the model's input normalisation (see :func:`~flashtorch.activmax.render`).
        seed: seeds the shifts (``None``: random).
        device: must match the model's device (default: the model's).
        progress: show a tqdm progress bar. (Each step is also reported to
            :func:`flashtorch.progress.report_to`, whose callback may cancel the call.)
        min_size: smallest octave side in pixels.
        callback: ``callback(step, images, values)`` after each step.

    Returns:
        :class:`DreamResult` ``(image, history, octaves)``.

    Example:
        >>> dream = deepdream(model, "examples/images/coffee.jpg", "net.blocks.4", size=224)
        >>> dream.image.shape
        torch.Size([1, 3, 224, 224])
    """
    if isinstance(objective, (nn.Module, str)):
        obj = layer_objective(objective)
    else:
        obj = as_objective(objective)
    for name, v, lo in (("octaves", octaves, 1), ("steps", steps, 1), ("jitter", jitter, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise InputError(f"{name} must be an int >= {lo}, got {v!r}")
    if not octave_scale > 1.0:
        raise InputError(f"octave_scale must be > 1, got {octave_scale!r}")
    if not lr > 0:
        raise InputError(f"lr must be > 0, got {lr!r}")
    generator = _generator(seed)
    photo = _as_images(image, size)
    h, w = photo.shape[-2:]
    sizes = _octave_sizes(h, w, octaves, octave_scale, min_size)
    history: list[Tensor] = []
    snapshots: list[Tensor] = []
    with _Session(model, obj, normalize) as session:
        dev = _resolve_device(model, device)
        photo = photo.to(dev)
        bar = _progress(len(sizes) * steps, progress, "deepdream")
        detail = torch.zeros_like(photo)
        x = photo
        step = 0
        try:
            _report.report(0, len(sizes) * steps, "deepdream")
            for hw in sizes:
                base = F.interpolate(
                    photo, size=hw, mode="bilinear", align_corners=False, antialias=True
                )
                detail = F.interpolate(detail, size=hw, mode="bilinear", align_corners=False)
                x = (base + detail).clamp(0, 1)
                for _ in range(steps):
                    try:
                        x = _dream_step(session, x, lr, jitter, generator, history)
                    except (RuntimeError, InputError) as exc:
                        if "too small" not in str(exc):
                            raise
                        raise InputError(
                            f"the model cannot run on the {hw[0]} x {hw[1]} octave of this "
                            f"{h} x {w} photo ({exc}); use fewer octaves, a smaller "
                            "octave_scale, a larger min_size or a larger photo"
                        ) from exc
                    if callback is not None:
                        callback(step, x, history[-1])
                    step += 1
                    bar.update(1)
                    _report.report(step, len(sizes) * steps, "deepdream")
                detail = x - base
                snapshots.append(x.detach().clone())
        finally:
            bar.close()
    return DreamResult(x.detach(), torch.stack(history), snapshots)


def _dream_step(
    session: _Session,
    x: Tensor,
    lr: float,
    jitter: int,
    generator: torch.Generator,
    history: list[Tensor],
) -> Tensor:
    if jitter > 0:
        oy, ox = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=generator))
    else:
        oy = ox = 0
    shifted = torch.roll(x.detach(), shifts=(oy, ox), dims=(2, 3)).requires_grad_(True)
    with torch.enable_grad():
        values = session.evaluate(shifted, shifted)
        (grad,) = torch.autograd.grad(values.sum(), shifted)
    grad = torch.roll(grad, shifts=(-oy, -ox), dims=(2, 3))
    grad = grad / grad.abs().flatten(1).mean(1).clamp_min(1e-12).view(-1, 1, 1, 1)
    history.append(values.detach().to("cpu", torch.float32))
    return (x.detach() + lr * grad).clamp(0, 1)


__all__ = ["DreamResult", "deepdream"]
