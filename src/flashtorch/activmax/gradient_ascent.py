"""The talk's API: ``GradientAscent(model).visualize(layer, ...)`` and ``.deepdream(...)``, fixed.

FlashTorch 0.1.3 ascended raw pixels without a regulariser, accepted only layers whose type was
exactly ``nn.Conv2d``, let parameter gradients accumulate and broke after a guided
``Backprop``. This version keeps the signatures and runs on the render engine
(:func:`~flashtorch.activmax.render`: Fourier + decorrelated-colour image, Lucid's random
transforms, Adam) and on :func:`~flashtorch.activmax.deepdream`; a layer is any module or dotted
name, indices are validated, and the model is left exactly as found.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._surgery import LayerRecorder, find_layer, model_device, on_gpu, preserved_state
from ..errors import InputError, InputTypeError
from .deepdream import deepdream as _deepdream
from .objectives import LayerSpec, channel
from .param import image
from .render import IMAGENET_MEAN, IMAGENET_STD, Normalize, render

#: Adam's learning rate for ``lr=1`` (Lucid's 0.05 is tuned for hundreds of steps; the talk's
#: default is 30 iterations, so its unit step is twice as large).
BASE_LR = 0.1

#: DeepDream step (RGB units in [0, 1], per mean-normalised gradient) for ``lr=1``; the talk's
#: default ``lr=0.1`` therefore moves pixels by ~0.005 per step, as in the original notebook.
DREAM_BASE_LR = 0.05


def _check_index(value: Any, name: str) -> int:
    if isinstance(value, bool) or not (isinstance(value, int) or hasattr(value, "__index__")):
        raise InputTypeError(f"{name} must be an int, got {value!r}")
    return int(value)


class GradientAscent:
    """Activation maximisation and DeepDream with the FlashTorch talk's API.

    Args:
        model: a network (a classifier or its feature extractor), e.g.
            ``flashtorch.models.load_pretrained()`` or a torchvision model.
        img_size: side of the rendered images in pixels.
        lr: step-size multiplier (1 = the tuned default; see :data:`BASE_LR`).
        use_gpu: run on CUDA when available (a CPU model is moved there for the call and back).
        normalize: the model's input normalisation (ImageNet by default; see
            :func:`~flashtorch.activmax.render`). ``input_`` tensors are taken as normalised
            with it, like :func:`flashtorch.utils.apply_transforms` output (with a callable
            ``normalize``, which cannot be inverted, ``input_`` must be RGB in ``[0, 1]``).
        transforms: render transforms (``"standard"`` = Lucid's).
        seed: seed of every render (same seed, same images).
        progress: show progress bars.

    Example:
        >>> g = GradientAscent(load_pretrained())
        >>> g.visualize("net.blocks.4", [0, 1, 2, 3], num_iter=128)
        >>> g.deepdream("examples/images/coffee.jpg", "net.blocks.5", 10)
    """

    def __init__(
        self,
        model: nn.Module,
        img_size: int = 224,
        lr: float = 1.0,
        use_gpu: bool = False,
        *,
        normalize: Normalize = "imagenet",
        transforms: Any = "standard",
        seed: int | None = 0,
        progress: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.img_size = img_size
        self.lr = lr
        self.use_gpu = use_gpu
        self.normalize = normalize
        self.transforms = transforms
        self.seed = seed
        self.progress = progress
        self.output: Any = None
        self.figure: Any = None

    # ---- helpers ----------------------------------------------------------------------------

    def _stats(self) -> tuple[Sequence[float], Sequence[float]] | None:
        n = self.normalize
        if isinstance(n, str) and n.lower() == "imagenet":
            return IMAGENET_MEAN, IMAGENET_STD
        if isinstance(n, tuple) and len(n) == 2:
            return n  # type: ignore[return-value]
        return None

    def _to_rgb(self, input_: Tensor) -> Tensor:
        if not isinstance(input_, Tensor) or input_.dim() not in (3, 4) or input_.shape[-3] != 3:
            shape = tuple(input_.shape) if isinstance(input_, Tensor) else type(input_).__name__
            raise InputError(f"input_ must be a (1, 3, H, W) normalised tensor, got {shape}")
        x = input_.detach().float()
        x = x.unsqueeze(0) if x.dim() == 3 else x
        stats = self._stats()
        if stats is not None:
            mean = torch.tensor(stats[0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(stats[1], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            x = x * std + mean
        return x.clamp(0, 1)

    def _num_channels(self, layer: LayerSpec) -> int:
        """Channels of ``layer``'s output, from one forward pass on a grey image."""
        size = max(32, min(int(self.img_size), 224))
        with preserved_state(self.model), LayerRecorder(self.model, layer) as rec, torch.no_grad():
            x = torch.full((1, 3, size, size), 0.5, device=model_device(self.model))
            stats = self._stats()
            if stats is not None:
                mean = torch.tensor(stats[0], device=x.device).view(1, 3, 1, 1)
                std = torch.tensor(stats[1], device=x.device).view(1, 3, 1, 1)
                x = (x - mean) / std
            elif callable(self.normalize):
                x = self.normalize(x)
            try:
                self.model(x)
            except RuntimeError as exc:  # a later layer too small for this size: not needed
                if "too small" not in str(exc) or not rec.outputs:
                    raise
            return int(rec.output.shape[1])

    def _render(
        self, layer: LayerSpec, idxs: list[int], input_: Tensor | None, num_iter: int
    ) -> list[list[Tensor]]:
        find_layer(self.model, layer)
        if input_ is None:
            param = image(int(self.img_size), batch=len(idxs))
        else:
            start = self._to_rgb(input_)
            if start.shape[0] == 1 and len(idxs) > 1:
                start = start.expand(len(idxs), -1, -1, -1)
            param = image(init=start)
        snaps: list[list[Tensor]] = [[] for _ in idxs]

        def keep(_step: int, images: Tensor, _values: Tensor) -> None:
            for i, img in enumerate(images.detach().clamp(0, 1).cpu()):
                snaps[i].append(img.unsqueeze(0))

        objective = channel(layer, idxs if len(idxs) > 1 else idxs[0])
        with on_gpu(self.model, self.use_gpu):
            render(
                self.model,
                objective,
                param=param,
                transforms=self.transforms,
                steps=num_iter,
                seed=self.seed,
                progress=self.progress,
                lr=BASE_LR * float(self.lr),
                normalize=self.normalize,
                callback=keep,
            )
        return snaps

    # ---- the talk's API ---------------------------------------------------------------------

    def optimize(
        self, layer: LayerSpec, filter_idx: int, input_: Tensor | None = None, num_iter: int = 30
    ) -> list[Tensor]:
        """Render an image that maximally activates channel ``filter_idx`` of ``layer``.

        Maximises the channel's mean activation over a Fourier-parametrised, colour-decorrelated
        image through random pad/jitter/scale/rotate (Olah et al. 2017, Distill).

        Args:
            layer: any module of the model or its dotted name (``"net.blocks.4"``).
            filter_idx: the channel.
            input_: optional start image ``(1, 3, H, W)``, normalised like
                ``apply_transforms`` output; default: noise of ``img_size``.
            num_iter: number of optimisation steps.

        Returns:
            ``num_iter`` images ``(1, 3, H, W)`` in ``[0, 1]``, one after each step (the last
            is the result).

        Raises:
            LayerError: ``layer`` is not in the model.
            InputError: ``filter_idx`` is not a valid channel (the message gives the range).
        """
        idx = _check_index(filter_idx, "filter_idx")
        return self._render(layer, [idx], input_, num_iter)[0]

    def visualize(
        self,
        layer: LayerSpec,
        filter_idxs: int | Sequence[int] | None = None,
        lr: float = 1.0,
        num_iter: int = 30,
        num_subplots: int = 4,
        figsize: tuple[float, float] = (4, 4),
        title: str = "Conv2d",
        return_output: bool = False,
    ) -> Any:
        """Render one or several channels and plot them.

        1. ``filter_idxs`` an int: one channel, one figure of ``figsize``.
        2. a list of ints: all of them, rendered together in one batch, in a grid.
        3. ``None``: ``num_subplots`` channels drawn at random (seeded) from the layer.

        Args:
            layer: any module of the model or its dotted name.
            filter_idxs: channel(s), see above.
            lr: step-size multiplier (sets :attr:`lr`, as in the talk).
            num_iter: optimisation steps.
            num_subplots: number of random channels in case 3.
            figsize: figure size of case 1.
            title: figure title.
            return_output: return the optimisation output instead of the figure.

        Returns:
            The ``Figure`` (also kept in :attr:`figure`), or with ``return_output``: case 1, the
            list of ``num_iter`` images; cases 2-3, one such list per channel.
        """
        from ..plot.activmax import channel_grid, image_figure

        self.lr = lr
        tolist = getattr(filter_idxs, "tolist", None)
        if callable(tolist) and not isinstance(filter_idxs, (int, str)):
            filter_idxs = tolist()  # numpy arrays, tensors
        if filter_idxs is None:
            n = self._num_channels(layer)
            k = min(int(num_subplots), n)
            g = torch.Generator().manual_seed(0 if self.seed is None else self.seed)
            idxs = sorted(torch.randperm(n, generator=g)[:k].tolist())
        elif isinstance(filter_idxs, (Sequence, range)) and not isinstance(filter_idxs, str):
            idxs = [_check_index(i, "filter_idxs") for i in filter_idxs]
            if not idxs:
                raise InputError("filter_idxs is an empty list")
        else:
            idx = _check_index(filter_idxs, "filter_idxs")
            out = self.optimize(layer, idx, num_iter=num_iter)
            self.output = out
            self.figure = image_figure(out[-1], title=title, figsize=figsize)
            return out if return_output else self.figure
        snaps = self._render(layer, idxs, None, num_iter)
        self.output = snaps
        self.figure = channel_grid(
            torch.cat([s[-1] for s in snaps]), [f"filter {i}" for i in idxs], title=title
        )
        return snaps if return_output else self.figure

    def deepdream(
        self,
        img_path: Any,
        layer: LayerSpec,
        filter_idx: int,
        lr: float = 0.1,
        num_iter: int = 20,
        figsize: tuple[float, float] = (4, 4),
        title: str = "DeepDream",
        return_output: bool = False,
        *,
        octaves: int = 1,
        octave_scale: float = 1.4,
    ) -> Any:
        """DeepDream on a photo: amplify channel ``filter_idx`` of ``layer`` in it.

        The photo is resized and centre-cropped to ``img_size`` (as ``apply_transforms``), then
        dreamed with ``num_iter`` steps at ``img_size``: the talk's (and FlashTorch 0.1.3's)
        contract, ``num_iter`` images of ``img_size`` (Mordvintsev et al. 2015). ``octaves > 1``
        dreams over that many scales instead, smallest first, ``num_iter`` steps each.

        Args:
            img_path: a path (or anything ``flashtorch.utils.load_image`` accepts).
            layer: any module of the model or its dotted name.
            filter_idx: the channel to amplify.
            lr: step size; 0.1 moves pixels by ~0.005 per step (see :data:`DREAM_BASE_LR`).
            num_iter: steps per octave.
            figsize: figure size.
            title: figure title.
            return_output: return the per-step images instead of the figure.
            octaves: number of scales (1: only ``img_size``).
            octave_scale: size ratio between consecutive octaves.

        Returns:
            The ``Figure``, or with ``return_output`` the dream after each step:
            ``octaves * num_iter`` images ``(1, 3, h, w)`` in ``[0, 1]`` (``num_iter`` of
            ``img_size`` by default; with octaves, each of its octave's size, the last at
            ``img_size``).

        Raises:
            InputError: an octave is too small for the model (use fewer octaves or a larger
                ``img_size``).
        """
        from ..plot.activmax import image_figure
        from ..utils.image import apply_transforms

        idx = _check_index(filter_idx, "filter_idx")
        find_layer(self.model, layer)
        photo = apply_transforms(img_path, int(self.img_size), mean=(0.0,) * 3, std=(1.0,) * 3)
        steps: list[Tensor] = []

        def keep(_step: int, images: Tensor, _values: Tensor) -> None:
            steps.append(images.detach().clamp(0, 1).cpu())

        with on_gpu(self.model, self.use_gpu):
            _deepdream(
                self.model,
                photo,
                channel(layer, idx),
                octaves=octaves,
                octave_scale=octave_scale,
                steps=num_iter,
                lr=DREAM_BASE_LR * float(lr),
                normalize=self.normalize,
                seed=self.seed,
                progress=self.progress,
                callback=keep,
            )
        self.output = steps
        self.figure = image_figure(steps[-1], title=title, figsize=figsize)
        return steps if return_output else self.figure


__all__ = ["BASE_LR", "DREAM_BASE_LR", "GradientAscent"]
