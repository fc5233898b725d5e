"""The Runs tab's work, without gradio: browse the runs under the command line's ``--runs``.

:class:`RunBrowser` knows the run directories found under the roots given on the command line
(``flashtorch serve --runs DIR``, repeatable; ``DIR`` is a run or a folder holding runs, one or
two levels down) and nothing else: the page picks a run by its name among
:meth:`RunBrowser.choices`; a name that is not one of them - a path typed on the page included -
is refused, never opened. A page of a run reads the manifest (:func:`flashtorch.open_run`), the
maps of the rows shown (one zarr chunk each) and the original images the manifest lists,
cropped with the manifest's crop box so the map fits.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ImageLoadError, InputError

#: Images per page of the Runs tab.
PAGE_SIZE = 12
#: The status filter's choices (``"all"``: every row).
STATUSES = ("ok", "error", "all")
#: Pictures of a smaller input side are enlarged (whole pixels) to at least this side.
MIN_SIDE = 128
#: Sort columns offered first when the manifest has them (then metrics, then seconds).
_FIRST_COLUMNS = ("score", "target_score", "agreement", "index")
_MAPS = "maps.zarr"


@dataclass
class RunItem:
    """One image of a page of a run: its picture and every method's overlay."""

    index: int
    path: str
    status: str
    caption: str
    panel: np.ndarray  # (H, W', 3) uint8: the image | one overlay per method


@dataclass
class RunPage:
    """One page of a run: the summary line, the sort columns offered and the items."""

    summary: str
    columns: list[str]
    items: list[RunItem]
    page: int
    pages: int
    rows: int  # rows that pass the status filter

    @property
    def position(self) -> str:
        """``"page 1 of 3 (30 images)"``."""
        return f"page {self.page} of {self.pages} ({self.rows} images)"


def _is_run(path: Path) -> bool:
    return (path / _MAPS).is_dir()


def _find_runs(root: Path, depth: int = 2) -> list[Path]:
    """``root`` if it is a run, else the runs below it (at most ``depth`` levels)."""
    if _is_run(root):
        return [root]
    if depth == 0:
        return []
    found: list[Path] = []
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []
    for child in children:
        found.extend(_find_runs(child, depth - 1))
    return found


