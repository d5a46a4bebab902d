"""Datasets as resident tensors, fixed splits, proxy subsets and tensor augmentation."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import write_png

from kdzero.data import (
    AugmentedViews,
    ImageSplit,
    augment,
    list_datasets,
    load_dataset,
    proxy_subset,
)
from kdzero.errors import ConfigError, DataError

pytestmark = pytest.mark.filterwarnings("ignore:.*decoding and encoding capabilities:DeprecationWarning")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _split(images: torch.Tensor, labels: torch.Tensor | None = None) -> ImageSplit:
    n, c = images.shape[:2]
    labels = torch.arange(n) % 2 if labels is None else labels
    return ImageSplit(images=images, labels=labels, mean=(0.5,) * c, std=(0.25,) * c, num_classes=2, name="toy:train")


# --- digits -------------------------------------------------------------------------------------------------

def test_digits_split_sizes_and_facts(digits):
    assert (len(digits.train), len(digits.val), len(digits.test)) == (1197, 300, 300)
    assert digits.num_classes == 10 and digits.in_chans == 1 and digits.image_size == (8, 8)
    assert digits.flip_augment is False
    assert digits.train.images.shape == (1197, 1, 8, 8)
    assert digits.train.images.dtype == torch.uint8 and digits.train.labels.dtype == torch.int64


def test_digits_val_and_test_are_class_balanced_and_disjoint(digits):
    assert torch.bincount(digits.val.labels).tolist() == [30] * 10
    assert torch.bincount(digits.test.labels).tolist() == [30] * 10
    assert torch.bincount(digits.train.labels, minlength=10).min() >= 110
    rows = torch.cat([s.images.reshape(len(s), -1) for s in (digits.train, digits.val, digits.test)])
    # the 1797 digits contain few exact duplicates; the three splits together are the whole set
    assert rows.shape[0] == 1797


def test_digits_split_is_deterministic(digits):
    again = load_dataset("digits")
    for part in ("train", "val", "test"):
        assert torch.equal(getattr(again, part).images, getattr(digits, part).images)
        assert torch.equal(getattr(again, part).labels, getattr(digits, part).labels)


def test_digits_values_span_uint8_range(digits):
    assert int(digits.train.images.min()) == 0 and int(digits.train.images.max()) == 255


def test_normalized_train_split_has_zero_mean_unit_std(digits):
    x = digits.train.normalize(digits.train.images)
    assert x.dtype == torch.float32
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1.0) < 1e-3


def test_mean_std_override_applies_to_all_splits():
    d = load_dataset("digits", mean=(0.5,), std=(0.5,))
    assert all(s.mean == (0.5,) and s.std == (0.5,) for s in (d.train, d.val, d.test))
    x = d.val.normalize(torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1))
    assert torch.allclose(x.flatten(), torch.tensor([-1.0, 1.0]))


def test_unknown_dataset_suggests_valid_names():
    with pytest.raises(DataError, match="digits"):
        load_dataset("digit")
    assert "cifar10" in list_datasets()


def test_split_to_and_subset_keep_positions(digits):
    sub = digits.train.subset(torch.tensor([5, 7, 9])).to("cpu")
    assert torch.equal(sub.images, digits.train.images[[5, 7, 9]])
    assert sub.subset([2]).indices.tolist() == [9]
    assert len(sub) == 3


# --- proxy subsets --------------------------------------------------------------------------------------------

def test_proxy_subset_per_class_is_balanced_and_deterministic(digits):
    a = proxy_subset(digits.train, per_class=20, seed=3)
    b = proxy_subset(digits.train, per_class=20, seed=3)
    c = proxy_subset(digits.train, per_class=20, seed=4)
    assert torch.bincount(a.labels).tolist() == [20] * 10
    assert torch.equal(a.indices, b.indices) and not torch.equal(a.indices, c.indices)
    assert torch.equal(a.images, digits.train.images[a.indices])


def test_proxy_subset_fraction_is_stratified(digits):
    sub = proxy_subset(digits.train, fraction=0.5)
    counts = torch.bincount(digits.train.labels)
    assert torch.equal(torch.bincount(sub.labels), (counts.double() * 0.5).round().long())
    assert len(set(sub.indices.tolist())) == len(sub)


# --- augmentation ---------------------------------------------------------------------------------------------

def _shift(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Hand-made crop of a zero-padded image: out[y, x] = img[y + dy, x + dx] (zero outside)."""
    out = torch.zeros_like(img)
    h, w = img.shape[-2:]
    for y in range(h):
        for x in range(w):
            if 0 <= y + dy < h and 0 <= x + dx < w:
                out[..., y, x] = img[..., y + dy, x + dx]
    return out


