"""FlashTorch 0.1.3's public API, name for name and argument for argument (issue 17).

Every public name of 0.1.3 (``flashtorch.utils``, ``flashtorch.saliency.Backprop``,
``flashtorch.activmax.GradientAscent``) used as 0.1.3's documentation and tests use it, with the
values checked against hand computations; then the correctness fixes found by running 0.1.3's
and the peers' test suites (binary classifiers, ``take_max``, constant CAMs, dtypes, DeepDream's
default). The intended differences are listed in the README ("Moving from FlashTorch 0.1.3") and
pinned here too.
"""

from __future__ import annotations

import inspect
import warnings

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402

from flashtorch import METHODS  # noqa: E402
from flashtorch.activmax import GradientAscent  # noqa: E402
from flashtorch.errors import InputError, LayerError, MethodError, TargetError  # noqa: E402
from flashtorch.saliency import Backprop  # noqa: E402
from flashtorch.utils import (  # noqa: E402
    ImageNetIndex,
    apply_transforms,
    denormalize,
    format_for_plotting,
    load_image,
    standardize_and_clip,
    visualize,
)

from .conftest import CNN_METHODS, FAST_OPTIONS, IMAGES, TinyCNN  # noqa: E402

torchvision = pytest.importorskip("torchvision")

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _params(fn) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p != "self"]


def _defaults(fn) -> dict:
    return {
        k: p.default
        for k, p in inspect.signature(fn).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


@pytest.fixture(scope="module")
def alexnet_features() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.alexnet(weights=None).features.eval()


# ============================================================================================
# flashtorch.utils
# ============================================================================================


def test_signatures_of_the_utils():
    # 0.1.3's one argument; the limits added since are keyword-only, so no 0.1.3 call changes
    positional = [
        n
        for n, p in inspect.signature(load_image).parameters.items()
        if p.kind is not inspect.Parameter.KEYWORD_ONLY
    ]
    assert positional == ["image_path"]
    assert _params(apply_transforms)[:2] == ["image", "size"]
    assert _defaults(apply_transforms)["size"] == 224
    assert _params(denormalize)[0] == "tensor"
    assert _params(format_for_plotting) == ["tensor"]
    assert _params(standardize_and_clip)[:5] == [
        "tensor",
        "min_value",
        "max_value",
        "saturation",
        "brightness",
    ]
    assert {
        k: _defaults(standardize_and_clip)[k]
        for k in ("min_value", "max_value", "saturation", "brightness")
    } == {"min_value": 0.0, "max_value": 1.0, "saturation": 0.1, "brightness": 0.5}
    # the talk's visualize(input_, gradients, max_gradients, cmap='viridis', alpha=...)
    from flashtorch.plot import visualize as plot_visualize

    assert _params(plot_visualize)[:5] == ["input_", "gradients", "max_gradients", "cmap", "alpha"]


def test_load_image_converts_to_rgb(tmp_path):
    path = tmp_path / "grey.png"
    Image.fromarray(np.full((20, 30), 90, np.uint8)).save(path)
    image = load_image(image_path=str(path))  # 0.1.3's keyword
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (30, 20)


def test_apply_transforms_as_documented():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), np.uint8))
    x = apply_transforms(image)
    assert isinstance(x, torch.Tensor) and x.shape == (1, 3, 224, 224)
    assert x.dtype == torch.float32 and x.requires_grad
    assert apply_transforms(image, 299).shape == (1, 3, 299, 299)
    # 0.1.3's tests: numpy arrays, channels first or last
    for arr in (
        np.uint8(np.random.uniform(150, 180, (3, 224, 224))),
        np.uint8(np.random.uniform(150, 180, (224, 224, 3))),
    ):
        t = apply_transforms(arr)
        assert t.shape == (1, 3, 224, 224) and t.requires_grad


