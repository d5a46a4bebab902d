"""A run remembers its pair: replay/evaluate/export use it, and a finished run is only extended, never changed.

Searches run in-process through ``kdzero.cli.main`` at a tiny budget (a few 8x8 or 16x16 images per class,
a dozen proxy steps); each test works in its own folder (``runs/`` relative to it).
"""
from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest
import torch

from kdzero.cli import main
from kdzero.models import create_model
from kdzero.search.record import file_sha256

TINY_PROXY = """
population = 2
iterations = 0
presets = false
max_steps = 6
confirm = 0
[proxy]
steps = 6
batch_size = 16
num_views = 1
sharpness_samples = 32
cka_samples = 32
"""


def _cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _jpeg_folder(root: Path, classes: int = 3, train: int = 10, test: int = 3, size: int = 16) -> Path:
    """A real ImageFolder of JPEG files: one mean colour per class plus noise."""
    from torchvision.io import encode_jpeg

    generator = torch.Generator().manual_seed(0)
    for part, n in (("train", train), ("test", test)):
        for c in range(classes):
            folder = root / part / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                image = (torch.rand(3, size, size, generator=generator) * 96).to(torch.uint8)
                image[c % 3] += 128
                (folder / f"{i:04d}.jpg").write_bytes(encode_jpeg(image, quality=90).numpy().tobytes())
    return root


@pytest.fixture(scope="module")
def jpeg_run(tmp_path_factory) -> dict:
    """A finished search on a tiny JPEG ImageFolder with a zoo teacher (resnet14) saved beside it; the run
    folder is absolute (``runs_dir``), so tests that change a run work on a copy (``_copy_run``)."""
    tmp_path = tmp_path_factory.mktemp("jpeg")
    data = _jpeg_folder(tmp_path / "jpegs")
    torch.manual_seed(0)
    ckpt = tmp_path / "teacher.pt"
    torch.save(create_model("resnet14", num_classes=3).state_dict(), ckpt)
    config = _config(tmp_path, data, ckpt, tmp_path / "runs")
    code = main(["search", "--config", str(config), "--quiet"])
    assert code == 0
    return {"run": tmp_path / "runs" / "jpeg", "config": config, "ckpt": ckpt, "data": data,
            "log": (tmp_path / "runs" / "jpeg" / "search.log").read_text()}


def _config(folder: Path, data: Path, ckpt: Path, runs: Path) -> Path:
    config = folder / "jpeg.toml"
    config.write_text(f'dataset = "imagefolder:{data.as_posix()}"\nteacher = "resnet14"\n'
                      f'teacher_ckpt = "{ckpt.as_posix()}"\nstudent = "resnet8"\nruns_dir = "{runs.as_posix()}"\n'
                      f'{TINY_PROXY}')
    return config


def _copy_run(jpeg_run: dict, tmp_path: Path) -> dict:
    """A private copy of the finished run (and of its teacher checkpoint), to change without affecting others."""
    ckpt = tmp_path / "teacher.pt"
    shutil.copy(jpeg_run["ckpt"], ckpt)
    run = tmp_path / "runs" / "jpeg"
    shutil.copytree(jpeg_run["run"], run)
    config = json.loads((run / "config.json").read_text())
    config.update(teacher_ckpt=ckpt.as_posix(), runs_dir=(tmp_path / "runs").as_posix())
    (run / "config.json").write_text(json.dumps(config))
    pair = json.loads((run / "pair.json").read_text())
    pair["teacher_ckpt"] = str(ckpt.resolve())
    (run / "pair.json").write_text(json.dumps(pair))
    from kdzero.leaderboard import open_study
    from kdzero.search.study import CONFIG_ATTR

    open_study(run).set_user_attr(CONFIG_ATTR, config)
    return {**jpeg_run, "run": run, "ckpt": ckpt, "config": _config(tmp_path, jpeg_run["data"], ckpt,
                                                                    tmp_path / "runs")}


