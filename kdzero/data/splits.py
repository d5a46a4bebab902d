"""A dataset held as tensors and its fixed splits: ``ImageSplit``, ``DatasetSplits``, seeded hold-outs.

Every loader (``kdzero.data.sources``, the user's own data) builds its splits here, so the validation split is
held out with the same seed and fraction everywhere (``SPLIT_SEED``, ``VAL_FRACTION``); ``proxy_subset`` draws
the class-balanced subsets proxy training runs on. Rows remember their positions in the named split, so cache
keys stay valid across subsets.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from kdzero.errors import ConfigError, DataError

SPLIT_SEED = 0
"""Seed of every fixed dataset split (digits val/test, CIFAR and ImageFolder val), so runs agree everywhere."""

VAL_FRACTION = 0.1
"""Share of each class of the official training set held out as the validation split (CIFAR, ImageFolder)."""


@dataclass
class ImageSplit:
    """One split of a dataset held as tensors: uint8 images (N, C, H, W) and int64 labels (N,).

    ``mean``/``std`` are the dataset's per-channel normalisation (in units of the 0..1 range), carried with the
    images so that every consumer normalises identically. ``name`` identifies the split (``"cifar10:train"``) and
    ``indices`` its rows' positions in that named split (None when it is the whole split); both feed cache keys.
    """

    images: torch.Tensor
    labels: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    name: str
    indices: torch.Tensor | None = None
    _norm: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(f"{self.name}: images must be a uint8 (N, C, H, W) tensor, got "
                            f"{self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise DataError(f"{self.name}: {self.labels.numel()} labels for {self.images.shape[0]} images")
        channels = self.images.shape[1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ConfigError(f"{self.name}: mean/std need {channels} values (one per channel), got "
                              f"{len(self.mean)}/{len(self.std)}")

    def __len__(self) -> int:
        """Number of images."""
        return self.images.shape[0]

    @property
    def device(self) -> torch.device:
        """The device the images live on."""
        return self.images.device

    def to(self, device: torch.device | str) -> ImageSplit:
        """The same split with its tensors on ``device`` (make it resident on the training device once)."""
        return replace(self, images=self.images.to(device), labels=self.labels.to(device))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images (N, C, H, W) -> float32 ``(x / 255 - mean) / std``, on ``x``'s device."""
        key = x.device
        if key not in self._norm:
            mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
            self._norm[key] = (mean * 255.0, 1.0 / (std * 255.0))
        shift, scale = self._norm[key]
        return (x.float() - shift) * scale

    def subset(self, indices: torch.Tensor | Sequence[int]) -> ImageSplit:
        """The rows ``indices`` of this split, remembering their positions in the named split."""
        idx = torch.as_tensor(indices, dtype=torch.long).cpu()
        source = idx if self.indices is None else self.indices[idx]
        dev = self.images.device
        return replace(self, images=self.images[idx.to(dev)], labels=self.labels[idx.to(dev)], indices=source)


@dataclass
class DatasetSplits:
    """A dataset's train/val/test splits plus the facts a model and an augmentation need about it.

    ``flip_augment`` says whether horizontal flips are label-preserving (False for digits).
    """

    name: str
    train: ImageSplit
    val: ImageSplit
    test: ImageSplit
    num_classes: int
    in_chans: int
    image_size: tuple[int, int]
    flip_augment: bool
    class_names: list[str]


def proxy_subset(
    split: ImageSplit, per_class: int | None = None, fraction: float | None = None, seed: int = 0
) -> ImageSplit:
    """A seeded class-balanced subset of ``split``: ``per_class`` images of every class (all of a smaller
    class), or ``fraction`` of every class (rounded, at least one). Same seed -> same indices.

    Proxy training runs on such a subset; its rows keep their positions in the full split for cache keys.
    """
    if (per_class is None) == (fraction is None):
        raise ConfigError("proxy_subset needs exactly one of per_class or fraction")
    labels = split.labels.cpu()
    counts = torch.bincount(labels, minlength=split.num_classes)
    if per_class is not None:
        if per_class < 1:
            raise ConfigError(f"per_class must be >= 1, got {per_class}")
        take = counts.clamp(max=per_class)
    else:
        if not 0.0 < fraction <= 1.0:
            raise ConfigError(f"fraction must be in (0, 1], got {fraction}")
        take = torch.minimum(counts, (counts.double() * fraction).round().long().clamp(min=1))
    return split.subset(_take_per_class(labels, take, seed))


def _take_per_class(labels: torch.Tensor, take: torch.Tensor, seed: int) -> torch.Tensor:
    """Sorted indices of a seeded random ``take[k]`` rows of every class k (vectorised)."""
    perm = torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(seed))
    shuffled = labels[perm]
    order = torch.argsort(shuffled, stable=True)
    grouped = shuffled[order]
    starts = torch.cumsum(torch.bincount(grouped, minlength=take.numel()), 0) - torch.bincount(
        grouped, minlength=take.numel())
    rank = torch.arange(labels.numel()) - starts[grouped]
    return torch.sort(perm[order[rank < take[grouped]]]).values


def _holdout(labels: torch.Tensor, take: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rest, held out) indices: ``take[k]`` seeded rows of class k held out."""
    held = _take_per_class(labels, take, seed)
    mask = torch.ones(labels.numel(), dtype=torch.bool)
    mask[held] = False
    return mask.nonzero().squeeze(1), held


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std (0..1 units) from 256-bin histograms, without a float copy."""
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[1]):
        hist = torch.bincount(images[:, c].reshape(-1).cpu(), minlength=256).double()
        p = hist / hist.sum()
        mu = float((p * values).sum())
        means.append(mu)
        stds.append(max(float((p * (values - mu) ** 2).sum()) ** 0.5, 1e-6))
    return tuple(means), tuple(stds)


def _splits(
    name: str,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    class_names: list[str],
    stats: tuple[tuple[float, ...], tuple[float, ...]] | None,
    flip: bool,
) -> DatasetSplits:
    """Assemble DatasetSplits; ``stats`` None -> statistics of the train split."""
    mean, std = stats if stats is not None else _channel_stats(train[0])
    k = len(class_names)
    parts = {part: ImageSplit(images=x, labels=y, mean=mean, std=std, num_classes=k, name=f"{name}:{part}")
             for part, (x, y) in (("train", train), ("val", val), ("test", test))}
    images = parts["train"].images
    return DatasetSplits(name=name, **parts, num_classes=k, in_chans=images.shape[1],
                         image_size=(images.shape[2], images.shape[3]), flip_augment=flip,
                         class_names=class_names)


def _val_holdout(
    name: str, images: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """(train, val): VAL_FRACTION of every class of the official training set held out, seeded."""
    counts = torch.bincount(labels, minlength=num_classes)
    take = (counts.double() * VAL_FRACTION).round().long()
    if int(take.sum()) == 0:
        raise DataError(f"{name}: too few training images ({labels.numel()}) to hold out a validation split")
    train, val = _holdout(labels, take, SPLIT_SEED)
    return (images[train], labels[train]), (images[val], labels[val])
