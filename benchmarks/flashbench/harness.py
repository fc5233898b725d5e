"""Timing, clocks, allocator, memory sampling and machine information for every benchmark.

Conventions: every candidate runs once to warm up, then ``rounds`` interleaved rounds - each
round runs every candidate once, round-robin, starting one candidate later each round - with
``gc`` frozen for the run and collected then disabled around each call; the statistic is the
median over rounds.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as _dt
import gc
import importlib
import os
import platform
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

CLOCKS = ("wall", "cpu")


def timer_of(clock: str) -> Callable[[], float]:
    """``wall``: :func:`time.perf_counter`; ``cpu``: :func:`time.process_time` (CPU seconds of
    this process, all threads: robust to other jobs on a shared machine; use one thread)."""
    return time.process_time if clock == "cpu" else time.perf_counter


@dataclass
class Candidate:
    """One timed callable."""

    name: str
    library: str  # limit | flashtorch | captum | pytorch-grad-cam | flashtorch-0.1.3
    method: str  # the flashtorch method it is (or is a peer of); "limit" for limits
    fn: Callable[[], Any]
    mode: str = ""  # exact | fast | amp | fast+amp | ...
    limit: str | None = None  # the limit candidate its ratio is taken against
    prepare: Callable[[], None] | None = None  # untimed, before every call
    note: str = ""
    #: the peers doing the same work, which the "no slower than" floors use (None: every peer
    #: of the method in the case). The table still shows the ratio to every peer.
    floor_peers: tuple[str, ...] | None = None


@dataclass
class Case:
    """One (model, batch, family) cell of the benchmark and its candidates."""

    model: str
    batch: int
    family: str
    rows: int  # rows per image actually pushed through the model (n samples, windows, ...)
    candidates: list[Candidate] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.model}/b{self.batch}/{self.family}"


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def silent(fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` with warnings ignored (peers warn on every call)."""

    def run() -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn()

    return run


def time_case(
    case: Case,
    rounds: int,
    warmup: int,
    device: torch.device,
    log: Callable[[str], None] = print,
    clock: str = "wall",
) -> dict[str, Any]:
    """Warm up every candidate, then ``rounds`` interleaved rounds; medians per candidate.

    A candidate that raises during the warm-up is recorded in ``errors`` and left out of the
    rounds. ``clock="cpu"`` times with :func:`time.process_time` (use it with one thread: idle
    OpenMP threads spin and count).
    """
    times: dict[str, list[float]] = {c.name: [] for c in case.candidates}
    outputs: dict[str, Any] = {}
    errors: dict[str, str] = {}
    gc.collect()
    gc.freeze()  # long-lived objects out of the collector's way
    try:
        _warm_and_time(case, rounds, warmup, device, log, times, outputs, errors, timer_of(clock))
    finally:
        gc.unfreeze()
    medians = {k: statistics.median(v) for k, v in times.items() if v}
    return {"times": times, "medians": medians, "outputs": outputs, "errors": errors}


def _warm_and_time(
    case: Case,
    rounds: int,
    warmup: int,
    device: torch.device,
    log: Callable[[str], None],
    times: dict[str, list[float]],
    outputs: dict[str, Any],
    errors: dict[str, str],
    timer: Callable[[], float] = time.perf_counter,
) -> None:
    for _ in range(max(1, warmup)):
        for c in case.candidates:
            if c.name in errors:
                continue
            try:
                if c.prepare:
                    c.prepare()
                outputs[c.name] = c.fn()
                sync(device)
            except Exception as exc:
                errors[c.name] = f"{type(exc).__name__}: {exc}"
                log(f"    ! {c.name}: {errors[c.name][:200]}")
    active = [c for c in case.candidates if c.name not in errors]
    for r in range(rounds):
        shift = r % max(1, len(active))
        for c in active[shift:] + active[:shift]:
            if c.prepare:
                c.prepare()
            gc.collect()
            gc.disable()
            try:
                sync(device)
                t0 = timer()
                c.fn()
                sync(device)
                times[c.name].append(timer() - t0)
            finally:
                gc.enable()


