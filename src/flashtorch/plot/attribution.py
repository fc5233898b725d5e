"""Side-by-side attribution figures: one image x many methods, many images x one method.

Every panel shows a map as an overlay on its (denormalised) input image, or alone. Maps with
several channels (gradients, Guided Grad-CAM) are collapsed to one with
:func:`flashtorch.reduce_channels` (``max_abs`` by default, the Simonyan et al. convention), maps
of another size than the image (raw low-resolution CAMs) are resized bilinearly, and the maps are
scaled for display by :func:`flashtorch.scaling.scale_maps` (by default each on its own, the
minimum to 0 and a high percentile to 1; ``per_image=False`` gives each method one scale over all
its images, so a weak map stays weak next to a strong one; ``scale`` picks min-max, percentile,
magnitude or signed scaling). matplotlib
is imported inside the functions (through :func:`~flashtorch.plot._common.new_figure`, never
pyplot): figures are headless and can be saved atomically with ``save_path``.

Example:
    >>> import torch, torchvision
    >>> import flashtorch.cam  # registers the CAM family
    >>> from flashtorch import attribute
    >>> from flashtorch.plot.attribution import attribution_grid
    >>> model = torchvision.models.resnet18()
    >>> x = torch.randn(2, 3, 64, 64)
    >>> results = {m: attribute(model, x, method=m) for m in ("guided", "gradcam")}
    >>> fig = attribution_grid(x, results)  # 2 rows (images) x 3 columns (input + 2 methods)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch.nn.functional as F
from torch import Tensor

from ..attribution import Attribution, reduce_channels
from ..errors import InputError
from ..scaling import DEFAULT_PERCENTILE, check_scaling
from ..utils.image import IMAGENET_MEAN, IMAGENET_STD
from ..utils.image import denormalize as _denormalize
from ._common import finish_figure, heat_rgba, new_figure, scaled_maps, to_image

Results = Union[Mapping[str, Union[Attribution, Tensor]], Sequence[Attribution], Attribution]


def _as_batch(images: Tensor) -> Tensor:
    if not isinstance(images, Tensor):
        raise InputError(f"images must be a tensor, got {type(images).__name__}")
    x = images.detach().cpu().float()
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise InputError(
            f"images must be (B, 3, H, W), (B, 1, H, W) or one (3, H, W) image, got "
            f"{tuple(images.shape)}"
        )
    return x


def _named_maps(results: Results) -> list[tuple[str, Tensor, Tensor | None]]:
    """``[(column title, maps (B, C, h, w), targets or None)]`` in the given order."""
    if isinstance(results, Attribution):
        items: list[tuple[str, Any]] = [(results.method, results)]
    elif isinstance(results, Mapping):
        items = [(str(k), v) for k, v in results.items()]
    elif isinstance(results, Sequence) and not isinstance(results, (str, bytes)):
        items = []
        seen: dict[str, int] = {}
        for r in results:
            if not isinstance(r, Attribution):
                raise InputError(
                    "a sequence of results must hold Attribution objects; pass a dict "
                    "{name: maps} for plain tensors"
                )
            seen[r.method] = seen.get(r.method, 0) + 1
            name = r.method if seen[r.method] == 1 else f"{r.method} ({seen[r.method]})"
            items.append((name, r))
    else:
        raise InputError(
            "results must be an Attribution, a sequence of them or a dict {name: Attribution "
            f"or maps}}, got {type(results).__name__}"
        )
    if not items:
        raise InputError("no results to plot: pass at least one Attribution or map")
    out = []
    for name, value in items:
        if isinstance(value, Attribution):
            maps, targets = value.maps, value.targets
        elif isinstance(value, Tensor):
            maps, targets = value, None
        else:
            raise InputError(
                f"result {name!r} must be an Attribution or a tensor of maps, got "
                f"{type(value).__name__}"
            )
        maps = maps.detach().cpu().float()
        if maps.dim() == 3:
            maps = maps.unsqueeze(1) if maps.shape[0] != 1 else maps.unsqueeze(0)
        if maps.dim() != 4:
            raise InputError(
                f"maps of {name!r} must be (B, C, H, W) or (B, H, W), got {tuple(maps.shape)}"
            )
        out.append((name, maps, None if targets is None else targets.detach().cpu()))
    return out


def display_maps(
    maps: Tensor,
    size: tuple[int, int],
    reduce: str = "max_abs",
    *,
    scale: str = "percentile",
    percentile: float = DEFAULT_PERCENTILE,
    per_image: bool = True,
) -> Tensor:
    """Maps ready to draw: one channel, resized to ``size``, scaled for display.

    The scaling is the one of the figures, the report and the command line
    (:func:`flashtorch.scaling.scale_maps`): by default the minimum maps to 0 and a high
    percentile to 1, so a few outlier pixels do not wash out the rest.

    Args:
        maps: ``(B, C, h, w)``.
        size: ``(H, W)`` of the images they belong to.
        reduce: channel reduction for ``C > 1`` (see :func:`flashtorch.reduce_channels`;
            ``"sum"`` keeps the sign for ``scale="signed"``).
        scale: ``"percentile"``, ``"minmax"``, ``"abs"`` or ``"signed"``.
        percentile: the percentile that gets the top colour.
        per_image: each image's map on its own scale (default), or one scale for the batch.

    Returns:
        ``(B, 1, H, W)`` float tensor in ``[0, 1]`` (``[-1, 1]`` for ``"signed"``; a constant
        map becomes zeros).
    """
    m = maps.detach().float()
    if m.shape[1] != 1:
        m = reduce_channels(m, reduce)
    if tuple(m.shape[-2:]) != tuple(size):
        m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
    return scaled_maps(m, scale, percentile, per_image)


def attribution_grid(
    images: Tensor,
    results: Results,
    *,
    overlay: bool = True,
    show_input: bool = True,
    methods_as_rows: bool = False,
    reduce: str = "max_abs",
    cmap: str = "jet",
    alpha: float = 0.7,
    denormalize: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    row_labels: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    panel_size: float = 2.5,
    title: str | None = None,
    save_path: str | os.PathLike | None = None,
    scale: str = "percentile",
    percentile: float = DEFAULT_PERCENTILE,
    per_image: bool = True,
) -> Any:
    """A grid of attribution maps: one row per image, one column per method (or transposed).

    Args:
        images: ``(B, 3, H, W)`` inputs as given to the model (normalised; see ``denormalize``),
            or one ``(3, H, W)`` image.
        results: an :class:`~flashtorch.attribution.Attribution`, a sequence of them (column
            titles are the method names), or a dict ``{title: Attribution or maps}`` with maps
            ``(B, C, h, w)``.
        overlay: draw each map over its image, with an opacity that grows with the map's value
            up to ``alpha`` (low values show the photo unchanged, as
            :func:`flashtorch.plot.overlay`); otherwise the map alone.
        show_input: add a first column (row) with the input images.
        methods_as_rows: one row per method and one column per image instead.
        reduce: channel reduction for multi-channel maps (``"max_abs"``, ``"sum"``, ...).
        cmap: colour map of the maps.
        alpha: largest opacity of the map in overlays.
        denormalize: undo ``(x - mean) / std`` before drawing the images; pass ``False`` for
            images already in ``[0, 1]``.
        mean: per-channel mean of the normalisation (ImageNet's by default).
        std: per-channel std of the normalisation.
        row_labels: one label per image (default: the explained class of the first result
            that has class targets, named with ``class_names`` when given).
        class_names: names of the classes, indexed by class (e.g.
            ``ImageNetIndex().names``).
        panel_size: size of one panel in inches.
        title: figure title.
        save_path: if given, the figure is also written there (format from the suffix).
        scale: how maps are scaled for display (:func:`flashtorch.scaling.scale_maps`):
            ``"percentile"`` (default), ``"minmax"``, ``"abs"`` or ``"signed"`` (in [-1, 1],
            for a diverging ``cmap`` such as ``"coolwarm"`` and ``reduce="sum"``).
        percentile: the percentile that gets the top colour.
        per_image: each map on its own scale (default: every map at full contrast), or
            ``False``: one scale per method over all the images, so that a map much weaker
            than the others of its column looks weaker.

    Returns:
        A matplotlib ``Figure`` (headless; displays in notebooks).

    Raises:
        InputError: malformed images or results, a batch size that does not match, or an
            unknown ``scale``.
    """
    check_scaling(scale, percentile)
    x = _as_batch(images)
    named = _named_maps(results)
    batch, size = x.shape[0], (x.shape[-2], x.shape[-1])
    for name, maps, _ in named:
        if maps.shape[0] != batch:
            raise InputError(
                f"{name!r} has maps for {maps.shape[0]} images but {batch} images were given"
            )
    if row_labels is not None and len(row_labels) != batch:
        raise InputError(f"got {len(row_labels)} row_labels for {batch} images")
    if denormalize and x.shape[1] == 3:
        x = _denormalize(x, mean, std)
    pictures = x.clamp(0, 1)
    shown = [
        (
            name,
            display_maps(
                maps, size, reduce, scale=scale, percentile=percentile, per_image=per_image
            ),
        )
        for name, maps, _ in named
    ]
    signed = scale == "signed"
    labels = list(row_labels) if row_labels is not None else _default_labels(named, class_names)

    columns = (["Input"] if show_input else []) + [name for name, _ in shown]
    rows, cols = (len(columns), batch) if methods_as_rows else (batch, len(columns))
    fig = new_figure((panel_size * cols, panel_size * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for i in range(batch):
        image = to_image(pictures[i])
        gray = "gray" if image.ndim == 2 else None
        for j, column in enumerate(columns):
            ax = axes[j][i] if methods_as_rows else axes[i][j]
            if show_input and j == 0:
                ax.imshow(image, cmap=gray)
            else:
                heat = shown[j - int(show_input)][1][i]
                if overlay:
                    ax.imshow(image, cmap=gray)
                    ax.imshow(heat_rgba(heat, cmap=cmap, alpha=alpha, signed=signed))
                else:
                    ax.imshow(heat[0].numpy(), cmap=cmap, vmin=-1.0 if signed else 0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            # method names label the first line of panels, image labels the first panel of lines
            method_label, image_label = (
                (ax.set_ylabel, ax.set_title) if methods_as_rows else (ax.set_title, ax.set_ylabel)
            )
            if i == 0:
                method_label(column)
            if j == 0 and labels:
                image_label(labels[i])
    return finish_figure(fig, title, save_path)


def _default_labels(
    named: list[tuple[str, Tensor, Tensor | None]], class_names: Sequence[str] | None
) -> list[str]:
    for _, _, targets in named:
        if targets is not None:
            out = []
            for t in targets.tolist():
                if class_names is not None and 0 <= t < len(class_names):
                    out.append(str(class_names[t]))
                else:
                    out.append(f"class {t}")
            return out
    return []


def compare_methods(image: Tensor, results: Results, **options: Any) -> Any:
    """One image, many methods: a single row ``input | method 1 | method 2 | ...``.

    Args:
        image: ``(3, H, W)`` or ``(1, 3, H, W)``.
        results: as for :func:`attribution_grid`, each holding maps for this one image.
        **options: any option of :func:`attribution_grid`.
    """
    x = _as_batch(image)
    if x.shape[0] != 1:
        raise InputError(
            f"compare_methods takes one image, got {x.shape[0]}; use attribution_grid for a batch"
        )
    return attribution_grid(x, results, **options)


def compare_images(images: Tensor, result: Attribution | Tensor, **options: Any) -> Any:
    """Many images, one method: the inputs on the first row, their maps on the second.

    Args:
        images: ``(B, 3, H, W)``.
        result: an :class:`~flashtorch.attribution.Attribution` or ``(B, C, h, w)`` maps.
        **options: any option of :func:`attribution_grid` (``methods_as_rows`` is set).
    """
    if isinstance(result, Tensor):
        result = {"map": result}  # type: ignore[assignment]
    elif not isinstance(result, Attribution):
        raise InputError(
            f"compare_images takes one Attribution or a tensor of maps, got {type(result).__name__}"
        )
    options.setdefault("methods_as_rows", True)
    return attribution_grid(images, result, **options)  # type: ignore[arg-type]


__all__ = ["attribution_grid", "compare_images", "compare_methods", "display_maps"]
