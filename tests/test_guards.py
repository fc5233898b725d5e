"""Guardrails of the calling convention (flashtorch._guards), for every registered method.

Each warning comes exactly once per call (also from SmoothGrad, whose base runs many times
inside it, and from a method called inside another one), never in the normal case; every method
works under ``torch.no_grad()`` and ``torch.inference_mode()`` with the same maps.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import flashtorch.cam  # noqa: F401  (registers the CAM family)
from flashtorch import METHODS
from flashtorch._validate import no_host_sync
from flashtorch.attribution import AttributionMethod, MethodOutput
from flashtorch.errors import InputError

from .conftest import CNN_METHODS, FAST_OPTIONS, CleanupNet, small_cnn

pytestmark = pytest.mark.usefixtures("one_thread")

ZERO = "are all zero"
NONFINITE = "NaN or infinite"
DROPOUT = "dropout active"
GUARDS = (ZERO, NONFINITE, DROPOUT)


def _x(batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def _call(method, x, target=None):
    """The result and the guard warnings of one call."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = method(x, target)
    return result, [str(w.message) for w in caught if any(g in str(w.message) for g in GUARDS)]


def _count(messages: list[str], fragment: str) -> int:
    return sum(fragment in m for m in messages)


def _filled(value: float) -> nn.Module:
    net = small_cnn()
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(value)
    return net


@pytest.mark.parametrize("name", CNN_METHODS)
def test_all_zero_maps_warn_once_per_call(name):
    # every parameter zero: the score is constant, every method's map is zero
    method = METHODS[name](_filled(0.0), **FAST_OPTIONS.get(name, {}))
    for _ in range(2):
        result, messages = _call(method, _x(), 1)
        assert float(result.maps.abs().amax()) == 0
        assert _count(messages, ZERO) == 1, messages
        assert "image(s) 0, 1" in messages[0] and len(messages) == 1


@pytest.mark.parametrize("name", CNN_METHODS)
def test_non_finite_maps_warn_once_per_call(name):
    net = small_cnn()
    with torch.no_grad():
        net[0].weight[0, 0, 0, 0] = float("nan")
    method = METHODS[name](net, **FAST_OPTIONS.get(name, {}))
    for _ in range(2):
        result, messages = _call(method, _x(), 1)
        assert not bool(torch.isfinite(result.maps).all())
        assert _count(messages, NONFINITE) == 1, messages
        assert _count(messages, DROPOUT) == 0


@pytest.mark.parametrize("name", CNN_METHODS)
def test_no_guard_warning_in_the_normal_case(name):
    # class 1: every method's maps are non-zero on small_cnn (for class 2 Grad-CAM is zero on
    # one image: only negative evidence at the layer, which warns)
    method = METHODS[name](small_cnn(), **FAST_OPTIONS.get(name, {}))
    result, messages = _call(method, _x(), 1)
    assert messages == []
    assert bool((result.maps.flatten(1).abs().amax(1) > 0).all())


def test_only_the_images_with_zero_maps_are_named():
    class HalfDead(nn.Module):
        def forward(self, x):
            return torch.stack(
                [
                    x[:, 0].mean((1, 2)) * torch.tensor([1.0, 0.0])[: x.shape[0]],
                    x[:, 1].mean((1, 2)),
                ],
                1,
            )

    _, messages = _call(METHODS["gradient"](HalfDead()), _x(), 0)
    assert messages == [m for m in messages if "image(s) 1 " in m] and len(messages) == 1


@pytest.mark.parametrize("name", CNN_METHODS)
def test_active_dropout_warns_once_per_call(name):
    torch.manual_seed(0)
    net = CleanupNet().train()
    options = FAST_OPTIONS.get(name, {})
    _, messages = _call(METHODS[name](net, eval_mode=False, **options), _x(), 1)
    assert _count(messages, DROPOUT) == 1, messages
    assert "dropout(p=0.5)" in messages[0] and "eval_mode=True" in messages[0]
    assert net.training and net.drop.training  # left as it was
    # the default eval mode, or a model in eval mode: no dropout, no warning
    _, messages = _call(METHODS[name](net, **options), _x(), 1)
    assert _count(messages, DROPOUT) == 0
    net.eval()
    _, messages = _call(METHODS[name](net, eval_mode=False, **options), _x(), 1)
    assert _count(messages, DROPOUT) == 0


class Functional(nn.Module):
    """Dropout written as function calls, active in training mode only."""

    def __init__(self, p: float, how: str) -> None:
        super().__init__()
        self.net = small_cnn()
        self.p = p
        self.how = how

    def forward(self, x):
        if self.how == "F.dropout":
            x = F.dropout(x, self.p, training=self.training)
        elif self.how == "torch.dropout":
            x = torch.dropout(x, self.p, self.training)
        elif self.how == "sdpa":
            t = x.flatten(2).transpose(1, 2)
            x = x + F.scaled_dot_product_attention(
                t, t, t, dropout_p=self.p if self.training else 0.0
            ).transpose(1, 2).reshape(x.shape)
        return self.net(x)


