#!/usr/bin/env python
"""Speed of flashtorch's attribution methods against the physical limit and the peers.

Everything is measured side by side in one process, in interleaved rounds (every round runs
every candidate once, round-robin, starting one candidate later each round), after a warm-up
round; the statistic is the median over rounds. A *case* is one (model, batch, family) cell:

* ``gradient`` - the raw limit (forward + ``torch.autograd.grad`` w.r.t. the input, parameters
  frozen; also with ``requires_grad=True`` parameters), the same on the BatchNorm-folded copy
  (contiguous and ``channels_last``), flashtorch ``gradient``, ``gradient_x_input``, ``guided``,
  ``deconvnet`` exact and ``fast=True`` (and ``amp=True`` for ``gradient``), Captum
  ``Saliency(abs=False)``, ``InputXGradient``, ``GuidedBackprop``, ``Deconvolution`` and
  FlashTorch 0.1.3's ``Backprop`` (one image at a time, as it only supports batch 1).
* ``smoothgrad`` / ``integrated_gradients`` - the raw limit on the n-times-expanded batch, in the
  same internal batches as the methods; flashtorch ``smoothgrad``, ``smoothgrad_sq``,
  ``vargrad`` vs Captum ``NoiseTunnel(Saliency)`` of the same ``nt_type``, and
  ``integrated_gradients`` vs ``IntegratedGradients``.
* ``occlusion`` - the limit is gradient-free forwards of the occluded copies plus the clean batch.
* ``cam`` - the limit is forward + ``autograd.grad`` of the scores w.r.t. the layer activation
  (the forward up to the layer builds no graph); flashtorch ``gradcam``, ``gradcam_pp``,
  ``layercam``, ``guided_gradcam`` vs Captum ``LayerGradCam`` (+ bilinear upsampling) and
  ``GuidedGradCam`` and pytorch-grad-cam ``GradCAM``, ``GradCAMPlusPlus``, ``LayerCAM``. Guided
  Grad-CAM's limit is the raw limit (one forward + one backward to the input).
* ``scorecam`` - the limit is one forward plus gradient-free forwards of the ``K x B`` masked
  inputs; flashtorch vs pytorch-grad-cam ``ScoreCAM`` (same internal batch).

The methods are flashtorch's registry (``flashtorch.METHODS``) less the exclusions stated in
``benchmarks/flashbench/registry.py``; each method's case follows from its class. The parts live
in the ``benchmarks/flashbench`` package (harness, models, limits, cases, peers, memory, floors,
report); this file is its command line.

Peak memory (CPU): a child process per model, started with ``MALLOC_MMAP_THRESHOLD_=65536`` so
that glibc returns every freed tensor buffer to the OS at once; for each candidate, one warm-up
call, then the resident set size (``/proc/self/statm``) is sampled every 0.5 ms during a second
call: ``peak_mb`` is the sampled peak minus the RSS just before the call (the call's working
memory), ``persistent_mb`` the RSS growth over the warm-up call (caches such as the folded model
copy of ``fast=True``). CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation before
the call, in process.

Usage::

    python benchmarks/bench_attribution.py                 # the full CPU run (long)
    python benchmarks/bench_attribution.py --quick         # a tiny model, seconds
    python benchmarks/bench_attribution.py --device cuda --batch-sizes 1 32
    python benchmarks/bench_attribution.py --rebuild results/cpu.json [--memory-from X.json]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's ScoreCAM progress bars

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

# the package's parts, re-exported: the smoke tests and older notebooks use these names
from flashbench.cases import (  # noqa: E402
    DEFAULT_METHODS,
    DEFAULT_OUT,
    Config,
    Env,
    build_cases,
    n_samples_for,
)
from flashbench.driver import rebuild, run  # noqa: E402
from flashbench.floors import SAME_MAP, check_floors  # noqa: E402
from flashbench.harness import (  # noqa: E402
    Candidate,
    Case,
    RssSampler,
    cosine,
    keep_heap,
    rel_noise,
    rss_bytes,
    time_case,
)
from flashbench.limits import chunked_raw_limit, forward_limit, layer_limit, raw_limit  # noqa: E402
from flashbench.memory import memory_child_main  # noqa: E402
from flashbench.models import ModelSpec, TinyNet, build_model, frozen_copy  # noqa: E402
from flashbench.peers import CAPTUM_OF, DEFAULT_LEGACY, GRADCAM_OF, load_legacy  # noqa: E402
from flashbench.report import summarise, to_markdown  # noqa: E402

__all__ = [
    "CAPTUM_OF",
    "DEFAULT_LEGACY",
    "DEFAULT_METHODS",
    "DEFAULT_OUT",
    "GRADCAM_OF",
    "SAME_MAP",
    "Candidate",
    "Case",
    "Config",
    "Env",
    "ModelSpec",
    "RssSampler",
    "TinyNet",
    "build_cases",
    "build_model",
    "check_floors",
    "chunked_raw_limit",
    "cosine",
    "forward_limit",
    "frozen_copy",
    "keep_heap",
    "layer_limit",
    "load_legacy",
    "main",
    "memory_child_main",
    "n_samples_for",
    "parse_args",
    "raw_limit",
    "rebuild",
    "rel_noise",
    "rss_bytes",
    "run",
    "summarise",
    "time_case",
    "to_markdown",
]


def parse_args(argv: list[str] | None = None) -> Config:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    p.add_argument("--models", nargs="+", help="resnet50 efficientnet_lite0 tiny torchvision:NAME")
    p.add_argument("--batch-sizes", nargs="+", type=int)
    p.add_argument(
        "--floor-batch",
        type=int,
        help="batch of the fast-vs-Captum floor (resnet50; default 8 on CPU, 32 on CUDA; 0: off)",
    )
    p.add_argument("--methods", nargs="+", help=f"default: {' '.join(DEFAULT_METHODS)}")
    p.add_argument("--rounds", type=int, help="timed rounds (default 5)")
    p.add_argument("--heavy-rounds", type=int, help="rounds of n-sample / occlusion / Score-CAM")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: all cores)")
    p.add_argument(
        "--n-samples",
        type=int,
        default=0,
        help="SmoothGrad samples / IG steps (0: 16, or 8 for batches > 4)",
    )
    p.add_argument("--internal-batch-size", type=int, default=32)
    p.add_argument("--no-memory", action="store_true", help="skip peak-memory measurements")
    p.add_argument("--memory-batch", type=int, default=0)
    p.add_argument("--no-peers", action="store_true", help="flashtorch and limits only")
    p.add_argument("--no-amp", action="store_true")
    p.add_argument(
        "--legacy-path",
        default=DEFAULT_LEGACY,
        help="directory holding FlashTorch 0.1.3 (pip install --target)",
    )
    p.add_argument("--compile", action="store_true", help="add torch.compile'd limit rows")
    p.add_argument("--cuda-graphs", action="store_true", help="add CUDA-graph rows (CUDA only)")
    p.add_argument(
        "--tf32",
        action="store_true",
        help="CUDA: leave TF32 convolutions / matmuls on (PyTorch's cuDNN default); "
        "by default they are switched off so that exact means float32",
    )
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: perf_counter (default); cpu: process CPU time, for loaded "
        "machines (use with --threads 1)",
    )
    p.add_argument(
        "--malloc",
        choices=("heap", "default"),
        default="heap",
        help="heap (default): glibc keeps freed memory (stable CPU timings, see "
        "keep_heap); default: the allocator as configured",
    )
    p.add_argument("--quick", action="store_true", help="tiny model and sizes: a smoke run")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="output folder")
    p.add_argument("--name", default="", help="output file stem (default: device type)")
    a = p.parse_args(argv)
    cuda = a.device.startswith("cuda")
    cfg = Config(
        device=a.device,
        threads=a.threads,
        warmup=a.warmup,
        n_samples=a.n_samples,
        internal_batch_size=a.internal_batch_size,
        memory=not a.no_memory,
        memory_batch=a.memory_batch,
        legacy_path=a.legacy_path,
        amp=not a.no_amp,
        compile=a.compile,
        cuda_graphs=a.cuda_graphs,
        tf32=a.tf32,
        peers=not a.no_peers,
        quick=a.quick,
        out=a.out,
        name=a.name,
        clock=a.clock,
        malloc=a.malloc,
    )
    if cuda:
        cfg.batch_sizes, cfg.floor_batch = (1, 32), 32
    if a.quick:
        cfg.models, cfg.batch_sizes, cfg.floor_batch = ("tiny",), (1, 2), 0
        cfg.rounds, cfg.heavy_rounds, cfg.internal_batch_size = 2, 2, 8
        cfg.occlusion_window, cfg.occlusion_stride = 16, 8
    if a.models:
        cfg.models = tuple(a.models)
    if a.batch_sizes:
        cfg.batch_sizes = tuple(a.batch_sizes)
    if a.floor_batch is not None:
        cfg.floor_batch = a.floor_batch
    if a.methods:
        cfg.methods = tuple(a.methods)
    if a.rounds:
        cfg.rounds = a.rounds
    if a.heavy_rounds:
        cfg.heavy_rounds = a.heavy_rounds
    return cfg


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--_memory-child":
        memory_child_main(argv[1])
        return 0
    if argv and argv[0] == "--rebuild":
        rebuild(argv[1], argv[3] if len(argv) > 3 and argv[2] == "--memory-from" else None)
        return 0
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
