"""Inputs and models that do not fit: precise flashtorch errors instead of raw torch ones.

Issue 16's fuzzing found raw ``RuntimeError`` / ``IndexError`` for a wrong channel count, a wrong
image size, meta tensors, Score-CAM on a half-precision model and a scalar model output. Every
registered CNN method is run on each case; the model is left as found.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from flashtorch.attribution import get_method
from flashtorch.errors import InputError, TargetError

from .conftest import CNN_METHODS, FAST_OPTIONS, small_cnn

pytestmark = pytest.mark.usefixtures("one_thread")


def run(name: str, model: nn.Module, x: torch.Tensor, target=0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_method(name)(model, **FAST_OPTIONS.get(name, {}))(x, target=target)


@pytest.mark.parametrize("name", CNN_METHODS)
@pytest.mark.parametrize(("channels", "hint"), [(1, "expand"), (4, "x[:, :3]"), (2, "3 channels")])
def test_wrong_channel_count_is_an_input_error(name, channels, hint):
    model = small_cnn()
    x = torch.rand(2, channels, 16, 16)
    before = x.clone()
    with pytest.raises(InputError, match="expects 3 input channels") as info:
        run(name, model, x)
    assert hint in str(info.value)
    assert f"have {channels}" in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)  # the model's own error is chained
    assert torch.equal(x, before)
    assert all(p.requires_grad for p in model.parameters()) and not model.training


class FixedSize(nn.Module):
    """conv then flatten into a linear layer: only 8 x 8 images fit."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@pytest.mark.parametrize("name", ["gradient", "gradcam", "integrated_gradients", "smoothgrad"])
def test_wrong_image_size_is_an_input_error(name):
    model = FixedSize().eval()
    run(name, model, torch.rand(1, 3, 8, 8))  # the size it was built for works
    with pytest.raises(InputError, match=r"shape \(1, 3, 12, 12\).*another input size"):
        run(name, model, torch.rand(1, 3, 12, 12))


def test_timm_vit_wrong_size_is_an_input_error():
    timm = pytest.importorskip("timm")
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=16,
        depth=1,
        num_classes=3,
    ).eval()
    with pytest.raises(InputError, match="another input size"):
        run("gradient", model, torch.rand(1, 3, 48, 48))


def test_unrelated_model_errors_are_not_translated():
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            raise RuntimeError("a bug in the user's model")

    with pytest.raises(RuntimeError, match="a bug in the user's model") as info:
        run("gradient", Broken(), torch.rand(1, 3, 8, 8))
    assert not isinstance(info.value, InputError)


@pytest.mark.parametrize("name", CNN_METHODS)
def test_meta_inputs_are_refused_before_the_forward(name):
    model = small_cnn()
    calls = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(InputError, match="meta tensor"):
            run(name, model, torch.empty(1, 3, 16, 16, device="meta"))
    finally:
        handle.remove()
    assert not calls


@pytest.mark.parametrize("name", ["gradient", "gradcam", "occlusion"])
def test_meta_model_is_refused(name):
    model = small_cnn().to("meta")
    with pytest.raises(InputError, match="'meta' device.*to_empty"):
        run(name, model, torch.rand(1, 3, 16, 16))


def test_scorecam_on_a_half_precision_model():
    model = small_cnn().half()
    x = torch.rand(2, 3, 16, 16).half()
    half = run("scorecam", model, x)
    full = run("scorecam", small_cnn(), x.float())
    assert half.maps.shape == (2, 1, 16, 16)
    assert torch.isfinite(half.maps).all()
    # the same scores up to half-precision rounding
    assert (
        torch.corrcoef(torch.stack([half.maps.float().flatten(), full.maps.flatten()]))[0, 1] > 0.98
    )


class ScalarOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = small_cnn()

    def forward(self, x):
        return self.net(x).sum()


@pytest.mark.parametrize("name", CNN_METHODS)
@pytest.mark.parametrize("target", [None, lambda out: out])
def test_scalar_model_output_is_a_target_error(name, target):
    with pytest.raises(TargetError, match=r"(got|shape) \(\)"):
        run(name, ScalarOut(), torch.rand(2, 3, 16, 16), target=target)
