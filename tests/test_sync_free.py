"""No device value is read on the host once a call's forward pass has started.

On a GPU such a read (``.item()``, ``.tolist()``, ``bool(t)``, boolean-mask indexing) waits for
every queued kernel: the host stops queueing the backward pass while the GPU finishes the
forward one. Targets are therefore normalised before the forward pass (``ResolvedTarget``) and
the loops of the n-sample methods locate their rows on the host. On the CPU the same reads are
cheap, but they are visible to a ``TorchFunctionMode``: these tests fail if one comes back.
"""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from flashtorch import METHODS
from flashtorch.saliency.gradient import input_gradients

from .conftest import small_cnn

#: tensor functions that hand a device value to the host, or (``tensor``, ``as_tensor``) copy
#: host data to the device, which on a GPU also waits for the queued work
READS = {
    "item",
    "tolist",
    "__bool__",
    "__int__",
    "__float__",
    "__index__",
    "nonzero",
    "masked_select",
    "tensor",
    "as_tensor",
}


class HostReads(TorchFunctionMode):
    """Record host reads of tensor values made after the model's first forward call starts."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.started = False
        self.reads: list[str] = []
        self._handle = model.register_forward_pre_hook(self._start)

    def _start(self, *_: object) -> None:
        self.started = True

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if self.started and (name in READS or (name == "__getitem__" and _bool_index(args))):
            self.reads.append(name)
        return func(*args, **(kwargs or {}))

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()
        super().__exit__(*exc)


def _bool_index(args: tuple) -> bool:
    index = args[1] if len(args) > 1 else None
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


#: the option sets each registered method runs with (small sizes); a method registered without
#: an entry here or in EXCLUDED fails test_every_registered_method_is_covered
OPTIONS: dict[str, list[dict]] = {
    "gradient": [{}],
    "gradient_x_input": [{}],
    "guided": [{}],
    "deconvnet": [{}],
    "integrated_gradients": [
        {"steps": 4, "internal_batch_size": 3},
        {"steps": 4, "rule": "trapezoid", "clean_pass": False},
        {"steps": 3, "rule": "riemann_right", "clean_pass": False, "internal_batch_size": 2},
    ],
    "smoothgrad": [
        {"n_samples": 3, "internal_batch_size": 4},
        {"n_samples": 3, "clean_pass": False},
        {"n_samples": 2, "base": "integrated_gradients", "base_options": {"steps": 3}},
    ],
    "smoothgrad_sq": [{"n_samples": 3, "internal_batch_size": 4}],
    "vargrad": [{"n_samples": 3, "internal_batch_size": 4}],
    "occlusion": [{"window": 8, "stride": 8}],
    "gradcam": [{}],
    "gradcam_pp": [{}],
    "layercam": [{}],
    "guided_gradcam": [{}],
    "scorecam": [{"internal_batch_size": 4}],
}
#: registered methods this CNN test leaves out, and why
EXCLUDED = {
    # the attention methods need a vision transformer (timm, an optional extra) and this test
    # a CNN; tests/test_attention.py tests them, without the host-read spy
    "attention_rollout": "needs a transformer",
    "gradient_rollout": "needs a transformer",
}
CASES = [
    (name, options)
    for name in METHODS
    if name not in EXCLUDED
    for options in OPTIONS.get(name, [{}])
]


def test_every_registered_method_is_covered():
    """The cases are METHODS less the commented exclusions: a new method needs a decision."""
    assert set(OPTIONS) | set(EXCLUDED) == set(METHODS)
    assert not set(OPTIONS) & set(EXCLUDED)
    assert {name for name, _ in CASES} == set(METHODS) - set(EXCLUDED)


DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "target",
    [torch.tensor([1, 3, 0]), [1, 3, 0], 2, None],
    ids=["tensor", "list", "int", "predicted"],
)
@pytest.mark.parametrize(
    ("name", "options"), CASES, ids=[f"{n}{i}" for i, (n, _) in enumerate(CASES)]
)
def test_no_host_read_after_the_forward_pass_starts(name, options, target, device, monkeypatch):
    # The maps' guard (all zero / non-finite) reads the maps once at the end of a call, and
    # only maps on the CPU (test_guards.py checks that it reads nothing for maps left on a
    # GPU): off here, so that a CPU run shows the method's own reads.
    monkeypatch.setattr("flashtorch._guards.check_maps", lambda *a, **k: None)
    model = small_cnn().to(device)
    method = METHODS[name](model, **options)
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0)).to(device)
    if isinstance(target, torch.Tensor):
        target = target.to(device)
    method(x, target=target)  # a first call may look for the CAM layer
    with HostReads(model) as spy:
        out = method(x, target=target)
    assert spy.reads == [], f"{name} read device values mid-call: {spy.reads}"
    assert torch.isfinite(out.maps).all()


def test_the_spy_sees_a_host_to_device_copy():
    model = small_cnn()
    with HostReads(model) as spy:
        model(torch.rand(1, 3, 16, 16))
        torch.tensor([1, 2])
    assert spy.reads == ["tensor"]


def test_the_spy_sees_a_read():
    # an index tensor resolved after the forward pass is read with .tolist(): the spy must see it
    model = small_cnn()
    with HostReads(model) as spy:
        input_gradients(model, torch.rand(2, 3, 16, 16), torch.tensor([1, 2]))
    assert "tolist" in spy.reads
