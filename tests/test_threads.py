"""Re-entrant, thread-safe methods: real threads on one model and on one method instance."""

import threading
import warnings

import pytest
import torch
from torch import nn

from flashtorch import METHODS, AttributionMethod
from flashtorch.attribution import MethodOutput
from flashtorch.errors import MethodError
from flashtorch.saliency.gradient import input_gradients

from .conftest import CleanupNet

pytestmark = pytest.mark.usefixtures("one_thread")

#: (method, options) mixed by the threads: gradient, guided and Grad-CAM, with and without fast
SPECS = [
    ("gradient", {}),
    ("guided", {}),
    ("gradcam", {}),
    ("gradient", {"fast": True}),
    ("guided", {"fast": True}),
    ("gradcam", {"fast": True}),
]
THREADS = 4
CALLS = 20


def _shared_model():
    """Mixed flags, a frozen parameter and a .grad: all of it must come back exactly."""
    torch.manual_seed(0)
    model = CleanupNet()
    model.train()
    model.features[1].eval()
    model.head.bias.requires_grad_(False)
    model.head.weight.grad = torch.ones_like(model.head.weight)
    return model


def _state(model):
    return (
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        [p.grad for p in model.parameters()],
        {k: v.clone() for k, v in model.state_dict().items()},
    )


def _assert_state(model, before):
    training, flags, grads, values = _state(model)
    assert training == before[0], "train/eval flags changed"
    assert flags == before[1], "requires_grad changed"
    assert all(a is b for a, b in zip(grads, before[2])), ".grad objects replaced"
    assert torch.equal(model.head.weight.grad, torch.ones_like(model.head.weight))
    for k, v in before[3].items():
        assert torch.equal(values[k], v), f"{k} changed"


def _run_threads(work):
    """``work(thread_index)`` in THREADS threads started together; the errors they raised."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(THREADS)

    def body(k):
        barrier.wait()
        try:
            work(k)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def _inputs():
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("shared", ["model", "instance"])
def test_threads_give_the_serial_maps_and_leave_the_model_as_it_was(shared):
    model, x = _shared_model(), _inputs()
    before = _state(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        instances = [METHODS[name](model, **opts) for name, opts in SPECS]
        serial = [m(x, [1, 2]).maps for m in instances]
    _assert_state(model, before)
    mismatches: list[tuple[int, str]] = []

    def work(k):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for j in range(CALLS):
                i = (j + k) % len(SPECS)
                name, opts = SPECS[i]
                method = instances[i] if shared == "instance" else METHODS[name](model, **opts)
                maps = method(x, [1, 2]).maps
                if not torch.equal(maps, serial[i]):
                    mismatches.append((k, f"{name} {opts}"))

    errors = _run_threads(work)
    assert not errors, errors[:3]
    assert not mismatches, mismatches[:5]
    _assert_state(model, before)


def test_a_cam_ignores_forward_passes_of_other_threads():
    """The user's own code runs the model meanwhile: the CAM's layer hook must not record it."""
    torch.manual_seed(0)
    model = CleanupNet().eval()
    x = _inputs()
    gradcam = METHODS["gradcam"](model, layer="features")
    expected = gradcam(x, [1, 2]).maps
    stop = threading.Event()

    def foreign():
        with torch.no_grad():
            while not stop.is_set():
                model(x)

    other = threading.Thread(target=foreign)
    other.start()
    try:
        results = [gradcam(x, [1, 2]).maps for _ in range(CALLS)]
    finally:
        stop.set()
        other.join()
    assert all(torch.equal(r, expected) for r in results)


class Spy(AttributionMethod):
    """Records what a call sees: the network passed in and the instance's model attribute."""

    name = "thread_spy_method"

    def __init__(self, model, **kw):
        super().__init__(model, **kw)
        self.seen: list[tuple[nn.Module, nn.Module]] = []

    def compute(self, net, inputs, target):
        self.seen.append((net, self.model))
        return input_gradients(net, inputs, target)


def test_compute_gets_the_network_and_the_instance_does_not_change():
    model = CleanupNet().eval()
    spy = Spy(model, fast=True)
    spy(_inputs(), 1)
    net, attribute_during_call = spy.seen[0]
    assert attribute_during_call is model  # not swapped for the fast copy
    assert net is not model and not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    plain = Spy(model)
    plain(_inputs(), 1)
    assert plain.seen[0] == (model, model)


def test_a_compute_with_the_old_signature_still_runs_but_not_fast():
    with pytest.warns(DeprecationWarning, match="compute\\(self, net, inputs, target\\)"):

        class Legacy(AttributionMethod):
            name = "legacy_signature_method"

            def compute(self, inputs, target):
                out = input_gradients(self.model, inputs, target)
                return MethodOutput(out.maps, out.output, out.targets, out.scores)

    model = CleanupNet().eval()
    expected = METHODS["gradient"](model)(_inputs(), 1).maps
    assert torch.equal(Legacy(model)(_inputs(), 1).maps, expected)
    with pytest.raises(MethodError, match="compute\\(self, net, inputs, target\\)"):
        Legacy(model, fast=True)(_inputs(), 1)