class RunBrowser:
    """The runs under the command line's roots, and pages of them for the Runs tab.

    Args:
        roots: folders from the command line (``--runs``), each a run or a folder of runs.
        cmap: the colour map of the overlays.
        max_pixels: largest original image read back, in pixels.

    Raises:
        InputError: a root that is not a folder.
    """

    def __init__(
        self,
        roots: Sequence[str | os.PathLike[str]] = (),
        *,
        cmap: str = "jet",
        max_pixels: int = 25_000_000,
    ) -> None:
        self.roots: list[Path] = []
        for root in roots:
            path = Path(root).expanduser().resolve()
            if not path.is_dir():
                raise InputError(
                    f"--runs {str(root)!r} is not a folder; give a run directory made by "
                    "'flashtorch run' or a folder holding runs"
                )
            if path not in self.roots:
                self.roots.append(path)
        self.cmap = cmap
        self.max_pixels = int(max_pixels)

    def runs(self) -> dict[str, Path]:
        """The runs found now, by the name the page shows (``root/sub/run``), sorted."""
        found: dict[str, Path] = {}
        for root in self.roots:
            for run in _find_runs(root):
                real = run.resolve()
                if not real.is_relative_to(root):  # a link out of the root
                    continue
                rel = real.relative_to(root)
                name = root.name if rel == Path(".") else f"{root.name}/{rel.as_posix()}"
                found.setdefault(name, real)
        return dict(sorted(found.items()))

    def choices(self) -> list[str]:
        """The run menu: the names of :meth:`runs`."""
        return list(self.runs())

    def resolve(self, name: str | None) -> Path:
        """The directory of the run called ``name`` (one of :meth:`choices`).

        Raises:
            InputError: no roots, no name, or a name that is not one of the runs (a path typed
                on the page is never opened).
        """
        if not self.roots:
            raise InputError(
                "this server browses no runs; start it with flashtorch serve --runs DIR"
            )
        runs = self.runs()
        if not name:
            raise InputError("choose a run from the list")
        if name not in runs:
            offered = ", ".join(runs) or "none found"
            raise InputError(
                f"unknown run {name!r}: this server opens only the runs found under its --runs "
                f"folders ({offered}); pick one from the list"
            )
        return runs[name]

    def open(self, name: str | None) -> Any:
        """The :class:`~flashtorch.runs.reader.Run` called ``name``.

        Raises:
            InputError: not one of the runs, or a directory that does not read as a run.
        """
        from ..errors import FlashTorchError
        from ..runs import open_run

        path = self.resolve(name)
        try:
            return open_run(path)
        except FlashTorchError as exc:
            if type(exc).__name__ == "MissingDependencyError":
                raise
            raise InputError(f"run {name!r} cannot be read: {exc}") from None
        except Exception as exc:  # a damaged store: zarr, parquet, JSON errors
            raise InputError(
                f"run {name!r} cannot be read ({type(exc).__name__}: {exc}); is it a run "
                "made by 'flashtorch run'?"
            ) from None

    @staticmethod
    def sort_columns(manifest: Any) -> list[str]:
        """The manifest's columns a page can be sorted by: scores, agreement, metrics, seconds."""
        cols = list(manifest.columns)
        first = [c for c in _FIRST_COLUMNS if c in cols]
        metric = [c for c in cols if c.startswith(("deletion_", "insertion_"))]
        seconds = [c for c in cols if c.startswith("seconds_")]
        return first + metric + seconds

    def page(
        self,
        name: str | None,
        sort: str | None = "score",
        descending: bool = True,
        page: int = 1,
        status: str = "ok",
        page_size: int = PAGE_SIZE,
    ) -> RunPage:
        """One page of the run called ``name``, sorted and filtered.

        Args:
            name: one of :meth:`choices`.
            sort: a column of :meth:`sort_columns` (``None``: the run's order).
            descending: largest first (missing values last either way).
            page: 1-based page number (clipped to the pages there are).
            status: ``"ok"``, ``"error"`` or ``"all"``.
            page_size: images per page.

        Raises:
            InputError: an unknown run, sort column or status.
        """
        run = self.open(name)
        frame = run.manifest
        columns = self.sort_columns(frame)
        if status not in STATUSES:
            raise InputError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        if sort and sort not in columns:
            raise InputError(
                f"cannot sort by {sort!r}; this run has {', '.join(columns) or 'no such column'}"
            )
        shown = frame if status == "all" else frame[frame["status"] == status]
        if sort and sort != "index":
            shown = shown.sort_values(
                [sort, "index"], ascending=[not descending, True], na_position="last"
            )
        elif sort == "index":
            shown = shown.sort_values("index", ascending=not descending)
        size = max(1, int(page_size))
        pages = max(1, math.ceil(len(shown) / size))
        number = min(max(1, int(page or 1)), pages)
        chunk = shown.iloc[(number - 1) * size : number * size]
        items = [self._item(run, row) for row in chunk.to_dict("records")]
        return RunPage(_summary(name or "", run), columns, items, number, pages, len(shown))

    def _item(self, run: Any, row: dict[str, Any]) -> RunItem:
        from ..report import image_rgb, overlay_rgb
        from .core import _panel

        index = int(row["index"])
        shape = run.settings.get("input_shape", [3, 224, 224])
        side = (int(shape[-2]), int(shape[-1]))
        maps = []
        if row["status"] == "ok":
            for method in run.methods:
                raw = torch.from_numpy(np.asarray(run.map(method, index), dtype=np.float32))
                maps.append(raw)
                side = (int(raw.shape[-2]), int(raw.shape[-1]))
        picture = self._picture(run, row, side)
        base = picture if picture is not None else torch.full((3, *side), 0.5)
        parts = [image_rgb(base)] + [overlay_rgb(base, m, self.cmap) for m in maps]
        factor = -(-MIN_SIDE // side[0]) if side[0] < MIN_SIDE else 1
        if factor > 1:  # small inputs (a 32-pixel run) are enlarged, pixels kept sharp
            parts = [np.repeat(np.repeat(a, factor, axis=0), factor, axis=1) for a in parts]
        return RunItem(
            index, str(row["path"]), str(row["status"]), _caption(run, row), _panel(*parts)
        )

    def _picture(self, run: Any, row: dict[str, Any], side: tuple[int, int]) -> torch.Tensor | None:
        """The manifest's image, cropped with its crop box and resized to ``side``, or ``None``.

        Only the file the manifest lists for this row is read (relative paths are relative to
        the run's source folder or list file); a dataset run has no files, and a file that is
        gone or unreadable gives ``None`` (the map is shown on grey).
        """
        from ..utils.image import _resize_crop, load_image

        location = run.settings.get("location")
        kind = run.settings.get("source", {}).get("kind")
        if not location or kind not in ("folder", "list") or not row.get("path"):
            return None
        base = Path(location) if kind == "folder" else Path(location).parent
        file = Path(str(row["path"]))
        file = file if file.is_absolute() else base / file
        try:
            image = load_image(file, max_pixels=self.max_pixels)
        except (ImageLoadError, OSError):
            return None
        box = [
            float(row.get(k, math.nan))
            for k in ("crop_left", "crop_top", "crop_width", "crop_height")
        ]
        if all(math.isfinite(v) for v in box) and box[2] > 0 and box[3] > 0:
            left, top, width, height = box
            from PIL import Image

            image = image.resize(
                (side[1], side[0]),
                Image.Resampling.BILINEAR,
                box=(left, top, left + width, top + height),
            )
        else:
            image = _resize_crop(image, side[0])
        arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(arr).permute(2, 0, 1)


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _caption(run: Any, row: dict[str, Any]) -> str:
    path = str(row["path"]) or f"#{int(row['index'])}"
    if row["status"] != "ok":
        reason = str(row.get("error") or row["status"])
        return f"#{int(row['index'])} {path}: {row['status']} ({reason})"
    label = row.get("predicted_name") or f"class {int(row['predicted'])}"
    parts = [f"#{int(row['index'])} {path}: {label} {_number(row['score']):.3f}"]
    target = int(row.get("target", -1))
    if target >= 0 and target != int(row.get("predicted", -1)):
        parts.append(
            f"target {row.get('target_name') or target} {_number(row.get('target_score')):.3f}"
        )
    agreement = _number(row.get("agreement"))
    if math.isfinite(agreement):
        parts.append(f"agreement {agreement:.2f}")
    return "; ".join(parts) + " | " + " | ".join(["image", *run.methods])


def _summary(name: str, run: Any) -> str:
    frame = run.manifest
    counts = frame["status"].value_counts().to_dict()
    ok, errors = int(counts.get("ok", 0)), int(counts.get("error", 0))
    missing = int(counts.get("missing", 0))
    model = run.settings.get("model") or "?"
    text = (
        f"{name}: {len(frame)} images ({ok} ok, {errors} errors"
        + (f", {missing} not done: an unfinished run" if missing else "")
        + f"); methods: {', '.join(run.methods) or 'none'}; model: {model}"
    )
    metrics = run.settings.get("metrics") or []
    return text + (f"; metrics: {', '.join(metrics)}" if metrics else "")


__all__ = ["PAGE_SIZE", "STATUSES", "RunBrowser", "RunItem", "RunPage"]
