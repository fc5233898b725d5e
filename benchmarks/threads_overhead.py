"""What re-entrancy costs a single-threaded CPU call, and what the per-model lock does to threads.

The pieces of a call that make methods thread-safe (:mod:`flashtorch._surgery`, threads):

* the per-model re-entrant lock (:func:`~flashtorch._surgery.model_lock`), taken by the call
  and again (re-entrantly) by :func:`~flashtorch._surgery.preserved_state`;
* the copies of the input that a model may edit in place (:func:`flashtorch._guards.model_input`);
* the thread check in the CAM's layer hooks.

Measured as the difference between normal calls and calls with the piece replaced by a no-op
(the lock by ``contextlib.nullcontext``, the copy by the identity), calls interleaved, in
process CPU time (robust to other processes on a shared machine), one torch thread, on a small
CNN (tests/conftest.py ``CleanupNet``, batch 1, 16 px: the call is all overhead, the worst case)
and resnet18 (batch 1, 64 px). Then wall-clock throughput of 2 threads x N calls of
``gradient`` on **one** model (serialised by the lock) against 2 threads on **two** models
(which run in parallel) and against the same calls made serially.

Run: ``PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/threads_overhead.py [--rounds N]``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import threading
import time
from pathlib import Path

import torch
import torchvision

import flashtorch._guards as guards
import flashtorch._surgery as surgery
import flashtorch.attribution as attribution
from flashtorch import METHODS

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.conftest import CleanupNet  # noqa: E402


def _per_call(fn, n: int) -> float:
    fn()
    t = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t) / n * 1e6  # microseconds


@contextlib.contextmanager
def _without(piece: str):
    """Replace one thread-safety piece by a no-op for the duration of the block."""
    saved = []
    if piece == "lock":
        null = lambda _model: contextlib.nullcontext()  # noqa: E731
        for mod in (surgery, attribution):
            saved.append((mod, "model_lock", mod.model_lock))
            mod.model_lock = null
    elif piece == "copy":
        import flashtorch.cam.base as cam_base
        import flashtorch.saliency._sampling as sampling
        import flashtorch.saliency.gradient as gradient

        for mod in (guards, gradient, sampling, cam_base):
            saved.append((mod, "model_input", mod.model_input))
            mod.model_input = lambda x: x
    try:
        yield
    finally:
        for mod, name, value in saved:
            setattr(mod, name, value)


def _overheads(name: str, model: torch.nn.Module, x: torch.Tensor, rounds: int, n: int):
    rows = {}
    for method in ("gradient", "guided", "gradcam"):
        call = METHODS[method](model)
        fn = lambda call=call: call(x, 1)  # noqa: E731
        full, no_lock, no_copy = [], [], []
        for _ in range(rounds):
            full.append(_per_call(fn, n))
            with _without("lock"):
                no_lock.append(_per_call(fn, n))
            with _without("copy"):
                no_copy.append(_per_call(fn, n))
        f, nl, nc = (statistics.median(v) for v in (full, no_lock, no_copy))
        rows[method] = (f, f - nl, f - nc)
    lock = model_lock_alone(model, n * 20)
    print(f"\n### {name}\n")
    print(f"`model_lock(model)` acquire + release alone: {lock:.2f} us\n")
    print("| method | call (us) | lock (us) | input copies (us) |")
    print("|---|---:|---:|---:|")
    for method, (f, dl, dc) in rows.items():
        print(f"| {method} | {f:.0f} | {dl:+.1f} | {dc:+.1f} |")


def model_lock_alone(model: torch.nn.Module, n: int) -> float:
    def fn():
        with surgery.model_lock(model):
            pass

    return _per_call(fn, n)


def _throughput(calls: int) -> None:
    torch.manual_seed(0)
    a, b = CleanupNet().eval(), CleanupNet().eval()
    x = torch.randn(4, 3, 32, 32)
    ga, gb = METHODS["gradient"](a), METHODS["gradient"](b)
    ga(x, 1), gb(x, 1)

    def wall(fn) -> float:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    def serial():
        for _ in range(2 * calls):
            ga(x, 1)

    def threads(methods):
        ts = [threading.Thread(target=lambda m=m: [m(x, 1) for _ in range(calls)]) for m in methods]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    results = {
        "serial, one model": [],
        "2 threads, one model (locked)": [],
        "2 threads, two models (parallel)": [],
    }
    for _ in range(5):
        results["serial, one model"].append(wall(serial))
        results["2 threads, one model (locked)"].append(wall(lambda: threads([ga, ga])))
        results["2 threads, two models (parallel)"].append(wall(lambda: threads([ga, gb])))
    print(
        f"\n### Throughput: {2 * calls} `gradient` calls, CleanupNet batch 4, 32 px "
        "(wall clock, median of 5)\n"
    )
    print("| how | calls / s |")
    print("|---|---:|")
    for how, times in results.items():
        print(f"| {how} | {2 * calls / statistics.median(times):.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        f"torch {torch.__version__}, one torch thread, process CPU time, median of "
        f"{args.rounds} rounds"
    )
    torch.manual_seed(0)
    _overheads(
        "CleanupNet, batch 1, 16 x 16",
        CleanupNet().eval(),
        torch.randn(1, 3, 16, 16),
        args.rounds,
        args.calls,
    )
    _overheads(
        "resnet18, batch 1, 64 x 64",
        torchvision.models.resnet18().eval(),
        torch.randn(1, 3, 64, 64),
        args.rounds,
        max(args.calls // 10, 5),
    )
    _throughput(args.calls)


if __name__ == "__main__":
    main()
