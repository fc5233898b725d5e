"""The page's feature visualisation, without gradio: a layer's channels or a class, rendered.

:func:`render_features` runs :func:`flashtorch.activmax.render` (Fourier-parametrised,
colour-decorrelated images optimised through random pad/jitter/scale/rotate; Olah et al. 2017,
"Feature Visualization", Distill) on one of an :class:`~flashtorch.app.core.Explainer`'s
models, as ``flashtorch activmax`` does: ``channel(layer, channels)`` renders one image per
channel in one batch, ``class_logit(c)`` one image of a class. Each step is reported to
:func:`flashtorch.progress.report_to` (the page's progress bar and its **Stop** button).
Everything it refuses raises a :class:`~flashtorch.errors.FlashTorchError` whose message is
what the page shows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError, LayerError
from .core import Explainer, ModelEntry, parse_class_choice

#: Optimisation steps the page starts with (a few seconds on two CPU cores at 128 px).
DEFAULT_STEPS = 48
#: Side of the rendered images the page starts with, in pixels.
DEFAULT_SIZE = 128
#: The channels the page starts with.
DEFAULT_CHANNELS = "0-3"
#: Limits of one render on the page.
MAX_STEPS = 4096
MIN_SIZE, MAX_SIZE = 32, 512
MAX_CHANNELS = 16


@dataclass
class FeatureImage:
    """One rendered image: what it maximises, the image, the objective's final value."""

    label: str
    image: np.ndarray  # (H, W, 3) uint8
    objective: float
    png_path: Path | None = None


@dataclass
class FeatureResult:
    """What one click of **Render** gives."""

    model: str
    layer: str | None  # None: a class was rendered
    steps: int
    size: int
    seconds: float
    images: list[FeatureImage] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the page: how many images of what, steps, size, time."""
        what = f"layer {self.layer}" if self.layer else "the class"
        n = len(self.images)
        return (
            f"{n} image{'s' * (n != 1)} of {what} ({self.steps} steps, {self.size} px, "
            f"{self.seconds:.1f} s)"
        )


def conv_layers(explainer: Explainer, model: str | None) -> list[tuple[str, int]]:
    """The convolutional layers of ``model`` and their channel counts, in forward order.

    A layer counts when it is a ``torch.nn`` convolution (or a subclass, such as timm's
    ``Conv2dSame``) that outputs a ``(B, C, H, W)`` map (one forward pass of
    :func:`flashtorch.models.list_layers` on zeros).
    """
    from torch.nn.modules.conv import _ConvNd

    from ..models import list_layers

    entry = explainer.entry(model)
    convs = {name for name, m in entry.model.named_modules() if isinstance(m, _ConvNd)}
    rows = list_layers(entry.model, (1, 3, entry.size, entry.size))
    return [
        (name, int(shape[1])) for name, _kind, shape in rows if name in convs and len(shape) == 4
    ]


def default_conv_layer(layers: list[tuple[str, int]]) -> str | None:
    """A late convolutional layer: the one three quarters of the way through the network.

    (The last ones, 1x1 projections of the head, give less readable images.)
    """
    if not layers:
        return None
    return layers[round(0.75 * (len(layers) - 1))][0]


def parse_channel_list(text: str | int | None, count: int | None = None) -> list[int]:
    """``"0-3"``, ``"5"``, ``"1, 4, 9"`` or ``"0-3, 8"`` -> channel indices (duplicates dropped).

    Args:
        text: the channels as typed on the page.
        count: the layer's number of channels (indices are checked against it).

    Raises:
        InputError: not a list of indices and ranges, an empty range, an index out of range,
            or more than :data:`MAX_CHANNELS` channels.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    if not isinstance(text, str) or not text.strip():
        raise InputError("channels: write indices like 0-3, 5 or 1,4,9")
    picked: list[int] = []
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        lo_text, dash, hi_text = part.partition("-")
        if not lo_text.strip().isdigit() or (dash and not hi_text.strip().isdigit()):
            raise InputError(f"channels {text!r}: write indices like 0-3, 5 or 1,4,9")
        lo = int(lo_text)
        hi = int(hi_text) if dash else lo
        if hi < lo:
            raise InputError(f"channels {text!r}: the range {part} is empty; write LOW-HIGH")
        if hi - lo >= MAX_CHANNELS or len(picked) > MAX_CHANNELS:
            raise InputError(f"channels {text!r}: at most {MAX_CHANNELS} channels per render")
        picked.extend(c for c in range(lo, hi + 1) if c not in picked)
    if not picked:
        raise InputError("channels: write indices like 0-3, 5 or 1,4,9")
    if len(picked) > MAX_CHANNELS:
        raise InputError(
            f"channels {text!r} selects {len(picked)} channels; at most {MAX_CHANNELS} per render"
        )
    if count is not None:
        bad = [c for c in picked if c >= count]
        if bad:
            raise InputError(
                f"channel {bad[0]} is out of range: the layer has {count} channels (0..{count - 1})"
            )
    return picked


