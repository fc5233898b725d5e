"""Whole-dataset runs: sources, the store, resume after a kill, refusal, torchrun, open_run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

pytest.importorskip("zarr")
pytest.importorskip("pyarrow")
pytest.importorskip("pandas")

import flashtorch  # noqa: E402
from flashtorch import attribute  # noqa: E402
from flashtorch.errors import MissingDependencyError, TargetError  # noqa: E402
from flashtorch.runs import RunConflictError, open_run  # noqa: E402
from flashtorch.runs.distributed import share  # noqa: E402
from flashtorch.utils import apply_transforms, load_image  # noqa: E402

from ._runs_model import tiny  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32
METHODS = ["gradient", "gradcam"]
TORCHRUN = Path(sys.executable).with_name("torchrun")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHTORCH_RUNS_")}
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")])
    env.update(PYTHONPATH=path, OMP_NUM_THREADS="1", **extra)
    return env


def make_folder(root: Path, n: int = 30, corrupt: bool = True) -> Path:
    """``n`` small images in nested folders whose names have spaces, plus one corrupt file."""
    rng = np.random.default_rng(0)
    folders = ["class a", "class a/deep er", "class b", "z last"]
    for i in range(n):
        sub = root / folders[i % len(folders)]
        sub.mkdir(parents=True, exist_ok=True)
        h, w = 34 + (i * 7) % 20, 34 + (i * 5) % 24
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        suffix = ".png" if i % 3 else ".jpg"
        Image.fromarray(arr).save(sub / f"image {i:02d}{suffix}")
    (root / "notes.txt").write_text("not an image, not picked up")
    if corrupt:
        (root / "class b" / "broken file.jpg").write_bytes(b"\xff\xd8\xff this is no jpeg")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("src") / "my photos")


def _cli(*args: str, env: dict[str, str] | None = None, timeout: int = 300):
    return subprocess.run(
        [sys.executable, "-m", "flashtorch", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or _env(),
        cwd=ROOT,
    )


def _run_args(folder: Path, out: Path, *extra: str) -> list[str]:
    return [
        "run",
        str(folder),
        "--method",
        ",".join(METHODS),
        "--out",
        str(out),
        "--model",
        "tests._runs_model:tiny",
        "--size",
        str(SIZE),
        "--batch-size",
        "4",
        "--workers",
        "0",
        "-q",
        *extra,
    ]


def _maps(out: Path) -> dict[str, np.ndarray]:
    run = open_run(out)
    return {m: np.asarray(run.maps[m][:]) for m in run.methods}


def _clean_run(folder: Path, out: Path) -> None:
    """The same run as ``_run_args`` describes, in this process (the model from its spec)."""
    flashtorch.run(
        "tests._runs_model:tiny",
        folder,
        METHODS,
        out=out,
        size=SIZE,
        batch_size=4,
        num_workers=0,
        progress=False,
    )


def _frame(out: Path):
    frame = open_run(out).manifest
    return frame[[c for c in frame.columns if not c.startswith("seconds_")]]


# --------------------------------------------------------------------------------------------


def test_share_is_disjoint_and_complete():
    todo = [3, 5, 8, 9, 10, 11, 20]
    for world in (1, 2, 3, 8):
        parts = [share(todo, r, world) for r in range(world)]
        assert sum(parts, []) == todo
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_folder_run_equals_direct_attribute_calls(folder, tmp_path):
    model = tiny()
    model.train()  # the run explains in eval mode and must hand the model back in train mode
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = tmp_path / "run"
    summary = flashtorch.run(
        model, folder, METHODS, out=out, size=SIZE, batch_size=8, num_workers=2, progress=False
    )
    assert model.training
    assert not model._forward_hooks and not model._forward_pre_hooks
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    assert (summary.images, summary.ok, summary.errors, summary.complete) == (31, 30, 1, True)
    run = open_run(out)
    frame = run.manifest
    files = sorted(
        (p for p in folder.rglob("*") if p.suffix in (".png", ".jpg")),
        key=lambda p: p.relative_to(folder).as_posix(),
    )
    assert list(frame["path"]) == [p.relative_to(folder).as_posix() for p in files]
    assert list(frame["index"]) == list(range(31))
    bad = frame[frame["status"] == "error"]
    assert list(bad["path"]) == ["class b/broken file.jpg"]
    assert "not a readable image" in bad["error"].iloc[0]
    assert (frame.loc[frame["status"] == "ok", "error"] == "").all()
    assert run.maps["gradient"].shape == (31, 3, SIZE, SIZE)
    assert run.maps["gradcam"].shape == (31, 1, SIZE, SIZE)

    model.eval()
    for row in frame[frame["status"] == "ok"].itertuples():
        x = apply_transforms(load_image(folder / row.path), size=SIZE)
        with torch.no_grad():
            probs = model(x).softmax(1)[0]
        assert row.predicted == int(probs.argmax()) == row.target
        assert row.score == pytest.approx(float(probs.max()), rel=1e-5)
        image = Image.open(folder / row.path)
        assert (row.width, row.height) == image.size
        side = min(image.size)  # the centre crop of the shorter side, in original pixels
        assert row.crop_width == pytest.approx(side, abs=1) and row.crop_height == pytest.approx(
            side, abs=1
        )
        for method in METHODS:
            expected = attribute(model, x, method=method).maps[0].numpy()
            # a batch of 8 against a batch of 1: float32 rounding of the convolutions
            np.testing.assert_allclose(
                run.map(method, row.index), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max()
            )
            assert getattr(row, f"seconds_{method}") > 0
    assert np.isfinite(frame.loc[frame["status"] == "ok", "agreement"]).all()


class Items(Dataset):
    """Tensor inputs with integer targets; item 3 raises."""

    def __init__(self, n: int = 9) -> None:
        gen = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 3, 24, 24, generator=gen)
        self.t = [i % 5 for i in range(n)]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        if i == 3:
            raise OSError("disk read failed")
        return self.x[i], self.t[i]


def test_dataset_source_float16_and_item_targets(tmp_path):
    model, data = tiny(), Items()
    x_before = data.x.clone()
    out = tmp_path / "ds"
    flashtorch.run(
        model,
        data,
        {"gradient": {}, "gradcam": {}},
        out=out,
        target="column",
        dtype="float16",
        batch_size=4,
        num_workers=0,
        progress=False,
    )
    assert torch.equal(data.x, x_before)  # the caller's tensors are never modified
    run = open_run(out)
    frame = run.manifest
    assert list(frame["status"]) == ["ok"] * 3 + ["error"] + ["ok"] * 5
    assert "disk read failed" in frame["error"][3]
    assert list(frame.loc[frame["status"] == "ok", "target"]) == [
        t for i, t in enumerate(data.t) if i != 3
    ]
    assert run.maps["gradient"].dtype == np.float16
    for i in (0, 4, 8):
        for method in ("gradient", "gradcam"):
            expected = (
                attribute(model, data.x[i : i + 1], target=data.t[i], method=method).maps[0].numpy()
            )
            got = run.map(method, i).astype(np.float32)
            np.testing.assert_allclose(got, expected, rtol=2e-3, atol=1e-3 * np.abs(expected).max())
    assert not run.map("gradient", 3).any()  # an error row has no map (the fill value)


def test_list_file_targets_and_folder_class_names(folder, tmp_path):
    model = tiny()
    listing = tmp_path / "list with spaces.csv"
    paths = sorted(folder.rglob("*.png"))[:5]
    listing.write_text("path,target\n" + "".join(f"{p},{i % 5}\n" for i, p in enumerate(paths)))
    flashtorch.run(
        model,
        listing,
        ["gradient"],
        out=tmp_path / "l",
        target="column",
        size=SIZE,
        num_workers=0,
        progress=False,
    )
    frame = open_run(tmp_path / "l").manifest
    assert list(frame["target"]) == [i % 5 for i in range(5)]
    assert list(frame["path"]) == [str(p) for p in paths]

    names = ["class a", "class b", "z last", "d", "e"]
    flashtorch.run(
        model,
        folder,
        ["gradient"],
        out=tmp_path / "f",
        target="folder",
        class_names=names,
        size=SIZE,
        num_workers=0,
        progress=False,
    )
    frame = open_run(tmp_path / "f").manifest
    ok = frame[frame["status"] == "ok"]
    assert list(ok["target_name"]) == [p.split("/")[0] for p in ok["path"]]

    with pytest.raises(TargetError, match="'z last'"):  # one clear error before any work
        flashtorch.run(
            model,
            folder,
            ["gradient"],
            out=tmp_path / "g",
            target="folder",
            class_names=names[:2],
            size=SIZE,
            num_workers=0,
            progress=False,
        )
    assert not (tmp_path / "g").exists()


def test_changed_command_is_refused_and_overwrite_starts_afresh(folder, tmp_path):
    model, out = tiny(), tmp_path / "run"
    kwargs = dict(out=out, size=SIZE, num_workers=0, progress=False)
    assert flashtorch.run(model, folder, ["gradient"], **kwargs).computed == 31
    assert flashtorch.run(model, folder, ["gradient"], **kwargs).computed == 0  # resumed: done
    with pytest.raises(RunConflictError, match="methods"):
        flashtorch.run(model, folder, ["gradient", "gradcam"], **kwargs)
    with pytest.raises(RunConflictError, match="dtype"):
        flashtorch.run(model, folder, ["gradient"], dtype="float16", **kwargs)
    other = tiny()
    with torch.no_grad():
        other.fc.bias.add_(1.0)
    with pytest.raises(RunConflictError, match="model_digest"):
        flashtorch.run(other, folder, ["gradient"], **kwargs)
    (out / "keep.txt").write_text("the user's file")
    summary = flashtorch.run(model, folder, ["gradcam"], overwrite=True, **kwargs)
    assert summary.computed == 31 and open_run(out).methods == ["gradcam"]
    assert (out / "keep.txt").read_text() == "the user's file"
    assert len(list((out / "progress").glob("*.jsonl"))) == 1


def _main(capsys, *args: str) -> tuple[int, str]:
    from flashtorch.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return int(exit_info.value.code), capsys.readouterr().err


def test_cli_refuses_a_changed_command_in_one_line(folder, tmp_path, capsys):
    out = tmp_path / "run"
    _clean_run(folder, out)
    code, err = _main(
        capsys,
        "run",
        str(folder),
        "--method",
        "gradient",
        "--out",
        str(out),
        "--model",
        "tests._runs_model:tiny",
        "--size",
        str(SIZE),
        "--workers",
        "0",
        "-q",
    )
    assert code == 2
    assert err.count("\n") == 1 and "holds a run made with other settings" in err
    assert "--overwrite" in err and "Traceback" not in err
    code, err = _main(capsys, "run", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x"))
    assert code == 2 and err.startswith("flashtorch: error: no folder")
    code, err = _main(
        capsys, "report", "--run", str(tmp_path / "nowhere"), "-o", str(tmp_path / "r.html")
    )
    assert code == 2 and "holds no run" in err and err.count("\n") == 1


def test_sigkill_mid_run_then_rerun_completes_exactly(folder, tmp_path):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    _clean_run(folder, clean)
    # SIGKILL at the worst moment: batch 3's maps are written, its rows are not yet logged
    proc = _cli(*_run_args(folder, killed), env=_env(FLASHTORCH_RUNS_FAULT="0:3:kill"))
    assert proc.returncode == -9, proc.stderr
    partial = open_run(killed)
    assert not partial.complete and not (killed / "manifest.parquet").exists()
    assert (partial.manifest["status"] != "missing").sum() == 12  # batches 0-2 of 4 images
    assert (partial.manifest["status"] == "missing").sum() == 19
    assert partial.maps["gradient"][12:16].any()  # written chunks, but not counted as done
    proc = _cli(*[a for a in _run_args(folder, killed) if a != "-q"])
    assert proc.returncode == 0, proc.stderr
    assert "computed 19 in" in proc.stdout and "12 from an earlier run" in proc.stdout
    frame = _frame(killed)
    assert list(frame["index"]) == list(range(31))
    records = [
        json.loads(line)
        for log in (killed / "progress").glob("*.jsonl")
        for line in log.read_text().splitlines()
    ]
    assert sorted(r["index"] for r in records) == list(range(31))  # every index exactly once
    assert frame.equals(_frame(clean))
    for method, arr in _maps(clean).items():
        np.testing.assert_array_equal(_maps(killed)[method], arr)


def test_torn_progress_line_is_recomputed(folder, tmp_path):
    out = tmp_path / "run"
    model = tiny()
    flashtorch.run(model, folder, ["gradient"], out=out, size=SIZE, num_workers=0, progress=False)
    expected = np.asarray(open_run(out).maps["gradient"][:])
    log = next((out / "progress").glob("*.jsonl"))
    lines = log.read_bytes().split(b"\n")
    log.write_bytes(b"\n".join(lines[:29]) + b"\n" + lines[29][:10])  # a torn last line
    (out / "manifest.parquet").unlink()
    open_run(out).maps["gradient"]  # noqa: B018
    summary = flashtorch.run(
        model, folder, ["gradient"], out=out, size=SIZE, num_workers=0, progress=False
    )
    assert summary.computed == 2 and summary.complete
    np.testing.assert_array_equal(np.asarray(open_run(out).maps["gradient"][:]), expected)


def test_open_run_reads_no_maps(folder, tmp_path):
    out = tmp_path / "run"
    flashtorch.run(tiny(), folder, METHODS, out=out, size=SIZE, num_workers=0, progress=False)
    for chunk in (out / "maps.zarr" / "gradient" / "c").iterdir():
        if chunk.name != "0":
            shutil.rmtree(chunk) if chunk.is_dir() else chunk.unlink()
    run = open_run(out)  # would fail or differ if it loaded the maps
    import pandas as pd
    import zarr

    assert isinstance(run.manifest, pd.DataFrame) and len(run.manifest) == 31
    assert isinstance(run.maps["gradient"], zarr.Array)
    assert run.map("gradient", 0).any() and not run.map("gradient", 1).any()
    assert run.settings["model"].endswith("Tiny") and run.complete


def test_missing_extra_names_the_pip_command(monkeypatch, folder, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "zarr", None)  # import zarr now raises ImportError
    with pytest.raises(MissingDependencyError, match=r'pip install "flashtorch\[runs\]"'):
        flashtorch.run(tiny(), folder, ["gradient"], out=tmp_path / "r", progress=False)
    monkeypatch.delitem(sys.modules, "zarr")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    code, err = _main(capsys, "run", str(folder), "--out", str(tmp_path / "c"))
    assert code == 1
    assert err.strip().endswith('pip install "flashtorch[runs]"') and err.count("\n") == 1
    assert not (tmp_path / "c").exists()


def _torchrun(*args: str, nproc: int = 2, restarts: int = 0, env=None):
    cmd = [
        str(TORCHRUN),
        "--standalone",
        f"--nproc-per-node={nproc}",
        f"--max-restarts={restarts}",
        "-m",
        "flashtorch",
        *args,
    ]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env=env or _env(), cwd=ROOT
    )


needs_torchrun = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed")


@pytest.mark.slow
@needs_torchrun
def test_torchrun_two_processes_equal_one(folder, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _clean_run(folder, one)
    proc = _torchrun(*_run_args(folder, two))
    assert proc.returncode == 0, proc.stderr[-2000:]
    logs = sorted(p.name[:9] for p in (two / "progress").glob("*.jsonl"))
    assert logs == ["rank00000", "rank00001"]  # each rank wrote its own share
    assert _frame(two).equals(_frame(one))
    for method, arr in _maps(one).items():
        np.testing.assert_array_equal(_maps(two)[method], arr)


@pytest.mark.slow
@needs_torchrun
def test_torchrun_rank_failure_is_survived_with_max_restarts(folder, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _clean_run(folder, one)
    proc = _torchrun(
        *_run_args(folder, two), restarts=1, env=_env(FLASHTORCH_RUNS_FAULT="1:1:raise")
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "injected failure" in proc.stderr  # rank 1 did fail once
    assert _frame(two).equals(_frame(one))
    for method, arr in _maps(one).items():
        np.testing.assert_array_equal(_maps(two)[method], arr)


MEMORY_SCRIPT = r"""
import sys, torch
from PIL import Image
import numpy as np
from torch.utils.data import Dataset
import flashtorch
sys.path.insert(0, {root!r})
from tests._runs_model import tiny

