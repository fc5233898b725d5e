"""``flashtorch report --run DIR``: a run as one self-contained HTML page.

An aggregate table over every row (per method: images, seconds per image, mean deletion and
insertion AUC where computed; errors listed), then a *sample* - the images where the model was
most and least confident and where the methods disagreed most - drawn with
:func:`flashtorch.report.build_report`. The page's size depends on the sample, not on the run:
at most :data:`SAMPLE_BUDGET` pictures of at most :data:`THUMB` pixels a side.
"""

from __future__ import annotations

import html as _html
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .reader import Run, open_run

#: Most pictures (inputs and maps) the sample holds.
SAMPLE_BUDGET = 36
#: Longest side of a picture in the page, pixels.
THUMB = 128


def _e(value: object) -> str:
    return _html.escape(str(value), quote=True)


def _mean(values: Any) -> float:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else math.nan


def _fmt(value: float, digits: int = 3) -> str:
    return "-" if not math.isfinite(value) else f"{value:.{digits}f}"


def aggregate_html(run: Run) -> str:
    """The aggregate table (per method) and the error list, as HTML."""
    frame = run.manifest
    ok = frame[frame["status"] == "ok"]
    metrics = run.settings.get("metrics", [])
    head = "".join(f'<th class="num">{_e(m)} AUC</th>' for m in metrics)
    rows = []
    for method in run.methods:
        secs = _mean(ok.get(f"seconds_{method}", []))
        cells = "".join(
            f'<td class="num">{_fmt(_mean(ok.get(f"{m}_{method}", [])))}</td>' for m in metrics
        )
        rows.append(
            f'<tr><td>{_e(method)}</td><td class="num">{len(ok)}</td>'
            f'<td class="num">{_fmt(secs * 1000, 1)} ms</td>{cells}</tr>'
        )
    counts = frame["status"].value_counts().to_dict()
    summary = ", ".join(f"{int(v)} {_e(k)}" for k, v in sorted(counts.items()))
    errors = frame[frame["status"] == "error"]
    err_items = "".join(
        f"<li><b>{_e(r.path)}</b>: {_e(r.error)}</li>" for r in errors.head(10).itertuples()
    )
    more = f"<li>... and {len(errors) - 10} more</li>" if len(errors) > 10 else ""
    err_html = f'<h2>Errors</h2><ul class="errors">{err_items}{more}</ul>' if len(errors) else ""
    agreement = _mean(ok.get("agreement", []))
    agree = (
        f'<p class="note">Mean agreement between methods (Spearman correlation of the '
        f"maps): {_fmt(agreement)}.</p>"
        if math.isfinite(agreement)
        else ""
    )
    note = "Deletion: lower is better; insertion: higher is better. " if metrics else ""
    return (
        '<div class="box" style="margin-bottom:20px"><h2>Aggregate over the run</h2>'
        f"<p>{len(frame)} images: {summary}.</p>"
        '<table class="aggregate"><thead><tr><th>method</th><th class="num">images</th>'
        f'<th class="num">seconds / image</th>{head}</tr></thead><tbody>{"".join(rows)}'
        f'</tbody></table><p class="note">{note}Seconds: wall-clock per image within its '
        f"batch.</p>{agree}{err_html}</div>\n"
    )


