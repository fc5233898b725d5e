"""Runs at fsspec URLs: memory:// equals a folder, an object store without append survives a
crash, settings are refused on a URL, open_run is lazy there, file:// under torchrun."""

from __future__ import annotations

import json
import sys
import uuid

import numpy as np
import pytest

pytest.importorskip("zarr")
pytest.importorskip("pyarrow")
pytest.importorskip("pandas")
fsspec = pytest.importorskip("fsspec")

from fsspec.implementations.memory import MemoryFileSystem  # noqa: E402

import flashtorch  # noqa: E402
from flashtorch.errors import InputError, MissingDependencyError  # noqa: E402
from flashtorch.runs import RunConflictError, open_run  # noqa: E402

from ._runs_model import tiny  # noqa: E402
from .test_runs import (  # noqa: E402
    METHODS,
    SIZE,
    _clean_run,
    _frame,
    _main,
    _maps,
    _run_args,
    _torchrun,
    make_folder,
    needs_torchrun,
)

SECRET = {"credential": "s3cret"}


class ObjectStoreFS(MemoryFileSystem):
    """An object store in memory: no append, no ``fsync``, and a credential it insists on."""

    protocol = "flashtorch-objects"
    store: dict = {}  # its own objects, not memory://'s
    pseudo_dirs = [""]
    appends = 0  # how often append mode was asked for (it must never be)

    def __init__(self, *args, credential=None, **kwargs):
        if credential != SECRET["credential"]:
            raise PermissionError("no credential: pass storage_options={'credential': ...}")
        super().__init__(*args, **kwargs)

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, str) and path.startswith(f"{cls.protocol}://"):
            path = path[len(cls.protocol) + 3 :]
        return super()._strip_protocol(path)

    def _open(self, path, mode="rb", **kwargs):
        if "a" in mode or "+" in mode:
            type(self).appends += 1
            raise NotImplementedError(f"an object store cannot open {path!r} with mode {mode!r}")
        f = super()._open(path, mode=mode, **kwargs)
        f.fileno = _no_fileno  # no os.fsync on an object
        return f


def _no_fileno():
    raise OSError("an object has no file descriptor")


fsspec.register_implementation(ObjectStoreFS.protocol, ObjectStoreFS, clobber=True)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("src") / "my photos")


@pytest.fixture(scope="module")
def clean(folder, tmp_path_factory):
    """The same run in a local folder, the reference."""
    out = tmp_path_factory.mktemp("clean") / "run"
    _clean_run(folder, out)
    return out


@pytest.fixture
def memory_url():
    name = f"run-{uuid.uuid4().hex[:8]}"
    yield f"memory://{name}"
    fs = fsspec.filesystem("memory")
    if fs.exists(f"/{name}"):
        fs.rm(f"/{name}", recursive=True)


@pytest.fixture
def object_url():
    name = f"bucket/run-{uuid.uuid4().hex[:8]}"
    yield f"{ObjectStoreFS.protocol}://{name}"
    ObjectStoreFS.store.clear()
    ObjectStoreFS.pseudo_dirs[:] = [""]


def _run(folder, out, **kwargs):
    kwargs = {"size": SIZE, "batch_size": 4, "num_workers": 0, "progress": False, **kwargs}
    return flashtorch.run("tests._runs_model:tiny", folder, METHODS, out=out, **kwargs)


def _objects(fs, root: str) -> list[str]:
    return sorted(p for p in fs.find(f"{root}/progress"))


def _logged_indices(fs, root: str) -> list[int]:
    found = []
    for name in _objects(fs, root):
        found += [r["index"] for r in json.loads(fs.cat_file(name))["records"]]
    return sorted(found)


def _assert_same_run(clean, url, **kwargs):
    run = open_run(url, **kwargs)
    frame = run.manifest[[c for c in run.manifest.columns if not c.startswith("seconds_")]]
    assert frame.equals(_frame(clean))
    expected = _maps(clean)
    assert run.methods == list(expected)
    for method, arr in expected.items():
        np.testing.assert_array_equal(np.asarray(run.maps[method][:]), arr)


