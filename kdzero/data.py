"""Datasets as resident tensors, proxy subsets and reproducible tensor augmentation.

The airbench habit: a small dataset lives as one uint8 tensor (N, C, H, W) on the training device, and every
mini-batch is an index into it. Augmentation is index arithmetic on that tensor (one gather for crop and flip
of a whole batch), never per-image Python. ``AugmentedViews`` fixes V augmented versions of a split up front
(view 0 = the clean images) so that a teacher's outputs can be cached once per (view, image) and match the
student's inputs exactly.

Datasets by name (``list_datasets()``): ``digits`` (scikit-learn's bundled 8x8 digits, the offline default),
``cifar10``/``cifar100`` (torchvision pickle layout under a root), ``imagefolder:PATH`` (``train/<class>/*``
plus ``test/<class>/*`` or ``val/<class>/*``), ``package.module:function`` (the user's function returning train
and test datasets; ``kdzero.user_data``).
"""
from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kdzero.errors import ConfigError, DataError, suggest

SPLIT_SEED = 0
"""Seed of every fixed dataset split (digits val/test, CIFAR and ImageFolder val), so runs agree everywhere."""

VAL_FRACTION = 0.1
"""Share of each class of the official training set held out as the validation split (CIFAR, ImageFolder)."""

DEFAULT_ROOT = Path("~/.cache/kdzero/data")
"""Where CIFAR is looked for (and downloaded to) when no root is given."""

CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
"""The standard per-channel normalisation of the CIFAR sets (mean, std)."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
"""File endings an ImageFolder reader decodes; other files are ignored."""

_DATASETS = ("digits", "cifar10", "cifar100", "imagefolder:PATH", "package.module:function")


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


def list_datasets() -> list[str]:
    """The dataset names ``load_dataset`` accepts (``imagefolder:`` takes a folder path after the colon)."""
    return list(_DATASETS)


def load_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    download: bool = False,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    image_size: int | tuple[int, int] | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> DatasetSplits:
    """Load dataset ``name`` as resident uint8 tensors with fixed, seeded train/val/test splits.

    ``root``: the folder holding ``cifar-10-batches-py``/``cifar-100-python`` (CIFAR only; default
    ``~/.cache/kdzero/data``); ``download``: fetch CIFAR there if missing (needs internet). ``mean``/``std``
    override the normalisation (e.g. the ImageNet statistics a pretrained teacher was trained with).
    ``image_size`` (ImageFolder): resize to this size; by default images are resized only when their sizes
    differ, to the first training image's size. ``cache_dir`` (ImageFolder): keep the decoded tensors there so
    that the next load of an unchanged folder skips decoding.
    """
    if (mean is None) != (std is None):
        raise ConfigError("give both mean and std to override the normalisation, or neither")
    if name == "digits":
        splits = _load_digits()
    elif name in ("cifar10", "cifar100"):
        splits = _load_cifar(name, Path(root).expanduser() if root else DEFAULT_ROOT.expanduser(), download)
    elif name.startswith("imagefolder:"):
        path = name.split(":", 1)[1]
        if not path:
            raise DataError("imagefolder needs a folder path: imagefolder:PATH")
        splits = _load_imagefolder(Path(path).expanduser(), image_size, cache_dir)
    elif _is_factory(name):
        from kdzero.user_data import load_factory_dataset

        splits = load_factory_dataset(name)
    else:
        raise DataError(f"unknown dataset {name!r}; {suggest(name, list_datasets())}")
    if mean is not None:
        stats = {"mean": tuple(float(m) for m in mean), "std": tuple(float(s) for s in std)}
        splits = replace(splits, **{part: replace(getattr(splits, part), **stats)
                                    for part in ("train", "val", "test")})
    return splits


def _is_factory(name: str) -> bool:
    """A ``package.module:function`` dataset spec (``kdzero.user_data``), told apart from ``imagefolder:PATH``."""
    from kdzero.user_data import is_dataset_factory

    return is_dataset_factory(name)


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


def _load_digits() -> DatasetSplits:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    per_class = torch.full((10,), 30, dtype=torch.long)
    rest, test = _holdout(labels, per_class, SPLIT_SEED)
    train_pos, val_pos = _holdout(labels[rest], per_class, SPLIT_SEED + 1)
    train, val = rest[train_pos], rest[val_pos]
    return _splits("digits", (images[train], labels[train]), (images[val], labels[val]),
                   (images[test], labels[test]), [str(d) for d in range(10)], None, flip=False)


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


def _load_cifar(name: str, root: Path, download: bool) -> DatasetSplits:
    folder, train_files, test_files, meta_file, label_key, names_key, k = {
        "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                    "batches.meta", "labels", "label_names", 10),
        "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_labels", "fine_label_names", 100),
    }[name]
    base = root / folder
    missing = [f for f in [*train_files, *test_files, meta_file] if not (base / f).is_file()]
    if missing and download:
        _download_cifar(name, root)
        missing = [f for f in [*train_files, *test_files, meta_file] if not (base / f).is_file()]
    if missing:
        raise DataError(f"{name} not found: looked for {base}/{{{','.join(missing)}}}; pass --data-root DIR "
                        f"(the folder holding {folder}) or --download (needs internet)")

    def read(files: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for f in files:
            entry = _unpickle(base / f)
            try:
                xs.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                ys.append(np.asarray(entry[label_key], dtype=np.int64))
            except (KeyError, ValueError) as e:
                raise DataError(f"{base / f}: not a CIFAR batch file ({e})") from None
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    images, labels = read(train_files)
    train, val = _val_holdout(name, images, labels, k)
    class_names = [str(c) for c in _unpickle(base / meta_file).get(names_key, range(k))]
    return _splits(name, train, val, read(test_files), class_names, CIFAR_STATS[name], flip=True)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e}") from None


def _download_cifar(name: str, root: Path) -> None:
    from torchvision.datasets import CIFAR10, CIFAR100

    try:
        (CIFAR10 if name == "cifar10" else CIFAR100)(str(root), train=True, download=True)
    except (OSError, RuntimeError, tarfile.TarError) as e:  # network, disk, checksum or archive failure
        raise DataError(f"downloading {name} to {root} failed ({type(e).__name__}: {e}); download needs "
                        "internet, or pass --data-root DIR with the files already there") from None


def _scan_folder(split_dir: Path) -> tuple[list[str], list[tuple[Path, int]], list[tuple[str, int, int]]]:
    """Class names, (file, label) pairs and (relative path, mtime_ns, size) stats of one ImageFolder split."""
    classes = sorted(d.name for d in os.scandir(split_dir) if d.is_dir() and not d.name.startswith("."))
    files, stats = [], []
    for label, cls in enumerate(classes):
        entries = sorted((e for e in os.scandir(split_dir / cls)
                          if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES)), key=lambda e: e.name)
        for e in entries:
            st = e.stat()
            files.append((Path(e.path), label))
            stats.append((f"{cls}/{e.name}", st.st_mtime_ns, st.st_size))
    return classes, files, stats


def _decode_all(files: list[tuple[Path, int]], gray: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_image

    mode = ImageReadMode.GRAY if gray else ImageReadMode.RGB
    images = []
    for path, _ in files:
        try:
            data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
            images.append(decode_image(data, mode=mode))
        except (OSError, RuntimeError) as e:
            raise DataError(f"cannot decode image {path}: {e}") from None
    return images, torch.tensor([label for _, label in files], dtype=torch.long)


def _stack(images: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    from torchvision.transforms.v2.functional import resize

    return torch.stack([x if tuple(x.shape[1:]) == size else resize(x, list(size), antialias=True)
                        for x in images])


def _load_imagefolder(
    root: Path, image_size: int | tuple[int, int] | None, cache_dir: str | os.PathLike | None
) -> DatasetSplits:
    name = f"imagefolder:{root}"
    train_dir = root / "train"
    eval_dirs = [d for d in ("val", "test") if (root / d).is_dir()]
    if not train_dir.is_dir() or not eval_dirs:
        raise DataError(f"{name}: expected {train_dir}/<class>/* and {root}/test/<class>/* (or val/) "
                        "image folders")
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    scans = {part: _scan_folder(root / part) for part in ("train", *eval_dirs)}
    for part, (classes, files, _) in scans.items():
        if not files:
            raise DataError(f"{name}: no images ({', '.join(IMAGE_SUFFIXES)}) under {root / part}/<class>/")
        if classes != scans["train"][0]:
            raise DataError(f"{name}: class folders of {part}/ differ from train/: "
                            f"{sorted(set(classes) ^ set(scans['train'][0]))}")
    classes = scans["train"][0]
    key = hashlib.sha256(repr((str(root.resolve()), size, {p: s[2] for p, s in scans.items()})).encode())
    cache = Path(cache_dir) / f"imagefolder-{key.hexdigest()[:20]}.pt" if cache_dir is not None else None
    if cache is not None and cache.is_file():
        tensors = torch.load(cache, weights_only=True)
    else:
        tensors = _decode_imagefolder(scans, size)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            torch.save(tensors, tmp)
            os.replace(tmp, cache)
    def part(p: str) -> tuple[torch.Tensor, torch.Tensor]:
        return tensors[f"{p}_images"], tensors[f"{p}_labels"]

    if len(eval_dirs) == 2:  # both present: val/ is the validation split, test/ the test split
        train, val = part("train"), part("val")
    else:
        train, val = _val_holdout(name, *part("train"), len(classes))
    return _splits(name, train, val, part(eval_dirs[-1]), classes, None, flip=True)


def _decode_imagefolder(scans: dict, size: tuple[int, int] | None) -> dict[str, torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_image

    first = scans["train"][1][0][0]
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders in favour of torchcodec
        warnings.filterwarnings("ignore", message=".*decoding and encoding capabilities", category=DeprecationWarning)
        gray = decode_image(torch.frombuffer(bytearray(first.read_bytes()), dtype=torch.uint8),
                            mode=ImageReadMode.UNCHANGED).shape[0] in (1, 2)
        decoded = {part: _decode_all(files, gray) for part, (_, files, _) in scans.items()}
    if size is None:
        size = tuple(decoded["train"][0][0].shape[1:])
    tensors = {}
    for part, (images, labels) in decoded.items():
        tensors[f"{part}_images"] = _stack(images, size)
        tensors[f"{part}_labels"] = labels
    return tensors