def test_denormalize_is_x_times_std_plus_mean():
    x = apply_transforms(load_image(IMAGES / "chelsea.jpg"))
    d = denormalize(x)
    assert d.shape == x.shape and not d.requires_grad
    assert torch.allclose(d, x.detach() * STD + MEAN, atol=1e-6)
    assert d.min() >= 0.0 and d.max() <= 1.0 + 1e-6
    assert torch.equal(denormalize(x[0]), d[0])  # (3, H, W) too


@pytest.mark.parametrize(
    "shape, expected",
    [
        ((1, 3, 224, 224), (224, 224, 3)),
        ((1, 1, 224, 224), (224, 224)),
        ((3, 224, 224), (224, 224, 3)),
        ((1, 224, 224), (224, 224)),
    ],
)
def test_format_for_plotting_shapes(shape, expected):
    t = torch.rand(shape, requires_grad=True)
    out = format_for_plotting(t)
    assert out.shape == expected and not out.requires_grad
    if len(expected) == 3:
        assert torch.equal(out, t.detach().reshape(3, 224, 224).permute(1, 2, 0))


def test_standardize_and_clip_hand_computed():
    g = torch.Generator().manual_seed(0)
    t = torch.randint(-1000, 1000, (3, 20, 20), generator=g).float().requires_grad_(True)
    out = standardize_and_clip(t)
    v = t.detach()
    mean = v.sum() / v.numel()
    std = ((v - mean) ** 2).sum().div(v.numel() - 1).sqrt()  # sample std, as 0.1.3's
    expected = ((v - mean) / std * 0.1 + 0.5).clamp(0, 1)
    assert torch.allclose(out, expected, atol=1e-6) and not out.requires_grad
    custom = standardize_and_clip(t, min_value=2.0, max_value=3.0)
    assert custom.min() >= 2.0 and custom.max() <= 3.0
    assert torch.equal(standardize_and_clip(torch.zeros(1, 24, 24)), torch.full((1, 24, 24), 0.5))


def test_visualize_the_talks_call(tiny_cnn):
    x = torch.randn(1, 3, 32, 32)
    bp = Backprop(tiny_cnn)
    g = bp.calculate_gradients(x, 1)
    m = bp.calculate_gradients(x, 1, take_max=True)
    fig = visualize(x, g, m, "viridis", 0.5)  # the talk's positional cmap, alpha
    assert [ax.get_title() for ax in fig.axes] == [
        "Input image",
        "Gradients across RGB channels",
        "Max gradients",
        "Overlay",
    ]
    assert fig.axes[2].images[0].get_cmap().name == "viridis"


def test_imagenet_index_as_in_0_1_3s_tests():
    from collections.abc import Iterable, Mapping

    imagenet = ImageNetIndex()
    assert isinstance(imagenet, Iterable) and isinstance(imagenet, Mapping)
    assert len(imagenet) == 1000 and len(imagenet.keys()) == 1000
    assert len(imagenet.items()) == 1000
    assert "dalmatian" in imagenet and "invalid class" not in imagenet
    assert imagenet["jay"] == 17
    assert imagenet["king penguin"] == 145
    assert imagenet["dalmatian dog"] == 251
    assert imagenet["foxhound"] == 167
    assert imagenet["great grey owl"] == 24  # the talk
    with pytest.raises(ValueError, match="ambiguous"):  # 0.1.3: 'Multiple potential matches'
        imagenet["dog"]
    # intended differences: an unknown name raises KeyError (0.1.3 returned None; .get() does)
    # and an int key gives the class name (0.1.3 raised TypeError)
    with pytest.raises(KeyError):
        imagenet["invalid class name"]
    assert imagenet.get("invalid class name") is None
    assert imagenet[1] == "goldfish"


# ============================================================================================
# flashtorch.saliency.Backprop
# ============================================================================================


