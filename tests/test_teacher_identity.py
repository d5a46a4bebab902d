"""A teacher's identity: what it was trained on is stored beside it, keys its folder, and is printed when used."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from kdzero import train
from kdzero.cli import main
from kdzero.data import proxy_subset
from kdzero.errors import ConfigError
from kdzero.proxy import ProxyResult
from kdzero.search.runner import BASELINE_ATTR, SearchObserver, ensure_baseline
from kdzero.teacher_identity import IDENTITY_FILE, TeacherIdentity, read_record, weak_teacher_warning
from kdzero.train import TrainConfig, ensure_teacher, load_data, teacher_identity, train_teacher


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


@pytest.fixture(autouse=True)
def _short_teachers(monkeypatch):
    """Built-in teachers train for one epoch here (the default is ``DIGITS_EPOCHS``); threads come back."""
    monkeypatch.setattr(train.config, "DIGITS_EPOCHS", 1)  # the module whose TrainConfig.for_dataset reads it
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def subset(data, per_class: int):
    return replace(data, train=proxy_subset(data.train, per_class=per_class))


def test_identity_tells_apart_subset_normalisation_schedule_and_seed(digits):
    config = TrainConfig.for_dataset("resnet8", "digits")
    full = teacher_identity("resnet8", digits, config)
    assert full == teacher_identity("resnet8", load_data("digits"), config)  # same data loaded again
    assert full == teacher_identity("resnet8", digits, replace(config, device="cpu", amp=True, eval_every=5))
    assert (full.train_images, full.whole_train_split) == (1197, True)
    small = teacher_identity("resnet8", subset(digits, 10), config)
    assert (small.train_images, small.whole_train_split) == (100, False)
    others = [small, teacher_identity("resnet8", replace(digits, train=replace(digits.train, mean=(0.5,), std=(0.25,))),
                               config),
              teacher_identity("resnet8", digits, replace(config, epochs=2, milestones=(1,))),
              teacher_identity("resnet8", digits, replace(config, seed=1)),
              teacher_identity("resnet20", digits, config)]
    keys = {full.key, *(other.key for other in others)}
    assert len(keys) == 1 + len(others), "two different teachers share a folder key"
    assert full.differences(small) == ["train_images 1197 -> 100", "whole_train_split True -> False",
                                       "training images (other pixels or labels)"]
    assert TeacherIdentity.from_dict(json.loads(json.dumps(full.to_dict()))) == full


def test_the_describing_line_names_data_subset_schedule_and_seed(digits):
    identity = teacher_identity("resnet8", subset(digits, 10), TrainConfig.for_dataset("resnet8", "digits"))
    text = identity.describe()
    assert text.startswith("digits: a subset of 100 training images, normalised by mean (")
    assert text.endswith(", 1 epochs, seed 0")


def test_a_teacher_built_on_a_subset_is_never_reused_for_the_full_data(tmp_path, digits):
    """The issue's case: a replay with --train-subset 100 must not leave a teacher that full-data runs reuse."""
    lines: list[str] = []
    small = ensure_teacher("resnet8", subset(digits, 10), root=tmp_path, progress=False, log=lines.append)
    full = ensure_teacher("resnet8", digits, root=tmp_path, progress=False, log=lines.append)
    assert small != full and small.is_file() and full.is_file()
    assert sum("training teacher" in line for line in lines) == 2
    assert read_record(small.parent).identity.train_images == 100
    record = read_record(full.parent)
    assert record.identity.train_images == 1197 and record.finished
    assert record.test_acc == json.loads((full.parent / "results.json").read_text())["best_acc"]
    lines.clear()
    assert ensure_teacher("resnet8", digits, root=tmp_path, progress=False, log=lines.append) == full
    assert not lines, "a finished teacher of the same identity is reused without training"


def test_a_keyed_folder_holding_another_teacher_is_refused(tmp_path, digits):
    path = ensure_teacher("resnet8", digits, root=tmp_path, progress=False)
    record = json.loads((path.parent / IDENTITY_FILE).read_text())
    record["identity"]["seed"] = 7
    (path.parent / IDENTITY_FILE).write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="remove that folder"):
        ensure_teacher("resnet8", digits, root=tmp_path, progress=False)
    (path.parent / IDENTITY_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match=f"{IDENTITY_FILE} is unreadable"):
        ensure_teacher("resnet8", digits, root=tmp_path, progress=False)


