"""The talk's API: ``Backprop(model).calculate_gradients(...)``, fixed and batched."""

from __future__ import annotations

import warnings

from torch import Tensor, nn

from .._surgery import model_device, on_gpu
from .._targets import Target
from ..attribution import AttributionMethod
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

    Example:
        >>> backprop = Backprop(model)
        >>> gradients = backprop.calculate_gradients(input_, target_class=24)
        >>> max_gradients = backprop.calculate_gradients(input_, 24, take_max=True, guided=True)
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def calculate_gradients(
        self,
        input_: Tensor,
        target_class: Target = None,
        take_max: bool = False,
        guided: bool = False,
        use_gpu: bool = False,
    ) -> Tensor:
        r"""Gradients of the target class's score with respect to the input.

        Args:
            input_: ``(B, C, H, W)`` normalised images (``apply_transforms`` output).
            target_class: class index, ImageNet class name, one per image, tensor, callable or
                ``None`` for the predicted class. A warning says when the prediction differs
                from the target (the gradient is still the target's).
            take_max: return :math:`\max_c |\partial S / \partial x_c|` (Simonyan et al. 2013)
                instead of the per-channel gradients.
            guided: guided backpropagation (Springenberg et al. 2014) instead of plain gradients.
            use_gpu: compute on CUDA when available (the model is moved back afterwards).

        Returns:
            ``(C, H, W)`` / ``(1, H, W)`` with ``take_max`` for a single image as in the talk;
            ``(B, C, H, W)`` / ``(B, 1, H, W)`` for a batch of ``B > 1``.
        """
        method: AttributionMethod = GuidedBackprop(self.model) if guided else Gradient(self.model)
        with on_gpu(self.model, use_gpu):
            x = input_.to(model_device(self.model)) if isinstance(input_, Tensor) else input_
            result = method(x, target_class)
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
        maps = result.reduce("max_abs") if take_max else result.maps
        if isinstance(input_, Tensor):
            maps = maps.to(input_.device)
        return maps[0] if maps.shape[0] == 1 else maps


__all__ = ["Backprop"]
