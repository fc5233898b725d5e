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
  same internal batches as the methods; flashtorch vs Captum ``NoiseTunnel(Saliency)`` /
  ``IntegratedGradients``.
* ``occlusion`` - the limit is gradient-free forwards of the occluded copies plus the clean batch.
* ``cam`` - the limit is forward + ``autograd.grad`` of the scores w.r.t. the layer activation
  (the forward up to the layer builds no graph); flashtorch ``gradcam``, ``gradcam_pp``,
  ``layercam``, ``guided_gradcam`` vs Captum ``LayerGradCam`` (+ bilinear upsampling) and
  ``GuidedGradCam`` and pytorch-grad-cam ``GradCAM``, ``GradCAMPlusPlus``, ``LayerCAM``. Guided
  Grad-CAM's limit is the raw limit (one forward + one backward to the input).
* ``scorecam`` - the limit is one forward plus gradient-free forwards of the ``K x B`` masked
  inputs; flashtorch vs pytorch-grad-cam ``ScoreCAM`` (same internal batch).

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
import contextlib
import copy
import ctypes
import datetime as _dt
import gc
import importlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's ScoreCAM progress bars

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results"
DEFAULT_LEGACY = os.environ.get("FLASHTORCH013_PATH", "/work/venv/legacy/flashtorch013")

GRADIENT_METHODS = ("gradient", "gradient_x_input", "guided", "deconvnet")
CAM_METHODS = ("gradcam", "gradcam_pp", "layercam", "guided_gradcam")
NSAMPLE_METHODS = ("smoothgrad", "integrated_gradients")
DEFAULT_METHODS = (
    *GRADIENT_METHODS, "smoothgrad", "integrated_gradients", "occlusion", *CAM_METHODS, "scorecam"
)
FAMILY = {
    **{m: "gradient" for m in GRADIENT_METHODS},
    **{m: "cam" for m in CAM_METHODS},
    "smoothgrad": "smoothgrad",
    "integrated_gradients": "integrated_gradients",
    "occlusion": "occlusion",
    "scorecam": "scorecam",
}
#: smallest cosine between two libraries' maps for them to count as the same computation in the
#: "no slower than" floors (Score-CAM's mask conventions give 0.98; Captum's guided backprop on
#: a ReLU6 model, which is the plain gradient, 0.03).
SAME_MAP = 0.9
#: families whose calls are long: they run --heavy-rounds rounds.
HEAVY = ("smoothgrad", "integrated_gradients", "occlusion", "scorecam")

CAPTUM_OF = {
    "gradient": "Saliency(abs=False)",
    "gradient_x_input": "InputXGradient",
    "guided": "GuidedBackprop",
    "deconvnet": "Deconvolution",
    "smoothgrad": "NoiseTunnel(Saliency) smoothgrad",
    "integrated_gradients": "IntegratedGradients",
    "occlusion": "Occlusion",
    "gradcam": "LayerGradCam+interpolate",
    "guided_gradcam": "GuidedGradCam",
}
GRADCAM_OF = {
    "gradcam": "GradCAM",
    "gradcam_pp": "GradCAMPlusPlus",
    "layercam": "LayerCAM",
    "scorecam": "ScoreCAM",
}


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


