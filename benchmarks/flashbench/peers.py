"""Adapters calling the peers - Captum, pytorch-grad-cam, FlashTorch 0.1.3 - the way their
documentation does, each returning a no-argument callable for the harness."""

from __future__ import annotations

import copy
import importlib
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .harness import Candidate, portable_path, silent

#: where FlashTorch 0.1.3 is looked for unless ``--legacy-path`` says (no default location)
DEFAULT_LEGACY = os.environ.get("FLASHTORCH013_PATH", "")

CAPTUM_OF = {
    "gradient": "Saliency(abs=False)",
    "gradient_x_input": "InputXGradient",
    "guided": "GuidedBackprop",
    "deconvnet": "Deconvolution",
    "smoothgrad": "NoiseTunnel(Saliency) smoothgrad",
    "smoothgrad_sq": "NoiseTunnel(Saliency) smoothgrad_sq",
    "vargrad": "NoiseTunnel(Saliency) vargrad",
    "integrated_gradients": "IntegratedGradients",
    "occlusion": "Occlusion",
    "gradcam": "LayerGradCam+interpolate",
    "guided_gradcam": "GuidedGradCam",
}
GRADCAM_OF = {
    "gradcam": "GradCAM",
    "gradcam_pp": "GradCAMPlusPlus",
    "layercam": "LayerCAM",
    "scorecam": "ScoreCAM",
}
#: Captum ``NoiseTunnel``'s ``nt_type`` of each SmoothGrad-family method
NT_TYPE = {"smoothgrad": "smoothgrad", "smoothgrad_sq": "smoothgrad_sq", "vargrad": "vargrad"}


def optional(module: str) -> tuple[Any, str]:
    """Import ``module``, or say why not (recorded in the report, never fatal)."""
    try:
        return importlib.import_module(module), ""
    except Exception as exc:  # any import failure is a reason to record, not to crash
        return None, f"{module} not importable: {type(exc).__name__}: {exc}"


