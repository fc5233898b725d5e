"""The on-disk form of a run: a Zarr v3 group of maps, per-process progress logs, a manifest.

Layout of ``DIR``::

    DIR/maps.zarr/            Zarr v3 group; attrs["flashtorch_run"] = the run's settings
        <method>/             one array per method, (N, C|1, H, W), one chunk per image, zstd
    DIR/progress/*.jsonl      one log per process and attempt: a JSON line per finished image
    DIR/manifest.parquet      one row per image (written by rank 0 at the end, atomically)

**Nothing lost, nothing twice.** The layout is fixed when the run is created (``N`` and every
array's shape follow from the source and the settings), so any process can write any row at
any time. A row counts as done only once its line is in a progress log, and that line is
appended (and ``fsync``-ed) only *after* every method's chunk of that row is written. A kill at
any moment therefore leaves at worst a chunk without a line: it reads as missing, and the next
run recomputes exactly the rows without a line and overwrites those chunks. A torn last line
(killed mid-write) does not parse and is ignored the same way. Rows are unioned by index, so a
row is never counted twice.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, MissingDependencyError

MAPS = "maps.zarr"
PROGRESS = "progress"
MANIFEST = "manifest.parquet"
ATTR = "flashtorch_run"
PIP_HINT = 'pip install "flashtorch[runs]"'
#: Settings that do not change the results: stored, never compared.
UNCOMPARED = frozenset({"versions", "created", "location"})


class RunConflictError(InputError):
    """The output folder holds a run made with other settings (or something else)."""


def require_runs_extra() -> tuple[Any, Any]:
    """Import zarr (>= 3) and pyarrow, or fail with the pip command that installs them.

    Raises:
        MissingDependencyError: either is missing or zarr is older than 3.
    """
    try:
        import zarr
    except ImportError as exc:
        raise MissingDependencyError(
            f"runs need zarr>=3 and pyarrow; install them with: {PIP_HINT}"
        ) from exc
    major = int(str(zarr.__version__).split(".")[0])
    if major < 3:
        raise MissingDependencyError(
            f"runs need zarr>=3 (found {zarr.__version__}); upgrade with: {PIP_HINT}"
        )
    try:
        import pyarrow
    except ImportError as exc:
        raise MissingDependencyError(
            f"runs need zarr>=3 and pyarrow; install them with: {PIP_HINT}"
        ) from exc
    return zarr, pyarrow


def _describe_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    keys = [
        k for k in sorted(set(old) | set(new)) if k not in UNCOMPARED and old.get(k) != new.get(k)
    ]
    parts = []
    for key in keys[:3]:
        parts.append(f"{key}: {_short(new.get(key))} now, {_short(old.get(key))} in the run")
    return "; ".join(parts)


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def comparable(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that decide the results (JSON round-tripped, so lists equal tuples)."""
    plain = json.loads(json.dumps(dict(settings), sort_keys=True, default=str))
    return {k: v for k, v in plain.items() if k not in UNCOMPARED}


