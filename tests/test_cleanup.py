"""Generated from the registry: every method leaves the model and the inputs as it found them."""

import pytest
import torch

import flashtorch
from flashtorch import METHODS, attribute
from flashtorch._surgery import hook_count
from flashtorch.errors import TargetError

from .conftest import FAST_OPTIONS, CleanupNet


def _snapshot(model):
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
        "grad_values": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "hooks": hook_count(model),
        "grad_mode": torch.is_grad_enabled(),
    }


def _assert_same(model, snap):
    now = _snapshot(model)
    assert now["training"] == snap["training"], "train/eval flags changed"
    assert now["requires_grad"] == snap["requires_grad"], "requires_grad changed"
    assert all(a is b for a, b in zip(now["grads"], snap["grads"])), ".grad objects replaced"
    for a, b in zip(now["grad_values"], snap["grad_values"]):
        assert (a is None and b is None) or torch.equal(a, b), ".grad values changed"
    for k, v in snap["state"].items():
        assert torch.equal(now["state"][k], v), f"{k} changed (parameters or BN statistics)"
    assert now["hooks"] == snap["hooks"], "hooks left on the model"
    assert now["grad_mode"] == snap["grad_mode"], "grad mode not put back"
    assert torch._C._len_torch_function_stack() == 0, "a TorchFunctionMode is still active"


def _prepared_model():
    torch.manual_seed(0)
    model = CleanupNet()
    model.train()
    model.features[1].eval()  # mixed flags must come back exactly
    model.head.bias.requires_grad_(False)
    model.head.weight.grad = torch.ones_like(model.head.weight)
    model.features[0].register_forward_hook(lambda *a: None)  # the user's own hook stays
    return model


def _input():
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    x.grad = torch.full_like(x, 3.0)
    return x


def _check_input(x, before):
    assert torch.equal(x.detach(), before) and x.requires_grad
    assert torch.equal(x.grad, torch.full_like(x, 3.0))


ALL = sorted(METHODS)


def test_registry_is_populated():
    expected = {"gradient", "gradient_x_input", "guided", "deconvnet"}
    assert expected <= set(flashtorch.available_methods())


@pytest.mark.parametrize("name", ALL)
def test_normal_run_restores_everything(name):
    model, x = _prepared_model(), _input()
    before_x, snap = x.detach().clone(), _snapshot(model)
    result = attribute(model, x, target=[1, 2], method=name, **FAST_OPTIONS.get(name, {}))
    assert result.maps.shape[0] == 2 and result.maps.shape[-2:] == (16, 16)
    assert torch.isfinite(result.maps).all()
    _assert_same(model, snap)
    _check_input(x, before_x)


@pytest.mark.parametrize("name", ALL)
def test_bad_target_restores_everything(name):
    model, x = _prepared_model(), _input()
    before_x, snap = x.detach().clone(), _snapshot(model)
    with pytest.raises(TargetError):
        attribute(model, x, target=99, method=name, **FAST_OPTIONS.get(name, {}))
    _assert_same(model, snap)
    _check_input(x, before_x)


@pytest.mark.parametrize("name", ALL)
def test_raising_module_restores_everything(name):
    model, x = _prepared_model(), _input()
    before_x = x.detach().clone()
    model.armed = True
    snap = _snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        attribute(model, x, target=1, method=name, **FAST_OPTIONS.get(name, {}))
    _assert_same(model, snap)
    _check_input(x, before_x)