def test_backprop_signatures():
    assert _params(Backprop.__init__) == ["model"]
    assert _params(Backprop.calculate_gradients) == [
        "input_",
        "target_class",
        "take_max",
        "guided",
        "use_gpu",
    ]
    assert _defaults(Backprop.calculate_gradients) == {
        "target_class": None,
        "take_max": False,
        "guided": False,
        "use_gpu": False,
    }
    assert _params(Backprop.visualize)[:8] == [
        "input_",
        "target_class",
        "guided",
        "use_gpu",
        "figsize",
        "cmap",
        "alpha",
        "return_output",
    ]
    d = _defaults(Backprop.visualize)
    assert (d["guided"], d["use_gpu"], d["figsize"], d["cmap"], d["alpha"], d["return_output"]) == (
        False,
        False,
        (16, 4),
        "viridis",
        0.5,
        False,
    )


def _reference_gradient(model, x, cls):
    x = x.detach().clone().requires_grad_(True)
    out = model(x)
    out = out if out.dim() > 1 else out[:, None]
    (g,) = torch.autograd.grad(out[:, cls].sum(), x)
    return g


def test_calculate_gradients_is_the_target_gradient(tiny_cnn):
    x = torch.randn(1, 3, 16, 16)
    bp = Backprop(tiny_cnn)
    g = bp.calculate_gradients(x, 3)
    ref = _reference_gradient(tiny_cnn, x, 3)[0]
    assert g.shape == (3, 16, 16) and torch.allclose(g, ref, atol=1e-7)
    assert torch.equal(bp.gradients[0], g)  # kept on the object, as in 0.1.3
    m = bp.calculate_gradients(x, 3, take_max=True)
    assert m.shape == (1, 16, 16)
    guided = bp.calculate_gradients(x, 3, guided=True)
    assert guided.shape == (3, 16, 16) and not torch.allclose(guided, g)


def test_calculate_gradients_on_a_grayscale_model():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 11 * 11, 10),
        nn.Softmax(dim=1),
    )
    x = torch.zeros(1, 1, 32, 32, requires_grad=True)
    g = Backprop(model).calculate_gradients(x)
    assert g.shape == (1, 32, 32) and x.grad is None


def test_visualize_draws_and_returns_the_gradients(tiny_cnn):
    from matplotlib.figure import Figure

    x = torch.randn(1, 3, 24, 24)
    bp = Backprop(tiny_cnn)
    fig = bp.visualize(x, 2)
    assert isinstance(fig, Figure) and len(fig.axes) == 4
    assert [ax.get_title() for ax in fig.axes][2] == "Max gradients"
    g, m = bp.visualize(x, 2, guided=True, return_output=True)
    assert torch.equal(g, bp.calculate_gradients(x, 2, guided=True))
    assert torch.equal(m, bp.calculate_gradients(x, 2, take_max=True, guided=True))
    assert g.shape == (3, 24, 24) and m.shape == (1, 24, 24)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA fallback")
def test_visualize_passes_use_gpu(tiny_cnn):
    bp = Backprop(tiny_cnn)
    with pytest.warns(UserWarning, match="CUDA is not available"):
        bp.visualize(torch.randn(1, 3, 16, 16), 1, use_gpu=True)


def test_inception_needs_no_299_pixel_input():
    # 0.1.3 refused anything but 299 x 299 for Inception models; torchvision's runs at 75+
    torch.manual_seed(0)
    model = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
    g = Backprop(model).calculate_gradients(torch.randn(1, 3, 96, 96), 5)
    assert g.shape == (3, 96, 96) and torch.isfinite(g).all()


# -- a model with one output logit (binary classifier) -----------------------------------------


class _OneLogit(nn.Module):
    def __init__(self, flat: bool) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.body = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4, 1),
        )
        self.flat = flat

    def forward(self, x):
        out = self.body(x)
        return out.flatten() if self.flat else out  # (B,) or (B, 1)


