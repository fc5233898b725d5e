#!/usr/bin/env python
"""How closely reduced-precision gradient maps can agree with float32, and why.

``amp=True`` (autocast) maps are compared with float32 maps (cosine per image) on the
benchmark's two models and the four example photos, next to two references that need no
reduced precision at all:

* the same float32 computation with the *input* perturbed by a relative ``+-2^-11`` (the
  rounding of one float16 cast) and ``+-2^-8``: how much the map itself moves under
  perturbations of the size float16 introduces at every layer (ReLU masks flip; input
  gradients of deep ReLU networks are "shattered", Balduzzi et al. 2017, arXiv:1702.08591);
* float64 against float32 and ``fast=True`` (BatchNorm folded) against exact: the numeric
  floor of float32 itself.

float16 runs under ``torch.autocast`` on any device (on a CPU without float16 hardware it is
emulated: slow, but the same format: 10-bit mantissa, float32 accumulation); bfloat16 (8-bit
mantissa) is what ``amp=True`` uses on the CPU.

Usage::

    python benchmarks/amp_agreement.py [--device cuda] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
from pathlib import Path
from typing import Any

import torch
from flashbench.models import build_model
from torch import Tensor, nn

import flashtorch
from flashtorch import METHODS
from flashtorch.utils import apply_transforms, load_image

PHOTOS = ("chelsea", "coffee", "rocket", "astronaut")


def photos(size: int) -> Tensor:
    folder = Path(__file__).resolve().parent.parent / "examples" / "images"
    return torch.cat([apply_transforms(load_image(folder / f"{n}.jpg"), size) for n in PHOTOS])


def gradient(model: nn.Module, x: Tensor, target: Tensor, **options: Any) -> Tensor:
    return METHODS["gradient"](model, **options)(x, target).maps.double()


def cosines(a: Tensor, b: Tensor) -> list[float]:
    return torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1)).tolist()


def perturbed(x: Tensor, rel: float, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(x.shape, generator=g).to(x.device) * 2 - 1
    return x * (1 + rel * u)


def rows_for(name: str, device: torch.device) -> dict[str, Any]:
    spec = build_model(name, device)
    model = spec.model.to(device).eval()
    x = photos(spec.size).to(device)
    with torch.no_grad():
        target = model(x).argmax(1)
    ref = gradient(model, x, target)
    rows: dict[str, list[float]] = {}
    with torch.autocast(device.type, dtype=torch.float16):
        rows["float16 autocast"] = cosines(gradient(model, x, target), ref)
    if device.type == "cpu":
        rows["bfloat16 autocast (amp=True on the CPU)"] = cosines(
            gradient(model, x, target, amp=True), ref
        )
    else:
        rows["float16 autocast (amp=True)"] = cosines(gradient(model, x, target, amp=True), ref)
    for label, rel in (("2^-11", 2.0**-11), ("2^-8", 2.0**-8)):
        rows[f"float32, input x (1 +- {label})"] = cosines(
            gradient(model, perturbed(x, rel), target), ref
        )
    rows["float32 fast=True (BN folded)"] = cosines(gradient(model, x, target, fast=True), ref)
    double = gradient(model.double(), x.double(), target)
    model.float()
    rows["float64 (reference for float32)"] = cosines(ref, double)
    return {
        "model": name,
        "note": spec.note,
        "targets": target.tolist(),
        "rows": {
            k: {"min": min(v), "mean": sum(v) / len(v), "per_image": v} for k, v in rows.items()
        },
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Reduced-precision gradient maps against float32 ({report['device']})",
        "",
        f"- date: {report['date']}; machine: {report['machine']}; torch {report['torch']}, "
        f"flashtorch {report['flashtorch']}",
        "- `gradient` maps of the four example photos (" + ", ".join(PHOTOS) + "), target: the "
        "float32 prediction; cosine per image against the float32 map (min and mean)",
        "",
    ]
    for entry in report["models"]:
        lines += [
            f"## {entry['model']}",
            "",
            f"{entry['note']}",
            "",
            "| computation | min cos | mean cos |",
            "|---|---:|---:|",
        ]
        for label, r in entry["rows"].items():
            lines.append(f"| {label} | {r['min']:.5f} | {r['mean']:.5f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", nargs="+", default=["resnet50", "efficientnet_lite0"])
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    a = p.parse_args()
    device = torch.device(a.device)
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False  # float32 means float32
        torch.backends.cuda.matmul.allow_tf32 = False
    report = {
        "device": str(device),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": (
            torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
        ),
        "torch": torch.__version__,
        "flashtorch": flashtorch.__version__,
        "models": [rows_for(name, device) for name in a.models],
    }
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"amp-agreement-{device.type}"
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    (out / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
