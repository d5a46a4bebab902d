"""Tests for the model zoo: the Features contract for every registered model, parameter counts against published
figures, the checkpoint loader on every layout and failure, akamaster's pretrained teachers, and the hook adapter."""
from __future__ import annotations

import argparse
import copy
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import nn

from kdzero.errors import CheckpointError, ConfigError
from kdzero.features import Features
from kdzero.models import FeatureModel, create_model, list_models, load_checkpoint, wrap_model

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
AKAMASTER = DATA / "teachers" / "akamaster-cifar10"


def _input(name: str, batch: int = 2, in_chans: int = 3) -> torch.Tensor:
    size = 64 if name.startswith("tv_") else 32
    return torch.randn(batch, in_chans, size, size, generator=torch.Generator().manual_seed(0))


def _last_linear(model: nn.Module) -> nn.Linear:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


@pytest.mark.parametrize("name", list_models())
def test_every_model_returns_features_with_advertised_shapes(name: str) -> None:
    model = create_model(name, num_classes=7).eval()
    x = _input(name)
    with torch.no_grad():
        out = model(x)
        emb_again, logit_again = model.forward_head(out.feat)
    assert isinstance(out, Features)
    info = model.feature_info()
    assert out.feat.dim() == 4 and out.feat.shape[:2] == (2, info["feature_channels"])
    assert out.emb.shape == (2, info["embedding_dim"])
    assert out.logit.shape == (2, 7) and info["num_classes"] == model.num_classes == 7
    assert model.feature_channels == info["feature_channels"]
    # emb is exactly what the classifier sees, and forward_head redoes the forward pass's head
    torch.testing.assert_close(_last_linear(model)(out.emb), out.logit)
    torch.testing.assert_close(emb_again, out.emb)
    torch.testing.assert_close(logit_again, out.logit)


@pytest.mark.parametrize("name", ["resnet8", "resnet20", "resnet8x4", "wrn_16_2", "vgg8", "mobilenetv2"])
def test_small_models_run_on_8x8_single_channel_digits(name: str) -> None:
    model = create_model(name, num_classes=10, in_chans=1)
    out = model(torch.randn(4, 1, 8, 8))
    assert out.logit.shape == (4, 10) and out.emb.shape == (4, model.embedding_dim)
    out.logit.sum().backward()  # trains, not just evaluates
    assert all(p.grad is not None for p in model.parameters())


def test_cifar_resnet_feature_map_is_post_relu_last_stage() -> None:
    model = create_model("resnet20", num_classes=10).eval()
    out = model(torch.randn(3, 3, 32, 32))
    assert out.feat.shape == (3, 64, 8, 8) and (out.feat >= 0).all()
    torch.testing.assert_close(out.emb, out.feat.mean(dim=(2, 3)))


def test_torchvision_model_accepts_other_input_channels() -> None:
    out = create_model("tv_resnet18", num_classes=5, in_chans=1).eval()(torch.randn(2, 1, 64, 64))
    assert out.feat.shape == (2, 512, 2, 2) and out.logit.shape == (2, 5)


def _params(name: str, num_classes: int = 100) -> int:
    return sum(p.numel() for p in create_model(name, num_classes=num_classes).parameters())


# Millions of parameters. CIFAR-100 figures as printed in the CRD/RepDistiller-family tables; He et al. (2016)
# for the option-A ResNets on CIFAR-10; torchvision's documented ImageNet counts for the tv_* models.
PUBLISHED = [
    ("resnet20", 100, 0.28), ("resnet56", 100, 0.86), ("resnet110", 100, 1.73), ("resnet8x4", 100, 1.23),
    ("resnet32x4", 100, 7.43), ("wrn_16_2", 100, 0.70), ("wrn_40_1", 100, 0.57), ("wrn_40_2", 100, 2.26),
    ("vgg8", 100, 3.96), ("vgg13", 100, 9.46), ("mobilenetv2", 100, 0.81), ("shufflenetv1", 100, 0.95),
    ("shufflenetv2", 100, 1.35), ("resnet20a", 10, 0.27), ("resnet56a", 10, 0.85),
    ("tv_resnet18", 1000, 11.69), ("tv_resnet50", 1000, 25.56), ("tv_mobilenet_v2", 1000, 3.50),
]


