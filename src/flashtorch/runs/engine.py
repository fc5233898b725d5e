"""The run loop: a source through methods into a :class:`~flashtorch.runs.store.RunStore`.

One ``DataLoader`` with worker processes decodes and resizes images while the model computes;
each batch goes through every method once, its maps are written chunk by chunk, then its rows
are logged as done (see :mod:`flashtorch.runs.store` for why in that order). Nothing of a batch
is kept once it is written, so memory stays flat however long the run. The model's output on
the clean batch (predicted class, confidence) is read from the first method's own forward pass
with a forward hook (removed in ``finally``), not from an extra forward pass.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import math
import os
import queue
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from .._shared import SharedPass
from .._shared import plan as plan_passes
from .._surgery import model_device, preserved_state
from .._targets import logits_of
from ..attribution import AttributionMethod, get_method, reduce_channels
from ..errors import ClassNameError, InputError, MethodError, TargetError
from . import distributed
from .sources import (
    NO_TARGET,
    SOURCE_TARGETS,
    RunDataset,
    item_targets,
    probe_shape,
    resolve_source,
)
from .store import RunStore, require_runs_extra

METRICS = ("deletion", "insertion")
DTYPES = ("float32", "float16")
#: Hidden fault injection for the tests: ``"RANK:BATCH:raise|kill"`` fails rank RANK after
#: writing the maps of its batch BATCH (0-based), before logging them, on a first attempt only.
FAULT_ENV = "FLASHTORCH_RUNS_FAULT"
_AGREEMENT_SIDE = 56


@dataclass
class RunSummary:
    """What a run did.

    Attributes:
        out: the run directory (a ``Path``), or its URL (a string).
        images: ``N``, the number of inputs.
        ok: rows with status ``ok``.
        errors: rows with status ``error``.
        computed: rows computed by this call (all processes), the rest were done before.
        seconds: wall-clock time of this call's loop (to the end of the last rank).
        complete: every row is done (the manifest holds all ``N``).
    """

    out: Path | str
    images: int
    ok: int
    errors: int
    computed: int
    seconds: float
    complete: bool

    @property
    def images_per_second(self) -> float:
        """Rows computed by this call per second."""
        return self.computed / self.seconds if self.seconds > 0 else float("nan")

    def line(self) -> str:
        """The one-line summary the command prints."""
        before = self.images - self.computed
        earlier = f", {before} from an earlier run" if before else ""
        return (
            f"{self.images} images ({self.ok} ok, {self.errors} error(s){earlier}); computed "
            f"{self.computed} in {self.seconds:.1f} s ({self.images_per_second:.2f} images/s); "
            f"results in {self.out} (maps.zarr, manifest.parquet)"
        )


# --------------------------------------------------------------------------------------------
# set-up helpers
# --------------------------------------------------------------------------------------------


def _model_digest(model: nn.Module) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        t = tensor.detach()
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        if t.numel():
            h.update(t.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _load(
    model: nn.Module | str,
    device: torch.device,
    seed: int,
    trust_pickle: bool,
    size: int | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    pretrained: bool = False,
) -> tuple[nn.Module, str, tuple[float, ...], tuple[float, ...], int, tuple[str, ...] | None]:
    """``(model, spec, mean, std, side, class names of the source or None)``."""
    from ..utils.image import IMAGENET_MEAN, IMAGENET_STD

    names: tuple[str, ...] | None = None
    if isinstance(model, (str, os.PathLike)):
        from ..models import resolve_model

        spec = os.fspath(model)
        torch.manual_seed(seed)  # random-weight architectures: the same weights on every rank
        loaded = resolve_model(
            spec, pretrained=pretrained, trust_pickle=trust_pickle, device=device, warn=False
        )
        if loaded.notice:  # random weights, a zero head: announced where the run was asked
            warnings.warn(loaded.notice, UserWarning, stacklevel=3)
        net, config = loaded.model, loaded.config
        default_size, default_mean, default_std = config.size, config.mean, config.std
        names = config.class_names
    elif isinstance(model, nn.Module):
        net, spec = model, f"{type(model).__module__}.{type(model).__qualname__}"
        default_size, default_mean, default_std = 224, tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)
        default_size = int(getattr(net, "input_size", default_size) or default_size)
    else:
        raise InputError(
            f"model must be an nn.Module or a model spec string, got {type(model).__name__}"
        )
    return (
        net,
        spec,
        tuple(float(v) for v in (mean or default_mean)),
        tuple(float(v) for v in (std or default_std)),
        int(size or default_size),
        names,
    )


def _class_lookup(
    num_classes: int, class_names: Sequence[str] | None
) -> tuple[Callable[[str], int] | None, Callable[[int], str]]:
    """(name -> index or None when the model has no class index, index -> name)."""
    if class_names is not None:
        names = [str(c) for c in class_names]
        table = {n: i for i, n in enumerate(names)}

        def by_list(name: str) -> int:
            if name in table:
                return table[name]
            raise TargetError(f"no class {name!r} in class_names")

        return by_list, lambda i: names[i] if 0 <= i < len(names) else ""
    if num_classes == 1000:
        from ..utils.imagenet import ImageNetIndex

        index = ImageNetIndex()
        names = index.names
        return (lambda name: int(index[name])), lambda i: names[i] if 0 <= i < 1000 else ""
    return None, lambda i: ""


def _resolve_fixed_target(
    target: Any, num_classes: int, lookup: Callable[[str], int] | None
) -> Any:
    if target is None or target in SOURCE_TARGETS or callable(target):
        return target
    if isinstance(target, bool):
        raise TargetError(f"target must be a class index or name, got {target!r}")
    if isinstance(target, str) and target.strip().lstrip("+").isdigit():
        target = int(target)
    if isinstance(target, int):
        if num_classes and not 0 <= target < num_classes:
            raise TargetError(
                f"target class {target} is out of range: the model has {num_classes} classes "
                f"(valid: 0..{num_classes - 1})"
            )
        return target
    if isinstance(target, str):
        if lookup is None:
            raise TargetError(
                f"class name {target!r} needs a class index: an ImageNet model (1000 outputs) "
                f"or class_names=[...]; this model has {num_classes} outputs"
            )
        return lookup(target)
    raise TargetError(
        "target must be None (predicted class), a class index, a class name, 'column', "
        f"'folder' or a callable, got {type(target).__name__}"
    )


def _method_specs(
    methods: Sequence[str] | Mapping[str, Mapping[str, Any]] | str,
    options: Mapping[str, Mapping[str, Any]] | None,
) -> dict[str, dict[str, Any]]:
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    if isinstance(methods, Mapping):
        specs = {get_method(k).name: dict(v or {}) for k, v in methods.items()}
    else:
        specs = {get_method(m).name: {} for m in methods}
    if not specs:
        raise MethodError("give at least one method, e.g. methods=['gradient', 'gradcam']")
    for name, extra in (options or {}).items():
        key = get_method(name).name
        if key not in specs:
            raise MethodError(f"options given for {name!r}, which is not among the methods")
        specs[key].update(extra)
    return specs


def _build(model: nn.Module, specs: Mapping[str, dict[str, Any]]) -> dict[str, AttributionMethod]:
    built = {}
    for name, opts in specs.items():
        try:
            built[name] = get_method(name)(model, **opts)
        except TypeError as exc:
            raise MethodError(f"bad option for method {name!r}: {exc}") from None
    return built


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if callable(value):
        return f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', repr(value))}"
    return repr(value)


def _versions() -> dict[str, str]:
    from .. import __version__

    found = {"flashtorch": __version__, "torch": torch.__version__}
    for name in ("zarr", "pyarrow", "numpy"):
        with contextlib.suppress(Exception):
            found[name] = str(__import__(name).__version__)
    return found


def _fault() -> tuple[int, int, str] | None:
    text = os.environ.get(FAULT_ENV, "")
    if not text or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0:
        return None
    rank, batch, mode = text.split(":")
    return int(rank), int(batch), mode


# --------------------------------------------------------------------------------------------
# per batch
# --------------------------------------------------------------------------------------------


class _CleanOutput:
    """A forward hook on the user's model that keeps one output; removed on exit.

    It keeps the output of the first forward pass whose input equals the clean batch: the
    method's own clean pass, so no extra forward pass is needed for the predictions.
    """

    def __init__(self, model: nn.Module, x: Tensor) -> None:
        self.model, self.x, self.output = model, x, None
        self._handle: Any = None

    def __enter__(self) -> _CleanOutput:
        self._handle = self.model.register_forward_hook(self._hook)
        return self

    def _hook(self, _module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self.output is not None or not args or not isinstance(args[0], Tensor):
            return
        inp = args[0]
        if (
            inp.shape == self.x.shape
            and inp.device == self.x.device
            and torch.equal(inp.detach(), self.x)
        ):
            with contextlib.suppress(Exception):
                self.output = logits_of(output).detach()

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def _spearman_agreement(maps: list[Tensor]) -> Tensor:
    """Mean pairwise Spearman correlation of the channel-reduced, pooled maps: ``(B,)``."""
    reduced = []
    for m in maps:
        r = reduce_channels(m.float(), "max_abs") if m.shape[1] > 1 else m.float()
        side = (min(_AGREEMENT_SIDE, r.shape[-2]), min(_AGREEMENT_SIDE, r.shape[-1]))
        r = F.adaptive_avg_pool2d(r, side).flatten(1)
        ranks = r.argsort(1).argsort(1).float()
        ranks = ranks - ranks.mean(1, keepdim=True)
        reduced.append(ranks / ranks.norm(dim=1, keepdim=True).clamp_min(1e-12))
    total = torch.zeros(reduced[0].shape[0], device=reduced[0].device)
    pairs = 0
    for i in range(len(reduced)):
        for j in range(i + 1, len(reduced)):
            total += (reduced[i] * reduced[j]).sum(1)
            pairs += 1
    return total / pairs


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class _Job:
    model: nn.Module
    methods: dict[str, AttributionMethod]
    store: RunStore
    target: Any
    per_item: bool
    metrics: tuple[str, ...]
    metric_step: float
    seed: int
    dtype: np.dtype
    #: positions in ``methods`` of the calls of one batch (flashtorch._shared.plan)
    passes: list[list[int]] = field(default_factory=list)


def _process(
    job: _Job,
    batch: Mapping[str, Any],
    device: torch.device,
    fault: bool,
    fault_mode: str,
    writer: _Writes,
    log: Any,
) -> int:
    indices = [int(i) for i in batch["index"]]
    ok = [bool(v) for v in batch["ok"]]
    records: dict[int, dict[str, Any]] = {}
    for k, i in enumerate(indices):
        crop = [float(v) for v in batch["crop"][k]]
        records[i] = {
            "index": i,
            "status": "ok" if ok[k] else "error",
            "error": batch["error"][k],
            "width": int(batch["width"][k]),
            "height": int(batch["height"][k]),
            "crop": crop,
        }
    rows = [k for k in range(len(indices)) if ok[k]]
    writes: list[tuple[str, list[int], np.ndarray]] = []
    if rows:
        good = [indices[k] for k in rows]
        x = batch["image"][rows].to(device, non_blocking=True)
        if job.per_item:
            item_t = [int(batch["target"][k]) for k in rows]
            target: Any = None if all(t == NO_TARGET for t in item_t) else item_t
            if target is not None and NO_TARGET in item_t:
                raise TargetError("some items have a target and some none; give all or none")
        else:
            target = job.target
        seconds: dict[str, float] = {}
        maps_for_agreement: list[Tensor] = []
        metric_values: dict[str, Tensor] = {}
        explained: Tensor | None = None
        names = list(job.methods)
        with _CleanOutput(job.model, x) as clean:
            for group in job.passes:  # methods that share a forward pass run as one call
                torch.manual_seed(job.seed)
                _sync(device)
                t0 = time.perf_counter()
                members = [job.methods[names[j]] for j in group]
                if len(members) == 1:
                    results = [members[0](x, target=target)]
                else:
                    results = SharedPass(members).attribute(x, target)
                _sync(device)
                share = (time.perf_counter() - t0) / len(rows) / len(group)
                for j, res in zip(group, results):
                    name = names[j]
                    seconds[name] = share
                    maps = res.maps
                    if explained is None and res.targets is not None:
                        explained = res.targets
                    writes.append(
                        (name, good, maps.detach().to("cpu").numpy().astype(job.dtype, copy=False))
                    )
                    if len(job.methods) > 1:
                        maps_for_agreement.append(maps)
                    for metric in job.metrics:
                        from ..metrics.faithfulness import perturbation_curve

                        curve = perturbation_curve(
                            job.model,
                            x,
                            maps,
                            res.targets if res.targets is not None else target,
                            mode=metric,
                            step=job.metric_step,
                        )  # type: ignore[arg-type]
                        metric_values[f"{metric}_{name}"] = curve.auc.detach().float().cpu()
        output = clean.output
        if output is None:  # no method ran a clean pass we could see: one forward pass
            with preserved_state(job.model, eval_mode=True), torch.no_grad():
                output = logits_of(job.model(x)).detach()
        agreement = (
            _spearman_agreement(maps_for_agreement).cpu().tolist()
            if maps_for_agreement
            else [math.nan] * len(rows)
        )
        if output.dim() == 2:
            probs = output.float().softmax(1)
            top_p, top_i = probs.max(1)
            predicted, score = top_i.cpu().tolist(), top_p.cpu().tolist()
            if explained is not None:
                tprob = probs.gather(1, explained.to(probs.device).view(-1, 1)).squeeze(1)
                target_score = tprob.cpu().tolist()
            else:
                target_score = [math.nan] * len(rows)
        else:
            predicted, score = [NO_TARGET] * len(rows), [math.nan] * len(rows)
            target_score = [math.nan] * len(rows)
        tlist = explained.cpu().tolist() if explained is not None else [NO_TARGET] * len(rows)
        for j, i in enumerate(good):
            records[i].update(
                target=int(tlist[j]),
                predicted=int(predicted[j]),
                score=float(score[j]),
                target_score=float(target_score[j]),
                agreement=float(agreement[j]),
                seconds={m: s for m, s in seconds.items()},
                metrics={k: float(v[j]) for k, v in metric_values.items()},
            )
    if fault:  # the worst moment: every earlier batch done, this one's maps written, not logged
        writer.flush()
        for name, where, data in writes:
            job.store.write_rows(name, where, data)
        if fault_mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f"injected failure ({FAULT_ENV})")
    done = [records[i] for i in indices]

    def commit() -> None:
        for name, where, data in writes:
            job.store.write_rows(name, where, data)
        log.append(done)  # only now, after their maps, are these rows done

    writer.submit(commit)
    return len(indices)


class _Writes:
    """The store writes of finished batches, in order, on one background thread.

    The model computes the next batch while the last one's maps are compressed and written
    (and then its rows logged as done, which keeps a kill at any moment safe: a batch whose
    log line is missing is computed again). At most ``depth`` batches wait, so memory stays
    flat; an error of the thread is raised in the caller at the next :meth:`submit` or at
    :meth:`close`.
    """

    def __init__(self, depth: int = 2) -> None:
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._work, name="flashtorch-run-writes", daemon=True
        )
        self._thread.start()

    def _work(self) -> None:
        while True:
            task = self._queue.get()
            try:
                if task is None:
                    return
                if self._error is None:
                    task()
            except BaseException as exc:  # raised in the caller
                self._error = exc
            finally:
                self._queue.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def submit(self, task: Callable[[], None]) -> None:
        """Queue ``task`` (waits while ``depth`` tasks are pending)."""
        self._raise()
        self._queue.put(task)

    def flush(self) -> None:
        """Wait until every queued task is done."""
        self._queue.join()
        self._raise()

    def close(self, raise_errors: bool = True) -> None:
        """Finish every queued task and stop the thread (idempotent)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if raise_errors:
            self._raise()


