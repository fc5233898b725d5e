"""FlashTorch 0.1.3's tutorials, rewritten under examples/, run offline (issue 17)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from PIL import Image

from .conftest import has_pretrained

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _main(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _pngs(paths, n, min_width=200):
    assert len(paths) == n
    for path in paths:
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size[0] >= min_width, path


def test_image_handling(tmp_path, capsys):
    _pngs(_main("tutorial_image_handling")(["--out", str(tmp_path)]), 1)
    out = capsys.readouterr().out
    assert "<class 'PIL.Image.Image'>\nRGB\n<class 'torch.Tensor'>" in out
    assert "torch.Size([1, 3, 299, 299])" in out


needs_pretrained = pytest.mark.skipif(
    not has_pretrained(), reason="the 'pretrained' extra is not installed"
)


@needs_pretrained
def test_saliency_with_backprop_first_photo(tmp_path, recwarn):
    _pngs(
        _main("tutorial_saliency_backprop")(["--out", str(tmp_path), "--photos", "1"]),
        1,
        min_width=800,
    )
    assert not [w for w in recwarn if "predicted class" in str(w.message)]  # target = prediction


@needs_pretrained
@pytest.mark.slow
def test_saliency_with_backprop(tmp_path, recwarn):
    _pngs(_main("tutorial_saliency_backprop")(["--out", str(tmp_path)]), 3, min_width=800)
    assert not [w for w in recwarn if "predicted class" in str(w.message)]


def test_torchvision_models_small(tmp_path):
    paths = _main("tutorial_torchvision_models")(
        ["--out", str(tmp_path), "--models", "alexnet,squeezenet1_1,inception_v3", "--size", "96"]
    )
    _pngs(paths, 3)
    assert [p.name for p in paths] == [
        "torchvision_alexnet.png",
        "torchvision_squeezenet1_1.png",
        "torchvision_inception_v3.png",
    ]


@pytest.mark.slow
def test_torchvision_models_all(tmp_path):
    paths = _main("tutorial_torchvision_models")(["--out", str(tmp_path), "--size", "96"])
    _pngs(paths, 15)
    assert len({p.name for p in paths}) == 15  # one figure per model, none overwritten


def test_activation_maximization_small(tmp_path, capsys):
    paths = _main("tutorial_activation_maximization")(
        ["--out", str(tmp_path), "--img-size", "32", "--num-iter", "1", "--layers", "conv1_2"]
    )
    _pngs(paths, 4, min_width=100)
    out = capsys.readouterr().out
    assert "num_iter: 1\noptimized image: torch.Size([1, 3, 32, 32])" in out


@pytest.mark.slow
def test_activation_maximization_all_layers(tmp_path):
    paths = _main("tutorial_activation_maximization")(
        ["--out", str(tmp_path), "--img-size", "64", "--num-iter", "2"]
    )
    _pngs(paths, 8, min_width=100)
    assert len({p.name for p in paths}) == 8  # one figure per layer, none overwritten
