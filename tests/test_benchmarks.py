"""Smoke tests of benchmarks/bench_attribution.py, so the script cannot rot."""

from __future__ import annotations

import importlib.util
import json
import math
import mmap
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    path = ROOT / "benchmarks" / "bench_attribution.py"
    spec = importlib.util.spec_from_file_location("bench_attribution", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_attribution"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_attribution", None)


def test_cosine_hand_computed(bench):
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[1.0, 1.0], [2.0, 2.0]])
    # image 0: cos 45 degrees = 1/sqrt(2); image 1: parallel = 1; the smallest is reported
    assert bench.cosine(a, b) == pytest.approx(1 / math.sqrt(2))
    assert bench.cosine(a, -a) == pytest.approx(-1.0)


def test_limits_match_direct_autograd(bench):
    torch.manual_seed(0)
    model = bench.TinyNet().eval()
    x = torch.randn(2, 3, 8, 8)
    idx = torch.tensor([1, 3])
    xx = x.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(model(xx).gather(1, idx[:, None]).sum(), xx)
    assert torch.allclose(bench.raw_limit(model, x, idx), want, atol=1e-6)
    rows = x.repeat(3, 1, 1, 1)
    got = bench.chunked_raw_limit(model, rows, idx.repeat(3), size=4)
    assert torch.allclose(got, want.repeat(3, 1, 1, 1), atol=1e-6)

    acts = []
    h = model.features.register_forward_hook(lambda _m, _i, o: acts.append(o))
    out = model(x)
    h.remove()
    (want_layer,) = torch.autograd.grad(out.gather(1, idx[:, None]).sum(), acts[0])
    assert torch.allclose(bench.layer_limit(model, "features", x, idx), want_layer, atol=1e-6)
    assert not model.features._forward_hooks  # the limit's hook is removed


def test_rounds_are_interleaved_and_rotated(bench):
    calls = []
    cands = [bench.Candidate(n, "limit", "limit", lambda n=n: calls.append(n)) for n in "abc"]
    case = bench.Case("m", 1, "gradient", 1, cands)
    timed = bench.time_case(
        case, rounds=3, warmup=1, device=torch.device("cpu"), log=lambda _s: None
    )
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")
    assert all(len(v) == 3 for v in timed["times"].values())
    assert set(timed["medians"]) == {"a", "b", "c"}


def test_a_failing_candidate_is_recorded_not_fatal(bench):
    def boom():
        raise RuntimeError("no")

    cands = [
        bench.Candidate("ok", "limit", "limit", lambda: 1),
        bench.Candidate("bad", "captum", "gradient", boom),
    ]
    timed = bench.time_case(
        bench.Case("m", 1, "gradient", 1, cands), 2, 1, torch.device("cpu"), log=lambda _s: None
    )
    assert "RuntimeError" in timed["errors"]["bad"]
    assert len(timed["times"]["ok"]) == 2


def test_missing_legacy_is_reported(bench, tmp_path):
    cls, why = bench.load_legacy(str(tmp_path))
    assert cls is None and "not found" in why
    import flashtorch

    assert flashtorch.__version__.startswith("1.")  # the new package is still the one imported


def test_rss_sees_fresh_pages(bench):
    # an anonymous mapping is always fresh memory (a malloc'd block may reuse resident heap
    # pages, which made an earlier version of this test flaky)
    before = bench.rss_bytes()
    region = mmap.mmap(-1, 64 * 2**20)
    try:
        region.write(b"\1" * (64 * 2**20))  # touch every page
        assert bench.rss_bytes() - before > 32 * 2**20
    finally:
        region.close()


def test_rss_sampler_catches_a_transient_peak(bench, monkeypatch):
    from flashbench import harness  # the sampler reads the harness module's rss_bytes

    level = {"bytes": 100}
    monkeypatch.setattr(harness, "rss_bytes", lambda: level["bytes"])
    with bench.RssSampler(interval=0.0005) as s:
        level["bytes"] = 500  # a peak the block frees before it ends
        time.sleep(0.05)  # the sampling thread runs meanwhile
        level["bytes"] = 100
    assert s.peak == 500


