"""UnifiedLoss: gradient flow, student/teacher order, connectors, spatial alignment, weights, eval mode, and the
README's own-training-loop example."""
from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from kdzero import PRESETS, Features, Genome, UnifiedLoss
from kdzero.errors import GenomeError, KdzeroError
from kdzero.genome import FULL_SPACE

N = 6
STUDENT_SHAPES = {"feat": (8, 4, 4), "emb": (8,), "logit": (10,)}
TEACHER_SHAPES = {"feat": (16, 4, 4), "emb": (16,), "logit": (10,)}



def _features(shapes: dict, seed: int, requires_grad: bool = True, batch: int = N) -> Features:
    gen = torch.Generator().manual_seed(seed)
    return Features(*(torch.randn(batch, *shapes[name], generator=gen).requires_grad_(requires_grad)
                      for name in Features._fields))


def _labels(seed: int = 0, classes: int = 10, batch: int = N) -> torch.Tensor:
    return torch.randint(0, classes, (batch,), generator=torch.Generator().manual_seed(seed))


def _value(loss_fn: UnifiedLoss, student: Features, teacher: Features, target: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(1234)  # the same mask/drop draws on every call
    return loss_fn(student=student, teacher=teacher, target=target)


def _check_gradient_reaches_student_only(genome: Genome) -> None:
    loss_fn = UnifiedLoss(genome, student_shapes=STUDENT_SHAPES, teacher_shapes=TEACHER_SHAPES)
    student, teacher = _features(STUDENT_SHAPES, 1), _features(TEACHER_SHAPES, 2)
    target = _labels()
    value = _value(loss_fn, student, teacher, target)
    assert value.dim() == 0 and torch.isfinite(value), (str(genome), value)
    assert value.requires_grad, str(genome)
    value.backward()
    for name, tensor in zip(Features._fields, teacher):
        assert tensor.grad is None, (str(genome), name)
    used = student.select(genome.input)
    for name, tensor in zip(Features._fields, student):
        if tensor is not used:
            assert tensor.grad is None, (str(genome), name)
    assert used.grad is not None and torch.isfinite(used.grad).all(), str(genome)
    for parameter in loss_fn.parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), str(genome)
    if used.grad.abs().max() == 0:
        # Only acceptable when the loss truly does not depend on the student (e.g. softmax over one channel).
        moved = Features(*(t.detach() + (torch.randn_like(t) if t is used else 0) for t in student))
        changed = _value(loss_fn, moved, teacher, target)
        assert torch.allclose(changed, value.detach(), rtol=1e-5, atol=1e-7), (str(genome), "zero gradient")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_gradient_reaches_student_only_for_every_preset(name):
    genome = PRESETS[name]
    loss_fn = UnifiedLoss(genome, student_shapes=STUDENT_SHAPES, teacher_shapes=TEACHER_SHAPES)
    student, teacher = _features(STUDENT_SHAPES, 3), _features(TEACHER_SHAPES, 4)
    loss_fn(student=student, teacher=teacher, target=_labels()).backward()
    assert all(t.grad is None for t in teacher)
    grad = student.select(genome.input).grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().max() > 0


def test_gradient_reaches_student_only_for_200_random_valid_genomes():
    rng = random.Random(2023)
    checked = attempts = 0
    while checked < 200:
        attempts += 1
        genome = Genome.random(rng, FULL_SPACE)
        try:
            genome.validate(STUDENT_SHAPES, TEACHER_SHAPES)
        except GenomeError:
            continue
        _check_gradient_reaches_student_only(genome)
        checked += 1
    assert attempts < 2000


# --------------------------------------------------------------------------------------- student / teacher
SAME_SHAPES = {"feat": (8, 4, 4), "emb": (8,), "logit": (10,)}


