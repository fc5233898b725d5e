"""Fine-tune a classifier's head and last blocks on a new dataset - small, seeded, CPU-friendly.

This is the "your own model" half of the talk's transfer-learning demo: take a pretrained
network, give it a new head, train the head and a few top blocks, then compare what the
pretrained and the fine-tuned model look at (:func:`flashtorch.plot.compare_models`).

:func:`fine_tune` works on a copy by default, so the pretrained model stays available for the
comparison. Everything outside the ``trainable`` modules is frozen and kept in eval mode
(BatchNorm statistics of frozen layers do not move). With ``cache_at=`` the frozen trunk runs
**once** over the data: the output of that layer is stored and the trainable top is trained on
the stored features, which makes a CPU fine-tuning of EfficientNet-Lite0 a matter of minutes.
While training on stored features the trunk still runs, on a tiny dummy input, and a forward hook
substitutes the stored features for the layer's output - so any model whose output depends on the
input only through that layer can be cached, whatever its code; this is checked on real data
before training starts.

Example:
    >>> from flashtorch.datasets import SyntheticLocalization
    >>> from flashtorch.models import load_pretrained
    >>> train = SyntheticLocalization(1600, seed=0)
    >>> val = SyntheticLocalization(400, seed=1)
    >>> result = fine_tune(load_pretrained(), train, val=val, num_classes=4,  # doctest: +SKIP
    ...                    trainable=["net.blocks.5", "net.blocks.6", "net.conv_head",
    ...                               "net.bn2", "net.classifier"],
    ...                    cache_at="net.blocks.4", epochs=6)
    >>> result.val_accuracy  # doctest: +SKIP
    0.99
"""

from __future__ import annotations

import copy as _copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ._surgery import HandleList, find_layer, model_device
from .errors import InputError, LayerError

Logger = Callable[[str], None]


@dataclass
class FineTuneResult:
    """What :func:`fine_tune` returns.

    Attributes:
        model: the fine-tuned model, in eval mode (a copy unless ``copy=False``).
        head: dotted name of the classification layer.
        trainable: names of the modules that were trained.
        history: one dict per epoch: ``epoch``, ``loss`` (mean training cross-entropy),
            ``train_accuracy``, ``val_accuracy`` (if a validation set was given), ``seconds``.
        val_accuracy: held-out top-1 accuracy after the last epoch, or ``None``.
        seconds: wall time of the whole call, feature caching included.
        cache_seconds: wall time spent running the frozen trunk to cache features (0 without).
    """

    model: nn.Module
    head: str
    trainable: list[str]
    history: list[dict[str, float]] = field(default_factory=list)
    val_accuracy: float | None = None
    seconds: float = 0.0
    cache_seconds: float = 0.0


def find_head(model: nn.Module) -> str:
    """Dotted name of the model's classification layer: its last ``nn.Linear`` (definition order).

    Raises:
        LayerError: the model has no ``nn.Linear``; name the head explicitly.
    """
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        raise LayerError(
            f"{type(model).__name__} has no nn.Linear to use as the head; pass head='dotted.name'"
        )
    return last


def replace_head(
    model: nn.Module, num_classes: int, head: str | None = None, *, seed: int = 0
) -> str:
    """Replace the model's final ``nn.Linear`` by a fresh one with ``num_classes`` outputs.

    This *modifies* ``model`` (it is meant for a copy); the new layer is initialised with
    PyTorch's default ``nn.Linear`` scheme from a seeded generator and placed on the old
    layer's device and dtype.

    Args:
        model: the model to change.
        num_classes: number of outputs of the new head.
        head: dotted name of the layer to replace (default: :func:`find_head`).
        seed: seed of the new layer's initialisation.

    Returns:
        The head's dotted name.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise InputError(f"num_classes must be a positive integer, got {num_classes!r}")
    name = head if head is not None else find_head(model)
    _, old = find_layer(model, name)
    if not isinstance(old, nn.Linear):
        raise LayerError(f"head {name!r} is a {type(old).__name__}, not an nn.Linear")
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    gen = torch.Generator().manual_seed(seed)
    bound = 1.0 / old.in_features**0.5
    with torch.no_grad():
        new.weight.uniform_(-bound, bound, generator=gen)
        if new.bias is not None:
            new.bias.uniform_(-bound, bound, generator=gen)
    new.to(device=old.weight.device, dtype=old.weight.dtype)
    parent_name, _, child = name.rpartition(".")
    parent = find_layer(model, parent_name)[1] if parent_name else model
    setattr(parent, child, new)
    return name


def _xy(item: Any) -> tuple[Tensor, int]:
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise InputError(
            f"dataset items must be (image, label, ...) tuples; got {type(item).__name__}"
        )
    return item[0], int(item[1])


def _collate(items: list[Any]) -> tuple[Tensor, Tensor]:
    pairs = [_xy(it) for it in items]
    return torch.stack([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])


class _Substitute:
    """Forward hook that replaces a layer's output by stored features while active."""

    def __init__(self) -> None:
        self.features: Tensor | None = None

    def __call__(self, _module: nn.Module, _inputs: Any, output: Any) -> Any:
        if self.features is None:
            return None
        return self.features


