"""The attribution benchmark's records: one JSON summary per case and the Markdown report."""

from __future__ import annotations

import math
from typing import Any

from .harness import Case, as_maps, cosine, rel_noise

PEER_LIBRARIES = ("captum", "pytorch-grad-cam", "flashtorch-0.1.3")


def summarise(case: Case, timed: dict[str, Any]) -> dict[str, Any]:
    """The JSON record of one case: ms per image, ratios to the limit and to the peers."""
    med = timed["medians"]
    maps = {k: as_maps(v) for k, v in timed["outputs"].items()}
    rows = []
    for c in case.candidates:
        row: dict[str, Any] = {
            "name": c.name,
            "library": c.library,
            "method": c.method,
            "mode": c.mode,
            "note": c.note,
            "limit": c.limit,
        }
        if c.name in timed["errors"]:
            row["error"] = timed["errors"][c.name]
            rows.append(row)
            continue
        m = med.get(c.name)
        row["runs_ms"] = [round(t * 1e3, 3) for t in timed["times"][c.name]]
        row["median_ms"] = round(m * 1e3, 3) if m is not None else None
        row["noise"] = round(rel_noise(timed["times"][c.name]), 4)
        row["ms_per_image"] = round(m * 1e3 / case.batch, 3) if m is not None else None
        if c.limit and c.limit in med and m is not None:
            row["ratio_to_limit"] = round(m / med[c.limit], 4)
        if c.library == "flashtorch" and m is not None:
            peers = {}
            agree = {}
            for p in case.candidates:
                if p.library in PEER_LIBRARIES and p.method == c.method and p.name in med:
                    peers[p.name] = round(m / med[p.name], 4)
                    if maps.get(c.name) is not None and maps.get(p.name) is not None:
                        agree[p.name] = round(cosine(maps[c.name], maps[p.name]), 6)
            row["ratio_to_peers"] = peers
            row["cosine_vs_peers"] = agree
            row["floor_peers"] = sorted(
                peers if c.floor_peers is None else [p for p in c.floor_peers if p in peers]
            )
            if c.mode != "exact":
                exact = f"flashtorch {c.method} exact"
                if exact in med:
                    row["speedup_vs_exact"] = round(med[exact] / m, 4)
                if maps.get(c.name) is not None and maps.get(exact) is not None:
                    row["cosine_vs_exact"] = round(cosine(maps[c.name], maps[exact]), 6)
        rows.append(row)
    return {
        "key": case.key,
        "model": case.model,
        "batch": case.batch,
        "family": case.family,
        "rows_per_image": case.rows,
        "settings": case.settings,
        "notes": case.notes,
        "candidates": rows,
    }