def test_quick_run_writes_json_and_markdown(bench, tmp_path):
    cfg = bench.Config(
        models=("tiny",),
        batch_sizes=(1,),
        floor_batch=0,
        methods=("gradient", "guided", "smoothgrad", "gradcam"),
        rounds=1,
        heavy_rounds=1,
        n_samples=2,
        internal_batch_size=2,
        memory=True,
        quick=True,
        out=str(tmp_path),
        name="smoke",
        malloc="default",  # leave this test process's allocator alone
    )
    report = bench.run(cfg, log=lambda _s: None)
    data = json.loads((tmp_path / "smoke.json").read_text())
    md = (tmp_path / "smoke.md").read_text()
    assert data["machine"]["torch_threads"] == torch.get_num_threads()
    for key in ("cpu", "logical_cores", "torch", "date"):
        assert data["machine"][key]
    families = {r["family"] for r in data["results"]}
    assert families == {"gradient", "smoothgrad", "cam"}
    ft_rows = [
        c
        for r in data["results"]
        for c in r["candidates"]
        if c["library"] == "flashtorch" and "error" not in c
    ]
    assert {c["method"] for c in ft_rows} >= {"gradient", "guided", "smoothgrad", "gradcam"}
    for c in ft_rows:
        assert math.isfinite(c["ratio_to_limit"]) and c["ratio_to_limit"] > 0
        assert math.isfinite(c["ms_per_image"]) and c["ms_per_image"] > 0
        assert all(math.isfinite(v) and v > 0 for v in c["ratio_to_peers"].values())
    grad_fast = next(c for c in ft_rows if c["name"] == "flashtorch gradient fast")
    assert grad_fast["cosine_vs_exact"] > 0.999
    if importlib.util.find_spec("captum") is not None:
        exact = next(c for c in ft_rows if c["name"] == "flashtorch gradient exact")
        peer = "captum Saliency(abs=False)"
        assert peer in exact["ratio_to_peers"]
        assert exact["cosine_vs_peers"][peer] > 0.9999  # same computation as the peer
    mem = data["memory"]["tiny"]
    assert "error" not in mem, mem.get("error")
    assert mem["cases"]["tiny/b1/gradient"]["limit"]["peak_mb"] >= 0
    assert any(s["family"] == "smoothgrad" for s in mem["sweeps"])
    assert {f["status"] for f in data["floors"]} <= {"PASS", "FAIL", "SKIP"}
    assert any(f["floor"].startswith("gradient exact <= 1.10x") for f in data["floors"])
    assert report["floors"] == data["floors"]
    assert "| candidate |" in md and "## Floors" in md


def _row(name, method, mode, **extra):
    return {
        "name": name,
        "library": "flashtorch",
        "method": method,
        "mode": mode,
        "limit": "limit",
        "ratio_to_limit": 1.0,
        "runs_ms": [1.0, 1.0],
        **extra,
    }


def test_floors_judge_only_peers_doing_the_same_work(bench):
    """Matched peers (clean_pass), different maps (Captum on ReLU6) and CPU bfloat16 amp."""
    ig = [
        _row(
            "flashtorch integrated_gradients exact",
            "integrated_gradients",
            "exact",
            ratio_to_peers={"captum IG": 1.08, "captum IG+delta": 0.99},
            cosine_vs_peers={"captum IG": 1.0, "captum IG+delta": 1.0},
            floor_peers=["captum IG+delta"],
        ),
        _row(
            "flashtorch integrated_gradients no-clean-pass",
            "integrated_gradients",
            "no-clean-pass",
            ratio_to_peers={"captum IG": 1.02, "captum IG+delta": 0.9},
            cosine_vs_peers={"captum IG": 1.0},
            floor_peers=["captum IG"],
        ),
    ]
    guided = [
        _row(
            "flashtorch guided exact",
            "guided",
            "exact",
            ratio_to_peers={"captum GuidedBackprop": 1.05},
            cosine_vs_peers={"captum GuidedBackprop": 0.03},
        ),
        _row("flashtorch gradient amp", "gradient", "amp", cosine_vs_exact=0.9),
    ]
    results = [
        {"model": "m", "batch": 1, "family": "integrated_gradients", "candidates": ig},
        {"model": "m", "batch": 1, "family": "gradient", "candidates": guided},
    ]
    cfg = bench.Config(floor_batch=0)
    floors = {f["floor"]: f for f in bench.check_floors(results, {}, cfg)}
    assert (
        floors["integrated_gradients exact no slower than captum IG+delta (m b1)"]["status"]
        == "PASS"
    )
    assert not any(
        k.startswith("integrated_gradients exact no slower than captum IG (") for k in floors
    )  # the default is not held to the peer doing less work
    assert (
        floors["integrated_gradients no-clean-pass no slower than captum IG (m b1)"]["status"]
        == "FAIL"
    )
    skipped = floors["guided exact no slower than captum GuidedBackprop (m b1)"]
    assert skipped["status"] == "SKIP" and "not the same map" in skipped["detail"]
    assert floors["gradient amp cosine vs exact (m b1)"]["status"] == "SKIP"  # CPU bfloat16
    cuda = {
        f["floor"]: f
        for f in bench.check_floors(results, {}, bench.Config(device="cuda", floor_batch=0))
    }
    assert cuda["gradient amp cosine vs exact (m b1)"]["status"] == "FAIL"


