"""SmoothGrad, SmoothGrad-squared and VarGrad: the documented noise protocol reproduced here."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from flashtorch import METHODS, attribute
from flashtorch.errors import MethodError, TargetError
from flashtorch.saliency import (
    Deconvnet,
    Gradient,
    GradientXInput,
    GuidedBackprop,
    SmoothGrad,
    SmoothGradSquared,
    VarGrad,
)

from .conftest import BatchSpy


class Net(nn.Module):
    """conv-ReLU-conv-ReLU-pool-linear with separate ReLUs (guided != plain gradient)."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU()
        )
        self.fc = nn.Linear(8 * 4 * 4, classes)

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 4)
        return self.fc(x.flatten(1))


@pytest.fixture
def model():
    torch.manual_seed(0)
    return Net().eval()


@pytest.fixture
def x():
    return torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(7))


def reference_maps(base_cls, model, x, target, n, noise, seed):
    """The documented protocol, re-implemented: one randn((1, C, H, W)) per sample, in order,
    scaled by each image's sigma."""
    g = torch.Generator().manual_seed(seed)
    flat = x.flatten(1)
    sigma = (noise * (flat.amax(1) - flat.amin(1))).view(-1, 1, 1, 1)
    maps = []
    for _ in range(n):
        eps = torch.randn((1, *x.shape[1:]), generator=g, dtype=x.dtype) * sigma
        maps.append(base_cls(model)(x + eps, target=target).maps)
    return torch.stack(maps)  # (n, B, C, H, W)


BASES = {
    "gradient": Gradient,
    "guided": GuidedBackprop,
    "gradient_x_input": GradientXInput,
    "deconvnet": Deconvnet,
}


@pytest.mark.parametrize("base", list(BASES))
def test_mean_equals_base_over_the_same_draws(model, x, base):
    target = torch.tensor([0, 2, 4])
    ref = reference_maps(BASES[base], model, x, target, n=7, noise=0.2, seed=11).mean(0)
    got = SmoothGrad(model, base=base, n_samples=7, noise=0.2, seed=11, internal_batch_size=5)(
        x, target=target
    )
    torch.testing.assert_close(got.maps, ref, rtol=1e-5, atol=1e-7)
    assert got.maps.shape == x.shape
    plain = BASES[base](model)(x, target=target).maps
    if base == "deconvnet":
        # conv/ReLU/avg-pool nets: deconvnet ignores the forward masks, so its map does not
        # depend on the input at all and smoothing changes nothing
        torch.testing.assert_close(got.maps, plain, rtol=1e-5, atol=1e-8)
    else:
        assert not torch.allclose(got.maps, plain, atol=1e-4)


def test_squared_and_vargrad_formulas(model, x):
    target = 1
    stack = reference_maps(GuidedBackprop, model, x, target, n=6, noise=0.15, seed=3)
    sq = SmoothGrad(model, base="guided", n_samples=6, noise=0.15, seed=3, variant="squared")
    var = SmoothGrad(model, base="guided", n_samples=6, noise=0.15, seed=3, variant="vargrad")
    torch.testing.assert_close(sq(x, target).maps, stack.pow(2).mean(0), rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(
        var(x, target).maps, stack.var(0, unbiased=False), rtol=1e-4, atol=1e-9
    )
    # the registry entries are the same computations
    torch.testing.assert_close(
        SmoothGradSquared(model, base="guided", n_samples=6, noise=0.15, seed=3)(x, 1).maps,
        sq(x, 1).maps,
    )
    torch.testing.assert_close(
        VarGrad(model, base="guided", n_samples=6, noise=0.15, seed=3)(x, 1).maps, var(x, 1).maps
    )


def test_vargrad_of_a_constant_gradient_is_exactly_zero():
    # A linear model has the same gradient w at every noisy copy, and a large one: the naive
    # E[g^2] - E[g]^2 would leave rounding noise, the shifted sums give exact zeros.
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    with torch.no_grad():
        linear[1].weight.mul_(1e3).add_(1e3)
    x = torch.randn(2, 3, 8, 8)
    result = VarGrad(linear, n_samples=9, noise=0.3)(x, target=2)
    assert torch.equal(result.maps, torch.zeros_like(x))
    mean = SmoothGrad(linear, n_samples=9, noise=0.3)(x, target=2).maps
    torch.testing.assert_close(mean, linear[1].weight[2].view(1, 3, 8, 8).expand_as(x))


def test_noise_zero_gives_the_base_map(model, x):
    base = GuidedBackprop(model)(x, target=3).maps
    for variant, expected in [
        ("mean", base),
        ("squared", base**2),
        ("vargrad", torch.zeros_like(base)),
    ]:
        got = SmoothGrad(model, base="guided", n_samples=4, noise=0.0, variant=variant)(x, 3)
        torch.testing.assert_close(got.maps, expected, rtol=1e-5, atol=1e-8)


def test_default_target_is_the_clean_prediction_held_fixed():
    # Linear model: the gradient of class c is W_c whatever the input, so the SmoothGrad map is
    # exactly W_{target}; a target that followed the noisy copies' predictions would mix rows.
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 4))
    x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    clean = linear(x).argmax(1)
    noisy = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(0)) * 8
    assert not torch.equal(linear(noisy).argmax(1), clean)  # noise does move predictions
    sg = SmoothGrad(linear, n_samples=6, noise=1.0, seed=4)
    result = sg(x)
    assert torch.equal(result.targets, clean)
    assert torch.equal(result.predicted, clean)
    torch.testing.assert_close(result.scores, linear(x).gather(1, clean[:, None]).squeeze(1))
    expected = linear[1].weight[clean].view_as(x)
    torch.testing.assert_close(result.maps, expected)


