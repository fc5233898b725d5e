"""Integrated Gradients: hand-computed integrals, quadrature rules, baselines, completeness."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from flashtorch import attribute
from flashtorch.errors import InputError, MethodError
from flashtorch.saliency import IntegratedGradients
from flashtorch.saliency.integrated_gradients import RULES, quadrature

from .conftest import IMAGES, BatchSpy, small_cnn


class SquareAndSum(nn.Module):
    """Two outputs per image: ``sum(x^2)`` and ``sum(x)``; IG has a closed form for both."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))  # a parameter, so it has a device

    def forward(self, x):
        flat = x.flatten(1)
        return torch.stack([(flat**2).sum(1), flat.sum(1)], 1) + self.dummy


@pytest.fixture
def net():
    return small_cnn(nn.Tanh)


@pytest.fixture
def x():
    return torch.randn(3, 3, 10, 10, generator=torch.Generator().manual_seed(3))


# --------------------------------------------------------------------------------------------
# Quadrature
# --------------------------------------------------------------------------------------------


def test_quadrature_nodes_by_hand():
    a, w = quadrature("riemann_left", 4)
    np.testing.assert_allclose(a, [0, 0.25, 0.5, 0.75])
    np.testing.assert_allclose(w, [0.25] * 4)
    a, _ = quadrature("riemann_right", 4)
    np.testing.assert_allclose(a, [0.25, 0.5, 0.75, 1])
    a, _ = quadrature("riemann_middle", 4)
    np.testing.assert_allclose(a, [0.125, 0.375, 0.625, 0.875])
    a, w = quadrature("trapezoid", 5)
    np.testing.assert_allclose(a, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(w, [0.125, 0.25, 0.25, 0.25, 0.125])
    a, w = quadrature("gausslegendre", 2)  # nodes (1 -+ 1/sqrt(3)) / 2, weights 1/2
    np.testing.assert_allclose(a, [(1 - 3**-0.5) / 2, (1 + 3**-0.5) / 2])
    np.testing.assert_allclose(w, [0.5, 0.5])
    assert quadrature("riemann_trapezoid", 5)[0].tolist() == quadrature("trapezoid", 5)[0].tolist()


@pytest.mark.parametrize("rule", RULES)
def test_quadrature_weights_sum_to_one_and_integrate(rule):
    steps = 6
    a, w = quadrature(rule, steps)
    assert math.isclose(w.sum(), 1.0, rel_tol=1e-12)
    assert ((a >= 0) & (a <= 1)).all()
    exact_degree = {"gausslegendre": 2 * steps - 1, "trapezoid": 1, "riemann_middle": 1}
    for degree in range(exact_degree.get(rule, 0) + 1):
        assert math.isclose((w * a**degree).sum(), 1 / (degree + 1), rel_tol=1e-12)


# --------------------------------------------------------------------------------------------
# Closed forms
# --------------------------------------------------------------------------------------------


def test_linear_model_gets_exactly_w_times_x_minus_baseline():
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 5 * 5, 4))
    x = torch.randn(2, 3, 5, 5)
    baseline = torch.randn(1, 3, 5, 5)
    w = linear[1].weight
    for rule in RULES:
        for steps in (2, 7):
            r = IntegratedGradients(linear, baseline=baseline, steps=steps, rule=rule)(x, [1, 3])
            expected = w[[1, 3]].view(2, 3, 5, 5) * (x - baseline)
            torch.testing.assert_close(r.maps, expected, rtol=1e-5, atol=1e-6)
            assert r.extras["delta"].abs().max() < 1e-4