def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096

class Pictures(Dataset):
    def __len__(self):
        return 2000
    def __getitem__(self, i):
        if i in (200, 1999):
            seen.append(rss())
        rng = np.random.default_rng(i)
        return Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))

seen = []
flashtorch.run(tiny(), Pictures(), ["gradient", "gradcam"], out={out!r}, size=32,
               batch_size=16, num_workers=0, progress=False)
print(seen[0], seen[1])
"""


@pytest.mark.slow
def test_memory_stays_flat(tmp_path):
    code = MEMORY_SCRIPT.format(root=str(ROOT), out=str(tmp_path / "mem"))
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    at_200, at_2000 = map(int, proc.stdout.split())
    assert at_2000 <= 1.10 * at_200, (at_200, at_2000)


def test_background_writes_keep_order_and_raise_in_the_caller():
    from flashtorch.runs.engine import _Writes

    done = []
    writer = _Writes(depth=2)
    for i in range(5):
        writer.submit(lambda i=i: done.append(i))
    writer.flush()
    assert done == [0, 1, 2, 3, 4]

    def fail():
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):  # at the next submit or at close
        writer.submit(fail)
        writer.submit(lambda: done.append("after"))  # never run: writes stop at an error
        writer.close()
    assert "after" not in done
    writer.close()  # idempotent
