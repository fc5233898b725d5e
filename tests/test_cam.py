"""The Grad-CAM family: parity with Captum and pytorch-grad-cam, hand-computed values, layers,
shared modules, batching, cleanup."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import flashtorch.cam as cam
from flashtorch._surgery import hook_count
from flashtorch.attribution import METHODS
from flashtorch.cam.base import _DEFAULT_LAYERS
from flashtorch.errors import LayerError, MethodError, SharedModuleError, TargetError

CAM_METHODS = sorted(name for name, cls in METHODS.items() if cls.needs_layer)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


class ToyCNN(nn.Module):
    """nn.ReLU everywhere (where Captum's guided backprop is right), GAP + linear head."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class SharedAct(nn.Module):
    """EfficientNet-style: one activation module reused by every stage."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = nn.Conv2d(8, 8, 3, padding=1, stride=2)
        self.head = nn.Conv2d(8, 16, 1)
        self.act = nn.SiLU()
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.stem(x))
        x = self.act(self.block(x))
        x = self.act(self.head(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Recording(torch.autograd.Function):
    """Identity whose backward pass is counted (to prove the backward stops at the layer)."""

    calls = 0

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        return x.clone()

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        Recording.calls += 1
        return g


class Counting(nn.Module):
    """Counts forward passes; an upstream op records backward passes; optionally raises."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.layer = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 3)
        self.forwards = 0
        self.fail = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forwards += 1
        if self.fail:
            raise RuntimeError("boom")
        h = Recording.apply(self.stem(x))
        return self.fc(self.layer(h).mean((2, 3)))


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18().eval()


@pytest.fixture(scope="module")
def toy() -> nn.Module:
    torch.manual_seed(1)
    return ToyCNN().eval()


def images(b: int = 3, size: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, size, size, generator=g)


# ---------------------------------------------------------------------------------------------
# Parity with Captum (1e-5 relative)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["toy", "resnet18"])
@pytest.mark.parametrize("relu", [False, True])
def test_gradcam_matches_captum_layergradcam(which, relu, toy, resnet18):
    from captum.attr import LayerAttribution, LayerGradCam

    model, layer = (toy, toy.features) if which == "toy" else (resnet18, resnet18.layer4)
    x = images(3, 32 if which == "toy" else 64)
    target = [0, 3, 4]
    ref = LayerGradCam(model, layer).attribute(x, target=target, relu_attributions=relu)
    ref = LayerAttribution.interpolate(ref, tuple(x.shape[-2:]), "bilinear")
    ours = cam.GradCAM(model, layer, relu=relu, normalize=False)(x, target=target)
    assert ours.maps.shape == ref.shape == (3, 1, *x.shape[-2:])
    assert rel_err(ours.maps, ref) < 1e-5
    assert ours.targets.tolist() == target


@pytest.mark.parametrize("arch", ["regnet_y_400mf", "squeezenet1_1", "convnext_tiny"])
def test_gradcam_matches_captum_on_other_architectures(arch):
    # the default layer of each (RegNet's trunk, SqueezeNet's classifier conv, ConvNeXt's
    # features with LayerNorm and GELU), with the graph started at the layer
    from captum.attr import LayerAttribution, LayerGradCam

    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)().eval()
    x = images(2, 64)
    method = cam.GradCAM(model, normalize=False)
    ours = method(x, target=[3, 7])
    layer = model.get_submodule(method.layer_name)
    ref = LayerGradCam(model, layer).attribute(x, target=[3, 7], relu_attributions=True)
    ref = LayerAttribution.interpolate(ref, tuple(x.shape[-2:]), "bilinear")
    assert method.layer_name in ("trunk_output", "classifier.2", "features")
    assert ref.abs().amax() > 0
    assert rel_err(ours.maps, ref) < 1e-5
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("which", ["toy", "resnet18"])
def test_guided_gradcam_matches_captum(which, toy, resnet18):
    from captum.attr import GuidedGradCam

    model, layer = (toy, toy.features) if which == "toy" else (resnet18, resnet18.layer4)
    x = images(2, 32 if which == "toy" else 64, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum's notes about hooks and requires_grad
        ref = GuidedGradCam(model, layer).attribute(x, target=[1, 2], interpolate_mode="bilinear")
    ours = cam.GuidedGradCAM(model, layer, normalize=False)(x, target=[1, 2])
    assert ours.maps.shape == x.shape
    assert rel_err(ours.maps, ref) < 1e-5


# ---------------------------------------------------------------------------------------------
# Parity with pytorch-grad-cam on resnet18 (maps normalised to [0, 1]; tolerance 1e-4 absolute)
# ---------------------------------------------------------------------------------------------

PGC_TOL = 1e-4


def _pgc(cls_name: str, model: nn.Module, layer: nn.Module, x: torch.Tensor, target, **attrs):
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with getattr(pgc, cls_name)(model, [layer]) as c:
        for k, v in attrs.items():
            setattr(c, k, v)
        out = c(x, [ClassifierOutputTarget(t) for t in target])
    return torch.from_numpy(out)[:, None]


@pytest.mark.parametrize(
    "ours, theirs, options",
    [
        ("gradcam", "GradCAM", {}),
        ("gradcam_pp", "GradCAMPlusPlus", {"eps": 1e-6}),
        ("layercam", "LayerCAM", {}),
    ],
)
def test_gradient_cams_match_pytorch_grad_cam(ours, theirs, options, resnet18):
    x = images(3, 64, seed=5)
    target = [7, 1, 900]
    ref = _pgc(theirs, resnet18, resnet18.layer4, x, target)
    got = METHODS[ours](resnet18, "layer4", **options)(x, target=target).maps
    assert got.shape == ref.shape
    assert float((got - ref).abs().max()) < PGC_TOL
    assert float(ref.std()) > 0.05  # a real map, not a constant


def test_scorecam_matches_pytorch_grad_cam(resnet18):
    # layer3 of a 32 x 32 input: a 2 x 2 map with 256 channels (256 masked forward passes)
    x = images(1, 32, seed=6)
    ref = _pgc("ScoreCAM", resnet18, resnet18.layer3, x, [3], batch_size=128)
    method = cam.ScoreCAM(resnet18, "layer3", internal_batch_size=128, mask_align_corners=True)
    got = method(x, target=3)
    assert float((got.maps - ref).abs().max()) < PGC_TOL
    assert float(ref.std()) > 0.05
    assert got.extras["weights"].shape == (1, 256)
    assert torch.allclose(got.extras["weights"].sum(1), torch.ones(1))


def test_gradcam_pp_eps_is_pytorch_grad_cams_and_default_is_the_paper(resnet18):
    x = images(2, 64, seed=7)
    ref = _pgc("GradCAMPlusPlus", resnet18, resnet18.layer4, x, [4, 5])
    paper = cam.GradCAMPlusPlus(resnet18, "layer4")(x, target=[4, 5]).maps
    # eps = 1e-6 is not negligible against G^2 on this model: the default (eps = 0) differs.
    assert float((paper - ref).abs().max()) > 10 * PGC_TOL


# ---------------------------------------------------------------------------------------------
# Hand-computed values
# ---------------------------------------------------------------------------------------------


def test_gradcam_equals_cam_of_zhou_for_gap_linear_head(toy):
    # With global average pooling and a linear head, dy/dA_k = W_ck / hw everywhere, so
    # Grad-CAM is the original CAM sum_k W_ck A_k scaled by 1/hw (Selvaraju et al., sec. 3.1).
    x = images(2, 16, seed=8)
    a = toy.features(x).detach()
    hw = a.shape[2] * a.shape[3]
    cam_zhou = torch.einsum("k,bkhw->bhw", toy.fc.weight[2].detach(), a)[:, None] / hw
    got = cam.GradCAM(toy, "features", relu=False, normalize=False)(x, target=2)
    assert torch.allclose(
        got.maps, F.interpolate(cam_zhou, size=(16, 16), mode="bilinear"), atol=1e-6
    )
    assert torch.allclose(got.extras["weights"], toy.fc.weight[2].detach().expand(2, -1) / hw)


def test_gradcam_pp_weights_hand_computed():
    a = torch.tensor([[[[1.0, 2.0], [3.0, 0.0]], [[0.5, 0.5], [0.5, 0.5]]]], dtype=torch.float64)
    g = torch.tensor(
        [[[[0.1, -0.2], [0.0, 0.3]], [[-1.0, -1.0], [-1.0, -1.0]]]], dtype=torch.float64
    )
    # channel 0: S = 6, alpha = g^2 / (2 g^2 + S g^3) -> 1 / (2 + 6 g) where g != 0
    expected0 = 0.1 / (2 + 0.6) + 0.3 / (2 + 1.8)  # relu(g) kills -0.2, g = 0 gives 0
    got = cam.gradcam_pp_weights(a, g)
    assert torch.allclose(got, torch.tensor([[expected0, 0.0]], dtype=torch.float64))
    with_eps = cam.gradcam_pp_weights(a, g, eps=1e-3)
    expected_eps = 0.1 * 0.01 / (0.02 + 6e-3 + 1e-3) + 0.3 * 0.09 / (0.18 + 6 * 0.027 + 1e-3)
    assert torch.allclose(with_eps[0, 0], torch.tensor(expected_eps, dtype=torch.float64))


def test_gradcam_pp_weights_do_not_underflow():
    a = torch.ones(1, 1, 2, 2)
    g = torch.full((1, 1, 2, 2), 1e-30)  # g^2 underflows in float32
    w = cam.gradcam_pp_weights(a, g)
    assert torch.isfinite(w).all()
    assert torch.allclose(w, torch.tensor([[4 * 1e-30 / 2]]), rtol=1e-5, atol=0)


def test_layercam_map_hand_computed():
    a = torch.tensor([[[[1.0, 2.0]], [[3.0, -1.0]]]])
    g = torch.tensor([[[[0.5, -1.0]], [[2.0, 4.0]]]])
    expected = torch.tensor([[[[0.5 * 1 + 2 * 3, 0 * 2 + 4 * -1]]]])
    assert torch.equal(cam.layercam_map(a, g), expected)


def test_scorecam_scores_equal_a_naive_loop_for_any_internal_batch():
    torch.manual_seed(2)
    model = ToyCNN().eval()
    x = images(2, 12, seed=9)
    act = model.features(x).detach()
    idx = torch.tensor([1, 4])

    def score(out, rows):
        return out.gather(1, idx[rows][:, None]).squeeze(1)

    naive = torch.empty(2, act.shape[1])
    with torch.no_grad():
        for b in range(2):
            for k in range(act.shape[1]):
                up = F.interpolate(act[b, k][None, None], size=(12, 12), mode="bilinear")
                mask = (up - up.min()) / (up.max() - up.min() + 1e-8)
                naive[b, k] = model(x[b : b + 1] * mask)[0, idx[b]]
    for n in (1, 5, 1000):
        got = cam.scorecam_scores(model, x, act, score, internal_batch_size=n)
        assert torch.allclose(got, naive, atol=1e-5)


def test_scorecam_runs_one_internal_batch_at_a_time():
    torch.manual_seed(3)
    model = ToyCNN().eval()
    sizes: list[int] = []
    handle = model.register_forward_pre_hook(lambda m, i: sizes.append(i[0].shape[0]))
    try:
        cam.ScoreCAM(model, "features", internal_batch_size=6)(images(2, 8), target=0)
    finally:
        handle.remove()
    # one forward for the activation (batch 2), then 2 x 16 masked inputs, 6 at a time
    assert sizes[0] == 2
    assert max(sizes[1:]) == 6 and sum(sizes[1:]) == 32


# ---------------------------------------------------------------------------------------------
# Cost: one forward, one backward to the layer only
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", ["layer", None])
def test_gradcam_is_one_forward_and_a_backward_that_stops_at_the_layer(layer):
    torch.manual_seed(4)
    model = Counting().eval()
    x = images(2, 8)
    if layer is None:
        # the default layer is found once per model and input shape: one forward (and one
        # backward from the score to the first map), then remembered
        cam.GradCAM(model)(x, target=0)
        assert model.forwards == 2
        model.forwards = 0
    Recording.calls = 0
    result = cam.GradCAM(model, layer)(x, target=1)
    assert model.forwards == 1
    assert Recording.calls == 0  # nothing upstream of the layer was differentiated
    assert all(p.grad is None for p in model.parameters())
    assert result.maps.shape == (2, 1, 8, 8)
    # A new instance (the default served from memory) runs the explicit path, still once.
    cam.LayerCAM(model, layer)(x, target=1)
    assert model.forwards == 2 and Recording.calls == 0


class GradModeSpy(Counting):
    """Records, at every forward, the grad mode and a parameter's flag before / after the layer."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bool, bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        before = torch.is_grad_enabled()
        h = self.layer(self.stem(x))
        self.seen.append((before, torch.is_grad_enabled(), self.stem.weight.requires_grad))
        return self.fc(h.mean((2, 3)))


@pytest.mark.parametrize("name", ["gradcam", "gradcam_pp", "layercam"])
def test_gradient_cams_start_the_graph_at_the_layer_without_freezing(name):
    # The forward runs without gradients up to the layer and with them after it, so nothing
    # upstream records a graph although the parameters keep requires_grad=True (no per-call
    # walk of the parameters); the grad mode is the caller's again afterwards.
    torch.manual_seed(0)
    model = GradModeSpy().eval()
    x = images(2, 8)
    result = METHODS[name](model, "layer")(x, target=1)
    assert model.seen == [(False, True, True)]
    assert torch.is_grad_enabled() and all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():  # called under no_grad: still a gradient map, mode kept
        again = METHODS[name](model, "layer")(x, target=1)
        assert not torch.is_grad_enabled()
    torch.testing.assert_close(again.maps, result.maps)
    # Guided Grad-CAM backpropagates to the input: it freezes the parameters instead
    model.seen.clear()
    METHODS["guided_gradcam"](model, "layer")(x, target=1)
    assert model.seen == [(True, True, False)]
    assert all(p.requires_grad for p in model.parameters())


def test_layer_recorder_start_grad_puts_the_mode_back_on_errors():
    from flashtorch._surgery import LayerRecorder

    model = Counting()
    with pytest.raises(ValueError, match="leaf"):
        LayerRecorder(model, "layer", start_grad=True)
    model.fail = True
    with pytest.raises(RuntimeError, match="boom"):
        with LayerRecorder(model, "layer", leaf=True, start_grad=True):
            model(images(1, 8))
    assert torch.is_grad_enabled()
    model.fail = False
    with LayerRecorder(model, "layer", leaf=True, start_grad=True) as rec:
        out = model(images(1, 8))
    assert torch.is_grad_enabled() and rec.output.requires_grad and rec.output.grad_fn is None
    (g,) = torch.autograd.grad(out.sum(), rec.output)  # the graph reaches the leaf
    assert g.shape == rec.output.shape


def test_default_layer_is_remembered_per_model_and_structure():
    torch.manual_seed(5)
    model = ToyCNN().eval()
    x = images(1, 16)
    first = cam.GradCAM(model)
    first(x)
    assert first.layer_name == "features"
    assert len(_DEFAULT_LAYERS[model]) == 1
    model.features.add_module("5", nn.Conv2d(16, 16, 1))  # a new last layer
    second = cam.GradCAM(model)
    second(x)
    assert second.layer_name == "features"
    assert len(_DEFAULT_LAYERS[model]) == 2  # the changed tree was not served from memory


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, expected",
    [
        (lambda: torchvision.models.resnet18(), "layer4"),
        (lambda: torchvision.models.mobilenet_v2(), "features"),
        (
            lambda: __import__("timm").create_model("tf_efficientnet_lite0", pretrained=False),
            "bn2",
        ),
    ],
    ids=["resnet18", "mobilenet_v2", "tf_efficientnet_lite0"],
)
def test_default_layer_of_common_architectures(build, expected):
    torch.manual_seed(0)
    model = build().eval()
    x = images(1, 64)
    method = cam.GradCAM(model)
    result = method(x)
    assert method.layer_name == expected
    assert hook_count(model) == 0
    # served from memory now; the first call's map is the explicit layer's
    explicit = cam.GradCAM(model, expected)(x, target=result.targets)
    assert torch.allclose(result.maps, explicit.maps, atol=1e-6)


def test_default_layer_function_matches_the_method(resnet18):
    model = torchvision.models.resnet18().eval()
    assert cam.default_layer(model, images(1, 64)) == "layer4"
    assert cam.default_layer(model, images(1, 32)) == "layer3"  # layer4 is 1 x 1 there
    assert hook_count(model) == 0


def test_densenet_layer_uses_the_features_before_the_functional_inplace_relu():
    torch.manual_seed(0)
    model = torchvision.models.densenet121().eval()
    x = images(1, 64, seed=11)
    a = model.features(x).detach().requires_grad_(True)
    out = model.classifier(F.adaptive_avg_pool2d(F.relu(a), 1).flatten(1))
    (g,) = torch.autograd.grad(out[0, 5], a)
    expected = (g.mean((2, 3))[:, :, None, None] * a.detach()).sum(1, keepdim=True)
    expected = F.interpolate(expected, size=(64, 64), mode="bilinear")
    # The default layer is "features"; its output is modified in place by the functional ReLU,
    # so the discovery pass is followed by a second pass with the layer fixed.
    method = cam.GradCAM(model, relu=False, normalize=False)
    assert rel_err(method(x, target=5).maps, expected) < 1e-4
    assert method.layer_name == "features"
    got = cam.GradCAM(model, "features", relu=False, normalize=False)(x, target=5).maps
    assert rel_err(got, expected) < 1e-4
    assert hook_count(model) == 0
    assert (a.detach() < 0).any()  # the recorded activation is really the pre-ReLU one


def test_adaptive_pooling_to_a_fixed_size_is_not_the_default_layer():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(7),
        nn.Flatten(),
        nn.Linear(4 * 49, 3),
    ).eval()
    assert cam.default_layer(model, images(1, 16)) == "1"


def test_unknown_layer_name_lists_candidates(resnet18):
    with pytest.raises(LayerError, match="layer4") as info:
        cam.GradCAM(resnet18, "layer5")
    assert "did you mean" in str(info.value)
    with pytest.raises(LayerError, match="not a submodule"):
        cam.GradCAM(resnet18, nn.Conv2d(1, 1, 1))


def test_layer_without_spatial_map_is_refused(resnet18):
    with pytest.raises(LayerError, match=r"\(B, C, h, w\)"):
        cam.GradCAM(resnet18, "fc")(images(1, 64))
    assert hook_count(resnet18) == 0


def test_shared_module_raises_and_call_selects_one():
    torch.manual_seed(6)
    model = SharedAct().eval()
    x = images(2, 16)
    for name in CAM_METHODS:
        with pytest.raises(SharedModuleError, match="'act'.*ran 3 times") as info:
            METHODS[name](model, "act")(x, target=1)
        assert "call=" in str(info.value) and "another layer" in str(info.value)
        assert hook_count(model) == 0
    # The default skips the shared module: the head convolution runs once.
    method = cam.GradCAM(model)
    method(x)
    assert method.layer_name == "head"
    # call=2 is the activation after the head, computed by hand here.
    h = model.act(model.block(model.act(model.stem(x)))).detach()
    a = model.act(model.head(h)).detach().requires_grad_(True)
    out = model.fc(a.mean((2, 3)))
    (g,) = torch.autograd.grad(out[:, 1].sum(), a)
    expected = F.interpolate(
        (g.mean((2, 3))[:, :, None, None] * a).sum(1, keepdim=True).detach(),
        size=(16, 16),
        mode="bilinear",
    )
    got = cam.GradCAM(model, "act", call=2, relu=False, normalize=False)(x, target=1).maps
    assert rel_err(got, expected) < 1e-5
    other = cam.GradCAM(model, "act", call=1, relu=False, normalize=False)(x, target=1).maps
    assert rel_err(other, expected) > 1e-2


def test_default_skips_a_module_that_turns_out_shared_later():
    class Late(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3, padding=1)
            self.act = nn.ReLU()  # last spatial output, but used again on the 2-D features
            self.fc1 = nn.Linear(4, 4)
            self.fc2 = nn.Linear(4, 3)

        def forward(self, x):
            h = self.act(self.stem(x)).mean((2, 3))
            return self.fc2(self.act(self.fc1(h)))

    torch.manual_seed(9)
    model = Late().eval()
    x = images(2, 8, seed=21)
    method = cam.GradCAM(model, relu=False, normalize=False)
    got = method(x, target=[0, 1]).maps
    assert method.layer_name == "stem"
    explicit = cam.GradCAM(model, "stem", relu=False, normalize=False)(x, target=[0, 1]).maps
    assert torch.allclose(got, explicit, atol=1e-7)


def test_bad_options_are_refused(resnet18):
    with pytest.raises(MethodError, match="call"):
        cam.GradCAM(resnet18, "layer4", call=-1)
    with pytest.raises(MethodError, match="layer="):
        cam.GradCAM(resnet18, call=0)
    with pytest.raises(MethodError, match="interpolation"):
        cam.GradCAM(resnet18, "layer4", interpolation="cubic")
    with pytest.raises(MethodError, match="internal_batch_size"):
        cam.ScoreCAM(resnet18, "layer4", internal_batch_size=0)
    with pytest.raises(MethodError, match="eps"):
        cam.GradCAMPlusPlus(resnet18, "layer4", eps=-1.0)


# ---------------------------------------------------------------------------------------------
# Batching, targets, post-processing
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CAM_METHODS)
def test_batch_equals_singles(name, toy):
    x = images(3, 16, seed=12)
    target = [0, 2, 4]
    method = METHODS[name](toy, "features")
    batch = method(x, target=target)
    for i in range(3):
        single = method(x[i : i + 1], target=target[i])
        assert torch.allclose(batch.maps[i], single.maps[0], atol=1e-5)
    assert batch.maps.shape == ((3, 1, 16, 16) if METHODS[name].single_channel else x.shape)


@pytest.mark.parametrize("name", CAM_METHODS)
def test_different_targets_give_different_maps(name, toy):
    x = images(1, 16, seed=13)
    method = METHODS[name](toy, "features")
    a, b = method(x, target=0).maps, method(x, target=3).maps
    assert float((a - b).abs().max()) > 1e-3


@pytest.mark.parametrize("name", CAM_METHODS)
def test_normalised_maps_span_zero_to_one(name, toy):
    x = images(4, 16, seed=14)
    result = METHODS[name](toy, "features")(x, target=[1, 2, 3, 4])
    maps = result.extras["cam"] if name == "guided_gradcam" else result.maps
    assert result.maps.shape[-2:] == (16, 16)
    lo, hi = maps.amin((1, 2, 3)), maps.amax((1, 2, 3))
    assert torch.allclose(lo, torch.zeros(4), atol=1e-6)
    # a map that the ReLU left all zero stays zero (no NaN); every other one reaches 1
    assert all(abs(h - 1) < 1e-6 or h == 0 for h in hi.tolist())
    assert (hi == 1).sum() >= 2


def test_relu_and_normalize_switches(toy):
    x = images(2, 16, seed=15)
    raw = cam.GradCAM(toy, "features", relu=False, normalize=False)(x, target=1).maps
    rect = cam.GradCAM(toy, "features", relu=True, normalize=False)(x, target=1).maps
    assert (raw < 0).any()
    assert (rect >= 0).all()
    low = cam.GradCAM(toy, "features", interpolation="nearest", relu=False, normalize=False)
    nearest = low(x, target=1).maps
    coarse = nearest[:, :, ::2, ::2]  # 8x8 map repeated 2x2
    assert torch.equal(nearest, coarse.repeat_interleave(2, 2).repeat_interleave(2, 3))


@pytest.mark.parametrize("name", ["gradcam", "scorecam"])
def test_callable_target_equals_index_target(name, toy):
    x = images(2, 16, seed=16)
    method = METHODS[name](toy, "features")
    by_index = method(x, target=3)
    by_callable = method(x, target=lambda out: out[:, 3])
    assert torch.allclose(by_index.maps, by_callable.maps, atol=1e-6)
    assert by_callable.targets is None


def test_attribute_api_runs_every_cam(toy):
    from flashtorch.api import attribute

    x = images(1, 16, seed=17)
    for name in CAM_METHODS:
        result = attribute(toy, x, target=1, method=name, layer="features")
        assert result.method == name
        assert result.maps.shape[-2:] == (16, 16)
        assert torch.isfinite(result.maps).all()


# ---------------------------------------------------------------------------------------------
# Cleanup: state restored, no hooks, after success and after errors
# ---------------------------------------------------------------------------------------------


def _snapshot(model: nn.Module):
    return (
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        [p.grad for p in model.parameters()],
        {k: v.clone() for k, v in model.state_dict().items()},
    )


@pytest.mark.parametrize("layer", ["layer", None])
@pytest.mark.parametrize("name", CAM_METHODS)
def test_cleanup_after_success_and_errors(name, layer):
    torch.manual_seed(7)
    model = Counting()
    model.train()  # the method switches to eval mode and must switch back
    model.stem.weight.requires_grad_(False)
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    x = images(2, 8, seed=18)
    x_before = x.clone()
    before = _snapshot(model)
    with torch.no_grad():
        model.eval()
        reference = model(x)
        model.train()

    def check() -> None:
        after = _snapshot(model)
        assert after[0] == before[0] and after[1] == before[1]
        assert all(a is b for a, b in zip(after[2], before[2]))
        assert all(torch.equal(after[3][k], v) for k, v in before[3].items())
        assert hook_count(model) == 0
        assert torch.equal(x, x_before)
        model.eval()
        with torch.no_grad():
            assert torch.equal(model(x), reference)
        model.train()

    METHODS[name](model, layer)(x, target=[0, 2])
    check()
    with pytest.raises(TargetError):
        METHODS[name](model, layer)(x, target=17)
    check()
    model.fail = True
    with pytest.raises(RuntimeError, match="boom"):
        METHODS[name](model, layer)(x, target=0)
    model.fail = False
    check()


@pytest.mark.parametrize("name", ["gradcam", "gradcam_pp", "layercam"])
def test_fast_and_amp_agree_with_the_plain_run(name, resnet18):
    x = images(2, 64, seed=20)
    plain = METHODS[name](resnet18, resnet18.layer4)(x, target=[1, 2]).maps
    # fast=True runs on a BatchNorm-folded copy: the module given is found there by name
    fast = METHODS[name](resnet18, resnet18.layer4, fast=True)(x, target=[1, 2]).maps
    assert float((plain - fast).abs().max()) < 1e-4
    amp = METHODS[name](resnet18, "layer4", amp=True)(x, target=[1, 2]).maps
    assert amp.dtype == torch.float32
    assert float(torch.corrcoef(torch.stack([plain.flatten(), amp.flatten()]))[0, 1]) > 0.99
    assert hook_count(resnet18) == 0


def test_result_is_on_the_inputs_device_and_detached(toy):
    x = images(1, 16)
    result = cam.GradCAMPlusPlus(toy, "features")(x)
    assert not result.maps.requires_grad and result.maps.device == x.device
    assert result.predicted.tolist() == toy(x).argmax(1).tolist()
    assert np.isfinite(result.scores.numpy()).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", CAM_METHODS)
def test_cuda_matches_cpu(name):
    torch.manual_seed(8)
    model = ToyCNN().eval()
    x = images(2, 16, seed=19)
    cpu = METHODS[name](model, "features")(x, target=[1, 2]).maps
    model.cuda()
    try:
        gpu = METHODS[name](model, "features")(x.cuda(), target=[1, 2])
    finally:
        model.cpu()
    assert gpu.maps.device.type == "cuda"
    assert torch.allclose(gpu.maps.cpu(), cpu, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Guided Grad-CAM in one pass when exact
# ---------------------------------------------------------------------------------------------


class ReluAfterLayer(nn.Module):
    """A functional ReLU between the CAM layer and the score: one pass would not be exact."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)
        )
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.features(x)).mean((2, 3)))


