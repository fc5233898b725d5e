"""Inputs of a run: a folder, an ImageFolder tree, a list file, or any ``Dataset``.

Every source becomes a :class:`Source`: a fixed, deterministic list of ``N`` items (index ``i``
is row ``i`` of every array and of the manifest) and a :class:`RunDataset` that loads item
``i`` in a ``DataLoader`` worker. Loading never raises: a corrupt or unreadable image becomes an
error item (``ok=False`` with the message), so one bad file neither kills a worker nor the run.

* **folder**: every file with an image extension below it, recursively, in sorted order of the
  relative POSIX path (stable across machines and file systems).
* **ImageFolder tree**: the same walk; with ``target="folder"`` the first sub-folder under the
  root is each image's class name.
* **list file** (``.txt``, ``.csv``, ``.tsv``): one image per line, ``path[,target]``; an
  optional header row whose first field is ``path``; relative paths are relative to the file.
* **Dataset**: any ``torch.utils.data.Dataset`` with ``__len__`` whose items are an image or a
  tuple ``(image, target, ...)``. A PIL image, numpy array, path or bytes is preprocessed like a
  file; a tensor is taken as the model input as it is (already transformed and normalised, as
  a torchvision dataset with a ``transform`` yields it).

File images go through exactly :func:`flashtorch.utils.apply_transforms`' pipeline (resize of
the shorter side, centre crop, normalisation); the crop box is recorded in original pixels so a
map can be put back onto the original image.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import InputError, TargetError
from ..utils.image import _resize_crop, load_image

#: File extensions a folder source picks up (case-insensitive).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
_LIST_SUFFIXES = (".txt", ".csv", ".tsv", ".lst")
#: ``target`` values that take each item's class from the source itself.
SOURCE_TARGETS = ("column", "folder")
#: What an item's ``target`` holds when it has none (the predicted class is explained).
NO_TARGET = -1


@dataclass
class Source:
    """A run's inputs, fixed before any work starts.

    Attributes:
        kind: ``"folder"``, ``"list"`` or ``"dataset"``.
        root: the folder or list file (``None`` for a Dataset).
        paths: one display path per item (relative to ``root`` for folders; ``dataset[i]``
            for a Dataset).
        files: absolute file paths (``None`` for a Dataset).
        labels: per-item class labels given by the source (list column, class folder), or
            ``None``.
        dataset: the user's Dataset (``None`` for files).
        identity: a digest of the item list, stored with the run to detect a changed source.
    """

    kind: str
    root: Path | None
    paths: list[str]
    files: list[str] | None
    labels: list[str | None] | None
    dataset: Dataset | None
    identity: str

    def __len__(self) -> int:
        return len(self.paths)


def _digest(items: Sequence[str]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for item in items:
        h.update(item.encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    return h.hexdigest()


def scan_folder(root: Path) -> list[Path]:
    """Every image file below ``root``, recursively, sorted by relative POSIX path."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath, name))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _read_list(path: Path) -> tuple[list[str], list[str | None]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    files: list[str] = []
    labels: list[str | None] = []
    with open(path, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.reader(fh, delimiter=delimiter) if r and any(f.strip() for f in r)]
    if rows and rows[0][0].strip().lower() in ("path", "file", "filename", "image"):
        rows = rows[1:]
    for number, row in enumerate(rows, 1):
        entry = row[0].strip()
        if entry.startswith("#"):
            continue
        if not entry:
            raise InputError(f"{path}: row {number} has an empty path")
        files.append(entry)
        label = row[1].strip() if len(row) > 1 else ""
        labels.append(label or None)
    return files, labels


