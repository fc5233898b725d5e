"""The guided / deconvnet rules on public autograd APIs: the adapter, unknown ops, pure hooks."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import flashtorch._autograd_compat as compat
import flashtorch._surgery as surgery
from flashtorch import attribute
from flashtorch._surgery import RectifierRule

from .test_saliency import KINDS, KindNet

# ---------------------------------------------------------------------------------------------
# The adapter: every private autograd read, checked against the installed PyTorch
# ---------------------------------------------------------------------------------------------


def test_autograd_internals_the_rules_read_are_where_they_look():
    problems = compat.self_check()
    assert not problems, "\n".join(problems)


def test_a_renamed_saved_attribute_fails_loudly(monkeypatch):
    probe = compat.Probe(
        "x.clamp(min=0)", lambda x: x.clamp(min=0), "ClampBackward1", (("minimum", 0),)
    )
    monkeypatch.setattr(compat, "PROBES", (probe,))
    monkeypatch.setitem(compat.SAVED, "ClampBackward1", ("minimum",))
    (problem,) = compat.self_check()
    assert "'_saved_minimum'" in problem and "ClampBackward1" in problem
    assert f"torch {torch.__version__}" in problem and "_autograd_compat.py" in problem
    node = torch.randn(3, requires_grad=True).clamp(min=0).grad_fn
    with pytest.raises(compat.AutogradCompatError, match=r"_saved_minimum.*renamed"):
        compat.saved_scalar(node, "minimum")


def test_a_renamed_node_fails_loudly(monkeypatch):
    probe = compat.Probe("F.relu(x)", F.relu, "ReluBackward7")
    monkeypatch.setattr(compat, "PROBES", (probe,))
    (problem,) = compat.self_check()
    assert "'ReluBackward0'" in problem and "'ReluBackward7'" in problem
    assert f"torch {torch.__version__}" in problem


def test_an_unreadable_bound_at_run_time_warns_with_attribute_and_version(monkeypatch):
    real = surgery.saved_scalar
    monkeypatch.setattr(surgery, "saved_scalar", lambda node, arg: real(node, arg + "_renamed"))
    torch.manual_seed(0)
    model = KindNet("clamp(min=0)").eval()
    with pytest.warns(UserWarning, match=r"ClampBackward1.*'_saved_min_renamed'") as record:
        attribute(model, torch.randn(1, 3, 16, 16), target=0, method="guided")
    assert any(torch.__version__ in str(w.message) for w in record)


# ---------------------------------------------------------------------------------------------
# Rectifier-like ops the rule does not know: one warning per call, naming the op and the layer
# ---------------------------------------------------------------------------------------------


class FancyReLUFunction(torch.autograd.Function):
    """A user's own rectifier: the rules cannot know its backward."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x > 0)


class FancyReLU(nn.Module):
    def forward(self, x):
        return FancyReLUFunction.apply(x)


class MixedNet(nn.Module):
    """One known rectifier (nn.ReLU) and one unknown, run twice: a partial miss."""

    def __init__(self, unknown: nn.Module | None = None, functional=None):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.act = unknown
        self.functional = functional
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = self.relu(self.c1(x))
        x = self.act(x) if self.act is not None else self.functional(x)
        x = self.c2(x)
        x = self.act(x) if self.act is not None else self.functional(x)
        return self.fc(x.mean((2, 3)))


def _rule_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "does not know" in str(w.message)]


@pytest.mark.parametrize("method", ["guided", "deconvnet", "guided_gradcam"])
@pytest.mark.parametrize(
    "make,node,layer",
    [
        (lambda: MixedNet(FancyReLU()), "FancyReLUFunctionBackward", "'act' (FancyReLU)"),
        (lambda: MixedNet(nn.CELU()), "CeluBackward0", "'act' (CELU)"),
        (lambda: MixedNet(functional=F.rrelu), "RreluWithNoiseBackward0", "layer unknown"),
    ],
    ids=["custom-function", "nn.CELU", "F.rrelu"],
)
def test_unknown_rectifier_like_op_warns_once_per_call(make, node, layer, method):
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(2, 3, 8, 8)
    options = {"layer": "c2"} if method == "guided_gradcam" else {}
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        attribute(model, x, target=[0, 1], method=method, **options)
    (message,) = _rule_warnings(record)  # one warning, though the op ran twice
    assert f"{node} x2" in message and layer in message and method in message
    assert "plain gradient" in message


