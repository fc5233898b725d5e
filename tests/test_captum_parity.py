"""Captum as an oracle: gradient family, Integrated Gradients and occlusion on random-weight models.

Every comparison uses the relative error ``max|a - b| / max|b|`` and requires it below 1e-5.
Captum is right for ``nn.ReLU`` models (its guided backprop / deconvnet hook ReLU modules), which
is what these models use.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from flashtorch import attribute

captum_attr = pytest.importorskip("captum.attr")
torchvision = pytest.importorskip("torchvision")

TOL = 1e-5

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:captum.*")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = b.abs().max()
    assert scale > 0, "the reference is all zeros: the comparison would prove nothing"
    return float((a - b).abs().max() / scale)


class SmallCNN(nn.Module):
    """conv-ReLU-maxpool-conv-ReLU-linear, one nn.ReLU module per use."""

    def __init__(self, classes: int = 7) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 12, 3, padding=1),
            nn.ReLU(),
        )
        self.fc = nn.Linear(12 * 8 * 8, classes)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    model = SmallCNN().eval()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return model, x, torch.tensor([0, 3, 6])


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    return model, x, torch.tensor([1, 7])


GRADIENT_PAIRS = [
    ("gradient", lambda m: captum_attr.Saliency(m), {"abs": False}),
    ("gradient_x_input", lambda m: captum_attr.InputXGradient(m), {}),
    ("guided", lambda m: captum_attr.GuidedBackprop(m), {}),
    ("deconvnet", lambda m: captum_attr.Deconvolution(m), {}),
]


@pytest.mark.parametrize("model_name", ["small", "resnet"])
@pytest.mark.parametrize(
    ("method", "make", "kwargs"), GRADIENT_PAIRS, ids=[p[0] for p in GRADIENT_PAIRS]
)
def test_gradient_family_matches_captum(request, model_name, method, make, kwargs):
    model, x, target = request.getfixturevalue(model_name)
    ours = attribute(model, x, target=target, method=method).maps
    theirs = make(model).attribute(x.clone(), target=target, **kwargs).detach()
    assert rel(ours, theirs) < TOL


def test_guided_differs_from_plain_gradient(small):
    # Guards the parity test above: the four methods really give different maps here.
    model, x, target = small
    maps = {m: attribute(model, x, target=target, method=m).maps for m, *_ in GRADIENT_PAIRS}
    assert rel(maps["guided"], maps["gradient"]) > 1e-2
    assert rel(maps["deconvnet"], maps["guided"]) > 1e-2


# --------------------------------------------------------------------------------------------
# Integrated Gradients
# --------------------------------------------------------------------------------------------

CAPTUM_RULE = {
    "riemann_left": "riemann_left",
    "riemann_right": "riemann_right",
    "riemann_middle": "riemann_middle",
    "trapezoid": "riemann_trapezoid",
    "gausslegendre": "gausslegendre",
}


@pytest.mark.parametrize("rule", list(CAPTUM_RULE))
def test_integrated_gradients_matches_captum(small, rule):
    model, x, target = small
    steps = 12
    baseline = 0.3 * torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    ours = attribute(
        model,
        x,
        target=target,
        method="integrated_gradients",
        steps=steps,
        rule=rule,
        baseline=baseline,
        internal_batch_size=7,
    )
    theirs, delta = captum_attr.IntegratedGradients(model).attribute(
        x.clone(),
        baselines=baseline.clone(),
        target=target,
        n_steps=steps,
        method=CAPTUM_RULE[rule],
        return_convergence_delta=True,
    )
    if rule == "trapezoid":
        # Captum weights the trapezoid nodes by 1/m (ends halved), summing to 1 - 1/m; the
        # exact trapezoid rule on m equispaced nodes uses 1/(m - 1). See the module docstring.
        theirs = theirs * steps / (steps - 1)
    else:
        assert torch.allclose(ours.extras["delta"], delta.float(), atol=1e-5, rtol=1e-4)
    assert rel(ours.maps, theirs.detach()) < TOL


def test_integrated_gradients_matches_captum_on_resnet(resnet):
    model, x, target = resnet
    ours = attribute(
        model, x, target=target, method="integrated_gradients", steps=16, internal_batch_size=12
    ).maps
    theirs = captum_attr.IntegratedGradients(model).attribute(
        x.clone(), target=target, n_steps=16, method="gausslegendre"
    )
    assert rel(ours, theirs.detach()) < TOL


# --------------------------------------------------------------------------------------------
# Occlusion
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "stride", "fill"),
    [(4, 2, 0.0), ((5, 3), (3, 2), 0.5), (16, 1, -1.0), ((3, 7), (1, 4), 0.0)],
)
def test_occlusion_matches_captum(small, window, stride, fill):
    model, x, target = small
    ours = attribute(
        model,
        x,
        target=target,
        method="occlusion",
        window=window,
        stride=stride,
        fill=fill,
        internal_batch_size=50,
    ).maps
    wh, ww = (window, window) if isinstance(window, int) else window
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    theirs = captum_attr.Occlusion(model).attribute(
        x.clone(),
        sliding_window_shapes=(3, wh, ww),
        strides=(3, sh, sw),
        baselines=fill,
        target=target,
        perturbations_per_eval=16,
    )
    assert ours.shape == (3, 1, 16, 16)
    # Captum's window spans the channels: its channels are equal, and equal to our one channel.
    assert torch.equal(theirs[:, :1].expand_as(theirs), theirs)
    assert rel(ours, theirs[:, :1]) < TOL


def test_occlusion_matches_captum_on_resnet(resnet):
    model, x, target = resnet
    ours = attribute(model, x, target=target, method="occlusion", window=16, stride=12).maps
    theirs = captum_attr.Occlusion(model).attribute(
        x.clone(),
        sliding_window_shapes=(3, 16, 16),
        strides=(3, 12, 12),
        target=target,
        perturbations_per_eval=32,
    )
    assert rel(ours, theirs[:, :1]) < TOL