def resolve_source(source: str | os.PathLike[str] | Dataset) -> Source:
    """Turn ``source`` into a :class:`Source` (see the module docstring).

    Raises:
        FileNotFoundError: the path does not exist.
        InputError: an empty folder or list, or an object that is not a sized Dataset.
    """
    if isinstance(source, Dataset) or (
        hasattr(source, "__getitem__")
        and hasattr(source, "__len__")
        and not isinstance(source, (str, os.PathLike))
    ):
        try:
            n = len(source)  # type: ignore[arg-type]
        except TypeError:
            raise InputError(
                "a Dataset source must have a length (a map-style Dataset); an "
                "IterableDataset has no fixed order to resume from"
            ) from None
        if n == 0:
            raise InputError("the Dataset is empty")
        name = f"{type(source).__module__}.{type(source).__qualname__}"
        return Source(
            "dataset",
            None,
            [f"dataset[{i}]" for i in range(n)],
            None,
            None,
            source,
            _digest([name, str(n)]),
        )  # type: ignore[arg-type]
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(
            f"source must be a folder, a list file or a torch Dataset, got {type(source).__name__}"
        )
    root = Path(source).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"no folder or list file at {str(root)!r}; check the path")
    if root.is_dir():
        files = scan_folder(root)
        if not files:
            raise InputError(
                f"no images in {str(root)!r} (looked recursively for "
                f"{', '.join(sorted(IMAGE_EXTENSIONS))})"
            )
        rel = [f.relative_to(root).as_posix() for f in files]
        labels: list[str | None] = [r.split("/")[0] if "/" in r else None for r in rel]
        return Source("folder", root, rel, [str(f) for f in files], labels, None, _digest(rel))
    if root.suffix.lower() not in _LIST_SUFFIXES:
        raise InputError(
            f"{str(root)!r} is a file, not a folder; a list file of images must end in "
            f"{', '.join(_LIST_SUFFIXES)} (one 'path[,target]' per line)"
        )
    entries, list_labels = _read_list(root)
    if not entries:
        raise InputError(f"the list file {str(root)!r} names no images")
    base = root.parent
    files = [str(p if (p := Path(e).expanduser()).is_absolute() else base / p) for e in entries]
    ident = _digest([f"{e}\t{lab or ''}" for e, lab in zip(entries, list_labels)])
    return Source("list", root, entries, files, list_labels, None, ident)


def item_targets(
    source: Source,
    target: Any,
    lookup: Callable[[str], int],
) -> list[int] | None:
    """Per-item class indices for ``target="column"``/``"folder"`` (checked up front).

    Args:
        source: the run's source.
        target: the run's target setting.
        lookup: class name -> index in the model's class index (raises on an unknown name).

    Returns:
        ``N`` indices, or ``None`` when the target is not taken from the source (or the
        source is a Dataset, whose targets are read item by item).

    Raises:
        TargetError: no label for some item, or a label the class index lacks; the message
            names the first offending items.
    """
    if target not in SOURCE_TARGETS or source.kind == "dataset":
        return None
    if target == "folder" and source.kind != "folder":
        raise TargetError(
            "target='folder' takes each image's class from its sub-folder: give a folder "
            "(ImageFolder layout: ROOT/CLASS/image.jpg), or use target='column' with a list file"
        )
    if target == "column" and source.kind != "list":
        raise TargetError(
            "target='column' reads the second column of a list file; for a folder of class "
            "sub-folders use target='folder'"
        )
    labels = source.labels or []
    missing = [source.paths[i] for i, lab in enumerate(labels) if lab is None]
    if missing:
        what = "is not inside a class sub-folder" if target == "folder" else "has no target"
        raise TargetError(
            f"{len(missing)} image(s) {what}, e.g. {missing[0]!r}; give every image a "
            "class or leave --target out (the predicted class is explained)"
        )
    resolved: dict[str, int] = {}
    unknown: list[str] = []
    for lab in labels:
        assert lab is not None
        if lab in resolved:
            continue
        try:
            resolved[lab] = lookup(lab)
        except (TargetError, KeyError, ValueError):
            unknown.append(lab)
            resolved[lab] = NO_TARGET
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise TargetError(
            f"the model's class index has no class {shown}{more} (from the "
            f"{'folder names' if target == 'folder' else 'list file'}); rename them to class "
            "names or indices the model knows, or pass class_names=[...] (Python API)"
        )
    return [resolved[lab] for lab in labels]  # type: ignore[index]


def _crop_box(width: int, height: int, size: int) -> tuple[float, float, float, float]:
    """The centre crop of :func:`~flashtorch.utils.image._resize_crop` in original pixels."""
    scale = size / min(width, height)
    nw, nh = max(size, round(width * scale)), max(size, round(height * scale))
    left, top = (nw - size) // 2, (nh - size) // 2
    sx, sy = width / nw, height / nh
    return (left * sx, top * sy, size * sx, size * sy)