def test_memory_url_run_equals_a_folder_run(folder, clean, memory_url):
    summary = _run(folder, memory_url)
    assert summary.computed == 31 and summary.complete and summary.out == memory_url
    _assert_same_run(clean, memory_url)
    fs = fsspec.filesystem("memory")
    root = memory_url.removeprefix("memory:/")
    names = _objects(fs, root)
    assert len(names) == 8 and all(n.endswith(".json") for n in names)  # 31 images, batches of 4
    assert fs.isfile(f"{root}/manifest.parquet") and fs.isfile(f"{root}/maps.zarr/zarr.json")
    assert not [p for p in fs.find(root) if p.endswith((".jsonl", ".tmp"))]
    assert _run(folder, memory_url).computed == 0  # resumed: nothing left to do


def test_object_store_crash_then_rerun_every_index_once(folder, clean, object_url, monkeypatch):
    fs = fsspec.filesystem(ObjectStoreFS.protocol, **SECRET)
    root = object_url.split("://", 1)[1]
    with pytest.raises(PermissionError, match="credential"):  # the options reach the store
        _run(folder, object_url)
    # the crash at the worst moment: batch 3's chunks are written, its rows not yet logged
    monkeypatch.setenv("FLASHTORCH_RUNS_FAULT", "0:3:raise")
    with pytest.raises(RuntimeError, match="injected failure"):
        _run(folder, object_url, storage_options=SECRET)
    monkeypatch.delenv("FLASHTORCH_RUNS_FAULT")
    partial = open_run(object_url, storage_options=SECRET)
    assert not partial.complete and not fs.exists(f"{root}/manifest.parquet")
    assert (partial.manifest["status"] != "missing").sum() == 12  # batches 0-2 of 4 images
    assert partial.maps["gradient"][12:16].any()  # written chunks, not counted as done
    assert _logged_indices(fs, root) == list(range(12))
    # a torn object (a write cut short on a file system) counts as absent
    fs.pipe_file(f"{root}/progress/rank00000-torn-0000000.json", b'{"records":[{"index":12')
    summary = _run(folder, object_url, storage_options=SECRET)
    assert summary.computed == 19 and summary.complete
    fs.rm(f"{root}/progress/rank00000-torn-0000000.json")
    assert _logged_indices(fs, root) == list(range(31))  # every index exactly once
    assert ObjectStoreFS.appends == 0
    _assert_same_run(clean, object_url, storage_options=SECRET)


def test_changed_command_is_refused_on_a_url_and_overwrite_starts_afresh(
    folder, object_url, capsys
):
    fs = fsspec.filesystem(ObjectStoreFS.protocol, **SECRET)
    root = object_url.split("://", 1)[1]
    model, kwargs = tiny(), dict(out=object_url, size=SIZE, num_workers=0, progress=False)
    kwargs["storage_options"] = SECRET
    assert flashtorch.run(model, folder, ["gradient"], **kwargs).computed == 31
    with pytest.raises(RunConflictError, match="methods"):
        flashtorch.run(model, folder, ["gradient", "gradcam"], **kwargs)
    with pytest.raises(RunConflictError, match="dtype"):
        flashtorch.run(model, folder, ["gradient"], dtype="float16", **kwargs)
    code, err = _main(
        capsys,
        *["run", str(folder), "--method", "gradcam", "--out", object_url],
        *["--storage-option", "credential=s3cret", "--model", "tests._runs_model:tiny"],
        *["--size", str(SIZE), "--workers", "0", "-q"],
    )
    assert code == 2 and err.count("\n") == 1, err
    assert "holds a run made with other settings" in err and "--overwrite" in err
    fs.pipe_file(f"{root}/keep.txt", b"the user's file")
    summary = flashtorch.run(model, folder, ["gradcam"], overwrite=True, **kwargs)
    assert summary.computed == 31 and open_run(object_url, storage_options=SECRET).methods == [
        "gradcam"
    ]
    assert fs.cat_file(f"{root}/keep.txt") == b"the user's file"
    prefixes = {n.rsplit("/", 1)[1].rsplit("-", 1)[0] for n in _objects(fs, root)}
    assert len(prefixes) == 1  # the old attempt's progress went with --overwrite
    assert _logged_indices(fs, root) == list(range(31))