# --------------------------------------------------------------------------------------------
# manifest
# --------------------------------------------------------------------------------------------


def manifest_columns(
    source_paths: Sequence[str],
    records: Mapping[int, Mapping[str, Any]],
    methods: Sequence[str],
    metrics: Sequence[str],
    name_of: Callable[[int], str],
) -> dict[str, list[Any]]:
    """The manifest's columns, one row per input (``status="missing"`` for rows not done)."""
    nan = math.nan
    cols: dict[str, list[Any]] = {
        k: []
        for k in (
            "index",
            "path",
            "status",
            "error",
            "target",
            "target_name",
            "predicted",
            "predicted_name",
            "score",
            "target_score",
            "width",
            "height",
            "crop_left",
            "crop_top",
            "crop_width",
            "crop_height",
            "agreement",
        )
    }
    for m in methods:
        cols[f"seconds_{m}"] = []
    for metric in metrics:
        for m in methods:
            cols[f"{metric}_{m}"] = []
    for i, path in enumerate(source_paths):
        r = records.get(i, {})
        status = r.get("status", "missing")
        target, predicted = int(r.get("target", NO_TARGET)), int(r.get("predicted", NO_TARGET))
        crop = r.get("crop", [nan] * 4)
        cols["index"].append(i)
        cols["path"].append(path)
        cols["status"].append(status)
        cols["error"].append(r.get("error", "") or "")
        cols["target"].append(target)
        cols["target_name"].append(name_of(target) if target >= 0 else "")
        cols["predicted"].append(predicted)
        cols["predicted_name"].append(name_of(predicted) if predicted >= 0 else "")
        for key in ("score", "target_score", "agreement"):
            cols[key].append(float(r.get(key, nan)))
        cols["width"].append(int(r.get("width", 0)))
        cols["height"].append(int(r.get("height", 0)))
        for key, value in zip(("crop_left", "crop_top", "crop_width", "crop_height"), crop):
            cols[key].append(float(value))
        secs = r.get("seconds", {})
        for m in methods:
            cols[f"seconds_{m}"].append(float(secs.get(m, nan)))
        vals = r.get("metrics", {})
        for metric in metrics:
            for m in methods:
                cols[f"{metric}_{m}"].append(float(vals.get(f"{metric}_{m}", nan)))
    return cols


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------


