"""Models whose output is not a plain tensor: Hugging Face outputs, dicts, tuples.

Every registered method, ``Backprop``, the metrics, ``graphed``'s class probe and the CLI must
give exactly what they give on the same model returning its logits tensor, with index, class
name and callable targets (which read the logits). An output without logits reaches a callable
target as the model returned it; scalar ``(B,)`` outputs work with a callable target.
"""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest
import torch
from torch import nn

import flashtorch
import flashtorch.cam  # noqa: F401  (registers the CAM family)
from flashtorch import METHODS, Backprop
from flashtorch.errors import TargetError

from .conftest import CNN_METHODS, FAST_OPTIONS, small_cnn

transformers = pytest.importorskip("transformers")
from transformers.modeling_outputs import ImageClassifierOutput  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


class Returns(nn.Module):
    """``net``'s logits returned as ``kind``: hf, dict, tuple, plain, or without logits."""

    def __init__(self, net: nn.Module, kind: str) -> None:
        super().__init__()
        self.net = net
        self.kind = kind

    def forward(self, x):
        y = self.net(x)
        if self.kind == "hf":
            return ImageClassifierOutput(logits=y)
        if self.kind == "dict":
            return {"logits": y, "aux": y.mean(1)}
        if self.kind == "tuple":
            return (y, y.detach().abs())
        if self.kind == "nologits":  # a dict of heads, none called "logits"
            return {"scores": y, "extra": [y.sum(1)]}
        if self.kind == "scalar":  # one score per image, (B,)
            return y[:, 2] - y[:, 0]
        if self.kind == "column":  # the same as (B, 1)
            return (y[:, 2] - y[:, 0])[:, None]
        return y


KINDS = ["hf", "dict", "tuple"]


def _x(batch: int = 2, size: int = 16) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def _same(a, b) -> None:
    torch.testing.assert_close(a.maps, b.maps)
    for field in ("targets", "predicted", "scores"):
        x, y = getattr(a, field), getattr(b, field)
        assert (x is None) == (y is None), field
        if x is not None:
            torch.testing.assert_close(x, y)
    assert a.extras.keys() == b.extras.keys()
    for k in a.extras:
        torch.testing.assert_close(a.extras[k], b.extras[k])


def _margin(logits):
    return logits[:, 2] - logits[:, 0]


# int, name (a 1000-class model: 'goldfish' is class 1) and callable targets
TARGETS = {"int": 3, "name": "goldfish", "callable": _margin}


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", CNN_METHODS)
def test_every_method_reads_the_logits_of_any_output_kind(name, kind, target):
    net = small_cnn(classes=1000)
    options = FAST_OPTIONS.get(name, {})
    x = _x()
    expected = METHODS[name](Returns(net, "plain"), **options)(x, TARGETS[target])
    got = METHODS[name](Returns(net, kind), **options)(x, TARGETS[target])
    _same(got, expected)
    assert got.predicted is not None


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", CNN_METHODS)
def test_the_predicted_class_of_any_output_kind(name, kind):
    net = small_cnn()
    options = FAST_OPTIONS.get(name, {})
    x = _x()
    got = METHODS[name](Returns(net, kind), **options)(x)
    expected = METHODS[name](Returns(net, "plain"), **options)(x)
    _same(got, expected)
    assert torch.equal(got.predicted, net(x).argmax(1))  # the class read off the logits


CHUNKED = {  # several internal batches: the outputs are split and joined by rows
    "integrated_gradients": {"steps": 3, "internal_batch_size": 1},
    "smoothgrad": {"n_samples": 3, "internal_batch_size": 1},
    "occlusion": {"window": 8, "stride": 8, "internal_batch_size": 1},
    "scorecam": {"internal_batch_size": 1},
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(CHUNKED))
def test_chunked_methods_join_outputs_by_rows(name, kind):
    net = small_cnn()
    x = _x(3)
    got = METHODS[name](Returns(net, kind), **CHUNKED[name])(x, [1, 0, 4])
    _same(got, METHODS[name](Returns(net, "plain"), **CHUNKED[name])(x, [1, 0, 4]))
    assert got.maps.shape[0] == 3 and got.targets.tolist() == [1, 0, 4]  # rows kept in order


@pytest.mark.parametrize(
    ("name", "chunked"), [(n, False) for n in CNN_METHODS] + [(n, True) for n in CHUNKED]
)
def test_an_output_without_logits_reaches_a_callable_as_it_is(name, chunked):
    net = small_cnn()
    options = CHUNKED[name] if chunked else FAST_OPTIONS.get(name, {})
    x = _x()
    seen = []

    def on_dict(out):
        seen.append(type(out))
        return out["scores"][:, 2] - out["scores"][:, 0]

    got = METHODS[name](Returns(net, "nologits"), **options)(x, on_dict)
    expected = METHODS[name](Returns(net, "plain"), **options)(x, _margin)
    torch.testing.assert_close(got.maps, expected.maps)
    assert seen and set(seen) == {dict}
    assert got.predicted is None  # no logits: no classes to predict
    if expected.scores is not None:
        torch.testing.assert_close(got.scores, expected.scores)


