"""Reproducible tensor augmentation: random crop and flip of a uint8 batch, and ``AugmentedViews``.

The airbench habit: augmentation is index arithmetic on the resident uint8 tensor (one gather for crop and flip
of a whole batch), never per-image Python. ``AugmentedViews`` fixes V augmented versions of a split up front
(view 0 = the clean images) so that a teacher's outputs can be cached once per (view, image) and match the
student's inputs exactly.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from kdzero.data.splits import ImageSplit
from kdzero.errors import ConfigError, suggest


def augment(
    images: torch.Tensor,
    generator: torch.Generator,
    pad: int | None = None,
    flip: bool = True,
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Random-crop (after padding by ``pad``) and optionally flip every image of a uint8 batch, vectorised.

    Offsets and flips are drawn per image from ``generator`` (a CPU generator, so results do not depend on
    the device). ``pad`` defaults to ``max(1, H // 8)`` (4 for 32x32, 1 for 8x8); ``padding_mode`` is
    ``"zeros"`` (the CRD/RepDistiller protocol) or ``"reflect"`` (airbench).
    """
    _check_padding_mode(padding_mode)
    pad = _pad_for(images, pad)
    return _apply_params(images, _draw_params(images.shape[0], pad, flip, generator), pad, padding_mode)


class AugmentedViews:
    """V fixed augmented versions of a split: view 0 the clean images, view v >= 1 ``augment`` drawn with a
    generator seeded by (seed, v).

    Only the per-image crop offsets and flips are stored, (V, N, 3) ints, and applied when a batch is drawn, so
    views cost no image memory. A teacher's outputs cached per (view, index) therefore match exactly what the
    student sees in ``batch``.
    """

    def __init__(
        self,
        split: ImageSplit,
        num_views: int,
        seed: int = 0,
        flip: bool = True,
        pad: int | None = None,
        padding_mode: str = "zeros",
    ) -> None:
        if num_views < 1:
            raise ConfigError(f"num_views must be >= 1, got {num_views}")
        _check_padding_mode(padding_mode)
        self.split = split
        self.num_views = num_views
        self.seed = seed
        self.flip = flip
        self.pad = _pad_for(split.images, pad)
        self.padding_mode = padding_mode
        n = len(split)
        clean = torch.zeros(1, n, 3, dtype=torch.long)
        clean[..., :2] = self.pad
        drawn = [_draw_params(n, self.pad, flip, _view_generator(seed, v)) for v in range(1, num_views)]
        self.params = torch.cat([clean, *(p.unsqueeze(0) for p in drawn)]).to(split.device)

    def __len__(self) -> int:
        """Number of (view, image) pairs."""
        return self.num_views * len(self.split)

    def describe(self) -> dict:
        """The facts that determine every view's pixels (for cache keys)."""
        return {"num_views": self.num_views, "seed": self.seed, "flip": self.flip, "pad": self.pad,
                "padding_mode": self.padding_mode}

    def images(self, view_ids: torch.Tensor | int, indices: torch.Tensor) -> torch.Tensor:
        """The uint8 images of pairs (view_ids[i], indices[i]); an int ``view_ids`` applies to all."""
        dev = self.split.device
        indices = torch.as_tensor(indices, dtype=torch.long).to(dev)
        view_ids = torch.as_tensor(view_ids, dtype=torch.long).to(dev).expand_as(indices)
        return _apply_params(self.split.images[indices], self.params[view_ids, indices], self.pad,
                             self.padding_mode)

    def batch(self, view_ids: torch.Tensor | int, indices: torch.Tensor) -> torch.Tensor:
        """The normalised float32 inputs of pairs (view_ids[i], indices[i]), on the split's device."""
        return self.split.normalize(self.images(view_ids, indices))

    def batches(
        self, batch_size: int, steps: int, generator: torch.Generator
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``steps`` mini-batches of (view_ids, indices), each exactly ``batch_size`` long.

        Epochs walk all (view, index) pairs in a fresh shuffled order (drawn from the CPU ``generator``); a
        batch may straddle two epochs, so batch shapes never change.
        """
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        n, total, dev = len(self.split), len(self), self.split.device
        order = torch.empty(0, dtype=torch.long, device=dev)
        for _ in range(steps):
            while order.numel() < batch_size:
                order = torch.cat([order, torch.randperm(total, generator=generator).to(dev)])
            pairs, order = order[:batch_size], order[batch_size:]
            yield pairs // n, pairs % n


def _check_padding_mode(padding_mode: str) -> None:
    if padding_mode not in ("zeros", "reflect"):
        raise ConfigError(f"padding_mode {padding_mode!r}; {suggest(padding_mode, ['zeros', 'reflect'])}")


def _pad_for(images: torch.Tensor, pad: int | None) -> int:
    return max(1, images.shape[-2] // 8) if pad is None else pad


def _view_generator(seed: int, view: int) -> torch.Generator:
    digest = hashlib.blake2b(f"kdzero-view:{seed}:{view}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


def _draw_params(n: int, pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """(n, 3) int64: row offset and column offset into the padded image, and a 0/1 flip flag."""
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    flips = torch.randint(0, 2, (n, 1), generator=generator) if flip else torch.zeros(n, 1, dtype=torch.long)
    return torch.cat([offsets, flips], dim=1)


def _apply_params(images: torch.Tensor, params: torch.Tensor, pad: int, padding_mode: str) -> torch.Tensor:
    """Crop each padded image at its offsets and flip it if asked: one gather for the whole batch."""
    n, c, h, w = images.shape
    if padding_mode == "zeros":
        padded = F.pad(images, (pad, pad, pad, pad))
    else:  # reflect padding is not implemented for uint8; floats hold 0..255 exactly
        padded = F.pad(images.float(), (pad, pad, pad, pad), mode="reflect").to(torch.uint8)
    params = params.to(images.device)
    ar_h = torch.arange(h, device=images.device)
    ar_w = torch.arange(w, device=images.device)
    flipped = params[:, 2:3].bool()
    cols = params[:, 1:2] + torch.where(flipped, w - 1 - ar_w, ar_w)
    rows = params[:, 0:1] + ar_h
    batch = torch.arange(n, device=images.device).view(n, 1, 1, 1)
    chans = torch.arange(c, device=images.device).view(1, c, 1, 1)
    return padded[batch, chans, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]

