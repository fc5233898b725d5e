"""flashtorch.progress: steps reported by the long methods, cancellation, thread isolation."""

from __future__ import annotations

import sys
import threading

import pytest
import torch

import flashtorch
from flashtorch import attribute
from flashtorch.activmax import channel, deepdream, render
from flashtorch.errors import Cancelled, FlashTorchError, InputTypeError
from flashtorch.progress import active, report, report_to

from .conftest import CleanupNet, small_cnn
from .test_cleanup import _assert_same, _snapshot

pytestmark = pytest.mark.usefixtures("one_thread")

#: method -> (options, rows it reports in all for a batch of 2 on 16 x 16 images)
METHODS = {
    "integrated_gradients": ({"steps": 8, "internal_batch_size": 4}, 16),
    "smoothgrad": ({"n_samples": 4, "internal_batch_size": 2}, 8),
    "occlusion": ({"window": 8, "stride": 4, "internal_batch_size": 5}, 18),
    "scorecam": ({"layer": "features.3", "internal_batch_size": 3}, 16),
}


def _prepared(counter: list[int]) -> CleanupNet:
    """CleanupNet with mixed train/eval flags, a frozen bias, a .grad and the user's own hook
    (which counts the forward passes)."""
    torch.manual_seed(0)
    model = CleanupNet()
    model.train()
    model.features[1].eval()
    model.head.bias.requires_grad_(False)
    model.head.weight.grad = torch.ones_like(model.head.weight)
    model.features[0].register_forward_hook(lambda *a: counter.append(1))
    return model


def _x() -> torch.Tensor:
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def _check_monotone(seen: list[tuple[int, int, str]], what: str, total: int) -> None:
    assert seen, "nothing was reported"
    assert {w for _d, _t, w in seen} == {what}
    assert {t for _d, t, _w in seen} == {total}
    dones = [d for d, _t, _w in seen]
    assert dones[0] == 0 and dones[-1] == total
    assert all(a <= b for a, b in zip(dones, dones[1:])), dones
    assert len(set(dones)) > 2  # several steps, not just start and end


@pytest.mark.parametrize("name", sorted(METHODS))
def test_each_long_method_reports_monotone_steps_to_its_total(name):
    options, total = METHODS[name]
    seen: list[tuple[int, int, str]] = []
    with report_to(lambda d, t, w: seen.append((d, t, w))):
        attribute(_prepared([]), _x(), method=name, **options)
    dones = [d for d, _t, _w in seen]
    assert {(t, w) for _d, t, w in seen} == {(total, name)}  # one total, the method's name
    assert dones[0] == 0 and dones[-1] == total, dones
    assert dones == sorted(dones) and len(set(dones)) > 2, dones  # monotone, several steps


def test_render_and_deepdream_report_each_step():
    model = small_cnn()
    seen: list[tuple[int, int, str]] = []
    with report_to(lambda d, t, w: seen.append((d, t, w))):
        render(model, channel("0", [0, 1]), param=16, steps=6, progress=False, normalize=None)
    assert seen == [(i, 6, "render") for i in range(7)]
    seen.clear()
    photo = torch.rand(1, 3, 24, 24)
    with report_to(lambda d, t, w: seen.append((d, t, w))):
        deepdream(model, photo, "2", octaves=2, steps=3, min_size=8, progress=False)
    assert seen == [(i, 6, "deepdream") for i in range(7)]


def test_smoothgrad_over_integrated_gradients_reports_its_own_steps_only():
    seen: list[tuple[int, int, str]] = []
    with report_to(lambda d, t, w: seen.append((d, t, w))):
        attribute(
            small_cnn(),
            _x(),
            method="smoothgrad",
            base="integrated_gradients",
            base_options={"steps": 4, "internal_batch_size": 2},
            n_samples=3,
            internal_batch_size=2,
        )
    _check_monotone(seen, "smoothgrad", 6)
    # the inner IG's steps repeat the outer report (the callback can cancel between them)
    assert len(seen) > len({d for d, _t, _w in seen})


def _stop_at(step: int):
    def callback(done: int, total: int, what: str) -> None:
        if done >= step:
            raise Cancelled(f"stop at {done}/{total}")

    return callback


