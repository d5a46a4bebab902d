"""The older import path of ``kdzero.data.user``: the user's own data as splits, and dataset factory specs.

The code lives inside the data package so that importing ``kdzero.data`` registers the
``package.module:function`` dataset form without ``kdzero.data`` importing this module (no ``data ->
user_data`` edge). ``from kdzero.user_data import to_splits`` keeps working.
"""
from __future__ import annotations

from kdzero.data.user import is_dataset_factory, load_factory_dataset, to_splits

__all__ = ["is_dataset_factory", "load_factory_dataset", "to_splits"]
