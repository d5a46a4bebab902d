"""Datasets as resident tensors, proxy subsets and reproducible tensor augmentation.

The airbench habit: a small dataset lives as one uint8 tensor (N, C, H, W) on the training device, and every
mini-batch is an index into it. One module per concern:

* ``splits`` - ``ImageSplit``, ``DatasetSplits``, the seeded validation hold-out and ``proxy_subset``;
* ``augmentation`` - ``augment`` (crop and flip of a batch in one gather) and ``AugmentedViews``;
* ``sources`` - ``load_dataset``/``list_datasets``: digits, CIFAR, ImageFolder by name, and
  ``register_dataset_spec`` for other families of names;
* ``user`` - the user's own tensors, ``Dataset`` or ``DataLoader`` as splits (``to_splits``), and the
  ``package.module:function`` dataset form, which it registers with ``sources`` when imported here.

>>> from kdzero.data import load_dataset, proxy_subset, AugmentedViews
"""
from __future__ import annotations

from kdzero.data.augmentation import AugmentedViews, augment
from kdzero.data.sources import (
    CIFAR_STATS,
    DEFAULT_ROOT,
    IMAGE_SUFFIXES,
    list_datasets,
    load_dataset,
    register_dataset_spec,
)
from kdzero.data.splits import (
    SPLIT_SEED,
    VAL_FRACTION,
    DatasetSplits,
    ImageSplit,
    proxy_subset,
)
from kdzero.data.user import to_splits  # importing it registers the package.module:function dataset form

# private helpers that experiments and older code import from the package
from kdzero.data.splits import _holdout as _holdout  # isort: skip
from kdzero.data.splits import _splits as _splits  # isort: skip
from kdzero.data.splits import _val_holdout as _val_holdout  # isort: skip

__all__ = [
    "CIFAR_STATS",
    "DEFAULT_ROOT",
    "IMAGE_SUFFIXES",
    "SPLIT_SEED",
    "VAL_FRACTION",
    "AugmentedViews",
    "DatasetSplits",
    "ImageSplit",
    "augment",
    "list_datasets",
    "load_dataset",
    "proxy_subset",
    "register_dataset_spec",
    "to_splits",
]