def test_partial_miss_still_applies_the_rule_to_known_rectifiers():
    torch.manual_seed(0)
    model = MixedNet(FancyReLU()).eval()
    x = torch.randn(2, 3, 8, 8)
    with pytest.warns(UserWarning, match="FancyReLUFunctionBackward"):
        guided = attribute(model, x, target=[0, 1], method="guided").maps
    plain = attribute(model, x, target=[0, 1], method="gradient").maps
    assert not torch.allclose(guided, plain)  # the nn.ReLU was still modified


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("method", ["guided", "deconvnet"])
def test_supported_rectifiers_raise_no_warning(kind, method):
    torch.manual_seed(0)
    model = KindNet(kind).eval()
    x = torch.randn(1, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        maps = attribute(model, x, target=0, method=method).maps
    # and the rule was applied: the map is not the plain gradient's
    plain = attribute(model, x, target=0, method="gradient").maps
    assert not torch.allclose(maps, plain)


class ClampNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        return self.fc(x.clamp(-1, 1).flatten(1))  # ClampBackward1, but not at zero


def test_smooth_activations_and_non_rectifying_clamps_are_known():
    # Known on purpose (exact gradient kept): no "does not know" warning, only "no rectifier".
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.GELU(),
        nn.SiLU(),
        nn.LeakyReLU(),
        nn.Hardtanh(-1.0, 1.0),
        nn.Flatten(),
        nn.LazyLinear(3),
    )
    model(torch.randn(1, 3, 8, 8))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        attribute(model, torch.randn(1, 3, 8, 8), target=0, method="guided")
        attribute(ClampNet(), torch.randn(1, 3, 2, 2), target=0, method="guided")
    assert _rule_warnings(record) == []


# ---------------------------------------------------------------------------------------------
# Hooks return new gradients and leave autograd's tensors alone
# ---------------------------------------------------------------------------------------------


def _rectifier_nodes(root: torch.Tensor) -> list:
    found, stack, seen = [], [root.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.name() in surgery._RECTIFIER_NODES:
            found.append(node)
        stack.extend(n for n, _ in node.next_functions)
    return found


@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
def test_hooks_do_not_modify_the_gradients_autograd_passes_them(rule):
    torch.manual_seed(0)
    model = KindNet("nn.ReLU").eval()
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    score = model(x)[:, 1].sum()
    seen = []  # (tensor autograd passed, a copy taken before the rule's hooks ran)

    def keep(grads):
        seen.extend((g, g.clone()) for g in grads if g is not None)

    nodes = _rectifier_nodes(score)
    assert len(nodes) == 2
    for node in nodes:  # registered first: they see exactly what the rule's hooks receive
        node.register_prehook(lambda grad_outputs: keep(grad_outputs))
        node.register_hook(lambda grad_inputs, grad_outputs: keep(grad_inputs))
    rule_ = RectifierRule(rule)
    rule_.attach(score)
    torch.autograd.grad(score, x)
    assert rule_.calls == 2 and len(seen) == 4
    assert any((copy < 0).any() for _, copy in seen)  # the rule had something to change
    for tensor, copy in seen:
        assert torch.equal(tensor, copy)


def test_hook_functions_return_new_tensors():
    g_in, g_out = torch.tensor([-1.0, 0.0, 2.0]), torch.tensor([-3.0, 1.0, 2.0])
    keep_in, keep_out = g_in.clone(), g_out.clone()
    (guided,) = surgery._guided_prehook((g_out,))
    (deconv,) = surgery._deconvnet_hook((g_in,), (g_out,))
    assert guided.tolist() == [0.0, 1.0, 2.0] and deconv.tolist() == [0.0, 1.0, 2.0]
    assert torch.equal(g_in, keep_in) and torch.equal(g_out, keep_out)
    assert guided is not g_out and deconv is not g_out and deconv is not g_in