def run(
    model: nn.Module | str,
    source: str | os.PathLike[str] | torch.utils.data.Dataset,
    methods: Sequence[str] | Mapping[str, Mapping[str, Any]] | str = ("gradient",),
    out: str | os.PathLike[str] = "run",
    *,
    target: Any = None,
    batch_size: int = 16,
    num_workers: int = 2,
    size: int | None = None,
    dtype: str = "float32",
    metrics: Sequence[str] = (),
    metric_step: float = 0.02,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    class_names: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    overwrite: bool = False,
    progress: bool = True,
    trust_pickle: bool = False,
    pretrained: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    fast: bool = True,
) -> RunSummary:
    """Stream every input of ``source`` through ``methods`` into ``out`` (resumable).

    Writes ``out/maps.zarr`` (one ``(N, C|1, H, W)`` array per method, a chunk per image) and
    ``out/manifest.parquet`` (one row per input: path, status, error, target, prediction,
    confidence, original size and crop, seconds per method, requested metrics); see
    :mod:`flashtorch.runs`. Running the same call again after an interruption finishes the
    run; under ``torchrun`` each process takes a disjoint share.

    Args:
        model: an ``nn.Module`` (used on its own device) or a model spec
            (``efficientnet_lite0``, ``torchvision:NAME[:WEIGHTS]``, ``timm:NAME[:WEIGHTS]``,
            ``hf:PATH``, a file, ``package.module:factory``; loaded on ``device`` with its
            data config: input size, mean/std and class names).
        source: a folder (recursive), a list file (``path[,target]`` per line) or a map-style
            ``torch.utils.data.Dataset`` yielding an image or ``(image, target, ...)``.
        methods: method names, ``"a,b"``, or ``{name: options}``.
        out: the run directory: a local folder, or an fsspec URL (``s3://bucket/run``,
            ``gs://...``, ``file:///shared/run``, ``memory://run``; needs fsspec and the
            protocol's package, e.g. s3fs), which every process and node writes to directly.
        target: ``None`` (each image's predicted class), a class index or name, ``"column"``
            (the list file's second column, or a Dataset item's target), ``"folder"`` (the
            class sub-folder's name, looked up in the model's class index), or a callable
            ``f(output) -> (B,)``.
        batch_size: images per batch.
        num_workers: ``DataLoader`` worker processes decoding images (0: in this process).
        size: input side for files (default: the model's, 224).
        dtype: dtype of the stored maps, ``"float32"`` or ``"float16"``.
        metrics: any of ``"deletion"``, ``"insertion"`` (AUC per image and method).
        metric_step: share of pixels changed per step of those curves.
        method_options: ``{method: options}`` merged into ``methods``' options.
        class_names: the model's class names by index (default: ImageNet's for 1000 outputs).
        mean: normalisation mean for files (default: the model's, else ImageNet's).
        std: normalisation standard deviation for files.
        seed: global seed set before each method call (and before loading a spec's model).
        device: for a spec: ``None``/``"auto"`` (``cuda:LOCAL_RANK`` if CUDA, else CPU),
            or a device.
        overwrite: delete an existing run in ``out`` first (its own files only).
        progress: show a progress bar (rank 0).
        trust_pickle: allow a whole pickled model file (see :func:`flashtorch.models.load_model`).
        pretrained: for a ``torchvision:`` / ``timm:`` spec, the default pretrained weights from
            the local cache (see :func:`flashtorch.models.resolve_model`); without them (or
            ``:WEIGHTS``) the model has random weights, announced with a ``UserWarning``.
        storage_options: for a URL ``out``, the options of its fsspec file system
            (credentials, endpoint, ...), e.g. ``{"key": ..., "secret": ...}`` for s3fs.
        fast: run every method that supports it with ``fast=True`` (on a BatchNorm-folded,
            channels-last copy of the model: exact up to float rounding, the model itself is
            never changed; see :class:`~flashtorch.attribution.AttributionMethod`), unless its
            options set ``fast`` themselves. ``False``: on the model as it is.

    Returns:
        A :class:`RunSummary` (on every rank).

    Raises:
        MissingDependencyError: zarr or pyarrow is missing (``pip install "flashtorch[runs]"``),
            or fsspec or the package of a URL's protocol (s3fs...).
        RunConflictError: ``out`` holds a run made with other settings.
        MethodError: unknown method or option. TargetError: a target the model cannot have.
        InputError: bad arguments or an empty source.

    Example:
        >>> import flashtorch
        >>> summary = flashtorch.run("efficientnet_lite0", "val/", ["gradient", "gradcam"],
        ...                          out="val-run")  # doctest: +SKIP
        >>> flashtorch.open_run("val-run").manifest.head()  # doctest: +SKIP
    """
    require_runs_extra()
    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise InputError(f"num_workers must be an integer >= 0, got {num_workers!r}")
    metrics = tuple(metrics)
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise InputError(f"unknown metric {bad[0]!r}; choose from {', '.join(METRICS)}")
    if not 0 < float(metric_step) <= 1:
        raise InputError(f"metric_step must be in (0, 1], got {metric_step!r}")
    specs = _method_specs(methods, method_options)
    if fast:
        for name, opts in specs.items():
            if get_method(name).supports_fast:
                opts.setdefault("fast", True)
    src = resolve_source(source)
    store = RunStore(out, storage_options)  # a bad URL or a missing fsspec fails here

    ctx = distributed.init(device)
    log = None
    writer: _Writes | None = None
    try:
        net, spec, mean_t, std_t, side, source_names = _load(
            model, ctx.device, seed, trust_pickle, size, mean, std, pretrained
        )
        dev = ctx.device if isinstance(model, (str, os.PathLike)) else model_device(net)
        shape = probe_shape(src, side)
        with preserved_state(net, eval_mode=True), torch.no_grad():
            probe_out = logits_of(net(torch.zeros(1, *shape, device=dev)))
        num_classes = int(probe_out.shape[1]) if probe_out.dim() == 2 else 0
        if (
            class_names is None
            and source_names is not None
            and num_classes != 1000
            and len(source_names) == num_classes
        ):
            class_names = source_names  # e.g. an hf: model's id2label (ImageNet's stay fuzzy)
        lookup, name_of = _class_lookup(num_classes, class_names)
        fixed = _resolve_fixed_target(target, num_classes, lookup)
        per_item_targets = None
        if target in SOURCE_TARGETS:
            if lookup is None:

                def lookup(name: str) -> int:  # indices written as text still work
                    if name.strip().isdigit():
                        return int(name)
                    raise ClassNameError(f"no class index to look {name!r} up in")

            per_item_targets = item_targets(src, target, lookup)
            if per_item_targets is not None and num_classes:
                out_of_range = [t for t in per_item_targets if not 0 <= t < num_classes]
                if out_of_range:
                    raise TargetError(
                        f"target class {out_of_range[0]} is out of range: the model has "
                        f"{num_classes} classes"
                    )
        instances = _build(net, specs)
        layout = {}
        probe = torch.zeros(1, *shape, device=dev)
        for name, method in instances.items():  # bad layers and options fail before any work
            probe_target = fixed if fixed not in SOURCE_TARGETS else None
            layout[name] = (len(src), *tuple(method(probe, target=probe_target).maps.shape[1:]))
        settings = {
            "format": 1,
            "model": spec,
            "model_digest": _model_digest(net),
            "methods": _jsonable(specs),
            "target": _jsonable(target),
            "input_shape": list(shape),
            "mean": list(mean_t),
            "std": list(std_t),
            "dtype": dtype,
            "metrics": list(metrics),
            "metric_step": float(metric_step) if metrics else None,
            "seed": int(seed),
            "n": len(src),
            "source": {"kind": src.kind, "identity": src.identity},
            "location": None if src.root is None else str(src.root.resolve()),
            "class_names": list(class_names) if class_names is not None else None,
            "versions": _versions(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
        plan: Any = None
        if ctx.rank == 0:
            try:
                if overwrite and restart == 0:  # a restart of this job continues its own work
                    store.clear()
                store.create_or_check(settings, layout, dtype)
                done = store.done()
                plan = ("ok", [i for i in range(len(src)) if i not in done])
            except Exception as exc:
                plan = ("error", type(exc).__name__, str(exc))
                if not ctx.distributed:
                    raise
                ctx.broadcast(plan)
                raise
        plan = ctx.broadcast(plan)
        if plan[0] == "error":
            from .store import RunConflictError

            raise RunConflictError(plan[2])
        todo: list[int] = plan[1]
        mine = distributed.share(todo, ctx.rank, ctx.world_size)
        dataset = RunDataset(
            src,
            side,
            mean_t,
            std_t,
            shape,
            targets=per_item_targets,
            use_item_target=target == "column" and src.kind == "dataset",
            lookup=_name_table(lookup, class_names, num_classes),
        )
        job = _Job(
            net,
            instances,
            store,
            fixed if fixed not in SOURCE_TARGETS else None,
            per_item_targets is not None or (target == "column" and src.kind == "dataset"),
            metrics,
            float(metric_step),
            int(seed),
            np.dtype(dtype),
            plan_passes(list(instances.values())),
        )
        fault = _fault()
        log = store.progress_writer(ctx.rank)
        writer = _Writes()
        t0 = time.perf_counter()
        with (
            _bar(progress and ctx.rank == 0, len(todo), ctx.world_size) as bar,
            torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []),
        ):
            for number, batch in enumerate(_batches(dataset, mine, batch_size, num_workers, dev)):
                hit = fault is not None and fault[0] == ctx.rank and fault[1] == number
                n = _process(job, batch, dev, hit, fault[2] if fault else "", writer, log)
                bar.update(n)
            writer.close()
        ctx.barrier()
        seconds = ctx.gather_max(time.perf_counter() - t0)
        records = store.done()
        complete = len(records) >= len(src) and all(i in records for i in range(len(src)))
        if ctx.rank == 0:
            columns = manifest_columns(src.paths, records, list(instances), metrics, name_of)
            store.write_manifest(columns, settings)
        ctx.barrier()
        statuses = [r.get("status") for r in records.values()]
        return RunSummary(
            store.location,
            len(src),
            statuses.count("ok"),
            statuses.count("error"),
            len(todo),
            seconds,
            complete,
        )
    finally:
        if writer is not None:
            writer.close(raise_errors=False)  # the batches before an error are kept
        if log is not None:
            log.close()
        ctx.close()


def _name_table(
    lookup: Callable[[str], int] | None, class_names: Sequence[str] | None, num_classes: int
) -> dict[str, int]:
    """Name -> index for Dataset targets given as names (resolved in the workers)."""
    if class_names is not None:
        return {str(c): i for i, c in enumerate(class_names)}
    if num_classes == 1000:
        from ..utils.imagenet import ImageNetIndex

        return {n: i for i, n in enumerate(ImageNetIndex().names)}
    return {}


def _batches(
    dataset: RunDataset,
    mine: Sequence[int],
    batch_size: int,
    num_workers: int,
    device: torch.device,
) -> Iterator[dict[str, Any]]:
    if not mine:
        return iter(())
    loader = DataLoader(
        Subset(dataset, list(mine)),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        prefetch_factor=4 if num_workers else None,
    )
    return iter(loader)


class _Bar:
    """tqdm over all ranks' work, estimated on rank 0 (its own count times the world size)."""

    def __init__(self, enabled: bool, total: int, world: int) -> None:
        self.world, self.total, self.count = world, total, 0
        self.bar = None
        if enabled and total:
            import sys

            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                unit="img",
                desc="run",
                file=sys.stderr,
                dynamic_ncols=True,
                leave=False,
                smoothing=0.1,
            )

    def update(self, n: int) -> None:
        if self.bar is not None:
            step = min(n * self.world, self.total - self.count)
            self.count += step
            self.bar.update(step)

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


def _bar(enabled: bool, total: int, world: int) -> _Bar:
    return _Bar(enabled, total, world)


__all__ = ["METRICS", "RunSummary", "manifest_columns", "run"]