class TinyNet(nn.Module):
    """conv-BN-ReLU x 2, pool, linear: a model for ``--quick`` and the smoke test."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.features = nn.Sequential(
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(self.stem(x))).flatten(1))


@dataclass
class ModelSpec:
    name: str
    model: nn.Module
    size: int
    classes: int
    cam_layer: str
    scorecam_layer: str
    note: str = ""


def _randomise_bn(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics/affine (random-weight models have mean 0, var 1, identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def build_model(name: str, device: torch.device) -> ModelSpec:
    """The benchmark's models (random weights except the bundled pretrained one)."""
    torch.manual_seed(0)
    if name == "resnet50":
        import torchvision

        model = torchvision.models.resnet50(weights=None)
        _randomise_bn(model)
        spec = ModelSpec(name, model, 224, 1000, "layer4", "maxpool",
                         "torchvision, random weights, BN statistics randomised (seed 0)")
    elif name in ("efficientnet_lite0", "lite0"):
        from flashtorch.models import load_pretrained

        spec = ModelSpec("efficientnet_lite0", load_pretrained(), 224, 1000, "net.bn2",
                         "net.blocks.4", "flashtorch.models.load_pretrained() (ImageNet weights)")
    elif name == "tiny":
        model = TinyNet()
        _randomise_bn(model)
        spec = ModelSpec(name, model, 32, 10, "features", "stem", "TinyNet (smoke tests)")
    elif name.startswith("torchvision:"):
        import torchvision

        model = torchvision.models.get_model(name.split(":", 1)[1], weights=None)
        _randomise_bn(model)
        spec = ModelSpec(name, model, 224, 1000, "", "", "torchvision, random weights")
    else:
        raise SystemExit(f"unknown model {name!r}: resnet50, efficientnet_lite0, tiny, "
                         "torchvision:NAME")
    spec.model.to(device).eval()
    if not spec.cam_layer:
        from flashtorch.cam import default_layer

        x = torch.zeros(1, 3, spec.size, spec.size, device=device)
        spec.cam_layer = spec.scorecam_layer = default_layer(spec.model, x)
    return spec


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy with ``requires_grad=False`` parameters (what the frozen limit runs on)."""
    net = copy.deepcopy(model).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


# --------------------------------------------------------------------------------------------
# Limits
# --------------------------------------------------------------------------------------------


def raw_limit(model: nn.Module, x: Tensor, idx: Tensor) -> Tensor:
    """Forward + ``torch.autograd.grad`` of the target scores w.r.t. the input."""
    xx = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = model(xx)
        (g,) = torch.autograd.grad(out.gather(1, idx[:, None]).sum(), xx)
    return g


def chunked_raw_limit(model: nn.Module, rows: Tensor, idx: Tensor, size: int) -> Tensor:
    """The raw limit over pre-built expanded rows, ``size`` rows per pass."""
    out = []
    for a in range(0, rows.shape[0], size):
        out.append(raw_limit(model, rows[a:a + size], idx[a:a + size]))
    return torch.cat(out)


def forward_limit(model: nn.Module, x: Tensor, rows: Tensor, size: int) -> Tensor:
    """Gradient-free forwards: the clean batch, then the expanded rows ``size`` at a time."""
    with torch.no_grad():
        outs = [model(x)]
        for a in range(0, rows.shape[0], size):
            outs.append(model(rows[a:a + size]))
    return torch.cat(outs)


def layer_limit(model: nn.Module, layer: str, x: Tensor, idx: Tensor) -> Tensor:
    """Forward + ``autograd.grad`` of the scores w.r.t. the layer's activation.

    The activation is made a leaf (a forward hook returns ``out.detach().requires_grad_()``), so
    nothing before the layer builds a graph: the least work a gradient CAM can do.
    """
    module = model.get_submodule(layer)
    box: list[Tensor] = []

    def hook(_m: nn.Module, _i: Any, out: Tensor) -> Tensor:
        leaf = out.detach().requires_grad_(True)
        box.append(leaf)
        return leaf

    handle = module.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            out = model(x)
            (g,) = torch.autograd.grad(out.gather(1, idx[:, None]).sum(), box[0])
    finally:
        handle.remove()
    return g


# --------------------------------------------------------------------------------------------
# Peers
# --------------------------------------------------------------------------------------------


def _optional(module: str) -> tuple[Any, str]:
    try:
        return importlib.import_module(module), ""
    except Exception as exc:  # any import failure is a reason to record, not to crash
        return None, f"{module} not importable: {type(exc).__name__}: {exc}"


def load_legacy(path: str) -> tuple[Any, str]:
    """Import FlashTorch 0.1.3's ``Backprop`` from ``path`` under the same process.

    FlashTorch 0.1.3 is also called ``flashtorch`` and imports itself by absolute name, so the
    new package's ``sys.modules`` entries are set aside during the import and put back after;
    the old classes keep references to the old helpers they imported. Install it with
    ``pip install --no-deps --target PATH flashtorch==0.1.3 importlib_resources`` (never into
    the environment itself: it would replace flashtorch 1.0).
    """
    if not path or not os.path.isdir(os.path.join(path, "flashtorch")):
        return None, (f"FlashTorch 0.1.3 not found at {path!r} (pip install --no-deps --target "
                      "DIR flashtorch==0.1.3 importlib_resources; pass --legacy-path DIR)")
    os.environ.setdefault("MPLBACKEND", "Agg")
    ours = {k: v for k, v in sys.modules.items()
            if k == "flashtorch" or k.startswith("flashtorch.")}
    for k in ours:
        del sys.modules[k]
    sys.path.insert(0, path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            backprop = importlib.import_module("flashtorch.saliency.backprop")
            version = sys.modules["flashtorch"].__dict__.get("__version__", "?")
        return backprop.Backprop, f"FlashTorch {version} from {path}"
    except Exception as exc:
        return None, f"FlashTorch 0.1.3 not importable on torch {torch.__version__}: {exc!r}"
    finally:
        for k in [k for k in sys.modules if k == "flashtorch" or k.startswith("flashtorch.")]:
            del sys.modules[k]
        sys.modules.update(ours)
        sys.path.remove(path)


# --------------------------------------------------------------------------------------------
# Candidates and cases
# --------------------------------------------------------------------------------------------


@dataclass
class Candidate:
    """One timed callable."""

    name: str
    library: str  # limit | flashtorch | captum | pytorch-grad-cam | flashtorch-0.1.3
    method: str  # the flashtorch method it is (or is a peer of); "limit" for limits
    fn: Callable[[], Any]
    mode: str = ""  # exact | fast | amp | fast+amp | ...
    limit: str | None = None  # the limit candidate its ratio is taken against
    prepare: Callable[[], None] | None = None  # untimed, before every call
    note: str = ""
    #: the peers doing the same work, which the "no slower than" floors use (None: every peer
    #: of the method in the case). The table still shows the ratio to every peer.
    floor_peers: tuple[str, ...] | None = None


@dataclass
class Case:
    model: str
    batch: int
    family: str
    rows: int  # rows per image actually pushed through the model (n samples, windows, ...)
    candidates: list[Candidate] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.model}/b{self.batch}/{self.family}"


@dataclass
class Config:
    device: str = "cpu"
    models: tuple[str, ...] = ("resnet50", "efficientnet_lite0")
    batch_sizes: tuple[int, ...] = (1, 16)
    floor_batch: int = 8  # the fast-vs-Captum floor (resnet50 only)
    methods: tuple[str, ...] = DEFAULT_METHODS
    rounds: int = 5
    heavy_rounds: int = 3
    warmup: int = 1
    threads: int = 0
    n_samples: int = 0  # 0: 16, 8 for batches > 4 (4 with --quick)
    internal_batch_size: int = 32
    occlusion_window: int = 112
    occlusion_stride: int = 56
    scorecam_batches: tuple[int, ...] = (1,)
    memory: bool = True
    memory_batch: int = 0  # 0: the largest batch size
    legacy_path: str = DEFAULT_LEGACY
    amp: bool = True
    compile: bool = False
    cuda_graphs: bool = False
    tf32: bool = False  # CUDA: keep PyTorch's TF32 convolutions (default: off, float32 proper)
    clock: str = "wall"  # wall: perf_counter; cpu: process_time (robust to other load)
    malloc: str = "heap"  # heap: keep_heap() on Linux CPU runs; default: leave glibc as is
    peers: bool = True
    quick: bool = False
    out: str = str(DEFAULT_OUT)
    name: str = ""  # output file stem (default: the device type)


def n_samples_for(cfg: Config, batch: int) -> int:
    """SmoothGrad samples / IG steps: ``--n-samples``, else 16 (8 for batches > 4; 4 quick)."""
    if cfg.n_samples:
        return cfg.n_samples
    return 4 if cfg.quick else (16 if batch <= 4 else 8)


def _drop_unused_folded(case: Case) -> None:
    """Remove the BN-folded limits of a case when no fast candidate refers to them."""
    used = {c.limit for c in case.candidates if c.library != "limit"}
    case.candidates = [c for c in case.candidates
                       if not (c.library == "limit" and c.mode == "folded" and c.name not in used)]


def _silent(fn: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn()

    return run


def _try_method(cls: Any, model: nn.Module, **options: Any) -> tuple[Any, str]:
    """Construct a flashtorch method, or say why not (e.g. ``fast`` not supported yet)."""
    try:
        return cls(model, **options), ""
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"


def _ft(method: Any, x: Tensor, target: Any) -> Callable[[], Any]:
    return _silent(lambda: method(x, target=target))


class Env:
    """Per-model state shared by the cases: the model, its frozen / folded copies, peers."""

    def __init__(self, spec: ModelSpec, cfg: Config, device: torch.device) -> None:
        from flashtorch._fast import folded_copy

        self.spec, self.cfg, self.device = spec, cfg, device
        self.model = spec.model  # parameters keep requires_grad=True, as a user's model does
        self.frozen = frozen_copy(spec.model)
        example = torch.zeros(1, 3, spec.size, spec.size, device=device)
        self.folded, self.n_folded = folded_copy(spec.model, example)
        # the floor of fast=True: the folded copy in the layout flashtorch picks on this device
        from flashtorch._fast import fast_channels_last

        cl = fast_channels_last(example)
        self.fast_format = torch.channels_last if cl else torch.contiguous_format
        self.fast_tag = "BN-folded " + ("channels_last" if cl else "contiguous")
        self.folded_cl = copy.deepcopy(self.folded).to(memory_format=self.fast_format)
        self.captum, self.captum_note = (None, "--no-peers") if not cfg.peers else _optional(
            "captum.attr")
        self.pgc, self.pgc_note = (None, "--no-peers") if not cfg.peers else _optional(
            "pytorch_grad_cam")
        if cfg.peers:
            self.legacy_cls, self.legacy_note = load_legacy(cfg.legacy_path)
        else:
            self.legacy_cls, self.legacy_note = None, "--no-peers"
        self.compiled: nn.Module | None = None

    def inputs(self, batch: int) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(batch)
        x = torch.randn(batch, 3, self.spec.size, self.spec.size, generator=g).to(self.device)
        idx = torch.randint(0, self.spec.classes, (batch,), generator=g).to(self.device)
        return x, idx


def _flashtorch_rows(env: Env, case: Case, name: str, x: Tensor, target: Any,
                     limit: str, fast_limit: str | None, *,
                     extra_modes: tuple[tuple[str, dict[str, Any]], ...] = (),
                     floor_peers: dict[str, tuple[str, ...]] | None = None,
                     **options: Any) -> None:
    """Exact, fast (and amp) candidates of one flashtorch method, or notes saying why not.

    ``extra_modes`` adds ``(mode, options)`` pairs, each run exact and fast (``"<mode>"`` and
    ``"fast <mode>"``); ``floor_peers`` maps a mode to the peers doing the same work.
    """
    import flashtorch

    cls = flashtorch.METHODS.get(name)
    if cls is None:
        case.notes.append(f"{name}: not in flashtorch.METHODS (not implemented yet) - skipped")
        return
    modes: list[tuple[str, dict[str, Any], str]] = [("exact", {}, limit)]
    modes.append(("fast", {"fast": True}, fast_limit or limit))
    for mode, opts in extra_modes:
        modes.append((mode, dict(opts), limit))
        modes.append((f"fast {mode}", {"fast": True, **opts}, fast_limit or limit))
    if env.cfg.amp and name == "gradient":
        modes.append(("amp", {"amp": True}, limit))
        modes.append(("fast+amp", {"fast": True, "amp": True}, fast_limit or limit))
    for mode, extra, lim in modes:
        method, why = _try_method(cls, env.model, **options, **extra)
        if method is None:
            case.notes.append(f"flashtorch {name} {mode}: not available ({why})")
            continue
        base_mode = mode.removeprefix("fast").strip() or "exact"
        case.candidates.append(Candidate(
            f"flashtorch {name} {mode}", "flashtorch", name, _ft(method, x, target), mode, lim,
            floor_peers=(floor_peers or {}).get(base_mode)))


def build_gradient_case(env: Env, batch: int, methods: tuple[str, ...],
                        floor_only: bool = False) -> Case:
    cfg, model = env.cfg, env.model
    x, idx = env.inputs(batch)
    case = Case(env.spec.name, batch, "gradient", 1)
    c = case.candidates
    c.append(Candidate("limit", "limit", "limit", lambda: raw_limit(env.frozen, x, idx), "frozen",
                       note="forward + autograd.grad w.r.t. input, params requires_grad=False"))
    if not floor_only:
        c.append(Candidate("limit params-requires-grad", "limit", "limit",
                           lambda: raw_limit(model, x, idx), "requires_grad",
                           note="same, parameters requires_grad=True"))
    c.append(Candidate("limit BN-folded", "limit", "limit",
                       lambda: raw_limit(env.folded, x, idx), "folded-contiguous",
                       note=f"on the BN-folded copy ({env.n_folded} pairs)"))
    xcl = x.contiguous(memory_format=env.fast_format)
    c.append(Candidate(f"limit {env.fast_tag}", "limit", "limit",
                       lambda: raw_limit(env.folded_cl, xcl, idx), "folded",
                       note="the floor of fast=True (BN folded, in its layout)"))
    if cfg.compile and not floor_only:
        try:
            if env.compiled is None:  # (a module's truth value calls len())
                env.compiled = torch.compile(frozen_copy(model))
            c.append(Candidate("limit torch.compile", "limit", "limit",
                               lambda: raw_limit(env.compiled, x, idx), "compiled"))
        except Exception as exc:
            case.notes.append(f"torch.compile: {exc!r}")
    if cfg.cuda_graphs and env.device.type == "cuda" and not floor_only:
        _add_cuda_graphs(env, case, x, idx)
    for name in methods:
        if FAMILY.get(name) != "gradient":
            continue
        if floor_only and name not in ("gradient", "guided"):
            continue
        _flashtorch_rows(env, case, name, x, idx, "limit", f"limit {env.fast_tag}")
        if env.captum is not None and name in CAPTUM_OF:
            c.append(Candidate(f"captum {CAPTUM_OF[name]}", "captum", name,
                               _captum_gradient(env.captum, name, model, x, idx), limit="limit"))
        if env.legacy_cls is not None and name in ("gradient", "guided") and not floor_only:
            c.append(_legacy_candidate(env, x, idx, guided=name == "guided"))
    if env.captum is None:
        case.notes.append(env.captum_note)
    if env.legacy_cls is None and not floor_only:
        case.notes.append(env.legacy_note)
    return case


def _captum_gradient(ca: Any, name: str, model: nn.Module, x: Tensor,
                     idx: Tensor) -> Callable[[], Any]:
    """Captum's counterpart of a flashtorch gradient method (a new object per call)."""
    if name == "gradient":
        return _silent(lambda: ca.Saliency(model).attribute(x, target=idx, abs=False))
    cls = {"gradient_x_input": ca.InputXGradient, "guided": ca.GuidedBackprop,
           "deconvnet": ca.Deconvolution}[name]
    return _silent(lambda: cls(model).attribute(x, target=idx))


