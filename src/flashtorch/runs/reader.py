"""Reading a run back: :func:`open_run`."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError, MissingDependencyError
from .store import ATTR, MAPS, RunStore, require_runs_extra


@dataclass
class Run:
    """A run on disk: its manifest in memory, its maps read lazily.

    Attributes:
        path: the run directory (a ``Path``), or its URL (a string).
        manifest: a pandas ``DataFrame``, one row per input, in index order (rows not done
            yet, in an unfinished run, have ``status="missing"``).
        maps: method name -> ``zarr.Array`` of shape ``(N, C|1, H, W)``: indexing reads only
            the chunks asked for (``run.maps["gradcam"][7]`` reads one image's map).
        settings: the settings the run was made with.
        complete: whether every row is done.
    """

    path: Path | str
    manifest: Any
    maps: Mapping[str, Any]
    settings: dict[str, Any]
    complete: bool

    @property
    def methods(self) -> list[str]:
        """The methods of the run, in order."""
        return list(self.maps)

    def map(self, method: str, index: int) -> Any:
        """One image's map as a numpy array ``(C, H, W)`` (reads one chunk)."""
        return self.maps[method][int(index)]

    def rows(self, status: str = "ok") -> Iterator[Any]:
        """Manifest rows (as ``namedtuple``s) with the given status."""
        frame = self.manifest[self.manifest["status"] == status]
        return frame.itertuples(index=False)

    def __len__(self) -> int:
        return int(self.settings.get("n", len(self.manifest)))


def open_run(
    path: str | os.PathLike[str], *, storage_options: Mapping[str, Any] | None = None
) -> Run:
    """Open a run directory (or URL) made by :func:`flashtorch.run` or ``flashtorch run``.

    Reads ``manifest.parquet`` (or, for a run still going or interrupted, the progress logs)
    and opens the maps without reading them.

    Args:
        path: the run directory, or its fsspec URL (``s3://bucket/run``, ``file://...``).
        storage_options: for a URL, the options of its fsspec file system (credentials...).

    Returns:
        A :class:`Run`.

    Raises:
        FileNotFoundError: ``path`` holds no run.
        MissingDependencyError: zarr, pyarrow or pandas is missing (or fsspec, for a URL).

    Example:
        >>> run = flashtorch.open_run("s3://bucket/val-run",
        ...                           storage_options={"anon": True})  # doctest: +SKIP
    """
    zarr, _ = require_runs_extra()
    try:
        import pandas as pd
    except ImportError as exc:
        raise MissingDependencyError(
            'open_run returns a pandas DataFrame; install it with: pip install "flashtorch[runs]"'
        ) from exc
    store = RunStore(path, storage_options)
    root = store.location
    if not store.exists():
        raise FileNotFoundError(
            f"no flashtorch run in {str(root)!r} (expected {MAPS}/ inside it); make one with "
            "flashtorch.run(...) or 'flashtorch run'"
        )
    settings = store.settings()
    group = store.open_maps()
    methods = list(settings.get("methods", {}))
    maps = {name: group[name] for name in methods if name in group}
    if store.has_manifest():
        manifest = store.read_manifest().to_pandas()
    else:
        from .engine import manifest_columns

        n = int(settings.get("n", 0))
        paths = [str(i) for i in range(n)]
        cols = manifest_columns(
            paths, store.done(), methods, settings.get("metrics", []), lambda i: ""
        )
        manifest = pd.DataFrame(cols)
        manifest["path"] = ""  # the paths are written with the manifest, at the end
    complete = bool(len(manifest)) and bool((manifest["status"] != "missing").all())
    if ATTR not in group.attrs:  # pragma: no cover - checked by settings()
        raise InputError(f"{str(root)!r} is not a flashtorch run")
    return Run(root, manifest, maps, settings, complete)


__all__ = ["Run", "open_run"]