class _Cache:
    """Stored outputs of the frozen trunk and a way to run the top on them."""

    def __init__(self, model: nn.Module, layer: str, device: torch.device) -> None:
        self.model = model
        self.name, self.module = find_layer(model, layer)
        self.device = device
        self.probe: Tensor | None = None

    def features(self, loader: DataLoader) -> TensorDataset:
        captured: list[Tensor] = []

        def hook(_m: nn.Module, _i: Any, output: Any) -> None:
            captured.append(output[0] if isinstance(output, (tuple, list)) else output)

        feats, labels = [], []
        handles = HandleList([self.module.register_forward_hook(hook)])
        try:
            with torch.no_grad():
                for x, y in loader:
                    captured.clear()
                    self.model(x.to(self.device))
                    if len(captured) != 1:
                        raise LayerError(
                            f"cache_at={self.name!r} ran {len(captured)} times in one forward "
                            "pass; cache at a layer that runs exactly once"
                        )
                    feats.append(captured[0].detach().cpu())
                    labels.append(y)
        finally:
            handles.remove()
        return TensorDataset(torch.cat(feats), torch.cat(labels))

    def choose_probe(self, sample: Tensor) -> None:
        """A tiny input that runs the trunk cheaply (falls back to the real size)."""
        c = sample.shape[1]
        for side in (32, 64):
            probe = torch.zeros(1, c, side, side, device=self.device, dtype=sample.dtype)
            try:
                with torch.no_grad():
                    self.model(probe)
            except Exception:  # the model may need its native size
                continue
            self.probe = probe
            return
        self.probe = torch.zeros(1, *sample.shape[1:], device=self.device, dtype=sample.dtype)

    def run(self, features: Tensor) -> Tensor:
        """The model's output with ``features`` in place of the layer's output."""
        assert self.probe is not None
        sub = _Substitute()
        sub.features = features
        handles = HandleList([self.module.register_forward_hook(sub)])
        try:
            return self.model(self.probe.expand(features.shape[0], *self.probe.shape[1:]))
        finally:
            handles.remove()


def _set_modes(model: nn.Module, trainable: list[nn.Module], training: bool) -> None:
    model.eval()
    if training:
        for m in trainable:
            m.train()


