"""Peak and persistent memory of the candidates, and the n-sample sweeps (CPU: a child
process per model with glibc returning freed blocks at once; CUDA: in process)."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import flashtorch

from . import registry
from .cases import Config, Env, build_cases, ft_call
from .harness import Candidate, measure_candidate_memory, set_threads
from .models import build_model
from .peers import captum_nsample

#: the command line whose ``--_memory-child PAYLOAD`` runs :func:`memory_child_main`
CLI = Path(__file__).resolve().parents[1] / "bench_attribution.py"


def memory_plan(cfg: Config) -> list[dict[str, Any]]:
    """What the memory child measures.

    Every candidate of the gradient and CAM families at ``memory_batch`` (default: the largest
    batch size), and the n-sample sweeps at batch 1: ``internal_batch_size`` 2, 4, 8 rows at
    fixed n, and n, 2n, 4n at 4 rows (n = 4 with ``--quick``, else 8).
    """
    batch = cfg.memory_batch or max(cfg.batch_sizes)
    plan: list[dict[str, Any]] = [
        {"kind": "cases", "batch": batch, "families": ("gradient", "cam")}
    ]
    n = 4 if cfg.quick else 8
    for fam in registry.NSAMPLE_FAMILIES:
        if fam in cfg.methods:
            plan.append(
                {
                    "kind": "sweep",
                    "family": fam,
                    "batch": 1,
                    "points": [(n, 2), (n, 4), (n, 8), (2 * n, 4), (4 * n, 4)],
                }
            )
    return plan


def run_memory_child(cfg: Config, model: str) -> dict[str, Any]:
    """Run the memory measurements of one model in a fresh child process (CPU)."""
    env = dict(
        os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0", MALLOC_ARENA_MAX="2"
    )
    payload = json.dumps({"cfg": cfg.__dict__, "model": model})
    cmd = [sys.executable, str(CLI), "--_memory-child", payload]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    last = proc.stdout.strip().splitlines()[-1]
    return json.loads(last)


def memory_child_main(payload: str) -> None:
    data = json.loads(payload)
    cfg = Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in data["cfg"].items()})
    device = torch.device(cfg.device)
    set_threads(cfg.threads)
    result = measure_memory(cfg, data["model"], device)
    print(json.dumps(result))


def measure_memory(cfg: Config, model: str, device: torch.device) -> dict[str, Any]:
    """Memory of every candidate at ``memory_batch`` and the n-sample sweeps (one model)."""
    spec = build_model(model, device)
    env = Env(spec, cfg, device)
    out: dict[str, Any] = {"cases": {}, "sweeps": []}
    gc.collect()
    gc.freeze()
    for item in memory_plan(cfg):
        if item["kind"] == "cases":
            for case in build_cases(env, (item["batch"],), cfg.methods, floor=False):
                if case.family not in item["families"]:
                    continue
                rec = {}
                for c in case.candidates:
                    try:
                        rec[c.name] = {
                            k: round(v, 1) for k, v in measure_candidate_memory(c, device).items()
                        }
                    except Exception as exc:
                        rec[c.name] = {"error": f"{type(exc).__name__}: {exc}"}
                out["cases"][case.key] = rec
        else:
            out["sweeps"].extend(_memory_sweep(env, item, device))
    return out


def _memory_sweep(env: Env, item: dict[str, Any], device: torch.device) -> list[dict[str, Any]]:
    fam, batch = item["family"], item["batch"]
    cls = flashtorch.METHODS.get(fam)
    x, idx = env.inputs(batch)
    records = []
    for n, ibs in item["points"]:
        opts: dict[str, Any] = (
            {"n_samples": n, "seed": 0} if fam == "smoothgrad" else {"steps": n, "baseline": "zero"}
        )
        entries: list[tuple[str, Callable[[], Any]]] = []
        if cls is not None:
            method = cls(env.model, internal_batch_size=ibs * batch, **opts)
            entries.append(("flashtorch", ft_call(method, x, idx)))
        if env.captum is not None:
            entries.append(
                ("captum", captum_nsample(env.captum, fam, env.model, x, idx, n, ibs * batch, 0.1))
            )
        for lib, fn in entries:
            c = Candidate(f"{lib} {fam}", lib, fam, fn)
            try:
                mem = measure_candidate_memory(c, device)
                records.append(
                    {
                        "family": fam,
                        "library": lib,
                        "model": env.spec.name,
                        "batch": batch,
                        "n": n,
                        "internal_batch_size": ibs * batch,
                        **{k: round(v, 1) for k, v in mem.items()},
                    }
                )
            except Exception as exc:
                records.append(
                    {
                        "family": fam,
                        "library": lib,
                        "n": n,
                        "internal_batch_size": ibs * batch,
                        "error": repr(exc),
                    }
                )
    return records
