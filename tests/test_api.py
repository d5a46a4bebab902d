"""The Python API: ``kdzero.search`` on a user-built teacher and a torchvision student held as objects, on
tensors; the run resumes under its name, refuses changed data, and ``kdzero.replay`` trains its pair."""
from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
import torchvision
from torch import nn

import kdzero
from kdzero.errors import ConfigError
from kdzero.features import Features
from kdzero.genome import Genome
from kdzero.loss import UnifiedLoss

README = Path(__file__).resolve().parents[1] / "README.md"


def _teacher() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 3))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(150, 3, 16, 16, generator=generator)
    return images, images.mean(dim=(2, 3)).argmax(dim=1)


@pytest.fixture(scope="module")
def api_run(tmp_path_factory) -> dict:
    runs = tmp_path_factory.mktemp("api") / "runs"
    teacher = _teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = torchvision.models.mobilenet_v3_small(num_classes=3, width_mult=0.25)
    lines: list[str] = []
    result = kdzero.search(teacher, student, _data(), name="api", runs_dir=runs, population=2, iterations=1,
                           presets=False, steps=5, batch_size=16, num_views=1, sharpness_samples=16,
                           cka_samples=16, log=lines.append)
    return {"result": result, "teacher": teacher, "student": student, "runs": runs, "lines": lines,
            "before": before}


def test_search_returns_the_leaderboard_best_genome_ready_loss_and_run_dir(api_run):
    result = api_run["result"]
    assert result.run_dir == api_run["runs"] / "api" and (result.run_dir / "study.db").is_file()
    board = result.leaderboard
    assert isinstance(board, pd.DataFrame) and len(board) == 3
    assert list(board["rank"]) == [1, 2, 3] and board["score"].is_monotonic_increasing
    assert result.best == Genome.parse(board.iloc[0]["genome"])
    assert isinstance(result.loss, UnifiedLoss) and str(result.loss.genome) == str(result.best)
    assert result.baseline["genome"] == "ce-only" and result.baseline["score"] > 0
    assert result.pair["teacher"] == "python:torch.nn.modules.container.Sequential"
    assert result.pair["student"] == "python:torchvision.models.mobilenetv3.MobileNetV3"
    assert result.pair["student_shapes"]["logit"] == [3] and result.pair["teacher_shapes"]["feat"] == [32, 8, 8]
    # the loss is sized for this pair: it runs on the two models' Features
    student_out = kdzero.models.wrap_model(copy.deepcopy(api_run["student"])).eval()(_data()[0][:4])
    teacher_out = kdzero.models.wrap_model(copy.deepcopy(api_run["teacher"])).eval()(_data()[0][:4])
    assert isinstance(student_out, Features)
    value = result.loss(student=student_out, teacher=teacher_out, target=_data()[1][:4])
    assert torch.isfinite(value)


def test_search_leaves_the_users_models_unchanged_and_logs_every_trial(api_run):
    teacher = api_run["teacher"]
    assert teacher.training and all(p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(v, api_run["before"][k]) for k, v in teacher.state_dict().items())
    trial_lines = [line for line in api_run["lines"] if line.startswith("trial ")]
    assert [int(line.split()[1]) for line in trial_lines] == [0, 1, 2]
    log = (api_run["result"].run_dir / "search.log").read_text()
    assert all(line in log for line in trial_lines)
    meta = json.loads((api_run["result"].run_dir / "run.json").read_text())
    assert meta["kdzero_version"] == kdzero.__version__


def test_the_same_name_resumes_and_changed_data_is_refused(api_run):
    again = kdzero.search(api_run["teacher"], api_run["student"], _data(), name="api", runs_dir=api_run["runs"],
                          population=2, iterations=1, presets=False, steps=5, batch_size=16, num_views=1,
                          sharpness_samples=16, cka_samples=16)
    assert again.leaderboard[["genome", "score"]].equals(api_run["result"].leaderboard[["genome", "score"]])
    images, labels = _data()
    with pytest.raises(ConfigError, match=r"dataset 'python:data-\w+' -> 'python:data-\w+'.*--name NEW"):
        kdzero.search(api_run["teacher"], api_run["student"], (images.flip(0), labels.flip(0)), name="api",
                      runs_dir=api_run["runs"], population=2, iterations=1, presets=False, steps=5,
                      batch_size=16, num_views=1, sharpness_samples=16, cka_samples=16)


def test_replay_trains_the_runs_pair_and_refuses_another_teacher(api_run, tmp_path):
    replayed = kdzero.replay(api_run["result"].run_dir, teacher=api_run["teacher"], student=api_run["student"],
                             train_data=_data(), epochs=1, out=tmp_path / "replay")
    assert replayed.genome == str(api_run["result"].best)
    assert replayed.result.best_epoch == 1 and 0.0 <= replayed.result.best_acc <= 100.0
    assert (tmp_path / "replay" / "best.pt").is_file()
    other = _teacher()
    with torch.no_grad():
        other[0].weight.add_(1.0)
    with pytest.raises(ConfigError, match="teacher's weights differ"):
        kdzero.replay(api_run["result"].run_dir, teacher=other, student=api_run["student"], train_data=_data(),
                      epochs=1)


def test_readme_python_api_example_runs_as_written(tmp_path, monkeypatch):
    text = README.read_text()
    code = re.search(r"## Searching from Python.*?```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    result = namespace["result"]
    assert result.run_dir == Path("runs/python-demo") and list(result.leaderboard["rank"])[:2] == [1, 2]
    assert result.best is not None and os.path.isfile(result.run_dir / "search.log")
