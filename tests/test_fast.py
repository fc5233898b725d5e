"""fast=True: BatchNorm folded into convolutions on a cached copy; amp=True: autocast."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flashtorch import attribute
from flashtorch._fast import FastViews, folded_copy
from flashtorch.errors import MethodError


def _randomise_bn(model):
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.2 - 0.1)
    return model.eval()


def _models():
    tv = pytest.importorskip("torchvision")
    timm = pytest.importorskip("timm")
    return {
        "resnet18": tv.models.resnet18(weights=None),
        "mobilenet_v2": tv.models.mobilenet_v2(weights=None),
        "efficientnet_lite0": timm.create_model("tf_efficientnet_lite0", pretrained=False),
    }


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "efficientnet_lite0"])
def test_fold_is_exact_and_leaves_model_untouched(name):
    torch.manual_seed(0)
    model = _randomise_bn(_models()[name])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 64, 64)
    net, folded = folded_copy(model, x)
    n_bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert folded == n_bn  # every BN in these nets directly follows a conv
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    with torch.no_grad():
        a, b = model(x), net(x)
    assert (a - b).abs().max() / a.abs().max() < 1e-4
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])
    assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_fold_skips_conv_output_used_twice():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            y = self.conv(x)
            z = self.bn(y) + y  # the raw conv output is used again: folding would be wrong
            return self.fc(z.mean((2, 3)))

    model = _randomise_bn(Branchy())
    x = torch.randn(2, 3, 8, 8)
    net, folded = folded_copy(model, x)
    assert folded == 0
    assert torch.allclose(model(x), net(x))


@pytest.mark.parametrize("method", ["gradient", "guided", "gradient_x_input", "deconvnet"])
def test_fast_maps_agree_with_exact(method):
    model = _randomise_bn(_models()["resnet18"])
    x = torch.randn(2, 3, 64, 64)
    exact = attribute(model, x, target=[3, 7], method=method).maps
    fast = attribute(model, x, target=[3, 7], method=method, fast=True).maps
    assert F.cosine_similarity(exact.flatten(), fast.flatten(), dim=0) > 0.999


def test_cache_is_rebuilt_when_weights_change(tiny_cnn):
    views = FastViews()
    x = torch.randn(1, 3, 8, 8)
    first = views.get(tiny_cnn, x, channels_last=False)
    assert views.get(tiny_cnn, x, channels_last=False) is first
    with torch.no_grad():
        tiny_cnn.fc.weight.add_(1.0)
    second = views.get(tiny_cnn, x, channels_last=False)
    assert second is not first
    assert torch.allclose(second(x), tiny_cnn(x))


def _with_bn():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 3),
    )
    return _randomise_bn(model)


def _replace_param(m):
    m[4].weight = nn.Parameter(m[4].weight.detach() * 2)


def _replace_layer(m):
    m[4] = nn.Linear(4 * 8 * 8, 3)


def _add_layer(m):
    m.append(nn.Tanh())


def _drop_buffer(m):
    m[1].running_mean = torch.full_like(m[1].running_mean, 0.3)  # a new buffer object


def _swap_param_dict(m):
    m[4]._parameters = dict(m[4]._parameters)  # same tensors, another dict object
    m[4].bias = nn.Parameter(m[4].bias.detach() + 1)


def _in_place(m):
    with torch.no_grad():
        m[0].weight.mul_(-1)


def _new_storage(m):
    m.double().float()


def _optimizer_step(m):
    m[0].weight.grad = torch.ones_like(m[0].weight)
    torch.optim.SGD(m.parameters(), lr=0.1).step()  # in place: the version counter moves


def _load_state_dict(m):
    state = {k: v * 1.5 if v.is_floating_point() else v for k, v in m.state_dict().items()}
    m.load_state_dict(state)


def _assign_data(m):
    m[0].weight.data = m[0].weight.data * 2  # new storage behind the same parameter


@pytest.mark.parametrize(
    "change",
    [
        _replace_param,
        _replace_layer,
        _add_layer,
        _drop_buffer,
        _swap_param_dict,
        _in_place,
        _new_storage,
        _optimizer_step,
        _load_state_dict,
        _assign_data,
    ],
)
def test_every_kind_of_model_change_rebuilds_the_copy(change):
    model = _with_bn()
    views = FastViews()
    x = torch.randn(2, 3, 8, 8)
    first = views.get(model, x, channels_last=False)
    assert views.get(model, x, channels_last=False) is first  # nothing changed: cached
    change(model)
    fresh = views.get(model, x, channels_last=False)
    assert fresh is not first
    torch.testing.assert_close(fresh(x), model(x), rtol=1e-4, atol=1e-5)
    assert views.get(model, x, channels_last=False) is fresh


def test_one_copy_per_layout_and_no_rebuild_when_alternating(tiny_cnn):
    # amp (channels_last) next to float32 (contiguous) on a GPU without TF32: before, each call
    # rebuilt the other's copy (measured on an H200: guided fast 76 ms instead of 10 ms)
    views = FastViews()
    x = torch.randn(1, 3, 8, 8)
    contiguous = views.get(tiny_cnn, x, channels_last=False)
    cl = views.get(tiny_cnn, x, channels_last=True)
    assert cl is not contiguous and views.copies(tiny_cnn) == 2
    for _ in range(3):
        assert views.get(tiny_cnn, x, channels_last=False) is contiguous
        assert views.get(tiny_cnn, x, channels_last=True) is cl
    with torch.no_grad():
        tiny_cnn.fc.weight.add_(1.0)
    fresh = views.get(tiny_cnn, x, channels_last=True)
    assert fresh is not cl and views.copies(tiny_cnn) == 1  # the stale copies are dropped
    assert torch.allclose(fresh(x), tiny_cnn(x), atol=1e-6)
    views.forget(tiny_cnn)
    assert views.copies(tiny_cnn) == 0 and views.folded_count(tiny_cnn) == 0


def test_copies_per_model_are_bounded(tiny_cnn):
    views = FastViews()
    views.per_model = 1
    x = torch.randn(1, 3, 8, 8)
    views.get(tiny_cnn, x, channels_last=False)
    cl = views.get(tiny_cnn, x, channels_last=True)
    assert views.copies(tiny_cnn) == 1 and views.get(tiny_cnn, x, channels_last=True) is cl


def test_amp_agrees_with_fp32():
    model = _randomise_bn(_models()["resnet18"])
    x = torch.randn(2, 3, 64, 64)
    a = attribute(model, x, target=1, method="gradient").maps
    with pytest.warns(UserWarning, match="bfloat16"):  # on the CPU: said, not silent
        b = attribute(model, x, target=1, method="gradient", amp=True).maps
    assert b.dtype == torch.float32
    assert F.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.95


def test_fast_refused_where_unsupported(tiny_cnn):
    from flashtorch.attribution import METHODS

    unsupported = [n for n, c in METHODS.items() if not c.supports_fast]
    for name in unsupported:
        with pytest.raises(MethodError, match="fast"):
            attribute(tiny_cnn, torch.randn(1, 3, 8, 8), method=name, fast=True)
    assert all(METHODS[n].supports_fast for n in ("gradient", "guided"))


@pytest.mark.parametrize(
    "method,options",
    [
        ("smoothgrad", {"n_samples": 3}),
        ("integrated_gradients", {"steps": 4}),
        ("occlusion", {"window": 16, "stride": 16}),
        ("vargrad", {"n_samples": 3}),
    ],
)
def test_fast_works_for_sampling_methods(method, options):
    model = _randomise_bn(_models()["resnet18"])
    model.train()  # fast must not run the user's model (BN statistics would move)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 64, 64)
    exact = attribute(model, x, target=[3, 7], method=method, **options).maps
    fast = attribute(model, x, target=[3, 7], method=method, fast=True, **options).maps
    assert F.cosine_similarity(exact.flatten(), fast.flatten(), dim=0) > 0.999
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert model.training


def test_clear_fast_cache_after_an_update_through_data(tiny_cnn):
    """``p.data`` updates bypass the version counter: clear_fast_cache() is the way out."""
    import flashtorch

    x = torch.randn(2, 3, 16, 16)
    before = attribute(tiny_cnn, x, target=1, method="gradient", fast=True).maps
    with torch.no_grad():
        for p in tiny_cnn.parameters():
            p.data.mul_(1.5)  # not seen by the version counters
    stale = attribute(tiny_cnn, x, target=1, method="gradient", fast=True).maps
    assert torch.equal(stale, before)  # documented limitation: the cached copy is reused
    flashtorch.clear_fast_cache(tiny_cnn)
    fresh = attribute(tiny_cnn, x, target=1, method="gradient", fast=True).maps
    exact = attribute(tiny_cnn, x, target=1, method="gradient").maps
    torch.testing.assert_close(fresh, exact, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(fresh, before)
    flashtorch.clear_fast_cache()  # every model


# --- flashtorch.fold_batchnorm: the folded copy as an object of one's own ----------------------


@pytest.mark.parametrize("name", [pytest.param("resnet18", marks=pytest.mark.slow), "sequential"])
def test_public_fold_batchnorm_traces_without_an_example(name):
    import flashtorch

    torch.manual_seed(0)
    if name == "resnet18":
        model = pytest.importorskip("torchvision").models.resnet18(weights=None)
        x = torch.randn(2, 3, 32, 32)
    else:
        model, x = _with_bn(), torch.randn(2, 3, 8, 8)
    model = _randomise_bn(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    traced = flashtorch.fold_batchnorm(model)  # torch.fx finds the pairs
    by_run = flashtorch.fold_batchnorm(model, example=x)
    for net in (traced, by_run):
        assert isinstance(net, nn.Module) and net is not model and not net.training
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
        assert not any(p.requires_grad for p in net.parameters())
        with torch.no_grad():
            a, b = model(x), net(x)
        assert (a - b).abs().max() / a.abs().max() < 1e-4
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_public_fold_batchnorm_leaves_a_conv_output_used_twice_unfolded():
    import flashtorch

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return (self.bn(y) + y).mean((2, 3))  # the raw conv output is used again

    model = _randomise_bn(Branchy())
    x = torch.randn(2, 3, 8, 8)
    for net in (flashtorch.fold_batchnorm(model), flashtorch.fold_batchnorm(model, x)):
        assert isinstance(net.bn, nn.BatchNorm2d)
        torch.testing.assert_close(net(x), model(x))


def test_public_fold_batchnorm_is_a_snapshot_and_needs_an_example_where_fx_fails():
    import flashtorch

    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                x = -x
            return self.bn(self.conv(x)).mean((2, 3))

    model = _randomise_bn(DataDependent())
    with pytest.raises(MethodError, match="example=x"):
        flashtorch.fold_batchnorm(model)
    x = torch.randn(2, 3, 8, 8)
    net = flashtorch.fold_batchnorm(model, example=x)
    assert isinstance(net.bn, nn.Identity)
    torch.testing.assert_close(net(x), model(x), rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        model.conv.weight.mul_(2)  # the copy is a snapshot: it does not follow the model
    assert not torch.allclose(net(x), model(x))
    with pytest.raises(MethodError, match="torch.nn.Module"):
        flashtorch.fold_batchnorm("resnet18")