def test_callable_target_equals_index_target(model, x):
    sg = SmoothGrad(model, n_samples=4, noise=0.1, seed=2)
    a = sg(x, target=lambda out: out[:, 3])
    b = sg(x, target=3)
    torch.testing.assert_close(a.maps, b.maps)
    assert a.targets is None


def test_sigma_is_a_fraction_of_each_images_range(model, x):
    x = x.clone()
    x[1] *= 4
    result = SmoothGrad(model, n_samples=2, noise=0.25)(x, 0)
    flat = x.flatten(1)
    torch.testing.assert_close(result.extras["sigma"], 0.25 * (flat.amax(1) - flat.amin(1)))


@pytest.mark.parametrize("variant", ["mean", "squared", "vargrad"])
def test_internal_batch_size_does_not_change_the_result(model, x, variant):
    results = [
        SmoothGrad(
            model, n_samples=7, noise=0.2, seed=5, variant=variant, internal_batch_size=size
        )(x, 2).maps
        for size in (1, 2, 5, 21, None)
    ]
    for other in results[1:]:
        torch.testing.assert_close(other, results[0], rtol=1e-5, atol=1e-9)


def test_peak_batch_is_the_internal_batch_not_n_samples(model, x):
    with BatchSpy(model) as spy:
        SmoothGrad(model, n_samples=10, noise=0.1, internal_batch_size=4)(x)
    assert max(spy.sizes) == 4
    assert sum(spy.sizes) == 3 + 10 * 3  # one clean pass + every noisy copy, once
    with BatchSpy(model) as spy:
        SmoothGrad(model, n_samples=10, noise=0.1, internal_batch_size=1000)(x)
    assert max(spy.sizes) == 30


def test_wrapping_integrated_gradients_respects_the_memory_bound(model, x):
    with BatchSpy(model) as spy:
        result = SmoothGrad(
            model,
            base="integrated_gradients",
            n_samples=3,
            noise=0.1,
            internal_batch_size=4,
            base_options={"steps": 5},
        )(x, 1)
    assert max(spy.sizes) <= 4
    assert result.maps.shape == x.shape and torch.isfinite(result.maps).all()


