"""Bounded image decoding: hostile headers, bombs, odd files, EXIF and wide pixel formats."""

from __future__ import annotations

import io
import os
import struct
import sys
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from flashtorch import cli
from flashtorch.errors import ImageLoadError, InputError
from flashtorch.utils import apply_transforms, load_image
from flashtorch.utils.image import DEFAULT_MAX_PIXELS, probe_image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int, data: bytes = b"", colour_type: int = 0) -> bytes:
    """A PNG whose header claims ``width x height`` (8-bit), with ``data`` as its IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    idat = data or zlib.compress(b"\0" * 16)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def zero_png(width: int, height: int) -> bytes:
    """A valid grey PNG of ``width x height`` zeros, compressed row by row (a real bomb)."""
    packer = zlib.compressobj(9)
    row = b"\0" * (width + 1)  # filter byte + pixels
    parts = [packer.compress(row * 100) for _ in range(height // 100)]
    parts.append(packer.compress(row * (height % 100)))
    parts.append(packer.flush())
    return png_claiming(width, height, b"".join(parts))


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if any pixel is decoded."""

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"decoded a {self.size} image that should have been refused")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


def test_a_tiny_png_claiming_enormous_dimensions_is_refused(tmp_path, no_decoding):
    path = tmp_path / "huge.png"
    path.write_bytes(png_claiming(100_000, 100_000))
    assert path.stat().st_size < 200
    before = Image.MAX_IMAGE_PIXELS
    for source in (path, str(path), path.read_bytes(), io.BytesIO(path.read_bytes())):
        with pytest.raises(ImageLoadError, match="decompression bomb"):
            load_image(source)
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        probe_image(path)
    assert Image.MAX_IMAGE_PIXELS == before  # PIL's global limit is never changed


def test_over_the_pixel_budget_is_refused_before_decoding(tmp_path, no_decoding):
    # 108 megapixels: under PIL's own refusal (2 x 89.5M), over flashtorch's 100M budget
    path = tmp_path / "big.png"
    path.write_bytes(png_claiming(12_000, 9_000))
    assert 12_000 * 9_000 > DEFAULT_MAX_PIXELS
    with pytest.warns(Image.DecompressionBombWarning):  # PIL's warning is not silenced
        with pytest.raises(ImageLoadError, match=r"12000 x 9000 = 108.0 megapixels.*max_pixels"):
            load_image(path)


def test_a_real_decompression_bomb_is_refused(tmp_path, no_decoding):
    path = tmp_path / "bomb.png"
    path.write_bytes(zero_png(10_200, 10_000))  # 102 megapixels of zeros
    assert path.stat().st_size < 1_000_000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(ImageLoadError, match="megapixels"):
            load_image(path)
        with pytest.raises(ImageLoadError, match="megapixels"):
            probe_image(path)


def test_the_budget_is_per_call_and_from_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "small.png"
    Image.fromarray(np.full((30, 40, 3), 128, np.uint8)).save(path)
    with pytest.raises(ImageLoadError, match="over the limit of 0.001 megapixels"):
        load_image(path, max_pixels=1000)
    assert load_image(path, max_pixels=1200).size == (40, 30)
    monkeypatch.setenv("FLASHTORCH_MAX_IMAGE_PIXELS", "1e3")
    with pytest.raises(ImageLoadError, match="FLASHTORCH_MAX_IMAGE_PIXELS"):
        load_image(path)
    assert load_image(path, max_pixels=5000).size == (40, 30)  # the argument wins
    monkeypatch.setenv("FLASHTORCH_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(InputError, match="not a number of pixels"):
        load_image(path)
    with pytest.raises(InputError, match="max_pixels"):
        load_image(path, max_pixels=0)


def test_an_elongated_image_is_refused_before_resizing(tmp_path):
    path = tmp_path / "strip.png"
    Image.new("L", (20_000, 1)).save(path)  # resized to 224 high it would be 4.5 gigapixels
    with pytest.raises(ImageLoadError, match=r"20000 x 1, 20000 times longer.*crop it"):
        load_image(path)
    with pytest.raises(ImageLoadError, match="times longer"):
        apply_transforms(str(path))
    with pytest.raises(ImageLoadError, match="times longer"):
        probe_image(path)
    with pytest.raises(ImageLoadError, match="times longer"):
        load_image(np.zeros((1, 20_000), np.uint8))
    assert load_image(path, max_aspect=30_000).size == (20_000, 1)
    assert load_image(np.zeros((2, 150), np.uint8)).size == (150, 2)  # 75:1 is fine


def test_a_huge_jpeg_is_decoded_at_a_reduced_scale(tmp_path):
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (400, 300), (200, 30, 30)).save(path, quality=95)
    with pytest.warns(UserWarning, match="decoded at 1/2 scale"):
        image = load_image(path, max_pixels=40_000)
    assert image.size == (200, 150)
    assert np.abs(np.asarray(image).astype(int) - (200, 30, 30)).max() <= 4
    assert probe_image(path, max_pixels=40_000) == (400, 300)
    with pytest.raises(ImageLoadError, match="megapixels"):
        load_image(path, max_pixels=1000)  # even 1/8 is too large


