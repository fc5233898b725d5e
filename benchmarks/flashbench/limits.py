"""The physical limits every method is measured against: the least work its output needs."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def raw_limit(model: nn.Module, x: Tensor, idx: Tensor) -> Tensor:
    """Forward + ``torch.autograd.grad`` of the target scores w.r.t. the input."""
    xx = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = model(xx)
        (g,) = torch.autograd.grad(out.gather(1, idx[:, None]).sum(), xx)
    return g


def chunked_raw_limit(model: nn.Module, rows: Tensor, idx: Tensor, size: int) -> Tensor:
    """The raw limit over pre-built expanded rows, ``size`` rows per pass."""
    out = []
    for a in range(0, rows.shape[0], size):
        out.append(raw_limit(model, rows[a : a + size], idx[a : a + size]))
    return torch.cat(out)


def forward_limit(model: nn.Module, x: Tensor, rows: Tensor, size: int) -> Tensor:
    """Gradient-free forwards: the clean batch, then the expanded rows ``size`` at a time."""
    with torch.no_grad():
        outs = [model(x)]
        for a in range(0, rows.shape[0], size):
            outs.append(model(rows[a : a + size]))
    return torch.cat(outs)


def forward_only(model: nn.Module, x: Tensor) -> Tensor:
    """One gradient-free forward."""
    with torch.no_grad():
        return model(x)


def layer_limit(model: nn.Module, layer: str, x: Tensor, idx: Tensor) -> Tensor:
    """Forward + ``autograd.grad`` of the scores w.r.t. the layer's activation.

    The activation is made a leaf (a forward hook returns ``out.detach().requires_grad_()``), so
    nothing before the layer builds a graph: the least work a gradient CAM can do.
    """
    module = model.get_submodule(layer)
    box: list[Tensor] = []

    def hook(_m: nn.Module, _i: Any, out: Tensor) -> Tensor:
        leaf = out.detach().requires_grad_(True)
        box.append(leaf)
        return leaf

    handle = module.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            out = model(x)
            (g,) = torch.autograd.grad(out.gather(1, idx[:, None]).sum(), box[0])
    finally:
        handle.remove()
    return g


def expanded(x: Tensor, idx: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Sample-major expanded rows (row r = sample r // B of image r % B)."""
    return x.repeat(n, 1, 1, 1).contiguous(), idx.repeat(n)