def test_a_run_records_its_resolved_pair_and_metadata(jpeg_run):
    pair = json.loads((jpeg_run["run"] / "pair.json").read_text())
    assert (pair["teacher"], pair["student"], pair["normalize"]) == ("resnet14", "resnet8", "dataset")
    assert pair["dataset"] == f"imagefolder:{jpeg_run['data'].as_posix()}"
    assert pair["teacher_ckpt"] == str(jpeg_run["ckpt"].resolve())
    assert pair["teacher_sha256"] == file_sha256(jpeg_run["ckpt"])
    assert (pair["num_classes"], pair["in_chans"], pair["image_size"]) == (3, 3, [16, 16])
    assert pair["student_shapes"]["feat"] == [64, 4, 4] and pair["teacher_shapes"]["logit"] == [3]
    assert pair["proxy"]["steps"] == 6
    meta = json.loads((jpeg_run["run"] / "run.json").read_text())
    assert meta["torch_version"] == torch.__version__ and meta["device"] == "cpu"
    assert meta["started"] <= meta["ended"] and meta["trial_seconds"] > 0
    lines = [line for line in jpeg_run["log"].splitlines() if "  trial " in line]
    assert len(lines) == 2 and all("complete  score" in line and " s  " in line for line in lines)


def test_quiet_search_prints_one_plain_line_per_finished_trial(jpeg_run, tmp_path, capsys):
    run = _copy_run(jpeg_run, tmp_path)
    code, out, err = _cli(capsys, "search", "--config", run["config"], "--iterations", "1", "--quiet")
    assert code == 0, err
    trial_lines = [line for line in out.splitlines() if line.startswith("trial ")]
    assert len(trial_lines) == 1 and trial_lines[0].startswith("trial 2  ")
    assert trial_lines[0] in (run["run"] / "search.log").read_text()


