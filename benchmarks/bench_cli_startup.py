#!/usr/bin/env python
"""Start-up time of the light ``flashtorch`` commands (``--help``, ``--version``, ``classes``,
``methods``) against a bare Python start-up, and whether they import torch.

Each command runs ``--runs`` times (default 5) as ``python -m flashtorch ...`` in a fresh
process; the table gives the median and the range of the wall time, the same for
``python -c pass`` (the interpreter's own start-up, the part no package can remove), and the
module count and cumulative import time of ``flashtorch.cli`` read from ``python -X importtime``
(median of the runs). ``--src DIR`` measures another checkout's ``src`` (e.g. the code before a
change), so that before and after come from one machine in one sitting.

Usage::

    python benchmarks/bench_cli_startup.py                       # this checkout -> stdout
    python benchmarks/bench_cli_startup.py --src /tmp/old/src --label before
    python benchmarks/bench_cli_startup.py --out benchmarks/results/cpu-cli-startup.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
COMMANDS: tuple[tuple[str, ...], ...] = (
    ("--help",),
    ("--version",),
    ("classes", "owl"),
    ("methods",),
)


def _env(src: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(src) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("PYTHONSTARTUP", None)
    return env


def wall(argv: list[str], env: dict[str, str], runs: int) -> list[float]:
    """Wall seconds of ``runs`` fresh processes running ``argv`` (output discarded)."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        times.append(time.perf_counter() - t0)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.decode()[-500:]}")
    return times


def import_profile(args: tuple[str, ...], env: dict[str, str]) -> tuple[int, float, bool]:
    """``(modules imported, total import microseconds, torch imported)`` for one command."""
    code = (
        "import sys\n"
        "from flashtorch.cli import main\n"
        "try:\n"
        f"    main({list(args)!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "sys.stderr.write('TORCH=%d\\n' % ('torch' in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    modules = 0
    total = 0.0
    torch_loaded = False
    for line in done.stderr.splitlines():
        if line.startswith("TORCH="):
            torch_loaded = line.strip() == "TORCH=1"
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        parts = line.split("|")
        cumulative, name = parts[1].strip(), parts[2].rstrip()
        modules += 1
        if not name[1:].startswith(" "):  # a top-level import: its cumulative time counts once
            total += float(cumulative)
    return modules, total, torch_loaded


def measure(src: Path, runs: int) -> list[dict[str, object]]:
    env = _env(src)
    rows: list[dict[str, object]] = []
    bare = wall([sys.executable, "-c", "pass"], env, runs)
    rows.append(
        {
            "command": "python -c pass",
            "times": bare,
            "modules": None,
            "import_ms": None,
            "torch": False,
        }
    )
    for args in COMMANDS:
        times = wall([sys.executable, "-m", "flashtorch", *args], env, runs)
        profiles = [import_profile(args, env) for _ in range(runs)]
        rows.append(
            {
                "command": "flashtorch " + " ".join(args),
                "times": times,
                "modules": profiles[0][0],
                "import_ms": statistics.median(p[1] for p in profiles) / 1000,
                "torch": any(p[2] for p in profiles),
            }
        )
    return rows


def markdown(rows: list[dict[str, object]], label: str, runs: int) -> str:
    lines = [
        f"### {label}",
        "",
        f"{runs} fresh processes per command; wall seconds (median, min-max); imports from "
        "`python -X importtime` (modules, cumulative ms of the top-level imports, median).",
        "",
        "| command | wall s (median) | min-max | modules | imports ms | torch imported |",
        "|---|---:|---:|---:|---:|:---:|",
    ]
    for row in rows:
        times = row["times"]
        assert isinstance(times, list)
        modules = "-" if row["modules"] is None else str(row["modules"])
        imports = "-" if row["import_ms"] is None else f"{row['import_ms']:.0f}"
        lines.append(
            f"| `{row['command']}` | {statistics.median(times):.3f} | "
            f"{min(times):.3f}-{max(times):.3f} | {modules} | {imports} | "
            f"{'yes' if row['torch'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--src",
        type=Path,
        default=ROOT / "src",
        help="the src folder holding the flashtorch package to measure",
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--label", default="this checkout")
    parser.add_argument("--out", type=Path, help="append the Markdown table to this file")
    args = parser.parse_args()
    rows = measure(args.src.resolve(), args.runs)
    text = markdown(rows, args.label, args.runs)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    if load is not None:
        text += (
            f"\nPython {platform.python_version()}, {os.cpu_count()} CPUs, load average "
            f"{load[0]:.1f} after the runs.\n"
        )
    print(text)
    if args.out is not None:
        with args.out.open("a", encoding="utf-8") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
