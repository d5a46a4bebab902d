"""The teacher-output cache: built once, reused by key, rebuilt when teacher or data change, exact to fp16."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from kdzero.data import AugmentedViews, load_dataset, proxy_subset
from kdzero.features import Features
from kdzero.teacher_cache import TeacherCache


class TinyTeacher(nn.Module):
    """conv -> feat (N, 4, H, W), mean pool -> emb (N, 4), linear -> logit (N, 10); counts its forward calls."""

    def __init__(self, in_chans: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 10)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> Features:
        self.calls += 1
        feat = torch.relu(self.bn(self.conv(x)))
        emb = feat.mean(dim=(2, 3))
        return Features(feat=feat, emb=emb, logit=self.fc(emb))


@pytest.fixture(scope="module")
def views():
    digits = load_dataset("digits")
    return AugmentedViews(proxy_subset(digits.train, per_class=10), num_views=3, seed=1, flip=False)


@pytest.fixture
def teacher():
    torch.manual_seed(0)
    return TinyTeacher()


def test_build_writes_cache_and_sidecar_and_logs_size(tmp_path, views, teacher):
    messages = []
    cache = TeacherCache.build_or_load(teacher, views, tmp_path, {"pair": "tiny"}, batch_size=32,
                                       log=messages.append)
    assert cache.feat.shape == (3, 100, 4, 8, 8) and cache.emb.shape == (3, 100, 4)
    assert cache.logit.shape == (3, 100, 10) and cache.logit.dtype == torch.float16
    assert len(messages) == 1 and "MB" in messages[0]
    (pt,) = tmp_path.glob("teacher-*.pt")
    meta = json.loads(pt.with_suffix(".json").read_text())
    assert meta["key"] == cache.key and meta["shapes"]["feat"] == [3, 100, 4, 8, 8]


def test_second_call_loads_without_running_teacher(tmp_path, views, teacher):
    first = TeacherCache.build_or_load(teacher, views, tmp_path, log=lambda m: None)
    calls = teacher.calls
    assert calls == 1 + 3 * 1  # one size probe, then one batch of 100 per view
    second = TeacherCache.build_or_load(teacher, views, tmp_path, log=lambda m: None)
    assert teacher.calls == calls
    assert second.key == first.key and torch.equal(second.feat, first.feat)


def test_changed_teacher_weights_rebuild_and_replace(tmp_path, views, teacher):
    first = TeacherCache.build_or_load(teacher, views, tmp_path, log=lambda m: None)
    with torch.no_grad():
        teacher.fc.bias.add_(1.0)
    calls = teacher.calls
    second = TeacherCache.build_or_load(teacher, views, tmp_path, log=lambda m: None)
    assert teacher.calls > calls and second.key != first.key
    assert not torch.equal(second.logit, first.logit)
    assert len(list(tmp_path.glob("teacher-*.pt"))) == 1


def test_changed_views_or_extra_key_rebuild(views, teacher):
    other = AugmentedViews(views.split, num_views=3, seed=2, flip=False)
    base = TeacherCache.cache_key(teacher, views, torch.float16)
    assert TeacherCache.cache_key(teacher, other, torch.float16) != base
    assert TeacherCache.cache_key(teacher, views, torch.float32) != base
    assert TeacherCache.cache_key(teacher, views, torch.float16, {"ckpt": "b"}) != base
    assert TeacherCache.cache_key(teacher, views, torch.float16) == base


def test_get_matches_direct_teacher_forward_within_fp16(tmp_path, views, teacher):
    teacher.train()  # the cache must evaluate in eval mode and give the mode back
    cache = TeacherCache.build_or_load(teacher, views, tmp_path, log=lambda m: None, batch_size=40)
    assert teacher.training
    vids, idx = torch.tensor([2, 0, 1, 2]), torch.tensor([7, 7, 50, 99])
    got = cache.get(vids, idx)
    teacher.eval()
    with torch.no_grad():
        want = teacher(views.batch(vids, idx))
    for g, w in zip(got, want):
        assert g.dtype == torch.float32 and g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=2e-3, atol=2e-3)


def test_progress_reports_every_sample(tmp_path, views, teacher):
    seen = []
    TeacherCache.build_or_load(teacher, views, tmp_path, batch_size=64, log=lambda m: None,
                               progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (300, 300) and len(seen) == 6
