"""fine_tune: learns the synthetic task, caches the frozen trunk exactly, leaves the model alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flashtorch.datasets import SyntheticLocalization
from flashtorch.errors import InputError, LayerError
from flashtorch.finetune import evaluate, find_head, fine_tune, replace_head

SMALL = dict(size=32, patch_fraction=(0.4, 0.5), periods=(3.0, 4.0), distractors=(1, 3))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    # Pre-rendered lists of (image, label, mask): fast to iterate several times.
    train = SyntheticLocalization(768, seed=0, **SMALL)
    val = SyntheticLocalization(128, seed=1, **SMALL)
    return [train[i] for i in range(len(train))], [val[i] for i in range(len(val))]


def tiny(num_classes: int = 4) -> nn.Sequential:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
            nn.Linear(32, num_classes),
        )


ALL = ["0", "1", "4", "5", "9"]  # every module with parameters


def test_short_fine_tuning_beats_chance_clearly(data):
    train, val = data
    model = tiny(num_classes=10)  # a "pretrained" head with the wrong classes
    before = evaluate(model, val)
    result = fine_tune(model, train, val=val, num_classes=4, trainable=ALL, epochs=10, lr=1e-2)
    # 4 balanced classes: chance is 0.25; 0.55 on 128 images is p < 1e-12 under chance
    # (this configuration reaches 0.76-0.81 for model seeds 0, 1, 2).
    assert result.val_accuracy is not None and result.val_accuracy >= 0.55, result.history
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert evaluate(result.model, val) == pytest.approx(result.val_accuracy)
    assert before < 0.4
    assert result.model[9].out_features == 4 and model[9].out_features == 10


def test_the_callers_model_is_left_unchanged(data):
    train, _ = data
    model = tiny()
    model.train()
    model[0].weight.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    result = fine_tune(model, train[:64], trainable=["4", "9"], epochs=1)
    assert model.training and all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    tuned = result.model
    assert tuned is not model and not tuned.training
    assert not torch.equal(tuned[9].weight, model[9].weight)
    # Frozen modules did not move, BatchNorm statistics included.
    assert torch.equal(tuned[0].weight, model[0].weight)
    assert torch.equal(tuned[1].running_mean, model[1].running_mean)


def test_cached_features_train_exactly_like_the_full_model(data):
    train, val = data
    kw = dict(val=val[:32], trainable=["4", "5", "9"], epochs=2, lr=5e-3, batch_size=32, seed=7)
    full = fine_tune(tiny(), train[:128], **kw)
    cached = fine_tune(tiny(), train[:128], cache_at="3", **kw)
    assert cached.cache_seconds > 0 and full.cache_seconds == 0
    for a, b in zip(full.history, cached.history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["val_accuracy"] == b["val_accuracy"]
    for pa, pb in zip(full.model.parameters(), cached.model.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5)


def test_runs_are_reproducible_by_seed(data):
    train, _ = data
    a = fine_tune(tiny(), train[:64], trainable=["9"], epochs=2, seed=3)
    b = fine_tune(tiny(), train[:64], trainable=["9"], epochs=2, seed=3)
    c = fine_tune(tiny(), train[:64], trainable=["9"], epochs=2, seed=4)
    assert torch.equal(a.model[9].weight, b.model[9].weight)
    assert not torch.equal(a.model[9].weight, c.model[9].weight)
    rng = torch.get_rng_state()
    fine_tune(tiny(), train[:32], trainable=["9"], epochs=1)
    assert torch.equal(rng, torch.get_rng_state())  # the caller's RNG is untouched


class Skip(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        a = self.conv1(x)
        return self.fc((a + self.conv2(F.relu(a))).mean((2, 3)))


def test_cache_errors_are_precise(data):
    train, _ = data
    with pytest.raises(InputError, match="skip connection"):
        fine_tune(Skip(), train[:8], trainable=["fc"], cache_at="conv2", epochs=1)
    with pytest.raises(LayerError, match="gets no gradient"):
        fine_tune(tiny(), train[:8], trainable=["0", "9"], cache_at="3", epochs=1)
    with pytest.raises(LayerError, match="overlaps"):
        fine_tune(tiny(), train[:8], trainable=["4", "9"], cache_at="4", epochs=1)
    with pytest.raises(LayerError):
        fine_tune(tiny(), train[:8], trainable=["nope"], epochs=1)
    with pytest.raises(InputError, match="epochs"):
        fine_tune(tiny(), train[:8], epochs=0)
    with pytest.raises(InputError, match="empty"):
        fine_tune(tiny(), [], epochs=1)


def test_head_helpers():
    model = tiny()
    assert find_head(model) == "9"
    assert replace_head(model, 3, seed=1) == "9" and model[9].out_features == 3
    other = tiny()
    replace_head(other, 3, seed=1)
    assert torch.equal(model[9].weight, other[9].weight)
    with pytest.raises(LayerError, match="no nn.Linear"):
        find_head(nn.Sequential(nn.Conv2d(3, 4, 1)))
    with pytest.raises(LayerError, match="not an nn.Linear"):
        replace_head(model, 3, head="0")
    with pytest.raises(InputError, match="num_classes"):
        replace_head(model, 0)
