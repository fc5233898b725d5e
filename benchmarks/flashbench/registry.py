"""Which of flashtorch's registered methods the attribution benchmark times, and how.

The list is read from :data:`flashtorch.METHODS` at run time: a method's family (the case it
is timed in, against which limit and peers) follows from its class, and a method the harness
cannot place is either excluded here, with the reason, or reported by :func:`unclassified`
(``tests/test_benchmarks.py`` fails on it) - a new method is never dropped silently.
"""

from __future__ import annotations

import flashtorch

#: registered methods the attribution benchmark leaves out, and why
EXCLUDED: dict[str, str] = {
    # both need a vision transformer's attention; benchmarks/bench_rollout.py times them
    # against the raw limit with unfused attention (its own floor)
    "attention_rollout": "needs a vision transformer: benchmarks/bench_rollout.py",
    "gradient_rollout": "needs a vision transformer: benchmarks/bench_rollout.py",
}

#: the families in run order, and the n-sample ones (internal batches, memory sweeps)
FAMILIES = ("gradient", "smoothgrad", "integrated_gradients", "occlusion", "cam", "scorecam")
NSAMPLE_FAMILIES = ("smoothgrad", "integrated_gradients")
#: families whose calls are long: they run --heavy-rounds rounds
HEAVY = ("smoothgrad", "integrated_gradients", "occlusion", "scorecam")


def family_of(cls: type) -> str | None:
    """The benchmark family of a method class, or ``None`` when the harness has none for it."""
    from flashtorch.cam.base import CAMMethod
    from flashtorch.cam.scorecam import ScoreCAM
    from flashtorch.saliency import Gradient, IntegratedGradients, Occlusion, SmoothGrad

    for base, family in (
        (SmoothGrad, "smoothgrad"),
        (IntegratedGradients, "integrated_gradients"),
        (Occlusion, "occlusion"),
        (Gradient, "gradient"),
        (ScoreCAM, "scorecam"),
        (CAMMethod, "cam"),
    ):
        if issubclass(cls, base):
            return family
    return None


def family_map() -> dict[str, str]:
    """``{method: family}`` for every benchmarked method, in registry order."""
    out = {}
    for name, cls in flashtorch.METHODS.items():
        fam = family_of(cls)
        if name not in EXCLUDED and fam is not None:
            out[name] = fam
    return out


def benchmarked_methods() -> tuple[str, ...]:
    """The default ``--methods``: every registered method but the :data:`EXCLUDED` ones."""
    return tuple(family_map())


def methods_of(family: str, methods: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """The benchmarked methods of ``family`` (among ``methods`` when given)."""
    return tuple(
        m for m, f in family_map().items() if f == family and (methods is None or m in methods)
    )


def unclassified() -> list[str]:
    """Registered methods neither benchmarked nor excluded (must be empty), and exclusions
    of methods no longer registered (stale)."""
    fam = family_map()
    missing = [n for n in flashtorch.METHODS if n not in fam and n not in EXCLUDED]
    stale = [f"{n} (excluded, not registered)" for n in EXCLUDED if n not in flashtorch.METHODS]
    return missing + stale
