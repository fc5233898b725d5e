"""Occlusion: hand-computed drops, a slow loop reference, fills, batching, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from flashtorch import attribute
from flashtorch.errors import InputError, MethodError
from flashtorch.saliency import Occlusion
from flashtorch.saliency.occlusion import window_starts

from .conftest import BatchSpy


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 6, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(6 * 5 * 5, 4),
        )

    def forward(self, x):
        return self.body(x)


@pytest.fixture
def net():
    torch.manual_seed(0)
    return Net().eval()


@pytest.fixture
def x():
    return torch.randn(3, 3, 10, 10, generator=torch.Generator().manual_seed(2))


def slow_reference(model, x, target, window, stride, fill):
    """Loop over windows one by one: drop of the target score, averaged per pixel."""
    (wh, ww), (sh, sw) = window, stride
    _, _, height, width = x.shape
    with torch.no_grad():
        clean = model(x)[torch.arange(len(x)), target]
        total = torch.zeros(len(x), 1, height, width)
        count = torch.zeros(1, 1, height, width)
        top = 0
        while True:
            left = 0
            while True:
                occluded = x.clone()
                occluded[:, :, top : top + wh, left : left + ww] = fill
                drop = clean - model(occluded)[torch.arange(len(x)), target]
                total[:, :, top : top + wh, left : left + ww] += drop.view(-1, 1, 1, 1)
                count[:, :, top : top + wh, left : left + ww] += 1
                if left + ww >= width:
                    break
                left += sw
            if top + wh >= height:
                break
            top += sh
    return total / count


def test_window_starts_by_hand():
    assert window_starts(10, 4, 4) == [0, 4, 8]  # the last window is cut at the border
    assert window_starts(8, 4, 4) == [0, 4]
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(5, 5, 1) == [0]
    assert window_starts(7, 3, 1) == [0, 1, 2, 3, 4]


def test_one_pixel_window_on_a_linear_model_is_w_times_x():
    # S(x) = sum(w * x) + b and fill 0: hiding pixel (i, j) drops S by sum_c w_c x_c(i, j).
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3))
    x = torch.randn(2, 3, 4, 4)
    r = Occlusion(linear, window=1, stride=1)(x, target=[2, 0])
    w = linear[1].weight[[2, 0]].view(2, 3, 4, 4)
    torch.testing.assert_close(r.maps, (w * x).sum(1, keepdim=True), rtol=1e-5, atol=1e-6)


def test_two_by_two_windows_by_hand():
    # S(x) = sum of channel 0, a 2x2 input, window 1x2 stride 1x1 (two positions: the rows).
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    x = torch.ones(1, 1, 2, 2)
    r = Occlusion(model, window=(1, 2), stride=1)(x, target=0)
    expected = torch.tensor([[[[3.0, 3.0], [7.0, 7.0]]]])  # row drops 1+2 and 3+4
    torch.testing.assert_close(r.maps, expected)
    r = Occlusion(model, window=(2, 1), stride=1, fill=1.0)(x, target=0)
    assert torch.equal(r.maps, torch.zeros(1, 1, 2, 2))  # the fill equals the image


@pytest.mark.parametrize(
    ("window", "stride"), [((3, 3), (2, 2)), ((4, 2), (4, 1)), ((10, 10), (1, 1)), ((3, 5), (3, 5))]
)
def test_matches_the_slow_loop(net, x, window, stride):
    target = torch.tensor([0, 3, 1])
    r = Occlusion(net, window=window, stride=stride, fill=0.25, internal_batch_size=7)(x, target)
    ref = slow_reference(net, x, target, window, stride, 0.25)
    torch.testing.assert_close(r.maps, ref, rtol=1e-5, atol=1e-6)
    assert r.maps.shape == (3, 1, 10, 10)


def test_fills(net, x):
    target = 1
    mean_fill = x.mean((2, 3), keepdim=True)
    by_name = Occlusion(net, window=4, stride=2, fill="mean")(x, target).maps
    by_tensor = Occlusion(net, window=4, stride=2, fill=mean_fill)(x, target).maps
    torch.testing.assert_close(by_name, by_tensor)
    assert not torch.allclose(by_name, Occlusion(net, window=4, stride=2)(x, target).maps)
    blurred = Occlusion(net, window=4, stride=2, fill="blur", blur_sigma=1.0)(x, target).maps
    assert torch.isfinite(blurred).all()
    # a fill equal to the image changes nothing (up to batch-size-dependent conv rounding)
    same = Occlusion(net, window=3, fill=x.clone())(x, 0).maps
    torch.testing.assert_close(same, torch.zeros(3, 1, 10, 10), rtol=0, atol=1e-6)


def test_default_stride_is_half_the_window(net, x):
    torch.testing.assert_close(
        Occlusion(net, window=4)(x, 2).maps, Occlusion(net, window=4, stride=2)(x, 2).maps
    )
    assert Occlusion(net, window=(5, 1)).stride == (2, 1)


def test_callable_target_equals_index_target(net, x):
    a = Occlusion(net, window=4, stride=3)(x, target=lambda out: out[:, 2])
    b = Occlusion(net, window=4, stride=3)(x, target=2)
    torch.testing.assert_close(a.maps, b.maps)
    assert a.targets is None and torch.equal(b.targets, torch.tensor([2, 2, 2]))


def test_default_target_is_the_prediction(net, x):
    r = attribute(net, x, method="occlusion", window=5, stride=5)
    assert torch.equal(r.targets, net(x).argmax(1))
    torch.testing.assert_close(r.scores, net(x).amax(1))


def test_batch_equals_singles(net, x):
    occ = Occlusion(net, window=3, stride=2)
    batch = occ(x, target=[2, 0, 3]).maps
    for i, t in enumerate([2, 0, 3]):
        torch.testing.assert_close(
            batch[i : i + 1], occ(x[i : i + 1], target=t).maps, rtol=1e-5, atol=1e-6
        )


def test_internal_batch_size_does_not_change_the_result_and_bounds_the_batch(net, x):
    reference = Occlusion(net, window=3, stride=2)(x, 1).maps
    for size in (1, 5, 1000):
        with BatchSpy(net) as spy:
            maps = Occlusion(net, window=3, stride=2, internal_batch_size=size)(x, 1).maps
        torch.testing.assert_close(maps, reference, rtol=1e-5, atol=1e-6)
        windows = len(window_starts(10, 3, 2)) ** 2
        assert max(spy.sizes) == min(size, windows * 3)
        assert sum(spy.sizes) == 3 + windows * 3  # the clean batch once, every copy once


def test_inputs_are_not_modified(net, x):
    before = x.clone()
    Occlusion(net, window=4, fill="blur")(x)
    assert torch.equal(x, before)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"window": 0}, "window"),
        ({"window": (3,)}, "window"),
        ({"window": (3, 2.5)}, "window"),
        ({"window": True}, "window"),
        ({"window": 4, "stride": 5}, "larger than the window"),
        ({"window": 4, "stride": (0, 1)}, "stride"),
        ({"fill": "gray"}, "unknown fill"),
        ({"fill": None}, "fill must be"),
        ({"blur_sigma": -1.0}, "blur_sigma"),
        ({"internal_batch_size": 0}, "internal_batch_size"),
    ],
)
def test_bad_options(net, options, match):
    with pytest.raises(MethodError, match=match):
        Occlusion(net, **options)


def test_window_larger_than_image(net, x):
    with pytest.raises(InputError, match="larger than the images"):
        Occlusion(net, window=(11, 2))(x)
    with pytest.raises(InputError, match="does not broadcast"):
        Occlusion(net, window=2, fill=torch.zeros(2, 3, 10, 10))(x)
