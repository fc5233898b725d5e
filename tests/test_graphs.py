"""flashtorch.graphed on machines without CUDA: what it refuses, and the capture-time switches.

The replays themselves are checked against eager calls in tests/test_cuda.py (needs a GPU).
"""

from __future__ import annotations

import pytest
import torch

import flashtorch
from flashtorch import METHODS
from flashtorch._targets import ResolvedTarget
from flashtorch._validate import check_images, no_host_sync, syncs_allowed
from flashtorch.errors import InputError, MethodError, TargetError

from .conftest import small_cnn


@pytest.mark.parametrize(
    "name", ["smoothgrad", "integrated_gradients", "occlusion", "scorecam", "vargrad"]
)
def test_methods_with_host_loops_or_noise_are_refused(name):
    with pytest.raises(MethodError, match="cannot be replayed as a CUDA graph.*gradient"):
        flashtorch.graphed(METHODS[name](small_cnn()))


def test_graph_safe_methods_are_the_single_pass_ones():
    safe = {n for n, cls in METHODS.items() if cls.graph_safe}
    assert safe == {
        "gradient",
        "gradient_x_input",
        "guided",
        "deconvnet",
        "gradcam",
        "gradcam_pp",
        "layercam",
        "guided_gradcam",
    }


def test_bad_arguments():
    model = small_cnn()
    with pytest.raises(MethodError, match="eval_mode=True"):
        flashtorch.graphed(METHODS["gradient"](model, eval_mode=False))
    with pytest.raises(MethodError, match="constructed attribution method"):
        flashtorch.graphed(METHODS["gradient"])  # type: ignore[arg-type]
    with pytest.raises(MethodError, match="warmup"):
        flashtorch.graphed(METHODS["gradient"](model), warmup=1)
    with pytest.raises(MethodError, match="max_graphs"):
        flashtorch.graphed(METHODS["gradient"](model), max_graphs=0)


def test_a_cpu_model_is_refused_at_call_time():
    g = flashtorch.graphed(METHODS["guided"](small_cnn()))
    with pytest.raises(MethodError, match=r"model\.cuda\(\)"):
        g(torch.rand(1, 3, 16, 16))
    with pytest.raises(InputError):  # inputs are still validated first
        g(torch.rand(3, 16, 16))


def test_fast_layout_on_the_cpu():
    from flashtorch._fast import fast_channels_last

    assert fast_channels_last(torch.zeros(1, 3, 8, 8))  # oneDNN: channels_last pays
    assert not fast_channels_last(torch.zeros(1, 8))  # not an image batch


def test_no_host_sync_skips_only_the_value_checks():
    bad = torch.full((1, 3, 4, 4), float("nan"))
    with pytest.raises(InputError, match="NaN"):
        check_images(bad)
    assert syncs_allowed()
    with no_host_sync():
        assert not syncs_allowed()
        assert check_images(bad) is bad  # values are checked by the wrapper, not in capture
        with pytest.raises(InputError, match="shape"):
            check_images(bad[0])  # shapes are host facts: still checked
    assert syncs_allowed()


def test_checked_indices_resolve_without_reading_the_device():
    output = torch.zeros(2, 5)
    ready = ResolvedTarget.checked(torch.tensor([1, 4]))
    assert ready.class_indices(output) is ready.indices
    with pytest.raises(TargetError, match="out of range"):
        ResolvedTarget(torch.tensor([1, 4]), high=9).class_indices(output)
    with pytest.raises(TargetError, match="3 targets for a batch of 2"):
        ResolvedTarget.checked(torch.tensor([1, 2, 3])).class_indices(output)


@pytest.mark.parametrize("target", [3, [3], [1, 4], torch.tensor([1, 4]), torch.tensor(3), (2, 0)])
def test_class_targets_become_device_indices_before_the_forward(target):
    prepared = ResolvedTarget.of(target, 2, torch.device("cpu"))
    assert prepared.indices is not None
    assert prepared.indices.dtype == torch.long and prepared.indices.shape == (2,)
    assert prepared.high == max(prepared.indices.tolist())


def test_targets_are_checked_on_the_host_before_a_replay():
    # GraphedMethod._indices runs before any replay; it needs no GPU to be checked
    g = flashtorch.graphed(METHODS["gradient"](small_cnn(classes=5)))
    x = torch.rand(3, 3, 16, 16)
    assert g._indices(None, x) is None
    assert g._indices(torch.tensor([4, 0, 2]), x).tolist() == [4, 0, 2]
    assert g._indices(torch.tensor([3]), x).tolist() == [3, 3, 3]  # one for all
    assert g._indices([1, 2, 3], x).tolist() == [1, 2, 3]
    assert g._indices(2, x).tolist() == [2, 2, 2]
    with pytest.raises(TargetError, match="class 5 is out of range.*5 classes"):
        g._indices(torch.tensor([0, 5, 1]), x)
    with pytest.raises(TargetError, match="class -1 is out of range"):
        g._indices(torch.tensor([0, -1, 1]), x)
    with pytest.raises(TargetError, match="out of range"):
        g._indices([0, 7, 1], x)
    with pytest.raises(TargetError, match="2 targets for a batch of 3"):
        g._indices([0, 1], x)
    with pytest.raises(TargetError, match="callable"):
        g._indices(lambda out: out[:, 0], x)


def test_what_makes_a_graph_stale():
    from flashtorch._fast import ModelState

    model = small_cnn()
    state = ModelState(model, versions=False)  # what an exact-mode capture depends on
    values = ModelState(model)  # what a folded copy depends on
    with torch.no_grad():
        model[0].weight.mul_(2.0)  # in place: the captured kernels read the new values
    assert state.matches(model)
    assert not values.matches(model)  # but a folded copy holds the old values
    model[3] = torch.nn.GELU()  # a parameter-free layer swapped: the graph ran the old one
    assert not state.matches(model)
    state = ModelState(model, versions=False)
    model.double()  # new storage: the graph would read freed memory, so it is captured again
    assert not state.matches(model)
    assert not ModelState(small_cnn(), versions=False).matches(model)  # another model
