"""A self-contained HTML report: inputs, top-5 classes, maps side by side, timings.

:func:`build_report` is a pure function from plain data (PNG bytes, names, numbers) to one HTML
string; :func:`write_report` writes it atomically. The page needs nothing but itself: every image
is a ``data:`` URI, the CSS is inline, there is no script, and a Content-Security-Policy forbids
any other load, so it opens offline, can be mailed as one file and never phones home. Every text
that comes from outside (file names, class names, the command line) is HTML-escaped.

The overlay helpers (:func:`overlay_rgb`, :func:`encode_png`) are shared with the ``flashtorch``
command, which writes the same overlays as PNG files.

Example:
    >>> from flashtorch.report import ImageEntry, MapPanel, Prediction, build_report
    >>> png = encode_png(np.zeros((8, 8, 3), dtype=np.uint8))
    >>> entry = ImageEntry("cat.jpg", png, [Prediction(281, "tabby", 0.9)],
    ...                    [MapPanel("guided", png, 0.12, "tabby (281)")])
    >>> html = build_report([entry], command="flashtorch report cat.jpg -o r.html")
    >>> html.startswith("<!DOCTYPE html>")
    True
"""

from __future__ import annotations

import base64
import datetime as _dt
import html as _html
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import Tensor

from . import scaling as _scaling
from .errors import InputError
from .plot._common import atomic_write_bytes
from .scaling import DEFAULT_PERCENTILE

# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def encode_png(array: np.ndarray) -> bytes:
    """Encode an ``(H, W, 3)`` or ``(H, W)`` ``uint8`` array as PNG bytes."""
    from PIL import Image

    arr = np.ascontiguousarray(array)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise InputError(
            f"encode_png expects an (H, W, 3) or (H, W) uint8 array, got {arr.dtype} "
            f"{tuple(arr.shape)}"
        )
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def image_rgb(image: Tensor) -> np.ndarray:
    """``(3, H, W)`` float image in [0, 1] -> ``(H, W, 3)`` ``uint8`` (clipped)."""
    if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise InputError(f"image must be a (3, H, W) tensor in [0, 1], got {shape}")
    arr = image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
    return np.round(arr * 255.0).astype(np.uint8)


def scale_map(saliency: Tensor, percentile: float = 99.0) -> Tensor:
    r"""Scale a 2-D map to [0, 1] for display, robust to a few extreme pixels.

    .. math:: \hat S = \text{clip}\Big(\frac{S - \min S}{q_p(S - \min S)}, 0, 1\Big)

    Kept for existing code: it is :func:`flashtorch.scaling.scale_maps` with
    ``how="percentile"`` (the one scaling of the figures, the report and the command line).
    """
    return _scaling.scale_maps(saliency, "percentile", percentile=percentile, per_image=False)


def reduce_map(saliency: Tensor) -> Tensor:
    """``(H, W)``, ``(1, H, W)`` or ``(C, H, W)`` map -> ``(H, W)`` (``max_c |S_c|``), float32."""
    sal = saliency.detach().float().cpu()
    if sal.dim() == 3:
        sal = sal[0] if sal.shape[0] == 1 else sal.abs().amax(0)
    return sal


