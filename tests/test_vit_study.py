"""examples/train_vit.py and the transformer mode of examples/faithfulness_table.py.

Smoke runs of both scripts in their ``--quick`` mode (a tiny ViT, seconds), plus the pieces
that decide what the study measures: the augmentation keeps labels and masks consistent, the
randomisation cascade covers every parameter, the cache is reused only for equal settings, and
the two halves of docs/faithfulness.md are written without overwriting each other.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("timm")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def scripts():
    sys.path.insert(0, str(EXAMPLES))
    try:
        yield importlib.import_module("train_vit"), importlib.import_module("faithfulness_table")
    finally:
        sys.path.remove(str(EXAMPLES))


def test_dihedral_is_one_of_eight_symmetries(scripts):
    train_vit, _ = scripts
    image = torch.arange(3 * 4 * 4, dtype=torch.float32).view(1, 3, 4, 4)  # no symmetry
    data = train_vit.Dihedral(image.repeat(64, 1, 1, 1), torch.arange(64) % 4)
    symmetries = [torch.rot90(image[0], k, dims=(1, 2)) for k in range(4)]
    symmetries += [s.flip(2) for s in symmetries]
    torch.manual_seed(0)
    seen = set()
    for i in range(64):
        out, label = data[i]
        assert label == i % 4
        matches = [j for j, s in enumerate(symmetries) if torch.equal(out, s)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == set(range(8))  # every symmetry is drawn


def test_vit_cascade_covers_every_parameter(scripts):
    _, table = scripts
    import _study

    model = _study.build_vit(train_vit_config(scripts, depth=4))
    steps, labels = table.vit_cascade(4)
    assert len(steps) == len(labels) == 5
    assert steps[0] == ["head"] and steps[-1] == [""]
    named = dict(model.named_modules())
    for group in steps:
        assert all(name in named for name in group)
    # every parameter outside the last ("everything") step is randomised by an earlier step
    covered = {id(p) for group in steps[:-1] for name in group for p in named[name].parameters()}
    rest = [n for n, p in model.named_parameters() if id(p) not in covered]
    assert all(n.startswith(("patch_embed", "pos_embed", "cls_token")) for n in rest), rest
    assert table.vit_cascade(1)[0] == [["head"], ["norm", "blocks.0"], [""]]


def train_vit_config(scripts, **changes):
    train_vit, _ = scripts
    return {**train_vit.QUICK_CONFIG, **changes}


def test_splice_keeps_the_other_half(scripts, tmp_path):
    _, table = scripts
    page = tmp_path / "faithfulness.md"
    table.splice(page, head="# CNN\n\nold rows\n")
    assert page.read_text() == "# CNN\n\nold rows\n"
    table.splice(page, tail="\n## ViT\n\nrows\n")
    table.splice(page, head="# CNN\n\nnew rows\n")  # the CNN run keeps the ViT section
    text = page.read_text()
    assert text == "# CNN\n\nnew rows\n\n" + table.VIT_MARKER + "\n## ViT\n\nrows\n"
    table.splice(page, tail="\n## ViT\n\nnewer\n")  # and --vit keeps the CNN part
    assert page.read_text().startswith("# CNN\n\nnew rows\n") and "newer" in page.read_text()
    assert "\nrows\n" not in page.read_text().split(table.VIT_MARKER)[1]


def test_train_quick_then_reuse_then_faithfulness(scripts, tmp_path, capsys):
    train_vit, table = scripts
    out = tmp_path / "vit"
    two = ["--quick", "--task-cycles", "2"]
    first = train_vit.main([*two, "--out", str(out)])
    saved = json.loads((out / "vit.json").read_text())
    assert saved["config"] == train_vit.QUICK_CONFIG and saved["train"] == 32
    assert 0.0 <= first["val_accuracy"] <= 1.0 and (out / "vit.pt").exists()
    stamp = (out / "vit.pt").stat().st_mtime_ns
    capsys.readouterr()
    again = train_vit.main([*two, "--out", str(out)])
    assert "reusing" in capsys.readouterr().out
    assert again == first and (out / "vit.pt").stat().st_mtime_ns == stamp
    # only equal settings are reused
    wanted = train_vit.settings(train_vit.parse(two))
    assert train_vit.cached(out, wanted) is not None
    assert train_vit.cached(out, {**wanted, "seed": 1}) is None
    assert train_vit.cached(out, {**wanted, "epochs": 2}) is None

    # a run with fewer task cycles is continued, to the weights of a run with all at once
    part = tmp_path / "part"
    train_vit.main(["--quick", "--out", str(part), "--task-cycles", "1"])
    capsys.readouterr()
    continued = train_vit.main([*two, "--out", str(part)])
    assert "continuing" in capsys.readouterr().out
    assert [h["stage"] for h in continued["history"]] == ["texture", "task", "task 2"]

    def untimed(history):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert untimed(continued["history"]) == untimed(first["history"])
    a = torch.load(out / "vit.pt", weights_only=True)
    b = torch.load(part / "vit.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert continued["val_accuracy"] == first["val_accuracy"]

    import _study

    model, summary = _study.load_vit(out)
    assert summary["config"]["img_size"] == 32
    x = torch.zeros(2, 3, 32, 32)
    assert model(x).shape == (2, 4)

    docs = tmp_path / "docs"
    docs.mkdir()
    methods = ["gradient", "gradcam", "attention_rollout", "random map (reference)"]
    table.main(
        ["--vit", "--quick", "--vit-dir", str(out), "--docs", str(docs), "--methods", *methods]
    )
    printed = capsys.readouterr().out
    for method in methods:
        assert f"{method}: PG " in printed
    # rollout never looks at the target: the same map for another class
    assert "attention_rollout: rank corr. true vs other class 1.000" in printed
    assert "default (`blocks.0.norm1`): PG" in printed  # the layer table ran, default first
    assert "quick run: nothing written" in printed and not list(docs.iterdir())