class RunDataset(Dataset):
    """Item ``i`` of a source as a dict for the default ``collate``; never raises.

    Keys: ``index``; ``image`` (``(C, H, W)`` float32 model input, zeros for an error item);
    ``ok``; ``error`` (message or ``""``); ``target`` (class index or :data:`NO_TARGET`);
    ``width``, ``height`` (original size); ``crop`` (``(left, top, width, height)`` in original
    pixels).

    Args:
        source: the run's :class:`Source`.
        size: side of the square model input (file and PIL images).
        mean: normalisation mean.
        std: normalisation standard deviation.
        shape: ``(C, H, W)`` every item must have.
        targets: per-item class indices (list/folder labels), or ``None``.
        use_item_target: take a Dataset item's second element as its target.
        lookup: class name -> index, for Dataset targets given as names.
    """

    def __init__(
        self,
        source: Source,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        shape: tuple[int, int, int],
        targets: Sequence[int] | None = None,
        use_item_target: bool = False,
        lookup: Mapping[str, int] | None = None,
    ) -> None:
        self.source = source
        self.size = size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        # (v / 255 - mean) / std as one multiply-add on the uint8 values
        self._scale = 1.0 / (255.0 * self.std)
        self._shift = -self.mean / self.std
        self.shape = tuple(shape)
        self.targets = None if targets is None else list(targets)
        self.use_item_target = use_item_target
        self.lookup = dict(lookup or {})

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {
            "index": index,
            "ok": True,
            "error": "",
            "target": NO_TARGET,
            "width": 0,
            "height": 0,
            "crop": torch.full((4,), float("nan"), dtype=torch.float64),
        }
        try:
            image, target = self._raw(index)
            x, width, height, crop = self._prepare(image)
            if tuple(x.shape) != self.shape:
                raise InputError(
                    f"item {index} has shape {tuple(x.shape)}, but the run's inputs are "
                    f"{self.shape} (set by item 0); make every item the same size"
                )
            item.update(
                image=x, width=width, height=height, crop=torch.tensor(crop, dtype=torch.float64)
            )
            if self.targets is not None:
                item["target"] = int(self.targets[index])
            elif self.use_item_target:
                item["target"] = self._target(target)
        except Exception as exc:  # a bad item is an error row, never a dead worker
            text = (
                str(exc)
                if isinstance(exc, (InputError, TargetError, OSError))
                else (f"{type(exc).__name__}: {exc}")
            )
            item.update(
                ok=False,
                error=" ".join(text.split()) or type(exc).__name__,
                image=torch.zeros(self.shape, dtype=torch.float32),
                target=NO_TARGET,
            )
        return item

    def _raw(self, index: int) -> tuple[Any, Any]:
        if self.source.files is not None:
            return self.source.files[index], None
        assert self.source.dataset is not None
        obj = self.source.dataset[index]
        if isinstance(obj, (tuple, list)) and obj and not isinstance(obj, str):
            return obj[0], (obj[1] if len(obj) > 1 else None)
        return obj, None

    def _target(self, value: Any) -> int:
        if value is None:
            raise TargetError("the item has no target (target='column' needs (image, target))")
        if isinstance(value, Tensor):
            value = value.item() if value.numel() == 1 else value
        if isinstance(value, str):
            if value not in self.lookup:
                raise TargetError(f"the model's class index has no class {value!r}")
            return int(self.lookup[value])
        if isinstance(value, bool) or not hasattr(value, "__index__"):
            raise TargetError(f"an item's target must be a class index or name, got {value!r}")
        return int(value)

    def _prepare(self, image: Any) -> tuple[Tensor, int, int, tuple[float, float, float, float]]:
        if isinstance(image, Tensor):
            if image.dim() != 3 or not image.is_floating_point():
                raise InputError(
                    f"a tensor item must be a (C, H, W) float model input, got "
                    f"{image.dtype} {tuple(image.shape)}"
                )
            x = image.detach().to("cpu", torch.float32).contiguous().clone()
            h, w = int(x.shape[1]), int(x.shape[2])
            return x, w, h, (0.0, 0.0, float(w), float(h))
        pil = load_image(image)
        width, height = pil.size
        cropped = _resize_crop(pil, self.size)
        chw = torch.from_numpy(np.array(cropped, dtype=np.uint8)).permute(2, 0, 1)
        x = chw.to(torch.float32, memory_format=torch.contiguous_format)
        x.mul_(self._scale).add_(self._shift)
        return x, width, height, _crop_box(width, height, self.size)


def probe_shape(source: Source, size: int) -> tuple[int, int, int]:
    """``(C, H, W)`` of the run's inputs: ``(3, size, size)`` for files, item 0's otherwise."""
    if source.dataset is None:
        return (3, size, size)
    obj = source.dataset[0]
    image = obj[0] if isinstance(obj, (tuple, list)) and obj else obj
    if isinstance(image, Tensor):
        if image.dim() != 3:
            raise InputError(
                f"a tensor item must be a (C, H, W) model input, got {tuple(image.shape)}"
            )
        return (int(image.shape[0]), int(image.shape[1]), int(image.shape[2]))
    return (3, size, size)


__all__ = [
    "IMAGE_EXTENSIONS",
    "NO_TARGET",
    "RunDataset",
    "SOURCE_TARGETS",
    "Source",
    "item_targets",
    "probe_shape",
    "resolve_source",
    "scan_folder",
]