def test_replay_of_a_run_with_no_other_option_trains_its_pair_on_its_data(jpeg_run, tmp_path, monkeypatch,
                                                                         capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = _cli(capsys, "replay", jpeg_run["run"], "--rank", "1", "--epochs", "1", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["student"], summary["teacher"]) == ("resnet8", "resnet14")
    assert summary["dataset"] == f"imagefolder:{jpeg_run['data'].as_posix()}"
    assert f"teacher resnet14 from {jpeg_run['ckpt'].resolve()}" in err
    assert not Path("runs/teachers").exists()  # no digits teacher was trained
    first = Path(summary["runs"][0]["run_dir"]).parent
    assert first == jpeg_run["run"] / "replay-rank1"
    code, out, _ = _cli(capsys, "replay", jpeg_run["run"], "--rank", "1", "--epochs", "1", "--json")
    assert code == 0 and Path(json.loads(out)["runs"][0]["run_dir"]).parent.name == "replay-rank1-2"


def test_replay_options_that_contradict_the_run_are_refused_naming_both_values(jpeg_run, capsys):
    code, _, err = _cli(capsys, "replay", jpeg_run["run"], "--rank", "1", "--student", "resnet20")
    assert code == 2
    assert err.strip() == (f"kdzero replay: error: --student 'resnet20' contradicts run {jpeg_run['run']}, searched "
                           f"with student 'resnet8'; drop --student to use the run's, or give --genome TEXT "
                           f"instead of the run to train another pair")
    code, _, err = _cli(capsys, "replay", jpeg_run["run"], "--rank", "1", "--dataset", "digits")
    assert code == 2 and "contradicts" in err and "'digits'" in err


def test_a_changed_teacher_checkpoint_is_refused_by_replay_and_resume(jpeg_run, tmp_path, capsys):
    run = _copy_run(jpeg_run, tmp_path)
    torch.manual_seed(1)
    torch.save(create_model("resnet14", num_classes=3).state_dict(), run["ckpt"])
    code, _, err = _cli(capsys, "replay", run["run"], "--rank", "1", "--epochs", "1")
    assert code == 2 and "changed since the run recorded it" in err and len(err.strip().splitlines()) == 1
    code, _, err = _cli(capsys, "search", "--config", run["config"], "--quiet")
    assert code == 2 and "another teacher" in err and "--name NEW" in err


def test_changing_steps_on_a_finished_run_is_refused_and_raising_iterations_continues_it(jpeg_run, tmp_path,
                                                                                         capsys):
    jpeg_run = _copy_run(jpeg_run, tmp_path)
    code, _, err = _cli(capsys, "search", "--config", jpeg_run["config"], "--steps", "8", "--quiet")
    assert code == 2
    assert "proxy.steps 6 -> 8" in err and "--name NEW" in err and "--fresh" in err
    saved = json.loads((jpeg_run["run"] / "config.json").read_text())
    assert saved["proxy"]["steps"] == 6  # the refused command changed nothing
    code, out, err = _cli(capsys, "search", "--config", jpeg_run["config"], "--iterations", "2", "--quiet")
    assert code == 0, err
    assert "continuing run jpeg (iterations 0 -> 2): 2 -> 4 planned trials, 2 finished" in out
    from kdzero.leaderboard import open_study

    study = open_study(jpeg_run["run"])
    assert sum(t.state.is_finished() for t in study.get_trials()) == 4
    code, out, err = _cli(capsys, "search", "--config", jpeg_run["config"], "--steps", "8", "--fresh", "--quiet")
    assert code == 0, err
    assert len(open_study(jpeg_run["run"]).get_trials()) == 2
    assert json.loads((jpeg_run["run"] / "config.json").read_text())["proxy"]["steps"] == 8


def test_evaluate_and_export_of_a_run_use_its_pair(jpeg_run, capsys):
    runs = jpeg_run["run"].parent
    code, out, err = _cli(capsys, "evaluate", "logit[no,no,no]|kl|no|T4|x1", "--name", "jpeg", "--runs-dir", runs,
                          "--json", "--no-baseline")
    assert code == 0, err
    assert json.loads(out)["result"]["steps"] == 6
    assert not (jpeg_run["run"] / "teacher").exists()  # no digits teacher written into the JPEG run
    code, _, err = _cli(capsys, "evaluate", "logit[no,no,no]|kl|no|T4|x1", "--name", "jpeg", "--runs-dir", runs,
                        "--teacher", "resnet8")
    assert code == 2 and f"--teacher 'resnet8' contradicts run {jpeg_run['run']}" in err
    code, out, err = _cli(capsys, "export", jpeg_run["run"], "--rank", "1")
    assert code == 0, err
    assert "class Distiller" in out


@pytest.mark.data
def test_cifar10_jpeg_run_with_akamaster_teacher_replays_its_own_pair(shared_data, tmp_path, monkeypatch, capsys):
    """The real CIFAR-10 JPEGs (a few per class) with the pretrained akamaster resnet56 at a tiny budget."""
    monkeypatch.chdir(tmp_path)
    with tarfile.open(shared_data / "cifar10-jpeg.tar.gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile() and int(Path(m.name).stem) % 500 == 0]
        tar.extractall(tmp_path / "c10", members=members, filter="data")
    root = next(p.parent for p in (tmp_path / "c10").rglob("train"))
    ckpt = shared_data / "teachers" / "akamaster-cifar10" / "resnet56-4bfd9763.th"
    config = tmp_path / "c10.toml"
    config.write_text(f'dataset = "imagefolder:{root.as_posix()}"\nnormalize = "imagenet"\nteacher = "resnet56a"\n'
                      f'teacher_ckpt = "{ckpt.as_posix()}"\nstudent = "resnet20a"\n{TINY_PROXY}')
    code, _, err = _cli(capsys, "search", "--config", config, "--quiet")
    assert code == 0, err
    code, out, err = _cli(capsys, "replay", "runs/c10", "--rank", "1", "--epochs", "1", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["student"], summary["teacher"]) == ("resnet20a", "resnet56a")
    assert summary["dataset"] == f"imagefolder:{root.as_posix()}"
    assert "teacher resnet56a from" in err and "resnet56-4bfd9763.th" in err


def test_resume_rules_sort_each_setting_into_refused_extending_or_free():
    from kdzero.errors import ConfigError
    from kdzero.search.config import SearchConfig

    saved = SearchConfig(population=12, iterations=28).to_dict()
    assert SearchConfig(population=12, iterations=28, workers=4, device="cuda", threads=2).check_resumable(saved) == []
    assert SearchConfig(population=20, iterations=40).check_resumable(saved) == [
        "iterations 28 -> 40", "population 12 -> 20"]
    # the confirmation's budget is free: its results are stored per budget, the proxy scores stay comparable
    assert SearchConfig(population=12, iterations=28, confirm=5, confirm_epochs=10, confirm_subset=20,
                        confirm_seeds=3).check_resumable(saved) == []
    for changed in ({"population": 8}, {"sampler": "tpe"}, {"seed": 1}, {"proxy": {"steps": 60}},
                    {"proxy": {"train_subset": 50}}, {"score": {"cka_gap": 0.0}}, {"student": "resnet20"}):
        config = SearchConfig.from_dict({**saved, **changed, "proxy": {**saved["proxy"], **changed.get("proxy", {})},
                                         "score": {**saved["score"], **changed.get("score", {})}})
        with pytest.raises(ConfigError, match=r"pass --name NEW for a new run, or --fresh"):
            config.check_resumable(saved)