@pytest.mark.parametrize(
    "case, layer, passes",
    [
        ("toy", "features", (1, 1)),  # ends with nn.ReLU, then pool + linear
        ("resnet18", "layer4", (1, 1)),
        ("resnet18", "layer3", (1, 2)),  # layer4's ReLUs lie between: two backward passes
        ("resnet18", "layer4.1.bn2", (2, 2)),  # `out += identity` modifies it in place
        ("relu_after", "features", (1, 2)),  # F.relu after the layer
    ],
)
def test_guided_gradcam_single_pass_is_exact(case, layer, passes, toy, resnet18):
    from .conftest import BatchSpy

    torch.manual_seed(0)
    model = {"toy": toy, "resnet18": resnet18, "relu_after": ReluAfterLayer().eval()}[case]
    x = images(2, 32 if case == "toy" else 64, seed=5)
    method = cam.GuidedGradCAM(model, layer)
    method(x, target=[0, 1])  # the first call learns what the structure allows
    with BatchSpy(model) as spy:
        got = method(x, target=[1, 2])
    assert method.passes == passes
    assert len(spy.sizes) == passes[0]  # forward passes the model ran
    reference = cam.GradCAM(model, layer)(x, target=[1, 2]).maps * cam_guided(model, x, [1, 2])
    torch.testing.assert_close(got.maps, reference, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(got.extras["cam"], cam.GradCAM(model, layer)(x, [1, 2]).maps)


def cam_guided(model: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
    return METHODS["guided"](model)(x, target).maps


def test_guided_gradcam_default_layer_goes_single_pass_once_known(resnet18):
    from .conftest import BatchSpy

    _DEFAULT_LAYERS.pop(resnet18, None)
    x = images(1, 64, seed=6)
    method = cam.GuidedGradCAM(resnet18)
    with BatchSpy(resnet18) as spy:
        first = method(x, target=3)
    # the default-layer pass, then the single guided pass on the layer found
    assert method.passes == (1, 1) and spy.sizes == [1, 1]
    with BatchSpy(resnet18) as spy:
        again = method(x, target=3)
    assert method.passes == (1, 1) and spy.sizes == [1]
    torch.testing.assert_close(again.maps, first.maps, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("call, passes", [(0, (1, 2)), (1, (1, 2)), (2, (1, 1))])
def test_guided_gradcam_on_a_shared_relu_call(call, passes):
    """One nn.ReLU run three times: its later calls lie between an earlier call and the score."""
    torch.manual_seed(0)
    model = SharedAct().eval()
    model.act = nn.ReLU()
    x = images(2, 16, seed=9)
    method = cam.GuidedGradCAM(model, "act", call=call)
    got = method(x, target=[1, 2])
    assert method.passes == passes
    grad_cam = cam.GradCAM(model, "act", call=call)(x, target=[1, 2]).maps
    torch.testing.assert_close(
        got.maps, grad_cam * cam_guided(model, x, [1, 2]), rtol=1e-5, atol=1e-9
    )
    assert hook_count(model) == 0