def test_resuming_a_teacher_on_other_data_is_refused(tmp_path, digits):
    config = TrainConfig.for_dataset("resnet8", "digits", epochs=1)
    train_teacher("resnet8", subset(digits, 10), config=config, out=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="train_images 100 -> 1197"):
        train_teacher("resnet8", digits, config=config, out=tmp_path, resume=True, progress=False)


def test_replay_says_which_teacher_it_uses_and_what_it_was_trained_on(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    common = ["replay", "--method", "kd", "--student", "resnet8", "--teacher", "resnet8", "--epochs", "1",
              "--no-progress"]
    assert main([*common, "--train-subset", "100", "--out", "small"]) == 0
    small = capsys.readouterr().err
    assert main([*common, "--out", "full"]) == 0
    full = capsys.readouterr().err
    lines = [[line for line in err.splitlines() if line.startswith("teacher resnet8 from ")] for err in (small, full)]
    assert all(len(found) == 1 for found in lines), (small, full)
    (small_line,), (full_line,) = lines
    assert "a subset of 100 training images" in small_line and "all 1,197 training images" in full_line
    assert small_line.split(":")[0] != full_line.split(":")[0], "both replays used one teacher"
    assert "runs/teachers/resnet8-digits-" in full_line and "test top-1" in full_line
    summary = json.loads(Path("full/results.json").read_text())
    assert summary["teacher_test_acc"] == pytest.approx(read_record(
        Path(summary["teacher_ckpt"]).parent).test_acc, abs=1e-9)


def test_a_teacher_without_record_is_named_as_of_unknown_training(tmp_path):
    checkpoint = tmp_path / "someone_elses.pt"
    line = train.describe_teacher("resnet56", checkpoint, 93.5)
    assert line == (f"teacher resnet56 from {checkpoint}: trained on: unknown (no teacher.json beside the "
                    "checkpoint); test top-1 93.50%")


def test_a_teacher_weaker_than_the_student_is_warned_about():
    assert weak_teacher_warning(99.0, 98.0, "the CE-only student") is None
    assert weak_teacher_warning(75.7, 99.7, "the CE-only student") == (
        "warning: the teacher (75.70% top-1) is weaker than the CE-only student (99.70%); distilling from it is "
        "unlikely to help: check what it was trained on")


def test_replay_warns_when_its_teacher_is_weaker_than_its_students():
    config = TrainConfig(epochs=1)

    def run(acc: float) -> train.TrainResult:
        return train.TrainResult(best_acc=acc, best_epoch=1, last_acc=acc, history=[], config=config, seconds=0.0)

    result = train.ReplayResult(runs=[run(95.0), run(95.2)], label="kd", student="resnet8", teacher="resnet20",
                                dataset="digits", teacher_acc=75.7, teacher_ckpt="t.pt")
    assert "the teacher (75.70% top-1) is weaker than the resnet8 it distilled with kd (95.10%)" in \
        result.weak_teacher_warning()
    assert replace(result, teacher_acc=99.0).weak_teacher_warning() is None
    assert replace(result, teacher_acc=None, teacher="").weak_teacher_warning() is None


class _FakeTask:
    """What ``ensure_baseline`` reads of a ProxyTask: steps, the teacher's validation top-1, the baseline."""

    def __init__(self, teacher_val_acc: float) -> None:
        self.config = SimpleNamespace(steps=3)
        self.teacher_val_acc = teacher_val_acc
        self._baseline = None

    def set_baseline(self, result, ce_curve) -> None:
        self._baseline = result

    def baseline(self):
        return self._baseline


class _Notes(SearchObserver):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        self.lines.append(message)


@pytest.mark.parametrize("teacher_val_acc, warned", [(0.757, True), (0.99, False)])
def test_search_warns_when_the_teacher_is_weaker_than_the_ce_only_proxy_student(teacher_val_acc, warned):
    stored = {"result": ProxyResult(genome="", status="complete", val_acc=0.9).to_dict(), "ce_curve": [1.0] * 3}
    run = SimpleNamespace(study=SimpleNamespace(user_attrs={BASELINE_ATTR: stored}))
    notes = _Notes()
    assert ensure_baseline(run, _FakeTask(teacher_val_acc), notes).val_acc == 0.9
    expected = ["warning: the teacher (75.70% top-1) is weaker than the CE-only student after the proxy's steps, "
                "on the proxy validation split (90.00%); distilling from it is unlikely to help: check what it was "
                "trained on"]
    assert notes.lines == (expected if warned else [])