def test_cli_flags_parse(bench):
    cfg = bench.parse_args(
        [
            "--quick",
            "--methods",
            "gradient",
            "--rounds",
            "3",
            "--batch-sizes",
            "4",
            "--models",
            "tiny",
            "--out",
            "x",
        ]
    )
    assert cfg.models == ("tiny",) and cfg.batch_sizes == (4,) and cfg.rounds == 3
    assert cfg.methods == ("gradient",) and cfg.out == "x"
    cuda = bench.parse_args(["--device", "cuda"])
    assert cuda.batch_sizes == (1, 32) and cuda.floor_batch == 32


def test_user_model_untouched_by_env(bench):
    spec = bench.build_model("tiny", torch.device("cpu"))
    state = {k: v.clone() for k, v in spec.model.state_dict().items()}
    env = bench.Env(spec, bench.Config(peers=False, quick=True), torch.device("cpu"))
    assert all(p.requires_grad for p in spec.model.parameters())
    assert not any(p.requires_grad for p in env.frozen.parameters())
    assert env.n_folded == 2
    assert any(isinstance(m, nn.BatchNorm2d) for m in spec.model.modules())
    for k, v in spec.model.state_dict().items():
        assert torch.equal(v, state[k])


def test_amp_agreement_script(bench, tmp_path, monkeypatch):
    path = ROOT / "benchmarks" / "amp_agreement.py"
    spec = importlib.util.spec_from_file_location("amp_agreement", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(
        sys, "argv", ["amp_agreement.py", "--models", "tiny", "--out", str(tmp_path)]
    )
    with pytest.warns(UserWarning, match="bfloat16"):
        module.main()
    data = json.loads((tmp_path / "amp-agreement-cpu.json").read_text())
    rows = data["models"][0]["rows"]
    assert len(rows["float16 autocast"]["per_image"]) == len(module.PHOTOS)
    # float32 against float64 and the folded copy against the exact model: rounding only
    assert rows["float64 (reference for float32)"]["min"] > 0.9999
    assert rows["float32 fast=True (BN folded)"]["min"] > 0.999
    assert all(-1.0 <= r["min"] <= r["mean"] <= 1.0 + 1e-9 for r in rows.values())
    assert "| float16 autocast |" in (tmp_path / "amp-agreement-cpu.md").read_text()


def test_vit_cam_benchmark_quick_run(bench):
    pytest.importorskip("timm")
    pytest.importorskip("pytorch_grad_cam")
    path = ROOT / "benchmarks" / "bench_vit_cam.py"
    spec = importlib.util.spec_from_file_location("bench_vit_cam", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = module.argparse.Namespace(
        model="tiny", batch=2, rounds=1, threads=1, clock="cpu", malloc="default", quick=True
    )
    before = torch.get_num_threads()
    try:
        report = module.run(args, log=lambda _s: None)
    finally:
        torch.set_num_threads(before)
    assert report["layout"] == "tokens 1+4x4" and report["layer"] == "blocks.1.norm1"
    assert report["min_correlation"] > 0.99  # the same map as the peer's
    assert set(report["ms_per_image"]) == {module.LIMIT, module.OURS, module.PEER}
    assert "flashtorch / pytorch-grad-cam" in module.markdown(report)


# --------------------------------------------------------------------------------------------
# the benchmarks/flashbench package
# --------------------------------------------------------------------------------------------


def test_benchmarked_methods_are_the_registry_less_the_exclusions(bench):
    from flashbench import registry

    import flashtorch

    assert registry.unclassified() == []  # a method with no family must be excluded, with why
    assert bench.DEFAULT_METHODS == tuple(
        n for n in flashtorch.METHODS if n not in registry.EXCLUDED
    )
    assert set(registry.EXCLUDED) <= set(flashtorch.METHODS)
    assert all(why.strip() for why in registry.EXCLUDED.values())
    assert bench.Config().methods == bench.DEFAULT_METHODS


def test_a_new_method_needs_a_decision(bench, monkeypatch):
    from flashbench import registry

    import flashtorch
    from flashtorch.attribution import AttributionMethod
    from flashtorch.saliency import Gradient

    class Novel(AttributionMethod):
        name = "novel"

        def compute(self, inputs, target):  # pragma: no cover - never called
            raise NotImplementedError

    class Variant(Gradient):
        name = "variant"

    monkeypatch.setitem(flashtorch.METHODS, "novel", Novel)
    monkeypatch.setitem(flashtorch.METHODS, "variant", Variant)
    assert registry.unclassified() == ["novel"]  # the test above fails until it is decided
    assert registry.family_map()["variant"] == "gradient"  # a gradient method is timed as one
    assert "variant" in registry.benchmarked_methods()


def test_smoothgrad_family_case_has_every_variant_and_its_peer(bench):
    spec = bench.build_model("tiny", torch.device("cpu"))
    cfg = bench.Config(quick=True, legacy_path="")
    env = bench.Env(spec, cfg, torch.device("cpu"))
    (case,) = bench.build_cases(env, (1,), ("smoothgrad_sq", "vargrad"))
    names = {c.name for c in case.candidates}
    assert case.family == "smoothgrad"
    assert {"flashtorch smoothgrad_sq exact", "flashtorch vargrad fast"} <= names
    assert not any(c.method == "smoothgrad" for c in case.candidates)
    if env.captum is not None:
        assert {
            "captum NoiseTunnel(Saliency) smoothgrad_sq",
            "captum NoiseTunnel(Saliency) vargrad",
        } <= names
    with pytest.raises(SystemExit, match="bench_rollout"):
        bench.build_cases(env, (1,), ("gradient_rollout",))


def test_the_scripts_share_the_package_harness(bench):
    from flashbench import harness, limits, models

    assert bench.time_case is harness.time_case and bench.raw_limit is limits.raw_limit
    for script in ("bench_rollout.py", "bench_vit_cam.py"):
        text = (ROOT / "benchmarks" / script).read_text()
        assert "from flashbench.harness import" in text
        assert "def time_rounds" not in text and "def build_model" not in text
    assert models.build_vit.__module__ == "flashbench.models"


def test_time_rounds_interleaves_and_rotates(bench):
    from flashbench.harness import time_rounds

    calls = []
    cands = {n: (lambda n=n: calls.append(n)) for n in "abc"}
    times, outputs = time_rounds(cands, rounds=3, clock="cpu", log=lambda _s: None)
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")
    assert all(len(v) == 3 for v in times.values()) and set(outputs) == set("abc")


def test_no_machine_paths_in_the_benchmarks():
    import re

    literal = re.compile(r"""["'](/work|/home|/tmp|/Users|[A-Z]:\\\\)""")
    files = sorted((ROOT / "benchmarks").rglob("*.py")) + [ROOT / "benchmarks" / "README.md"]
    hits = [
        f"{p.name}:{i}"
        for p in files
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if literal.search(line)
    ]
    assert hits == []


def test_no_measured_figures_in_the_package_docstrings():
    """Timings go stale in docstrings: they belong in benchmarks/results (issue 16)."""
    import re

    timing = re.compile(
        r"\d\s?(ms|µs|us)\b|\d(\.\d+)?x (faster|slower|as fast|the )"
        r"|\d\s?% (faster|slower|of the time)"
    )
    hits = [
        f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
        for p in sorted((ROOT / "src" / "flashtorch").rglob("*.py"))
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if timing.search(line)
    ]
    assert hits == []


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoothness_total_variation_hand_computed():
    smooth = _script("smoothness")
    flat = torch.ones(1, 1, 2, 2)
    step = torch.tensor([[[[1.0, 3.0], [1.0, 3.0]]]])  # scaled to sum 1: 1/8, 3/8
    assert float(smooth.total_variation(flat)) == 0.0
    assert float(smooth.total_variation(step)) == pytest.approx(2 * (3 - 1) / 8)
    assert float(smooth.total_variation(10 * step)) == pytest.approx(0.5)  # scale-free


def test_smoothness_quick_run():
    smooth = _script("smoothness")
    threads = torch.get_num_threads()
    try:
        report = smooth.run(smooth.parse_args(["--quick"]), log=lambda _s: None)
    finally:
        torch.set_num_threads(threads)
    assert {(r["noise"], r["n_samples"]) for r in report["smoothgrad"]} == {
        (0.1, 4),
        (0.1, 8),
        (0.2, 4),
        (0.2, 8),
    }
    for r in report["smoothgrad"]:
        assert all(0 < v < 2 for v in r["tv_ratio"]) and all(
            -1 <= v <= 1 for v in r["seed_agreement"]
        )
    assert [r["steps"] for r in report["integrated_gradients"]] == [4, 8]
    assert all(v >= 0 for r in report["integrated_gradients"] for v in r["relative_delta"])
    assert "| noise | n_samples | TV ratio |" in smooth.to_markdown(report)


def test_saved_reports_keep_no_machine_paths(bench, tmp_path):
    from flashbench.harness import portable_path

    assert portable_path(str(ROOT / "benchmarks" / "results")) == "benchmarks/results"
    assert portable_path(str(tmp_path / "legacy")) == ".../legacy"
    assert portable_path("") == ""
    cls, why = bench.load_legacy(str(tmp_path / "nowhere"))
    assert cls is None and str(tmp_path) not in why