def overlay_rgb(
    image: Tensor,
    saliency: Tensor,
    cmap: str = "jet",
    alpha: float = 0.75,
    percentile: float = DEFAULT_PERCENTILE,
    grayscale: bool = True,
    *,
    scale: str = "percentile",
    prescaled: bool = False,
) -> np.ndarray:
    r"""Blend a colour-mapped saliency map over an image, at the image's resolution.

    The map is scaled by :func:`flashtorch.scaling.scale_maps` (``scale``, ``percentile``;
    the same scaling as :mod:`flashtorch.plot`) to :math:`\hat S \in [0, 1]` and blended with a
    per-pixel opacity that grows with it, over a dimmed grey copy of the image (so the colours
    of the map never mix with the colours of the photo):

    .. math:: O = (1 - \alpha \hat S)\, B + \alpha \hat S\, \text{cmap}(\hat S),
              \qquad B = 0.2 + 0.6\, Y(I)

    with :math:`Y` the luma (ITU-R BT.601), or :math:`B = I` when ``grayscale=False``.
    Multi-channel maps are first reduced by ``max_c |S_c|`` (Simonyan et al. 2013).

    Args:
        image: ``(3, H, W)`` in [0, 1] (e.g. ``denormalize(x)[0]``).
        saliency: ``(H, W)``, ``(1, H, W)`` or ``(C, H, W)`` map of the same ``H, W``.
        cmap: a matplotlib colour map name.
        alpha: opacity of the map where it is highest, in [0, 1].
        percentile: values above this percentile get the top colour (100: plain min-max).
        grayscale: draw over a dimmed grey version of the image (default) or the image itself.
        scale: ``"percentile"`` (default), ``"minmax"``, ``"abs"`` or ``"signed"``; a signed
            map (in [-1, 1]) takes the colour ``cmap((s + 1) / 2)`` and the opacity
            ``alpha |s|`` (use a diverging ``cmap``).
        prescaled: ``saliency`` is already the output of ``scale_maps(..., scale)`` (e.g.
            scaled together with other images' maps, ``per_image=False``): drawn as it is.

    Returns:
        ``(H, W, 3)`` ``uint8`` array.
    """
    from matplotlib import colormaps

    base = image_rgb(image).astype(np.float32) / 255.0
    sal = reduce_map(saliency)
    if sal.dim() != 2 or tuple(sal.shape) != base.shape[:2]:
        raise InputError(
            f"saliency must be (H, W) or (C, H, W) with H, W = {base.shape[:2]}, got "
            f"{tuple(saliency.shape)}"
        )
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha}")
    _scaling.check_scaling(scale, percentile)
    try:
        colour_map = colormaps[cmap]
    except KeyError:
        raise InputError(f"unknown matplotlib colour map {cmap!r}") from None
    if grayscale:
        luma = base @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        base = np.repeat((0.2 + 0.6 * luma)[..., None], 3, axis=2)
    if prescaled:
        level = sal.clamp(-1.0 if scale == "signed" else 0.0, 1.0).numpy()
    else:
        level = _scaling.scale_maps(sal, scale, percentile=percentile, per_image=False).numpy()
    if scale == "signed":
        heat = colour_map((level + 1.0) / 2.0)[..., :3].astype(np.float32)
        level = np.abs(level)
    else:
        heat = colour_map(level)[..., :3].astype(np.float32)
    weight = (alpha * level)[..., None]
    out = (1.0 - weight) * base + weight * heat
    return np.round(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)


def data_uri(data: bytes, mime: str = "image/png") -> str:
    """``data:`` URI of some bytes (base64)."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


# --------------------------------------------------------------------------------------------
# The report's data
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    """One row of an image's top-k table."""

    index: int
    label: str
    probability: float


@dataclass(frozen=True)
class MapPanel:
    """One method's map for one image.

    Attributes:
        method: registry name of the method.
        image: the overlay as PNG bytes.
        seconds: wall-clock time of the method for this image.
        target: what was explained, e.g. ``"espresso (967)"``.
        note: optional extra caption text (layer, options).
    """

    method: str
    image: bytes
    seconds: float
    target: str = ""
    note: str = ""


@dataclass(frozen=True)
class ImageEntry:
    """Everything the report shows about one input image."""

    name: str
    image: bytes
    predictions: Sequence[Prediction]
    panels: Sequence[MapPanel] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------

