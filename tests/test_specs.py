"""Model and dataset specs: any torchvision model, timm (optional), and the user's own factories, from the CLI.

The user's code is ``tests/byo_helpers.py``: a real 2-conv CNN factory and a tensor dataset factory, named by
spec exactly as a user names ``mypkg.models:tiny``.
"""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from kdzero.cli import main
from kdzero.errors import ConfigError
from kdzero.features import Features
from kdzero.models import create_model
from kdzero.models.specs import ModelSpec, parse_spec
from tests.byo_helpers import TinyCNN


def test_specs_parse_into_kind_target_and_typed_options():
    assert parse_spec("resnet20") == ModelSpec("zoo", "resnet20")
    assert parse_spec("torchvision:mobilenet_v3_small?width_mult=0.5&dropout=0.1") == ModelSpec(
        "torchvision", "mobilenet_v3_small", (("width_mult", 0.5), ("dropout", 0.1)))
    assert parse_spec("mypkg.models:tiny?width=4&name=x") == ModelSpec(
        "factory", "mypkg.models:tiny", (("width", 4), ("name", "x")))
    assert str(parse_spec("torchvision:resnet18?zero_init_residual=True")) == \
        "torchvision:resnet18?zero_init_residual=True"


def test_a_factory_spec_builds_the_users_module_for_the_datasets_classes_and_channels():
    torch.manual_seed(0)
    model = create_model("tests.byo_helpers:tiny_cnn?width=4", num_classes=7, in_chans=1)
    torch.manual_seed(0)
    reference = TinyCNN(num_classes=7, in_chans=1, width=4)
    x = torch.rand(2, 1, 8, 8)
    out = model.eval()(x)
    assert isinstance(out, Features)
    assert out.feat.shape == (2, 8, 4, 4) and out.emb.shape == (2, 8)
    torch.testing.assert_close(out.logit, reference.eval()(x))  # the wrapper changes nothing the model computes


def test_any_torchvision_name_is_built_without_weights_with_the_stem_for_the_channels():
    model = create_model("torchvision:mobilenet_v3_small?width_mult=0.25", num_classes=5, in_chans=1)
    out = model.eval()(torch.rand(2, 1, 32, 32))
    assert out.logit.shape == (2, 5) and out.feat.dim() == 4
    assert model.model.features[0][0].in_channels == 1


@pytest.mark.parametrize("spec, fragment", [
    ("torchvision:resnet1800", "unknown torchvision model 'resnet1800'; did you mean resnet18"),
    ("nopkg.models:tiny", "cannot import module 'nopkg.models' (No module named 'nopkg')"),
    ("tests.byo_helpers:tiny", "module 'tests.byo_helpers' has no function 'tiny'; did you mean tiny_cnn"),
    ("tests.byo_helpers:broken_factory", "building it raised RuntimeError: no GPU in this factory"),
    ("tests.byo_helpers:not_a_module", "returned str, not an nn.Module"),
    ("torchvision:resnet18?weights=DEFAULT", "kdzero downloads no weights"),
    ("tests.byo_helpers:tiny_cnn?width", "option 'width' must be key=value"),
])
def test_every_bad_spec_is_one_line_on_stderr_and_exit_2(spec, fragment, capsys):
    capsys.readouterr()
    assert main(["search", "--student", spec, "--name", "bad", "--runs-dir", "/nonexistent/runs", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and fragment in err, err


@pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="timm is installed")
def test_a_timm_spec_without_timm_names_the_extra(capsys):
    with pytest.raises(ConfigError, match=r"needs timm, which is not installed: pip install 'kdzero\[timm\]'"):
        create_model("timm:resnet10t", num_classes=10)
    assert main(["search", "--teacher", "timm:resnet10t", "--name", "bad", "--quiet"]) == 2
    assert "pip install 'kdzero[timm]'" in capsys.readouterr().err


def test_a_dataset_factory_gives_splits_with_a_held_out_validation_part():
    from kdzero.data import load_dataset

    data = load_dataset("tests.byo_helpers:tiny_dataset")
    assert (len(data.train), len(data.val), len(data.test)) == (108, 12, 40)  # 10 % of each class held out
    assert (data.num_classes, data.in_chans, data.image_size) == (4, 3, (8, 8))
    assert data.train.images.dtype == torch.uint8


def test_bad_user_data_is_one_clear_error():
    from kdzero.errors import DataError
    from kdzero.user_data import to_splits

    with pytest.raises(DataError, match=r"unnormalised: floats in \[0, 1\] or uint8, got values in \[-2"):
        to_splits((torch.full((8, 3, 4, 4), -2.0), torch.zeros(8, dtype=torch.long)))
    with pytest.raises(DataError, match="3 labels for 8 images"):
        to_splits((torch.rand(8, 3, 4, 4), torch.zeros(3, dtype=torch.long)))


def test_cli_searches_a_torchvision_teacher_and_a_users_factory_student_on_a_users_dataset(tmp_path, capsys):
    torch.manual_seed(0)
    teacher = create_model("torchvision:resnet18", num_classes=4)
    ckpt = tmp_path / "teacher.pt"
    torch.save(teacher.model.state_dict(), ckpt)  # what a user saves of a torchvision model
    capsys.readouterr()
    code = main(["search", "--teacher", "torchvision:resnet18", "--teacher-ckpt", str(ckpt), "--student",
                 "tests.byo_helpers:tiny_cnn?width=4", "--dataset", "tests.byo_helpers:tiny_dataset",
                 "--name", "byo", "--runs-dir", str(tmp_path / "runs"), "--population", "2", "--iterations", "0",
                 "--no-presets", "--steps", "4", "--batch-size", "16", "--views", "1", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    pair = json.loads((tmp_path / "runs" / "byo" / "pair.json").read_text())
    assert pair["teacher"] == "torchvision:resnet18" and pair["student"] == "tests.byo_helpers:tiny_cnn?width=4"
    assert pair["student_shapes"]["feat"] == [8, 4, 4] and pair["teacher_shapes"]["feat"] == [512, 1, 1]
    assert sum(line.startswith("trial ") for line in out.splitlines()) == 2


def test_version_names_kdzero_torch_and_python(capsys):
    import platform
    import re

    import kdzero

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out.strip()
    assert re.fullmatch(rf"kdzero {re.escape(kdzero.__version__)} \((commit [0-9a-f]{{7}}, )?torch "
                        rf"{re.escape(torch.__version__.split('+')[0])}\S*, Python {platform.python_version()}\)", out)


def test_models_lists_every_zoo_name_and_the_spec_forms(capsys):
    from kdzero.models import list_models

    assert main(["models", "--plain"]) == 0
    assert capsys.readouterr().out.split() == list_models()
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "torchvision:NAME" in out and "timm:NAME" in out and "package.module:function" in out


def test_genome_check_json_prints_json_only_even_with_shapes(capsys):
    assert main(["genome", "check", "feat[no,no,no]|l2|no|T1|x1", "--json", "--student-shapes",
                 "feat=8x4x4,emb=8,logit=10", "--teacher-shapes", "feat=16x4x4,emb=16,logit=10"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["input"] == "feat" and payload["check"] == {
        "valid": True, "output_shapes": [[8, 16, 4, 4]] * 4, "connector": True}