def test_augment_crops_match_hand_shifted_images():
    images = torch.randint(1, 256, (64, 2, 8, 8), dtype=torch.uint8)
    out = augment(images, torch.Generator().manual_seed(0), pad=2, flip=False)
    seen = set()
    for img, aug in zip(images, out):
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if torch.equal(_shift(img, dy, dx), aug)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) > 10  # offsets really vary per image


def test_augment_flip_is_exact_mirror():
    images = torch.randint(0, 256, (200, 3, 6, 6), dtype=torch.uint8)
    out = augment(images, torch.Generator().manual_seed(1), pad=0, flip=True)
    mirrored = images.flip(-1)
    flipped = torch.tensor([torch.equal(o, m) for o, m in zip(out, mirrored)])
    same = torch.tensor([torch.equal(o, i) for o, i in zip(out, images)])
    assert bool((flipped | same).all()) and 60 < int(flipped.sum()) < 140


def test_augment_is_reproducible_from_generator_seed():
    images = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8)
    a = augment(images, torch.Generator().manual_seed(7))
    b = augment(images, torch.Generator().manual_seed(7))
    c = augment(images, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.uint8 and a.shape == images.shape


def test_reflect_padding_never_introduces_zeros():
    images = torch.randint(1, 256, (32, 1, 8, 8), dtype=torch.uint8)
    out = augment(images, torch.Generator().manual_seed(0), pad=3, padding_mode="reflect")
    assert int(out.min()) >= 1


def test_unknown_padding_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="reflect"):
        augment(torch.zeros(1, 1, 8, 8, dtype=torch.uint8), torch.Generator(), padding_mode="reflection")


def test_view_zero_is_unaugmented_and_views_are_fixed(digits):
    views = AugmentedViews(digits.train, num_views=3, seed=5, flip=digits.flip_augment)
    idx = torch.arange(len(digits.train))
    assert torch.equal(views.images(0, idx), digits.train.images)
    assert not torch.equal(views.images(1, idx), digits.train.images)
    again = AugmentedViews(digits.train, num_views=3, seed=5, flip=digits.flip_augment)
    assert torch.equal(views.images(2, idx), again.images(2, idx))


def test_view_batch_matches_augment_with_view_generator_and_normalizes(digits):
    views = AugmentedViews(digits.train, num_views=2, seed=0, flip=False)
    full = views.images(1, torch.arange(len(digits.train)))
    vids, idx = torch.tensor([1, 0, 1]), torch.tensor([4, 4, 10])
    x = views.batch(vids, idx)
    assert x.dtype == torch.float32 and x.shape == (3, 1, 8, 8)
    expected = digits.train.normalize(torch.stack([full[4], digits.train.images[4], full[10]]))
    assert torch.equal(x, expected)


def test_batches_cover_every_pair_once_per_epoch(digits):
    sub = proxy_subset(digits.train, per_class=5)
    views = AugmentedViews(sub, num_views=3)
    batches = list(views.batches(batch_size=10, steps=15, generator=torch.Generator().manual_seed(0)))
    assert len(batches) == 15 and all(v.shape == (10,) and i.shape == (10,) for v, i in batches)
    pairs = [(int(v), int(i)) for vs, ids in batches for v, i in zip(vs, ids)]
    assert sorted(pairs) == sorted((v, i) for v in range(3) for i in range(len(sub)))
    again = list(views.batches(batch_size=10, steps=15, generator=torch.Generator().manual_seed(0)))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(batches, again))


# --- CIFAR (fake torchvision-format root) ---------------------------------------------------------------------

def _write_fake_cifar10(root: Path, per_batch: int = 20, test: int = 30) -> None:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def dump(name: str, n: int, offset: int) -> None:
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "labels": [(offset + i) % 10 for i in range(n)]}
        with open(base / name, "wb") as fh:
            pickle.dump(entry, fh)

    for b in range(1, 6):
        dump(f"data_batch_{b}", per_batch, b)
    dump("test_batch", test, 0)
    with open(base / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, fh)


def test_cifar10_loads_from_torchvision_layout(tmp_path):
    _write_fake_cifar10(tmp_path)
    d = load_dataset("cifar10", root=tmp_path)
    assert (len(d.train), len(d.val), len(d.test)) == (90, 10, 30)
    assert torch.bincount(d.val.labels).tolist() == [1] * 10
    assert d.train.images.shape[1:] == (3, 32, 32) and d.flip_augment
    assert d.class_names[:2] == ["c0", "c1"]
    assert d.train.mean == pytest.approx((0.4914, 0.4822, 0.4465))
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb") as fh:
        raw = pickle.load(fh)
    assert torch.equal(d.test.images[3], torch.from_numpy(raw["data"][3].reshape(3, 32, 32)))


