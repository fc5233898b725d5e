"""Gradient saliency: plain, gradient x input, guided backprop, deconvnet."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flashtorch import attribute
from flashtorch.errors import InputError, TargetError
from flashtorch.saliency import Backprop

# ---------------------------------------------------------------------------------------------
# An independent reference: a model whose activation is a custom autograd function written here.
# ---------------------------------------------------------------------------------------------


class RefRect(torch.autograd.Function):
    """Reference rectifier: forward clamp(lo, hi), backward by rule, from the saved input."""

    @staticmethod
    def forward(ctx, x, lo, hi, rule):
        ctx.save_for_backward(x)
        ctx.lo, ctx.hi, ctx.rule = lo, hi, rule
        return torch.clamp(x, lo, hi)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        inside = (x > ctx.lo).float()
        if ctx.hi is not None:
            inside = inside * (x < ctx.hi).float()
        if ctx.rule == "plain":
            return g * inside, None, None, None
        if ctx.rule == "guided":
            return g * inside * (g > 0).float(), None, None, None
        return g * (g > 0).float(), None, None, None  # deconvnet


KINDS = {
    # name: (activation as the model under test runs it, (lo, hi) of the rectifier)
    "nn.ReLU": (lambda m, x: m.relu(x), (0.0, None)),
    "nn.ReLU(inplace)": (lambda m, x: m.relu_inplace(x), (0.0, None)),
    "F.relu": (lambda m, x: F.relu(x), (0.0, None)),
    "F.relu(inplace)": (lambda m, x: F.relu(x, inplace=True), (0.0, None)),
    "torch.relu": (lambda m, x: torch.relu(x), (0.0, None)),
    "torch.relu_": (lambda m, x: torch.relu_(x), (0.0, None)),
    "Tensor.relu": (lambda m, x: x.relu(), (0.0, None)),
    "Tensor.relu_": (lambda m, x: x.relu_(), (0.0, None)),
    "nn.ReLU6": (lambda m, x: m.relu6(x), (0.0, 6.0)),
    "F.relu6": (lambda m, x: F.relu6(x), (0.0, 6.0)),
    "F.hardtanh": (lambda m, x: F.hardtanh(x, 0.0, 6.0), (0.0, 6.0)),
    "clamp(min=0)": (lambda m, x: x.clamp(min=0), (0.0, None)),
    "clamp(min=tensor 0)": (lambda m, x: x.clamp(min=torch.zeros(())), (0.0, None)),
    "torch.clamp_min": (lambda m, x: torch.clamp_min(x, 0.0), (0.0, None)),
    "F.threshold(x, 0, 0)": (lambda m, x: F.threshold(x, 0.0, 0.0), (0.0, None)),
    "F.threshold(inplace)": (lambda m, x: F.threshold(x, 0.0, 0.0, inplace=True), (0.0, None)),
}


class KindNet(nn.Module):
    def __init__(self, kind: str, reference: str | None = None):
        super().__init__()
        self.kind, self.reference = kind, reference
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 4)
        self.relu, self.relu_inplace, self.relu6 = nn.ReLU(), nn.ReLU(inplace=True), nn.ReLU6()

    def act(self, x):
        fn, (lo, hi) = KINDS[self.kind]
        if self.reference is not None:
            return RefRect.apply(x, lo, hi, self.reference)
        return fn(self, x)

    def forward(self, x):
        x = self.act(self.c1(x) * 3)  # scaled so that ReLU6's upper bound is reached
        x = self.act(self.c2(x) * 3)
        x = F.adaptive_avg_pool2d(x, 4).flatten(1)
        return self.fc(x)


def _reference(model, x, target, rule):
    ref = KindNet(model.kind, reference=rule)
    ref.load_state_dict(model.state_dict())
    ref.eval()
    xr = x.clone().requires_grad_(True)
    out = ref(xr)
    out.gather(1, target[:, None]).sum().backward()
    return xr.grad


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize(
    "method,rule", [("gradient", "plain"), ("guided", "guided"), ("deconvnet", "deconvnet")]
)
def test_rules_match_independent_reference_for_every_rectifier(kind, method, rule):
    torch.manual_seed(0)
    model = KindNet(kind).eval()
    x = torch.randn(3, 3, 16, 16)
    target = torch.tensor([0, 1, 3])
    got = attribute(model, x, target=target, method=method).maps
    want = _reference(model, x, target, rule)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-7), (got - want).abs().max()
    if rule != "plain":
        plain = _reference(model, x, target, "plain")
        assert not torch.allclose(got, plain, atol=1e-6)  # the rule really changed something


def test_plain_gradient_equals_autograd(tiny_cnn):
    x = torch.randn(4, 3, 12, 12)
    target = [0, 1, 2, 3]
    got = attribute(tiny_cnn, x, target=target, method="gradient").maps
    xr = x.clone().requires_grad_(True)
    tiny_cnn(xr)[torch.arange(4), torch.tensor(target)].sum().backward()
    assert torch.allclose(got, xr.grad, atol=1e-7)


def test_gradient_x_input(tiny_cnn):
    x = torch.randn(2, 3, 12, 12)
    g = attribute(tiny_cnn, x, target=1, method="gradient").maps
    gxi = attribute(tiny_cnn, x, target=1, method="gradient_x_input").maps
    assert torch.allclose(gxi, g * x)


def test_different_targets_give_different_maps(tiny_cnn):
    x = torch.randn(1, 3, 12, 12)
    a = attribute(tiny_cnn, x, target=0, method="gradient").maps
    b = attribute(tiny_cnn, x, target=1, method="gradient").maps
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("method", ["gradient", "guided", "deconvnet", "gradient_x_input"])
def test_batch_equals_singles(tiny_cnn, method):
    x = torch.randn(3, 3, 12, 12)
    targets = [2, 0, 4]
    batch = attribute(tiny_cnn, x, target=targets, method=method).maps
    for i in range(3):
        single = attribute(tiny_cnn, x[i : i + 1], target=targets[i], method=method).maps
        assert torch.allclose(batch[i : i + 1], single, atol=1e-7)


def test_default_target_is_prediction(tiny_cnn):
    x = torch.randn(3, 3, 12, 12)
    result = attribute(tiny_cnn, x, method="gradient")
    assert torch.equal(result.targets, tiny_cnn(x).argmax(1))
    assert torch.equal(result.predicted, result.targets)
    assert torch.allclose(result.scores, tiny_cnn(x).max(1).values)


def test_callable_target(tiny_cnn):
    x = torch.randn(2, 3, 12, 12)
    r = attribute(tiny_cnn, x, target=lambda out: out[:, 1] - out[:, 2], method="gradient")
    a = attribute(tiny_cnn, x, target=1, method="gradient").maps
    b = attribute(tiny_cnn, x, target=2, method="gradient").maps
    assert r.targets is None and torch.allclose(r.maps, a - b, atol=1e-7)
    with pytest.raises(TargetError, match="one score per sample"):
        attribute(tiny_cnn, x, target=lambda out: out, method="gradient")


def test_no_rectifier_warns_guided_equals_plain():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.SiLU(), nn.Flatten(), nn.LazyLinear(3))
    x = torch.randn(1, 3, 8, 8)
    model(x)
    with pytest.warns(UserWarning, match="silu.*equals the plain gradient"):
        g = attribute(model, x, target=0, method="guided").maps
    assert torch.allclose(g, attribute(model, x, target=0, method="gradient").maps)


@pytest.mark.parametrize("arch", ["resnet18", "densenet121", "mobilenet_v2"])
def test_guided_differs_from_plain_on_torchvision(arch):
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = getattr(tv.models, arch)(weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a rectifier must be found: no "equals plain" warning
        g = attribute(model, x, target=3, method="guided").maps
    p = attribute(model, x, target=3, method="gradient").maps
    cos = F.cosine_similarity(g.flatten(), p.flatten(), dim=0)
    assert cos < 0.99, f"guided looks like plain on {arch}: cosine {cos:.4f}"


def test_guided_differs_from_plain_on_pretrained(pretrained, image_dir):
    from flashtorch.utils import apply_transforms, load_image

    x = apply_transforms(load_image(image_dir / "chelsea.jpg"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = attribute(pretrained, x, method="guided").maps
    p = attribute(pretrained, x, method="gradient").maps
    assert F.cosine_similarity(g.flatten(), p.flatten(), dim=0) < 0.9


def test_input_errors(tiny_cnn):
    with pytest.raises(InputError, match=r"\(B, C, H, W\).*unsqueeze"):
        attribute(tiny_cnn, torch.randn(3, 12, 12))
    with pytest.raises(InputError, match="floating"):
        attribute(tiny_cnn, torch.zeros(1, 3, 12, 12, dtype=torch.long))
    with pytest.raises(InputError, match="NaN"):
        attribute(tiny_cnn, torch.full((1, 3, 12, 12), float("nan")))
    with pytest.raises(InputError, match="Tensor"):
        attribute(tiny_cnn, [[1.0]])


@pytest.mark.parametrize(
    "bad,match",
    [
        (5, "out of range.*0..4"),
        (-1, "out of range"),
        ([1, 2, 3], "3 targets for a batch of 2"),
        (torch.tensor([0.5]), "integer"),
        (True, "class index"),
        ("tabby", "1000 outputs"),
    ],
)
def test_target_errors(tiny_cnn, bad, match):
    with pytest.raises(TargetError, match=match):
        attribute(tiny_cnn, torch.randn(2, 3, 12, 12), target=bad, method="gradient")


def test_class_name_target_on_imagenet_model():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 1000))
    x = torch.randn(1, 3, 4, 4)
    r = attribute(model, x, target="great grey owl", method="gradient")
    assert r.targets.tolist() == [24]
    assert torch.allclose(r.maps.flatten(), model[1].weight[24])


def test_backprop_shapes_and_warning(tiny_cnn):
    bp = Backprop(tiny_cnn)
    x = torch.randn(1, 3, 12, 12)
    pred = int(tiny_cnn(x).argmax())
    other = (pred + 1) % 5
    with pytest.warns(UserWarning, match="does not equal the target class"):
        g = bp.calculate_gradients(x, other)
    assert g.shape == (3, 12, 12)
    want = attribute(tiny_cnn, x, target=other, method="gradient").maps[0]
    assert torch.allclose(g, want)  # the target's gradient, not the prediction's
    m = bp.calculate_gradients(x, pred, take_max=True, guided=True)
    assert m.shape == (1, 12, 12)
    gb = attribute(tiny_cnn, x, target=pred, method="guided").maps[0]
    assert torch.allclose(m, gb.abs().amax(0, keepdim=True))
    batch = bp.calculate_gradients(torch.randn(4, 3, 12, 12), 1, take_max=True)
    assert batch.shape == (4, 1, 12, 12)


def test_backprop_use_gpu_without_cuda_warns_and_works(tiny_cnn):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the fallback path is not taken")
    with pytest.warns(UserWarning, match="CUDA is not available"):
        g = Backprop(tiny_cnn).calculate_gradients(torch.randn(1, 3, 12, 12), 0, use_gpu=True)
    assert g.shape == (3, 12, 12)


def test_no_parameter_gradients_are_computed(tiny_cnn):
    x = torch.randn(2, 3, 12, 12)
    seen = []
    for p in tiny_cnn.parameters():
        p.register_hook(lambda g: seen.append(g))
    attribute(tiny_cnn, x, target=0, method="guided")
    assert seen == [] and all(p.grad is None for p in tiny_cnn.parameters())
