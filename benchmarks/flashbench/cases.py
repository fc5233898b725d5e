"""The attribution benchmark's configuration and its cases, built from the registry.

A *case* is one (model, batch, family) cell: the family's limits, every benchmarked flashtorch
method of the family (:mod:`flashbench.registry`) exact and ``fast=True`` (and ``amp``), and
the peers computing the same thing (:mod:`flashbench.peers`).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import flashtorch

from . import peers, registry
from .harness import Candidate, Case, silent
from .limits import chunked_raw_limit, expanded, forward_limit, layer_limit, raw_limit
from .models import ModelSpec, frozen_copy, layer_channels

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results"
DEFAULT_METHODS = registry.benchmarked_methods()


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
    legacy_path: str = peers.DEFAULT_LEGACY
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


class Env:
    """Per-model state shared by the cases: the model, its frozen / folded copies, peers."""

    def __init__(self, spec: ModelSpec, cfg: Config, device: torch.device) -> None:
        from flashtorch._fast import fast_channels_last, folded_copy

        self.spec, self.cfg, self.device = spec, cfg, device
        self.model = spec.model  # parameters keep requires_grad=True, as a user's model does
        self.frozen = frozen_copy(spec.model)
        example = torch.zeros(1, 3, spec.size, spec.size, device=device)
        self.folded, self.n_folded = folded_copy(spec.model, example)
        # the floor of fast=True: the folded copy in the layout flashtorch picks on this device
        cl = fast_channels_last(example)
        self.fast_format = torch.channels_last if cl else torch.contiguous_format
        self.fast_tag = "BN-folded " + ("channels_last" if cl else "contiguous")
        self.folded_cl = copy.deepcopy(self.folded).to(memory_format=self.fast_format)
        self.captum, self.captum_note = (
            (None, "--no-peers") if not cfg.peers else peers.optional("captum.attr")
        )
        self.pgc, self.pgc_note = (
            (None, "--no-peers") if not cfg.peers else peers.optional("pytorch_grad_cam")
        )
        if cfg.peers:
            self.legacy_cls, self.legacy_note = peers.load_legacy(cfg.legacy_path)
        else:
            self.legacy_cls, self.legacy_note = None, "--no-peers"
        self.compiled: nn.Module | None = None

    def inputs(self, batch: int) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(batch)
        x = torch.randn(batch, 3, self.spec.size, self.spec.size, generator=g).to(self.device)
        idx = torch.randint(0, self.spec.classes, (batch,), generator=g).to(self.device)
        return x, idx


def _drop_unused_folded(case: Case) -> None:
    """Remove the BN-folded limits of a case when no fast candidate refers to them."""
    used = {c.limit for c in case.candidates if c.library != "limit"}
    case.candidates = [
        c
        for c in case.candidates
        if not (c.library == "limit" and c.mode == "folded" and c.name not in used)
    ]


def _try_method(cls: Any, model: nn.Module, **options: Any) -> tuple[Any, str]:
    """Construct a flashtorch method, or say why not (e.g. ``fast`` not supported yet)."""
    try:
        return cls(model, **options), ""
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"


def ft_call(method: Any, x: Tensor, target: Any) -> Callable[[], Any]:
    """A flashtorch method's call as a candidate's function."""
    return silent(lambda: method(x, target=target))


def flashtorch_rows(
    env: Env,
    case: Case,
    name: str,
    x: Tensor,
    target: Any,
    limit: str,
    fast_limit: str | None,
    *,
    extra_modes: tuple[tuple[str, dict[str, Any]], ...] = (),
    floor_peers: dict[str, tuple[str, ...]] | None = None,
    **options: Any,
) -> None:
    """Exact, fast (and amp) candidates of one flashtorch method, or notes saying why not.

    ``extra_modes`` adds ``(mode, options)`` pairs, each run exact and fast (``"<mode>"`` and
    ``"fast <mode>"``); ``floor_peers`` maps a mode to the peers doing the same work.
    """
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
        case.candidates.append(
            Candidate(
                f"flashtorch {name} {mode}",
                "flashtorch",
                name,
                ft_call(method, x, target),
                mode,
                lim,
                floor_peers=(floor_peers or {}).get(base_mode),
            )
        )


def build_gradient_case(
    env: Env, batch: int, methods: tuple[str, ...], floor_only: bool = False
) -> Case:
    cfg, model = env.cfg, env.model
    x, idx = env.inputs(batch)
    case = Case(env.spec.name, batch, "gradient", 1)
    c = case.candidates
    c.append(
        Candidate(
            "limit",
            "limit",
            "limit",
            lambda: raw_limit(env.frozen, x, idx),
            "frozen",
            note="forward + autograd.grad w.r.t. input, params requires_grad=False",
        )
    )
    if not floor_only:
        c.append(
            Candidate(
                "limit params-requires-grad",
                "limit",
                "limit",
                lambda: raw_limit(model, x, idx),
                "requires_grad",
                note="same, parameters requires_grad=True",
            )
        )
    c.append(
        Candidate(
            "limit BN-folded",
            "limit",
            "limit",
            lambda: raw_limit(env.folded, x, idx),
            "folded-contiguous",
            note=f"on the BN-folded copy ({env.n_folded} pairs)",
        )
    )
    xcl = x.contiguous(memory_format=env.fast_format)
    c.append(
        Candidate(
            f"limit {env.fast_tag}",
            "limit",
            "limit",
            lambda: raw_limit(env.folded_cl, xcl, idx),
            "folded",
            note="the floor of fast=True (BN folded, in its layout)",
        )
    )
    if cfg.compile and not floor_only:
        try:
            if env.compiled is None:  # (a module's truth value calls len())
                env.compiled = torch.compile(frozen_copy(model))
            c.append(
                Candidate(
                    "limit torch.compile",
                    "limit",
                    "limit",
                    lambda: raw_limit(env.compiled, x, idx),
                    "compiled",
                )
            )
        except Exception as exc:
            case.notes.append(f"torch.compile: {exc!r}")
    if cfg.cuda_graphs and env.device.type == "cuda" and not floor_only:
        _add_cuda_graphs(env, case, x, idx)
    for name in registry.methods_of("gradient", methods):
        if floor_only and name not in ("gradient", "guided"):
            continue
        flashtorch_rows(env, case, name, x, idx, "limit", f"limit {env.fast_tag}")
        if env.captum is not None and name in peers.CAPTUM_OF:
            c.append(
                Candidate(
                    f"captum {peers.CAPTUM_OF[name]}",
                    "captum",
                    name,
                    peers.captum_gradient(env.captum, name, model, x, idx),
                    limit="limit",
                )
            )
        if env.legacy_cls is not None and name in ("gradient", "guided") and not floor_only:
            c.append(
                peers.legacy_candidate(
                    env.legacy_cls,
                    env.model,
                    x,
                    idx,
                    guided=name == "guided",
                    cuda=env.device.type == "cuda",
                )
            )
    if env.captum is None:
        case.notes.append(env.captum_note)
    if env.legacy_cls is None and not floor_only:
        case.notes.append(env.legacy_note)
    return case


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
GRAPHED = {
    "gradient": (("gradient", False), ("gradient", True), ("guided", True)),
    "cam": (("gradcam", True), ("guided_gradcam", True)),
}


def _add_cuda_graphs(env: Env, case: Case, x: Tensor, idx: Tensor) -> None:
    """CUDA-graph replays: the raw limits captured by hand, and ``flashtorch.graphed`` calls."""
    limits = {}
    if case.family == "gradient":
        x_cl = x.contiguous(memory_format=env.fast_format)
        for name, net, xin, mode in (
            ("limit CUDA graph", env.frozen, x, "exact"),
            (f"limit CUDA graph {env.fast_tag}", env.folded_cl, x_cl, "fast"),
        ):
            try:
                case.candidates.append(
                    Candidate(
                        name,
                        "limit",
                        "limit",
                        _cuda_graph_of(lambda s, net=net: raw_limit(net, s, idx), xin),
                        "cuda-graph",
                    )
                )
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
        case.candidates.append(
            Candidate(
                f"flashtorch {name} {mode} graphed",
                "flashtorch",
                name,
                ft_call(g, x, idx),
                f"{mode}+cuda-graph",
                limits.get(mode),
                note="flashtorch.graphed: one capture, then replays",
            )
        )


def build_nsample_case(
    env: Env, batch: int, family: str, methods: tuple[str, ...] | None = None
) -> Case:
    """SmoothGrad family or Integrated Gradients: the limit on the n-times-expanded batch."""
    cfg, model = env.cfg, env.model
    x, idx = env.inputs(batch)
    n = n_samples_for(cfg, batch)
    size = min(cfg.internal_batch_size, n * batch)
    size = max(batch, size - size % batch)  # whole samples per pass (Captum's granularity)
    rows, ridx = expanded(x, idx, n)
    case = Case(
        env.spec.name,
        batch,
        family,
        n,
        settings={"n": n, "internal_batch_size": size, "expanded_rows": n * batch},
    )
    case.candidates.append(
        Candidate(
            "limit expanded",
            "limit",
            "limit",
            lambda: chunked_raw_limit(env.frozen, rows, ridx, size),
            "frozen",
            note=f"raw limit on {n} x {batch} rows, {size} rows per pass",
        )
    )
    rows_cl = rows.contiguous(memory_format=env.fast_format)
    case.candidates.append(
        Candidate(
            f"limit expanded {env.fast_tag}",
            "limit",
            "limit",
            lambda: chunked_raw_limit(env.folded_cl, rows_cl, ridx, size),
            "folded",
        )
    )
    sd = float(0.15 * (x.max() - x.min()))
    for name in registry.methods_of(family, methods):
        if family == "smoothgrad":
            opts = {"n_samples": n, "noise": 0.15, "seed": 0, "internal_batch_size": size}
        else:
            opts = {
                "steps": n,
                "internal_batch_size": size,
                "baseline": "zero",
                "rule": "gausslegendre",
            }
        # The default (clean_pass=True) also runs the clean batch (and IG's baselines) once, for
        # `predicted`, `scores` and IG's completeness delta; clean_pass=False is the same work
        # as Captum's default call. Each is held to the peer doing the same work.
        peer = f"captum {peers.CAPTUM_OF[name]}" if name in peers.CAPTUM_OF else None
        matched = {
            "no-clean-pass": (peer,) if peer else (),
            "exact": (f"{peer}+delta",) if family == "integrated_gradients" else (),
        }
        flashtorch_rows(
            env,
            case,
            name,
            x,
            idx,
            "limit expanded",
            f"limit expanded {env.fast_tag}",
            extra_modes=(("no-clean-pass", {"clean_pass": False}),),
            floor_peers=matched,
            **opts,
        )
        if env.captum is None or peer is None:
            continue
        case.candidates.append(
            Candidate(
                peer,
                "captum",
                name,
                peers.captum_nsample(
                    env.captum,
                    family,
                    model,
                    x,
                    idx,
                    n,
                    size,
                    sd,
                    nt_type=peers.NT_TYPE.get(name, "smoothgrad"),
                ),
                limit="limit expanded",
            )
        )
        if family == "integrated_gradients":
            case.candidates.append(
                Candidate(
                    f"{peer}+delta",
                    "captum",
                    name,
                    peers.captum_nsample(
                        env.captum, family, model, x, idx, n, size, sd, delta=True
                    ),
                    limit="limit expanded",
                    note="return_convergence_delta=True (runs x and x')",
                )
            )
    if env.captum is None:
        case.notes.append(env.captum_note)
    elif family == "smoothgrad":
        case.notes.append(
            "SmoothGrad maps of two libraries differ by their noise draws: the cosine "
            "between them is not an agreement check"
        )
    _drop_unused_folded(case)
    return case


def _add_forward_limits(
    env: Env, case: Case, x: Tensor, rows: Tensor, size: int, what: str
) -> None:
    """The gradient-free limits of occlusion / Score-CAM: the clean batch and the ``rows``,
    ``size`` per pass, on the model and on its BN-folded copy (in fast=True's layout)."""
    case.candidates.append(
        Candidate(
            "limit forwards",
            "limit",
            "limit",
            lambda: forward_limit(env.frozen, x, rows, size),
            "no-grad",
            note=f"clean forward + {what}, {size} per pass",
        )
    )
    x_cl, rows_cl = (t.contiguous(memory_format=env.fast_format) for t in (x, rows))
    case.candidates.append(
        Candidate(
            f"limit forwards {env.fast_tag}",
            "limit",
            "limit",
            lambda: forward_limit(env.folded_cl, x_cl, rows_cl, size),
            "folded",
        )
    )


def build_occlusion_case(env: Env, batch: int, methods: tuple[str, ...] | None = None) -> Case:
    from flashtorch.saliency.occlusion import window_starts

    cfg, model = env.cfg, env.model
    x, idx = env.inputs(batch)
    w, s, hw = cfg.occlusion_window, cfg.occlusion_stride, env.spec.size
    w, s = min(w, hw), min(s, w)
    p = len(window_starts(hw, w, s)) ** 2
    size = max(batch, min(cfg.internal_batch_size, p * batch))
    size -= size % batch
    rows = x.repeat(p, 1, 1, 1).contiguous()
    case = Case(
        env.spec.name,
        batch,
        "occlusion",
        p,
        settings={"window": w, "stride": s, "windows": p, "internal_batch_size": size},
    )
    _add_forward_limits(env, case, x, rows, size, f"{p} x {batch} occluded rows")
    for name in registry.methods_of("occlusion", methods):
        flashtorch_rows(
            env,
            case,
            name,
            x,
            idx,
            "limit forwards",
            f"limit forwards {env.fast_tag}",
            window=w,
            stride=s,
            fill=0.0,
            internal_batch_size=size,
        )
        if env.captum is not None and name in peers.CAPTUM_OF:
            case.candidates.append(
                Candidate(
                    f"captum {peers.CAPTUM_OF[name]}",
                    "captum",
                    name,
                    peers.captum_occlusion(env.captum, model, x, idx, w, s, size // batch),
                    limit="limit forwards",
                )
            )
    _drop_unused_folded(case)
    return case


def build_cam_case(env: Env, batch: int, methods: tuple[str, ...]) -> Case:
    model, layer = env.model, env.spec.cam_layer
    x, idx = env.inputs(batch)
    case = Case(env.spec.name, batch, "cam", 1, settings={"layer": layer})
    c = case.candidates
    c.append(
        Candidate(
            "limit to layer",
            "limit",
            "limit",
            lambda: layer_limit(env.frozen, layer, x, idx),
            "frozen",
            note=f"forward + autograd.grad w.r.t. {layer}'s activation",
        )
    )
    x_cl = x.contiguous(memory_format=env.fast_format)
    c.append(
        Candidate(
            f"limit to layer {env.fast_tag}",
            "limit",
            "limit",
            lambda: layer_limit(env.folded_cl, layer, x_cl, idx),
            "folded",
        )
    )
    if "guided_gradcam" in methods:
        c.append(
            Candidate(
                "limit to input",
                "limit",
                "limit",
                lambda: raw_limit(env.frozen, x, idx),
                "frozen",
                note="guided Grad-CAM's floor: one forward + one backward to input",
            )
        )
        c.append(
            Candidate(
                f"limit to input {env.fast_tag}",
                "limit",
                "limit",
                lambda: raw_limit(env.folded_cl, x_cl, idx),
                "folded",
            )
        )
    for name in registry.methods_of("cam", methods):
        lim = "limit to input" if name == "guided_gradcam" else "limit to layer"
        flashtorch_rows(env, case, name, x, idx, lim, f"{lim} {env.fast_tag}", layer=layer)
        if env.captum is not None and name in peers.CAPTUM_OF:
            c.append(
                Candidate(
                    f"captum {peers.CAPTUM_OF[name]}",
                    "captum",
                    name,
                    peers.captum_cam(env.captum, name, model, layer, x, idx),
                    limit=lim,
                )
            )
        if env.pgc is not None and name in peers.GRADCAM_OF:
            c.append(
                Candidate(
                    f"pytorch-grad-cam {peers.GRADCAM_OF[name]}",
                    "pytorch-grad-cam",
                    name,
                    peers.pgc_call(env.pgc, model, peers.GRADCAM_OF[name], layer, x, idx),
                    limit=lim,
                )
            )
    if env.pgc is None:
        case.notes.append(env.pgc_note)
    if env.cfg.cuda_graphs and env.device.type == "cuda":
        _add_cuda_graphs(env, case, x, idx)
    return case


def build_scorecam_case(env: Env, batch: int, methods: tuple[str, ...] | None = None) -> Case:
    layer = env.spec.scorecam_layer
    x, idx = env.inputs(batch)
    with torch.no_grad():
        k = layer_channels(env.frozen, layer, x[:1])
    size = env.cfg.internal_batch_size
    rows = x.repeat(k, 1, 1, 1).contiguous()
    case = Case(
        env.spec.name,
        batch,
        "scorecam",
        k,
        settings={"layer": layer, "channels": k, "internal_batch_size": size},
        notes=[
            f"Score-CAM costs K = {k} masked forwards per image; the layer is one "
            "with few channels to keep the run short (the ratio does not depend "
            "on K)"
        ],
    )
    _add_forward_limits(env, case, x, rows, size, f"{k} x {batch} masked rows")
    for name in registry.methods_of("scorecam", methods):
        flashtorch_rows(
            env,
            case,
            name,
            x,
            idx,
            "limit forwards",
            f"limit forwards {env.fast_tag}",
            layer=layer,
            internal_batch_size=size,
        )
        if env.pgc is not None and name in peers.GRADCAM_OF:
            case.candidates.append(
                Candidate(
                    f"pytorch-grad-cam {peers.GRADCAM_OF[name]}",
                    "pytorch-grad-cam",
                    name,
                    peers.pgc_call(
                        env.pgc, env.model, peers.GRADCAM_OF[name], layer, x, idx, batch_size=size
                    ),
                    limit="limit forwards",
                )
            )
    _drop_unused_folded(case)
    return case


def build_cases(
    env: Env, batches: tuple[int, ...], methods: tuple[str, ...], floor: bool = True
) -> list[Case]:
    """Every case of one model, in run order (families in :data:`registry.FAMILIES` order)."""
    with contextlib.suppress(ImportError):
        import flashtorch.cam  # noqa: F401  (registers the CAM family)
    cfg = env.cfg
    families_of = registry.family_map()
    for m in methods:
        if m in registry.EXCLUDED:
            raise SystemExit(f"method {m!r} is not timed here: {registry.EXCLUDED[m]}")
        if m not in families_of:
            raise SystemExit(f"unknown method {m!r}; benchmarked: {', '.join(DEFAULT_METHODS)}")
    wanted = {families_of[m] for m in methods}
    families = [f for f in registry.FAMILIES if f in wanted]
    cases: list[Case] = []
    for b in batches:
        for fam in families:
            if fam == "gradient":
                cases.append(build_gradient_case(env, b, methods))
            elif fam in registry.NSAMPLE_FAMILIES:
                cases.append(build_nsample_case(env, b, fam, methods))
            elif fam == "occlusion":
                cases.append(build_occlusion_case(env, b, methods))
            elif fam == "cam":
                cases.append(build_cam_case(env, b, methods))
            elif fam == "scorecam" and b in cfg.scorecam_batches:
                cases.append(build_scorecam_case(env, b, methods))
    if (
        floor
        and env.spec.name == "resnet50"
        and cfg.floor_batch
        and cfg.floor_batch not in batches
        and "gradient" in families
    ):
        cases.append(build_gradient_case(env, cfg.floor_batch, methods, floor_only=True))
    return cases
