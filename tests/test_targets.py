"""Targets are normalised once, at a call's entry, into one ``ResolvedTarget``.

Accepted kinds give the scores the model's logits hold for them (what every release so far
gave); refused kinds raise ``TargetError`` before the model runs; a class beyond the model's
width is refused once the output is known, before any backward pass and any map.
"""

from __future__ import annotations

import typing

import numpy as np
import pytest
import torch
from torch import nn

from flashtorch import METHODS, Backprop
from flashtorch.errors import TargetError

from .conftest import CNN_METHODS, FAST_OPTIONS
from .test_cli import COFFEE, assert_one_line_error, call, models_module  # noqa: F401

TABBY = 281  # ImageNet's "tabby, tabby cat"

# a tiny random model's CAMs are often zero for some image: not what these tests look at
pytestmark = pytest.mark.filterwarnings("ignore:.*are all zero:UserWarning")


class Counting(nn.Module):
    """A small CNN that counts its forward calls and the backward passes through its features."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, classes)
        self.forwards = 0
        self.backwards = 0

    def _backward(self, grad: torch.Tensor) -> None:
        self.backwards += 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forwards += 1
        h = self.relu(self.conv2(self.relu(self.conv1(x))))
        features = self.pool(h).flatten(1)
        if features.requires_grad:
            features.register_hook(self._backward)
        return self.fc(features)


def images(batch: int = 3) -> torch.Tensor:
    return torch.rand(batch, 3, 12, 12, generator=torch.Generator().manual_seed(1))


def method(name: str, model: nn.Module):
    return METHODS[name](model, **FAST_OPTIONS.get(name, {}))


# --------------------------------------------------------------------------------------------
# Accepted kinds: the scores the logits hold for them
# --------------------------------------------------------------------------------------------

ACCEPTED = {
    "int": (2, [2, 2, 2]),
    "numpy int": (np.int64(4), [4, 4, 4]),
    "list": ([1, 0, 4], [1, 0, 4]),
    "tuple": ((3, 3, 1), [3, 3, 1]),
    "one in a list": ([3], [3, 3, 3]),
    "range": (range(3), [0, 1, 2]),
    "tensor": (torch.tensor([4, 2, 0]), [4, 2, 0]),
    "int32 tensor": (torch.tensor([1, 2, 3], dtype=torch.int32), [1, 2, 3]),
    "0-d tensor": (torch.tensor(1), [1, 1, 1]),
    "one-element tensor": (torch.tensor([2]), [2, 2, 2]),
    "numpy array": (np.array([0, 1, 2]), [0, 1, 2]),
    "list of 0-d tensors": ([torch.tensor(1), torch.tensor(2), torch.tensor(0)], [1, 2, 0]),
}


@pytest.mark.parametrize("kind", list(ACCEPTED))
@pytest.mark.parametrize("name", ["gradient", "gradcam", "smoothgrad", "occlusion"])
def test_class_targets_explain_the_logits_they_name(kind, name):
    target, expected = ACCEPTED[kind]
    model = Counting()
    x = images()
    logits = model(x).detach()
    res = method(name, model)(x, target)
    assert res.targets.tolist() == expected
    torch.testing.assert_close(res.scores, logits.gather(1, torch.tensor(expected)[:, None])[:, 0])


@pytest.mark.parametrize("name", ["gradient", "gradcam", "smoothgrad", "integrated_gradients"])
def test_predicted_class_and_callable_targets(name):
    model = Counting()
    x = images()
    logits = model(x).detach()
    res = method(name, model)(x, None)
    assert res.targets.tolist() == logits.argmax(1).tolist()
    torch.testing.assert_close(res.scores, logits.max(1).values)
    res = method(name, model)(x, lambda out: out[:, 1] - out[:, 0])
    assert res.targets is None
    torch.testing.assert_close(res.scores, logits[:, 1] - logits[:, 0])


@pytest.mark.parametrize("name", ["gradient", "scorecam", "integrated_gradients"])
def test_class_names_resolve_on_an_imagenet_sized_model(name):
    model = Counting(classes=1000)
    x = images()
    logits = model(x).detach()
    for target, expected in [("tabby", [TABBY] * 3), (["tabby", 3, "tabby"], [TABBY, 3, TABBY])]:
        res = method(name, model)(x, target)
        assert res.targets.tolist() == expected
        torch.testing.assert_close(
            res.scores, logits.gather(1, torch.tensor(expected)[:, None])[:, 0]
        )


def test_per_image_targets_follow_their_rows_through_the_sampling_methods():
    # SmoothGrad and IG without the clean pass slice the targets by rows: every image gets its
    # own class, in every internal batch
    model = Counting()
    x = images(3)
    for name, options in [
        ("smoothgrad", {"n_samples": 3, "internal_batch_size": 2, "clean_pass": False, "seed": 0}),
        ("integrated_gradients", {"steps": 3, "internal_batch_size": 2, "clean_pass": False}),
    ]:
        together = METHODS[name](model, **options)(x, [4, 0, 2])
        for i, t in enumerate([4, 0, 2]):
            alone = METHODS[name](model, **options)(x, [t, t, t])
            torch.testing.assert_close(together.maps[i], alone.maps[i])
        assert together.targets.tolist() == [4, 0, 2]


def test_the_callers_target_tensor_is_not_aliased():
    t = torch.tensor([1, 2, 3])
    res = METHODS["smoothgrad"](Counting(), n_samples=2)(images(), t)
    assert t.tolist() == [1, 2, 3]
    assert res.targets.data_ptr() != t.data_ptr()


# --------------------------------------------------------------------------------------------
# Refused kinds: TargetError before the forward pass
# --------------------------------------------------------------------------------------------

REFUSED = {
    "float": (3.7, "whole class index"),
    "whole float": (3.0, "whole class index"),
    "numpy float64": (np.float64(2.0), "whole class index"),
    "numpy float32": (np.float32(2.0), "whole class index"),
    "float in a list": ([1, 2.5, 0], "whole class index"),
    "bool": (True, "boolean"),
    "numpy bool": (np.bool_(True), "boolean"),
    "bool in a list": ([1, False, 0], "boolean"),
    "negative": (-1, "out of range"),
    "negative beyond -C": (-7, "out of range"),
    "negative in a tensor": (torch.tensor([0, -2, 1]), "out of range"),
    "too few": ([1, 2], "2 targets for a batch of 3"),
    "too many": (torch.tensor([1, 2, 3, 4]), "4 targets for a batch of 3"),
    "empty": ([], "0 targets for a batch of 3"),
    "2-D tensor": (torch.tensor([[1], [2], [0]]), "0-D or 1-D"),
    "float tensor": (torch.tensor([1.0, 2.0, 0.0]), "integer class indices"),
    "bool tensor": (torch.tensor([True, False, True]), "integer class indices"),
    "float numpy array": (np.array([1.0, 2.0, 0.0]), "integer class indices"),
    "unknown name": ("no such class at all", "no such class"),
    "a set": ({1, 2, 3}, "got set"),
}


@pytest.mark.parametrize("kind", list(REFUSED))
@pytest.mark.parametrize("name", CNN_METHODS)
def test_refused_targets_fail_before_the_forward_pass(name, kind):
    target, message = REFUSED[kind]
    model = Counting(classes=1000 if kind == "unknown name" else 5)
    m = method(name, model)
    with pytest.raises(TargetError, match=message):
        m(images(), target)
    assert model.forwards == 0


@pytest.mark.parametrize("target", [5, [0, 9, 1], torch.tensor([7]), "tabby"])
@pytest.mark.parametrize("name", CNN_METHODS)
def test_classes_beyond_the_model_fail_before_any_backward(name, target):
    model = Counting(classes=5)
    with pytest.raises(TargetError, match="out of range|1000 outputs"):
        method(name, model)(images(), target)
    assert model.backwards == 0


def test_target_error_is_still_a_value_error():
    with pytest.raises(ValueError):
        METHODS["gradient"](Counting())(images(), 3.7)


def test_backprop_refuses_a_float_target_before_running_the_model():
    model = Counting()
    with pytest.raises(TargetError, match="whole class index"):
        Backprop(model).calculate_gradients(images(1), 3.7)
    assert model.forwards == 0


def test_metrics_refuse_bad_targets_before_running_the_model():
    from flashtorch.metrics import deletion, model_randomization

    model = Counting()
    x = images(2)
    with pytest.raises(TargetError, match="whole class index"):
        deletion(model, x, torch.rand(2, 12, 12), target=3.7)
    with pytest.raises(TargetError, match="2-D|0-D or 1-D"):
        model_randomization(model, x, target=torch.tensor([[1], [2]]), method="gradient")
    assert model.forwards == 0


def test_graphed_checks_targets_before_any_forward_pass():
    import flashtorch

    model = Counting()
    g = flashtorch.graphed(METHODS["gradient"](model))
    for bad in (3.7, True, [1, 2], torch.tensor([0.5, 1.0, 2.0])):
        with pytest.raises(TargetError):
            g._indices(bad, images())
    assert model.forwards == 0
    with pytest.raises(TargetError, match="class 5 is out of range"):
        g._indices([0, 5, 1], images())  # needs the width: one probe forward, no replay


# --------------------------------------------------------------------------------------------
# The one internal type
# --------------------------------------------------------------------------------------------


def test_the_public_alias_names_only_user_facing_kinds():
    import flashtorch._targets as targets

    assert not hasattr(targets, "CheckedIndices")
    kinds = typing.get_args(targets.Target)
    assert type(None) in kinds and int in kinds and str in kinds and torch.Tensor in kinds
    assert targets.ResolvedTarget not in kinds
    assert not any("Checked" in str(k) or "Resolved" in str(k) for k in kinds)


def test_resolved_target_scores_indices_and_rows():
    from flashtorch._targets import ResolvedTarget

    logits = torch.randn(4, 6)
    t = ResolvedTarget.of([5, 0, 3, 3], 4)
    assert t.indices.tolist() == [5, 0, 3, 3] and t.high == 5
    torch.testing.assert_close(t.scores(logits), logits[torch.arange(4), t.indices])
    rows = t.rows(torch.tensor([3, 0, 0]))
    assert rows.indices.tolist() == [3, 5, 5] and rows.high == 5
    fn = ResolvedTarget.of(lambda out: out.sum(1), 4)
    assert fn.indices is None and fn.rows(torch.tensor([1])) is fn
    torch.testing.assert_close(fn.scores(logits), logits.sum(1))
    predicted = ResolvedTarget.of(None, 4)
    assert predicted.predicted and predicted.indices is None
    assert predicted.resolve(logits).indices.tolist() == logits.argmax(1).tolist()
    assert ResolvedTarget.of(t, 4) is t
    with pytest.raises(TargetError, match="4 targets for a batch of 2"):
        ResolvedTarget.of(t, 2)
    with pytest.raises(TargetError, match="class 5 is out of range: the model has 5 classes"):
        t.scores(torch.randn(4, 5))


# --------------------------------------------------------------------------------------------
# The command line: refused before anything is printed or written
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "fragment"),
    [
        ("3.7", "whole number"),
        ("1e3", "whole number"),
        ("12", "class 12 is out of range: the model has 10 classes"),
    ],
)
@pytest.mark.usefixtures("models_module")
def test_cli_refuses_a_bad_target_before_printing(capsys, tmp_path, target, fragment):
    out_dir = tmp_path / "o"
    code, out, err = call(
        capsys,
        "explain",
        COFFEE,
        "--model",
        "clitestmodels:tiny",
        "--size",
        "16",
        "--method",
        "gradient",
        "--target",
        target,
        "-o",
        str(out_dir),
    )
    assert_one_line_error(err, code, 2, fragment)
    assert out == ""
    assert not out_dir.exists() or not any(out_dir.iterdir())
