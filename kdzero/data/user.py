"""The user's own data as kdzero's resident splits: ``Dataset``, ``DataLoader``, tensors, or a factory spec.

kdzero trains from uint8 image tensors resident on the device (``kdzero.data``), so anything else is read once
and converted: ``(images, labels)`` tensors, a map-style ``Dataset`` of ``(image, label)`` items (tensor, PIL
image or array), or a ``DataLoader`` of ``(images, labels)`` batches. Images must be unnormalised: uint8 in
0..255 or floats in [0, 1] (kdzero normalises them itself, with the train split's statistics or ImageNet's).

A dataset spec ``package.module:function`` names a function returning ``(train, test)`` in any of those forms.
The validation split is held out of ``train`` exactly as for an ImageFolder (``VAL_FRACTION`` of every class).
This module registers that form with ``load_dataset`` (``register_dataset_spec``); ``kdzero/data/__init__.py``
imports it, so the form is accepted whenever ``kdzero.data`` is imported. ``kdzero.user_data`` is its older name.
"""
from __future__ import annotations

import hashlib
import importlib
from typing import Any

import numpy as np
import torch

from kdzero.data.sources import register_dataset_spec
from kdzero.data.splits import DatasetSplits, _splits, _val_holdout
from kdzero.errors import ConfigError, DataError, suggest


def is_dataset_factory(name: str) -> bool:
    """Whether dataset name ``name`` is a ``package.module:function`` spec (not ``imagefolder:PATH``)."""
    head, colon, tail = name.partition(":")
    return bool(colon) and head != "imagefolder" and all(p.isidentifier() for p in head.split(".")) \
        and tail.isidentifier()


def load_factory_dataset(spec: str) -> DatasetSplits:
    """Call the ``package.module:function`` of ``spec`` and convert its ``(train, test)`` to splits."""
    module_name, function_name = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"dataset spec {spec!r}: cannot import module {module_name!r} ({exc}); is its folder "
                          f"on PYTHONPATH or the package installed?") from None
    factory = getattr(module, function_name, None)
    if not callable(factory):
        public = [n for n in vars(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise ConfigError(f"dataset spec {spec!r}: module {module_name!r} has no function {function_name!r}; "
                          f"{suggest(function_name, public)}")
    try:
        parts = factory()
    except Exception as exc:
        raise ConfigError(f"dataset spec {spec!r}: calling it raised {type(exc).__name__}: {exc}") from None
    if not isinstance(parts, (tuple, list)) or len(parts) != 2:
        raise ConfigError(f"dataset spec {spec!r} must return (train, test), got {type(parts).__name__}")
    return to_splits(parts[0], parts[1], name=spec)


def to_splits(train: Any, test: Any | None = None, name: str | None = None) -> DatasetSplits:
    """Convert user data to ``DatasetSplits``; ``test`` None holds out a test split from ``train`` too.

    ``name`` identifies the data (cache keys, leaderboard titles); by default a digest of the pixels.
    """
    train_x, train_y = _tensors(train, "train")
    if test is None:
        num_classes = int(train_y.max()) + 1
        (train_x, train_y), (test_x, test_y) = _val_holdout("data", train_x, train_y, num_classes)
    else:
        test_x, test_y = _tensors(test, "test")
        if test_x.shape[1:] != train_x.shape[1:]:
            raise DataError(f"test images are {tuple(test_x.shape[1:])} but train images {tuple(train_x.shape[1:])}")
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    classes = getattr(train, "classes", None)
    if isinstance(classes, (list, tuple)) and len(classes) >= num_classes:
        class_names = [str(c) for c in classes]
    else:
        class_names = [str(i) for i in range(num_classes)]
    if name is None:
        digest = hashlib.sha256()
        for t in (train_x, train_y, test_x, test_y):
            digest.update(t.contiguous().numpy().tobytes())
        name = f"data-{digest.hexdigest()[:12]}"
    kept, val = _val_holdout(name, train_x, train_y, len(class_names))
    return _splits(name, kept, val, (test_x, test_y), class_names, None, flip=True)


def _tensors(data: Any, part: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, C, H, W) and int64 labels (N,) from tensors, a Dataset or a DataLoader."""
    from torch.utils.data import DataLoader, Dataset

    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        images, labels = data
    elif isinstance(data, DataLoader):
        batches = [(torch.as_tensor(x), torch.as_tensor(y)) for x, y in data]
        if not batches:
            raise DataError(f"{part} DataLoader yields no batches")
        images = torch.cat([_image_batch(x, part) for x, _ in batches])
        labels = torch.cat([y for _, y in batches])
    elif isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        if len(data) == 0:
            raise DataError(f"{part} dataset is empty")
        items = [data[i] for i in range(len(data))]
        images = torch.stack([_image(item[0], part, i) for i, item in enumerate(items)])
        labels = torch.tensor([int(item[1]) for item in items])
    else:
        raise DataError(f"{part} data must be (images, labels) tensors, a Dataset or a DataLoader, got "
                        f"{type(data).__name__}")
    images = _image_batch(images, part)
    labels = torch.as_tensor(labels).long().reshape(-1).cpu()
    if labels.numel() != images.shape[0]:
        raise DataError(f"{part}: {labels.numel()} labels for {images.shape[0]} images")
    if labels.numel() and int(labels.min()) < 0:
        raise DataError(f"{part}: labels must be class indices 0..K-1, found {int(labels.min())}")
    return images, labels


def _image(item: Any, part: str, index: int) -> torch.Tensor:
    if isinstance(item, torch.Tensor):
        x = item
    elif isinstance(item, np.ndarray):
        x = torch.from_numpy(item)
        if x.dim() == 3 and x.shape[-1] in (1, 3, 4) and x.shape[0] not in (1, 3, 4):
            x = x.permute(2, 0, 1)  # HWC arrays, as PIL/OpenCV give them
    elif hasattr(item, "convert") and hasattr(item, "size"):  # a PIL image
        from torchvision.transforms.v2.functional import pil_to_tensor

        x = pil_to_tensor(item)
    else:
        raise DataError(f"{part} item {index}: image must be a tensor, an array or a PIL image, got "
                        f"{type(item).__name__}")
    return _image_batch(x.unsqueeze(0), part)[0]


def _image_batch(x: torch.Tensor, part: str) -> torch.Tensor:
    """A batch of images as uint8 (N, C, H, W): uint8 as is, floats in [0, 1] scaled to 0..255."""
    x = torch.as_tensor(x).cpu()
    if x.dim() == 3:
        x = x.unsqueeze(1)  # (N, H, W) gray images
    if x.dim() != 4:
        raise DataError(f"{part} images must be (N, C, H, W) or (N, H, W), got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x.contiguous()
    if not x.is_floating_point():
        raise DataError(f"{part} images must be uint8 or floats in [0, 1], got {x.dtype}")
    low, high = float(x.min()), float(x.max())
    if low < 0.0 or high > 1.0:
        raise DataError(f"{part} images must be unnormalised: floats in [0, 1] or uint8, got values in "
                        f"[{low:.3g}, {high:.3g}] (kdzero normalises them itself)")
    return (x * 255.0).round().to(torch.uint8).contiguous()


register_dataset_spec(is_dataset_factory, load_factory_dataset, "package.module:function")