def load_legacy(path: str) -> tuple[Any, str]:
    """Import FlashTorch 0.1.3's ``Backprop`` from ``path`` under the same process.

    FlashTorch 0.1.3 is also called ``flashtorch`` and imports itself by absolute name, so the
    new package's ``sys.modules`` entries are set aside during the import and put back after;
    the old classes keep references to the old helpers they imported. Install it with
    ``pip install --no-deps --target PATH flashtorch==0.1.3 importlib_resources`` (never into
    the environment itself: it would replace flashtorch 1.0).
    """
    if not path or not os.path.isdir(os.path.join(path, "flashtorch")):
        return None, (
            f"FlashTorch 0.1.3 not found at {portable_path(path)!r} (pip install "
            "--no-deps --target DIR flashtorch==0.1.3 importlib_resources; pass "
            "--legacy-path DIR or set FLASHTORCH013_PATH)"
        )
    os.environ.setdefault("MPLBACKEND", "Agg")
    ours = {
        k: v for k, v in sys.modules.items() if k == "flashtorch" or k.startswith("flashtorch.")
    }
    for k in ours:
        del sys.modules[k]
    sys.path.insert(0, path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            backprop = importlib.import_module("flashtorch.saliency.backprop")
            version = sys.modules["flashtorch"].__dict__.get("__version__", "?")
        return backprop.Backprop, f"FlashTorch {version} from {portable_path(path)}"
    except Exception as exc:
        return None, f"FlashTorch 0.1.3 not importable on torch {torch.__version__}: {exc!r}"
    finally:
        for k in [k for k in sys.modules if k == "flashtorch" or k.startswith("flashtorch.")]:
            del sys.modules[k]
        sys.modules.update(ours)
        sys.path.remove(path)


def captum_gradient(
    ca: Any, name: str, model: nn.Module, x: Tensor, idx: Tensor
) -> Callable[[], Any]:
    """Captum's counterpart of a flashtorch gradient method (a new object per call)."""
    if name == "gradient":
        return silent(lambda: ca.Saliency(model).attribute(x, target=idx, abs=False))
    cls = {
        "gradient_x_input": ca.InputXGradient,
        "guided": ca.GuidedBackprop,
        "deconvnet": ca.Deconvolution,
    }[name]
    return silent(lambda: cls(model).attribute(x, target=idx))


def captum_cam(
    ca: Any, name: str, model: nn.Module, layer: str, x: Tensor, idx: Tensor
) -> Callable[[], Any]:
    """Captum's ``LayerGradCam`` (+ bilinear upsampling to the input) or ``GuidedGradCam``."""
    mod = model.get_submodule(layer)
    size = tuple(x.shape[-2:])
    if name == "gradcam":

        def run() -> Tensor:
            a = ca.LayerGradCam(model, mod).attribute(x, target=idx, relu_attributions=True)
            return ca.LayerAttribution.interpolate(a, size, "bilinear")
    else:

        def run() -> Tensor:
            return ca.GuidedGradCam(model, mod).attribute(
                x, target=idx, interpolate_mode="bilinear"
            )

    return silent(run)


def captum_nsample(
    ca: Any,
    family: str,
    model: nn.Module,
    x: Tensor,
    idx: Tensor,
    n: int,
    rows: int,
    stdev: float,
    delta: bool = False,
    nt_type: str = "smoothgrad",
) -> Callable[[], Any]:
    """Captum ``NoiseTunnel(Saliency)`` (of ``nt_type``) or ``IntegratedGradients``, ``rows``
    rows per pass (``delta``: IG with ``return_convergence_delta=True``, which also runs ``x``
    and ``x'``)."""
    batch = x.shape[0]
    if family == "smoothgrad":

        def run() -> Tensor:
            return ca.NoiseTunnel(ca.Saliency(model)).attribute(
                x,
                nt_type=nt_type,
                nt_samples=n,
                nt_samples_batch_size=max(1, rows // batch),
                stdevs=stdev,
                target=idx,
                abs=False,
            )
    else:

        def run() -> Tensor:
            out = ca.IntegratedGradients(model).attribute(
                x,
                baselines=0.0,
                target=idx,
                n_steps=n,
                method="gausslegendre",
                internal_batch_size=rows,
                return_convergence_delta=delta,
            )
            return out[0] if delta else out

    return silent(run)


def captum_occlusion(
    ca: Any, model: nn.Module, x: Tensor, idx: Tensor, window: int, stride: int, per_eval: int
) -> Callable[[], Any]:
    """Captum ``Occlusion`` with a zero fill over all channels."""

    def run() -> Tensor:
        return ca.Occlusion(model).attribute(
            x,
            sliding_window_shapes=(3, window, window),
            strides=(3, stride, stride),
            target=idx,
            baselines=0.0,
            perturbations_per_eval=per_eval,
        )

    return silent(run)


def pgc_call(
    pgc: Any,
    model: nn.Module,
    cls_name: str,
    layer: str,
    x: Tensor,
    idx: Tensor,
    batch_size: int | None = None,
) -> Callable[[], Any]:
    """pytorch-grad-cam's ``cls_name`` on ``layer`` (a new object per call, hooks released)."""
    targets_mod = importlib.import_module("pytorch_grad_cam.utils.model_targets")
    module = model.get_submodule(layer)
    targets = [targets_mod.ClassifierOutputTarget(int(i)) for i in idx]

    def run() -> Any:
        cam = getattr(pgc, cls_name)(model=model, target_layers=[module])
        if batch_size is not None:
            cam.batch_size = batch_size
        try:
            return cam(input_tensor=x, targets=targets)
        finally:
            cam.activations_and_grads.release()

    return silent(run)


def legacy_candidate(
    backprop_cls: Any, model: nn.Module, x: Tensor, idx: Tensor, guided: bool, cuda: bool
) -> Candidate:
    """FlashTorch 0.1.3: ``Backprop(model).calculate_gradients`` one image at a time.

    It registers hooks on the model for good (and more ReLU hooks at every guided call), so it
    gets its own copy, and the hooks of earlier calls are cleared (untimed) before each call.
    It explains the predicted class (``target_class`` only triggers a warning when different)
    and computes every parameter's gradient.
    """
    net = copy.deepcopy(model)
    bp = backprop_cls(net)
    relus = [m for m in net.modules() if isinstance(m, nn.ReLU)]

    def prepare() -> None:
        for m in relus:
            m._forward_hooks.clear()
            m._backward_hooks.clear()

    def run() -> Tensor:
        maps = []
        for i in range(x.shape[0]):
            xi = x[i : i + 1].detach().clone().requires_grad_(True)
            maps.append(bp.calculate_gradients(xi, int(idx[i]), guided=guided, use_gpu=cuda))
        return torch.stack(maps)

    mode = "guided" if guided else "plain"
    return Candidate(
        f"FlashTorch 0.1.3 Backprop {mode}",
        "flashtorch-0.1.3",
        "guided" if guided else "gradient",
        silent(run),
        limit="limit",
        prepare=prepare if guided else None,
        note="batch 1 loop, parameter gradients, predicted class",
    )