def test_cancel_stops_scorecam_part_way_and_restores_the_model():
    full: list[int] = []
    model = _prepared(full)
    attribute(model, _x(), method="scorecam", layer="features.3", internal_batch_size=2)
    # 16 masked inputs in batches of 2: 8 masked passes, plus the capture's own
    masked = 8
    capture = len(full) - masked

    counter: list[int] = []
    model = _prepared(counter)
    x = _x()
    before = _snapshot(model)
    with pytest.raises(Cancelled), report_to(_stop_at(6)):  # after 3 masked batches
        attribute(model, x, method="scorecam", layer="features.3", internal_batch_size=2)
    assert len(counter) == capture + 3
    _assert_same(model, before)
    # the model still works, and as before
    counter.clear()
    attribute(model, x, method="scorecam", layer="features.3", internal_batch_size=2)
    assert len(counter) == capture + masked


def test_cancel_stops_integrated_gradients_part_way_and_restores_the_model():
    counter: list[int] = []
    model = _prepared(counter)
    before = _snapshot(model)
    with pytest.raises(Cancelled), report_to(_stop_at(8)):
        attribute(model, _x(), method="integrated_gradients", steps=16, internal_batch_size=4)
    # the clean pass (one forward of [x; x'] in one internal batch of 4 rows) + 2 path batches
    assert len(counter) == 1 + 2
    _assert_same(model, before)


def test_cancel_stops_render_part_way_and_restores_the_model():
    counter: list[int] = []
    model = _prepared(counter)
    before = _snapshot(model)
    with pytest.raises(Cancelled), report_to(_stop_at(5)):
        render(model, channel("features.3", [0, 1]), param=16, steps=200, progress=False)
    assert len(counter) == 5  # one forward pass per step, 5 steps of 200
    _assert_same(model, before)


def test_a_set_event_cancels_at_the_first_step():
    counter: list[int] = []
    model = _prepared(counter)
    before = _snapshot(model)
    stop = threading.Event()
    stop.set()
    calls: list[int] = []
    with pytest.raises(Cancelled, match="scorecam was cancelled at step 0 of 16"):
        with report_to(lambda d, t, w: calls.append(d), cancel=stop):
            attribute(model, _x(), method="scorecam", layer="features.3")
    assert calls == []  # the event is checked before the callback
    assert len(counter) == 1  # the capture pass only: no masked input ran
    _assert_same(model, before)
    flag = {"stop": False}
    with report_to(cancel=lambda: flag["stop"]):  # a predicate, unset: nothing happens
        render(model, channel("features.3", 0), param=16, steps=2, progress=False)


def test_cancelled_is_a_flashtorch_error_and_a_bad_cancel_is_refused():
    assert issubclass(Cancelled, FlashTorchError)
    with pytest.raises(InputTypeError, match="cancel must be an event"):
        with report_to(cancel=3):  # type: ignore[arg-type]
            pass


def test_without_a_block_nothing_is_reported_and_blocks_nest():
    assert not active()
    report(1, 2, "nothing listens")  # no block: a no-op
    outer: list[str] = []
    inner: list[str] = []
    with report_to(lambda d, t, w: outer.append(w)):
        report(0, 1, "a")
        with report_to(lambda d, t, w: inner.append(w)):
            assert active()
            report(0, 1, "b")
        report(1, 1, "c")
    assert not active()
    assert outer == ["a", "c"] and inner == ["b"]
    assert flashtorch.progress.report_to is report_to  # exported from the package


def test_two_threads_each_see_only_their_own_progress():
    barrier = threading.Barrier(2, timeout=60)
    seen: dict[str, list[tuple[int, int, str]]] = {"ig": [], "occ": []}
    errors: list[BaseException] = []

    def work(key: str, method: str, options: dict) -> None:
        try:
            model = small_cnn()  # each thread its own model (one call at a time on a model)

            def callback(d: int, t: int, w: str) -> None:
                seen[key].append((d, t, w))
                if d == 0:
                    barrier.wait()  # both calls are running now

            with report_to(callback):
                attribute(model, _x(), method=method, **options)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    main: list[str] = []
    with report_to(lambda d, t, w: main.append(w)):  # not seen by the threads
        threads = [
            threading.Thread(
                target=work,
                args=("ig", "integrated_gradients", {"steps": 8, "internal_batch_size": 4}),
            ),
            threading.Thread(
                target=work, args=("occ", "occlusion", {"window": 8, "internal_batch_size": 3})
            ),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert not errors, errors
    if not getattr(sys.flags, "thread_inherit_context", 0):  # Python 3.14's opt-in
        assert main == []  # a new thread starts with an empty context: no callback
    _check_monotone(seen["ig"], "integrated_gradients", 16)
    _check_monotone(seen["occ"], "occlusion", 18)