@pytest.mark.parametrize("text", [
    "logit[no,no,no]|kl|no|T4|x1",           # kd
    "feat[no,no,no]|kl|no|T4|x1",            # cwd
    "logit[no,no,no]|hard|no|T1|x1",
    "feat[no,no,no]|l2|entropy|T1|x1",       # weight reads the teacher's logits
    "feat[no,no,no]|l2|conf|T1|x1",
    "feat[no,no,no]|l2|focal|T1|x1",         # weight reads the student's logits
    "emb[softmax_C,no,no]|kl|no|T1|x1",
])
def test_swapping_student_and_teacher_changes_asymmetric_losses(text):
    loss_fn = UnifiedLoss(Genome.parse(text), student_shapes=SAME_SHAPES, teacher_shapes=SAME_SHAPES)
    first, second = _features(SAME_SHAPES, 5, False), _features(SAME_SHAPES, 6, False)
    first = Features(first.feat, first.emb, first.logit * 3)
    target = _labels(1)
    forward = float(loss_fn(student=first, teacher=second, target=target))
    backward = float(loss_fn(student=second, teacher=first, target=target))
    assert forward != pytest.approx(backward, rel=1e-3)


@pytest.mark.parametrize("text", ["feat[no,no,no]|l2|no|T1|x1", "logit[no,no,no]|l1|no|T4|x1",
                                  "emb[no,no,no]|cosine|no|T1|x1"])
def test_swapping_student_and_teacher_keeps_symmetric_losses(text):
    loss_fn = UnifiedLoss(Genome.parse(text), student_shapes=SAME_SHAPES, teacher_shapes=SAME_SHAPES)
    first, second = _features(SAME_SHAPES, 7, False), _features(SAME_SHAPES, 8, False)
    forward = loss_fn(student=first, teacher=second, target=_labels())
    backward = loss_fn(student=second, teacher=first, target=_labels())
    torch.testing.assert_close(forward, backward)


def test_connector_sits_on_the_student_side_only():
    loss_fn = UnifiedLoss(PRESETS["fitnet"], student_shapes=STUDENT_SHAPES, teacher_shapes=TEACHER_SHAPES)
    conv = loss_fn.connector[0]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (8, 16, (1, 1))
    student, teacher = _features(STUDENT_SHAPES, 9, False), _features(TEACHER_SHAPES, 10, False)
    value = loss_fn(student=student, teacher=teacher, target=_labels())
    with torch.no_grad():
        expected = ((loss_fn.connector(student.feat) - teacher.feat) ** 2).mean() * 100
    torch.testing.assert_close(value.detach(), expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------ connector
@pytest.mark.parametrize("text,param_count", [("feat[no,no,no]|l2|no|T1|x100", 3),
                                              ("feat[bmm,no,no]|l2|no|T1|x1", 3),
                                              ("emb[no,no,no]|l2|no|T1|x1", 2)])
def test_connector_parameters_are_exposed_and_receive_gradients(text, param_count):
    loss_fn = UnifiedLoss(Genome.parse(text), student_shapes=STUDENT_SHAPES, teacher_shapes=TEACHER_SHAPES)
    parameters = list(loss_fn.parameters())
    assert len(parameters) == param_count
    student, teacher = _features(STUDENT_SHAPES, 11), _features(TEACHER_SHAPES, 12)
    loss_fn(student=student, teacher=teacher, target=_labels()).backward()
    for parameter in parameters:
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all() and parameter.grad.abs().max() > 0


def test_build_from_one_batch_creates_the_connector_before_the_optimiser():
    loss_fn = UnifiedLoss(PRESETS["fitnet"])
    assert list(loss_fn.parameters()) == []
    student, teacher = _features(STUDENT_SHAPES, 13), _features(TEACHER_SHAPES, 14)
    loss_fn.build(student, teacher)
    assert len(list(loss_fn.parameters())) == 3


def test_a_connector_is_never_created_inside_forward():
    loss_fn = UnifiedLoss(PRESETS["fitnet"])
    optimiser_params = list(loss_fn.parameters())  # what an optimiser built now would see: nothing
    student, teacher = _features(STUDENT_SHAPES, 13), _features(TEACHER_SHAPES, 14)
    with pytest.raises(KdzeroError, match=r"loss\.build\(student_out, teacher_out\).*before creating the optimiser"):
        loss_fn(student=student, teacher=teacher, target=_labels())
    assert optimiser_params == [] and loss_fn.connector is None


def test_a_loss_without_connector_still_builds_on_its_first_call():
    loss_fn = UnifiedLoss(PRESETS["kd"])
    student, teacher = _features(STUDENT_SHAPES, 13), _features(TEACHER_SHAPES, 14)
    value = loss_fn(student=student, teacher=teacher, target=_labels())
    assert torch.isfinite(value) and list(loss_fn.parameters()) == []


def test_built_connector_trains_with_an_optimiser_created_after_build():
    loss_fn = UnifiedLoss(PRESETS["fitnet"])
    student, teacher = _features(STUDENT_SHAPES, 13), _features(TEACHER_SHAPES, 14)
    loss_fn.build(student, teacher)
    optimiser = torch.optim.SGD(loss_fn.parameters(), lr=0.1)
    before = [p.detach().clone() for p in loss_fn.parameters()]
    loss_fn(student=student, teacher=teacher, target=_labels()).backward()
    optimiser.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, loss_fn.parameters()))


