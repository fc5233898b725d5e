"""The render engine and DeepDream: objectives rise, seeds reproduce, the model is restored."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from flashtorch._surgery import hook_count
from flashtorch.activmax import (
    channel,
    class_logit,
    deepdream,
    direction,
    diversity,
    l2,
    layer,
    neuron,
    render,
    total_variation,
)
from flashtorch.activmax import param as P
from flashtorch.activmax import transforms as T
from flashtorch.errors import InputError, LayerError, SharedModuleError, TargetError

from .conftest import IMAGES


class Net(nn.Module):
    """conv - bn - relu - conv - relu - pool - fc, with a call counter on the head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 12, 3, padding=1, stride=2),
            nn.ReLU(),
        )
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(12, 6)
        self.head_calls = 0

    def forward(self, x):
        x = self.features(x).mean((2, 3))
        self.head_calls += 1
        return self.head(self.drop(x))


@pytest.fixture
def net() -> Net:
    torch.manual_seed(0)
    return Net()


def _run(model, objective, param=None, steps=6, **kw):
    kw.setdefault("transforms", None)
    kw.setdefault("progress", False)
    return render(model, objective, param=param if param is not None else 24, steps=steps, **kw)


OBJECTIVES = {
    "channel": lambda: channel("features.3", 2),
    "channel_batch": lambda: channel("features.3", [0, 1, 2]),
    "neuron": lambda: neuron("features.3", 5),
    "layer": lambda: layer("features.3"),
    "class_logit": lambda: class_logit(4),
    "direction": lambda: direction("features.3", torch.linspace(-1, 1, 12)),
    "diversity": lambda: channel("features.3", 1) + 10 * diversity("features.0"),
    "neg_tv": lambda: -total_variation(),
    "neg_l2": lambda: -l2(),
}


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_each_objective_rises(net, name):
    obj = OBJECTIVES[name]()
    batch = obj.batch or (3 if name == "diversity" else 1)
    # fft images start very close to grey: start from noise so TV/L2 have something to lower
    p = P.image(24, batch, fft=False, sd=1.0) if name.startswith("neg_") else P.image(24, batch)
    images, history = _run(net, obj, param=p, steps=8)
    assert history.shape == (8, batch)
    assert history[-1].sum() > history[0].sum()
    assert images.shape == (batch, 3, 24, 24)


PARAMS = {
    "pixel": lambda: P.chain(P.pixel(24), P.sigmoid()),
    "pixel_decorrelated": lambda: P.chain(P.pixel(24), P.decorrelate(), P.sigmoid()),
    "fft": lambda: P.chain(P.fft(24), P.sigmoid()),
    "fft_decorrelated": lambda: P.image(24),
    "fft_raw": lambda: P.chain(P.fft(24)),
    "from_photo": lambda: P.image(init=torch.rand(1, 3, 24, 24, generator=torch.Generator())),
}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_objective_rises_for_each_parametrisation(net, name):
    _, history = _run(net, channel("features.3", 3), param=PARAMS[name](), steps=8)
    assert history[-1, 0] > history[0, 0]
    assert torch.all(torch.isfinite(history))


def test_objective_rises_with_standard_transforms(net):
    _, history = _run(net, channel("features.3", 3), param=32, steps=20, transforms="standard")
    assert history[-5:].mean() > history[:5].mean()


def test_images_are_valid_rgb_and_batch_follows_objective(net):
    images, history = _run(net, channel("features.3", [4, 5, 6, 7]), param=16, steps=2)
    assert images.shape == (4, 3, 16, 16) and history.shape == (2, 4)
    assert images.min() >= 0 and images.max() <= 1
    raw, _ = _run(net, channel("features.3", 0), param=P.chain(P.pixel(16, sd=5.0)), steps=1)
    assert raw.min() >= 0 and raw.max() <= 1  # clamped even without a sigmoid stage