@pytest.mark.parametrize(("name", "num_classes", "millions"), PUBLISHED)
def test_parameter_count_matches_published_figure(name: str, num_classes: int, millions: float) -> None:
    assert _params(name, num_classes) / 1e6 == pytest.approx(millions, rel=0.02)


def test_unknown_model_name_is_a_one_line_error_with_close_names() -> None:
    with pytest.raises(ConfigError, match="resnet20") as err:
        create_model("resnet21")
    assert "\n" not in str(err.value)


def test_model_names_ignore_case_and_dashes() -> None:
    assert isinstance(create_model("WRN-16-1", num_classes=3), FeatureModel)


@pytest.mark.parametrize("kwargs", [{"num_classes": 0}, {"in_chans": -1}, {"depth": 3}])
def test_bad_model_options_are_config_errors(kwargs: dict) -> None:
    with pytest.raises(ConfigError, match="resnet8"):
        create_model("resnet8", **kwargs)


# --- checkpoints -------------------------------------------------------------------------------------------------

def _randomised(name: str, num_classes: int = 10) -> nn.Module:
    model = create_model(name, num_classes=num_classes)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t))
    return model


def _save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


LAYOUTS = {
    "plain": (lambda sd: sd, "state_dict"),
    "repdistiller": (lambda sd: {"model": sd, "epoch": 240, "best_acc": torch.tensor(71.2)}, "repdistiller"),
    "akamaster": (lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "best_prec1": 91.0},
                  "akamaster"),
    "state_dict_key": (lambda sd: {"state_dict": sd, "epoch": 3}, "wrapped_state_dict"),
    "data_parallel_plain": (lambda sd: {f"module.{k}": v for k, v in sd.items()}, "state_dict"),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_checkpoint_layouts_load_strictly(layout: str, tmp_path: Path) -> None:
    source = _randomised("resnet8")
    pack, expected = LAYOUTS[layout]
    path = _save(pack(source.state_dict()), tmp_path / "ck.pth")
    target = create_model("resnet8", num_classes=10)
    info = load_checkpoint(target, path)
    assert info.layout == expected and not info.missing and not info.unexpected
    assert _same_weights(source, target)


def test_checkpoint_metadata_is_returned(tmp_path: Path) -> None:
    path = _save({"model": _randomised("resnet8").state_dict(), "epoch": 240}, tmp_path / "ck.pth")
    assert load_checkpoint(create_model("resnet8", num_classes=10), path).meta == {"epoch": 240}


def test_missing_and_unexpected_keys_are_named_per_line(tmp_path: Path) -> None:
    sd = _randomised("resnet8").state_dict()
    del sd["fc.bias"], sd["layer1.0.conv1.weight"]
    sd["extra.weight"] = torch.zeros(3)
    path = _save(sd, tmp_path / "ck.pth")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(create_model("resnet8", num_classes=10), path)
    lines = str(err.value).splitlines()
    assert str(path) in lines[0]
    assert any(line.strip().startswith("missing (2):") and "fc.bias" in line for line in lines)
    assert any(line.strip().startswith("unexpected (1): extra.weight") for line in lines)


def test_non_strict_load_reports_what_it_skipped(tmp_path: Path) -> None:
    source = _randomised("resnet8")
    sd = source.state_dict()
    del sd["fc.bias"]
    sd["extra.weight"] = torch.zeros(3)
    target = create_model("resnet8", num_classes=10)
    info = load_checkpoint(target, _save(sd, tmp_path / "ck.pth"), strict=False)
    assert info.missing == ["fc.bias"] and info.unexpected == ["extra.weight"]
    assert torch.equal(target.fc.weight, source.fc.weight)


def test_misshaped_keys_are_refused_even_when_not_strict(tmp_path: Path) -> None:
    sd = _randomised("resnet8").state_dict()
    sd["layer2.0.conv1.weight"] = torch.zeros(32, 16, 5, 5)
    path = _save(sd, tmp_path / "ck.pth")
    with pytest.raises(CheckpointError, match=r"mis-shaped \(1\): layer2.0.conv1.weight checkpoint \(32, 16, 5, 5\)"):
        load_checkpoint(create_model("resnet8", num_classes=10), path, strict=False)