def time_rounds(
    candidates: dict[str, Callable[[], Any]], rounds: int, clock: str, log: Callable[[str], None]
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """:func:`time_case` for a plain ``{name: callable}`` (errors propagate), with a log line
    per round; returns ``(times, warm-up outputs)``."""
    cands = [Candidate(n, "", "", fn) for n, fn in candidates.items()]
    times: dict[str, list[float]] = {n: [] for n in candidates}
    outputs: dict[str, Any] = {}
    timer = timer_of(clock)
    gc.collect()
    gc.freeze()
    try:
        for c in cands:
            outputs[c.name] = c.fn()
        for r in range(rounds):
            shift = r % len(cands)
            for c in cands[shift:] + cands[:shift]:
                gc.collect()
                gc.disable()
                try:
                    t0 = timer()
                    c.fn()
                    times[c.name].append(timer() - t0)
                finally:
                    gc.enable()
            log(
                f"  round {r + 1}/{rounds}: "
                + ", ".join(f"{n} {times[n][-1]:.2f}s" for n in candidates)
            )
    finally:
        gc.unfreeze()
    return times, outputs


def cosine(a: Tensor, b: Tensor) -> float:
    """Smallest per-image cosine similarity of two map batches (flattened per image)."""
    if a.dim() == 4 and b.dim() == 4 and a.shape != b.shape and 1 in (a.shape[1], b.shape[1]):
        # one map per image (occlusion, CAMs) vs one per channel (Captum): channel mean
        a, b = a.mean(1, keepdim=True), b.mean(1, keepdim=True)
    a = a.reshape(a.shape[0], -1).double()
    b = b.reshape(b.shape[0], -1).double()
    if a.shape != b.shape:
        return float("nan")
    num = (a * b).sum(1)
    na, nb = a.norm(dim=1), b.norm(dim=1)
    cos = num / (na * nb).clamp_min(1e-300)
    # two all-zero maps agree (a CAM that is negative everywhere); one zero map does not
    cos = torch.where((na == 0) & (nb == 0), torch.ones_like(cos), cos)
    return float(cos.min())


def as_maps(out: Any) -> Tensor | None:
    """The maps of a candidate's output (an ``Attribution``, a tensor or a NumPy array)."""
    import numpy as np

    if out is None:
        return None
    if hasattr(out, "maps"):
        return out.maps.detach().float().cpu()
    if isinstance(out, np.ndarray):
        return torch.from_numpy(out).float()
    if isinstance(out, Tensor):
        return out.detach().float().cpu()
    return None


def rel_noise(times: list[float]) -> float:
    """Run-to-run noise of one candidate: 1.4826 x median absolute deviation / median."""
    if len(times) < 2:
        return float("nan")
    med = statistics.median(times)
    mad = statistics.median(abs(t - med) for t in times)
    return 1.4826 * mad / med if med > 0 else float("nan")


def set_threads(threads: int) -> int:
    """``torch.set_num_threads(threads or all cores)``; returns the count."""
    n = threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


#: glibc ``mallopt`` parameters: no ``mmap`` for large blocks, never give the heap back.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_heap() -> str:
    """Make glibc serve every allocation from a heap it never returns to the system.

    By default glibc maps each block above its mmap threshold afresh and unmaps it when freed,
    so every call of a large batch page-faults in its largest activations again; which blocks
    cross the threshold depends on the heap's history, so the same computation varied between
    candidates by its neighbour (benchmarks/README.md has the figures). With
    ``M_MMAP_MAX = 0`` and an unbounded trim threshold freed memory is reused and timings are
    stable. It applies to this process only (the peak memory of ``--memory`` is measured in
    child processes, without it) and to every candidate alike. Returns what was done, for the
    report.
    """
    if sys.platform != "linux":
        return "default allocator (not Linux)"
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    except OSError as exc:
        return f"default allocator ({exc})"
    return (
        "glibc heap kept (mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD=2^31-1)"
        if ok
        else "default allocator (mallopt refused)"
    )


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Current resident set size of this process (Linux ``/proc/self/statm``)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:  # pragma: no cover - not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class RssSampler:
    """Sample RSS every ``interval`` seconds on a thread; ``peak`` is the largest sample."""

    def __init__(self, interval: float = 0.0005) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self.peak = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def measure_candidate_memory(c: Candidate, device: torch.device) -> dict[str, float]:
    """Working (peak) and persistent memory of one candidate's call, in MB."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before_warm = torch.cuda.memory_allocated(device)
        if c.prepare:
            c.prepare()
        c.fn()
        torch.cuda.synchronize(device)
        gc.collect()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        if c.prepare:
            c.prepare()
        c.fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"peak_mb": (peak - base) / 2**20, "persistent_mb": (base - before_warm) / 2**20}
    before_warm = rss_bytes()
    if c.prepare:
        c.prepare()
    c.fn()
    gc.collect()
    base = rss_bytes()
    if c.prepare:
        c.prepare()
    with RssSampler() as s:
        c.fn()
    return {"peak_mb": (s.peak - base) / 2**20, "persistent_mb": (base - before_warm) / 2**20}


def portable_path(path: str) -> str:
    """``path`` as a report may keep it: relative to the repository when inside it, else only
    its last component (no machine's directory layout in saved results)."""
    if not path:
        return path
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    p = Path(path).expanduser().resolve()
    try:
        return str(p.relative_to(root))
    except ValueError:
        return f".../{p.name}"


def loadavg() -> tuple[float, float, float] | None:
    """``os.getloadavg()`` where the platform has it."""
    return os.getloadavg() if hasattr(os, "getloadavg") else None


def machine_info(device: torch.device) -> dict[str, Any]:
    """CPU / GPU, cores, threads, library versions and the load average, for a report."""
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "device": str(device),
    }
    for mod in ("torchvision", "captum", "pytorch_grad_cam", "timm", "flashtorch"):
        with contextlib.suppress(Exception):
            info[mod] = importlib.import_module(mod).__version__
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        info["pytorch_grad_cam"] = version("grad-cam")
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["tf32"] = bool(torch.backends.cudnn.allow_tf32)
    with contextlib.suppress(OSError):
        info["loadavg_start"] = os.getloadavg()
    return info
