"""A/B: the guided/deconvnet rules of a git revision against the working tree, on one CPU thread.

resnet50 (torchvision, random weights, eval mode), batch 16, 224 px, fixed targets. Each round
runs every candidate once, in an order rotated from round to round (so that no candidate always
follows the same neighbour), and times it in process CPU time (``time.process_time``: robust to
other processes on a shared machine; with one thread it is the call's own compute, page faults
included) and wall time. Reported: per-candidate medians, ``guided / plain gradient`` for each
revision, and ``after / before`` for the rules; the maps of the two revisions are compared
exactly (the rules must give identical results).

The "before" revision's ``src/flashtorch`` is extracted with ``git archive`` into a temporary
directory and imported as ``flashtorch_before`` (the package uses relative imports only).

Run: ``PYTHONPATH=src python benchmarks/guided_rules_ab.py --before main [--rounds 5]``
(``--keep-heap`` makes glibc reuse freed memory instead of mapping large blocks afresh).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch


def _import_revision(ref: str, into: Path, alias: str) -> object:
    """``src/flashtorch`` at git revision ``ref``, imported as ``alias``."""
    root = Path(__file__).resolve().parents[1]
    blob = subprocess.run(
        ["git", "archive", ref, "src/flashtorch"], cwd=root, check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(into, filter="data")
    (into / "src" / "flashtorch").rename(into / alias)
    (into / "src").rmdir()
    sys.path.insert(0, str(into))
    return importlib.import_module(alias)


def _keep_heap() -> str:
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(-4, 0) == 1 and libc.mallopt(-1, 2**31 - 1) == 1  # MMAP_MAX, TRIM
    except OSError as exc:
        return f"default allocator ({exc})"
    return "glibc heap kept (M_MMAP_MAX=0, M_TRIM_THRESHOLD=2^31-1)" if ok else "mallopt refused"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--before", default="main", help="git revision of the 'before' rules")
    p.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="REF",
        help="another revision to time beside them (repeatable)",
    )
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--deconvnet", action="store_true", help="also time deconvnet")
    p.add_argument("--keep-heap", action="store_true")
    args = p.parse_args()

    torch.set_num_threads(1)
    allocator = _keep_heap() if args.keep_heap else "default glibc allocator"
    import torchvision

    import flashtorch

    with tempfile.TemporaryDirectory() as tmp:
        before = _import_revision(args.before, Path(tmp) / "before", "flashtorch_before")
        others = {
            ref: _import_revision(ref, Path(tmp) / f"rev{i}", f"flashtorch_rev{i}")
            for i, ref in enumerate(args.also)
        }
        torch.manual_seed(0)
        model = torchvision.models.resnet50(weights=None).eval()
        x = torch.randn(args.batch, 3, args.size, args.size)
        target = torch.arange(args.batch) % 1000
        rules = ["guided", "deconvnet"] if args.deconvnet else ["guided"]
        candidates = {"plain gradient": flashtorch.METHODS["gradient"](model)}
        for rule in rules:
            candidates[f"{rule} before"] = before.METHODS[rule](model)
            candidates[f"{rule} after"] = flashtorch.METHODS[rule](model)
            for ref, package in others.items():
                candidates[f"{rule} {ref}"] = package.METHODS[rule](model)

        maps = {}
        for name, method in candidates.items():  # warm-up, and the maps to compare
            maps[name] = method(x, target).maps
        for rule in rules:
            same = torch.equal(maps[f"{rule} before"], maps[f"{rule} after"])
            print(f"{rule}: maps before == after exactly: {same}", flush=True)

        names = list(candidates)
        cpu: dict[str, list[float]] = {n: [] for n in names}
        wall: dict[str, list[float]] = {n: [] for n in names}
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                gc.collect()
                c0, w0 = time.process_time(), time.perf_counter()
                candidates[name](x, target)
                cpu[name].append(time.process_time() - c0)
                wall[name].append(time.perf_counter() - w0)
            print(
                f"round {r + 1}/{args.rounds}: "
                + ", ".join(f"{n} {cpu[n][-1]:.2f}s" for n in names),
                flush=True,
            )

    med = {n: statistics.median(cpu[n]) for n in names}
    medw = {n: statistics.median(wall[n]) for n in names}
    print()
    print(
        f"resnet50 (random weights), batch {args.batch}, {args.size} px, 1 thread, "
        f"{args.rounds} interleaved rounds, {allocator}; torch {torch.__version__}; "
        f"before = {args.before}"
    )
    print()
    print("| candidate | CPU s (median) | wall s (median) | CPU / plain | wall / plain |")
    print("|---|---|---|---|---|")
    for n in names:
        print(
            f"| {n} | {med[n]:.3f} | {medw[n]:.3f} | {med[n] / med['plain gradient']:.3f} | "
            f"{medw[n] / medw['plain gradient']:.3f} |"
        )
    print()
    for rule in rules:
        per_round = {  # ratios within each round, then their median: robust to load drift
            key: statistics.median(
                c / base for c, base in zip(cpu[f"{rule} {key}"], cpu["plain gradient"])
            )
            for key in ("before", "after", *others)
        }
        b, a = med[f"{rule} before"], med[f"{rule} after"]
        print(
            f"{rule}: median per-round CPU ratio to plain: before {per_round['before']:.3f}, "
            f"after {per_round['after']:.3f}; after / before (medians) {a / b:.3f}"
        )


if __name__ == "__main__":
    main()
