"""The registry's names and one-line summaries, as static data (no torch import).

``flashtorch methods`` prints this table without importing torch or the method packages, so it
answers at once. It is generated from :data:`flashtorch.METHODS` and a test checks that it still
matches; after adding or renaming a method, or changing the first line of its docstring,
regenerate it::

    python -m flashtorch._method_index --write
"""

# ruff: noqa: E501
from __future__ import annotations

import sys
from pathlib import Path

#: ``(name, first line of the docstring, needs a layer)`` per registered method, in order.
METHOD_INDEX: tuple[tuple[str, str, bool], ...] = (
    # BEGIN GENERATED
    ("gradient", "Vanilla gradient saliency (Simonyan, Vedaldi & Zisserman 2013).", False),
    ("gradient_x_input", "Gradient times input (Shrikumar et al. 2016).", False),
    ("guided", "Guided backpropagation (Springenberg et al. 2014).", False),
    ("deconvnet", "Deconvnet backward pass (Zeiler & Fergus 2014).", False),
    (
        "integrated_gradients",
        "Integrated Gradients (Sundararajan et al. 2017) with a choice of baseline and quadrature.",
        False,
    ),
    ("occlusion", "Occlusion sensitivity (Zeiler & Fergus 2014), batched over windows.", False),
    (
        "smoothgrad",
        "SmoothGrad (Smilkov et al. 2017): average a gradient map over noisy copies of the input.",
        False,
    ),
    (
        "smoothgrad_sq",
        "SmoothGrad-squared (Hooker et al. 2019): :math:`\\frac1n \\sum_s M(x + \\epsilon_s)^2`.",
        False,
    ),
    (
        "vargrad",
        "VarGrad (Adebayo et al. 2018): the variance of a gradient map over noisy copies.",
        False,
    ),
    (
        "gradcam",
        "Grad-CAM: activation maps weighted by their average gradient (Selvaraju et al. 2017).",
        True,
    ),
    (
        "gradcam_pp",
        "Grad-CAM++: pixel-weighted positive gradients (Chattopadhay et al. 2018).",
        True,
    ),
    ("guided_gradcam", "Guided Grad-CAM: guided backprop times the upsampled Grad-CAM map.", True),
    (
        "layercam",
        "Layer-CAM: activations weighted pixel by pixel by their positive gradients.",
        True,
    ),
    (
        "scorecam",
        "Score-CAM: channels weighted by the score of the input they mask (Wang et al. 2020).",
        True,
    ),
    (
        "attention_rollout",
        "Attention rollout: attention fused over heads, plus identity, multiplied through layers.",
        False,
    ),
    ("gradient_rollout", "Gradient-weighted attention rollout (Chefer, Gur & Wolf 2021).", False),
    # END GENERATED
)


def generate() -> tuple[tuple[str, str, bool], ...]:
    """The table as the live registry has it (imports torch and every method family)."""
    import inspect

    from . import METHODS

    rows = []
    for name, cls in METHODS.items():
        doc = (inspect.getdoc(cls) or "").splitlines()
        rows.append((name, doc[0] if doc else "", bool(getattr(cls, "needs_layer", False))))
    return tuple(rows)


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _source(rows: tuple[tuple[str, str, bool], ...]) -> str:
    out = []
    for name, summary, layer in rows:
        line = f"    ({_quoted(name)}, {_quoted(summary)}, {layer!r}),\n"
        if len(line) > 101:  # as ruff format writes a tuple too long for one line
            line = f"    (\n        {_quoted(name)},\n        {_quoted(summary)},\n        {layer!r},\n    ),\n"
        out.append(line)
    return "".join(out)


def write(path: Path = Path(__file__)) -> None:
    """Rewrite the generated block of this file from the live registry."""
    text = path.read_text(encoding="utf-8")
    head, rest = text.split("    # BEGIN GENERATED\n", 1)
    _, tail = rest.split("    # END GENERATED\n", 1)
    path.write_text(
        head + "    # BEGIN GENERATED\n" + _source(generate()) + "    # END GENERATED\n" + tail,
        encoding="utf-8",
    )


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write()
    else:
        sys.stdout.write(_source(generate()))
