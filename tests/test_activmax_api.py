"""The talk's GradientAscent API, figures, and small versions of the quality targets."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from flashtorch._surgery import LayerRecorder, hook_count
from flashtorch.activmax import GradientAscent, channel, class_logit, render
from flashtorch.activmax.render import make_normalizer
from flashtorch.errors import InputError, LayerError
from flashtorch.plot.activmax import channel_grid, image_figure, save_images, tile

from .conftest import IMAGES


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


def _grads_none(model: nn.Module) -> bool:
    return all(p.grad is None for p in model.parameters())


def test_optimize_on_torchvision_model(resnet):
    g = GradientAscent(resnet, img_size=48)
    out = g.optimize(resnet.layer1[0].conv1, 3, num_iter=3)  # a module, not only a name
    assert len(out) == 3 and all(o.shape == (1, 3, 48, 48) for o in out)
    assert 0 <= out[-1].min() and out[-1].max() <= 1
    assert not torch.equal(out[0], out[-1])
    assert _grads_none(resnet) and hook_count(resnet) == 0
    assert all(p.requires_grad for p in resnet.parameters())


def test_optimize_raises_the_channel(resnet):
    g = GradientAscent(resnet, img_size=48)
    rgb = make_normalizer("imagenet")
    out = g.optimize("layer2.0.conv1", 5, num_iter=12)

    def act(img):
        with LayerRecorder(resnet, "layer2.0.conv1") as rec, torch.no_grad():
            resnet(rgb(img))
            return rec.output[0, 5].mean().item()

    assert act(out[-1]) > act(out[0])


def test_optimize_from_input(resnet):
    from flashtorch.utils import apply_transforms, denormalize

    x = apply_transforms(IMAGES / "coffee.jpg", 48)
    g = GradientAscent(resnet, img_size=48, lr=0.5)
    out = g.optimize("layer1", 0, input_=x, num_iter=2)
    photo = denormalize(x).clamp(0, 1)
    # starts from the photo: after two small steps it is still close to it
    assert (out[-1] - photo).abs().mean() < 0.1
    assert not torch.equal(out[-1], photo)


def test_visualize_variants(resnet):
    from matplotlib.figure import Figure

    g = GradientAscent(resnet, img_size=32)
    fig = g.visualize("layer1", 2, num_iter=2)
    assert isinstance(fig, Figure) and fig is g.figure
    out = g.visualize("layer1", [0, 5, 7], num_iter=2, return_output=True)
    assert len(out) == 3 and all(len(o) == 2 and o[-1].shape == (1, 3, 32, 32) for o in out)
    titles = [ax.get_title() for ax in g.figure.axes if ax.get_title()]
    assert titles == ["filter 0", "filter 5", "filter 7"]
    out = g.visualize("layer1", num_iter=1, num_subplots=5, return_output=True)
    titles = [ax.get_title() for ax in g.figure.axes if ax.get_title()]
    assert len(out) == 5 and len(titles) == 5
    assert all(0 <= int(t.split()[1]) < 64 for t in titles)
    out = g.visualize("layer1", np.array([1, 2]), num_iter=1, return_output=True)
    assert len(out) == 2
    assert g.lr == 1.0 and _grads_none(resnet) and hook_count(resnet) == 0


def test_deepdream_talk_api(resnet):
    from matplotlib.figure import Figure

    g = GradientAscent(resnet, img_size=48)
    fig = g.deepdream(str(IMAGES / "coffee.jpg"), "layer2", 3, num_iter=2, octaves=2)
    assert isinstance(fig, Figure)
    out = g.deepdream(IMAGES / "coffee.jpg", "layer2", 3, num_iter=2, octaves=2, return_output=True)
    assert len(out) == 4 and out[-1].shape == (1, 3, 48, 48)
    assert _grads_none(resnet) and hook_count(resnet) == 0


def test_talk_api_errors(resnet):
    g = GradientAscent(resnet, img_size=32)
    with pytest.raises(InputError, match=r"valid indices are 0\.\.63"):
        g.optimize("layer1", 64, num_iter=1)
    with pytest.raises(LayerError, match="layer1"):
        g.optimize("layer_1", 0, num_iter=1)
    with pytest.raises(LayerError, match="not a submodule"):
        g.optimize(nn.Conv2d(3, 3, 1), 0, num_iter=1)
    with pytest.raises(InputError, match="int"):
        g.optimize("layer1", 1.5, num_iter=1)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="int"):
        g.visualize("layer1", ["a"], num_iter=1)  # type: ignore[list-item]
    with pytest.raises(InputError, match="torch.nn.Module"):
        GradientAscent("resnet")  # type: ignore[arg-type]
    assert _grads_none(resnet) and hook_count(resnet) == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA fallback")
def test_use_gpu_without_cuda_warns(resnet):
    g = GradientAscent(resnet, img_size=32, use_gpu=True)
    with pytest.warns(UserWarning, match="CUDA is not available"):
        out = g.optimize("layer1", 0, num_iter=1)
    assert out[-1].device.type == "cpu"


def test_after_guided_backprop_on_the_same_model(resnet):
    # FlashTorch 0.1.3 broke here (its guided Backprop left ReLU hooks behind).
    from flashtorch.saliency import Backprop

    x = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    Backprop(resnet).calculate_gradients(x, None, guided=True)
    out = GradientAscent(resnet, img_size=48).optimize("layer3", 1, num_iter=2)
    assert len(out) == 2 and torch.isfinite(out[-1]).all()
    assert _grads_none(resnet) and hook_count(resnet) == 0


# ------------------------------------------------------------------------------------------
# EfficientNet-Lite0 (timm Conv2dSame / padded convolutions)
# ------------------------------------------------------------------------------------------


def test_talk_api_on_efficientnet_lite0(pretrained):
    from flashtorch.saliency import Backprop

    conv = pretrained.net.blocks[2][0].conv_pw
    g = GradientAscent(pretrained, img_size=64)
    out = g.optimize(conv, 4, num_iter=2)
    assert out[-1].shape == (1, 3, 64, 64)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    Backprop(pretrained).calculate_gradients(x, None, guided=True)
    out = g.visualize("net.conv_stem", [0, 1], num_iter=2, return_output=True)
    assert len(out) == 2
    with pytest.raises(InputError, match=r"0\.\.31"):
        g.optimize("net.conv_stem", 32, num_iter=1)
    assert _grads_none(pretrained) and hook_count(pretrained) == 0
    assert not pretrained.training


def test_channel_render_quality_small(pretrained):
    # Small version of the benchmark: every image's own channel is the layer's most active.
    # (Channel 1 needs more pixels: at 64 px / 32 steps channel 13 still beats it; the benchmark
    # checks channels 0-7 at 128 px / 256 steps.)
    layer = "net.blocks.3"
    images, history = render(
        pretrained, channel(layer, [0, 2, 3, 4]), param=64, steps=32, progress=False
    )
    with LayerRecorder(pretrained, layer) as rec, torch.no_grad():
        pretrained(make_normalizer("imagenet")(images))
        means = rec.output.mean((2, 3))
    assert means.argmax(1).tolist() == [0, 2, 3, 4]
    assert torch.all(history[-4:].mean(0) > history[:4].mean(0))


@pytest.mark.parametrize("cls", [24])
def test_class_render_quality_small(pretrained, cls):
    images, _ = render(pretrained, class_logit(cls), param=96, steps=32, progress=False)
    with torch.no_grad():
        prob = pretrained(make_normalizer("imagenet")(images)).softmax(1)[0]
    assert prob.argmax().item() == cls and prob[cls] > 0.5


# ------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------


def test_channel_grid_and_png(tmp_path):
    imgs = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    fig = channel_grid(
        imgs, [f"c{i}" for i in range(5)], ncols=3, title="grid", save_path=tmp_path / "g.png"
    )
    shown = [ax for ax in fig.axes if ax.images]
    assert len(fig.axes) == 6 and len(shown) == 5
    np.testing.assert_allclose(
        shown[2].images[0].get_array(), imgs[2].permute(1, 2, 0).numpy(), rtol=0, atol=1e-6
    )
    assert [ax.get_title() for ax in shown] == ["c0", "c1", "c2", "c3", "c4"]
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(InputError, match="titles"):
        channel_grid(imgs, ["a"])
    with pytest.raises(InputError, match=r"\(B, 3, H, W\)"):
        channel_grid(torch.rand(2, 8, 8))


def test_tile_and_save_images(tmp_path):
    from PIL import Image

    imgs = torch.stack([torch.full((3, 2, 3), v) for v in (0.0, 0.5, 1.0)])
    grid = tile(imgs, ncols=2, padding=1)
    assert grid.shape == (3, 5, 7)
    assert grid[0, 0, 0] == 0.0 and grid[0, 0, 4] == 0.5 and grid[0, 3, 0] == 1.0
    assert grid[0, 2, 0] == 1.0 and grid[0, 0, 3] == 1.0  # white gaps
    path = save_images(imgs, tmp_path / "t.png", ncols=2, padding=1)
    arr = np.asarray(Image.open(path))
    assert arr.shape == (5, 7, 3) and arr[0, 4, 0] == 128 and arr[3, 0, 1] == 255
    fig = image_figure(imgs[1], title="one")
    assert fig.axes[0].get_title() == "one"
    with pytest.raises(InputError, match="one image"):
        image_figure(imgs)


def test_import_does_not_load_pyplot():
    code = (
        "import sys, flashtorch.activmax, flashtorch.plot.activmax; "
        "print('matplotlib.pyplot' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_no_warnings_on_a_plain_render(resnet):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        images, _ = render(resnet, channel("layer1", 0), param=32, steps=1, progress=False)
    assert images.shape == (1, 3, 32, 32)


def test_benchmark_script_smoke(pretrained, tmp_path, monkeypatch, capsys):
    # The benchmark cannot rot: 2 steps, one class, no channels, no Lucent.
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_activmax.py"
    spec = importlib.util.spec_from_file_location("bench_activmax", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "r.json"
    argv = [
        "bench",
        "--steps",
        "2",
        "--seeds",
        "0",
        "--classes",
        "24",
        "--no-lucent",
        "--no-channels",
        "--json",
        str(out),
    ]
    monkeypatch.setattr(sys, "argv", argv)
    module.main()
    result = json.loads(out.read_text())
    assert [r["cls"] for r in result["class"]] == [24]
    assert 0 <= result["class"][0]["p"] <= 1
    assert "min probability" in capsys.readouterr().out