@pytest.mark.parametrize("variant", ["mean", "vargrad"])
def test_a_batch_equals_single_calls_with_the_same_seed(model, x, variant):
    # one draw per sample, shared by the batch: an image's map does not depend on its batch
    sg = SmoothGrad(
        model, base="guided", n_samples=5, noise=0.2, seed=3, variant=variant, internal_batch_size=4
    )
    batch = sg(x, target=[0, 2, 4]).maps
    singles = torch.cat([sg(x[i : i + 1], target=t).maps for i, t in enumerate([0, 2, 4])])
    torch.testing.assert_close(batch, singles, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(batch[0], batch[1])  # different images, different maps


def test_seeds(model, x):
    a = SmoothGrad(model, n_samples=3, seed=1)(x, 0).maps
    assert torch.equal(a, SmoothGrad(model, n_samples=3, seed=1)(x, 0).maps)
    assert not torch.allclose(a, SmoothGrad(model, n_samples=3, seed=2)(x, 0).maps)
    fresh = SmoothGrad(model, n_samples=3, seed=None)
    assert not torch.allclose(fresh(x, 0).maps, fresh(x, 0).maps)
    # a generator of one's own continues its stream: equal to the int seed on first use
    g = torch.Generator().manual_seed(1)
    own = SmoothGrad(model, n_samples=3, seed=g)
    assert torch.equal(own(x, 0).maps, a)
    assert not torch.equal(own(x, 0).maps, a)


def test_through_attribute_and_the_registry(model, x):
    for name in ("smoothgrad", "smoothgrad_sq", "vargrad"):
        assert name in METHODS
    r = attribute(model, x, target=1, method="smoothgrad", base="deconvnet", n_samples=3)
    assert r.method == "smoothgrad" and r.maps.shape == x.shape
    r = attribute(model, x, target=1, method="vargrad", n_samples=3)
    assert r.method == "vargrad" and (r.maps >= 0).all()


def test_inputs_are_not_modified(model, x):
    before = x.clone()
    SmoothGrad(model, base="gradient_x_input", n_samples=3)(x, 0)
    assert torch.equal(x, before)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"n_samples": 0}, "n_samples"),
        ({"n_samples": 2.5}, "n_samples"),
        ({"noise": -0.1}, "noise"),
        ({"noise": float("nan")}, "noise"),
        ({"variant": "median"}, "variant"),
        ({"base": "occlusion"}, "gradient methods"),
        ({"base": "gradiant"}, "did you mean 'gradient'"),
        ({"base": 3}, "base must be"),
        ({"seed": "abc"}, "seed"),
        ({"internal_batch_size": 0}, "internal_batch_size"),
        ({"base_options": {"bogus": 1}}, "bad base_options"),
    ],
)
def test_bad_options(model, options, match):
    with pytest.raises(MethodError, match=match):
        SmoothGrad(model, **options)


def test_named_variant_entries_refuse_another_variant(model):
    with pytest.raises(MethodError, match="use method 'smoothgrad'"):
        VarGrad(model, variant="mean")


def test_bad_target(model, x):
    with pytest.raises(TargetError):
        SmoothGrad(model, n_samples=2)(x, target=99)


@pytest.mark.parametrize("name", ["smoothgrad_sq", "vargrad"])
def test_half_precision_model_accumulates_in_float32(name):
    # gradients of a few 1e-4: their squares are near float16's smallest subnormal (6e-8), so
    # sums taken in float16 came out all zeros (squared) or one subnormal step (vargrad)
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)
    ).eval()
    with torch.no_grad():
        net[3].weight.mul_(0.02)
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    want = METHODS[name](net, n_samples=8, noise=0.1)(x, target=[0, 1]).maps
    half, xh = copy.deepcopy(net).half(), x.half()
    before = xh.clone()
    got = METHODS[name](half, n_samples=8, noise=0.1)(xh, target=[0, 1]).maps
    assert got.dtype == torch.float32  # the float32 sums are returned as they are
    assert torch.equal(xh, before)
    cos = nn.functional.cosine_similarity(got.flatten(1).double(), want.flatten(1).double())
    assert cos.min() > 0.999, cos  # float16 gradients: 0.9995; float16 sums: 0.3-0.98
    torch.testing.assert_close(got.flatten(1).amax(1), want.flatten(1).amax(1), rtol=0.01, atol=0)


def test_defaults_are_the_documented_ones():
    """n_samples=50, noise=0.15 (Smilkov et al.; benchmarks/results/cpu-smoothness.md), stated
    in the docstring and the README, and the CLI does not lower them."""
    import inspect

    from flashtorch import cli
    from flashtorch.saliency import IntegratedGradients

    from .conftest import ROOT

    params = inspect.signature(SmoothGrad.__init__).parameters
    assert (params["n_samples"].default, params["noise"].default) == (50, 0.15)
    assert inspect.signature(IntegratedGradients.__init__).parameters["steps"].default == 50
    doc = " ".join(SmoothGrad.__doc__.split())
    assert "(default 50, the paper's)" in doc and "(default 0.15," in doc
    assert "(default 50," in " ".join(IntegratedGradients.__doc__.split())
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert "`n_samples=50` and `noise=0.15`" in readme and "`steps=50`" in readme
    for name in ("smoothgrad", "smoothgrad_sq", "vargrad", "integrated_gradients"):
        assert cli.method_options([name], {}, None)[name] == {}
    sg = SmoothGrad(nn.Linear(2, 2))
    assert (sg.n_samples, sg.noise) == (50, 0.15)