@pytest.mark.parametrize("orientation, top, bottom", [(6, "red", "blue"), (8, "blue", "red")])
def test_exif_orientation_is_applied(tmp_path, orientation, top, bottom):
    # left half red, right half blue, stored sideways with an EXIF orientation tag
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "sideways.jpg"
    Image.fromarray(arr).save(path, exif=exif.tobytes(), quality=95)
    image = load_image(path)
    assert image.size == (20, 40)  # upright: 20 wide, 40 high
    out = np.asarray(image).astype(int)
    colours = {"red": (255, 0, 0), "blue": (0, 0, 255)}
    assert np.abs(out[5, 10] - colours[top]).max() < 40
    assert np.abs(out[34, 10] - colours[bottom]).max() < 40


def test_float_tiffs_are_scaled_not_black(tmp_path):
    ramp = np.linspace(0.0, 1.0, 40 * 30, dtype=np.float32).reshape(30, 40)
    path = tmp_path / "float.tiff"
    Image.fromarray(ramp, mode="F").save(path)
    assert Image.open(path).mode == "F"
    out = np.asarray(load_image(path))[..., 0].astype(int)
    assert np.abs(out - np.round(ramp * 255)).max() <= 1
    wide = tmp_path / "wide.tiff"  # no natural range: stretched from minimum to maximum
    Image.fromarray(ramp * 4000.0 - 1000.0, mode="F").save(wide)
    out = np.asarray(load_image(wide))[..., 0].astype(int)
    assert out.min() == 0 and out.max() == 255
    assert np.abs(out - np.round(ramp * 255)).max() <= 1
    bad = ramp.copy()
    bad[0, 0] = np.nan
    Image.fromarray(bad, mode="F").save(tmp_path / "nan.tiff")
    with pytest.raises(ImageLoadError, match="NaN"):
        load_image(tmp_path / "nan.tiff")


def test_16_bit_and_32_bit_grey_images(tmp_path):
    levels = np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) % 256
    path = tmp_path / "sixteen.png"
    Image.fromarray(levels * 257).save(path)  # a 16-bit PNG spanning the 16-bit range
    out = np.asarray(load_image(path))[..., 0].astype(int)
    assert np.abs(out - levels).max() <= 1
    big = tmp_path / "int32.tiff"  # 32-bit integers beyond 16 bits: stretched
    Image.fromarray((levels.astype(np.int32) * 100_000), mode="I").save(big)
    out = np.asarray(load_image(big))[..., 0].astype(int)
    assert np.abs(out - levels).max() <= 1


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    outcome: list[BaseException | object] = []

    def read() -> None:
        try:
            outcome.append(load_image(fifo))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(timeout=10)
    if thread.is_alive():  # unblock the reader so the test run can go on
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        thread.join(timeout=10)
        pytest.fail("load_image blocked on a FIFO")
    assert isinstance(outcome[0], ImageLoadError), outcome
    assert "FIFO" in str(outcome[0])
    with pytest.raises(ImageLoadError, match="FIFO"):
        probe_image(fifo)


@pytest.mark.skipif(not Path("/dev/null").exists(), reason="no /dev/null")
def test_a_device_and_a_folder_are_refused(tmp_path):
    with pytest.raises(ImageLoadError, match="is a device"):
        load_image("/dev/null")
    with pytest.raises(ImageLoadError, match="is a folder"):
        load_image(tmp_path)
    with pytest.raises(FileNotFoundError, match="check the path"):
        load_image(tmp_path / "missing.png")


def _call(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        cli.main(list(args))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


@pytest.mark.parametrize(
    "width, height, fragment",
    [
        (100_000, 100_000, "decompression bomb"),
        (12_000, 9_000, "108.0 megapixels"),
        (30_000, 2, "times longer than wide"),
    ],
)
def test_the_command_refuses_a_bomb_in_one_line(capsys, tmp_path, width, height, fragment):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming(width, height))
    out_dir = tmp_path / "out"
    code, _, err = _call(capsys, "explain", str(path), "--out", str(out_dir))
    # PIL's large-image warning may come first, as one warning line
    lines = [line for line in err.strip("\n").splitlines() if " warning: " not in line]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("flashtorch: error: "), err
    assert fragment in lines[0] and "Traceback" not in err
    assert not out_dir.exists() or not any(out_dir.iterdir())  # nothing written


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_the_command_refuses_a_fifo(capsys, tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    code, _, err = _call(capsys, "explain", str(fifo), "--out", str(tmp_path / "out"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "FIFO" in err or "not a regular file" in err, err


def test_the_command_shows_pils_large_image_warning(capsys):
    show = cli._show_warning(False)
    show(
        "Image size (100000000 pixels) exceeds limit",
        Image.DecompressionBombWarning,
        f"{sys.prefix}{os.sep}PIL{os.sep}Image.py",
        1,
    )
    err = capsys.readouterr().err
    assert err == "flashtorch: warning: Image size (100000000 pixels) exceeds limit\n"