class RunStore:
    """A run directory: create or reopen it, write rows, read progress, write the manifest.

    Args:
        root: the run directory ``DIR``.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.zarr, _ = require_runs_extra()
        self._group: Any = None
        self._arrays: dict[str, Any] = {}

    # ---------------------------------------------------------------- layout and settings

    @property
    def maps_path(self) -> Path:
        """``DIR/maps.zarr``."""
        return self.root / MAPS

    @property
    def manifest_path(self) -> Path:
        """``DIR/manifest.parquet``."""
        return self.root / MANIFEST

    def exists(self) -> bool:
        """Whether ``DIR`` already holds a run."""
        return (self.maps_path / "zarr.json").is_file()

    def clear(self) -> None:
        """Delete the run's own files (maps, progress, manifest); nothing else in ``DIR``."""
        for name in (MAPS, PROGRESS):
            if (self.root / name).exists():
                shutil.rmtree(self.root / name)
        if self.manifest_path.exists():
            self.manifest_path.unlink()

    def settings(self) -> dict[str, Any]:
        """The stored settings of an existing run."""
        group = self.zarr.open_group(str(self.maps_path), mode="r")
        found = group.attrs.get(ATTR)
        if not isinstance(found, dict):
            raise RunConflictError(
                f"{str(self.maps_path)!r} is a Zarr group but not a flashtorch run; choose "
                "another output folder"
            )
        return dict(found)

    def create_or_check(
        self,
        settings: Mapping[str, Any],
        layout: Mapping[str, tuple[int, ...]],
        dtype: str,
    ) -> bool:
        """Create the store with ``settings`` and ``layout``, or check an existing one.

        Args:
            settings: the run's settings (JSON-serialisable).
            layout: method name -> ``(N, C, H, W)``.
            dtype: ``"float16"`` or ``"float32"``.

        Returns:
            ``True`` when an existing run is resumed, ``False`` for a new one.

        Raises:
            RunConflictError: ``DIR`` holds a run with other settings, or a foreign Zarr store.
        """
        if self.maps_path.exists() and not self.exists():
            raise RunConflictError(
                f"{str(self.maps_path)!r} exists but is not a Zarr v3 group; remove it or "
                "choose another output folder"
            )
        if self.exists():
            old = self.settings()
            if comparable(old) != comparable(settings):
                raise RunConflictError(
                    f"{str(self.root)!r} holds a run made with other settings "
                    f"({_describe_change(old, settings)}); run the same command to resume it, "
                    "add --overwrite (overwrite=True) to start afresh, or choose another "
                    "output folder"
                )
            return True
        self.root.mkdir(parents=True, exist_ok=True)
        group = self.zarr.open_group(str(self.maps_path), mode="w", zarr_format=3)
        for name, shape in layout.items():
            group.create_array(
                name,
                shape=tuple(int(s) for s in shape),
                chunks=(1, *shape[1:]),
                dtype=dtype,
                fill_value=0,
                compressors=self.zarr.codecs.ZstdCodec(level=3),
                dimension_names=("image", "channel", "y", "x"),
            )
        # settings last: a store without them is an unfinished creation, refused above
        group.attrs[ATTR] = json.loads(json.dumps(dict(settings), default=str))
        return False

    def array(self, name: str) -> Any:
        """The Zarr array of one method (opened once, read-write)."""
        if name not in self._arrays:
            if self._group is None:
                self._group = self.zarr.open_group(str(self.maps_path), mode="r+")
            self._arrays[name] = self._group[name]
        return self._arrays[name]

    def write_rows(self, name: str, indices: Sequence[int], data: np.ndarray) -> None:
        """Write rows ``indices`` of method ``name`` (whole chunks, one per image)."""
        if not len(indices):
            return
        arr = self.array(name)
        first, last = int(indices[0]), int(indices[-1])
        if last - first + 1 == len(indices) and list(indices) == list(range(first, last + 1)):
            arr[first : last + 1] = data
        else:
            arr.oindex[np.asarray(indices, dtype=np.int64)] = data

    # ---------------------------------------------------------------- progress

    def progress_writer(self, rank: int) -> ProgressLog:
        """A new progress log for this process (one file per process and attempt)."""
        folder = self.root / PROGRESS
        folder.mkdir(parents=True, exist_ok=True)
        return ProgressLog(folder / f"rank{rank:05d}-{uuid.uuid4().hex[:12]}.jsonl")

    def done(self) -> dict[int, dict[str, Any]]:
        """Every finished row's record, by index (complete lines of every log)."""
        records: dict[int, dict[str, Any]] = {}
        folder = self.root / PROGRESS
        if not folder.is_dir():
            return records
        for log in sorted(folder.glob("*.jsonl")):
            with open(log, "rb") as fh:
                data = fh.read()
            for line in data.split(b"\n")[:-1]:  # the part after the last newline is torn
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and isinstance(record.get("index"), int):
                    records[record["index"]] = record
        return records

    # ---------------------------------------------------------------- manifest

    def write_manifest(self, columns: Mapping[str, list[Any]], settings: Mapping[str, Any]) -> Path:
        """Write ``manifest.parquet`` atomically (temporary file + rename)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table(dict(columns))
        meta = dict(table.schema.metadata or {})
        meta[ATTR.encode()] = json.dumps(dict(settings), default=str).encode()
        table = table.replace_schema_metadata(meta)
        tmp = self.root / f".{MANIFEST}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            pq.write_table(table, tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, self.manifest_path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return self.manifest_path


class ProgressLog:
    """An append-only JSON-lines log of finished rows, flushed and fsync-ed per batch."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = open(path, "ab")  # noqa: SIM115 - closed in close()

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Append rows (call only after their chunks are written) and make them durable."""
        data = b"".join(
            json.dumps(dict(r), separators=(",", ":"), allow_nan=True).encode() + b"\n"
            for r in records
        )
        if data:
            self._fh.write(data)
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        """Close the file."""
        self._fh.close()


__all__ = [
    "ATTR",
    "MANIFEST",
    "MAPS",
    "PIP_HINT",
    "PROGRESS",
    "ProgressLog",
    "RunConflictError",
    "RunStore",
    "comparable",
    "require_runs_extra",
]