def fine_tune(
    model: nn.Module,
    train: Dataset,
    *,
    val: Dataset | None = None,
    num_classes: int | None = None,
    head: str | None = None,
    trainable: Sequence[str] | None = None,
    cache_at: str | None = None,
    epochs: int = 5,
    batch_size: int = 32,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    device: torch.device | str | None = None,
    copy: bool = True,
    num_workers: int = 0,
    log: Logger | None = None,
) -> FineTuneResult:
    """Train a classifier's head (and chosen top blocks) on ``train`` with cross-entropy.

    AdamW with a cosine learning-rate decay over all steps; batches shuffled by a seeded
    generator; the global RNG (dropout...) is forked and seeded for the call, so a run is
    reproducible and the caller's RNG state is untouched.

    Args:
        model: a classifier mapping ``(B, C, H, W)`` to ``(B, K)``. Not modified when
            ``copy=True`` (the default).
        train: a dataset of ``(image (C, H, W), label, ...)`` items, e.g.
            :class:`flashtorch.datasets.SyntheticLocalization`.
        val: an optional held-out dataset of the same kind; its accuracy is measured after
            every epoch.
        num_classes: replace the head by a fresh ``nn.Linear`` with this many outputs
            (``None``: keep the head, e.g. to fine-tune on the same classes).
        head: dotted name of the head (default: the last ``nn.Linear``).
        trainable: dotted names of the modules to train (default: the head only). Everything
            else is frozen and stays in eval mode.
        cache_at: dotted name of a frozen layer whose output is computed once per image and
            reused every epoch (the model's output must depend on the input only through it;
            this is checked). ``None``: run the whole model at every step.
        epochs: passes over ``train``.
        batch_size: images per step.
        lr: peak learning rate.
        weight_decay: AdamW weight decay.
        seed: seed of the head initialisation, the shuffling and the global RNG inside the call.
        device: where to train (default: the model's device).
        copy: train a deep copy (default) rather than the model itself.
        num_workers: ``DataLoader`` worker processes reading ``train``/``val`` (useful when
            items are generated on the fly, like the synthetic dataset's).
        log: optional callable receiving one progress line per epoch.

    Returns:
        A :class:`FineTuneResult` with the trained model in eval mode.

    Raises:
        InputError: bad numbers, empty dataset, or a cache layer the output does not depend on
            alone.
        LayerError: unknown layer names; a trainable module before ``cache_at``.
    """
    start = time.perf_counter()
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    if not lr > 0:
        raise InputError(f"lr must be positive, got {lr!r}")
    if len(train) == 0:  # type: ignore[arg-type]
        raise InputError("the training dataset is empty")

    net = _copy.deepcopy(model) if copy else model
    dev = torch.device(device) if device is not None else model_device(net)
    net.to(dev)
    head_name = head if head is not None else find_head(net)
    if num_classes is not None:
        replace_head(net, num_classes, head_name, seed=seed)
    names = list(trainable) if trainable is not None else [head_name]
    if not names:
        raise InputError("trainable must name at least one module")
    modules = [find_layer(net, n)[1] for n in names]
    train_params = {id(p) for m in modules for p in m.parameters()}
    flags = [(p, p.requires_grad) for p in net.parameters()]
    params = [p for p in net.parameters() if id(p) in train_params]
    if not params:
        raise InputError(f"the trainable modules {names} have no parameters")

    loader_gen = torch.Generator().manual_seed(seed)
    log = log or (lambda _line: None)
    devices = [dev.index or 0] if dev.type == "cuda" else []
    result = FineTuneResult(model=net, head=head_name, trainable=names)
    try:
        for p in net.parameters():
            p.requires_grad_(id(p) in train_params)
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            cache: _Cache | None = None
            train_data: Dataset = train
            val_data: Dataset | None = val
            collate: Callable | None = _collate
            if cache_at is not None:
                t0 = time.perf_counter()
                cache, train_data, val_data = _build_cache(
                    net, cache_at, modules, names, train, val, batch_size, dev, num_workers
                )
                collate = None
                result.cache_seconds = time.perf_counter() - t0
                log(f"cached {cache.name!r} features in {result.cache_seconds:.1f} s")

            def forward(x: Tensor) -> Tensor:
                return cache.run(x) if cache is not None else net(x)

            workers = 0 if cache is not None else num_workers
            loader = DataLoader(
                train_data,
                batch_size=batch_size,
                shuffle=True,
                generator=loader_gen,
                collate_fn=collate,
                num_workers=workers,
            )
            optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
            total = epochs * len(loader)
            schedule = torch.optim.lr_scheduler.LambdaLR(
                optimiser,
                lambda step: 0.5 * (1 + torch.cos(torch.tensor(torch.pi * step / total)).item()),
            )
            for epoch in range(1, epochs + 1):
                t0 = time.perf_counter()
                _set_modes(net, modules, training=True)
                seen, correct, loss_sum = 0, 0, 0.0
                for x, y in loader:
                    x, y = x.to(dev), y.to(dev)
                    out = forward(x)
                    loss = F.cross_entropy(out, y)
                    optimiser.zero_grad(set_to_none=True)
                    loss.backward()
                    if cache is not None and epoch == 1 and seen == 0:
                        _check_gradients(names, modules, cache_at)
                    optimiser.step()
                    schedule.step()
                    seen += len(y)
                    correct += int((out.argmax(1) == y).sum())
                    loss_sum += float(loss.detach()) * len(y)
                row = {
                    "epoch": float(epoch),
                    "loss": loss_sum / seen,
                    "train_accuracy": correct / seen,
                }
                if val_data is not None:
                    row["val_accuracy"] = _accuracy(
                        forward, net, modules, val_data, batch_size, dev, collate, workers
                    )
                    result.val_accuracy = row["val_accuracy"]
                row["seconds"] = time.perf_counter() - t0
                result.history.append(row)
                log(
                    f"epoch {epoch}/{epochs}: loss {row['loss']:.4f}, train acc "
                    f"{row['train_accuracy']:.3f}"
                    + (f", val acc {row['val_accuracy']:.3f}" if "val_accuracy" in row else "")
                    + f" ({row['seconds']:.1f} s)"
                )
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
            p.grad = None if id(p) in train_params else p.grad
        net.eval()
    result.seconds = time.perf_counter() - start
    return result