def test_cifar_missing_root_says_what_to_pass(tmp_path):
    with pytest.raises(DataError, match=r"--data-root.*--download.*internet") as err:
        load_dataset("cifar100", root=tmp_path / "nowhere")
    assert "cifar-100-python" in str(err.value) and "\n" not in str(err.value)


# --- ImageFolder ----------------------------------------------------------------------------------------------

def _write_folder(root: Path, sizes: dict[str, int], hw: tuple[int, int] = (6, 6)) -> None:
    gen = torch.Generator().manual_seed(0)
    for part, n in sizes.items():
        for cls in ("b_cat", "a_dog"):
            (root / part / cls).mkdir(parents=True)
            for i in range(n):
                img = torch.randint(0, 256, (3, *hw), dtype=torch.uint8, generator=gen)
                write_png(img, str(root / part / cls / f"{i:03d}.png"))


def test_imagefolder_decodes_sorted_classes_and_caches(tmp_path):
    _write_folder(tmp_path / "set", {"train": 10, "test": 3})
    first = load_dataset(f"imagefolder:{tmp_path / 'set'}", cache_dir=tmp_path / "cache")
    assert first.class_names == ["a_dog", "b_cat"]
    assert (len(first.train), len(first.val), len(first.test)) == (18, 2, 6)
    assert first.image_size == (6, 6) and first.in_chans == 3
    x = first.train.normalize(first.train.images)
    assert abs(float(x.mean())) < 1e-4
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    second = load_dataset(f"imagefolder:{tmp_path / 'set'}", cache_dir=tmp_path / "cache")
    assert torch.equal(second.train.images, first.train.images)
    assert torch.equal(second.test.labels, first.test.labels)


def test_imagefolder_resizes_to_requested_size_and_uses_val_and_test_folders(tmp_path):
    _write_folder(tmp_path / "set", {"train": 10, "val": 2, "test": 3})
    d = load_dataset(f"imagefolder:{tmp_path / 'set'}", image_size=4, mean=(0.1,) * 3, std=(0.2,) * 3)
    assert d.train.images.shape[1:] == (3, 4, 4) and d.test.mean == (0.1,) * 3
    assert (len(d.train), len(d.val), len(d.test)) == (20, 4, 6)


def test_imagefolder_resizes_only_when_sizes_differ(tmp_path):
    _write_folder(tmp_path / "set", {"train": 5, "test": 2})
    odd = torch.randint(0, 256, (3, 9, 7), dtype=torch.uint8)
    write_png(odd, str(tmp_path / "set" / "train" / "b_cat" / "odd.png"))
    d = load_dataset(f"imagefolder:{tmp_path / 'set'}")
    assert d.image_size == (6, 6) and len(d.train) + len(d.val) == 11


def test_imagefolder_empty_or_missing_folder_is_a_data_error(tmp_path):
    for part in ("train/a", "test/a"):
        (tmp_path / "empty" / part).mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        load_dataset(f"imagefolder:{tmp_path / 'empty'}")
    with pytest.raises(DataError, match="expected"):
        load_dataset(f"imagefolder:{tmp_path / 'missing'}")


@pytest.mark.data
@pytest.mark.skipif(not (SHARED_DATA / "cifar10-jpeg.tar.gz").is_file(), reason="../shared/data not present")
def test_cifar10_jpeg_imagefolder_loads(tmp_path):
    import tarfile

    counts: dict[tuple[str, str], int] = {}

    def first_ten(members):
        for m in members:
            parts = Path(m.name).parts
            if m.isfile() and len(parts) >= 3 and parts[-3] in ("train", "test"):
                key = (parts[-3], parts[-2])
                counts[key] = counts.get(key, 0) + 1
                if counts[key] <= 10:
                    yield m

    with tarfile.open(SHARED_DATA / "cifar10-jpeg.tar.gz") as tar:
        tar.extractall(tmp_path, members=first_ten(tar), filter="data")
    root = next(p.parent for p in tmp_path.rglob("train") if (p.parent / "test").is_dir())
    d = load_dataset(f"imagefolder:{root}")
    assert d.class_names[0] == "airplane" and d.num_classes == 10
    assert (len(d.train), len(d.val), len(d.test)) == (90, 10, 100)
    assert d.train.images.shape[1:] == (3, 32, 32)
