"""``clean_pass=False``: SmoothGrad and Integrated Gradients without the clean forward pass.

The maps must not change, the model must see exactly the expanded rows (no clean batch), and
what can still be known (targets; IG's scores from a path that visits alpha = 1; the delta when
it visits both ends) must equal the clean-pass values.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from flashtorch.errors import TargetError
from flashtorch.saliency import IntegratedGradients, SmoothGrad

from .conftest import BatchSpy, small_cnn


@pytest.fixture
def net():
    return small_cnn(nn.ReLU, classes=7)


@pytest.fixture
def x():
    return torch.randn(3, 3, 10, 10, generator=torch.Generator().manual_seed(1))


TARGETS = {
    "list": [1, 2, 3],
    "int": 4,
    "tensor": torch.tensor([5, 0, 6]),
    "one-element list": [2],
    "callable": lambda out: out[:, 3] - out[:, 1],
}

METHODS = {
    "smoothgrad": lambda m, **o: SmoothGrad(m, n_samples=3, noise=0.2, **o),
    "smoothgrad over IG": lambda m, **o: SmoothGrad(
        m, n_samples=2, base="integrated_gradients", base_options={"steps": 3}, **o
    ),
    "ig gausslegendre": lambda m, **o: IntegratedGradients(m, steps=4, **o),
    "ig trapezoid": lambda m, **o: IntegratedGradients(m, steps=4, rule="trapezoid", **o),
    "ig riemann_right": lambda m, **o: IntegratedGradients(m, steps=4, rule="riemann_right", **o),
}

#: rows the model sees per image with clean_pass=False: the expanded stream, nothing else.
ROWS_PER_IMAGE = {
    "smoothgrad": 3,
    "smoothgrad over IG": 2 * 3,
    "ig gausslegendre": 4,
    "ig trapezoid": 4,
    "ig riemann_right": 4,
}


@pytest.mark.parametrize("target", list(TARGETS), ids=list(TARGETS))
@pytest.mark.parametrize("method", list(METHODS))
def test_same_maps_and_targets_without_the_clean_pass(net, x, method, target):
    make, tgt = METHODS[method], TARGETS[target]
    ref = make(net, internal_batch_size=4)(x, tgt)
    with BatchSpy(net) as spy:
        got = make(net, internal_batch_size=4, clean_pass=False)(x, tgt)
    torch.testing.assert_close(got.maps, ref.maps, rtol=1e-5, atol=1e-7)
    if ref.targets is None:
        assert got.targets is None
    else:
        assert torch.equal(got.targets, ref.targets)
    assert sum(spy.sizes) == ROWS_PER_IMAGE[method] * x.shape[0]
    assert max(spy.sizes) <= 4


@pytest.mark.parametrize("rule", ["trapezoid", "riemann_right"])
def test_ig_scores_from_the_path_end(net, x, rule):
    ref = IntegratedGradients(net, steps=5, rule=rule)(x, [1, 2, 3])
    got = IntegratedGradients(net, steps=5, rule=rule, clean_pass=False)(x, [1, 2, 3])
    assert torch.equal(got.predicted, ref.predicted)
    torch.testing.assert_close(got.scores, ref.scores, rtol=1e-5, atol=1e-6)
    if rule == "trapezoid":  # both ends visited: S(x') too, so the delta is exact
        torch.testing.assert_close(got.extras["delta"], ref.extras["delta"], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(got.extras["baseline_scores"], ref.extras["baseline_scores"])
    else:
        assert "delta" not in got.extras


def test_without_the_clean_pass_nothing_unknown_is_reported(net, x):
    got = IntegratedGradients(net, steps=4, clean_pass=False)(x, 2)
    assert got.predicted is None and got.scores is None and "delta" not in got.extras
    got = SmoothGrad(net, n_samples=2, clean_pass=False)(x, 2)
    assert got.predicted is None and got.scores is None
    assert got.cpu().predicted is None


@pytest.mark.parametrize("method", ["smoothgrad", "ig gausslegendre"])
def test_predicted_class_target_still_runs_the_clean_pass(net, x, method):
    ref = METHODS[method](net)(x, None)
    with BatchSpy(net) as spy:
        got = METHODS[method](net, clean_pass=False)(x, None)
    torch.testing.assert_close(got.maps, ref.maps)
    assert torch.equal(got.predicted, ref.predicted)
    assert torch.equal(got.targets, net(x).argmax(1))
    # the clean pass: the 3 images, and IG's zero baseline once (shared by every image)
    assert sum(spy.sizes) == ROWS_PER_IMAGE[method] * 3 + 3 + (1 if "ig" in method else 0)


@pytest.mark.parametrize("method", ["smoothgrad", "ig gausslegendre"])
def test_wrong_number_of_targets_fails_before_any_forward(net, x, method):
    with BatchSpy(net) as spy, pytest.raises(TargetError, match="2 targets for a batch of 3"):
        METHODS[method](net, clean_pass=False)(x, [1, 2])
    assert spy.sizes == []


def test_smoothgrad_skips_the_base_clean_pass(net, x):
    """SmoothGrad over IG: IG's per-copy clean pass (S(x), S(x'), delta) would be discarded."""
    sg = SmoothGrad(net, n_samples=2, base="integrated_gradients", base_options={"steps": 3})
    assert sg.base.clean_pass is False
    with BatchSpy(net) as spy:
        sg(x, [1, 2, 3])
    assert sum(spy.sizes) == 3 + 2 * 3 * 3  # one clean batch (SmoothGrad's own), then the rows
    explicit = SmoothGrad(
        net,
        n_samples=2,
        base="integrated_gradients",
        base_options={"steps": 3, "clean_pass": True},
    )
    assert explicit.base.clean_pass is True
