"""The command line as people expect it: ``python -m flashtorch``, a start-up that does not
import torch for the light commands, folders as inputs, bad files skipped before any work, output
names that carry the target and never collide, and ``classes`` ranked by whole words.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flashtorch import cli

from .test_cli import TEST_MODELS, call

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture
def tiny_model(tmp_path, monkeypatch):
    """``--model clitestmodels:tiny`` (10 classes) importable in this process."""
    folder = tmp_path / "mods"
    folder.mkdir()
    (folder / "clitestmodels.py").write_text(TEST_MODELS)
    monkeypatch.syspath_prepend(str(folder))
    sys.modules.pop("clitestmodels", None)
    yield ["--model", "clitestmodels:tiny", "--size", "16", "--method", "gradient"]
    sys.modules.pop("clitestmodels", None)


def _png(path: Path, seed: int = 0, size: tuple[int, int] = (24, 20)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _truncated_png(path: Path) -> Path:
    """A PNG whose header reads fine and whose pixel data stops half-way."""
    _png(path, seed=9, size=(64, 64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# ---------------------------------------------------------------------------------------------
# python -m flashtorch, and a start-up without torch
# ---------------------------------------------------------------------------------------------


def test_python_dash_m_flashtorch_version():
    import flashtorch

    proc = subprocess.run(
        [sys.executable, "-m", "flashtorch", "--version"],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"flashtorch {flashtorch.__version__}"


def test_light_commands_do_not_import_torch():
    code = (
        "import sys\n"
        "from flashtorch.cli import main\n"
        "heavy = ('torch', 'numpy', 'matplotlib', 'PIL', 'tqdm', 'gradio')\n"
        "for args in (['--help'], ['--version'], ['classes', 'owl'], ['methods'],\n"
        "             ['explain', '--help'], ['serve', '--help']):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, (args, exc.code)\n"
        "    loaded = [m for m in heavy if m in sys.modules]\n"
        "    if loaded:\n"
        "        sys.exit(f'{args} imported {loaded}')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_static_method_index_matches_the_registry():
    from flashtorch._method_index import METHOD_INDEX, generate

    assert METHOD_INDEX == generate(), (
        "src/flashtorch/_method_index.py is stale: run `python -m flashtorch._method_index --write`"
    )


def test_methods_command_lists_the_registry_with_summaries(capsys):
    import inspect

    from flashtorch import METHODS

    code, out, _ = call(capsys, "methods")
    assert code == 0
    for line, (name, cls) in zip(out.splitlines(), METHODS.items(), strict=True):
        assert line.split()[0] == name
        assert inspect.getdoc(cls).splitlines()[0] in line


def test_registry_is_complete_whatever_is_imported_first():
    # the first reads come from four threads at once: each sees the whole registry
    code = (
        "import threading\n"
        "from flashtorch.cam import GradCAM\n"
        "from flashtorch.attribution import available_methods\n"
        "seen = []\n"
        "threads = [threading.Thread(target=lambda: seen.append(available_methods()))\n"
        "           for _ in range(4)]\n"
        "for t in threads: t.start()\n"
        "for t in threads: t.join()\n"
        "assert len(seen) == 4 and all(s == seen[0] for s in seen), seen\n"
        "print(','.join(seen[0]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    from flashtorch import available_methods

    assert proc.stdout.strip().split(",") == available_methods()


def test_flashtorch_names_resolve_lazily():
    import flashtorch

    for name in flashtorch.__all__:
        assert getattr(flashtorch, name) is not None, name
    assert set(flashtorch.__all__) <= set(dir(flashtorch))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        flashtorch.nope  # noqa: B018


# ---------------------------------------------------------------------------------------------
# classes
# ---------------------------------------------------------------------------------------------


def test_classes_ranks_whole_words_first_and_substrings_after(capsys):
    code, out, _ = call(capsys, "classes", "owl")
    lines = out.splitlines()
    assert code == 0
    assert lines[0] == "  24  great grey owl"
    assert lines[1] == "also containing 'owl' inside a word:"
    assert " 659  mixing bowl" in lines[2:] and " 809  soup bowl" in lines[2:]
    code, out, _ = call(capsys, "classes", "guacam")  # substring matches only: no heading
    assert code == 0 and out.splitlines() == [" 924  guacamole"]


# ---------------------------------------------------------------------------------------------
# explain: folders, bad files, output names
# ---------------------------------------------------------------------------------------------


def test_explain_takes_a_folder_recursively_and_skips_non_images(capsys, tiny_model, tmp_path):
    photos = tmp_path / "photos"
    _png(photos / "b.png", 1)
    _png(photos / "sub" / "a.png", 2)
    _png(photos / ".hidden.png", 3)
    (photos / "notes.txt").write_text("not an image")
    out_dir = tmp_path / "o"
    code, out, err = call(
        capsys, "explain", str(photos), *tiny_model, "--format", "npy", "-o", str(out_dir)
    )
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("flashtorch: warning:")]
    assert len(warnings) == 1 and "notes.txt" in warnings[0] and "skipped" in warnings[0]
    stems = sorted(re.sub(r"_gradient_t\d+\.npy$", "", p.name) for p in out_dir.iterdir())
    assert stems == ["a", "b"]
    # sorted, the files of the folder before those of its sub-folders' (os.walk order)
    printed = [line for line in out.splitlines() if line.endswith(".png")]
    assert printed == [str(photos / "b.png"), str(photos / "sub" / "a.png")]


def test_output_folder_inside_the_input_folder_is_not_read_back(capsys, tiny_model, tmp_path):
    photos = tmp_path / "photos"
    _png(photos / "a.png")
    out_dir = photos / "maps"
    for _ in range(2):
        code, _, err = call(capsys, "explain", str(photos), *tiny_model, "-o", str(out_dir))
        assert code == 0, err
        assert "skipped" not in err
    assert len(list(out_dir.iterdir())) == 1


def test_an_unreadable_image_is_skipped_before_anything_is_written(
    capsys, tiny_model, tmp_path, monkeypatch
):
    import flashtorch.plot._common as common

    good = _png(tmp_path / "good.png")
    bad = _truncated_png(tmp_path / "bad.png")
    out_dir = tmp_path / "o"
    writes: list[str] = []
    real = common.atomic_write_bytes

    def recording(path, data):
        writes.append(capsys.readouterr().err)  # what stderr held when the first file came
        return real(path, data)

    monkeypatch.setattr(common, "atomic_write_bytes", recording)
    code, _, err = call(
        capsys, "explain", str(good), str(bad), *tiny_model, "--batch-size", "1", "-o", str(out_dir)
    )
    err = "".join(writes) + err
    assert code == 0, err
    assert writes and "skipped" in writes[0] and "bad.png" in writes[0]  # warned before writing
    assert [p.name.split("_")[0] for p in out_dir.iterdir()] == ["good"]


def test_only_unreadable_images_write_nothing(capsys, tiny_model, tmp_path):
    bad = _truncated_png(tmp_path / "bad.png")
    (tmp_path / "notes.jpg").write_text("not an image")
    out_dir = tmp_path / "o"
    code, _, err = call(
        capsys, "explain", str(bad), str(tmp_path / "notes.jpg"), *tiny_model, "-o", str(out_dir)
    )
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("flashtorch: error: no readable image") and "bad.png" in lines[0]
    assert not out_dir.exists()


def test_two_targets_give_two_files(capsys, tiny_model, tmp_path):
    image = _png(tmp_path / "cat.png")
    out_dir = tmp_path / "o"
    for target in ("3", "5"):
        code, _, err = call(
            capsys,
            "explain",
            str(image),
            *tiny_model,
            "--target",
            target,
            "--format",
            "npy",
            "-o",
            str(out_dir),
        )
        assert code == 0, err
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "cat_gradient_t3.npy",
        "cat_gradient_t5.npy",
    ]
    assert not np.array_equal(
        np.load(out_dir / "cat_gradient_t3.npy"), np.load(out_dir / "cat_gradient_t5.npy")
    )


def test_names_that_collide_after_sanitising_stay_distinct(capsys, tiny_model, tmp_path):
    inputs = [
        _png(tmp_path / name, seed)
        for seed, name in enumerate(["a b.png", "a_b.png", "a_b-2.png", "A_B.jpg"])
    ]
    out_dir = tmp_path / "o"
    code, out, err = call(
        capsys,
        "explain",
        *map(str, inputs),
        *tiny_model,
        "--format",
        "npy",
        "--target",
        "1",
        "-o",
        str(out_dir),
    )
    assert code == 0, err
    files = sorted(p.name for p in out_dir.iterdir())
    assert len(files) == 4 and len({f.casefold() for f in files}) == 4, files
    assert f"wrote 4 file(s) to {out_dir}" in out  # the count is of files that exist
    maps = [np.load(out_dir / f) for f in files]
    assert all(not np.array_equal(maps[0], m) for m in maps[1:])
    assert sum(line.startswith("note: ") for line in out.splitlines()) == 3


def test_output_stems_never_collide_with_a_method_name():
    # 'a_guided' + '_gradcam' == 'a' + '_guided_gradcam': the second stem moves away
    stems = cli.output_stems(["a.png", "a_guided.png"], ["gradcam", "guided_gradcam"])
    names = {f"{s}_{m}" for s in stems for m in ("gradcam", "guided_gradcam")}
    assert len(names) == 4 and stems[0] == "a"
    assert cli.output_stems(["x/cat.jpg", "y/Cat.jpg", "cat-2.png"]) == ["cat", "Cat-2", "cat-2-2"]


def test_folder_extensions_match_flashtorch_run():
    from flashtorch.runs.sources import IMAGE_EXTENSIONS

    assert cli.IMAGE_EXTENSIONS == IMAGE_EXTENSIONS