def test_map_connector_handles_one_sample_of_1x1_maps_in_training():
    student_shapes = {"feat": (8, 1, 1), "emb": (8,), "logit": (10,)}
    teacher_shapes = {"feat": (16, 1, 1), "emb": (16,), "logit": (10,)}
    loss_fn = UnifiedLoss("feat[no,no,no]|l2|no|T1|x1", student_shapes, teacher_shapes).train()
    student = _features(student_shapes, 3, batch=1)
    teacher = _features(teacher_shapes, 4, batch=1)
    value = loss_fn(student=student, teacher=teacher, target=_labels(batch=1))
    value.backward()
    norm = loss_fn.connector[1]
    conv = loss_fn.connector[0](student.feat.detach())
    # One value per channel has no batch statistics: the running ones (mean 0, variance 1) normalise it.
    expected = ((conv / (1 + norm.eps) ** 0.5 - teacher.feat.detach()) ** 2).mean()
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.isfinite(student.feat.grad).all() and student.feat.grad.abs().max() > 0
    assert torch.equal(norm.running_mean, torch.zeros(16)) and torch.equal(norm.running_var, torch.ones(16))
    two = _features(student_shapes, 5, batch=2)
    loss_fn(student=two, teacher=_features(teacher_shapes, 6, batch=2), target=_labels(batch=2))
    assert not torch.equal(norm.running_mean, torch.zeros(16)), "batches of two still use batch statistics"


@pytest.mark.parametrize("name", ["at", "sp", "kd", "cwd"])
def test_no_connector_parameters_where_none_is_needed(name):
    shapes = TEACHER_SHAPES if name == "cwd" else STUDENT_SHAPES
    loss_fn = UnifiedLoss(PRESETS[name], student_shapes=shapes, teacher_shapes=TEACHER_SHAPES)
    assert loss_fn.connector is None and list(loss_fn.parameters()) == []


# --------------------------------------------------------------------------------------------- alignment
@pytest.mark.parametrize("student_size,teacher_size", [(4, 8), (8, 4)])
def test_spatial_mismatch_is_pooled_to_the_smaller_map(student_size, teacher_size):
    student_shapes = {"feat": (8, student_size, student_size), "emb": (8,), "logit": (10,)}
    teacher_shapes = {"feat": (8, teacher_size, teacher_size), "emb": (8,), "logit": (10,)}
    loss_fn = UnifiedLoss(PRESETS["fitnet"], student_shapes=student_shapes, teacher_shapes=teacher_shapes)
    student, teacher = _features(student_shapes, 15, False), _features(teacher_shapes, 16, False)

    def pool_to_4(x: torch.Tensor) -> torch.Tensor:  # 8x8 -> 4x4 by 2x2 block means
        return x if x.shape[-1] == 4 else x.reshape(N, 8, 4, 2, 4, 2).mean(dim=(3, 5))

    expected = ((pool_to_4(student.feat) - pool_to_4(teacher.feat)) ** 2).mean() * 100
    torch.testing.assert_close(loss_fn(student=student, teacher=teacher, target=_labels()), expected)