@pytest.mark.parametrize("flat", [True, False], ids=["(B,)", "(B,1)"])
@pytest.mark.parametrize("target", [0, None])
def test_binary_classifier_gets_its_logits_gradient(flat, target):
    model = _OneLogit(flat).eval()
    x = torch.randn(1, 3, 12, 12)
    g = Backprop(model).calculate_gradients(x, target)
    assert torch.allclose(g, _reference_gradient(model, x, 0)[0], atol=1e-7)
    batch = torch.randn(3, 3, 12, 12)
    gb = Backprop(model).calculate_gradients(batch, target)
    assert torch.allclose(gb, _reference_gradient(model, batch, 0), atol=1e-7)
    with pytest.raises(TargetError, match="out of range"):
        Backprop(model).calculate_gradients(x, 1)


@pytest.mark.parametrize("flat", [True, False], ids=["(B,)", "(B,1)"])
def test_binary_classifier_runs_every_method(flat):
    model = _OneLogit(flat).eval()
    x = torch.randn(2, 3, 8, 8)
    for name in CNN_METHODS:
        maps = METHODS[name](model, **FAST_OPTIONS.get(name, {}))(x, 0).maps
        assert maps.shape[0] == 2 and torch.isfinite(maps).all(), name


# -- take_max ---------------------------------------------------------------------------------