def _check_int(value: object, name: str, lo: int, hi: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InputError(f"{name} must be a whole number from {lo} to {hi}, got {value!r}")
    return value


def render_features(
    explainer: Explainer,
    model: str | None = None,
    layer: str | None = None,
    channels: str | int | None = DEFAULT_CHANNELS,
    target: str | int | None = None,
    *,
    steps: int = DEFAULT_STEPS,
    size: int = DEFAULT_SIZE,
    seed: int = 0,
    write_files: bool = True,
) -> FeatureResult:
    """Render what a layer's channels (or a class) respond to, for the page.

    The objective is ``channel(layer, channels)`` (one image per channel, in one batch) or,
    when ``target`` names a class, ``class_logit(target)`` (one image); the model's own input
    normalisation is used and its state is restored afterwards (:func:`~flashtorch.activmax.
    render`). Each step is reported to :func:`flashtorch.progress.report_to` as
    ``(step, steps, "render")``, whose callback may cancel the render
    (:class:`~flashtorch.errors.Cancelled` goes up to the caller).

    Args:
        explainer: the models of the command line.
        model: one of :attr:`~flashtorch.app.core.Explainer.model_names` (``None``: the default).
        layer: a layer of :func:`conv_layers` (``None`` or ``""``: :func:`default_conv_layer`);
            ignored for a class.
        channels: the channels as typed (:func:`parse_channel_list`); ignored for a class.
        target: a class (``"tabby (281)"``, ``281``...) to render instead of channels, or
            ``None``.
        steps: optimisation steps (1 to :data:`MAX_STEPS`).
        size: side of the images in pixels (:data:`MIN_SIZE` to :data:`MAX_SIZE`).
        seed: seeds the initial image and the transforms (same seed, same images).
        write_files: write each image as a PNG for download.

    Returns:
        A :class:`FeatureResult`.

    Raises:
        InputError: an unknown model, bad channels, steps or size.
        LayerError: a layer that is not one of :func:`conv_layers`.
        TargetError: an unknown class.
        Cancelled: the progress callback stopped the render.
    """
    from ..activmax import channel, class_logit, render

    entry = explainer.entry(model)
    steps = _check_int(steps, "steps", 1, MAX_STEPS)
    size = _check_int(size, "size", MIN_SIZE, MAX_SIZE)
    index = parse_class_choice(entry, target)
    labels: list[str]
    if index is not None:
        objective = class_logit(index)
        labels = [_label(entry, index)]
        layer_name = None
    else:
        layers = dict(conv_layers(explainer, entry.name))
        layer_name = str(layer) if layer else default_conv_layer(list(layers.items()))
        if layer_name is None:
            raise LayerError(f"{entry.name} has no convolutional layer to visualise")
        if layer_name not in layers:
            raise LayerError(
                f"unknown layer {layer_name!r} for {entry.name}; pick a convolutional layer "
                "from the list"
            )
        picked = parse_channel_list(channels, layers[layer_name])
        objective = channel(layer_name, picked if len(picked) > 1 else picked[0])
        labels = [f"{layer_name} channel {c}" for c in picked]
    t0 = time.perf_counter()
    result = render(
        entry.model,
        objective,
        param=size,
        steps=steps,
        seed=int(seed),
        progress=False,
        normalize=(entry.mean, entry.std),
    )
    seconds = time.perf_counter() - t0
    images = result.images.detach().float().cpu().clamp(0, 1)
    final = result.history[-1].tolist()
    out = FeatureResult(entry.name, layer_name, steps, size, seconds)
    for i, label in enumerate(labels):
        rgb = np.round(images[i].permute(1, 2, 0).numpy() * 255.0).astype(np.uint8)
        out.images.append(FeatureImage(label, rgb, float(final[i])))
    if write_files:
        _write(explainer, out)
    return out


def _label(entry: ModelEntry, index: int) -> str:
    names = entry.class_names
    if names is not None and 0 <= index < len(names):
        return f"class {names[index]} ({index})"
    return f"class {index}"


def _write(explainer: Explainer, result: FeatureResult) -> None:
    """One PNG per image, in the explainer's numbered result folders (the latest kept)."""
    from ..plot._common import atomic_write_bytes
    from ..report import encode_png
    from .core import KEEP_RESULTS

    with explainer._lock:  # the explain results' counter: one folder per click, either kind
        explainer._count += 1
        folder = explainer.out_dir / f"{explainer._count:05d}"
        stale = explainer.out_dir / f"{explainer._count - KEEP_RESULTS:05d}"
    folder.mkdir(parents=True, exist_ok=True)
    if stale.is_dir():
        for file in stale.iterdir():
            file.unlink(missing_ok=True)
        stale.rmdir()
    for item in result.images:
        stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in item.label)[:80]
        item.png_path = atomic_write_bytes(folder / f"fv_{stem}.png", encode_png(item.image))


def class_menu(entry: ModelEntry) -> list[str]:
    """The class menu of the feature visualisation tab: every class as ``"name (index)"``."""
    from .core import class_choices

    return class_choices(entry)[1:]


__all__ = [
    "DEFAULT_CHANNELS",
    "DEFAULT_SIZE",
    "DEFAULT_STEPS",
    "MAX_CHANNELS",
    "MAX_SIZE",
    "MAX_STEPS",
    "MIN_SIZE",
    "FeatureImage",
    "FeatureResult",
    "class_menu",
    "conv_layers",
    "default_conv_layer",
    "parse_channel_list",
    "render_features",
]