def test_loss_is_magnitude_times_t_squared_times_distance_of_scaled_inputs():
    loss_fn = UnifiedLoss(Genome.parse("emb[no,no,no]|l1|no|T8|x0.1"), student_shapes=SAME_SHAPES,
                          teacher_shapes=SAME_SHAPES)
    student, teacher = _features(SAME_SHAPES, 17, False), _features(SAME_SHAPES, 18, False)
    expected = (student.emb / 8 - teacher.emb / 8).abs().mean() * 0.1 * 64
    torch.testing.assert_close(loss_fn(student=student, teacher=teacher, target=_labels()), expected)


# ---------------------------------------------------------------------------------------------- weights
def test_weights_read_both_models_logits_and_the_target():
    loss_fn = UnifiedLoss(Genome.parse("feat[no,no,no]|l2|conf|T1|x1"), student_shapes=SAME_SHAPES,
                          teacher_shapes=SAME_SHAPES)
    student, teacher = _features(SAME_SHAPES, 19, False), _features(SAME_SHAPES, 20, False)
    target = _labels(2)
    distances = ((student.feat - teacher.feat) ** 2).reshape(N, -1).mean(dim=1)
    confidence = torch.softmax(teacher.logit, dim=1)[torch.arange(N), target] + 1e-6
    expected = (distances * confidence / confidence.mean()).mean()
    torch.testing.assert_close(loss_fn(student=student, teacher=teacher, target=target), expected)
    teacher_argmax = teacher.logit.argmax(dim=1)
    torch.testing.assert_close(loss_fn(student=student, teacher=teacher, target=None),
                               loss_fn(student=student, teacher=teacher, target=teacher_argmax))
    assert float(loss_fn(student=student, teacher=teacher, target=(target + 1) % 10)) != pytest.approx(
        float(expected), rel=1e-4)


def test_focal_weight_follows_the_student_logits():
    loss_fn = UnifiedLoss(Genome.parse("feat[no,no,no]|l2|focal|T1|x1"), student_shapes=SAME_SHAPES,
                          teacher_shapes=SAME_SHAPES)
    student, teacher = _features(SAME_SHAPES, 21), _features(SAME_SHAPES, 22)
    target = _labels(3)
    value = loss_fn(student=student, teacher=teacher, target=target)
    distances = ((student.feat - teacher.feat) ** 2).reshape(N, -1).mean(dim=1).detach()
    focal = (1 - torch.softmax(student.logit.detach(), dim=1)[torch.arange(N), target]) ** 2 + 1e-6
    torch.testing.assert_close(value.detach(), (distances * focal / focal.mean()).mean())
    value.backward()
    assert student.logit.grad is None and student.feat.grad is not None


# --------------------------------------------------------------------------------------------- randomness
def test_eval_mode_disables_mask_and_drop():
    loss_fn = UnifiedLoss(Genome.parse("feat[mask,drop,no]|l2|no|T1|x1"), student_shapes=SAME_SHAPES,
                          teacher_shapes=SAME_SHAPES)
    plain = UnifiedLoss(Genome.parse("feat[no,no,no]|l2|no|T1|x1"), student_shapes=SAME_SHAPES,
                        teacher_shapes=SAME_SHAPES)
    student, teacher = _features(SAME_SHAPES, 23, False), _features(SAME_SHAPES, 24, False)
    loss_fn.eval()
    first = loss_fn(student=student, teacher=teacher, target=_labels())
    second = loss_fn(student=student, teacher=teacher, target=_labels())
    assert torch.equal(first, second)
    torch.testing.assert_close(first, plain(student=student, teacher=teacher, target=_labels()))
    loss_fn.train()
    first = loss_fn(student=student, teacher=teacher, target=_labels())
    second = loss_fn(student=student, teacher=teacher, target=_labels())
    assert not torch.equal(first, second)


def test_random_transforms_mask_both_sides_identically():
    loss_fn = UnifiedLoss(Genome.parse("feat[mask,drop,no]|l2|no|T1|x1"), student_shapes=SAME_SHAPES,
                          teacher_shapes=SAME_SHAPES)
    features = _features(SAME_SHAPES, 25, False)
    assert float(loss_fn(student=features, teacher=features, target=_labels())) == 0.0
    doubled = Features(features.feat * 2, features.emb, features.logit)
    masked_energy = float(loss_fn(student=doubled, teacher=features, target=_labels()))
    assert 0.0 < masked_energy < float((features.feat**2).mean())


