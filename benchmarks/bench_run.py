#!/usr/bin/env python
"""Images/s of ``flashtorch run`` against the raw limit and the loop a user writes by hand.

For each model (EfficientNet-Lite0, the bundled pretrained one; resnet50 with random weights)
and the methods ``gradient`` and ``gradcam``, on ``--images`` JPEGs generated into a temporary
folder (random crops and sizes of ``examples/images/*.jpg``, 256-480 px a side, quality 90):

* ``run`` - ``flashtorch.run(spec, folder, methods, out=..., batch_size=16, num_workers=2)``,
  the whole call: model loading, the store, decoding in the workers, every method, the
  writes, the manifest;
* ``raw`` - the raw limit: the computation ``run`` does per batch - the same method objects
  (``fast=True``, run's default) through the same shared passes (one forward and backward
  pass for ``gradient`` and ``gradcam``, :func:`flashtorch.attribute_many`) - on the same
  batches of already decoded, preprocessed tensors held in memory, in this process
  (computation only: no decoding, no writes);
* ``separate`` - for reference: one call per method with default options on those tensors
  (what the raw limit was before methods shared their pass);
* ``hand`` - the loop a user writes today: ``load_image``, ``apply_transforms``,
  ``flashtorch.attribute`` for each method, ``numpy.save`` of each map, one image at a time.

Floors: ``run`` >= 0.85x ``raw`` and >= 3x ``hand`` (images/s). The modes of one model run back
to back in one process (order: raw, separate, run, hand); on a machine shared with other jobs
the load average before and after each is recorded with the figures.

Usage::

    python benchmarks/bench_run.py                        # 500 images, both models
    python benchmarks/bench_run.py --images 64 --models efficientnet_lite0 --name quick
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODELS = {"efficientnet_lite0": "efficientnet_lite0", "resnet50": "torchvision:resnet50"}


def make_jpegs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` JPEGs: random crops of the example photos resized to 256-480 px a side."""
    rng = np.random.default_rng(seed)
    sources = sorted((ROOT / "examples" / "images").glob("*.jpg"))
    photos = [Image.open(p).convert("RGB") for p in sources]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        photo = photos[i % len(photos)]
        w, h = photo.size
        cw, ch = int(rng.integers(w // 2, w + 1)), int(rng.integers(h // 2, h + 1))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        side = int(rng.integers(256, 481))
        scale = side / max(cw, ch)
        crop = photo.crop((left, top, left + cw, top + ch)).resize(
            (max(1, round(cw * scale)), max(1, round(ch * scale))), Image.Resampling.BILINEAR
        )
        path = folder / f"{i // 100:02d}" / f"img_{i:04d}.jpg"
        path.parent.mkdir(exist_ok=True)
        crop.save(path, quality=90)
        paths.append(path)
    return sorted(paths)


def load_avg() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return float("nan")


def bench_raw(
    spec: str, paths: list[Path], methods: list[str], batch: int, fast: bool = True
) -> float:
    """The raw limit: what ``run`` computes per batch, on decoded tensors held in memory.

    The same method objects as the run's (``fast=True`` unless ``fast`` is off) through the
    same shared passes (:func:`flashtorch._shared.attribute_all`), nothing else.
    """
    from flashtorch import get_method
    from flashtorch._shared import attribute_all
    from flashtorch.models import load_model
    from flashtorch.utils import apply_transforms

    torch.manual_seed(0)
    model = load_model(spec)
    x = torch.cat(
        [
            apply_transforms([str(p) for p in paths[i : i + batch]])
            for i in range(0, len(paths), batch)
        ]
    )
    instances = [
        get_method(m)(model, **({"fast": True} if fast and get_method(m).supports_fast else {}))
        for m in methods
    ]
    attribute_all(instances, x[:batch])  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(x), batch):
        for res in attribute_all(instances, x[i : i + batch]):
            res.maps.numpy()
    return len(x) / (time.perf_counter() - t0)


def bench_separate(spec: str, paths: list[Path], methods: list[str], batch: int) -> float:
    """One call per method, default options, on decoded tensors (no shared pass, no fast)."""
    from flashtorch import get_method
    from flashtorch.models import load_model
    from flashtorch.utils import apply_transforms

    torch.manual_seed(0)
    model = load_model(spec)
    x = torch.cat(
        [
            apply_transforms([str(p) for p in paths[i : i + batch]])
            for i in range(0, len(paths), batch)
        ]
    )
    instances = [get_method(m)(model) for m in methods]
    for m in instances:  # warm-up
        m(x[:batch])
    t0 = time.perf_counter()
    for i in range(0, len(x), batch):
        for m in instances:
            m(x[i : i + batch]).maps.numpy()
    return len(x) / (time.perf_counter() - t0)


def bench_run(
    spec: str, folder: Path, methods: list[str], batch: int, workers: int, out: Path
) -> tuple[float, float]:
    import flashtorch

    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    summary = flashtorch.run(
        spec, folder, methods, out=out, batch_size=batch, num_workers=workers, progress=False
    )
    total = time.perf_counter() - t0
    assert summary.complete and summary.ok == summary.images, summary
    return summary.images / total, summary.images_per_second


def bench_hand(spec: str, paths: list[Path], methods: list[str], out: Path) -> float:
    from flashtorch import attribute
    from flashtorch.models import load_model
    from flashtorch.utils import apply_transforms, load_image

    torch.manual_seed(0)
    model = load_model(spec)
    out.mkdir(parents=True, exist_ok=True)
    for m in methods:  # warm-up
        attribute(model, apply_transforms(load_image(str(paths[0]))), method=m)
    t0 = time.perf_counter()
    for i, path in enumerate(paths):
        x = apply_transforms(load_image(str(path)))
        for m in methods:
            maps = attribute(model, x, method=m).maps
            np.save(out / f"{i:05d}_{m}.npy", maps[0].numpy())
    return len(paths) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--methods", nargs="+", default=["gradient", "gradcam"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--name", default="cpu-run")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    tmp = Path(tempfile.mkdtemp(prefix="bench_run_"))
    try:
        paths = make_jpegs(tmp / "jpegs", args.images)
        cases = []
        for name in args.models:
            spec = MODELS[name]
            case: dict = {
                "model": name,
                "spec": spec,
                "methods": args.methods,
                "images": args.images,
                "batch_size": args.batch_size,
                "workers": args.workers,
            }
            for mode in ("raw", "separate", "run", "hand"):
                before = load_avg()
                t0 = time.perf_counter()
                if mode == "raw":
                    case["raw_ips"] = bench_raw(spec, paths, args.methods, args.batch_size)
                elif mode == "separate":
                    case["separate_ips"] = bench_separate(
                        spec, paths, args.methods, args.batch_size
                    )
                elif mode == "run":
                    case["run_ips"], case["run_loop_ips"] = bench_run(
                        spec,
                        tmp / "jpegs",
                        args.methods,
                        args.batch_size,
                        args.workers,
                        tmp / "run",
                    )
                else:
                    case["hand_ips"] = bench_hand(spec, paths, args.methods, tmp / "hand")
                case[f"{mode}_seconds"] = round(time.perf_counter() - t0, 1)
                case[f"{mode}_load"] = [before, load_avg()]
                print(
                    f"{name} {mode}: {case.get(mode + '_ips'):.2f} images/s "
                    f"(load {case[mode + '_load']})",
                    flush=True,
                )
            case["run_vs_raw"] = case["run_ips"] / case["raw_ips"]
            case["run_vs_hand"] = case["run_ips"] / case["hand_ips"]
            case["floors_met"] = case["run_vs_raw"] >= 0.85 and case["run_vs_hand"] >= 3.0
            cases.append(case)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    report = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
        },
        "cases": cases,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# `flashtorch run` throughput ({report['date']})",
        "",
        f"{report['machine']['cpus']} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {args.images} JPEGs, batch {args.batch_size}, "
        f"{args.workers} workers, methods {', '.join(args.methods)}. Load average (1 min) "
        "before / after each mode in brackets: the machine is shared with other jobs.",
        "",
        "| model | raw limit (img/s) | `flashtorch run` (img/s) | hand loop (img/s) | "
        "one call per method (img/s) | run / raw (floor 0.85) | run / hand (floor 3) |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        lines.append(
            f"| {c['model']} | {c['raw_ips']:.2f} {c['raw_load']} | {c['run_ips']:.2f} "
            f"{c['run_load']} | {c['hand_ips']:.2f} {c['hand_load']} | "
            f"{c['separate_ips']:.2f} {c['separate_load']} | "
            f"{c['run_vs_raw']:.2f} | {c['run_vs_hand']:.2f} |"
        )
    (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
