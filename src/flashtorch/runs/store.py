"""The stored form of a run: a Zarr v3 group of maps, per-process progress logs, a manifest.

Layout of ``DIR`` (a local folder, or an fsspec URL such as ``s3://bucket/run``)::

    DIR/maps.zarr/            Zarr v3 group; attrs["flashtorch_run"] = the run's settings
        <method>/             one array per method, (N, C|1, H, W), one chunk per image, zstd
    DIR/progress/*.jsonl      (a folder) one log per process and attempt: a line per image
    DIR/progress/*.json       (a URL) one object per process, attempt and finished batch
    DIR/manifest.parquet      one row per image (written by rank 0 at the end, atomically)

**Nothing lost, nothing twice.** The layout is fixed when the run is created (``N`` and every
array's shape follow from the source and the settings), so any process can write any row at
any time. A row counts as done only once its line is in a progress log, and that line is
appended (and ``fsync``-ed) only *after* every method's chunk of that row is written. A kill at
any moment therefore leaves at worst a chunk without a line: it reads as missing, and the next
run recomputes exactly the rows without a line and overwrites those chunks. A torn last line
(killed mid-write) does not parse and is ignored the same way. Rows are unioned by index, so a
row is never counted twice.

**A URL** (``memory://``, ``file://``, ``s3://``, ``gs://``... any protocol fsspec knows) has no
append and no ``fsync`` on object stores, so its progress is one small immutable object per
finished batch and process, written in one ``PUT`` (atomic on object stores) only after that
batch's chunks are written, and read back by listing ``DIR/progress/``. An object that does not
parse as a whole (a torn write on a file system) counts as absent, its rows as missing. A local
folder keeps the appended, ``fsync``-ed logs: one file per process instead of one per batch, and
no listing of many small files on resume.
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
#: The oldest fsspec with ``AsyncFileSystemWrapper`` (zarr 3 needs it for sync file systems).
FSSPEC_MIN = "2024.12.0"
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


def is_url(location: object) -> bool:
    """Whether ``location`` is an fsspec URL (``proto://...`` or a chain ``a::b://...``).

    Only strings can be URLs: a ``Path`` is always a local folder.
    """
    return isinstance(location, str) and ("://" in location or "::" in location)


def require_fsspec() -> Any:
    """Import fsspec (recent enough for zarr 3), or fail with the pip command.

    Raises:
        MissingDependencyError: fsspec is missing or too old.
    """
    try:
        import fsspec
        from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            f"a run at a URL needs fsspec>={FSSPEC_MIN}; install it with: {PIP_HINT}"
        ) from exc
    return fsspec


def _url_fs(url: str, options: Mapping[str, Any]) -> tuple[Any, str, dict[str, Any]]:
    """``(file system, its path of the run, the storage options zarr gets)`` of ``url``."""
    fsspec = require_fsspec()
    opts = dict(options)
    try:
        cls = fsspec.get_filesystem_class(fsspec.core.split_protocol(url.split("::")[-1])[0])
    except ValueError as exc:
        raise InputError(
            f"{url!r}: {exc}; give a local folder or a URL of a protocol fsspec knows "
            "(file://, memory://, s3://, gs://, az://...)"
        ) from None
    except ImportError as exc:
        raise MissingDependencyError(f"{url!r} needs a package fsspec uses: {exc}") from None
    from fsspec.implementations.local import LocalFileSystem

    if issubclass(cls, LocalFileSystem):
        opts.setdefault("auto_mkdir", True)  # zarr writes chunks into folders not made yet
    try:
        fs, path = fsspec.url_to_fs(url, **opts)
    except ImportError as exc:
        raise MissingDependencyError(f"{url!r} needs a package fsspec uses: {exc}") from None
    return fs, path.rstrip("/"), opts


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
    """A run directory or URL: create or reopen it, write rows, read progress, the manifest.

    Args:
        root: the run directory ``DIR``: a local folder (a ``Path`` or a string), or an fsspec
            URL (``s3://bucket/run``, ``file:///shared/run``, ``memory://run``...).
        storage_options: for a URL, the options of its fsspec file system (credentials,
            endpoint...); ``None`` for a folder.

    Raises:
        InputError: ``storage_options`` for a local folder, or a protocol fsspec does not know.
        MissingDependencyError: a URL without fsspec (or the package its protocol needs).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.zarr, _ = require_runs_extra()
        self._group: Any = None
        self._arrays: dict[str, Any] = {}
        self.fs: Any = None  # an fsspec file system for a URL, None for a local folder
        if is_url(root):
            self.url = str(root).rstrip("/")
            self.fs, self._fs_root, self._options = _url_fs(self.url, storage_options or {})
            self.root: Path | None = None
        else:
            if storage_options:
                raise InputError(
                    f"storage options apply to an fsspec URL (s3://...), not to the local "
                    f"folder {os.fspath(root)!r}; drop them or give a URL"
                )
            self.root = Path(root)
            self.url = str(self.root)

    # ---------------------------------------------------------------- layout and settings

    @property
    def location(self) -> Path | str:
        """The run as given: a ``Path`` for a folder, the URL for a URL."""
        return self.root if self.root is not None else self.url

    def _fs_path(self, *names: str) -> str:
        return "/".join((self._fs_root, *names))

    def _maps(self, mode: str) -> Any:
        """The Zarr group of the maps, opened with ``mode``."""
        if self.root is not None:
            return self.zarr.open_group(str(self.root / MAPS), mode=mode, zarr_format=3)
        store = self.zarr.storage.FsspecStore.from_url(
            f"{self.url}/{MAPS}", storage_options=self._options, read_only=mode == "r"
        )
        return self.zarr.open_group(store=store, mode=mode, zarr_format=3)

    def open_maps(self) -> Any:
        """The Zarr group of the maps, read-only (arrays read lazily, chunk by chunk)."""
        return self._maps("r")

    def _isfile(self, *names: str) -> bool:
        if self.root is not None:
            return self.root.joinpath(*names).is_file()
        return bool(self.fs.isfile(self._fs_path(*names)))

    def _exists(self, *names: str) -> bool:
        if self.root is not None:
            return self.root.joinpath(*names).exists()
        return bool(self.fs.exists(self._fs_path(*names)))

    def exists(self) -> bool:
        """Whether ``DIR`` already holds a run."""
        return self._isfile(MAPS, "zarr.json")

    def has_manifest(self) -> bool:
        """Whether ``DIR/manifest.parquet`` is there."""
        return self._isfile(MANIFEST)

    def clear(self) -> None:
        """Delete the run's own files (maps, progress, manifest); nothing else in ``DIR``."""
        if self.root is None:
            for name in (MAPS, PROGRESS, MANIFEST):
                if self.fs.exists(self._fs_path(name)):
                    self.fs.rm(self._fs_path(name), recursive=name != MANIFEST)
            return
        for name in (MAPS, PROGRESS):
            if (self.root / name).exists():
                shutil.rmtree(self.root / name)
        if (self.root / MANIFEST).exists():
            (self.root / MANIFEST).unlink()

    def settings(self) -> dict[str, Any]:
        """The stored settings of an existing run."""
        found = self._maps("r").attrs.get(ATTR)
        if not isinstance(found, dict):
            raise RunConflictError(
                f"{self.url + '/' + MAPS!r} is a Zarr group but not a flashtorch run; choose "
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
        if self._exists(MAPS) and not self.exists():
            raise RunConflictError(
                f"{self.url + '/' + MAPS!r} exists but is not a Zarr v3 group; remove it or "
                "choose another output folder"
            )
        if self.exists():
            old = self.settings()
            if comparable(old) != comparable(settings):
                raise RunConflictError(
                    f"{self.url!r} holds a run made with other settings "
                    f"({_describe_change(old, settings)}); run the same command to resume it, "
                    "add --overwrite (overwrite=True) to start afresh, or choose another "
                    "output folder"
                )
            return True
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)
        else:
            self.fs.makedirs(self._fs_root, exist_ok=True)
        group = self._maps("w")
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
                self._group = self._maps("r+")
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

    def progress_writer(self, rank: int) -> ProgressLog | BatchObjects:
        """A new progress log for this process (one per process and attempt).

        A :class:`ProgressLog` file for a folder, :class:`BatchObjects` for a URL.
        """
        name = f"rank{rank:05d}-{uuid.uuid4().hex[:12]}"
        if self.root is None:
            self.fs.makedirs(self._fs_path(PROGRESS), exist_ok=True)
            return BatchObjects(self.fs, self._fs_path(PROGRESS, name))
        folder = self.root / PROGRESS
        folder.mkdir(parents=True, exist_ok=True)
        return ProgressLog(folder / f"{name}.jsonl")

    def done(self) -> dict[int, dict[str, Any]]:
        """Every finished row's record, by index (complete lines of every log)."""
        if self.root is None:
            return self._done_objects()
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

    def _done_objects(self) -> dict[int, dict[str, Any]]:
        """:meth:`done` of a URL: every whole batch object under ``DIR/progress/``."""
        records: dict[int, dict[str, Any]] = {}
        folder = self._fs_path(PROGRESS)
        self.fs.invalidate_cache(folder)  # other processes and nodes wrote there meanwhile
        if not self.fs.exists(folder):
            return records
        names = sorted(p for p in self.fs.find(folder) if p.endswith(".json"))
        if not names:
            return records
        found = self.fs.cat(names, on_error="omit")
        for name in names:  # sorted: the same record wins on every rank
            try:
                batch = json.loads(found[name])
            except (KeyError, ValueError):
                continue  # vanished or torn: its rows are missing
            if not isinstance(batch, dict) or not isinstance(batch.get("records"), list):
                continue
            for record in batch["records"]:
                if isinstance(record, dict) and isinstance(record.get("index"), int):
                    records[record["index"]] = record
        return records

    # ---------------------------------------------------------------- manifest

    def write_manifest(
        self, columns: Mapping[str, list[Any]], settings: Mapping[str, Any]
    ) -> Path | str:
        """Write ``manifest.parquet`` atomically (temporary file + rename)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table(dict(columns))
        meta = dict(table.schema.metadata or {})
        meta[ATTR.encode()] = json.dumps(dict(settings), default=str).encode()
        table = table.replace_schema_metadata(meta)
        if self.root is None:  # one PUT on an object store; written aside then moved on a disk
            tmp_name = self._fs_path(f".{MANIFEST}.{uuid.uuid4().hex[:8]}.tmp")
            try:
                with self.fs.open(tmp_name, "wb") as fh:
                    pq.write_table(table, fh)
                self.fs.mv(tmp_name, self._fs_path(MANIFEST))
            finally:
                if self.fs.exists(tmp_name):
                    self.fs.rm(tmp_name)
            return f"{self.url}/{MANIFEST}"
        tmp = self.root / f".{MANIFEST}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            pq.write_table(table, tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, self.root / MANIFEST)
        finally:
            if tmp.exists():
                tmp.unlink()
        return self.root / MANIFEST

    def read_manifest(self) -> Any:
        """``manifest.parquet`` as a pyarrow ``Table``."""
        import pyarrow.parquet as pq

        if self.root is not None:
            return pq.read_table(self.root / MANIFEST)
        with self.fs.open(self._fs_path(MANIFEST), "rb") as fh:
            return pq.read_table(fh)


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


class BatchObjects:
    """The progress of one process at a URL: one immutable JSON object per finished batch.

    Object stores have no append and no ``fsync``, but a ``PUT`` is atomic: each batch's
    records go into a new object ``<prefix>-<batch>.json`` in one write, after the batch's
    chunks. Nothing is ever rewritten, so a reader sees a batch whole or not at all.

    Args:
        fs: the fsspec file system.
        prefix: the objects' path without ``-<batch>.json`` (per process and attempt).
    """

    def __init__(self, fs: Any, prefix: str) -> None:
        self.fs, self.prefix, self.count = fs, prefix, 0

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Store one batch's rows (call only after their chunks are written)."""
        rows = [dict(r) for r in records]
        if not rows:
            return
        data = json.dumps({"records": rows}, separators=(",", ":"), allow_nan=True).encode()
        self.fs.pipe_file(f"{self.prefix}-{self.count:07d}.json", data)
        self.count += 1

    def close(self) -> None:
        """Nothing to close (every object is complete once written)."""


__all__ = [
    "ATTR",
    "BatchObjects",
    "MANIFEST",
    "MAPS",
    "PIP_HINT",
    "PROGRESS",
    "ProgressLog",
    "RunConflictError",
    "RunStore",
    "comparable",
    "is_url",
    "require_fsspec",
    "require_runs_extra",
]
