"""The attribution benchmark's floors as PASS / FAIL / SKIP records."""

from __future__ import annotations

import math
from typing import Any

from . import registry
from .cases import Config
from .harness import rel_noise
from .peers import CAPTUM_OF

#: smallest cosine between two libraries' maps for them to count as the same computation in the
#: "no slower than" floors (Score-CAM's mask conventions give 0.98; Captum's guided backprop on
#: a ReLU6 model, which is the plain gradient, 0.03).
SAME_MAP = 0.9


def _find(results: list[dict[str, Any]], model: str, batch: int, family: str) -> dict | None:
    for r in results:
        if r["model"] == model and r["batch"] == batch and r["family"] == family:
            return r
    return None


def check_floors(
    results: list[dict[str, Any]], memory: dict[str, Any], cfg: Config
) -> list[dict[str, Any]]:
    """The issue's floors as PASS / FAIL / SKIP records."""
    floors: list[dict[str, Any]] = []

    def noise_of(r: dict[str, Any], *names: str) -> float:
        cands = {c["name"]: c for c in r["candidates"]}
        parts = [
            cands[n]["noise"]
            if "noise" in cands[n]
            else rel_noise([t / 1e3 for t in cands[n].get("runs_ms", [])])
            for n in names
            if n in cands
        ]
        parts = [p for p in parts if isinstance(p, float) and math.isfinite(p)]
        return math.sqrt(sum(p * p for p in parts)) if parts else float("nan")

    def band(value: float, target: float, noise: float) -> str:
        if not math.isfinite(noise):
            return ""
        within = abs(value - target) <= noise * target
        return f"run-to-run noise +-{100 * noise:.1f}%" + (" (within noise)" if within else "")

    def add(name: str, ok: bool | None, value: Any, threshold: str, detail: str = "") -> None:
        status = "SKIP" if ok is None else ("PASS" if ok else "FAIL")
        floors.append(
            {
                "floor": name,
                "status": status,
                "value": value,
                "threshold": threshold,
                "detail": detail,
            }
        )

    family_of = registry.family_map()
    for r in results:
        cands = {c["name"]: c for c in r["candidates"]}
        for method in registry.methods_of(r["family"], cfg.methods):
            for mode in ("exact", "fast", "no-clean-pass", "fast no-clean-pass"):
                c = cands.get(f"flashtorch {method} {mode}")
                where = f"{r['model']} b{r['batch']}"
                if c is None:
                    continue  # not in this case (the notes say why)
                if "ratio_to_limit" not in c:
                    add(
                        f"{method} {mode} <= 1.10x limit ({where})",
                        None,
                        None,
                        "<= 1.10",
                        c.get("error", "no limit measured"),
                    )
                    continue
                v = c["ratio_to_limit"]
                add(
                    f"{method} {mode} <= 1.10x {c['limit']} ({where})",
                    v <= 1.10,
                    v,
                    "<= 1.10",
                    band(v, 1.10, noise_of(r, c["name"], c["limit"])),
                )
                for peer in c.get("floor_peers", c.get("ratio_to_peers", {})):
                    ratio = c["ratio_to_peers"][peer]
                    name = f"{method} {mode} no slower than {peer} ({where})"
                    cos = c.get("cosine_vs_peers", {}).get(peer)
                    if family_of.get(method) != "smoothgrad" and cos is not None and cos < SAME_MAP:
                        # e.g. Captum's guided backprop hooks nn.ReLU modules only: on a ReLU6
                        # model its map is the plain gradient. Speed of different work: not judged
                        add(
                            name,
                            None,
                            ratio,
                            "<= 1.00",
                            f"not the same map (cosine {cos:.3f}): the peer computes something "
                            "else on this model",
                        )
                        continue
                    add(
                        name,
                        ratio <= 1.0,
                        ratio,
                        "<= 1.00",
                        band(ratio, 1.0, noise_of(r, c["name"], peer)),
                    )
    # fast >= 1.25x faster than Captum, resnet50 CPU batch floor_batch, cosine >= 0.999
    fb = cfg.floor_batch
    r = _find(results, "resnet50", fb, "gradient")
    if r is None:
        add(
            f"fast >= 1.25x faster than Captum (resnet50 b{fb})",
            None,
            None,
            ">= 1.25",
            "resnet50 batch not run",
        )
    else:
        cands = {c["name"]: c for c in r["candidates"]}
        for method in ("gradient", "guided"):
            fast = cands.get(f"flashtorch {method} fast")
            peer = f"captum {CAPTUM_OF[method]}"
            if fast is None or peer not in fast.get("ratio_to_peers", {}):
                add(
                    f"{method} fast >= 1.25x faster than {peer} (resnet50 b{fb})",
                    None,
                    None,
                    ">= 1.25",
                    "not measured",
                )
                continue
            speed = round(1 / fast["ratio_to_peers"][peer], 4)
            add(
                f"{method} fast >= 1.25x faster than {peer} (resnet50 b{fb})",
                speed >= 1.25,
                speed,
                ">= 1.25",
                band(speed, 1.25, noise_of(r, fast["name"], peer)),
            )
            cos = fast.get("cosine_vs_exact")
            add(
                f"{method} fast maps agree with exact (resnet50 b{fb})",
                None if cos is None else cos >= 0.999,
                cos,
                "cosine >= 0.999",
            )
    # every fast / amp map agrees with the exact one
    for r in results:
        for c in r["candidates"]:
            if c["library"] == "flashtorch" and "cosine_vs_exact" in c:
                thr = 0.99 if "amp" in c["mode"] else 0.999
                name = f"{c['method']} {c['mode']} cosine vs exact ({r['model']} b{r['batch']})"
                if "amp" in c["mode"] and not cfg.device.startswith("cuda"):
                    # the amp floor is for float16 on a GPU; CPU autocast is bfloat16
                    # (8-bit mantissa), which flashtorch says in a warning: reported, not judged
                    add(
                        name,
                        None,
                        c["cosine_vs_exact"],
                        f">= {thr} (GPU float16)",
                        "bfloat16 on the CPU: informational, flashtorch warns about it",
                    )
                    continue
                add(name, c["cosine_vs_exact"] >= thr, c["cosine_vs_exact"], f">= {thr}")
    # n-sample peak memory set by internal_batch_size, not by n
    for model, mem in memory.items():
        for fam in registry.NSAMPLE_FAMILIES:
            pts = [
                s
                for s in mem.get("sweeps", [])
                if s.get("family") == fam and s.get("library") == "flashtorch" and "peak_mb" in s
            ]
            if not pts:
                continue
            fixed = [s for s in pts if s["internal_batch_size"] == 4 * pts[0]["batch"]]
            if len(fixed) >= 2:
                peaks = [s["peak_mb"] for s in fixed]
                spread = max(peaks) - min(peaks)
                tol = max(16.0, 0.15 * max(peaks))
                add(
                    f"{fam} peak memory independent of n ({model}, internal_batch_size "
                    f"{fixed[0]['internal_batch_size']})",
                    spread <= tol,
                    {str(s["n"]): s["peak_mb"] for s in fixed},
                    f"spread <= {tol:.0f} MB",
                )
    return floors
