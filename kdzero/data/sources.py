"""Datasets by name: ``load_dataset`` and the loaders of digits, CIFAR and ImageFolder.

Datasets by name (``list_datasets()``): ``digits`` (scikit-learn's bundled 8x8 digits, the offline default),
``cifar10``/``cifar100`` (torchvision pickle layout under a root), ``imagefolder:PATH`` (``train/<class>/*``
plus ``test/<class>/*`` or ``val/<class>/*``), ``package.module:function`` (the user's function returning train
and test datasets; ``kdzero.data.user``).

Other families of names join through ``register_dataset_spec`` (as model patterns join the model registry), so
this module imports no loader built on top of it: ``kdzero.data.user`` registers ``package.module:function``,
and ``kdzero/data/__init__.py`` imports it, so the form is there whenever ``kdzero.data`` is.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from kdzero.data.splits import SPLIT_SEED, DatasetSplits, _holdout, _splits, _val_holdout
from kdzero.errors import ConfigError, DataError, suggest

DEFAULT_ROOT = Path("~/.cache/kdzero/data")
"""Where CIFAR is looked for (and downloaded to) when no root is given."""

CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
"""The standard per-channel normalisation of the CIFAR sets (mean, std)."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
"""File endings an ImageFolder reader decodes; other files are ignored."""

_DATASETS = ("digits", "cifar10", "cifar100", "imagefolder:PATH")


@dataclass(frozen=True)
class _SpecForm:
    """A family of dataset names: ``matches(name)`` recognises one, ``load(name)`` loads it as ``DatasetSplits``,
    ``form`` (``"package.module:function"``) stands for the family in ``list_datasets()``."""

    matches: Callable[[str], bool]
    load: Callable[[str], DatasetSplits]
    form: str


_SPEC_FORMS: list[_SpecForm] = []


def register_dataset_spec(matches: Callable[[str], bool], load: Callable[[str], DatasetSplits], form: str) -> None:
    """Let ``load_dataset`` accept every name ``matches`` recognises, loaded by ``load(name)``; ``list_datasets``
    lists ``form`` after the built-in names.

    Built-in names (digits, CIFAR, ``imagefolder:``) win over registered forms, and earlier forms over later ones.
    """
    _SPEC_FORMS.append(_SpecForm(matches, load, form))


def list_datasets() -> list[str]:
    """The dataset names ``load_dataset`` accepts (``imagefolder:`` takes a folder path after the colon)."""
    return [*_DATASETS, *(spec.form for spec in _SPEC_FORMS)]


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
    elif (spec := next((s for s in _SPEC_FORMS if s.matches(name)), None)) is not None:
        splits = spec.load(name)
    else:
        raise DataError(f"unknown dataset {name!r}; {suggest(name, list_datasets())}")
    if mean is not None:
        stats = {"mean": tuple(float(m) for m in mean), "std": tuple(float(s) for s in std)}
        splits = replace(splits, **{part: replace(getattr(splits, part), **stats)
                                    for part in ("train", "val", "test")})
    return splits



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
