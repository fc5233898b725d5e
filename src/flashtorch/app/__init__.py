"""``flashtorch serve``: an interactive page to explore what a model sees (gradio, optional).

:class:`~flashtorch.app.core.Explainer` does the work without gradio (and is what the tests and
the benchmark call); :func:`~flashtorch.app.page.build_app` and
:func:`~flashtorch.app.page.launch` build and serve the page and are the only code that imports
gradio (``pip install "flashtorch[app]"``). :func:`~flashtorch.app.features.render_features`
is the Feature visualisation tab's function (also without gradio). The library never imports
this package.

Example:
    >>> from flashtorch.app import Explainer, launch   # doctest: +SKIP
    >>> launch(Explainer(["efficientnet_lite0"]))       # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

_NAMES = {
    "Explainer": "core",
    "ExplainResult": "core",
    "MapOutput": "core",
    "FeatureResult": "features",
    "render_features": "features",
    "OptionSpec": "core",
    "RunBrowser": "runs",
    "build_app": "page",
    "launch": "page",
}


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_NAMES)
