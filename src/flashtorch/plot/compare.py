"""Side-by-side maps of several models on the same images (the talk's transfer-learning demo).

:func:`compare_models` explains each model's decision with each method and lays the overlays
out in one grid: one row per image, one column per (method, model) pair, grouped by method so
the models' maps of one method sit next to each other. With ground-truth ``masks`` each panel
outlines the region, marks the map's maximum (the pointing game's point: a filled marker for a
hit, hollow for a miss) and shows the energy-based pointing-game score.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._targets import Target
from ..attribution import Attribution
from ..errors import InputError
from ..scaling import DEFAULT_PERCENTILE, check_scaling
from ..utils.image import IMAGENET_MEAN, IMAGENET_STD, denormalize
from ._common import finish_figure, heat_rgba, new_figure, scaled_maps, to_image


def _per_model(value: Any, models: Mapping[str, nn.Module], what: str) -> dict[str, Any]:
    if isinstance(value, Mapping) and set(value) <= set(models) and value:
        missing = set(models) - set(value)
        if missing:
            raise InputError(f"{what} is a dict but has no entry for {sorted(missing)}")
        return dict(value)
    return {name: value for name in models}


def _label(index: int, names: Sequence[str] | None) -> str:
    if names is not None and 0 <= index < len(names):
        return str(names[index])
    return str(index)


def model_maps(
    models: Mapping[str, nn.Module],
    inputs: Tensor,
    target: Target | Mapping[str, Target] = None,
    methods: Sequence[str] = ("gradcam",),
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[tuple[str, str], Attribution]:
    """Attributions of every (model, method) pair for the same inputs.

    Args:
        models: ``{name: model}``.
        inputs: ``(B, C, H, W)`` normalised images.
        target: one target for all models, or ``{model name: target}`` (models with different
            classes - a pretrained ImageNet model and its fine-tuned copy - need their own;
            ``None`` explains each model's prediction).
        methods: registry names.
        options: ``{method: {option: value}}`` passed to the methods.

    Returns:
        ``{(model name, method): Attribution}``.
    """
    from ..api import attribute

    if not models:
        raise InputError("models must be a non-empty {name: model} dict")
    if isinstance(methods, str):
        methods = [methods]
    if not methods:
        raise InputError(
            "methods must name at least one method (see flashtorch.available_methods())"
        )
    targets = _per_model(target, models, "target")
    opts = dict(options or {})
    out: dict[tuple[str, str], Attribution] = {}
    for method in methods:
        for name, model in models.items():
            out[(name, method)] = attribute(
                model, inputs, target=targets[name], method=method, **dict(opts.get(method, {}))
            )
    return out


def compare_models(
    models: Mapping[str, nn.Module],
    inputs: Tensor,
    target: Target | Mapping[str, Target] = None,
    methods: Sequence[str] = ("gradcam",),
    *,
    masks: Tensor | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    class_names: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
    results: Mapping[tuple[str, str], Attribution] | None = None,
    reduce: str = "max_abs",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    cmap: str = "jet",
    alpha: float = 0.7,
    panel_size: float = 2.2,
    title: str | None = None,
    save_path: str | os.PathLike | None = None,
    dpi: int = 100,
    scale: str = "percentile",
    percentile: float = DEFAULT_PERCENTILE,
    per_image: bool = True,
) -> Any:
    """Show several models' maps for the same images side by side.

    Args:
        models: ``{name: model}``, e.g. ``{"pretrained": m0, "fine-tuned": m1}``.
        inputs: ``(B, 3, H, W)`` normalised images (one row each).
        target: one target for all models or ``{model name: target}`` (see :func:`model_maps`).
        methods: registry names; one column per method and model.
        masks: optional ground truth ``(B, [1,] H, W)``: outlined, with the pointing-game point
            and the energy score on every panel.
        options: ``{method: {option: value}}`` for the methods.
        class_names: names of the classes, for all models or ``{model name: names}``, used to
            label the predictions.
        results: precomputed ``{(model name, method): Attribution}`` (e.g. from
            :func:`model_maps`) to draw instead of recomputing.
        reduce: channel reduction of multi-channel maps.
        mean: the normalisation mean of ``inputs`` (for display).
        std: the normalisation std of ``inputs``.
        cmap: colour map of the heat maps.
        alpha: maximal opacity of the heat maps.
        panel_size: side of one panel in inches.
        title: optional figure title.
        save_path: if given, the figure is also written there (atomically).
        dpi: resolution of the saved file.
        scale: how maps are scaled for display (:func:`flashtorch.scaling.scale_maps`:
            ``"percentile"``, ``"minmax"``, ``"abs"``, ``"signed"``).
        percentile: the percentile that gets the top colour.
        per_image: each panel on its own scale (default), or one scale per column (model and
            method) over all the images, so a weak map stays weak.

    Returns:
        A matplotlib ``Figure`` (headless).
    """
    check_scaling(scale, percentile)
    from ..metrics.localisation import energy_pointing_game, pointing_game

    if not isinstance(inputs, Tensor) or inputs.dim() != 4:
        raise InputError(
            f"inputs must be a (B, C, H, W) tensor, got {getattr(inputs, 'shape', inputs)}"
        )
    if isinstance(methods, str):
        methods = [methods]
    maps = (
        dict(results)
        if results is not None
        else model_maps(models, inputs, target, methods, options)
    )
    for name in models:
        for method in methods:
            if (name, method) not in maps:
                raise InputError(f"results has no entry for ({name!r}, {method!r})")
    names = (
        _per_model(class_names, models, "class_names")
        if isinstance(class_names, Mapping)
        else {n: class_names for n in models}
    )
    batch, _, h, w = inputs.shape
    gt = None
    if masks is not None:
        gt = (masks.unsqueeze(1) if masks.dim() == 3 else masks).detach().cpu().bool()
        if gt.shape != (batch, 1, h, w):
            raise InputError(
                f"masks must be (B, [1,] H, W) = {(batch, 1, h, w)}, got {tuple(masks.shape)}"
            )

    images = denormalize(inputs.detach().cpu(), mean, std).clamp(0, 1)
    columns = [(method, name) for method in methods for name in models]
    fig = new_figure((panel_size * (1 + len(columns)), panel_size * batch * 1.22))
    axes = fig.subplots(batch, 1 + len(columns), squeeze=False)
    for r in range(batch):
        ax = axes[r][0]
        ax.imshow(to_image(images[r]))
        if gt is not None:
            ax.contour(gt[r, 0].float().numpy(), levels=[0.5], colors="white", linewidths=1.0)
        ax.set_axis_off()
        if r == 0:
            ax.set_title("input", fontsize=9)
        for c, (method, name) in enumerate(columns, start=1):
            result = maps[(name, method)].cpu()
            single = result.maps if result.maps.shape[1] == 1 else result.reduce(reduce)
            if tuple(single.shape[-2:]) != (h, w):
                single = torch.nn.functional.interpolate(
                    single, size=(h, w), mode="bilinear", align_corners=False
                )
            level = scaled_maps(
                single if not per_image else single[r, 0], scale, percentile, per_image=False
            )
            level = level[r, 0] if not per_image else level
            ax = axes[r][c]
            ax.imshow(to_image(images[r]))
            ax.imshow(heat_rgba(level, cmap=cmap, alpha=alpha, signed=scale == "signed"))
            label = (
                ""
                if result.predicted is None
                else f"pred: {_label(int(result.predicted[r]), names[name])}"
            )
            if gt is not None:
                ax.contour(gt[r, 0].float().numpy(), levels=[0.5], colors="white", linewidths=1.0)
                hit = float(pointing_game(single[r : r + 1], gt[r : r + 1]))
                energy = float(energy_pointing_game(single[r : r + 1], gt[r : r + 1]))
                peak = int(single[r, 0].flatten().argmax())
                py, px = divmod(peak, w)
                ax.plot(
                    [px],
                    [py],
                    marker="o",
                    markersize=7,
                    markeredgecolor="white",
                    markerfacecolor="white" if hit >= 0.5 else "none",
                    markeredgewidth=1.5,
                )
                label += f"\nenergy {energy:.2f}"
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            ax.set_xlabel(label, fontsize=7)
            if r == 0:
                ax.set_title(f"{method}\n{name}", fontsize=9)
    return finish_figure(fig, title, save_path, dpi=dpi)


__all__ = ["compare_models", "model_maps"]
