"""The data a training run reads: ``load_data``, a dataset with a normalisation choice and an optional subset.

``kdzero.data`` loads datasets with their own statistics; training, teachers and replays load them through
``load_data``, which adds the choice of normalisation (``NORMALIZATIONS``), a class-balanced training subset for
short experiments, and the decoded-image cache of ImageFolder datasets.
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from kdzero.data import DatasetSplits, load_dataset, proxy_subset
from kdzero.errors import ConfigError, suggest

NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "dataset": None,
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
"""Input normalisation choices: ``dataset`` keeps the dataset's own statistics; ``imagenet`` uses the ImageNet
mean/std that, e.g., the akamaster CIFAR-10 ResNets (``resnet*a``) were trained with."""


def load_data(
    dataset: str,
    data_root: str | os.PathLike | None = None,
    *,
    normalize: str = "dataset",
    train_subset: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> DatasetSplits:
    """``load_dataset`` with a normalisation choice (``NORMALIZATIONS``) and an optional class-balanced,
    seeded training subset of ``train_subset`` images (for short experiments).

    ImageFolder datasets keep their decoded tensors in ``cache_dir`` (default ``~/.cache/kdzero/imagefolder``)
    so that the next run skips JPEG decoding.
    """
    if normalize not in NORMALIZATIONS:
        raise ConfigError(f"unknown normalisation {normalize!r}; {suggest(normalize, NORMALIZATIONS)}")
    stats = NORMALIZATIONS[normalize]
    if cache_dir is None and dataset.startswith("imagefolder:"):
        cache_dir = Path("~/.cache/kdzero/imagefolder").expanduser()
    data = load_dataset(dataset, root=data_root, mean=stats[0] if stats else None,
                        std=stats[1] if stats else None, cache_dir=cache_dir)
    if train_subset is not None:
        if train_subset < 2 * data.num_classes:
            raise ConfigError(f"train subset must hold at least 2 images per class ({2 * data.num_classes}), "
                              f"got {train_subset}")
        data = replace(data, train=proxy_subset(data.train, per_class=train_subset // data.num_classes))
    return data
