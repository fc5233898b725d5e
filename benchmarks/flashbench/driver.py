"""Run the attribution benchmark described by a :class:`~flashbench.cases.Config`, or rebuild
the report of a saved run."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .cases import Config, Env, build_cases
from .floors import check_floors
from .harness import keep_heap, loadavg, machine_info, portable_path, set_threads, time_case
from .memory import measure_memory, run_memory_child
from .models import build_model
from .registry import HEAVY
from .report import summarise, to_markdown


def stem(cfg: Config, device: torch.device) -> str:
    """The output file stem: ``--name``, else the device type (``-quick`` for ``--quick``)."""
    return cfg.name or (device.type + ("-quick" if cfg.quick else ""))


def _write_partial(cfg: Config, device: torch.device, report: dict[str, Any]) -> None:
    """The results so far (``STEM.partial.json``), so that a run stopped by a time limit (a lent
    GPU machine) still leaves every finished case; ``--rebuild`` turns it into a report."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem(cfg, device)}.partial.json").write_text(
        json.dumps(report, indent=1, default=str)
    )


def run(cfg: Config, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the benchmark described by ``cfg``; write JSON and Markdown; return the report."""
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    set_threads(cfg.threads)
    if device.type == "cuda":
        # TF32 (10-bit mantissa) convolutions are PyTorch's cuDNN default; with them the
        # "exact" maps already differ from float32 ones, and fast / amp agreement would compare
        # two approximations. Every candidate runs the same way.
        torch.backends.cudnn.allow_tf32 = cfg.tf32
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
    config = dict(
        cfg.__dict__, out=portable_path(cfg.out), legacy_path=portable_path(cfg.legacy_path)
    )
    report: dict[str, Any] = {
        "machine": machine_info(device),
        "config": config,
        "results": [],
        "memory": {},
        "notes": [],
    }
    report["machine"]["allocator"] = (
        keep_heap() if cfg.malloc == "heap" and device.type == "cpu" else "default allocator"
    )
    log(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    loads_seen: list[float] = []
    for model_name in cfg.models:
        spec = build_model(model_name, device)
        env = Env(spec, cfg, device)
        report["notes"].append(f"{spec.name}: {spec.note}; {env.n_folded} conv-BN pairs folded")
        for note in (env.captum_note, env.pgc_note, env.legacy_note):
            if note:
                report["notes"].append(f"{spec.name}: {note}")
        for case in build_cases(env, cfg.batch_sizes, cfg.methods):
            rounds = cfg.heavy_rounds if case.family in HEAVY else cfg.rounds
            t0 = time.perf_counter()
            log(f"  {case.key}: {len(case.candidates)} candidates x {rounds} rounds")
            before = loadavg()
            timed = time_case(case, rounds, cfg.warmup, device, log, cfg.clock)
            summary = summarise(case, timed)
            after = loadavg()
            summary["loadavg_1min"] = [
                round(before[0], 2) if before else float("nan"),
                round(after[0], 2) if after else None,
            ]
            loads_seen.extend(x for x in summary["loadavg_1min"] if x is not None)
            report["results"].append(summary)
            _write_partial(cfg, device, report)
            for c in summary["candidates"]:
                if "ms_per_image" in c:
                    log(
                        f"    {c['name']:<52} {c['ms_per_image']:>10.2f} ms/img  "
                        f"x{c.get('ratio_to_limit', float('nan')):.3f}"
                    )
            log(f"    ({time.perf_counter() - t0:.0f} s)")
        del env, spec
        gc.collect()
        if cfg.memory:
            log(f"  memory: {model_name}")
            if device.type == "cpu":
                report["memory"][model_name] = run_memory_child(cfg, model_name)
            else:
                report["memory"][model_name] = measure_memory(cfg, model_name, device)
    with contextlib.suppress(OSError):
        report["machine"]["loadavg_end"] = os.getloadavg()
    cores = os.cpu_count() or 1
    loads = [
        report["machine"].get("loadavg_start", (0,))[0],
        report["machine"].get("loadavg_end", (0,))[0],
        *loads_seen,
    ]
    report["machine"]["loadavg_1min_max"] = max(loads)
    report["under_load"] = device.type == "cpu" and max(loads) > 0.75 * cores + 0.5
    report["floors"] = check_floors(report["results"], report["memory"], cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    name = stem(cfg, device)
    (out / f"{name}.partial.json").unlink(missing_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=1, default=str))
    (out / f"{name}.md").write_text(to_markdown(report))
    log("")
    for f in report["floors"]:
        log(
            f"{f['status']}: {f['floor']}: {f['value']} (needs {f['threshold']})"
            + (f" - {f['detail']}" if f["detail"] else "")
        )
    log(f"wrote {out / (name + '.json')} and {out / (name + '.md')}")
    return report


def rebuild(path: str, memory_from: str | None = None) -> dict[str, Any]:
    """Recompute the floors and the Markdown of a saved JSON report (optionally taking the
    memory measurements of another report of the same machine), and rewrite both files."""
    src = Path(path)
    report = json.loads(src.read_text())
    conf = {k: tuple(v) if isinstance(v, list) else v for k, v in report["config"].items()}
    cfg = Config(**{k: v for k, v in conf.items() if k in Config.__dataclass_fields__})
    if memory_from:
        report["memory"] = json.loads(Path(memory_from).read_text()).get("memory", {})
        report["notes"].append(f"memory measurements taken from {Path(memory_from).name}")
    report["floors"] = check_floors(report["results"], report["memory"], cfg)
    src.write_text(json.dumps(report, indent=1, default=str))
    src.with_suffix(".md").write_text(to_markdown(report))
    return report
