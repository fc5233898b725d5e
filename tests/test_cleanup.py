"""Generated from the registry: every method leaves the model and the inputs as it found them."""

import importlib.util

import pytest
import torch

import flashtorch
from flashtorch import METHODS, attribute
from flashtorch._surgery import hook_count
from flashtorch.errors import MethodError, TargetError

from .conftest import FAST_OPTIONS, CleanupNet, CleanupTransformer


def _snapshot(model):
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
        "grad_values": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "hooks": hook_count(model),
        "grad_mode": torch.is_grad_enabled(),
        # how attention is computed: timm's fused_attn flags, Hugging Face's implementation
        "attention": [
            (
                getattr(m, "fused_attn", None),
                getattr(getattr(m, "config", None), "_attn_implementation", None),
            )
            for m in model.modules()
        ],
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
    assert now["attention"] == snap["attention"], "fused_attn / attention implementation changed"
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


#: methods that read attention probabilities: on the CNN they must refuse with a clear error.
ATTENTION = [n for n in ALL if METHODS[n].needs_attention]


def test_attention_methods_are_registered():
    assert {"attention_rollout", "gradient_rollout"} <= set(ATTENTION)


@pytest.mark.parametrize("name", ALL)
def test_normal_run_restores_everything(name):
    model, x = _prepared_model(), _input()
    before_x, snap = x.detach().clone(), _snapshot(model)
    if name in ATTENTION:  # a CNN has no attention: a clear error, never a silent map
        with pytest.raises(MethodError, match="no self-attention ran.*gradcam"):
            attribute(model, x, target=[1, 2], method=name, **FAST_OPTIONS.get(name, {}))
    else:
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


# --- the same on tiny vision transformers (timm fused attention, torchvision's
# nn.MultiheadAttention, Hugging Face sdpa), for every registered method -----------------------

TRANSFORMERS = ("timm", "torchvision", "hf")


def _prepared_transformer(kind):
    pytest.importorskip({"timm": "timm", "torchvision": "torchvision", "hf": "transformers"}[kind])
    model = CleanupTransformer(kind)
    model.train()
    first = next(
        m for m in model.modules() if type(m).__name__ in ("Block", "EncoderBlock", "ViTLayer")
    )
    first.eval()  # mixed flags must come back exactly
    head = [p for p in model.parameters()][-1]
    head.requires_grad_(False)
    weight = [p for p in model.parameters()][-2]
    weight.grad = torch.ones_like(weight)
    first.register_forward_hook(lambda *a: None)  # the user's own hook stays
    return model


@pytest.fixture(scope="module")
def fused_defaults():
    """The attention flags as built: timm fused on, Hugging Face in sdpa (else the test is void)."""
    if importlib.util.find_spec("timm"):
        timm_model = CleanupTransformer("timm")
        assert all(m.fused_attn for m in timm_model.modules() if hasattr(m, "fused_attn"))
    if importlib.util.find_spec("transformers"):
        assert CleanupTransformer("hf").net.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("kind", TRANSFORMERS)
@pytest.mark.parametrize("name", ALL)
def test_transformer_normal_run_restores_everything(name, kind, fused_defaults):
    model, x = _prepared_transformer(kind), _input()
    before_x, snap = x.detach().clone(), _snapshot(model)
    result = attribute(model, x, target=[1, 2], method=name, **FAST_OPTIONS.get(name, {}))
    assert result.maps.shape[0] == 2 and result.maps.shape[-2:] == (16, 16)
    assert torch.isfinite(result.maps).all()
    _assert_same(model, snap)
    _check_input(x, before_x)


@pytest.mark.parametrize("kind", TRANSFORMERS)
@pytest.mark.parametrize("name", ALL)
def test_transformer_bad_target_restores_everything(name, kind, fused_defaults):
    model, x = _prepared_transformer(kind), _input()
    before_x, snap = x.detach().clone(), _snapshot(model)
    with pytest.raises(TargetError):
        attribute(model, x, target=99, method=name, **FAST_OPTIONS.get(name, {}))
    _assert_same(model, snap)
    _check_input(x, before_x)


@pytest.mark.parametrize("kind", TRANSFORMERS)
@pytest.mark.parametrize("name", ALL)
def test_transformer_raising_module_restores_everything(name, kind, fused_defaults):
    model, x = _prepared_transformer(kind), _input()
    before_x = x.detach().clone()
    model.armed = True
    snap = _snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        attribute(model, x, target=1, method=name, **FAST_OPTIONS.get(name, {}))
    _assert_same(model, snap)
    _check_input(x, before_x)


# --- models that edit their input in place; eval_mode=False and BatchNorm statistics ---------

CNN = [n for n in ALL if n not in ATTENTION]


class InPlaceNet(torch.nn.Module):
    """CleanupNet behind a first op that edits the input in place (``inplace=False``: the same
    function on a new tensor, the reference)."""

    def __init__(self, inplace: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inner = CleanupNet().eval()
        self.inplace = inplace

    def forward(self, x):
        x = x.mul_(2).relu_() if self.inplace else (x * 2).relu()
        return self.inner(x)


@pytest.mark.parametrize("name", CNN)
def test_a_model_that_edits_its_input_leaves_the_callers_tensor_alone(name):
    options = FAST_OPTIONS.get(name, {})
    x = _input()
    before_x = x.detach().clone()
    result = attribute(InPlaceNet(), x, target=[1, 2], method=name, **options)
    _check_input(x, before_x)
    # the maps of what the model computes from its input: the same as the out-of-place model's
    expected = attribute(
        InPlaceNet(inplace=False), before_x.clone(), target=[1, 2], method=name, **options
    )
    torch.testing.assert_close(result.maps, expected.maps)
    with pytest.raises(TargetError):  # also when the call then raises
        attribute(InPlaceNet(), x, target=99, method=name, **options)
    _check_input(x, before_x)
    plain = before_x.clone()  # a tensor that does not require grad
    attribute(InPlaceNet(), plain, target=[1, 2], method=name, **options)
    assert torch.equal(plain, before_x)


@pytest.mark.parametrize("name", CNN)
def test_eval_mode_false_restores_batchnorm_statistics(name):
    import warnings

    model, x = _prepared_model(), _input()
    bn = model.features[1]
    bn.train()  # a training-mode forward updates its running statistics
    buffers = [bn.running_mean, bn.running_var, bn.num_batches_tracked]
    snap = _snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the active-dropout warning
        attribute(
            model, x, target=[1, 2], method=name, eval_mode=False, **FAST_OPTIONS.get(name, {})
        )
    _assert_same(model, snap)  # running_mean, running_var, num_batches_tracked included
    now = [bn.running_mean, bn.running_var, bn.num_batches_tracked]
    assert all(a is b for a, b in zip(now, buffers)), "buffer objects replaced"