def _check_gradients(names: list[str], modules: list[nn.Module], cache_at: str | None) -> None:
    for n, m in zip(names, modules):
        if all(p.grad is None for p in m.parameters()):
            raise LayerError(
                f"the trainable module {n!r} gets no gradient with cache_at={cache_at!r}: it runs "
                "before the cached layer. Cache at an earlier layer or do not train it"
            )


def _build_cache(
    net: nn.Module,
    cache_at: str,
    modules: list[nn.Module],
    names: list[str],
    train: Dataset,
    val: Dataset | None,
    batch_size: int,
    dev: torch.device,
    num_workers: int = 0,
) -> tuple[_Cache, Dataset, Dataset | None]:
    cache = _Cache(net, cache_at, dev)
    for n, m in zip(names, modules):
        inside = any(sub is cache.module for sub in m.modules())
        if inside or any(sub is m for sub in cache.module.modules()):
            raise LayerError(
                f"cache_at={cache_at!r} overlaps the trainable module {n!r}; cache at a frozen "
                "layer that runs before every trainable one"
            )
    net.eval()
    sample_loader = DataLoader(train, batch_size=min(4, batch_size), collate_fn=_collate)
    x, _ = next(iter(sample_loader))
    x = x.to(dev)
    cache.choose_probe(x)
    message = (
        f"the model's output does not depend on the input through {cache_at!r} alone (e.g. a "
        "skip connection around it); pick a later layer or pass cache_at=None"
    )
    with torch.no_grad():
        direct = net(x)
        stored = cache.features(
            DataLoader(TensorDataset(x, torch.zeros(len(x))), batch_size=len(x))
        )
        try:
            substituted = cache.run(stored.tensors[0].to(dev))
        except Exception as exc:
            raise InputError(f"{message} ({type(exc).__name__}: {exc})") from exc
    scale = float(direct.abs().max().clamp_min(1.0))
    if direct.shape != substituted.shape or not torch.allclose(
        direct, substituted, rtol=1e-4, atol=1e-4 * scale
    ):
        raise InputError(message)

    def loader(data: Dataset) -> DataLoader:
        return DataLoader(data, batch_size=batch_size, collate_fn=_collate, num_workers=num_workers)

    train_feats = cache.features(loader(train))
    val_feats = cache.features(loader(val)) if val is not None else None
    return cache, train_feats, val_feats


def _accuracy(
    forward: Callable[[Tensor], Tensor],
    net: nn.Module,
    modules: list[nn.Module],
    data: Dataset,
    batch_size: int,
    dev: torch.device,
    collate: Callable | None,
    num_workers: int = 0,
) -> float:
    _set_modes(net, modules, training=False)
    correct, seen = 0, 0
    loader = DataLoader(data, batch_size=batch_size, collate_fn=collate, num_workers=num_workers)
    with torch.no_grad():
        for x, y in loader:
            out = forward(x.to(dev))
            correct += int((out.argmax(1).cpu() == y).sum())
            seen += len(y)
    _set_modes(net, modules, training=True)
    return correct / max(seen, 1)


def evaluate(
    model: nn.Module,
    data: Dataset,
    *,
    batch_size: int = 64,
    device: torch.device | str | None = None,
) -> float:
    """Top-1 accuracy of ``model`` on a dataset of ``(image, label, ...)`` items.

    The model runs in eval mode under ``torch.no_grad``; its training flags are restored.
    """
    from ._surgery import preserved_state

    dev = torch.device(device) if device is not None else model_device(model)
    correct, seen = 0, 0
    with preserved_state(model, eval_mode=True, freeze=False), torch.no_grad():
        for x, y in DataLoader(data, batch_size=batch_size, collate_fn=_collate):
            out = model(x.to(dev))
            correct += int((out.argmax(1).cpu() == y).sum())
            seen += len(y)
    if seen == 0:
        raise InputError("the dataset is empty")
    return correct / seen


__all__ = ["FineTuneResult", "evaluate", "find_head", "fine_tune", "replace_head"]