@pytest.mark.parametrize("text", ["feat[drop,channel,no]|l2|no|T1|x1", "feat[drop,pow2,channel]|l1|no|T1|x1",
                                  "feat[mask,drop,channel]|l2|no|T1|x1", "emb[drop,mm,no]|l2|no|T1|x1"])
def test_drop_shares_one_mask_between_sides_of_different_widths(text):
    """A teacher that is the student's channels twice over carries the same knowledge after channel pooling
    (or a batch Gram): with one shared draw the distance is exactly zero."""
    genome = Genome.parse(text)
    assert not genome.needs_connector(STUDENT_SHAPES, TEACHER_SHAPES)
    loss_fn = UnifiedLoss(genome, STUDENT_SHAPES, TEACHER_SHAPES, generator=torch.Generator().manual_seed(7))
    student = _features(STUDENT_SHAPES, 40, requires_grad=False)
    doubled = Features(torch.cat([student.feat, student.feat], dim=1),
                       torch.cat([student.emb, student.emb], dim=1), student.logit)
    s, t = loss_fn.compare(student, doubled)
    assert not torch.equal(s, loss_fn.eval().compare(student, doubled)[0]), "the draw must drop something"
    torch.testing.assert_close(s, t, rtol=1e-5, atol=1e-6)


def test_generator_makes_random_transforms_reproducible():
    genome = Genome.parse("feat[mask,no,no]|l2|no|T1|x1")
    student, teacher = _features(SAME_SHAPES, 26, False), _features(SAME_SHAPES, 27, False)
    values = [UnifiedLoss(genome, SAME_SHAPES, SAME_SHAPES, generator=torch.Generator().manual_seed(5))(
        student=student, teacher=teacher, target=_labels()) for _ in range(2)]
    assert torch.equal(values[0], values[1])


# ------------------------------------------------------------------------------------------------ README
def test_readme_training_loop_example():
    import torch
    import torch.nn.functional as F
    from torch import nn

    from kdzero import Features, Genome, UnifiedLoss

    class Net(nn.Module):
        """Any model works once its forward returns Features(feat, emb, logit)."""

        def __init__(self, width: int, num_classes: int = 10) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
            self.head = nn.Linear(width, num_classes)

        def forward(self, x: torch.Tensor) -> Features:
            feat = self.body(x)
            emb = feat.mean(dim=(2, 3))
            return Features(feat=feat, emb=emb, logit=self.head(emb))

    torch.manual_seed(0)
    teacher, student = Net(width=16).eval(), Net(width=8)
    images, labels = torch.randn(32, 3, 8, 8), torch.randint(0, 10, (32,))

    loss_fn = UnifiedLoss(Genome.parse("feat[no,no,no]|l2|no|T1|x100"))  # FitNet: needs a connector 8 -> 16
    with torch.no_grad():
        loss_fn.build(student=student(images), teacher=teacher(images))  # creates the connector
    optimizer = torch.optim.SGD([*student.parameters(), *loss_fn.parameters()], lr=0.05, momentum=0.9)

    losses = []
    for _ in range(20):
        with torch.no_grad():
            t = teacher(images)
        s = student(images)
        loss = F.cross_entropy(s.logit, labels) + loss_fn(student=s, teacher=t, target=labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())

    assert losses[-1] < losses[0]
    assert all(p.grad is not None for p in loss_fn.parameters())


def test_loss_module_moves_and_reports_its_genome():
    loss_fn = UnifiedLoss("logit[no,no,no]|kl|no|T4|x1")
    assert isinstance(loss_fn, nn.Module) and "logit[no,no,no]|kl|no|T4|x1" in repr(loss_fn)
    with pytest.raises(GenomeError):
        UnifiedLoss("logit[no,no]|kl|no|T4|x1")
    with pytest.raises(GenomeError):
        UnifiedLoss(PRESETS["kd"], student_shapes=STUDENT_SHAPES,
                    teacher_shapes={**TEACHER_SHAPES, "logit": (100,)})
