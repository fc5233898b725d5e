"""Latency of the page's Explain function (``flashtorch serve``) on the bundled model, CPU.

Calls :meth:`flashtorch.app.core.Explainer.explain` directly, as a click on **Explain** does
(minus gradio's HTTP and JSON, measured apart with gradio_client when it is installed): upload
checks, decode, preprocessing, the top-5 forward, the method, scaling, overlay, panel and the
PNG / NPY files. After a warm-up, each method alone on each bundled photo, ``--repeats`` times.

    python benchmarks/bench_serve.py [--repeats 5] [--threads 2] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("gradient", "guided", "gradcam")
BOUND_S = 1.0


def _client_seconds(explainer, image: Path, method: str, repeats: int) -> list[float] | None:
    try:
        from gradio_client import Client, handle_file
    except ImportError:
        return None
    import socket

    from flashtorch.app import launch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = launch(explainer, port=port, block=False)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        args = (handle_file(str(image)), None, None, [method], None, "default")
        client.predict(*args, api_name="/explain")  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            client.predict(*args, api_name="/explain")
            times.append(time.perf_counter() - t0)
        return times
    finally:
        app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from flashtorch.app.core import Explainer, example_images

    t0 = time.perf_counter()
    explainer = Explainer()
    load_s = time.perf_counter() - t0
    images = example_images()
    t0 = time.perf_counter()
    explainer.layers(None)
    for method in METHODS:  # warm-up: lazy initialisation, the default layer, kernel choice
        explainer.explain(images["chelsea.jpg"], None, [method])
    warm_s = time.perf_counter() - t0

    rows = []
    for method in METHODS:
        for name, path in images.items():
            walls, inner = [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                result = explainer.explain(path, None, [method])
                walls.append(time.perf_counter() - t0)
                inner.append(result.maps[0].seconds)
            rows.append((method, name, walls, inner))
    together = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        explainer.explain(images["chelsea.jpg"], None, list(METHODS))
        together.append(time.perf_counter() - t0)
    client = _client_seconds(explainer, images["chelsea.jpg"], "gradcam", args.repeats)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    worst = max(max(w) for _m, _n, w, _i in rows)
    lines = [
        "# `flashtorch serve`: Explain latency on the bundled model (CPU)",
        "",
        f"`python benchmarks/bench_serve.py --repeats {args.repeats} --threads {args.threads}` "
        f"({time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}, "
        f"load average {load:.1f} at the end).",
        "",
        "The page's own function (`Explainer.explain`, what one click on **Explain** runs, less "
        "gradio's HTTP), one method per call, the bundled EfficientNet-Lite0 at 224 x 224, after "
        f"a warm-up of one call per method ({warm_s:.2f} s; loading the model took "
        f"{load_s:.2f} s). *wall* is the whole call: upload checks, decoding, preprocessing, the "
        "top-5 forward, the method, scaling, overlay and colour-bar panel, writing the PNG and "
        "`.npy`; *method* is the method's own time, as the page shows it.",
        "",
        "| method | image | wall s (median, max) | method s (median) |",
        "|---|---|---:|---:|",
    ]
    for method, name, walls, inner in rows:
        lines.append(
            f"| {method} | {name} | {statistics.median(walls):.3f} ({max(walls):.3f}) | "
            f"{statistics.median(inner):.3f} |"
        )
    lines.append("")
    verdict = "within" if worst <= BOUND_S else "NOT within"
    lines.append(
        f"Slowest call: {worst:.3f} s, {verdict} the issue's bound of {BOUND_S:g} s per image."
    )
    lines += [
        "",
        f"The three methods in one click (chelsea.jpg): median {statistics.median(together):.3f}"
        f" s, max {max(together):.3f} s.",
    ]
    if client is not None:
        lines += [
            "",
            "Through the server (gradio_client on 127.0.0.1, `gradcam` on chelsea.jpg, upload "
            f"included): median {statistics.median(client):.3f} s, max {max(client):.3f} s over "
            f"{len(client)} calls.",
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    sys.exit(0)


if __name__ == "__main__":
    main()