_CSS = """
:root { --ink:#1d2430; --muted:#5b6675; --line:#dde2ea; --card:#ffffff; --bg:#f4f6f9;
        --accent:#2a62c9; }
* { box-sizing: border-box; }
html { font-size: 15px; }
body { margin: 0; background: var(--bg); color: var(--ink);
       font: 1rem/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; }
main { max-width: 1280px; margin: 0 auto; padding: 20px 24px 40px; }
header h1 { font-size: 1.5rem; margin: 0 0 4px; }
header .sub { color: var(--muted); margin: 0 0 12px; }
.meta { display: grid; grid-template-columns: minmax(260px, 1fr) minmax(260px, 1.4fr);
        gap: 16px; align-items: start; margin-bottom: 20px; }
.box { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
       padding: 12px 16px; }
.box h2 { font-size: 1rem; margin: 0 0 8px; }
dl.kv { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 0; }
dl.kv dt { color: var(--muted); }
dl.kv dd { margin: 0; overflow-wrap: anywhere; }
pre.cmd { margin: 8px 0 0; padding: 8px 10px; background: #10151d; color: #e8edf4;
          border-radius: 6px; white-space: pre-wrap; overflow-wrap: anywhere;
          font: 0.85rem/1.4 ui-monospace, "DejaVu Sans Mono", monospace; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 3px 8px 3px 0; border-bottom: 1px solid var(--line); }
th { color: var(--muted); font-weight: 600; font-size: 0.85rem; }
td.num, th.num { text-align: right; }
.note { color: var(--muted); font-size: 0.8rem; margin: 6px 0 0; }
.legend { display: flex; align-items: center; gap: 8px; color: var(--muted);
          font-size: 0.85rem; margin-top: 10px; }
.legend .bar { flex: 0 0 160px; height: 10px; border-radius: 3px; }
section.image { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
                padding: 14px 16px 16px; margin-bottom: 18px;
                display: grid; grid-template-columns: 260px 1fr; gap: 14px 20px; }
section.image h2 { grid-column: 1 / -1; font-size: 1.1rem; margin: 0;
                   overflow-wrap: anywhere; }
.input figure { margin: 0 0 10px; }
figure img { display: block; width: 100%; height: auto; border-radius: 6px;
             border: 1px solid var(--line); }
figcaption { font-size: 0.85rem; color: var(--muted); margin-top: 4px; }
figcaption b { color: var(--ink); font-weight: 600; }
figcaption .t { white-space: nowrap; }
.top5 { font-size: 0.9rem; }
.top5 td { vertical-align: top; }
.top5 .pbar { height: 4px; margin-top: 2px; background: var(--accent); border-radius: 2px; }
.top5 .idx { color: var(--muted); }
.panels { display: grid; grid-template-columns: repeat(auto-fill, minmax(160px, 1fr));
          gap: 14px; align-content: start; }
.panels figure { margin: 0; }
.empty { color: var(--muted); font-style: italic; }
footer { color: var(--muted); font-size: 0.8rem; margin-top: 24px; }
@media (max-width: 760px) {
  .meta, section.image { grid-template-columns: 1fr; }
  .input { max-width: 340px; }
}
"""

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _e(value: object) -> str:
    return _html.escape(str(value), quote=True)


def _seconds(value: float) -> str:
    if value < 1.0:
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f} s"


def _gradient(cmap: str, stops: int = 9) -> str:
    """A CSS ``linear-gradient`` that reproduces a matplotlib colour map."""
    from matplotlib import colormaps

    try:
        colour_map = colormaps[cmap]
    except KeyError:
        raise InputError(f"unknown matplotlib colour map {cmap!r}") from None
    colours = []
    for i in range(stops):
        r, g, b, _ = colour_map(i / (stops - 1))
        colours.append(f"rgb({round(r * 255)},{round(g * 255)},{round(b * 255)})")
    return f"linear-gradient(to right, {', '.join(colours)})"


def _timings_table(entries: Sequence[ImageEntry]) -> str:
    totals: dict[str, list[float]] = {}
    for entry in entries:
        for panel in entry.panels:
            totals.setdefault(panel.method, []).append(panel.seconds)
    if not totals:
        return '<p class="empty">No maps were computed.</p>'
    rows = "".join(
        f'<tr><td>{_e(method)}</td><td class="num">{len(times)}</td>'
        f'<td class="num">{_e(_seconds(sum(times) / len(times)))}</td>'
        f'<td class="num">{_e(_seconds(sum(times)))}</td></tr>'
        for method, times in totals.items()
    )
    return (
        '<table class="timings"><thead><tr><th>method</th><th class="num">images</th>'
        '<th class="num">per image</th><th class="num">total</th></tr></thead>'
        f"<tbody>{rows}</tbody></table>"
    )