def test_batched_render_equals_separate_renders(net):
    # Channel i on image i: the images do not interact (no transforms), so a batched run
    # equals one run per channel when each image starts from the same noise.
    start = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    both, _ = _run(
        net,
        channel("features.3", [1, 2]),
        param=P.image(init=start),
        steps=4,
        optimizer=lambda ps: torch.optim.SGD(ps, lr=0.5),
    )
    for i, c in enumerate((1, 2)):
        one, _ = _run(
            net,
            channel("features.3", c),
            param=P.image(init=start[i : i + 1]),
            steps=4,
            optimizer=lambda ps: torch.optim.SGD(ps, lr=0.5),
        )
        torch.testing.assert_close(both[i : i + 1], one, atol=1e-5, rtol=0)


def test_seeded_renders_reproduce(net):
    kw = dict(param=24, steps=5, transforms="standard")
    a = _run(net, channel("features.3", [0, 1]), seed=3, **kw)
    b = _run(net, channel("features.3", [0, 1]), seed=3, **kw)
    c = _run(net, channel("features.3", [0, 1]), seed=4, **kw)
    assert torch.equal(a.images, b.images) and torch.equal(a.history, b.history)
    assert not torch.equal(a.images, c.images)


def _snapshot(model):
    return (
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        [p.grad for p in model.parameters()],
        {k: v.clone() for k, v in model.state_dict().items()},
    )


def _assert_restored(model, before):
    training, flags, grads, state = before
    assert [m.training for m in model.modules()] == training
    assert [p.requires_grad for p in model.parameters()] == flags
    for g0, p in zip(grads, model.parameters()):
        assert p.grad is g0  # None stays None, an existing .grad is the same object
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert hook_count(model) == 0


def test_model_state_restored(net):
    net.train()
    net.features[0].weight.requires_grad_(False)
    net.head.weight.grad = torch.ones_like(net.head.weight)
    before = _snapshot(net)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator())
    net.eval()
    expected = net(x)
    net.train()
    _run(net, channel("features.3", 1) + class_logit(2), steps=3, transforms="standard")
    _assert_restored(net, before)
    assert torch.equal(net.head.weight.grad, torch.ones_like(net.head.weight))
    net.eval()
    torch.testing.assert_close(net(x), expected)


@pytest.mark.parametrize(
    "objective, error, match",
    [
        (lambda: channel("features.3", 12), InputError, r"valid indices are 0\.\.11"),
        (lambda: class_logit(6), TargetError, r"0\.\.5"),
        (lambda: channel("features.9", 0), LayerError, "features.3|features"),
        (lambda: channel("head", [0, 1]), InputError, "batch"),
    ],
)
def test_bad_objectives_raise_and_restore(net, objective, error, match):
    before = _snapshot(net)
    with pytest.raises(error, match=match):
        _run(net, objective(), param=P.image(16), steps=2)
    _assert_restored(net, before)


def test_raising_model_restores(net):
    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    net.drop = Boom()
    before = _snapshot(net)
    with pytest.raises(RuntimeError, match="boom"):
        _run(net, class_logit(0), steps=2)
    _assert_restored(net, before)


def test_forward_stops_after_the_last_needed_layer(net):
    net.head_calls = 0
    _run(net, channel("features.3", 0), steps=5)
    assert net.head_calls == 1  # only the first (checking) pass runs the head
    net.head_calls = 0
    _run(net, channel("features.3", 0) + class_logit(1), steps=5)
    assert net.head_calls == 5
    assert hook_count(net) == 0


def test_shared_module_is_refused():
    relu = nn.ReLU()
    model = nn.Sequential(nn.Conv2d(3, 4, 3), relu, nn.Conv2d(4, 4, 3), relu)
    with pytest.raises(SharedModuleError, match="ran 2 times"):
        _run(model, channel(relu, 0), normalize=None, steps=2)
    assert hook_count(model) == 0


def test_device_must_match_model(net):
    with pytest.raises(InputError, match="differs from the model's device"):
        _run(net, channel("features.3", 0), device="meta")