def pick_sample(run: Run, per_group: int | None = None) -> list[tuple[str, int]]:
    """``(group, index)`` of the images to show: most/least confident, most disagreement."""
    frame = run.manifest
    ok = frame[(frame["status"] == "ok") & np.isfinite(frame["score"].astype(float))]
    if per_group is None:
        per_group = max(1, min(6, SAMPLE_BUDGET // (3 * (1 + len(run.methods)))))
    groups: list[tuple[str, Any]] = [
        ("most confident", ok.sort_values(["score", "index"], ascending=[False, True])),
        ("least confident", ok.sort_values(["score", "index"], ascending=[True, True])),
    ]
    if len(run.methods) > 1:
        finite = ok[np.isfinite(ok["agreement"].astype(float))]
        groups.append(
            (
                "methods disagree most",
                finite.sort_values(["agreement", "index"], ascending=[True, True]),
            )
        )
    picked: list[tuple[str, int]] = []
    seen: set[int] = set()
    for name, ordered in groups:
        taken = 0
        for index in ordered["index"]:
            if taken == per_group:
                break
            if int(index) in seen:
                continue
            seen.add(int(index))
            picked.append((name, int(index)))
            taken += 1
    return picked


def _input_image(run: Run, path: str, shape: Sequence[int]) -> torch.Tensor | None:
    """The model's input picture ``(3, H, W)`` in [0, 1], re-read from its file if it can be."""
    from ..utils.image import _resize_crop, load_image

    location = run.settings.get("location")
    kind = run.settings.get("source", {}).get("kind")
    if not location or kind not in ("folder", "list"):
        return None
    base = Path(location) if kind == "folder" else Path(location).parent
    file = Path(path) if Path(path).is_absolute() else base / path
    try:
        pil = _resize_crop(load_image(file), int(shape[1]))
    except Exception:
        return None
    arr = np.asarray(pil, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)


def _thumb(array: np.ndarray) -> bytes:
    from PIL import Image

    from ..report import encode_png

    image = Image.fromarray(array)
    if max(image.size) > THUMB:
        image.thumbnail((THUMB, THUMB), Image.Resampling.LANCZOS)
    return encode_png(np.asarray(image))


def build_run_report(
    path: str | os.PathLike[str],
    *,
    command: str,
    title: str,
    cmap: str = "jet",
    alpha: float = 0.75,
    per_group: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """The HTML report of the run in ``path`` (see the module docstring).

    ``path`` may be an fsspec URL, with ``storage_options`` for its file system.
    """
    from ..report import ImageEntry, MapPanel, Prediction, build_report, image_rgb, overlay_rgb

    run = open_run(path, storage_options=storage_options)
    shape = run.settings.get("input_shape", [3, 224, 224])
    frame = run.manifest.set_index("index", drop=False)
    entries = []
    for group, index in pick_sample(run, per_group):
        row = frame.loc[index]
        picture = _input_image(run, str(row["path"]), shape)
        panels = []
        for method in run.methods:
            maps = torch.from_numpy(np.asarray(run.maps[method][index], dtype=np.float32))
            base = (
                picture
                if picture is not None and tuple(picture.shape[1:]) == tuple(maps.shape[1:])
                else torch.full((3, *maps.shape[1:]), 0.5)
            )
            png = _thumb(overlay_rgb(base, maps, cmap, alpha))
            target = f"{row['target_name'] or 'class'} ({int(row['target'])})"
            panels.append(
                MapPanel(
                    method,
                    png,
                    float(row.get(f"seconds_{method}", 0.0)),
                    target,
                    _metric_note(row, method, run.settings),
                )
            )
        shown = picture if picture is not None else torch.full((3, 8, 8), 0.5)
        label = row["predicted_name"] or f"class {int(row['predicted'])}"
        name = f"{group}: {row['path']}"
        if math.isfinite(float(row["agreement"])):
            name += f" (agreement {float(row['agreement']):.2f})"
        entries.append(
            ImageEntry(
                name,
                _thumb(image_rgb(shown)),
                [Prediction(int(row["predicted"]), label, float(row["score"]))],
                panels,
            )
        )
    details = {
        "images": len(run.manifest),
        "shown": f"{len(entries)} (a sample: most and least confident, most disagreement)",
        "model": run.settings.get("model", ""),
        "methods": ", ".join(run.methods),
        "run": str(run.path),
        "complete": "yes" if run.complete else "no (unfinished run)",
    }
    return build_report(
        entries,
        command=command,
        title=title,
        details=details,
        cmap=cmap,
        timing_note="Seconds per image of the shown images, measured during the run.",
        extra_html=aggregate_html(run),
    )


def _metric_note(row: Mapping[str, Any], method: str, settings: Mapping[str, Any]) -> str:
    parts = []
    for metric in settings.get("metrics", []):
        value = float(row.get(f"{metric}_{method}", math.nan))
        if math.isfinite(value):
            parts.append(f"{metric} AUC {value:.3f}")
    return ", ".join(parts)


__all__ = ["SAMPLE_BUDGET", "THUMB", "aggregate_html", "build_run_report", "pick_sample"]
