"""Full training: schedule, exact resume, distiller hooks, the train-teacher and replay commands, bad input."""
from __future__ import annotations

import importlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdzero.cli import main
from kdzero.data import load_dataset, proxy_subset
from kdzero.errors import ConfigError, KdzeroError
from kdzero.features import Features
from kdzero.loss import UnifiedLoss
from kdzero.train import TrainConfig, scaled_milestones, train_model


class TinyNet(nn.Module):
    """conv -> feat (N, 8, H, W), mean pool -> emb (N, 8), linear -> logit (N, classes): trains in milliseconds."""

    def __init__(self, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> Features:
        feat = torch.relu(self.bn(self.conv(x)))
        emb = feat.mean(dim=(2, 3))
        return Features(feat=feat, emb=emb, logit=self.fc(emb))


class Interrupt(Exception):
    """Raised from the log callback to simulate a run killed after an epoch."""


@pytest.fixture(autouse=True)
def _keep_thread_count():
    """The commands set torch's thread count for digits; give other tests back the process's own."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    data = load_dataset("digits")
    return replace(data, train=proxy_subset(data.train, per_class=40))


def _tiny_pair(seed: int) -> tuple[TinyNet, TinyNet]:
    torch.manual_seed(seed)
    return TinyNet(width=8), TinyNet(width=16)


# ------------------------------------------------------------------------------------------------- schedule


def test_default_config_is_the_crd_protocol():
    config = TrainConfig()
    assert (config.epochs, config.batch_size, config.lr, config.milestones) == (240, 64, 0.05, (150, 180, 210))
    assert (config.momentum, config.weight_decay, config.gamma) == (0.9, 5e-4, 0.1)


def test_shorter_schedule_scales_milestones_proportionally():
    assert scaled_milestones(30) == (19, 23, 26)
    assert scaled_milestones(120) == (75, 90, 105)
    assert TrainConfig(epochs=24).milestones == (15, 18, 21)
    assert TrainConfig(epochs=24, milestones=(5, 10)).milestones == (5, 10)


def test_crd_protocol_uses_small_lr_for_mobile_students_and_short_schedule_on_digits():
    assert TrainConfig.crd_protocol("mobilenetv2").lr == 0.01
    assert TrainConfig.crd_protocol("shufflenetv2", lr=None, epochs=10).lr == 0.01
    assert TrainConfig.crd_protocol("resnet20").lr == 0.05
    assert TrainConfig.for_dataset("resnet8", "digits").epochs == 30
    assert TrainConfig.for_dataset("resnet8", "digits", epochs=5).milestones == (3, 4, 4)
    assert TrainConfig.for_dataset("resnet8", "cifar100").epochs == 240


def test_bad_config_values_raise_config_error():
    with pytest.raises(ConfigError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError, match="milestones"):
        TrainConfig(milestones=(10, 5))


# --------------------------------------------------------------------------------------------------- engine


def test_resume_from_last_checkpoint_matches_uninterrupted_run(digits, tmp_path):
    config = TrainConfig(epochs=3, batch_size=32, lr=0.1)
    genome = "logit[no,no,no]|kl|no|T4|x1"

    student, teacher = _tiny_pair(0)
    full = train_model(student, digits, config, teacher=teacher, distill_loss=UnifiedLoss(genome),
                       run_dir=tmp_path / "full", progress=False)

    def stop_after_two(line: str) -> None:
        if line.startswith("epoch 2/"):
            raise Interrupt

    student2, teacher2 = _tiny_pair(0)
    with pytest.raises(Interrupt):
        train_model(student2, digits, config, teacher=teacher2, distill_loss=UnifiedLoss(genome),
                    run_dir=tmp_path / "cut", progress=False, log=stop_after_two)
    student3, teacher3 = _tiny_pair(0)
    resumed = train_model(student3, digits, config, teacher=teacher3, distill_loss=UnifiedLoss(genome),
                          run_dir=tmp_path / "cut", resume=True, progress=False)

    for (name, a), b in zip(student.state_dict().items(), student3.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name
    assert [r.test_acc for r in resumed.history] == [r.test_acc for r in full.history]
    assert len(resumed.history) == 3
    saved = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert saved["epochs_done"] == 3 and saved["last_acc"] == resumed.last_acc


def test_resuming_a_finished_run_trains_nothing_and_returns_its_numbers(digits, tmp_path):
    first = train_model(TinyNet(), digits, TrainConfig(epochs=2), run_dir=tmp_path, progress=False)
    lines: list[str] = []
    again = train_model(TinyNet(), digits, TrainConfig(epochs=2), run_dir=tmp_path, resume=True, progress=False,
                        log=lines.append)
    assert (again.best_acc, again.last_acc, again.history) == (first.best_acc, first.last_acc, first.history)
    assert lines == [f"resumed from {tmp_path / 'last.pt'} after epoch 2"]


def test_resume_refuses_changed_settings(digits, tmp_path):
    train_model(TinyNet(), digits, TrainConfig(epochs=1), run_dir=tmp_path, progress=False)
    with pytest.raises(ConfigError, match=r"lr 0\.05 -> 0\.1"):
        train_model(TinyNet(), digits, TrainConfig(epochs=1, lr=0.1), run_dir=tmp_path, resume=True,
                    progress=False)


class RecordingDistiller(nn.Module):
    """A zero distillation term that records the epochs announced to it and the indices it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.epochs: list[int] = []
        self.indices: list[torch.Tensor] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def forward(self, student: Features, teacher: Features, target: torch.Tensor,
                index: torch.Tensor | None = None) -> torch.Tensor:
        self.indices.append(index)
        return (student.logit - teacher.logit).pow(2).mean() * 0.0


def test_trainer_calls_set_epoch_and_passes_dataset_index(digits):
    student, teacher = _tiny_pair(0)
    loss = RecordingDistiller()
    train_model(student, digits, TrainConfig(epochs=2, batch_size=100), teacher=teacher, distill_loss=loss,
                progress=False)
    assert loss.epochs == [1, 2]
    seen = torch.cat(loss.indices[: len(loss.indices) // 2])
    assert sorted(seen.tolist()) == list(range(len(digits.train)))  # one epoch visits every training row once


def test_teacher_is_frozen_and_connector_is_trained(digits):
    student, teacher = _tiny_pair(0)
    loss = UnifiedLoss("feat[no,no,no]|l2|no|T1|x1", {"feat": (8, 8, 8)}, {"feat": (16, 8, 8)})
    before_teacher = {k: v.clone() for k, v in teacher.state_dict().items()}
    before_connector = [p.clone() for p in loss.parameters()]
    train_model(student, digits, TrainConfig(epochs=1), teacher=teacher, distill_loss=loss, progress=False)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before_teacher.items())
    assert any(not torch.equal(a, b) for a, b in zip(before_connector, loss.parameters()))


def test_bf16_autocast_trains_on_cpu_close_to_fp32_with_the_loss_in_fp32(digits):
    seen = []

    class Recorder(nn.Module):
        def forward(self, student: Features, teacher: Features, target: torch.Tensor) -> torch.Tensor:
            seen.append((student.logit.dtype, teacher.feat.dtype, student.feat.is_contiguous()))
            return F.kl_div(F.log_softmax(student.logit, 1), F.softmax(teacher.logit, 1), reduction="batchmean")

    results, conv_dtypes = {}, {}
    for amp in (False, True):
        student, teacher = _tiny_pair(0)
        dtypes = conv_dtypes[amp] = set()
        student.conv.register_forward_hook(lambda module, args, out, dtypes=dtypes: dtypes.add(out.dtype))
        config = TrainConfig(epochs=4, batch_size=32, lr=0.1, amp=amp)
        results[amp] = train_model(student, digits, config, teacher=teacher, distill_loss=Recorder(), progress=False)
    assert conv_dtypes == {False: {torch.float32}, True: {torch.bfloat16}}
    assert set(seen) == {(torch.float32, torch.float32, True)}  # losses never see bf16 or NHWC tensors
    assert abs(results[True].last_acc - results[False].last_acc) <= 5.0
    assert abs(results[True].history[-1].train_loss - results[False].history[-1].train_loss) <= 0.05


class NanDistiller(nn.Module):
    """A distillation term that is NaN from the first step."""

    def forward(self, student: Features, teacher: Features, target: torch.Tensor) -> torch.Tensor:
        return student.logit.sum() * float("nan")


def test_non_finite_loss_stops_with_epoch_and_step(digits):
    student, teacher = _tiny_pair(0)
    with pytest.raises(KdzeroError, match="epoch 1, step 1"):
        train_model(student, digits, TrainConfig(epochs=1), teacher=teacher, distill_loss=NanDistiller(),
                    progress=False)


def test_teacher_with_other_class_count_is_refused(digits):
    with pytest.raises(ConfigError, match="teacher predicts 100 classes but dataset digits has 10"):
        train_model(TinyNet(), digits, TrainConfig(epochs=1), teacher=TinyNet(num_classes=100),
                    distill_loss=RecordingDistiller(), progress=False)


# ---------------------------------------------------------------------------------------------- the commands


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory) -> Path:
    """A resnet8 digits teacher from 'kdzero train-teacher' (2 epochs)."""
    out = tmp_path_factory.mktemp("teacher")
    code = main(["train-teacher", "--model", "resnet8", "--dataset", "digits", "--epochs", "2", "--out", str(out),
                 "--no-progress"])
    assert code == 0
    return out / "best.pt"


def test_train_teacher_on_digits_learns_well_above_chance(teacher_ckpt):
    results = json.loads((teacher_ckpt.parent / "results.json").read_text())
    assert results["best_acc"] > 50.0  # chance is 10%
    assert results["epochs_done"] == 2 and results["config"]["milestones"] == [1, 2, 2]
    assert (teacher_ckpt.parent / "last.pt").is_file()


@pytest.mark.parametrize("distiller", [["--method", "kd"], ["--genome", "logit[no,no,no]|kl|no|T4|x1"]])
def test_replay_distils_a_student_end_to_end(distiller, teacher_ckpt, tmp_path, capsys):
    code = main(["replay", *distiller, "--teacher", "resnet8", "--teacher-ckpt", str(teacher_ckpt),
                 "--student", "resnet8", "--dataset", "digits", "--epochs", "1", "--train-subset", "300",
                 "--out", str(tmp_path), "--no-progress", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["teacher"] == "resnet8" and summary["seeds"] == [0]
    assert 0.0 < summary["best_acc_mean"] <= 100.0
    assert summary["last_acc_mean"] == summary["runs"][0]["last_acc"]
    assert (tmp_path / "seed0" / "best.pt").is_file() and (tmp_path / "results.json").is_file()


def test_replay_ce_baseline_over_seeds_reports_mean_and_std(tmp_path, capsys):
    code = main(["replay", "--method", "ce", "--student", "resnet8", "--epochs", "1", "--train-subset", "100",
                 "--seeds", "2", "--out", str(tmp_path), "--no-progress", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["seeds"] == [0, 1] and summary["teacher"] is None
    assert summary["best_acc_std"] >= 0.0 and len(summary["runs"]) == 2


def _one_line_error(capsys, *needles: str) -> None:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err


def test_unknown_model_exits_2_with_one_line(capsys):
    assert main(["train-teacher", "--model", "resnet9", "--dataset", "digits"]) == 2
    _one_line_error(capsys, "unknown model 'resnet9'")


def test_teacher_dataset_class_mismatch_exits_2(tmp_path, capsys):
    from kdzero.models import create_model

    path = tmp_path / "t100.pt"
    torch.save({"model": create_model("resnet8", num_classes=100, in_chans=1).state_dict()}, path)
    assert main(["replay", "--method", "kd", "--teacher", "resnet8", "--teacher-ckpt", str(path),
                 "--out", str(tmp_path / "run")]) == 2
    _one_line_error(capsys, "teacher predicts 100 classes but dataset digits has 10")


def test_truncated_checkpoint_exits_2(teacher_ckpt, tmp_path, capsys):
    path = tmp_path / "cut.pt"
    data = teacher_ckpt.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert main(["replay", "--method", "kd", "--teacher", "resnet8", "--teacher-ckpt", str(path),
                 "--out", str(tmp_path / "run")]) == 2
    _one_line_error(capsys, "cannot read checkpoint")


def test_truncated_last_checkpoint_on_resume_exits_2(tmp_path, capsys):
    (tmp_path / "last.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    assert main(["train-teacher", "--model", "resnet8", "--epochs", "1", "--out", str(tmp_path), "--resume"]) == 2
    _one_line_error(capsys, "cannot resume")


def test_replay_needs_exactly_one_distiller(capsys):
    assert main(["replay", "--method", "kd", "--genome", "logit[no,no,no]|kl|no|T4|x1"]) == 2
    _one_line_error(capsys, "exactly one")
    assert main(["replay", "--method", "kdd"]) == 2
    _one_line_error(capsys, "did you mean kd")


def test_replay_takes_the_genome_at_rank_k_of_a_run(monkeypatch, tmp_path, teacher_ckpt, capsys):
    import pandas as pd

    board = pd.DataFrame({"rank": [1, 2], "genome": ["logit[no,no,no]|kl|no|T4|x1", "emb[no,no,no]|l2|no|T1|x1"]})
    leaderboard = importlib.import_module("kdzero.leaderboard.frame")  # the module whose genome_at reads it
    monkeypatch.setattr(leaderboard, "load_leaderboard", lambda run, **kwargs: board)
    code = main(["replay", str(tmp_path / "run"), "--rank", "2", "--teacher", "resnet8", "--teacher-ckpt",
                 str(teacher_ckpt), "--epochs", "1", "--train-subset", "100", "--out", str(tmp_path / "out"),
                 "--no-progress", "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["distiller"] == "emb[no,no,no]|l2|no|T1|x1"
    assert main(["replay", str(tmp_path / "run"), "--rank", "3"]) == 2
    _one_line_error(capsys, "no rank 3")


def test_replay_of_a_missing_run_exits_2_in_one_line(tmp_path, capsys):
    assert main(["replay", str(tmp_path / "no-such-run"), "--rank", "1"]) == 2
    _one_line_error(capsys, "no search run")