def test_argument_errors(net):
    with pytest.raises(InputError, match="steps"):
        _run(net, channel("features.3", 0), steps=0)
    with pytest.raises(InputError, match="param"):
        _run(net, channel("features.3", 0), param="big")
    with pytest.raises(InputError, match="normalize"):
        _run(net, channel("features.3", 0), normalize=(0.5, 0.5))
    with pytest.raises(InputError, match="objective"):
        _run(net, 3)
    with pytest.raises(InputError, match="torch.nn.Module"):
        _run(lambda x: x, channel("features.3", 0))


def test_normalize_is_applied(net):
    seen = []
    net.features[0].register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    start = torch.full((1, 3, 8, 8), 0.5)
    _run(
        net,
        class_logit(0),
        param=P.image(init=start),
        steps=1,
        normalize=((0.5, 0.25, 0.0), (0.5, 0.25, 2.0)),
    )
    torch.testing.assert_close(
        seen[0][0, :, 0, 0], torch.tensor([0.0, 1.0, 0.25]), atol=2e-3, rtol=0
    )
    net.features[0]._forward_pre_hooks.clear()


def test_callback_and_progress(net, capsys):
    calls = []
    _run(net, channel("features.3", 0), steps=3, callback=lambda s, im, v: calls.append(s))
    assert calls == [0, 1, 2]
    assert "render" not in capsys.readouterr().err
    _run(net, channel("features.3", 0), steps=3, progress=True)
    assert "render" in capsys.readouterr().err


def test_custom_callable_objective(net):
    def mean_logit(ctx):
        return ctx.output.mean(1)

    _, history = _run(net, mean_logit, steps=6)
    assert history[-1] > history[0]


def test_custom_transform(net):
    t = T.compose([T.pad(2), T.jitter(3)])
    images, history = _run(net, channel("features.3", 0), steps=4, transforms=t)
    assert history[-1] > history[0] and images.shape[-1] == 24


# ------------------------------------------------------------------------------------------
# DeepDream
# ------------------------------------------------------------------------------------------


def test_deepdream_octaves_rise_and_restore(net):
    before = _snapshot(net)
    photo = torch.rand(1, 3, 40, 60, generator=torch.Generator().manual_seed(2)) * 0.5 + 0.25
    dream = deepdream(
        net,
        photo,
        "features.3",
        octaves=3,
        octave_scale=1.5,
        steps=4,
        jitter=4,
        progress=False,
        min_size=16,
    )
    assert dream.image.shape == (1, 3, 40, 60)
    assert [tuple(o.shape[-2:]) for o in dream.octaves] == [(18, 27), (27, 40), (40, 60)]
    assert dream.history.shape == (12, 1)
    assert dream.history[-1] > dream.history[-4]  # rises within the last octave
    assert 0 <= dream.image.min() and dream.image.max() <= 1
    assert not torch.equal(dream.image, photo)
    assert photo.max() <= 0.75  # the caller's tensor is not modified
    _assert_restored(net, before)


def test_deepdream_on_a_photo_file_with_channel_objective(net):
    dream = deepdream(
        net,
        IMAGES / "coffee.jpg",
        channel("features.3", 2),
        size=48,
        octaves=2,
        steps=3,
        progress=False,
    )
    assert dream.image.shape == (1, 3, 48, 48)
    assert dream.history[-1] > dream.history[3]


def test_deepdream_seeded_and_errors(net):
    photo = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    a = deepdream(net, photo, "features.3", octaves=2, steps=2, progress=False, seed=1)
    b = deepdream(net, photo, "features.3", octaves=2, steps=2, progress=False, seed=1)
    assert torch.equal(a.image, b.image)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        deepdream(net, photo * 4 - 2, "features.3", progress=False)
    with pytest.raises(InputError, match="octave_scale"):
        deepdream(net, photo, "features.3", octave_scale=1.0, progress=False)
    with pytest.raises(LayerError):
        deepdream(net, photo, "nope", progress=False)
