"""Smoke test of benchmarks/bench_rollout.py, so the script cannot rot."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from .conftest import ROOT

pytest.importorskip("timm")


@pytest.fixture(scope="module")
def bench():
    path = ROOT / "benchmarks" / "bench_rollout.py"
    spec = importlib.util.spec_from_file_location("bench_rollout", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_rollout"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_rollout", None)


def test_quick_run_reports_the_floor(bench):
    threads = torch.get_num_threads()
    try:
        args = bench.parse_args(
            [
                "--quick",
                "--rounds",
                "1",
                "--batch",
                "2",
                "--threads",
                "1",
                "--forward",
                "--malloc",
                "default",
            ]
        )
        report = bench.run(args, log=lambda _s: None)
    finally:
        torch.set_num_threads(threads)
    names = [r["candidate"] for r in report["rows"]]
    assert names[:3] == [bench.LIMIT, "limit (fused attention)", "gradient_rollout"]
    assert "attention_rollout" in names
    assert report["floor_pass"] == (report["gradient_rollout_x_limit"] <= bench.FLOOR)
    assert report["cosine_fused_vs_unfused_model"] > 0.9999
    md = bench.to_markdown(report)
    assert "Floor: `gradient_rollout`" in md and "| gradient_rollout |" in md


def test_raw_limit_is_the_input_gradient(bench):
    model = bench.frozen(bench.build_model("tiny"), fused=False)
    x = torch.randn(2, 3, 32, 32)
    idx = torch.tensor([1, 3])
    xx = x.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(model(xx).gather(1, idx[:, None]).sum(), xx)
    torch.testing.assert_close(bench.raw_limit(model, x, idx), want)
    assert not any(m.fused_attn for m in model.modules() if hasattr(m, "fused_attn"))