def test_open_run_on_a_url_reads_no_maps(folder, memory_url):
    flashtorch.run(
        tiny(), folder, METHODS, out=memory_url, size=SIZE, num_workers=0, progress=False
    )
    fs = fsspec.filesystem("memory")
    chunks = memory_url.removeprefix("memory:/") + "/maps.zarr/gradient/c"
    for name in fs.find(chunks):
        if not name.startswith(f"{chunks}/0/"):
            fs.rm(name)
    run = open_run(memory_url)  # would fail or differ if it loaded the maps
    assert len(run.manifest) == 31 and run.complete and run.path == memory_url
    assert run.map("gradient", 0).any() and not run.map("gradient", 1).any()
    assert run.map("gradcam", 1).any()


def test_cli_run_and_report_at_a_url(folder, clean, object_url, tmp_path, capsys):
    args = _run_args(folder, tmp_path / "unused")
    args[args.index("--out") + 1] = object_url
    code, err = _main(capsys, *args, "--storage-option", "credential=s3cret")
    assert code == 0, err
    _assert_same_run(clean, object_url, storage_options=SECRET)
    page = tmp_path / "r.html"
    code, err = _main(
        capsys,
        "report",
        "--run",
        object_url,
        "--storage-option",
        "credential=s3cret",
        "-o",
        str(page),
    )
    assert code == 0, err
    assert page.stat().st_size > 1000 and object_url in page.read_text()
    code, err = _main(capsys, "report", "--run", object_url + "-none", "-o", str(page))
    assert code == 1 and "credential" in err  # the store refused: no options given
    code, err = _main(
        capsys, "run", str(folder), "--out", str(tmp_path / "local"), "--storage-option", "a=1"
    )
    assert code == 2 and "applies to an fsspec URL" in err and err.count("\n") == 1


def test_bad_urls_and_missing_fsspec_fail_before_any_work(folder, tmp_path, monkeypatch, capsys):
    with pytest.raises(InputError, match="protocol fsspec knows"):
        _run(folder, "nosuchprotocol://bucket/run")
    with pytest.raises(InputError, match="storage options apply to an fsspec URL"):
        _run(folder, tmp_path / "local", storage_options={"anon": True})
    assert not (tmp_path / "local").exists()
    monkeypatch.setitem(sys.modules, "fsspec", None)  # import fsspec now raises ImportError
    with pytest.raises(MissingDependencyError, match=r'pip install "flashtorch\[runs\]"'):
        _run(folder, "memory://never")
    code, err = _main(capsys, "run", str(folder), "--out", "memory://never")
    assert code == 1 and err.count("\n") == 1
    assert err.strip().endswith('pip install "flashtorch[runs]"')


@pytest.mark.slow
@needs_torchrun
def test_torchrun_two_processes_at_a_file_url_equal_one(folder, clean, tmp_path):
    two = tmp_path / "two"
    args = _run_args(folder, two)
    args[args.index("--out") + 1] = two.as_uri()  # file:///...
    proc = _torchrun(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ranks = sorted({p.name[:9] for p in (two / "progress").glob("*.json")})
    assert ranks == ["rank00000", "rank00001"]  # each rank wrote its own batches
    assert not list((two / "progress").glob("*.jsonl"))
    _assert_same_run(clean, two.as_uri())
    _assert_same_run(clean, two)  # the same run, read as a folder