@pytest.mark.parametrize("how", ["F.dropout", "torch.dropout", "sdpa"])
def test_functional_dropout_is_seen(how):
    method = METHODS["gradient"](Functional(0.3, how).train(), eval_mode=False)
    _, messages = _call(method, _x(), 1)
    assert _count(messages, DROPOUT) == 1, messages
    method = METHODS["gradient"](Functional(0.0, how).train(), eval_mode=False)
    _, messages = _call(method, _x(), 1)
    assert _count(messages, DROPOUT) == 0


class Nested(AttributionMethod):
    """A method whose compute calls other methods through their public calls."""

    name = "nested_test_method"

    def compute(self, inputs, target):
        a = METHODS["gradient"](self.model, eval_mode=self.eval_mode)(inputs, target)
        b = METHODS["smoothgrad"](self.model, eval_mode=self.eval_mode, n_samples=3)(inputs, target)
        return MethodOutput(a.maps + b.maps, None, a.targets, a.scores)


def test_a_method_inside_another_adds_no_warning():
    _, messages = _call(Nested(_filled(0.0)), _x(), 1)
    assert _count(messages, ZERO) == 1, messages
    _, messages = _call(Nested(CleanupNet().train(), eval_mode=False), _x(), 1)
    assert _count(messages, DROPOUT) == 1, messages


def test_the_maps_check_reads_nothing_where_syncs_are_not_allowed():
    from flashtorch._guards import maps_checkable

    method = METHODS["gradient"](_filled(0.0))
    with no_host_sync():
        _, messages = _call(method, _x(), 1)
    assert messages == []
    # maps left on a device are not read on the host (no wait for the device)
    assert maps_checkable(torch.zeros(1, 1), True)
    assert not maps_checkable(torch.zeros(1, 1), False)
    assert not maps_checkable(torch.zeros(1, 1, device="meta"), True)


def test_check_maps_on_its_own():
    from flashtorch._guards import check_maps

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_maps("m", torch.ones(3, 1, 2, 2))
        assert caught == []
        maps = torch.ones(3, 1, 2, 2)
        maps[1] = 0
        maps[2, 0, 0, 0] = float("inf")
        check_maps("m", maps, cam=True)
    text = [str(w.message) for w in caught]
    assert len(text) == 2
    assert "image(s) 2 contain NaN" in text[0]
    assert "image(s) 1 are all zero" in text[1] and "relu=False" in text[1]


# --------------------------------------------------------------------------------------------
# Gradient modes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CNN_METHODS)
def test_every_method_gives_the_same_maps_under_no_grad_and_inference_mode(name):
    options = FAST_OPTIONS.get(name, {})
    x = _x()
    expected = METHODS[name](small_cnn(), **options)(x, 2)
    with torch.no_grad():
        under_no_grad = METHODS[name](small_cnn(), **options)(x, 2)
    net = small_cnn()
    with torch.inference_mode():
        xi = x.clone()  # an inference tensor
        target = torch.tensor([2, 2])  # an inference tensor too
        under_inference = METHODS[name](net, **options)(xi, target)
        assert xi.is_inference()
    for got in (under_no_grad, under_inference):
        torch.testing.assert_close(got.maps, expected.maps)
        torch.testing.assert_close(got.scores, expected.scores)
    # inference tensors made earlier, used outside inference mode
    outside = METHODS[name](small_cnn(), **options)(xi, target)
    torch.testing.assert_close(outside.maps, expected.maps)


@pytest.mark.parametrize(
    "name", ["gradient", "integrated_gradients", "smoothgrad", "gradcam", "guided_gradcam"]
)
def test_a_model_made_under_inference_mode_gets_a_clear_error(name):
    with torch.inference_mode():
        net = small_cnn()
    flags = [p.requires_grad for p in net.parameters()]
    with pytest.raises(InputError, match="inference_mode.*torch.no_grad"):
        METHODS[name](net, **FAST_OPTIONS.get(name, {}))(_x(), 1)
    assert [p.requires_grad for p in net.parameters()] == flags
    assert not net.training


def test_gradients_stay_disabled_for_the_caller():
    with torch.no_grad():
        METHODS["gradient"](small_cnn())(_x(), 1)
        assert not torch.is_grad_enabled()
    method = METHODS["gradcam"](small_cnn())
    with torch.inference_mode():
        method(_x(), 1)
        assert torch.is_inference_mode_enabled()
