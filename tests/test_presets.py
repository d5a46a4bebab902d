"""Each classical preset equals an independent implementation of its paper's formula (times the preset's
magnitude). The reference side is written from the papers with plain torch, never with kdzero's ops."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdzero import PRESETS, Features, Genome, UnifiedLoss

N = 8



def _features(channels: int, size: int, seed: int, classes: int = 10) -> Features:
    gen = torch.Generator().manual_seed(seed)
    feat = torch.randn(N, channels, size, size, generator=gen)
    return Features(feat=feat, emb=feat.mean(dim=(2, 3)), logit=torch.randn(N, classes, generator=gen) * 3)


def _shapes(features: Features) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape[1:]) for name, t in zip(Features._fields, features)}


def _loss(name: str, student: Features, teacher: Features) -> tuple[UnifiedLoss, torch.Tensor]:
    loss_fn = UnifiedLoss(PRESETS[name], student_shapes=_shapes(student), teacher_shapes=_shapes(teacher))
    target = torch.arange(N) % student.logit.shape[1]
    return loss_fn, loss_fn(student=student, teacher=teacher, target=target)


def test_presets_are_the_documented_genomes():
    # kd_ls (T2, x9) joins once the genome language accepts off-grid temperatures and magnitudes; see
    # tests/test_logit_standardization.py.
    assert {name: str(genome) for name, genome in PRESETS.items() if name != "kd_ls"} == {
        "kd": "logit[no,no,no]|kl|no|T4|x1",
        "at": "feat[pow2,channel,norm_HW]|l2|no|T1|x100",
        "sp": "feat[mm,norm_C,no]|l2|no|T1|x100",
        "ickd": "feat[bmm,no,no]|l2|no|T1|x1",
        "cwd": "feat[no,no,no]|kl|no|T4|x1",
        "fitnet": "feat[no,no,no]|l2|no|T1|x100",
        "dist": "logit[softmax_C,no,no]|pearson|no|T1|x1",
    }
    assert all(isinstance(genome, Genome) for genome in PRESETS.values())


def test_kd_preset_matches_hinton_kd():
    student, teacher = _features(8, 4, 1, classes=100), _features(16, 4, 2, classes=100)
    _, value = _loss("kd", student, teacher)
    temperature = 4.0
    expected = F.kl_div(F.log_softmax(student.logit / temperature, dim=1),
                        F.softmax(teacher.logit / temperature, dim=1), reduction="batchmean") * temperature**2
    assert abs(float(value) - float(expected)) <= 1e-6 * max(1.0, abs(float(expected)))


def test_at_preset_matches_zagoruyko_attention_transfer_across_widths():
    student, teacher = _features(16, 8, 3), _features(64, 8, 4)
    loss_fn, value = _loss("at", student, teacher)
    assert loss_fn.connector is None

    def at(x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x.pow(2).mean(1).view(x.size(0), -1))

    expected = (at(student.feat) - at(teacher.feat)).pow(2).mean() * PRESETS["at"].magnitude
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-5)


def test_sp_preset_on_hand_computed_maps_of_different_sizes():
    # Student 2x2 maps (one channel): the two samples light different pixels, so their flattened maps are
    # orthogonal and G_s = I. Teacher 1x1 maps, both 1: G_t = all ones, row-normalised to 1/sqrt(2).
    # ||G_s - G_t||^2 / N^2 = (2 (1 - 1/sqrt(2))^2 + 2 (1/sqrt(2))^2) / 4 = 1 - 1/sqrt(2) = 0.2928932.
    # Pooling the student to 1x1 first would make both samples equal and the loss 0.
    feat_s = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]], [[[0.0, 1.0], [0.0, 0.0]]]])
    student = Features(feat_s, torch.zeros(2, 1), torch.zeros(2, 3))
    teacher = Features(torch.ones(2, 1, 1, 1), torch.zeros(2, 1), torch.zeros(2, 3))
    loss_fn = UnifiedLoss(PRESETS["sp"], student_shapes=_shapes(student), teacher_shapes=_shapes(teacher))
    value = loss_fn(student=student, teacher=teacher, target=torch.tensor([0, 1]))
    assert abs(float(value) - 100 * (1 - 2**-0.5)) < 1e-5


def test_sp_preset_matches_tung_mori_similarity_preserving():
    student, teacher = _features(16, 8, 5), _features(64, 4, 6)
    loss_fn, value = _loss("sp", student, teacher)
    assert loss_fn.connector is None
    s_flat = student.feat.view(N, -1)  # each side's own flattened map: 16 x 8 x 8 against 64 x 4 x 4
    t_flat = teacher.feat.view(N, -1)
    g_s = F.normalize(s_flat @ s_flat.t(), dim=1)
    g_t = F.normalize(t_flat @ t_flat.t(), dim=1)
    expected = (g_s - g_t).pow(2).sum() / N**2 * PRESETS["sp"].magnitude
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-5)


def test_sp_preset_is_blind_to_feature_width_for_equal_batch_relations():
    student = _features(16, 4, 7)
    teacher = Features(torch.cat([student.feat, student.feat], dim=1) * 5, student.emb, student.logit)
    _, value = _loss("sp", student, teacher)
    assert float(value) < 1e-6


def test_ickd_preset_matches_channel_gram_of_connected_student():
    student, teacher = _features(8, 4, 8), _features(16, 4, 9)
    loss_fn, value = _loss("ickd", student, teacher)
    assert loss_fn.connector is not None
    with torch.no_grad():
        connected = loss_fn.connector(student.feat).view(N, 16, -1)
    t_flat = teacher.feat.view(N, 16, -1)
    positions = t_flat.shape[2]
    gram_s = torch.bmm(connected, connected.transpose(1, 2)) / positions  # per-sample C x C, over H*W
    gram_t = torch.bmm(t_flat, t_flat.transpose(1, 2)) / positions
    expected = (gram_s - gram_t).pow(2).mean() * PRESETS["ickd"].magnitude
    torch.testing.assert_close(value.detach(), expected, rtol=1e-5, atol=1e-5)


def test_cwd_preset_matches_channel_wise_distillation():
    student, teacher = _features(16, 5, 10), _features(16, 5, 11)
    _, value = _loss("cwd", student, teacher)
    temperature = 4.0
    s = student.feat.view(N, 16, -1) / temperature
    t = teacher.feat.view(N, 16, -1) / temperature
    p_t = F.softmax(t, dim=2)
    kl = (p_t * (F.log_softmax(t, dim=2) - F.log_softmax(s, dim=2))).sum(dim=2)  # (N, C), summed over HW
    expected = kl.sum() / (N * 16) * temperature**2
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-5)


def test_fitnet_preset_is_mse_through_the_connector():
    student, teacher = _features(8, 4, 12), _features(16, 4, 13)
    loss_fn, value = _loss("fitnet", student, teacher)
    assert isinstance(loss_fn.connector[0], torch.nn.Conv2d)
    with torch.no_grad():
        connected = loss_fn.connector(student.feat)
    expected = F.mse_loss(connected, teacher.feat) * PRESETS["fitnet"].magnitude
    torch.testing.assert_close(value.detach(), expected, rtol=1e-5, atol=1e-5)


def test_fitnet_preset_without_width_difference_is_plain_mse():
    student, teacher = _features(16, 4, 14), _features(16, 4, 15)
    loss_fn, value = _loss("fitnet", student, teacher)
    assert loss_fn.connector is None
    torch.testing.assert_close(value, F.mse_loss(student.feat, teacher.feat) * 100, rtol=1e-5, atol=1e-5)


def test_dist_preset_matches_pearson_distance_of_class_probabilities():
    student, teacher = _features(8, 4, 16, classes=100), _features(16, 4, 17, classes=100)
    _, value = _loss("dist", student, teacher)
    p_s = F.softmax(student.logit, dim=1)  # the temperature divides after the softmax: Pearson ignores it
    p_t = F.softmax(teacher.logit, dim=1)
    c_s = p_s - p_s.mean(dim=1, keepdim=True)
    c_t = p_t - p_t.mean(dim=1, keepdim=True)
    pearson = (c_s * c_t).sum(dim=1) / (c_s.norm(dim=1) * c_t.norm(dim=1))
    expected = (1 - pearson).mean() * PRESETS["dist"].temperature**2 * PRESETS["dist"].magnitude
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_is_zero_when_student_equals_teacher(name):
    features = _features(16, 4, 18)
    _, value = _loss(name, features, features)
    assert abs(float(value)) < 1e-5