@pytest.mark.parametrize("name", ["gradient", "integrated_gradients", "occlusion", "gradcam"])
def test_class_targets_on_an_output_without_logits_say_what_to_do(name):
    method = METHODS[name](Returns(small_cnn(), "nologits"), **FAST_OPTIONS.get(name, {}))
    with pytest.raises(TargetError, match="logits"):
        method(_x(), 1)
    with pytest.raises(TargetError, match="logits"):
        method(_x(), None)


SCALAR_CASES = {
    "integrated_gradients": [
        {"steps": 3},
        {"steps": 3, "rule": "riemann_left"},
        {"steps": 3, "rule": "trapezoid", "clean_pass": False},
        {"steps": 3, "baseline": "blur"},
    ],
    "occlusion": [{"window": 8, "stride": 8}],
    "smoothgrad": [
        {"n_samples": 3},
        {"n_samples": 2, "base": "integrated_gradients", "base_options": {"steps": 3}},
    ],
    "vargrad": [{"n_samples": 3}],
    "gradient": [{}],
    "gradcam": [{}],
    "scorecam": [{"internal_batch_size": 8}],
}


@pytest.mark.parametrize(
    ("name", "options"), [(n, o) for n, opts in SCALAR_CASES.items() for o in opts]
)
def test_scalar_outputs_with_a_callable_target(name, options):
    # (B,) outputs: the callable gets them as they are; the maps equal those of the same
    # score read from a (B, 1) output
    net = small_cnn()
    x = _x(3)
    got = METHODS[name](Returns(net, "scalar"), **options)(x, lambda s: s)
    expected = METHODS[name](Returns(net, "column"), **options)(x, lambda s: s[:, 0])
    torch.testing.assert_close(got.maps, expected.maps)
    # a (B,) output is one logit (a binary classifier, as FlashTorch 0.1.3 read it): class 0
    # is that logit, any other class is out of range
    by_index = METHODS[name](Returns(net, "scalar"), **options)(x, 0)
    torch.testing.assert_close(by_index.maps, expected.maps)
    with pytest.raises(TargetError, match="out of range"):
        METHODS[name](Returns(net, "scalar"), **options)(x, 1)


def test_a_callable_returning_the_wrong_shape_is_refused():
    with pytest.raises(TargetError, match=r"one score per sample, shape \(2,\)"):
        METHODS["gradient"](Returns(small_cnn(), "dict"))(_x(), lambda o: o)


@pytest.mark.parametrize("kind", KINDS)
def test_fast_paths_read_the_logits(kind):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 5),
    ).eval()
    net[1].running_mean.uniform_(-1, 1)
    net[1].running_var.uniform_(0.5, 2)
    x = _x()
    for name in ("gradient", "guided", "integrated_gradients", "smoothgrad", "occlusion"):
        options = FAST_OPTIONS.get(name, {})
        got = METHODS[name](Returns(net, kind), fast=True, **options)(x, 2)
        _same(got, METHODS[name](Returns(net, "plain"), fast=True, **options)(x, 2))
        assert got.targets.tolist() == [2] * x.shape[0]


@pytest.mark.filterwarnings("ignore:The predicted class does not equal")
@pytest.mark.parametrize("kind", KINDS)
def test_backprop_reads_the_logits(kind):
    net = small_cnn(classes=1000)
    x = _x(1)
    for guided in (False, True):
        for target in (3, "goldfish", None, _margin):
            expected = Backprop(Returns(net, "plain")).calculate_gradients(
                x, target, take_max=True, guided=guided
            )
            got = Backprop(Returns(net, kind)).calculate_gradients(
                x, target, take_max=True, guided=guided
            )
            torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("kind", KINDS)
def test_graphed_learns_the_number_of_classes_from_the_logits(kind):
    # the probe runs on any device; the replay itself needs CUDA (tests/test_cuda.py)
    g = flashtorch.graphed(METHODS["gradient"](Returns(small_cnn(classes=7), kind)))
    assert g._probe_classes(_x(1)) == 7


@pytest.mark.parametrize("kind", KINDS)
def test_metrics_read_the_logits(kind):
    from flashtorch.metrics import deletion, insertion, model_randomization

    net = small_cnn()
    x = _x()
    maps = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    plain, other = Returns(net, "plain"), Returns(net, kind)
    for curve in (deletion, insertion):
        for target, score in ((None, "probability"), (3, "logit"), (_margin, "logit")):
            a = curve(other, x, maps, target, step=64, score=score)
            b = curve(plain, x, maps, target, step=64, score=score)
            torch.testing.assert_close(a.scores, b.scores)
    for target in (None, _margin):
        a = model_randomization(other, x, target, "gradient", steps=2)
        b = model_randomization(plain, x, target, "gradient", steps=2)
        torch.testing.assert_close(a.maps, b.maps)
        torch.testing.assert_close(a.spearman, b.spearman)


