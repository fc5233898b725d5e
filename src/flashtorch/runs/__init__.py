"""Whole datasets: a folder or any Dataset through any methods into Zarr + Parquet, resumable.

* :func:`run` - stream a source through methods into ``DIR/maps.zarr`` (Zarr v3, one array
  per method, a chunk per image) and ``DIR/manifest.parquet``; resumable after any kill; one
  process, or many under ``torchrun`` (each rank a disjoint share). ``DIR`` is a local folder
  or an fsspec URL (``s3://bucket/run``..., with ``storage_options``).
* :func:`open_run` - the manifest as a pandas DataFrame and the maps as lazily read arrays.

Needs the ``runs`` extra: ``pip install "flashtorch[runs]"`` (zarr >= 3, pyarrow, pandas;
fsspec for URLs).

Example:
    >>> import flashtorch
    >>> flashtorch.run("efficientnet_lite0", "photos/", ["gradient", "gradcam"],
    ...                out="photos-run")  # doctest: +SKIP
    >>> run = flashtorch.open_run("photos-run")  # doctest: +SKIP
    >>> run.manifest.sort_values("score").head()  # doctest: +SKIP
"""

from .engine import METRICS, RunSummary, run
from .reader import Run, open_run
from .store import RunConflictError

__all__ = ["METRICS", "Run", "RunConflictError", "RunSummary", "open_run", "run"]