def test_long_key_lists_are_truncated(tmp_path: Path) -> None:
    sd = {k: v for k, v in _randomised("resnet8").state_dict().items() if not k.startswith("layer3")}
    with pytest.raises(CheckpointError, match=r"missing \(\d+\): .*\(\+\d+ more\)"):
        load_checkpoint(create_model("resnet8", num_classes=10), _save(sd, tmp_path / "ck.pth"))


def test_wrong_class_count_is_named(tmp_path: Path) -> None:
    path = _save({"model": _randomised("resnet8", 10).state_dict()}, tmp_path / "ck.pth")
    with pytest.raises(CheckpointError, match="checkpoint has 10 classes, model has 100"):
        load_checkpoint(create_model("resnet8", num_classes=100), path)


def test_checkpoint_of_another_architecture_is_refused(tmp_path: Path) -> None:
    path = _save(_randomised("vgg8").state_dict(), tmp_path / "ck.pth")
    with pytest.raises(CheckpointError, match="another architecture"):
        load_checkpoint(create_model("resnet8", num_classes=10), path)


def test_unreadable_files_are_checkpoint_errors(tmp_path: Path) -> None:
    good = _save(_randomised("resnet8").state_dict(), tmp_path / "good.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    for path in (truncated, text, tmp_path / "absent.pth"):
        with pytest.raises(CheckpointError, match=f"cannot read checkpoint {path}: "):
            load_checkpoint(create_model("resnet8", num_classes=10), path)


def test_file_without_state_dict_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no state dict"):
        load_checkpoint(create_model("resnet8", num_classes=10), _save({"epoch": 3}, tmp_path / "ck.pth"))


def test_pickled_objects_need_explicit_trust(tmp_path: Path) -> None:
    source = _randomised("resnet8")
    path = _save({"model": source.state_dict(), "opt": argparse.Namespace(lr=0.05)}, tmp_path / "ck.pth")
    with pytest.raises(CheckpointError, match="weights_only=False"):
        load_checkpoint(create_model("resnet8", num_classes=10), path)
    target = create_model("resnet8", num_classes=10)
    load_checkpoint(target, path, weights_only=False)
    assert _same_weights(source, target)


def test_wrapped_torchvision_model_loads_torchvision_keys(tmp_path: Path) -> None:
    source = torchvision.models.resnet18(weights=None, num_classes=4)
    path = _save(source.state_dict(), tmp_path / "r18.pth")
    target = create_model("tv_resnet18", num_classes=4)
    load_checkpoint(target, path)
    assert _same_weights(source, target.model)


# --- akamaster's pretrained CIFAR-10 teachers --------------------------------------------------------------------

AKAMASTER_FILES = [
    ("resnet20a", "resnet20-12fca82f.th", 91.78),
    ("resnet32a", "resnet32-d509ac18.th", 92.78),
    ("resnet44a", "resnet44-014dd654.th", 93.14),
    ("resnet56a", "resnet56-4bfd9763.th", 93.62),
]


@pytest.mark.data
@pytest.mark.parametrize(("name", "filename", "best_prec1"), AKAMASTER_FILES)
def test_akamaster_teachers_load_strictly(name: str, filename: str, best_prec1: float) -> None:
    if not (AKAMASTER / filename).is_file():
        pytest.skip(f"{AKAMASTER / filename} not present")
    info = load_checkpoint(create_model(name, num_classes=10), AKAMASTER / filename)
    assert info.layout == "akamaster" and info.meta["best_prec1"] == pytest.approx(best_prec1, abs=0.01)


def _cifar10_test_images(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` test images of each class in the JPEG archive, normalised as akamaster trained."""
    per_class: dict[str, list[torch.Tensor]] = {}
    with tarfile.open(DATA / "cifar10-jpeg.tar.gz") as tar:
        for member in tar:
            parts = Path(member.name).parts
            if len(parts) >= 3 and parts[-3] == "test" and member.isfile():
                images = per_class.setdefault(parts[-2], [])
                if len(images) < count:
                    with Image.open(tar.extractfile(member)) as img:
                        images.append(torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1))
    classes = sorted(per_class)
    x = torch.stack([img for c in classes for img in per_class[c]]).float() / 255
    y = torch.tensor([i for i, c in enumerate(classes) for _ in per_class[c]])
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std, y


@pytest.mark.data
def test_akamaster_resnet20_is_accurate_on_jpeg_cifar10() -> None:
    if not (DATA / "cifar10-jpeg.tar.gz").is_file() or not (AKAMASTER / "resnet20-12fca82f.th").is_file():
        pytest.skip(f"{DATA} not present")
    x, y = _cifar10_test_images(30)
    model = create_model("resnet20a", num_classes=10).eval()
    load_checkpoint(model, AKAMASTER / "resnet20-12fca82f.th")
    with torch.no_grad():
        accuracy = (model(x).logit.argmax(1) == y).float().mean().item()
    assert accuracy > 0.72, accuracy  # 0.79 on these 300; 0.81 on the whole JPEG test set, 0.92 lossless


# --- the hook adapter --------------------------------------------------------------------------------------------

def test_adapter_features_equal_resnet18_run_by_hand() -> None:
    net = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    wrapped = wrap_model(net)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = wrapped(x)
        h = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        feat = net.layer4(net.layer3(net.layer2(net.layer1(h))))
        emb = torch.flatten(F.adaptive_avg_pool2d(feat, 1), 1)
        logit = net.fc(emb)
    assert wrapped.feat_layer == "layer4"
    torch.testing.assert_close(out.feat, feat)
    torch.testing.assert_close(out.emb, emb)
    torch.testing.assert_close(out.logit, logit)
    assert wrapped.feature_info() == {"feature_channels": 512, "embedding_dim": 512, "num_classes": 10}


def test_adapter_feat_layer_can_be_named() -> None:
    wrapped = wrap_model(torchvision.models.resnet18(weights=None, num_classes=10), feat_layer="layer3")
    assert wrapped.feature_info(torch.randn(2, 3, 64, 64))["feature_channels"] == 256
    assert wrapped(torch.randn(2, 3, 64, 64)).feat.shape == (2, 256, 4, 4)


def test_adapter_unknown_feat_layer_suggests_names() -> None:
    with pytest.raises(ConfigError, match="layer4"):
        wrap_model(torchvision.models.resnet18(weights=None), feat_layer="layer5")


def test_adapter_wraps_a_plain_module() -> None:
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    out = wrap_model(net)(torch.randn(2, 1, 8, 8))
    assert out.feat.shape == (2, 4, 6, 6) and out.emb.shape == (2, 4) and out.logit.shape == (2, 3)
    assert (out.feat >= 0).all()  # the ReLU's output, not the convolution's


def test_adapter_refuses_a_module_without_classifier() -> None:
    with pytest.raises(ConfigError, match=r"no nn\.Linear"):
        wrap_model(nn.Conv2d(3, 3, 1))


def test_wrap_model_passes_zoo_models_through_unless_asked_for_another_layer() -> None:
    model = create_model("resnet8", num_classes=10)
    assert wrap_model(model) is model
    out = wrap_model(model, feat_layer="layer2")(torch.randn(2, 3, 32, 32))
    assert out.feat.shape == (2, 32, 16, 16) and out.logit.shape == (2, 10)


def test_deep_copied_adapter_is_independent() -> None:
    wrapped = create_model("tv_resnet18", num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = wrapped(x)
        twin = copy.deepcopy(wrapped)
        torch.nn.init.zeros_(twin.model.fc.weight)
        after, copied = wrapped(x), twin(x)
    torch.testing.assert_close(after.logit, before.logit)
    torch.testing.assert_close(copied.emb, before.emb)
    assert not torch.allclose(copied.logit, before.logit)



def test_create_model_builds_student_search_architecture_texts():
    from kdzero.models import create_model

    model = create_model("resnet[3,3,3]x[16,32,64]", num_classes=10, in_chans=1)
    out = model(torch.randn(2, 1, 8, 8))
    assert out.logit.shape == (2, 10) and out.feat.shape[1] == 64
    reference = create_model("resnet20", num_classes=10)
    assert sum(p.numel() for p in create_model("resnet[3,3,3]x[16,32,64]", num_classes=10).parameters()) == \
        sum(p.numel() for p in reference.parameters())
    with pytest.raises(ConfigError, match="depth 'x'"):
        create_model("resnet[3,x]x[16,32]")