# --------------------------------------------------------------------------------------------
# A Hugging Face ViT (random weights, small config)
# --------------------------------------------------------------------------------------------


def _hf_vit(classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        image_size=16,
        patch_size=4,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=classes,
        attn_implementation="eager",
    )
    return transformers.ViTForImageClassification(config).eval()


class LogitsOf(nn.Module):
    """The reference: ``model(x).logits``, a tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).logits


HF_METHODS = {
    "gradient": {},
    "gradient_x_input": {},
    "guided": {},
    "deconvnet": {},
    "integrated_gradients": {"steps": 4},
    "smoothgrad": {"n_samples": 3},
    "smoothgrad_sq": {"n_samples": 3},
    "vargrad": {"n_samples": 3},
    "occlusion": {"window": 8, "stride": 8},
}


@pytest.mark.filterwarnings("ignore:.*rectifier")  # guided/deconvnet: a GELU model
@pytest.mark.parametrize("target", [1, None, "callable"])
@pytest.mark.parametrize("name", list(HF_METHODS))
def test_hugging_face_vit(name, target):
    vit = _hf_vit()
    tgt = _margin if target == "callable" else target
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    got = METHODS[name](vit, **HF_METHODS[name])(x, tgt)
    expected = METHODS[name](LogitsOf(vit), **HF_METHODS[name])(x, tgt)
    _same(got, expected)
    assert float(got.maps.abs().amax()) > 0


@pytest.mark.filterwarnings("ignore:The predicted class does not equal")
@pytest.mark.filterwarnings("ignore:.*rectifier")
def test_hugging_face_vit_with_backprop():
    vit = _hf_vit()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for guided in (False, True):
        got = Backprop(vit).calculate_gradients(x, 1, guided=guided)
        expected = Backprop(LogitsOf(vit)).calculate_gradients(x, 1, guided=guided)
        torch.testing.assert_close(got, expected)
        assert float(got.abs().amax()) > 0


# --------------------------------------------------------------------------------------------
# The CLI
# --------------------------------------------------------------------------------------------

DICT_MODELS = """
import torch
from torch import nn


class Dict(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return {"logits": self.net(x), "aux": x.mean()}


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 10),
    )


def tiny_dict():
    return Dict(tiny())
"""


def test_cli_explain_on_a_model_returning_a_dict(capsys, tmp_path, monkeypatch):
    from .test_cli import CHELSEA, COFFEE, call, top5_lines

    folder = tmp_path / "mods"
    folder.mkdir()
    (folder / "clidictmodels.py").write_text(DICT_MODELS)
    monkeypatch.syspath_prepend(str(folder))
    sys.modules.pop("clidictmodels", None)
    outs = {}
    try:
        for spec in ("tiny", "tiny_dict"):
            out_dir = tmp_path / spec
            code, out, err = call(
                capsys,
                "explain",
                COFFEE,
                CHELSEA,
                "--model",
                f"clidictmodels:{spec}",
                "--size",
                "24",
                "--method",
                "gradient",
                "--method",
                "occlusion",
                "--target",
                "3",
                "--format",
                "npy",
                "-o",
                str(out_dir),
            )
            assert code == 0, err
            outs[spec] = (top5_lines(out), {p.name: np.load(p) for p in out_dir.iterdir()})
    finally:
        sys.modules.pop("clidictmodels", None)
    (tops, files), (tops_dict, files_dict) = outs["tiny"], outs["tiny_dict"]
    assert len(tops) == 10 and tops_dict == tops
    assert sorted(files) == sorted(files_dict) and len(files) == 4
    for name, array in files.items():
        np.testing.assert_array_equal(files_dict[name], array)


def test_cli_report_on_a_model_returning_a_dict(capsys, tmp_path, monkeypatch):
    from .test_cli import COFFEE, call

    folder = tmp_path / "mods"
    folder.mkdir()
    (folder / "clidictmodels.py").write_text(DICT_MODELS)
    monkeypatch.syspath_prepend(str(folder))
    sys.modules.pop("clidictmodels", None)
    try:
        target = tmp_path / "report.html"
        code, _, err = call(
            capsys,
            "report",
            COFFEE,
            "--model",
            "clidictmodels:tiny_dict",
            "--methods",
            "gradient,gradcam",
            "--size",
            "24",
            "-o",
            str(target),
        )
    finally:
        sys.modules.pop("clidictmodels", None)
    assert code == 0, err
    page = target.read_text(encoding="utf-8")
    assert page.count('<table class="top5">') == 1
    # the top-5 classes, read from the logits
    assert len(re.findall(r"<tr><td class=\"num idx\">[1-5]</td>", page)) == 5
