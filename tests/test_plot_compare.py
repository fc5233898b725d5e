"""compare_models: one grid of overlays per (method, model), the same images, optional masks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import flashtorch.cam  # noqa: F401  (registers the CAM methods)
from flashtorch.datasets import SyntheticLocalization
from flashtorch.errors import InputError
from flashtorch.plot.compare import compare_models, model_maps


def net(seed: int, classes: int = 4) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, classes),
        )


@pytest.fixture(scope="module")
def batch():
    return SyntheticLocalization(2, size=32).stack()


def test_grid_has_one_column_per_method_and_model(batch, tmp_path):
    x, y, m = batch
    models = {"pretrained": net(0, classes=10), "fine-tuned": net(1)}
    out = tmp_path / "cmp.png"
    fig = compare_models(
        models,
        x,
        target={"pretrained": None, "fine-tuned": y},
        methods=["gradient", "gradcam"],
        masks=m,
        class_names={"pretrained": None, "fine-tuned": SyntheticLocalization.classes},
        save_path=out,
    )
    axes = fig.get_axes()
    assert len(axes) == 2 * (1 + 2 * 2)
    titles = [ax.get_title() for ax in axes[:5]]
    assert titles == [
        "input",
        "gradient\npretrained",
        "gradient\nfine-tuned",
        "gradcam\npretrained",
        "gradcam\nfine-tuned",
    ]
    # The fine-tuned model was asked about the true labels, named by the dataset's classes.
    assert axes[2].get_xlabel().startswith("pred: ") and "energy" in axes[2].get_xlabel()
    assert out.exists() and out.stat().st_size > 1000


def test_precomputed_results_are_drawn_without_recomputing(batch):
    x, y, _ = batch
    models = {"a": net(0), "b": net(1)}
    results = model_maps(models, x, target=y, methods=["gradient"])
    assert set(results) == {("a", "gradient"), ("b", "gradient")}
    assert results[("a", "gradient")].targets.tolist() == y.tolist()
    fig = compare_models(models, x, methods=["gradient"], results=results)
    assert len(fig.get_axes()) == 2 * 3
    with pytest.raises(InputError, match="no entry"):
        compare_models(models, x, methods=["gradcam"], results=results)


def test_compare_errors(batch):
    x, _, m = batch
    models = {"a": net(0), "b": net(1)}
    with pytest.raises(InputError, match="target"):
        model_maps(models, x, target={"a": 0}, methods=["gradient"])
    with pytest.raises(InputError, match="masks"):
        compare_models(models, x, methods=["gradient"], masks=m[:1])
    with pytest.raises(InputError, match="non-empty"):
        model_maps({}, x)