def _top5(predictions: Sequence[Prediction]) -> str:
    if not predictions:
        return ""
    rows = []
    for rank, p in enumerate(predictions, 1):
        width = max(0.0, min(1.0, float(p.probability))) * 100
        rows.append(
            f'<tr><td class="num idx">{rank}</td>'
            f'<td>{_e(p.label)}<div class="pbar" style="width:{width:.1f}%"></div></td>'
            f'<td class="num idx">{int(p.index)}</td>'
            f'<td class="num">{p.probability * 100:.1f}%</td></tr>'
        )
    return (
        '<table class="top5"><thead><tr><th class="num">#</th><th>top-5 class</th>'
        '<th class="num">index</th><th class="num">prob.</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _panel(panel: MapPanel, image_name: str) -> str:
    alt = f"{panel.method} map of {image_name}"
    caption = [
        f'<b>{_e(panel.method)}</b> &middot; <span class="t">{_e(_seconds(panel.seconds))}</span>'
    ]
    if panel.target:
        caption.append(f"target: {_e(panel.target)}")
    if panel.note:
        caption.append(_e(panel.note))
    return (
        f'<figure><img src="{data_uri(panel.image)}" alt="{_e(alt)}">'
        f"<figcaption>{'<br>'.join(caption)}</figcaption></figure>"
    )


def _section(entry: ImageEntry, number: int) -> str:
    panels = "".join(_panel(p, entry.name) for p in entry.panels)
    if not panels:
        panels = '<p class="empty">No maps for this image.</p>'
    return (
        f'<section class="image" id="image-{number}"><h2>{_e(entry.name)}</h2>'
        '<div class="input"><figure>'
        f'<img src="{data_uri(entry.image)}" alt="input: {_e(entry.name)}">'
        "<figcaption>model input (resized, centre-cropped)</figcaption></figure>"
        f"{_top5(entry.predictions)}</div>"
        f'<div class="panels">{panels}</div></section>'
    )


def build_report(
    entries: Sequence[ImageEntry],
    *,
    command: str,
    title: str = "flashtorch report",
    details: Mapping[str, object] | None = None,
    cmap: str = "jet",
    generated: str | None = None,
    timing_note: str = "",
    extra_html: str = "",
) -> str:
    """Build the self-contained HTML report (a pure function of its arguments).

    Args:
        entries: one :class:`ImageEntry` per input image, in display order.
        command: the command line that made the report (shown verbatim, escaped).
        title: the page title.
        details: extra key/value rows for the run box (model, device, size...).
        cmap: the colour map the overlays use (drawn as a legend).
        generated: the timestamp text; default: now, local time, to the second.
        timing_note: a line under the timings table (how they were measured).
        extra_html: trusted HTML placed between the run box and the images (already escaped
            by the caller; e.g. the aggregate table of ``flashtorch report --run``).

    Returns:
        The HTML document as a string.
    """
    from . import __version__

    when = generated if generated is not None else _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    rows = {"flashtorch": __version__, "generated": when, "images": len(entries)}
    rows.update(dict(details or {}))
    kv = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows.items())
    note = f'<p class="note">{_e(timing_note)}</p>' if timing_note else ""
    sections = "".join(_section(entry, i) for i, entry in enumerate(entries, 1))
    if not sections:
        sections = '<p class="empty">No images.</p>'
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body><main>"
        f'<header><h1>{_e(title)}</h1><p class="sub">What the model looks at: each map is '
        "drawn over a grey copy of the image the model saw; the stronger the colour, the more "
        "the pixels matter for the target class (scale under Timings).</p>"
        "</header>"
        '<div class="meta"><div class="box"><h2>Run</h2>'
        f'<dl class="kv">{kv}</dl><pre class="cmd">{_e(command)}</pre></div>'
        f'<div class="box"><h2>Timings</h2>{_timings_table(entries)}{note}'
        f'<div class="legend"><span>low</span><span class="bar" '
        f'style="background:{_gradient(cmap)}"></span><span>high</span>'
        f"<span>({_e(cmap)}; each map scaled to its own range, top 1% saturated)</span>"
        "</div></div></div>\n"
        f"{extra_html}"
        f"{sections}\n"
        "<footer>Made by flashtorch. Self-contained: images are embedded, nothing is "
        "loaded from the network.</footer></main></body></html>\n"
    )


def write_report(path: str | os.PathLike[str], html: str) -> Path:
    """Write the report atomically (temporary file + rename), UTF-8; returns the path."""
    return atomic_write_bytes(path, html.encode("utf-8"))


__all__ = [
    "ImageEntry",
    "MapPanel",
    "Prediction",
    "build_report",
    "data_uri",
    "encode_png",
    "image_rgb",
    "overlay_rgb",
    "reduce_map",
    "scale_map",
    "write_report",
]
