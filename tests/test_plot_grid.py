"""Attribution grids: layout, what each panel shows, validation, saving, no pyplot."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import flashtorch.cam  # noqa: F401  (registers the CAM family)
from flashtorch.api import attribute
from flashtorch.attribution import Attribution
from flashtorch.errors import InputError
from flashtorch.plot._common import heat_rgba, normalize_map
from flashtorch.plot.attribution import (
    attribution_grid,
    compare_images,
    compare_methods,
    display_maps,
)
from flashtorch.utils.image import IMAGENET_MEAN, IMAGENET_STD


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = Tiny().eval()
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    results = {
        "gradient": attribute(model, x, target=[0, 2], method="gradient"),
        "gradcam": attribute(model, x, target=[0, 2], method="gradcam", layer="features"),
    }
    return model, x, results


def _fake(maps: torch.Tensor, method: str = "fake") -> Attribution:
    b = maps.shape[0]
    return Attribution(maps, method, torch.arange(b), torch.arange(b), torch.zeros(b))


def test_grid_layout_rows_are_images_columns_are_methods(setup):
    _, x, results = setup
    fig = attribution_grid(x, results)
    axes = np.array(fig.axes).reshape(2, 3)
    assert [ax.get_title() for ax in axes[0]] == ["Input", "gradient", "gradcam"]
    assert [ax.get_ylabel() for ax in axes[:, 0]] == ["class 0", "class 2"]
    assert all(len(ax.images) == 1 for ax in axes[:, 0])  # inputs alone
    assert all(len(ax.images) == 2 for ax in axes[:, 1:].ravel())  # image + overlay


def test_panels_show_denormalised_images_and_scaled_maps(setup):
    _, x, results = setup
    fig = attribution_grid(x, results, alpha=0.6)
    axes = np.array(fig.axes).reshape(2, 3)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for i in range(2):
        expected_image = (x[i] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
        assert np.allclose(axes[i, 0].images[0].get_array(), expected_image, atol=1e-6)
        assert np.allclose(axes[i, 1].images[0].get_array(), expected_image, atol=1e-6)
        # gradient column: max |g| over channels, scaled by the figures' common rule
        g = results["gradient"].maps[i].abs().amax(0, keepdim=True)
        rgba = np.asarray(axes[i, 1].images[1].get_array())
        assert np.allclose(rgba, heat_rgba(normalize_map(g), alpha=0.6), atol=1e-6)
        # independently: opacity grows with |g|, is at most alpha, and 0 at the minimum
        order = np.argsort(g.numpy().ravel(), kind="stable")
        opacity = rgba[..., 3].ravel()[order]
        assert np.all(np.diff(opacity) >= -1e-7)
        assert opacity[0] == 0 and abs(opacity[-1] - 0.6) < 1e-6
        cam_rgba = np.asarray(axes[i, 2].images[1].get_array())
        cam_map = results["gradcam"].maps[i]
        assert np.allclose(cam_rgba, heat_rgba(normalize_map(cam_map), alpha=0.6), atol=1e-6)


def test_methods_as_rows_transposes(setup):
    _, x, results = setup
    fig = attribution_grid(x, results, methods_as_rows=True, overlay=False)
    axes = np.array(fig.axes).reshape(3, 2)
    assert [ax.get_ylabel() for ax in axes[:, 0]] == ["Input", "gradient", "gradcam"]
    assert [ax.get_title() for ax in axes[0]] == ["class 0", "class 2"]
    assert all(len(ax.images) == 1 for ax in axes.ravel())  # no overlays
    shown = np.asarray(axes[2, 1].images[0].get_array())
    assert np.allclose(shown, normalize_map(results["gradcam"].maps[1])[0].numpy(), atol=1e-6)


def test_compare_methods_is_one_row_and_compare_images_two_rows(setup):
    _, x, results = setup
    one = {k: _fake(v.maps[:1], k) for k, v in results.items()}
    fig = compare_methods(x[0], one, show_input=False, class_names=["cat", "dog", "eel"])
    assert len(fig.axes) == 2
    assert fig.axes[0].get_ylabel() == "cat"
    fig = compare_images(x, results["gradcam"], title="Grad-CAM")
    axes = np.array(fig.axes).reshape(2, 2)
    assert [ax.get_ylabel() for ax in axes[:, 0]] == ["Input", "gradcam"]
    assert fig._suptitle.get_text() == "Grad-CAM"
    with pytest.raises(InputError, match="one image"):
        compare_methods(x, results)


def test_low_resolution_and_signed_maps_are_resized_and_scaled():
    maps = torch.tensor([[[[-1.0, 1.0], [3.0, 1.0]]]])
    shown = display_maps(maps, (4, 4))
    assert shown.shape == (1, 1, 4, 4)
    assert float(shown.min()) == 0.0 and float(shown.max()) == 1.0
    assert float(shown[0, 0, 3, 0]) == 1.0  # the corner of the largest value
    assert float(shown[0, 0, 0, 0]) == 0.0  # the corner of the smallest
    constant = display_maps(torch.zeros(1, 3, 4, 4), (4, 4))
    assert torch.equal(constant, torch.zeros(1, 1, 4, 4))


def test_sequence_of_results_gets_unique_titles(setup):
    _, x, results = setup
    fig = attribution_grid(x, [results["gradcam"], results["gradcam"]], row_labels=["a", "b"])
    axes = np.array(fig.axes).reshape(2, 3)
    assert [ax.get_title() for ax in axes[0]] == ["Input", "gradcam", "gradcam (2)"]
    assert [ax.get_ylabel() for ax in axes[:, 0]] == ["a", "b"]


def test_bad_inputs_are_refused(setup):
    _, x, results = setup
    with pytest.raises(InputError, match="maps for 2 images but 1"):
        attribution_grid(x[:1], results)
    with pytest.raises(InputError, match="no results"):
        attribution_grid(x, {})
    with pytest.raises(InputError, match=r"\(B, 3, H, W\)"):
        attribution_grid(torch.zeros(2, 5, 4, 4), results)
    with pytest.raises(InputError, match="Attribution objects"):
        attribution_grid(x, [torch.zeros(2, 1, 4, 4)])
    with pytest.raises(InputError, match="row_labels"):
        attribution_grid(x, results, row_labels=["only one"])


def test_save_path_writes_an_image(setup, tmp_path):
    _, x, results = setup
    target = tmp_path / "sub" / "grid.png"
    attribution_grid(x, results, save_path=target)
    data = target.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_no_pyplot_import():
    code = (
        "import sys, torch\n"
        "import flashtorch.plot.attribution as pa\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
        "pa.attribution_grid(torch.zeros(1, 3, 4, 4), {'m': torch.rand(1, 1, 4, 4)})\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
