"""Progress reports and cancellation of long calls: ``with report_to(callback): ...``.

The long methods - Integrated Gradients (its internal batches of path points), SmoothGrad and
its variants (the noisy copies), occlusion (the occluded copies), Score-CAM (its batches of
masked inputs), :func:`~flashtorch.activmax.render` and
:func:`~flashtorch.activmax.deepdream` (their optimisation steps) - call :func:`report` as
``(done, total, what)`` at each step: ``done`` grows from ``0`` to ``total`` within one call,
``what`` names the method (``"scorecam"``, ``"render"``...).

Nothing is reported unless a block asks for it. :func:`report_to` sets a
:class:`contextvars.ContextVar`, so a callback is seen only by the thread (or asyncio task)
that set it: two threads, each in its own ``report_to`` block, each get their own progress
and nothing of the other's. Without a block, a step costs one ``ContextVar.get``.

Cancelling: the callback may raise. Raising :class:`~flashtorch.errors.Cancelled` (or passing
``cancel=`` an event or a predicate) stops the call at its next step; the exception goes up to
the caller and every change the method made to the model is undone on the way (hooks removed,
train/eval flags, ``requires_grad`` and ``.grad`` put back, as on any other error).

A method that runs another one inside (SmoothGrad over Integrated Gradients) reports its own
steps only: the inner method's steps repeat the outer method's last report, so ``done`` stays
monotone and the callback can still stop the call between two inner steps.

Example:
    >>> import threading
    >>> from flashtorch import attribute
    >>> from flashtorch.progress import report_to
    >>> stop = threading.Event()           # set from another thread to cancel
    >>> def show(done, total, what):
    ...     print(f"{what}: {done}/{total}")
    >>> with report_to(show, cancel=stop):  # doctest: +SKIP
    ...     result = attribute(model, x, method="scorecam")
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, Protocol

from .errors import Cancelled, InputTypeError

#: ``callback(done, total, what)``.
ProgressCallback = Callable[[int, int, str], Any]


class _Settable(Protocol):  # threading.Event, asyncio.Event, multiprocessing.Event
    def is_set(self) -> bool: ...


CancelToken = _Settable | Callable[[], bool]


class _Sink:
    """Where the reports of one ``report_to`` block go (and, nested, the outer call's last)."""

    __slots__ = ("callback", "cancel", "last", "parent")

    def __init__(
        self,
        callback: ProgressCallback | None,
        cancel: Callable[[], bool] | None,
        parent: _Sink | None = None,
    ) -> None:
        self.callback = callback
        self.cancel = cancel
        self.parent = parent
        self.last: tuple[int, int, str] | None = None

    def emit(self, done: int, total: int, what: str) -> None:
        if self.parent is not None:  # an inner call: repeat the outer call's report
            self.parent.repeat()
            return
        self.last = (done, total, what)
        if self.cancel is not None and self.cancel():
            raise Cancelled(f"{what} was cancelled at step {done} of {total}")
        if self.callback is not None:
            self.callback(done, total, what)

    def repeat(self) -> None:
        if self.last is not None:
            self.emit(*self.last)
        elif self.cancel is not None and self.cancel():
            raise Cancelled("cancelled")


_SINK: ContextVar[_Sink | None] = ContextVar("flashtorch_progress", default=None)


def _as_predicate(cancel: CancelToken | None) -> Callable[[], bool] | None:
    if cancel is None:
        return None
    is_set = getattr(cancel, "is_set", None)
    if callable(is_set):
        return is_set  # type: ignore[no-any-return]
    if callable(cancel):
        return cancel  # type: ignore[return-value]
    raise InputTypeError(
        f"cancel must be an event (with is_set()) or a function returning a bool, got "
        f"{type(cancel).__name__}"
    )


@contextlib.contextmanager
def report_to(
    callback: ProgressCallback | None = None, *, cancel: CancelToken | None = None
) -> Iterator[None]:
    """Send the progress of the long calls made inside the block to ``callback``.

    Args:
        callback: ``callback(done, total, what)``, called at each step of a long method
            (``0 <= done <= total``, ``done`` non-decreasing within one method call). It runs
            in the computing thread, between two steps; it may raise (for instance
            :class:`~flashtorch.errors.Cancelled`) to stop the call.
        cancel: a ``threading.Event`` (or anything with ``is_set()``) or a function returning
            a bool, checked at every step before ``callback``: once set, the call raises
            :class:`~flashtorch.errors.Cancelled`.

    Yields:
        Nothing; blocks nest (the innermost one receives the reports).

    Raises:
        InputTypeError: ``cancel`` is neither an event nor a function.

    Example:
        >>> with report_to(lambda done, total, what: print(what, done, total)):  # doctest: +SKIP
        ...     render(model, channel("features.8", 3), steps=64, progress=False)
    """
    sink = _Sink(callback, _as_predicate(cancel))
    token = _SINK.set(sink)
    try:
        yield
    finally:
        _SINK.reset(token)


def report(done: int, total: int, what: str) -> None:
    """Report step ``done`` of ``total`` of method ``what`` to the enclosing :func:`report_to`.

    For the authors of long methods: call it at each step (and with ``done=0`` before the
    first). Outside a ``report_to`` block it does nothing (one ``ContextVar`` lookup).

    Raises:
        Cancelled: the block's ``cancel`` is set, or what the callback raises.
    """
    sink = _SINK.get()
    if sink is not None:
        sink.emit(done, total, what)


@contextlib.contextmanager
def _inner_block() -> Iterator[None]:
    sink = _SINK.get()
    if sink is None:
        yield
        return
    token = _SINK.set(_Sink(None, None, parent=sink))
    try:
        yield
    finally:
        _SINK.reset(token)


def inner() -> contextlib.AbstractContextManager[None]:
    """A block whose method calls are steps of the calling method (for wrappers like SmoothGrad).

    Reports made inside repeat the caller's last report (so ``done`` stays monotone and the
    callback may still cancel); without an enclosing :func:`report_to` it costs one lookup.
    """
    if _SINK.get() is None:
        return contextlib.nullcontext()
    return _inner_block()


def active() -> bool:
    """Whether a :func:`report_to` block encloses the caller (in this thread or task)."""
    return _SINK.get() is not None


__all__ = ["Cancelled", "CancelToken", "ProgressCallback", "active", "inner", "report", "report_to"]