def _captum_cam(ca: Any, name: str, model: nn.Module, layer: str, x: Tensor,
                idx: Tensor) -> Callable[[], Any]:
    """Captum's ``LayerGradCam`` (+ bilinear upsampling to the input) or ``GuidedGradCam``."""
    mod = model.get_submodule(layer)
    size = tuple(x.shape[-2:])
    if name == "gradcam":
        def run() -> Tensor:
            a = ca.LayerGradCam(model, mod).attribute(x, target=idx, relu_attributions=True)
            return ca.LayerAttribution.interpolate(a, size, "bilinear")
    else:
        def run() -> Tensor:
            return ca.GuidedGradCam(model, mod).attribute(x, target=idx,
                                                          interpolate_mode="bilinear")
    return _silent(run)


def _captum_nsample(ca: Any, family: str, model: nn.Module, x: Tensor, idx: Tensor, n: int,
                    rows: int, stdev: float, delta: bool = False) -> Callable[[], Any]:
    """Captum ``NoiseTunnel(Saliency)`` or ``IntegratedGradients``, ``rows`` rows per pass
    (``delta``: IG with ``return_convergence_delta=True``, which also runs ``x`` and ``x'``)."""
    batch = x.shape[0]
    if family == "smoothgrad":
        def run() -> Tensor:
            return ca.NoiseTunnel(ca.Saliency(model)).attribute(
                x, nt_type="smoothgrad", nt_samples=n, nt_samples_batch_size=max(1, rows // batch),
                stdevs=stdev, target=idx, abs=False)
    else:
        def run() -> Tensor:
            out = ca.IntegratedGradients(model).attribute(
                x, baselines=0.0, target=idx, n_steps=n, method="gausslegendre",
                internal_batch_size=rows, return_convergence_delta=delta)
            return out[0] if delta else out
    return _silent(run)


def _legacy_candidate(env: Env, x: Tensor, idx: Tensor, guided: bool) -> Candidate:
    """FlashTorch 0.1.3: ``Backprop(model).calculate_gradients`` one image at a time.

    It registers hooks on the model for good (and more ReLU hooks at every guided call), so it
    gets its own copy, and the hooks of earlier calls are cleared (untimed) before each call.
    It explains the predicted class (``target_class`` only triggers a warning when different)
    and computes every parameter's gradient.
    """
    net = copy.deepcopy(env.model)
    bp = env.legacy_cls(net)
    relus = [m for m in net.modules() if isinstance(m, nn.ReLU)]
    cuda = env.device.type == "cuda"

    def prepare() -> None:
        for m in relus:
            m._forward_hooks.clear()
            m._backward_hooks.clear()

    def run() -> Tensor:
        maps = []
        for i in range(x.shape[0]):
            xi = x[i:i + 1].detach().clone().requires_grad_(True)
            maps.append(bp.calculate_gradients(xi, int(idx[i]), guided=guided, use_gpu=cuda))
        return torch.stack(maps)

    mode = "guided" if guided else "plain"
    return Candidate(f"FlashTorch 0.1.3 Backprop {mode}", "flashtorch-0.1.3",
                     "guided" if guided else "gradient", _silent(run), limit="limit",
                     prepare=prepare if guided else None,
                     note="batch 1 loop, parameter gradients, predicted class")


def _cuda_graph_of(fn: Callable[[Tensor], Tensor], x: Tensor) -> Callable[[], Tensor]:
    """A hand-made CUDA graph of ``fn`` (the raw limits), replayed on a fresh copy of ``x``."""
    static_x = x.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn(static_x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = fn(static_x)

    def run() -> Tensor:
        static_x.copy_(x)  # a new batch is copied in, as a real loop would
        graph.replay()
        return static_out

    return run


#: flashtorch.graphed rows: (method, fast) per family
GRAPHED = {"gradient": (("gradient", False), ("gradient", True), ("guided", True)),
           "cam": (("gradcam", True), ("guided_gradcam", True))}


def _add_cuda_graphs(env: Env, case: Case, x: Tensor, idx: Tensor) -> None:
    """CUDA-graph replays: the raw limits captured by hand, and ``flashtorch.graphed`` calls."""
    import flashtorch

    limits = {}
    if case.family == "gradient":
        x_cl = x.contiguous(memory_format=env.fast_format)
        for name, net, xin, mode in (
                ("limit CUDA graph", env.frozen, x, "exact"),
                (f"limit CUDA graph {env.fast_tag}", env.folded_cl, x_cl, "fast")):
            try:
                case.candidates.append(Candidate(
                    name, "limit", "limit",
                    _cuda_graph_of(lambda s, net=net: raw_limit(net, s, idx), xin),
                    "cuda-graph"))
                limits[mode] = name
            except Exception as exc:
                case.notes.append(f"{name} failed: {exc!r}")
    for name, fast in GRAPHED.get(case.family, ()):
        if name not in env.cfg.methods:
            continue
        mode = "fast" if fast else "exact"
        options = {"layer": env.spec.cam_layer} if case.family == "cam" else {}
        try:
            g = flashtorch.graphed(flashtorch.METHODS[name](env.model, fast=fast, **options))
        except Exception as exc:
            case.notes.append(f"flashtorch.graphed({name}, fast={fast}): {exc!r}")
            continue
        case.candidates.append(Candidate(
            f"flashtorch {name} {mode} graphed", "flashtorch", name,
            _ft(g, x, idx), f"{mode}+cuda-graph", limits.get(mode),
            note="flashtorch.graphed: one capture, then replays"))


def _expanded(x: Tensor, idx: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Sample-major expanded rows (row r = sample r // B of image r % B)."""
    return x.repeat(n, 1, 1, 1).contiguous(), idx.repeat(n)


def build_nsample_case(env: Env, batch: int, family: str) -> Case:
    cfg, model = env.cfg, env.model
    x, idx = env.inputs(batch)
    n = n_samples_for(cfg, batch)
    size = min(cfg.internal_batch_size, n * batch)
    size = max(batch, size - size % batch)  # whole samples per pass (Captum's granularity)
    rows, ridx = _expanded(x, idx, n)
    case = Case(env.spec.name, batch, family, n,
                settings={"n": n, "internal_batch_size": size, "expanded_rows": n * batch})
    case.candidates.append(Candidate(
        "limit expanded", "limit", "limit", lambda: chunked_raw_limit(env.frozen, rows, ridx, size),
        "frozen", note=f"raw limit on {n} x {batch} rows, {size} rows per pass"))
    rows_cl = rows.contiguous(memory_format=env.fast_format)
    case.candidates.append(Candidate(
        f"limit expanded {env.fast_tag}", "limit", "limit",
        lambda: chunked_raw_limit(env.folded_cl, rows_cl, ridx, size), "folded"))
    if family == "smoothgrad":
        opts = {"n_samples": n, "noise": 0.15, "seed": 0, "internal_batch_size": size}
    else:
        opts = {"steps": n, "internal_batch_size": size, "baseline": "zero",
                "rule": "gausslegendre"}
    # The default (clean_pass=True) also runs the clean batch (and IG's baselines) once, for
    # `predicted`, `scores` and IG's completeness delta; clean_pass=False is the same work as
    # Captum's default call. Each is held to the peer doing the same work.
    peer = f"captum {CAPTUM_OF[family]}"
    matched = {"no-clean-pass": (peer,),
               "exact": (f"{peer}+delta",) if family == "integrated_gradients" else ()}
    _flashtorch_rows(env, case, family, x, idx, "limit expanded",
                     f"limit expanded {env.fast_tag}",
                     extra_modes=(("no-clean-pass", {"clean_pass": False}),),
                     floor_peers=matched, **opts)
    if env.captum is not None:
        sd = float(0.15 * (x.max() - x.min()))
        case.candidates.append(Candidate(
            peer, "captum", family,
            _captum_nsample(env.captum, family, model, x, idx, n, size, sd),
            limit="limit expanded"))
        if family == "integrated_gradients":
            case.candidates.append(Candidate(
                f"{peer}+delta", "captum", family,
                _captum_nsample(env.captum, family, model, x, idx, n, size, sd, delta=True),
                limit="limit expanded", note="return_convergence_delta=True (runs x and x')"))
        else:
            case.notes.append(
                "SmoothGrad maps of two libraries differ by their noise draws: the cosine "
                "between them is not an agreement check")
    else:
        case.notes.append(env.captum_note)
    _drop_unused_folded(case)
    return case


def _add_forward_limits(env: Env, case: Case, x: Tensor, rows: Tensor, size: int,
                        what: str) -> None:
    """The gradient-free limits of occlusion / Score-CAM: the clean batch and the ``rows``,
    ``size`` per pass, on the model and on its BN-folded copy (in fast=True's layout)."""
    case.candidates.append(Candidate(
        "limit forwards", "limit", "limit", lambda: forward_limit(env.frozen, x, rows, size),
        "no-grad", note=f"clean forward + {what}, {size} per pass"))
    x_cl, rows_cl = (t.contiguous(memory_format=env.fast_format) for t in (x, rows))
    case.candidates.append(Candidate(
        f"limit forwards {env.fast_tag}", "limit", "limit",
        lambda: forward_limit(env.folded_cl, x_cl, rows_cl, size), "folded"))


def build_occlusion_case(env: Env, batch: int) -> Case:
    from flashtorch.saliency.occlusion import window_starts

    cfg, model = env.cfg, env.model
    x, idx = env.inputs(batch)
    w, s, hw = cfg.occlusion_window, cfg.occlusion_stride, env.spec.size
    w, s = min(w, hw), min(s, w)
    p = len(window_starts(hw, w, s)) ** 2
    size = max(batch, min(cfg.internal_batch_size, p * batch))
    size -= size % batch
    rows = x.repeat(p, 1, 1, 1).contiguous()
    case = Case(env.spec.name, batch, "occlusion", p,
                settings={"window": w, "stride": s, "windows": p, "internal_batch_size": size})
    _add_forward_limits(env, case, x, rows, size, f"{p} x {batch} occluded rows")
    _flashtorch_rows(env, case, "occlusion", x, idx, "limit forwards",
                     f"limit forwards {env.fast_tag}",
                     window=w, stride=s, fill=0.0, internal_batch_size=size)
    if env.captum is not None:
        ca = env.captum

        def peer() -> Tensor:
            return ca.Occlusion(model).attribute(
                x, sliding_window_shapes=(3, w, w), strides=(3, s, s), target=idx, baselines=0.0,
                perturbations_per_eval=size // batch)

        case.candidates.append(Candidate("captum Occlusion", "captum", "occlusion", _silent(peer),
                                         limit="limit forwards"))
    _drop_unused_folded(case)
    return case


def _pgc_call(env: Env, cls_name: str, layer: str, x: Tensor, idx: Tensor,
              batch_size: int | None = None) -> Callable[[], Any]:
    pgc = env.pgc
    targets_mod = importlib.import_module("pytorch_grad_cam.utils.model_targets")
    module = env.model.get_submodule(layer)
    targets = [targets_mod.ClassifierOutputTarget(int(i)) for i in idx]

    def run() -> Any:
        cam = getattr(pgc, cls_name)(model=env.model, target_layers=[module])
        if batch_size is not None:
            cam.batch_size = batch_size
        try:
            return cam(input_tensor=x, targets=targets)
        finally:
            cam.activations_and_grads.release()

    return _silent(run)


def build_cam_case(env: Env, batch: int, methods: tuple[str, ...]) -> Case:
    model, layer = env.model, env.spec.cam_layer
    x, idx = env.inputs(batch)
    case = Case(env.spec.name, batch, "cam", 1, settings={"layer": layer})
    c = case.candidates
    c.append(Candidate("limit to layer", "limit", "limit",
                       lambda: layer_limit(env.frozen, layer, x, idx), "frozen",
                       note=f"forward + autograd.grad w.r.t. {layer}'s activation"))
    x_cl = x.contiguous(memory_format=env.fast_format)
    c.append(Candidate(f"limit to layer {env.fast_tag}", "limit", "limit",
                       lambda: layer_limit(env.folded_cl, layer, x_cl, idx), "folded"))
    if "guided_gradcam" in methods:
        c.append(Candidate("limit to input", "limit", "limit",
                           lambda: raw_limit(env.frozen, x, idx), "frozen",
                           note="guided Grad-CAM's floor: one forward + one backward to input"))
        c.append(Candidate(f"limit to input {env.fast_tag}", "limit", "limit",
                           lambda: raw_limit(env.folded_cl, x_cl, idx), "folded"))
    for name in methods:
        if FAMILY.get(name) != "cam":
            continue
        lim = "limit to input" if name == "guided_gradcam" else "limit to layer"
        _flashtorch_rows(env, case, name, x, idx, lim, f"{lim} {env.fast_tag}",
                         layer=layer)
        if env.captum is not None and name in CAPTUM_OF:
            c.append(Candidate(f"captum {CAPTUM_OF[name]}", "captum", name,
                               _captum_cam(env.captum, name, model, layer, x, idx), limit=lim))
        if env.pgc is not None and name in GRADCAM_OF:
            c.append(Candidate(f"pytorch-grad-cam {GRADCAM_OF[name]}", "pytorch-grad-cam", name,
                               _pgc_call(env, GRADCAM_OF[name], layer, x, idx), limit=lim))
    if env.pgc is None:
        case.notes.append(env.pgc_note)
    if env.cfg.cuda_graphs and env.device.type == "cuda":
        _add_cuda_graphs(env, case, x, idx)
    return case


def build_scorecam_case(env: Env, batch: int) -> Case:
    layer = env.spec.scorecam_layer
    x, idx = env.inputs(batch)
    with torch.no_grad():
        k = _layer_channels(env.frozen, layer, x[:1])
    size = env.cfg.internal_batch_size
    rows = x.repeat(k, 1, 1, 1).contiguous()
    case = Case(env.spec.name, batch, "scorecam", k,
                settings={"layer": layer, "channels": k, "internal_batch_size": size},
                notes=[f"Score-CAM costs K = {k} masked forwards per image; the layer is one "
                       "with few channels to keep the run short (the ratio does not depend "
                       "on K)"])
    _add_forward_limits(env, case, x, rows, size, f"{k} x {batch} masked rows")
    _flashtorch_rows(env, case, "scorecam", x, idx, "limit forwards",
                     f"limit forwards {env.fast_tag}",
                     layer=layer, internal_batch_size=size)
    if env.pgc is not None:
        case.candidates.append(Candidate(
            "pytorch-grad-cam ScoreCAM", "pytorch-grad-cam", "scorecam",
            _pgc_call(env, "ScoreCAM", layer, x, idx, batch_size=size), limit="limit forwards"))
    _drop_unused_folded(case)
    return case


def _layer_channels(model: nn.Module, layer: str, x: Tensor) -> int:
    box: list[int] = []
    h = model.get_submodule(layer).register_forward_hook(
        lambda _m, _i, o: box.append(int(o.shape[1])))
    try:
        model(x)
    finally:
        h.remove()
    return box[0]


def build_cases(env: Env, batches: tuple[int, ...], methods: tuple[str, ...],
                floor: bool = True) -> list[Case]:
    """Every case of one model, in run order."""
    import flashtorch

    with contextlib.suppress(ImportError):
        importlib.import_module("flashtorch.cam")  # registers the CAM family
    cfg = env.cfg
    families = []
    for m in methods:
        fam = FAMILY.get(m)
        if fam is None:
            raise SystemExit(f"unknown method {m!r}; benchmarked: {', '.join(DEFAULT_METHODS)}")
        if fam not in families:
            families.append(fam)
    cases: list[Case] = []
    for b in batches:
        for fam in families:
            if fam == "gradient":
                cases.append(build_gradient_case(env, b, methods))
            elif fam in NSAMPLE_METHODS:
                cases.append(build_nsample_case(env, b, fam))
            elif fam == "occlusion":
                cases.append(build_occlusion_case(env, b))
            elif fam == "cam":
                cases.append(build_cam_case(env, b, methods))
            elif fam == "scorecam" and b in cfg.scorecam_batches:
                cases.append(build_scorecam_case(env, b))
    if (floor and env.spec.name == "resnet50" and cfg.floor_batch and cfg.floor_batch not in batches
            and "gradient" in families):
        cases.append(build_gradient_case(env, cfg.floor_batch, methods, floor_only=True))
    missing = [m for m in methods if m not in flashtorch.METHODS]
    for case in cases:
        case.notes.extend(f"{m}: not registered in flashtorch.METHODS" for m in missing
                          if FAMILY.get(m) == case.family)
    return cases


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_case(case: Case, rounds: int, warmup: int, device: torch.device,
              log: Callable[[str], None] = print, clock: str = "wall") -> dict[str, Any]:
    """Warm up every candidate, then ``rounds`` interleaved rounds; medians per candidate.

    ``clock="cpu"`` times with :func:`time.process_time` (CPU seconds of this process, all
    threads): on a machine shared with other jobs it counts the work done rather than the time
    spent waiting for a core; use it with ``--threads 1`` (idle OpenMP threads spin and count).
    """
    times: dict[str, list[float]] = {c.name: [] for c in case.candidates}
    outputs: dict[str, Any] = {}
    errors: dict[str, str] = {}
    gc.collect()
    gc.freeze()  # long-lived objects out of the collector's way: gc.collect() stays ~1 ms
    try:
        timer = time.process_time if clock == "cpu" else time.perf_counter
        _warm_and_time(case, rounds, warmup, device, log, times, outputs, errors, timer)
    finally:
        gc.unfreeze()
    medians = {k: statistics.median(v) for k, v in times.items() if v}
    return {"times": times, "medians": medians, "outputs": outputs, "errors": errors}


def _warm_and_time(case: Case, rounds: int, warmup: int, device: torch.device,
                   log: Callable[[str], None], times: dict[str, list[float]],
                   outputs: dict[str, Any], errors: dict[str, str],
                   timer: Callable[[], float] = time.perf_counter) -> None:
    for _ in range(max(1, warmup)):
        for c in case.candidates:
            if c.name in errors:
                continue
            try:
                if c.prepare:
                    c.prepare()
                outputs[c.name] = c.fn()
                _sync(device)
            except Exception as exc:
                errors[c.name] = f"{type(exc).__name__}: {exc}"
                log(f"    ! {c.name}: {errors[c.name][:200]}")
    active = [c for c in case.candidates if c.name not in errors]
    for r in range(rounds):
        shift = r % max(1, len(active))
        for c in active[shift:] + active[:shift]:
            if c.prepare:
                c.prepare()
            gc.collect()
            gc.disable()
            try:
                _sync(device)
                t0 = timer()
                c.fn()
                _sync(device)
                times[c.name].append(timer() - t0)
            finally:
                gc.enable()


def _as_maps(out: Any) -> Tensor | None:
    import numpy as np

    if out is None:
        return None
    if hasattr(out, "maps"):
        return out.maps.detach().float().cpu()
    if isinstance(out, np.ndarray):
        return torch.from_numpy(out).float()
    if isinstance(out, Tensor):
        return out.detach().float().cpu()
    return None


def cosine(a: Tensor, b: Tensor) -> float:
    """Smallest per-image cosine similarity of two map batches (flattened per image)."""
    if a.dim() == 4 and b.dim() == 4 and a.shape != b.shape and 1 in (a.shape[1], b.shape[1]):
        # one map per image (occlusion, CAMs) vs one per channel (Captum): channel mean
        a, b = a.mean(1, keepdim=True), b.mean(1, keepdim=True)
    a = a.reshape(a.shape[0], -1).double()
    b = b.reshape(b.shape[0], -1).double()
    if a.shape != b.shape:
        return float("nan")
    num = (a * b).sum(1)
    na, nb = a.norm(dim=1), b.norm(dim=1)
    cos = num / (na * nb).clamp_min(1e-300)
    # two all-zero maps agree (a CAM that is negative everywhere); one zero map does not
    cos = torch.where((na == 0) & (nb == 0), torch.ones_like(cos), cos)
    return float(cos.min())


def rel_noise(times: list[float]) -> float:
    """Run-to-run noise of one candidate: 1.4826 x median absolute deviation / median."""
    if len(times) < 2:
        return float("nan")
    med = statistics.median(times)
    mad = statistics.median(abs(t - med) for t in times)
    return 1.4826 * mad / med if med > 0 else float("nan")


def summarise(case: Case, timed: dict[str, Any]) -> dict[str, Any]:
    """The JSON record of one case: ms per image, ratios to the limit and to the peers."""
    med = timed["medians"]
    by_name = {c.name: c for c in case.candidates}
    maps = {k: _as_maps(v) for k, v in timed["outputs"].items()}
    rows = []
    for c in case.candidates:
        row: dict[str, Any] = {
            "name": c.name, "library": c.library, "method": c.method, "mode": c.mode,
            "note": c.note, "limit": c.limit,
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
                if p.library in ("captum", "pytorch-grad-cam", "flashtorch-0.1.3") and \
                        p.method == c.method and p.name in med:
                    peers[p.name] = round(m / med[p.name], 4)
                    if maps.get(c.name) is not None and maps.get(p.name) is not None:
                        agree[p.name] = round(cosine(maps[c.name], maps[p.name]), 6)
            row["ratio_to_peers"] = peers
            row["cosine_vs_peers"] = agree
            row["floor_peers"] = sorted(peers if c.floor_peers is None
                                        else [p for p in c.floor_peers if p in peers])
            if c.mode != "exact":
                exact = f"flashtorch {c.method} exact"
                if exact in med:
                    row["speedup_vs_exact"] = round(med[exact] / m, 4)
                if maps.get(c.name) is not None and maps.get(exact) is not None:
                    row["cosine_vs_exact"] = round(cosine(maps[c.name], maps[exact]), 6)
        rows.append(row)
    del by_name
    return {
        "key": case.key, "model": case.model, "batch": case.batch, "family": case.family,
        "rows_per_image": case.rows, "settings": case.settings, "notes": case.notes,
        "candidates": rows,
    }


# --------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Current resident set size of this process (Linux ``/proc/self/statm``)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:  # pragma: no cover - not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class RssSampler:
    """Sample RSS every ``interval`` seconds on a thread; ``peak`` is the largest sample."""

    def __init__(self, interval: float = 0.0005) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self.peak = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def measure_candidate_memory(c: Candidate, device: torch.device) -> dict[str, float]:
    """Working (peak) and persistent memory of one candidate's call, in MB."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before_warm = torch.cuda.memory_allocated(device)
        if c.prepare:
            c.prepare()
        c.fn()
        torch.cuda.synchronize(device)
        gc.collect()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        if c.prepare:
            c.prepare()
        c.fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"peak_mb": (peak - base) / 2**20, "persistent_mb": (base - before_warm) / 2**20}
    before_warm = rss_bytes()
    if c.prepare:
        c.prepare()
    c.fn()
    gc.collect()
    base = rss_bytes()
    if c.prepare:
        c.prepare()
    with RssSampler() as s:
        c.fn()
    return {"peak_mb": (s.peak - base) / 2**20, "persistent_mb": (base - before_warm) / 2**20}


def memory_plan(cfg: Config) -> list[dict[str, Any]]:
    """What the memory child measures.

    Every candidate of the gradient and CAM families at ``memory_batch`` (default: the largest
    batch size), and the n-sample sweeps at batch 1: ``internal_batch_size`` 2, 4, 8 rows at
    fixed n, and n, 2n, 4n at 4 rows (n = 4 with ``--quick``, else 8).
    """
    batch = cfg.memory_batch or max(cfg.batch_sizes)
    plan: list[dict[str, Any]] = [{"kind": "cases", "batch": batch,
                                   "families": ("gradient", "cam")}]
    n = 4 if cfg.quick else 8
    for fam in NSAMPLE_METHODS:
        if fam in cfg.methods:
            plan.append({"kind": "sweep", "family": fam, "batch": 1,
                         "points": [(n, 2), (n, 4), (n, 8), (2 * n, 4), (4 * n, 4)]})
    return plan


def run_memory_child(cfg: Config, model: str) -> dict[str, Any]:
    """Run the memory measurements of one model in a fresh child process (CPU)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0",
               MALLOC_ARENA_MAX="2")
    payload = json.dumps({"cfg": cfg.__dict__, "model": model})
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_memory-child", payload]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    last = proc.stdout.strip().splitlines()[-1]
    return json.loads(last)


def memory_child_main(payload: str) -> None:
    data = json.loads(payload)
    cfg = Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in data["cfg"].items()})
    device = torch.device(cfg.device)
    _set_threads(cfg)
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
                        rec[c.name] = {k: round(v, 1) for k, v in
                                       measure_candidate_memory(c, device).items()}
                    except Exception as exc:
                        rec[c.name] = {"error": f"{type(exc).__name__}: {exc}"}
                out["cases"][case.key] = rec
        else:
            out["sweeps"].extend(_memory_sweep(env, item, device))
    return out


def _memory_sweep(env: Env, item: dict[str, Any], device: torch.device) -> list[dict[str, Any]]:
    import flashtorch

    fam, batch = item["family"], item["batch"]
    cls = flashtorch.METHODS.get(fam)
    x, idx = env.inputs(batch)
    records = []
    for n, ibs in item["points"]:
        opts: dict[str, Any] = ({"n_samples": n, "seed": 0} if fam == "smoothgrad"
                                else {"steps": n, "baseline": "zero"})
        entries: list[tuple[str, Callable[[], Any]]] = []
        if cls is not None:
            method = cls(env.model, internal_batch_size=ibs * batch, **opts)
            entries.append(("flashtorch", _ft(method, x, idx)))
        if env.captum is not None:
            entries.append(("captum", _captum_nsample(env.captum, fam, env.model, x, idx, n,
                                                      ibs * batch, 0.1)))
        for lib, fn in entries:
            c = Candidate(f"{lib} {fam}", lib, fam, fn)
            try:
                mem = measure_candidate_memory(c, device)
                records.append({"family": fam, "library": lib, "model": env.spec.name,
                                "batch": batch, "n": n, "internal_batch_size": ibs * batch,
                                **{k: round(v, 1) for k, v in mem.items()}})
            except Exception as exc:
                records.append({"family": fam, "library": lib, "n": n,
                                "internal_batch_size": ibs * batch, "error": repr(exc)})
    return records


# --------------------------------------------------------------------------------------------
# Floors
# --------------------------------------------------------------------------------------------


def _find(results: list[dict[str, Any]], model: str, batch: int, family: str) -> dict | None:
    for r in results:
        if r["model"] == model and r["batch"] == batch and r["family"] == family:
            return r
    return None


def check_floors(results: list[dict[str, Any]], memory: dict[str, Any],
                 cfg: Config) -> list[dict[str, Any]]:
    """The issue's floors as PASS / FAIL / SKIP records."""
    floors: list[dict[str, Any]] = []

    def noise_of(r: dict[str, Any], *names: str) -> float:
        cands = {c["name"]: c for c in r["candidates"]}
        parts = [cands[n]["noise"] if "noise" in cands[n]
                 else rel_noise([t / 1e3 for t in cands[n].get("runs_ms", [])])
                 for n in names if n in cands]
        parts = [p for p in parts if isinstance(p, float) and math.isfinite(p)]
        return math.sqrt(sum(p * p for p in parts)) if parts else float("nan")

    def band(value: float, target: float, noise: float) -> str:
        if not math.isfinite(noise):
            return ""
        within = abs(value - target) <= noise * target
        return f"run-to-run noise +-{100 * noise:.1f}%" + (" (within noise)" if within else "")

    def add(name: str, ok: bool | None, value: Any, threshold: str, detail: str = "") -> None:
        status = "SKIP" if ok is None else ("PASS" if ok else "FAIL")
        floors.append({"floor": name, "status": status, "value": value, "threshold": threshold,
                       "detail": detail})

    limit_floor = {"gradient": GRADIENT_METHODS, "smoothgrad": ("smoothgrad",),
                   "integrated_gradients": ("integrated_gradients",), "cam": CAM_METHODS,
                   "scorecam": ("scorecam",), "occlusion": ("occlusion",)}
    for r in results:
        cands = {c["name"]: c for c in r["candidates"]}
        for method in limit_floor.get(r["family"], ()):
            if method not in cfg.methods:
                continue
            for mode in ("exact", "fast", "no-clean-pass", "fast no-clean-pass"):
                c = cands.get(f"flashtorch {method} {mode}")
                where = f"{r['model']} b{r['batch']}"
                if c is None:
                    continue  # not in this case (the notes say why)
                if "ratio_to_limit" not in c:
                    add(f"{method} {mode} <= 1.10x limit ({where})", None, None, "<= 1.10",
                        c.get("error", "no limit measured"))
                    continue
                v = c["ratio_to_limit"]
                add(f"{method} {mode} <= 1.10x {c['limit']} ({where})", v <= 1.10, v, "<= 1.10",
                    band(v, 1.10, noise_of(r, c["name"], c["limit"])))
                for peer in c.get("floor_peers", c.get("ratio_to_peers", {})):
                    ratio = c["ratio_to_peers"][peer]
                    name = f"{method} {mode} no slower than {peer} ({where})"
                    cos = c.get("cosine_vs_peers", {}).get(peer)
                    if method != "smoothgrad" and cos is not None and cos < SAME_MAP:
                        # e.g. Captum's guided backprop hooks nn.ReLU modules only: on a ReLU6
                        # model its map is the plain gradient. Speed of different work: not judged
                        add(name, None, ratio, "<= 1.00",
                            f"not the same map (cosine {cos:.3f}): the peer computes something "
                            "else on this model")
                        continue
                    add(name, ratio <= 1.0, ratio, "<= 1.00",
                        band(ratio, 1.0, noise_of(r, c["name"], peer)))
    # fast >= 1.25x faster than Captum, resnet50 CPU batch floor_batch, cosine >= 0.999
    fb = cfg.floor_batch
    r = _find(results, "resnet50", fb, "gradient")
    if r is None:
        add(f"fast >= 1.25x faster than Captum (resnet50 b{fb})", None, None, ">= 1.25",
            "resnet50 batch not run")
    else:
        cands = {c["name"]: c for c in r["candidates"]}
        for method in ("gradient", "guided"):
            fast = cands.get(f"flashtorch {method} fast")
            peer = f"captum {CAPTUM_OF[method]}"
            if fast is None or peer not in fast.get("ratio_to_peers", {}):
                add(f"{method} fast >= 1.25x faster than {peer} (resnet50 b{fb})", None, None,
                    ">= 1.25", "not measured")
                continue
            speed = round(1 / fast["ratio_to_peers"][peer], 4)
            add(f"{method} fast >= 1.25x faster than {peer} (resnet50 b{fb})", speed >= 1.25,
                speed, ">= 1.25", band(speed, 1.25, noise_of(r, fast["name"], peer)))
            cos = fast.get("cosine_vs_exact")
            add(f"{method} fast maps agree with exact (resnet50 b{fb})",
                None if cos is None else cos >= 0.999, cos, "cosine >= 0.999")
    # every fast / amp map agrees with the exact one
    for r in results:
        for c in r["candidates"]:
            if c["library"] == "flashtorch" and "cosine_vs_exact" in c:
                thr = 0.99 if "amp" in c["mode"] else 0.999
                name = f"{c['method']} {c['mode']} cosine vs exact ({r['model']} b{r['batch']})"
                if "amp" in c["mode"] and not cfg.device.startswith("cuda"):
                    # the issue's amp floor is for float16 on a GPU; CPU autocast is bfloat16
                    # (8-bit mantissa), which flashtorch says in a warning: reported, not judged
                    add(name, None, c["cosine_vs_exact"], f">= {thr} (GPU float16)",
                        "bfloat16 on the CPU: informational, flashtorch warns about it")
                    continue
                add(name, c["cosine_vs_exact"] >= thr, c["cosine_vs_exact"], f">= {thr}")
    # n-sample peak memory set by internal_batch_size, not by n
    for model, mem in memory.items():
        for fam in NSAMPLE_METHODS:
            pts = [s for s in mem.get("sweeps", []) if s.get("family") == fam
                   and s.get("library") == "flashtorch" and "peak_mb" in s]
            if not pts:
                continue
            ibs = sorted({s["internal_batch_size"] for s in pts})
            fixed = [s for s in pts if s["internal_batch_size"] == 4 * pts[0]["batch"]]
            if len(fixed) >= 2:
                peaks = [s["peak_mb"] for s in fixed]
                spread = max(peaks) - min(peaks)
                tol = max(16.0, 0.15 * max(peaks))
                add(f"{fam} peak memory independent of n ({model}, internal_batch_size "
                    f"{fixed[0]['internal_batch_size']})", spread <= tol,
                    {str(s["n"]): s["peak_mb"] for s in fixed},
                    f"spread <= {tol:.0f} MB")
            del ibs
    return floors


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def machine_info(cfg: Config, device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu, "logical_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "python": platform.python_version(), "platform": platform.platform(),
        "torch": torch.__version__, "device": str(device),
    }
    for mod in ("torchvision", "captum", "pytorch_grad_cam", "timm", "flashtorch"):
        with contextlib.suppress(Exception):
            info[mod] = importlib.import_module(mod).__version__
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        info["pytorch_grad_cam"] = version("grad-cam")
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["tf32"] = bool(torch.backends.cudnn.allow_tf32)
    with contextlib.suppress(OSError):
        info["loadavg_start"] = os.getloadavg()
    return info


def _fmt(v: Any, spec: str = ".2f", suffix: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:{spec}}{suffix}"


def to_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"# flashtorch attribution benchmark ({m['device']})", "",
        f"- date: {m['date']}",
        f"- machine: {m.get('gpu', m['cpu'])}; {m['logical_cores']} logical cores; torch "
        f"threads {m['torch_threads']}"
        + ("" if "tf32" not in m else "; TF32 " + ("on (PyTorch's cuDNN default)" if m["tf32"]
                                                   else "off: exact = float32")),
        f"- torch {m['torch']}, torchvision {m.get('torchvision', '-')}, captum "
        f"{m.get('captum', '-')}, grad-cam {m.get('pytorch_grad_cam', '-')}, flashtorch "
        f"{m.get('flashtorch', '-')}; Python {m['python']}",
        f"- load average at start / end: {m.get('loadavg_start')} / {m.get('loadavg_end')}; "
        f"largest 1-min load seen: {m.get('loadavg_1min_max', '-')}"
        + ("  **(taken under load: timings are noisy)**" if report.get("under_load") else ""),
        f"- allocator: {m.get('allocator', 'default allocator')}",
        f"- clock: {report['config']['clock']} ("
        + ("time.perf_counter" if report["config"]["clock"] == "wall" else
           "time.process_time: CPU seconds of the process, robust to other jobs") + ")",
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
        lines += [f"## {r['model']}, batch {r['batch']}, {r['family']}"
                  + (f" ({settings})" if settings else ""), ""]
        if load:
            lines += [f"1-min load average before / after: {load[0]} / {load[1]}", ""]
        lines.append("| candidate | ms / image | images / s | x limit | vs peers (ratio, cos) | "
                     "fast/amp: speed-up, cos vs exact | peak MB | note |")
        lines.append("|---|---:|---:|---:|---|---|---:|---|")
        for c in r["candidates"]:
            if "error" in c:
                lines.append(f"| {c['name']} | error | | | | | | {c['error'][:120]} |")
                continue
            peers = "; ".join(
                f"{p.split(' ', 1)[-1]} {v:.2f}x"
                + (f" (cos {c['cosine_vs_peers'][p]:.3f})" if p in c.get("cosine_vs_peers", {})
                   else "")
                for p, v in c.get("ratio_to_peers", {}).items())
            exact = ""
            if "speedup_vs_exact" in c or "cosine_vs_exact" in c:
                exact = (f"{_fmt(c.get('speedup_vs_exact'), '.2f', 'x')}, cos "
                         f"{_fmt(c.get('cosine_vs_exact'), '.5f')}")
            peak = mcases.get(c["name"], {}).get("peak_mb")
            lim = "" if c["library"] == "limit" else f" ({c['limit']})" if c["limit"] else ""
            ms = c.get("ms_per_image")
            lines.append(
                f"| {c['name']} | {_fmt(ms, '.1f')} | {_fmt(1000 / ms if ms else None, '.0f')} | "
                f"{_fmt(c.get('ratio_to_limit'), '.3f')}{lim} | {peers} | {exact} | "
                f"{_fmt(peak, '.0f')} | {c.get('note', '')} |")
        if r["notes"]:
            lines.append("")
            lines += [f"- {n}" for n in dict.fromkeys(r["notes"])]
        lines.append("")
    sweeps = [dict(s, model=s.get("model", k)) for k, v in mem.items()
              for s in v.get("sweeps", [])]
    if sweeps:
        lines += ["## n-sample methods: peak memory vs internal_batch_size and n", "",
                  "| model | method | library | batch | n | internal_batch_size (rows) | "
                  "peak MB |", "|---|---|---|---:|---:|---:|---:|"]
        for s in sweeps:
            lines.append(f"| {s.get('model')} | {s['family']} | {s['library']} | "
                         f"{s.get('batch', '')} | {s['n']} | {s['internal_batch_size']} | "
                         f"{_fmt(s.get('peak_mb'), '.0f')} |")
        lines.append("")
    for k, v in mem.items():
        if "error" in v:
            lines.append(f"- memory child for {k} failed: {v['error'][-300:]}")
    lines += ["## Floors", ""]
    lines += [f"- **{f['status']}** {f['floor']}: {f['value']} (needs {f['threshold']})"
              + (f" - {f['detail']}" if f["detail"] else "") for f in report["floors"]]
    lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def _set_threads(cfg: Config) -> None:
    threads = cfg.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)


#: glibc ``mallopt`` parameters: no ``mmap`` for large blocks, never give the heap back.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_heap() -> str:
    """Make glibc serve every allocation from a heap it never returns to the system.

    By default glibc maps each block above its mmap threshold (at most 32 MB) afresh and unmaps
    it when freed, so every call of a batch-16 resnet50 page-faults in its largest activations
    again; which blocks cross the threshold depends on the heap's history, so the same
    computation varied by 10-30 % between candidates (the raw limit measured 66 or 88 ms per
    image depending on its neighbour). With ``M_MMAP_MAX = 0`` and an unbounded trim threshold
    freed memory is reused and timings are stable. It applies to this process only (the peak
    memory of ``--memory`` is measured in child processes, without it) and to every candidate
    alike. Returns what was done, for the report.
    """
    if sys.platform != "linux":
        return "default allocator (not Linux)"
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    except OSError as exc:
        return f"default allocator ({exc})"
    return ("glibc heap kept (mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD=2^31-1)" if ok
            else "default allocator (mallopt refused)")


def _stem(cfg: Config, device: torch.device) -> str:
    return cfg.name or (device.type + ("-quick" if cfg.quick else ""))


def _write_partial(cfg: Config, device: torch.device, report: dict[str, Any]) -> None:
    """The results so far (``STEM.partial.json``), so that a run stopped by a time limit (a lent
    GPU machine) still leaves every finished case; ``--rebuild`` turns it into a report."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{_stem(cfg, device)}.partial.json").write_text(
        json.dumps(report, indent=1, default=str))


def run(cfg: Config, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the benchmark described by ``cfg``; write JSON and Markdown; return the report."""
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    _set_threads(cfg)
    if device.type == "cuda":
        # TF32 (10-bit mantissa) convolutions are PyTorch's cuDNN default; with them the
        # "exact" maps already differ from float32 ones (cosine ~0.98 on resnet50), and fast /
        # amp agreement would compare two approximations. Every candidate runs the same way.
        torch.backends.cudnn.allow_tf32 = cfg.tf32
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
    report: dict[str, Any] = {"machine": machine_info(cfg, device), "config": dict(cfg.__dict__),
                              "results": [], "memory": {}, "notes": []}
    report["machine"]["allocator"] = (
        keep_heap() if cfg.malloc == "heap" and device.type == "cpu" else "default allocator")
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
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
            timed = time_case(case, rounds, cfg.warmup, device, log, cfg.clock)
            summary = summarise(case, timed)
            summary["loadavg_1min"] = [round(load, 2), round(os.getloadavg()[0], 2)
                                       if hasattr(os, "getloadavg") else None]
            loads_seen.extend(x for x in summary["loadavg_1min"] if x is not None)
            report["results"].append(summary)
            _write_partial(cfg, device, report)
            for c in summary["candidates"]:
                if "ms_per_image" in c:
                    log(f"    {c['name']:<52} {c['ms_per_image']:>10.2f} ms/img  "
                        f"x{c.get('ratio_to_limit', float('nan')):.3f}")
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
    loads = [report["machine"].get("loadavg_start", (0,))[0],
             report["machine"].get("loadavg_end", (0,))[0], *loads_seen]
    report["machine"]["loadavg_1min_max"] = max(loads)
    report["under_load"] = device.type == "cpu" and max(loads) > 0.75 * cores + 0.5
    report["floors"] = check_floors(report["results"], report["memory"], cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = _stem(cfg, device)
    (out / f"{stem}.partial.json").unlink(missing_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1, default=str))
    (out / f"{stem}.md").write_text(to_markdown(report))
    log("")
    for f in report["floors"]:
        log(f"{f['status']}: {f['floor']}: {f['value']} (needs {f['threshold']})"
            + (f" - {f['detail']}" if f["detail"] else ""))
    log(f"wrote {out / (stem + '.json')} and {out / (stem + '.md')}")
    return report


def parse_args(argv: list[str] | None = None) -> Config:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    p.add_argument("--models", nargs="+", help="resnet50 efficientnet_lite0 tiny torchvision:NAME")
    p.add_argument("--batch-sizes", nargs="+", type=int)
    p.add_argument("--floor-batch", type=int, help="batch of the fast-vs-Captum floor "
                   "(resnet50; default 8 on CPU, 32 on CUDA; 0: off)")
    p.add_argument("--methods", nargs="+", help=f"default: {' '.join(DEFAULT_METHODS)}")
    p.add_argument("--rounds", type=int, help="timed rounds (default 5)")
    p.add_argument("--heavy-rounds", type=int, help="rounds of n-sample / occlusion / Score-CAM")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: all cores)")
    p.add_argument("--n-samples", type=int, default=0,
                   help="SmoothGrad samples / IG steps (0: 16, or 8 for batches > 4)")
    p.add_argument("--internal-batch-size", type=int, default=32)
    p.add_argument("--no-memory", action="store_true", help="skip peak-memory measurements")
    p.add_argument("--memory-batch", type=int, default=0)
    p.add_argument("--no-peers", action="store_true", help="flashtorch and limits only")
    p.add_argument("--no-amp", action="store_true")
    p.add_argument("--legacy-path", default=DEFAULT_LEGACY,
                   help="directory holding FlashTorch 0.1.3 (pip install --target)")
    p.add_argument("--compile", action="store_true", help="add torch.compile'd limit rows")
    p.add_argument("--cuda-graphs", action="store_true", help="add CUDA-graph rows (CUDA only)")
    p.add_argument("--tf32", action="store_true",
                   help="CUDA: leave TF32 convolutions / matmuls on (PyTorch's cuDNN default); "
                   "by default they are switched off so that exact means float32")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall: perf_counter (default); cpu: process CPU time, for loaded "
                   "machines (use with --threads 1)")
    p.add_argument("--malloc", choices=("heap", "default"), default="heap",
                   help="heap (default): glibc keeps freed memory (stable CPU timings, see "
                   "keep_heap); default: the allocator as configured")
    p.add_argument("--quick", action="store_true", help="tiny model and sizes: a smoke run")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="output folder")
    p.add_argument("--name", default="", help="output file stem (default: device type)")
    a = p.parse_args(argv)
    cuda = a.device.startswith("cuda")
    cfg = Config(device=a.device, threads=a.threads, warmup=a.warmup, n_samples=a.n_samples,
                 internal_batch_size=a.internal_batch_size, memory=not a.no_memory,
                 memory_batch=a.memory_batch, legacy_path=a.legacy_path, amp=not a.no_amp,
                 compile=a.compile, cuda_graphs=a.cuda_graphs, tf32=a.tf32,
                 peers=not a.no_peers,
                 quick=a.quick, out=a.out, name=a.name, clock=a.clock, malloc=a.malloc)
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
