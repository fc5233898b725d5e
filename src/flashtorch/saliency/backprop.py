"""The talk's API: ``Backprop(model).calculate_gradients(...)`` and ``.visualize(...)``, fixed.

FlashTorch 0.1.3's ``Backprop`` with the same methods and arguments, batched, on any model, and
leaving the model as it was found.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from .._surgery import model_device, on_gpu
from .._targets import ResolvedTarget, Target
from ..attribution import AttributionMethod, reduce_channels
from .gradient import Gradient, GuidedBackprop


class Backprop:
    """Saliency maps by backpropagation, with the API of the FlashTorch talk.

    Every call costs one forward and one input-only backward pass, works on any image model
    (gradients are taken with respect to the input tensor itself - no first-layer hook) and on
    batches, and leaves the model exactly as it was (hooks, train/eval mode, ``requires_grad``,
    ``.grad``), also when it raises.

    Args:
        model: the network, e.g. ``flashtorch.models.load_pretrained()``, a torchvision or timm
            model, or a Hugging Face ``ViTForImageClassification`` (outputs with ``.logits``,
            a dict with ``"logits"`` or a tuple of logits first are read as their logits).

    Attributes:
        model: the network.
        gradients: the per-channel gradients ``(B, C, H, W)`` of the last call (``None``
            before the first), as FlashTorch 0.1.3 kept them.

    Example:
        >>> backprop = Backprop(model)
        >>> gradients = backprop.calculate_gradients(input_, target_class=24)
        >>> max_gradients = backprop.calculate_gradients(input_, 24, take_max=True, guided=True)
        >>> backprop.visualize(input_, 24, guided=True)  # the four-panel figure
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.gradients: Tensor | None = None

    def calculate_gradients(
        self,
        input_: Tensor,
        target_class: Target = None,
        take_max: bool | str = False,
        guided: bool = False,
        use_gpu: bool = False,
    ) -> Tensor:
        r"""Gradients of the target class's score with respect to the input.

        Args:
            input_: ``(B, C, H, W)`` normalised images (``apply_transforms`` output).
            target_class: class index, ImageNet class name, one per image, tensor, callable or
                ``None`` for the predicted class. A warning says when the prediction differs
                from the target (the gradient is still the target's).
            take_max: collapse the channels into one map. ``True`` (or ``"max_abs"``) is the
                saliency map of Simonyan et al. 2013, :math:`M = \max_c |\partial S /
                \partial x_c|`; ``"max"`` is FlashTorch 0.1.3's signed
                :math:`\max_c \partial S / \partial x_c` (which hides pixels whose gradient is
                negative in every channel); any other name of
                :func:`~flashtorch.attribution.reduce_channels` (``"sum"``, ``"l2"``...) works.
            guided: guided backpropagation (Springenberg et al. 2014) instead of plain gradients.
            use_gpu: compute on CUDA when available (the model is moved back afterwards).

        Returns:
            ``(C, H, W)`` / ``(1, H, W)`` with ``take_max`` for a single image as in the talk;
            ``(B, C, H, W)`` / ``(B, 1, H, W)`` for a batch of ``B > 1``; on the input's device,
            in its dtype.

        Raises:
            MethodError: ``take_max`` names no channel reduction.
            TargetError: a bad target (see :mod:`flashtorch._targets`), before the model runs.
        """
        how = _reduction(take_max)
        method: AttributionMethod = GuidedBackprop(self.model) if guided else Gradient(self.model)
        target: Any = target_class
        if isinstance(input_, Tensor) and input_.dim() == 4 and input_.shape[0]:
            # a bad target fails here, before the model moves to the GPU (bad inputs: below)
            target = ResolvedTarget.of(target_class, input_.shape[0])
        with on_gpu(self.model, use_gpu):
            x = input_.to(model_device(self.model)) if isinstance(input_, Tensor) else input_
            result = method(x, target)
        if target_class is not None and result.targets is not None and result.predicted is not None:
            differs = result.predicted != result.targets
            if bool(differs.any()):
                which = differs.nonzero().flatten().tolist()
                warnings.warn(
                    "The predicted class does not equal the target class for image(s) "
                    f"{which} (predicted {result.predicted[differs].tolist()}, target "
                    f"{result.targets[differs].tolist()}). Calculating the gradient with "
                    "respect to the target class.",
                    UserWarning,
                    stacklevel=2,
                )
        self.gradients = result.maps
        maps = result.maps if how is None else reduce_channels(result.maps, how)
        if isinstance(input_, Tensor):
            maps = maps.to(input_.device)
        return maps[0] if maps.shape[0] == 1 else maps

    def visualize(
        self,
        input_: Tensor,
        target_class: Target,
        guided: bool = False,
        use_gpu: bool = False,
        figsize: tuple[float, float] = (16, 4),
        cmap: str = "viridis",
        alpha: float = 0.5,
        return_output: bool = False,
        *,
        take_max: bool | str = True,
        save_path: Any = None,
    ) -> Any:
        """Calculate the gradients and draw the talk's four panels (FlashTorch 0.1.3's method).

        Input image, gradients across RGB channels, max gradients, and the max gradients over
        the image (:func:`flashtorch.plot.visualize`); one row per image of a batch. Costs one
        forward and one backward pass (0.1.3 ran two).

        Args:
            input_: ``(B, C, H, W)`` normalised images (``apply_transforms`` output).
            target_class: as in :meth:`calculate_gradients`.
            guided: guided backpropagation instead of plain gradients.
            use_gpu: compute on CUDA when available.
            figsize: size of one row of four panels.
            cmap: colour map of the max-gradient panels.
            alpha: largest opacity of the saliency in the overlay.
            return_output: return ``(gradients, max_gradients)`` instead of the figure.
            take_max: the channel reduction of the max-gradient panels (see
                :meth:`calculate_gradients`; ``"max"`` draws 0.1.3's signed maximum).
            save_path: also write the figure there (atomically).

        Returns:
            The matplotlib ``Figure`` (headless: it shows as a cell's value in a notebook, or
            save it), or with ``return_output`` the tensors ``(gradients, max_gradients)``
            that :meth:`calculate_gradients` returns.
        """
        from ..plot import visualize as plot_visualize

        how = _reduction(take_max) or "max_abs"
        gradients = self.calculate_gradients(input_, target_class, guided=guided, use_gpu=use_gpu)
        full = self.gradients
        assert full is not None
        max_gradients = reduce_channels(full, how).to(gradients.device)
        if full.shape[0] == 1:
            max_gradients = max_gradients[0]
        fig = plot_visualize(
            input_,
            gradients,
            max_gradients,
            cmap=cmap,
            alpha=alpha,
            figsize=figsize,
            save_path=save_path,
        )
        return (gradients, max_gradients) if return_output else fig


def _reduction(take_max: bool | str) -> str | None:
    """``take_max`` -> a :func:`~flashtorch.attribution.reduce_channels` name or ``None``."""
    if isinstance(take_max, str):
        reduce_channels(torch.zeros(1, 1, 1, 1), take_max)  # MethodError for an unknown name
        return take_max
    return "max_abs" if take_max else None


__all__ = ["Backprop"]