def fmt(v: Any, spec: str = ".2f", suffix: str = "") -> str:
    """A number for a table cell (``-`` for missing or non-finite)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:{spec}}{suffix}"


def to_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"# flashtorch attribution benchmark ({m['device']})",
        "",
        f"- date: {m['date']}",
        f"- machine: {m.get('gpu', m['cpu'])}; {m['logical_cores']} logical cores; torch "
        f"threads {m['torch_threads']}"
        + (
            ""
            if "tf32" not in m
            else "; TF32 "
            + ("on (PyTorch's cuDNN default)" if m["tf32"] else "off: exact = float32")
        ),
        f"- torch {m['torch']}, torchvision {m.get('torchvision', '-')}, captum "
        f"{m.get('captum', '-')}, grad-cam {m.get('pytorch_grad_cam', '-')}, flashtorch "
        f"{m.get('flashtorch', '-')}; Python {m['python']}",
        f"- load average at start / end: {m.get('loadavg_start')} / {m.get('loadavg_end')}; "
        f"largest 1-min load seen: {m.get('loadavg_1min_max', '-')}"
        + ("  **(taken under load: timings are noisy)**" if report.get("under_load") else ""),
        f"- allocator: {m.get('allocator', 'default allocator')}",
        f"- clock: {report['config']['clock']} ("
        + (
            "time.perf_counter"
            if report["config"]["clock"] == "wall"
            else "time.process_time: CPU seconds of the process, robust to other jobs"
        )
        + ")",
        f"- rounds: {report['config']['rounds']} (heavy families "
        f"{report['config']['heavy_rounds']}), warm-up {report['config']['warmup']}, median "
        "per candidate; interleaved round-robin",
        "- `x limit`: median time / median time of the case's limit (see the limit rows); "
        "`vs peer`: flashtorch time / peer time (< 1 = flashtorch faster); `cos`: smallest "
        "per-image cosine similarity of the maps.",
        "",
    ]
    lines += [f"- {n}" for n in report.get("notes", [])]
    lines.append("")
    mem = report.get("memory", {})
    for r in report["results"]:
        mcases = mem.get(r["model"], {}).get("cases", {}).get(r["key"], {})
        settings = ", ".join(f"{k}={v}" for k, v in r["settings"].items())
        load = r.get("loadavg_1min")
        lines += [
            f"## {r['model']}, batch {r['batch']}, {r['family']}"
            + (f" ({settings})" if settings else ""),
            "",
        ]
        if load:
            lines += [f"1-min load average before / after: {load[0]} / {load[1]}", ""]
        lines.append(
            "| candidate | ms / image | images / s | x limit | vs peers (ratio, cos) | "
            "fast/amp: speed-up, cos vs exact | peak MB | note |"
        )
        lines.append("|---|---:|---:|---:|---|---|---:|---|")
        for c in r["candidates"]:
            if "error" in c:
                lines.append(f"| {c['name']} | error | | | | | | {c['error'][:120]} |")
                continue
            peers = "; ".join(
                f"{p.split(' ', 1)[-1]} {v:.2f}x"
                + (
                    f" (cos {c['cosine_vs_peers'][p]:.3f})"
                    if p in c.get("cosine_vs_peers", {})
                    else ""
                )
                for p, v in c.get("ratio_to_peers", {}).items()
            )
            exact = ""
            if "speedup_vs_exact" in c or "cosine_vs_exact" in c:
                exact = (
                    f"{fmt(c.get('speedup_vs_exact'), '.2f', 'x')}, cos "
                    f"{fmt(c.get('cosine_vs_exact'), '.5f')}"
                )
            peak = mcases.get(c["name"], {}).get("peak_mb")
            lim = "" if c["library"] == "limit" else f" ({c['limit']})" if c["limit"] else ""
            ms = c.get("ms_per_image")
            lines.append(
                f"| {c['name']} | {fmt(ms, '.1f')} | {fmt(1000 / ms if ms else None, '.0f')} | "
                f"{fmt(c.get('ratio_to_limit'), '.3f')}{lim} | {peers} | {exact} | "
                f"{fmt(peak, '.0f')} | {c.get('note', '')} |"
            )
        if r["notes"]:
            lines.append("")
            lines += [f"- {n}" for n in dict.fromkeys(r["notes"])]
        lines.append("")
    sweeps = [dict(s, model=s.get("model", k)) for k, v in mem.items() for s in v.get("sweeps", [])]
    if sweeps:
        lines += [
            "## n-sample methods: peak memory vs internal_batch_size and n",
            "",
            "| model | method | library | batch | n | internal_batch_size (rows) | peak MB |",
            "|---|---|---|---:|---:|---:|---:|",
        ]
        for s in sweeps:
            lines.append(
                f"| {s.get('model')} | {s['family']} | {s['library']} | "
                f"{s.get('batch', '')} | {s['n']} | {s['internal_batch_size']} | "
                f"{fmt(s.get('peak_mb'), '.0f')} |"
            )
        lines.append("")
    for k, v in mem.items():
        if "error" in v:
            lines.append(f"- memory child for {k} failed: {v['error'][-300:]}")
    lines += ["## Floors", ""]
    lines += [
        f"- **{f['status']}** {f['floor']}: {f['value']} (needs {f['threshold']})"
        + (f" - {f['detail']}" if f["detail"] else "")
        for f in report["floors"]
    ]
    lines.append("")
    return "\n".join(lines)
