"""What a teacher was trained on, stored beside its checkpoint, so that a teacher is never reused for other data.

A teacher that kdzero trains (``kdzero train-teacher``, or the built-in teacher that replay and search train on
digits) gets a ``teacher.json`` in its folder: its identity (model; dataset, which and how many training images,
with a SHA-256 of their pixels and labels; input normalisation; schedule; seed) and its outcome (finished or
not, test top-1 of the kept ``best.pt``). The built-in teacher's folder is named after the identity's hash, so a
replay on a 100-image subset and a replay on the full data can never share a teacher, and a reader can always say
what a checkpoint was trained on:

    identity = TeacherIdentity.of("resnet20", data, schedule={"epochs": 30, ...}, seed=0)
    write_record(folder, identity, finished=True, test_acc=98.9, best_epoch=27)
    read_record(folder).identity == identity      # the same teacher
    identity.describe()   # 'digits: all 1,197 training images, normalised by mean (...) std (...), 30 epochs, seed 0'
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Self

from kdzero.data import DatasetSplits, ImageSplit
from kdzero.errors import ConfigError

IDENTITY_FILE = "teacher.json"
"""The file beside a teacher's ``best.pt`` that records its identity and outcome."""

IDENTITY_FORMAT = 1


def data_fingerprint(split: ImageSplit) -> str:
    """SHA-256 of a split's uint8 pixels and labels (hex): equal exactly when the training data is equal.

    Hashing is ~1 GB/s, a fraction of a second for CIFAR's 150 MB of training pixels.
    """
    digest = hashlib.sha256()
    digest.update(str(tuple(split.images.shape)).encode())
    digest.update(split.images.detach().cpu().contiguous().numpy().tobytes())
    digest.update(split.labels.detach().cpu().to(dtype=split.labels.dtype).contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class TeacherIdentity:
    """Everything that decides what a trained teacher is, and nothing that does not (device, threads, AMP).

    ``schedule`` holds the training hyper-parameters as plain JSON values (epochs, lr, batch size, milestones,
    ...), ``seed`` the seed of initialisation, data order and augmentation.
    """

    model: str
    dataset: str
    train_images: int
    whole_train_split: bool
    data_sha256: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    schedule: Mapping[str, Any]
    seed: int

    @classmethod
    def of(cls, model: str, data: DatasetSplits, schedule: Mapping[str, Any], seed: int) -> Self:
        """The identity of teacher ``model`` trained on ``data.train`` with ``schedule`` and ``seed``."""
        return cls(model=model, dataset=data.name, train_images=len(data.train),
                   whole_train_split=data.train.indices is None, data_sha256=data_fingerprint(data.train),
                   mean=tuple(float(v) for v in data.train.mean), std=tuple(float(v) for v in data.train.std),
                   schedule=json.loads(json.dumps(dict(schedule), sort_keys=True)), seed=int(seed))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (tuples as lists)."""
        out = asdict(self)
        out["mean"], out["std"], out["schedule"] = list(self.mean), list(self.std), dict(self.schedule)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Self:
        """The identity stored by ``to_dict``; KeyError/TypeError/ValueError on a malformed record."""
        names = [f.name for f in fields(cls)]
        missing = [name for name in names if name not in values]
        if missing:
            raise KeyError(", ".join(missing))
        return cls(model=str(values["model"]), dataset=str(values["dataset"]),
                   train_images=int(values["train_images"]), whole_train_split=bool(values["whole_train_split"]),
                   data_sha256=str(values["data_sha256"]), mean=tuple(float(v) for v in values["mean"]),
                   std=tuple(float(v) for v in values["std"]), schedule=dict(values["schedule"]),
                   seed=int(values["seed"]))

    @property
    def key(self) -> str:
        """A 12-hex-digit hash of the identity: the built-in teacher's folder is named after it."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def describe(self) -> str:
        """What the teacher was trained on, in one line."""
        images = (f"all {self.train_images:,} training images" if self.whole_train_split
                  else f"a subset of {self.train_images:,} training images")
        epochs = self.schedule.get("epochs")
        return (f"{self.dataset}: {images}, normalised by mean {_numbers(self.mean)} std {_numbers(self.std)}, "
                f"{epochs} epochs, seed {self.seed}")

    def differences(self, other: TeacherIdentity) -> list[str]:
        """The fields in which ``other`` differs from this identity, as 'field mine -> theirs' phrases."""
        found = []
        mine, theirs = self.to_dict(), other.to_dict()
        for name in mine:
            if name == "schedule":
                found += [f"{key} {mine[name].get(key)!r} -> {theirs[name].get(key)!r}"
                          for key in sorted(set(mine[name]) | set(theirs[name]))
                          if mine[name].get(key) != theirs[name].get(key)]
            elif name == "data_sha256" and mine[name] != theirs[name]:
                found.append("training images (other pixels or labels)")
            elif mine[name] != theirs[name]:
                found.append(f"{name} {mine[name]!r} -> {theirs[name]!r}")
        return found


def _numbers(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


@dataclass(frozen=True)
class TeacherRecord:
    """The content of a ``teacher.json``: identity and outcome (``test_acc`` of ``best.pt``, None until done)."""

    identity: TeacherIdentity
    finished: bool
    test_acc: float | None = None
    best_epoch: int | None = None


def write_record(folder: str | os.PathLike, identity: TeacherIdentity, *, finished: bool,
                 test_acc: float | None = None, best_epoch: int | None = None) -> Path:
    """Write ``folder/teacher.json`` (atomically: a reader never sees half a record); returns its path."""
    path = Path(folder) / IDENTITY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"format": IDENTITY_FORMAT, "identity": identity.to_dict(), "finished": finished,
              "test_acc": test_acc, "best_epoch": best_epoch}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def read_record(folder: str | os.PathLike) -> TeacherRecord | None:
    """The record in ``folder/teacher.json``; None when there is none (a teacher kdzero did not train).

    A record that cannot be read is a ConfigError naming the file, not a reason to guess.
    """
    path = Path(folder) / IDENTITY_FILE
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
        if raw.get("format") != IDENTITY_FORMAT:
            raise ValueError(f"format {raw.get('format')!r}, expected {IDENTITY_FORMAT}")
        acc = raw.get("test_acc")
        epoch = raw.get("best_epoch")
        return TeacherRecord(identity=TeacherIdentity.from_dict(raw["identity"]), finished=bool(raw["finished"]),
                             test_acc=None if acc is None else float(acc),
                             best_epoch=None if epoch is None else int(epoch))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"teacher record {path} is unreadable ({type(exc).__name__}: {exc}); remove the folder "
                          f"{path.parent} to train the teacher again") from None


def weak_teacher_warning(teacher_acc: float, student_acc: float, student: str) -> str | None:
    """A warning when the teacher's top-1 (%) is below ``student``'s (a CE-only or distilled student measured on
    the same split): distilling from a teacher weaker than a student trained without it cannot be expected to
    help, and usually means the teacher was trained on the wrong data or too briefly."""
    if teacher_acc >= student_acc:
        return None
    return (f"warning: the teacher ({teacher_acc:.2f}% top-1) is weaker than {student} ({student_acc:.2f}%); "
            "distilling from it is unlikely to help: check what it was trained on")