def test_quadratic_model_closed_form_per_rule():
    # S(x) = sum(x^2), zero baseline: grad at alpha*x is 2*alpha*x, so
    # IG = x * sum_k w_k 2 alpha_k x = x^2 * 2 sum_k w_k alpha_k  (exact: x^2).
    model = SquareAndSum()
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    m = 8
    expected_factor = {
        "riemann_left": 1 - 1 / m,
        "riemann_right": 1 + 1 / m,
        "riemann_middle": 1.0,
        "trapezoid": 1.0,
        "gausslegendre": 1.0,
    }
    for rule, factor in expected_factor.items():
        r = IntegratedGradients(model, steps=m, rule=rule)(x, target=0)
        torch.testing.assert_close(r.maps, factor * x**2, rtol=1e-5, atol=1e-6)
        exact = (x**2).flatten(1).sum(1)
        torch.testing.assert_close(r.extras["delta"], (factor - 1) * exact, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(r.scores, exact)
        torch.testing.assert_close(r.extras["baseline_scores"], torch.zeros(2))


def test_delta_is_sum_of_attributions_minus_score_difference(net, x):
    base = torch.full((1, 3, 10, 10), 0.4)
    for rule in ("riemann_left", "riemann_middle"):  # f(x') from the path / from the clean run
        r = IntegratedGradients(net, baseline=base, steps=5, rule=rule)(x, target=[0, 1, 2])
        idx = torch.tensor([0, 1, 2])
        fx = net(x).gather(1, idx[:, None]).squeeze(1)
        fb = net(base.expand_as(x)).gather(1, idx[:, None]).squeeze(1)
        torch.testing.assert_close(r.extras["baseline_scores"], fb, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(
            r.extras["delta"], r.maps.flatten(1).sum(1) - (fx - fb), rtol=1e-5, atol=1e-6
        )


def test_completeness_improves_with_steps_on_a_nonlinear_model(net, x):
    deltas = [
        IntegratedGradients(net, steps=s, rule="riemann_right")(x, 0).extras["delta"].abs().max()
        for s in (2, 32)
    ]
    assert deltas[1] < deltas[0] / 4
    gl = IntegratedGradients(net, steps=32)(x, 0)
    gap = (gl.scores - gl.extras["baseline_scores"]).abs()
    assert (gl.extras["delta"].abs() / gap).max() < 0.02


def test_baseline_equal_to_input_gives_zero_maps(net, x):
    r = IntegratedGradients(net, baseline=x.clone(), steps=4)(x)
    assert torch.equal(r.maps, torch.zeros_like(x))


# --------------------------------------------------------------------------------------------
# Baselines
# --------------------------------------------------------------------------------------------


def test_named_baselines(net, x):
    black = IntegratedGradients(net, baseline="black").baselines(x)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(black, (-mean / std).expand_as(x))
    custom = IntegratedGradients(net, baseline="black", mean=(0.5,) * 3, std=(0.5,) * 3)
    assert torch.equal(custom.baselines(x), torch.full_like(x, -1.0))
    assert torch.equal(IntegratedGradients(net).baselines(x), torch.zeros_like(x))

    blur = IntegratedGradients(net, baseline="blur", blur_sigma=2.0)
    const = torch.full((1, 3, 10, 10), 0.7)
    torch.testing.assert_close(blur.baselines(const), const)  # blurring a constant
    blurred = blur.baselines(x)
    assert blurred.std() < x.std() / 2  # smoother
    wide = IntegratedGradients(net, baseline="blur", blur_sigma=50.0).baselines(x)
    torch.testing.assert_close(  # a very wide blur tends to each channel's mean
        wide, x.mean((2, 3), keepdim=True).expand_as(x), atol=0.15, rtol=0
    )

    uni = IntegratedGradients(net, baseline="uniform", seed=3)
    u = uni.baselines(x)
    flat, uflat = x.flatten(1), u.flatten(1)
    assert (uflat.amin(1) >= flat.amin(1)).all() and (uflat.amax(1) <= flat.amax(1)).all()
    assert torch.equal(u, uni.baselines(x))
    assert not torch.equal(u, IntegratedGradients(net, baseline="uniform", seed=4).baselines(x))

    per_channel = IntegratedGradients(net, baseline=torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1))
    assert per_channel.baselines(x)[:, 2].eq(3.0).all()
    assert IntegratedGradients(net, baseline=0.5).baselines(x).eq(0.5).all()


def test_blur_matches_scipy_gaussian_filter():
    ndimage = pytest.importorskip("scipy.ndimage")
    from flashtorch.saliency._sampling import gaussian_blur

    img = torch.randn(2, 3, 9, 13, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for sigma in (0.7, 2.0, 6.0):  # radius ceil(3 sigma) > the image for 6.0: repeated mirroring
        ours = gaussian_blur(img, sigma)
        for b in range(2):
            for c in range(3):
                ref = ndimage.gaussian_filter(
                    img[b, c].numpy(), sigma, mode="reflect", truncate=math.ceil(3 * sigma) / sigma
                )
                np.testing.assert_allclose(ours[b, c].numpy(), ref, rtol=0, atol=1e-12)


def test_black_baseline_explains_against_a_black_image(net, x):
    r = attribute(net, x, target=2, method="integrated_gradients", baseline="black", steps=16)
    black = IntegratedGradients(net, baseline="black").baselines(x)
    torch.testing.assert_close(r.extras["baseline_scores"], net(black)[:, 2], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Batching and memory
# --------------------------------------------------------------------------------------------


def test_batch_equals_singles(net, x):
    ig = IntegratedGradients(net, steps=6, baseline="blur", blur_sigma=1.5)
    batch = ig(x, target=[4, 0, 2])
    for i, t in enumerate([4, 0, 2]):
        single = ig(x[i : i + 1], target=t)
        torch.testing.assert_close(batch.maps[i : i + 1], single.maps, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(
            batch.extras["delta"][i : i + 1], single.extras["delta"], rtol=1e-4, atol=1e-6
        )


@pytest.mark.parametrize("rule", ["gausslegendre", "riemann_left"])
def test_internal_batch_size_does_not_change_the_result(net, x, rule):
    results = [
        IntegratedGradients(net, steps=7, rule=rule, internal_batch_size=size)(x, 1)
        for size in (1, 4, 21, None)
    ]
    for other in results[1:]:
        torch.testing.assert_close(other.maps, results[0].maps, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(
            other.extras["delta"], results[0].extras["delta"], rtol=1e-4, atol=1e-6
        )


@pytest.mark.parametrize(("rule", "extra"), [("gausslegendre", 3 + 1), ("riemann_left", 3)])
def test_peak_batch_is_the_internal_batch_not_steps(net, x, rule, extra):
    with BatchSpy(net) as spy:
        IntegratedGradients(net, steps=20, rule=rule, internal_batch_size=8)(x)
    assert max(spy.sizes) == 8
    # 20 path points per image, plus one clean pass ([x; x'] unless the path visits x'; the
    # zero baseline, the same for every image, is one row)
    assert sum(spy.sizes) == 20 * 3 + extra


@pytest.mark.parametrize(
    ("baseline", "rows"),
    [
        ("zero", 1),
        ("black", 1),
        (0.5, 1),
        (torch.full((3, 1, 1), 0.2), 1),
        ("blur", 3),
        ("uniform", 3),
        (torch.rand(3, 3, 10, 10), 3),
    ],
)
def test_a_baseline_shared_by_every_image_runs_once(net, x, baseline, rows):
    ig = IntegratedGradients(net, steps=4, baseline=baseline, internal_batch_size=64)
    with BatchSpy(net) as spy:
        got = ig(x, [0, 1, 2])
    assert spy.sizes[0] == 3 + rows  # the clean pass: the images, then the baselines
    # the same scores and delta as running every image's baseline (in train mode rows could
    # depend on each other, so eval_mode=False runs them all)
    full = IntegratedGradients(net, steps=4, baseline=baseline, internal_batch_size=64)
    full.shared_baseline = lambda: False  # type: ignore[method-assign]
    want = full(x, [0, 1, 2])
    torch.testing.assert_close(got.extras["baseline_scores"], want.extras["baseline_scores"])
    torch.testing.assert_close(got.extras["delta"], want.extras["delta"])
    torch.testing.assert_close(got.maps, want.maps)


def test_train_mode_runs_every_baseline(net, x):
    with BatchSpy(net) as spy:
        IntegratedGradients(net, steps=4, eval_mode=False, internal_batch_size=64)(x, 1)
    assert spy.sizes[0] == 2 * 3  # rows may depend on each other (BatchNorm in train mode)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"steps": 0}, "steps"),
        ({"steps": 3.0}, "steps"),
        ({"rule": "simpson"}, "unknown IG rule"),
        ({"rule": "riemann_lft"}, "did you mean 'riemann_left'"),
        ({"rule": "trapezoid", "steps": 1}, "steps >= 2"),
        ({"baseline": "gray"}, "unknown baseline"),
        ({"baseline": [0.0, 1.0]}, "baseline must be"),
        ({"blur_sigma": 0}, "blur_sigma"),
        ({"std": (0.2, 0.0, 0.1)}, "std > 0"),
        ({"mean": (0.5,), "std": (0.2, 0.2)}, "one value per channel"),
        ({"internal_batch_size": -1}, "internal_batch_size"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_bad_options(net, options, match):
    with pytest.raises(MethodError, match=match):
        IntegratedGradients(net, **options)


def test_bad_inputs_for_the_baseline(net, x):
    with pytest.raises(InputError, match="does not broadcast"):
        IntegratedGradients(net, baseline=torch.zeros(3, 7, 7))(x)
    with pytest.raises(InputError, match="one value per channel"):
        IntegratedGradients(net, baseline="black")(x[:, :2])


def test_unknown_option_through_attribute(net, x):
    with pytest.raises(MethodError, match="bad option"):
        attribute(net, x, method="integrated_gradients", n_steps=8)


# --------------------------------------------------------------------------------------------
# The pretrained model on a real photo
# --------------------------------------------------------------------------------------------


def test_completeness_on_pretrained_efficientnet_lite0(pretrained):
    from flashtorch.utils import apply_transforms, load_image

    x = apply_transforms(load_image(IMAGES / "coffee.jpg"))
    r = IntegratedGradients(
        pretrained, baseline="black", steps=64, rule="gausslegendre", internal_batch_size=32
    )(x)
    gap = (r.scores - r.extras["baseline_scores"]).abs()
    assert gap.min() > 1.0  # the photo scores clearly above the black image
    assert (r.extras["delta"].abs() / gap).max() < 0.02