class _Linear(nn.Module):
    """score = sum(w * x): the gradient is w, the same for every image."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        return (x * self.w).flatten(1).sum(1, keepdim=True)


def test_take_max_is_the_papers_max_abs_and_0_1_3s_signed_max_is_an_option():
    # hand case: pixel (0, 0) has gradients (-3, 1, 2), pixel (0, 1) (-1, -2, -0.5)
    w = torch.tensor([[[-3.0, -1.0]], [[1.0, -2.0]], [[2.0, -0.5]]])  # (3, 1, 2)
    bp = Backprop(_Linear(w))
    x = torch.zeros(1, 3, 1, 2)
    # Simonyan et al. 2013: M = max_c |dS/dx_c|
    assert torch.equal(bp.calculate_gradients(x, 0, take_max=True), torch.tensor([[[3.0, 2.0]]]))
    assert torch.equal(
        bp.calculate_gradients(x, 0, take_max="max_abs"), torch.tensor([[[3.0, 2.0]]])
    )
    # FlashTorch 0.1.3: the signed maximum
    assert torch.equal(bp.calculate_gradients(x, 0, take_max="max"), torch.tensor([[[2.0, -0.5]]]))
    g, m = bp.visualize(x, 0, take_max="max", return_output=True)
    assert torch.equal(m, torch.tensor([[[2.0, -0.5]]]))
    with pytest.raises(MethodError, match="max_abs"):
        bp.calculate_gradients(x, 0, take_max="largest")


# ============================================================================================
# flashtorch.activmax.GradientAscent
# ============================================================================================


def test_gradient_ascent_signatures_and_properties(alexnet_features):
    assert _params(GradientAscent.__init__)[:4] == ["model", "img_size", "lr", "use_gpu"]
    assert _defaults(GradientAscent.__init__)["img_size"] == 224
    assert _params(GradientAscent.optimize) == ["layer", "filter_idx", "input_", "num_iter"]
    assert _defaults(GradientAscent.optimize) == {"input_": None, "num_iter": 30}
    assert _params(GradientAscent.visualize) == [
        "layer",
        "filter_idxs",
        "lr",
        "num_iter",
        "num_subplots",
        "figsize",
        "title",
        "return_output",
    ]
    assert _params(GradientAscent.deepdream)[:8] == [
        "img_path",
        "layer",
        "filter_idx",
        "lr",
        "num_iter",
        "figsize",
        "title",
        "return_output",
    ]
    d = _defaults(GradientAscent.deepdream)
    assert (d["lr"], d["num_iter"], d["title"]) == (0.1, 20, "DeepDream")
    g = GradientAscent(alexnet_features)
    assert (g.img_size, g.lr, g.use_gpu) == (224, 1.0, False)
    g.img_size, g.lr, g.use_gpu = 64, 0.5, False
    assert (g.img_size, g.lr, g.use_gpu) == (64, 0.5, False)


def test_optimize_as_in_0_1_3s_tests(alexnet_features):
    conv = alexnet_features[0]
    g = GradientAscent(alexnet_features)
    g.img_size = 64
    out = g.optimize(conv, 0, num_iter=2)
    assert len(out) == 2 and out[0].shape == (1, 3, 64, 64)
    custom = apply_transforms(np.uint8(np.random.uniform(150, 180, (64, 64, 3))), size=64)
    assert len(g.optimize(conv, 0, input_=custom, num_iter=1)) == 1
    with pytest.raises(ValueError):  # 0.1.3: ValueError for -1 and 70 (64 filters)
        g.optimize(conv, -1, num_iter=1)
    with pytest.raises(ValueError):
        g.optimize(conv, 70, num_iter=1)
    # 0.1.3: TypeError for a filter index or a layer of the wrong type; flashtorch's precise
    # types are TypeErrors too
    with pytest.raises(TypeError):
        g.optimize(conv, "first", num_iter=1)
    with pytest.raises(InputError):
        g.optimize(conv, "first", num_iter=1)
    with pytest.raises(TypeError):
        g.optimize(0, 0, num_iter=1)
    with pytest.raises(LayerError):
        g.optimize(0, 0, num_iter=1)
    # intended: any module (0.1.3 took only nn.Conv2d) and dotted names
    assert len(g.optimize(alexnet_features[1], 0, num_iter=1)) == 1  # a ReLU
    assert len(g.optimize("3", 0, num_iter=1)) == 1


def test_visualize_as_in_0_1_3s_tests(alexnet_features):
    conv = alexnet_features[0]
    g = GradientAscent(alexnet_features, img_size=32)  # the last pooling is too small: unused
    out = g.visualize(conv, 0, 2, return_output=True)  # (layer, filter_idxs, lr)
    assert out[-1].shape == (1, 3, 32, 32)
    out = g.visualize(conv, num_iter=2, num_subplots=3, return_output=True)
    assert len(out) == 3 and len(out[0]) == 2 and out[0][-1].shape == (1, 3, 32, 32)
    out = g.visualize(conv, num_iter=1, num_subplots=100, return_output=True)
    assert len(out) == conv.out_channels
    out = g.visualize(conv, [1, 5, 9, 60, 2], num_iter=1, return_output=True)
    assert len(out) == 5


def test_deepdream_keeps_the_talks_contract_by_default(alexnet_features):
    # 0.1.3: num_iter (20) images of img_size; the 3-octave default returned 60 of mixed sizes
    # and crashed at img_size=64 ("Output size is too small")
    conv = alexnet_features[0]
    g = GradientAscent(alexnet_features)
    g.img_size = 64
    out = g.deepdream(str(IMAGES / "coffee.jpg"), conv, 0, return_output=True)
    assert len(out) == 20
    assert all(o.shape == (1, 3, 64, 64) for o in out)
    assert not torch.equal(out[0], out[-1])


def test_deepdream_octaves_are_an_option_small_sizes_work_or_say_why(alexnet_features):
    conv = alexnet_features[0]
    g = GradientAscent(alexnet_features, img_size=96)
    out = g.deepdream(IMAGES / "coffee.jpg", conv, 0, num_iter=1, octaves=2, return_output=True)
    assert [tuple(o.shape[-2:]) for o in out] == [(69, 69), (96, 96)]
    # 64 px over 3 octaves: the 33 px octave is too small for AlexNet's last pooling, which
    # the objective (the first convolution) does not need
    g.img_size = 64
    out = g.deepdream(IMAGES / "coffee.jpg", conv, 0, num_iter=1, octaves=3, return_output=True)
    assert [o.shape[-1] for o in out] == [33, 46, 64]
    # a layer that cannot run at that size: a clear error
    with pytest.raises(InputError, match="fewer octaves"):
        g.deepdream(IMAGES / "coffee.jpg", alexnet_features[12], 0, num_iter=1, octaves=3)
    # and the same for activation maximisation at a size the layer cannot take
    with pytest.raises(InputError, match="larger image size"):
        GradientAscent(alexnet_features, img_size=32).optimize(alexnet_features[12], 0, num_iter=1)


# ============================================================================================
# Grad-CAM family: a 1 x 1 layer gives a constant (zero) map
# ============================================================================================

CAMS = ["gradcam", "gradcam_pp", "layercam", "scorecam", "guided_gradcam"]


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


@pytest.mark.parametrize("name", CAMS)
def test_cam_of_a_one_by_one_layer_is_constant_zero(name, resnet18):
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    if name != "guided_gradcam":
        # the coarse map is one positive value: upsampled it is constant up to rounding
        raw = METHODS[name](resnet18, layer="layer4", normalize=False)(x, 3).maps
        assert raw.min() > 0 and raw.max() - raw.min() <= 1e-5 * raw.max()
    maps = METHODS[name](resnet18, layer="layer4")(x, 3).maps
    assert maps.shape == ((1, 3, 32, 32) if name == "guided_gradcam" else (1, 1, 32, 32))
    assert torch.equal(maps.abs(), torch.zeros_like(maps))


def test_normalize_maps_keeps_real_contrast():
    from flashtorch.cam import normalize_maps

    m = torch.tensor([[[[1.0, 1.0 + 1e-7], [1.0, 1.0]]], [[[1.0, 1.001], [1.0, 1.0]]]])
    out = normalize_maps(m)
    assert torch.equal(out[0], torch.zeros_like(out[0]))  # rounding spread: constant
    assert out[1].max() == 1.0 and out[1].min() == 0.0  # a real (if small) contrast
    assert torch.equal(normalize_maps(torch.zeros(2, 1, 3, 3)), torch.zeros(2, 1, 3, 3))
    d = torch.tensor([[[[5.0, 5.0 + 1e-14]]]], dtype=torch.float64)  # 11 ulps
    assert torch.equal(normalize_maps(d), torch.zeros_like(d))
    d = torch.tensor([[[[5.0, 5.0 + 1e-9]]]], dtype=torch.float64)
    assert normalize_maps(d).max() == 1.0  # float64 resolves far smaller differences


# ============================================================================================
# Maps follow the input's dtype
# ============================================================================================


def _tiny(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    return TinyCNN().eval().to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", CNN_METHODS)
def test_maps_follow_the_inputs_dtype(name, dtype):
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(0)).to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = METHODS[name](_tiny(dtype), **FAST_OPTIONS.get(name, {}))(x, 1)
    assert result.maps.dtype == dtype and torch.isfinite(result.maps).all()


def test_float64_maps_are_computed_in_float64():
    from .conftest import small_cnn

    x = torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model = small_cnn().double()
    g = METHODS["gradient"](model)(x, 1).maps
    assert torch.allclose(g, _reference_gradient(model, x, 1), rtol=0, atol=1e-15)
    # Grad-CAM by hand in float64 at the second convolution: weights = mean gradient, ReLU,
    # upsample, min-max (a float32 computation is off by ~1e-7)
    a = model[:3](x)
    out = model[3:](a)
    (grad,) = torch.autograd.grad(out[:, 1].sum(), a)
    cam = (grad.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True).clamp_min(0)
    cam = F.interpolate(cam, size=(12, 12), mode="bilinear", align_corners=False)
    cam = ((cam - cam.min()) / (cam.max() - cam.min())).detach()
    ours = METHODS["gradcam"](model, layer="2")(x, 1).maps
    assert ours.dtype == torch.float64 and cam.max() == 1
    assert torch.allclose(ours, cam, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_images_on_a_float32_model_give_float32_maps(dtype):
    model = _tiny(torch.float32)
    x = torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    for name in ("gradient", "gradcam"):
        maps = METHODS[name](model)(x.to(dtype), 1).maps
        ref = METHODS[name](model)(x.to(dtype).float(), 1).maps
        assert maps.dtype == torch.float32 and torch.equal(maps, ref), name
