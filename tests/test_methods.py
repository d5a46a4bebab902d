"""The classical distillers against references written here from the papers' formulas (numpy, loops).

Nothing from ``kdzero.methods`` is used to compute a reference value: where a method has a learned connector, the
reference reads the connector's own output and recomputes everything after it.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdzero.errors import ConfigError
from kdzero.features import Features
from kdzero.methods import Distiller, bn_margin, create_method, feature_shapes, list_methods, teacher_margin
from kdzero.models import create_model

N, C, H, W, D, K = 8, 16, 4, 4, 16, 10
REL = 1e-5


def make_features(seed: int, channels: int = C, size: int = H, dim: int = D, classes: int = K) -> Features:
    """Random float64 features: a post-ReLU map (with exact zeros, as our zoo produces), embedding, logits."""
    g = torch.Generator().manual_seed(seed)
    feat = torch.randn(N, channels, size, size, generator=g, dtype=torch.float64).relu()
    emb = torch.randn(N, dim, generator=g, dtype=torch.float64)
    logit = 3 * torch.randn(N, classes, generator=g, dtype=torch.float64)
    return Features(feat, emb, logit)


@pytest.fixture
def student() -> Features:
    return make_features(0)


@pytest.fixture
def teacher() -> Features:
    return make_features(1)


@pytest.fixture
def target() -> torch.Tensor:
    return torch.randint(0, K, (N,), generator=torch.Generator().manual_seed(2))


def build(name: str, s: Features, t: Features, **overrides: object) -> Distiller:
    """``create_method`` with shapes taken from the features, in float64."""
    if name == "crd":
        overrides.setdefault("dataset_size", 64)
    if name == "ofd":
        overrides.setdefault("margin", ofd_margin(t.feat.shape[1]))
    return create_method(name, feature_shapes(s), feature_shapes(t), **overrides).double()


def ofd_margin(channels: int) -> torch.Tensor:
    """A fixed margin for tests: one distinct negative value per teacher channel, -0.1 ... -0.1 * C."""
    return -0.1 * torch.arange(1, channels + 1, dtype=torch.float64)


def call(method: Distiller, s: Features, t: Features, y: torch.Tensor) -> torch.Tensor:
    """One loss evaluation, passing dataset indices to the methods that need them."""
    extra = {"index": torch.arange(N)} if method.needs_index else {}
    return method(student=s, teacher=t, target=y, **extra)


def npy(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy().astype(np.float64)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.sum(p * (np.log(p) - np.log(q))))


def close(value: torch.Tensor, reference: float) -> bool:
    return value.dim() == 0 and math.isclose(value.item(), reference, rel_tol=REL, abs_tol=1e-12)


# ------------------------------------------------------------------------------------------ registry and errors


def test_list_methods_names_every_classical_distiller() -> None:
    assert set(list_methods()) == {
        "kd", "ls", "fitnet", "at", "sp", "cc", "rkd", "pkt", "ofd", "ickd", "cwd", "dkd", "dkd_ls", "crd", "alpha",
        "tfkd",
    }


def test_unknown_method_name_raises_config_error_with_suggestion() -> None:
    with pytest.raises(ConfigError, match=r"unknown distillation method 'dkdd'.*did you mean dkd"):
        create_method("dkdd")


def test_unknown_option_raises_config_error_naming_valid_options() -> None:
    with pytest.raises(ConfigError, match=r"no option 'temperature'.*T, weight"):
        create_method("kd", temperature=4)


@pytest.mark.parametrize("name", ["fitnet", "ofd", "ickd", "cc", "crd"])
def test_methods_with_connectors_need_shapes(name: str) -> None:
    extra = {"dataset_size": 10} if name == "crd" else {}
    with pytest.raises(ConfigError, match="needs student_shapes"):
        create_method(name, **extra)


def test_crd_needs_dataset_size(student: Features, teacher: Features) -> None:
    with pytest.raises(ConfigError, match="dataset_size"):
        create_method("crd", feature_shapes(student), feature_shapes(teacher))


def test_cwd_without_shapes_rejects_mismatched_channels(teacher: Features, target: torch.Tensor) -> None:
    with pytest.raises(ConfigError, match="pass student_shapes and teacher_shapes"):
        create_method("cwd")(student=make_features(0, channels=8), teacher=teacher, target=target)


def test_feature_shapes_drops_the_batch_axis(student: Features) -> None:
    assert feature_shapes(student) == {"feat": (C, H, W), "emb": (D,), "logit": (K,)}


def test_overrides_reach_the_method() -> None:
    assert create_method("kd", T=8, weight=0.5).T == 8.0


@pytest.mark.parametrize("bad", [0, -1.0, "hot"])
def test_bad_temperature_raises_config_error(bad: object) -> None:
    with pytest.raises(ConfigError, match="T must be a positive number"):
        create_method("kd", T=bad)


# ------------------------------------------------------------------------------------------ shared contract


@pytest.mark.parametrize("name", list_methods())
def test_gradient_reaches_student_only(name: str, target: torch.Tensor) -> None:
    s = Features(*(x.requires_grad_() for x in make_features(0, channels=8, size=8, dim=12)))
    t = Features(*(x.requires_grad_() for x in make_features(1, size=4)))
    method = build(name, s, t)
    value = call(method, s, t, target)
    assert value.dim() == 0 and torch.isfinite(value)
    value.backward()
    assert all(x.grad is None for x in t)
    assert any(x.grad is not None and x.grad.abs().sum() > 0 for x in s)


@pytest.mark.parametrize("name", ["kd", "ls", "dkd", "dkd_ls", "alpha", "pkt", "cwd", "ofd", "fitnet", "ickd"])
def test_swapping_student_and_teacher_changes_asymmetric_losses(
    name: str, student: Features, teacher: Features, target: torch.Tensor
) -> None:
    method = build(name, student, teacher)
    assert not torch.isclose(call(method, student, teacher, target), call(method, teacher, student, target))


@pytest.mark.parametrize("name", ["at", "sp", "rkd"])
def test_symmetric_losses_do_not_depend_on_the_order(
    name: str, student: Features, teacher: Features, target: torch.Tensor
) -> None:
    method = build(name, student, teacher)
    assert torch.isclose(call(method, student, teacher, target), call(method, teacher, student, target))


# ------------------------------------------------------------------------------------------ logit methods


def test_kd_on_hand_computed_logits() -> None:
    # teacher logits / T = (log 3, 0) -> p_t = (3/4, 1/4); student uniform -> p_s = (1/2, 1/2).
    s = Features(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1), torch.zeros(1, 2))
    t = Features(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1), torch.tensor([[4 * math.log(3.0), 0.0]]))
    expected = 16 * (0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5))
    value = create_method("kd")(student=s, teacher=t, target=torch.tensor([0]))
    assert math.isclose(value.item(), expected, rel_tol=1e-6)


def test_kd_matches_hinton_formula(student: Features, teacher: Features, target: torch.Tensor) -> None:
    s, t, T = npy(student.logit), npy(teacher.logit), 4.0
    ref = T * T * np.mean([kl(softmax(t[i] / T), softmax(s[i] / T)) for i in range(N)])
    assert close(build("kd", student, teacher)(student=student, teacher=teacher, target=target), ref)


def dkd_reference(s: np.ndarray, t: np.ndarray, y: np.ndarray, factor: float) -> float:
    T, alpha, beta = 4.0, 1.0, 8.0
    total = 0.0
    for i in range(N):
        ps, pt = softmax(s[i] / T), softmax(t[i] / T)
        g = y[i]
        tckd = kl(np.array([pt[g], 1 - pt[g]]), np.array([ps[g], 1 - ps[g]]))
        rest = np.arange(K) != g
        nckd = kl(pt[rest] / pt[rest].sum(), ps[rest] / ps[rest].sum())
        total += alpha * tckd + beta * nckd
    return factor * T * T * total / N


def test_dkd_matches_decoupled_formula(student: Features, teacher: Features, target: torch.Tensor) -> None:
    method = build("dkd", student, teacher)
    method.set_epoch(25)
    ref = dkd_reference(npy(student.logit), npy(teacher.logit), target.numpy(), 1.0)
    assert close(method(student=student, teacher=teacher, target=target), ref)


def test_dkd_warmup_factor_rises_linearly_over_twenty_epochs(
    student: Features, teacher: Features, target: torch.Tensor
) -> None:
    method = build("dkd", student, teacher)
    full = dkd_reference(npy(student.logit), npy(teacher.logit), target.numpy(), 1.0)
    assert close(method(student=student, teacher=teacher, target=target), full / 20)  # epoch 1 by default
    for epoch, factor in [(1, 1 / 20), (10, 0.5), (20, 1.0), (200, 1.0)]:
        method.set_epoch(epoch)
        assert method.warmup_factor == factor
        assert close(method(student=student, teacher=teacher, target=target), factor * full)
    no_warmup = build("dkd", student, teacher, warmup=0)
    assert close(no_warmup(student=student, teacher=teacher, target=target), full)


def test_tfkd_matches_virtual_teacher_formula(student: Features, teacher: Features, target: torch.Tensor) -> None:
    s, a, T = npy(student.logit), 0.99, 20.0
    total = 0.0
    for i in range(N):
        virtual = np.full(K, (1 - a) / (K - 1))
        virtual[target[i]] = a
        total += kl(softmax(virtual / T), softmax(s[i]))
    method = build("tfkd", student, teacher)
    assert close(method(student=student, teacher=teacher, target=target), total / N)
    other_teacher = make_features(5)
    assert close(method(student=student, teacher=other_teacher, target=target), total / N)


def test_alpha_divergence_matches_alphanet_value_and_gradient(
    student: Features, teacher: Features, target: torch.Tensor
) -> None:
    s, t, clip = npy(student.logit), npy(teacher.logit), 5.0
    values, grads = [], []
    for i in range(N):
        q, p = softmax(s[i]), softmax(t[i])
        r = p / q
        w = np.clip(r**-1.0, 0, clip)  # alpha = -1: f = w / 2, f_base = 1/2, rho = -w + 1/2
        d_left, rho_left = np.sum(q * (w - 1) / 2), -w + 0.5
        d_right, rho_right = np.sum(q * r * np.log(r)), r  # alpha = 1: KL(p || q)
        rho = rho_left if d_left > d_right else rho_right
        values.append(max(d_left, d_right))
        weights = q * rho  # gradient of -sum_k stopgrad(q_k rho_k) log q_k with respect to the logits
        grads.append(-(weights - q * weights.sum()) / N)
    logit = student.logit.clone().requires_grad_()
    value = build("alpha", student, teacher)(student=student._replace(logit=logit), teacher=teacher, target=target)
    assert close(value, float(np.mean(values)))
    value.backward()
    np.testing.assert_allclose(npy(logit.grad), np.array(grads), rtol=REL, atol=1e-12)


@pytest.mark.parametrize("name", ["kd", "ls", "dkd", "dkd_ls", "tfkd", "alpha"])
def test_logit_methods_stay_finite_on_extreme_logits(name: str, target: torch.Tensor) -> None:
    s = make_features(0)
    t = make_features(1)
    logit = (200 * s.logit).requires_grad_()
    method = build(name, s, t)
    value = method(student=s._replace(logit=logit), teacher=t._replace(logit=300 * t.logit), target=target)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logit.grad).all()


def test_alpha_divergence_zero_alpha_is_clipped_reverse_kl(
    student: Features, teacher: Features, target: torch.Tensor
) -> None:
    s, t = npy(student.logit), npy(teacher.logit)
    values = []
    for i in range(N):
        q, p = softmax(s[i]), softmax(t[i])
        d_zero = -np.sum(q * np.log(np.clip(p / q, 0, 5.0)))
        values.append(max(d_zero, kl(p, q)))
    method = build("alpha", student, teacher, alpha_min=0.0)
    assert close(method(student=student, teacher=teacher, target=target), float(np.mean(values)))


# ------------------------------------------------------------------------------------------ feature-map methods


def test_fitnet_matches_mse_through_its_regressor(
    student: Features, teacher: Features, target: torch.Tensor
) -> None:
    method = build("fitnet", student, teacher)
    s = npy(method.connector(student.feat))
    ref = 100 * np.mean((s - npy(teacher.feat)) ** 2)
    assert close(method(student=student, teacher=teacher, target=target), ref)


def attention_reference(s: np.ndarray, t: np.ndarray) -> float:
    total = 0.0
    for i in range(N):
        a_s, a_t = (s[i] ** 2).mean(0).ravel(), (t[i] ** 2).mean(0).ravel()
        total += np.sum((a_s / np.linalg.norm(a_s) - a_t / np.linalg.norm(a_t)) ** 2)
    return 1000 * total / (N * a_s.size)


def test_at_matches_attention_transfer_formula(student: Features, teacher: Features, target: torch.Tensor) -> None:
    ref = attention_reference(npy(student.feat), npy(teacher.feat))
    assert close(build("at", student, teacher)(student=student, teacher=teacher, target=target), ref)


def test_at_pools_the_larger_map_to_the_smaller(teacher: Features, target: torch.Tensor) -> None:
    big = make_features(3, channels=8, size=8)
    pooled = npy(big.feat).reshape(N, 8, 4, 2, 4, 2).mean(axis=(3, 5))
    ref = attention_reference(pooled, npy(teacher.feat))
    assert close(build("at", big, teacher)(student=big, teacher=teacher, target=target), ref)


def test_sp_matches_similarity_preserving_formula(
    student: Features, teacher: Features, target: torch.Tensor
) -> None:
    def similarity(f: np.ndarray) -> np.ndarray:
        f = f.reshape(N, -1)
        g = f @ f.T
        return g / np.linalg.norm(g, axis=1, keepdims=True)

    ref = 3000 * np.sum((similarity(npy(student.feat)) - similarity(npy(teacher.feat))) ** 2) / N**2
    assert close(build("sp", student, teacher)(student=student, teacher=teacher, target=target), ref)


def test_ofd_matches_margin_relu_partial_l2(student: Features, teacher: Features, target: torch.Tensor) -> None:
    method = build("ofd", student, teacher)
    s, t = npy(method.connector(student.feat)), npy(teacher.feat)
    total, skipped = 0.0, 0
    for c in range(C):
        margin = -0.1 * (c + 1)
        for n, i, j in np.ndindex(N, H, W):
            s_v, t_v = s[n, c, i, j], t[n, c, i, j]
            t_v = margin if t_v == 0 else max(t_v, margin)
            if s_v <= t_v <= 0:
                skipped += 1
            else:
                total += (s_v - t_v) ** 2
    assert 0 < skipped < (t == 0).sum()
    assert close(method(student=student, teacher=teacher, target=target), 1e-3 * total / N)


def test_bn_margin_is_the_gaussian_negative_part_mean_of_heo_et_al() -> None:
    # m = beta - |gamma| phi(beta/|gamma|) / Phi(-beta/|gamma|), or -3 |gamma| when Phi(-beta/|gamma|) <= 0.001.
    # By hand: (gamma 1, beta 0): -phi(0)/Phi(0) = -sqrt(2/pi) = -0.797885; (2, 1): 1 - 2 * 0.3520653 / 0.3085375
    # = -1.282156; (-1, -5): |gamma| = 1, -5 - phi(5)/Phi(5) = -5.0000015; (0.5, 2): Phi(-4) = 3.2e-5 -> -1.5.
    bn = torch.nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, -1.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.0, 1.0, -5.0, 2.0]))
    expected = torch.tensor([-0.797885, -1.282156, -5.0000015, -1.5])
    torch.testing.assert_close(bn_margin(bn), expected, rtol=0, atol=2e-6)


def test_ofd_margin_comes_from_the_teachers_bn_before_its_last_relu() -> None:
    # ResNet-8 (option B): one block per stage, so the last block also has a downsample BN; the margin must come
    # from bn2, the BN on the block's own branch (the authors' get_bn_before_relu), not from the shortcut's BN.
    teacher = create_model("resnet8", num_classes=10)
    block = teacher.layer3[-1]
    with torch.no_grad():
        block.bn2.weight.fill_(2.0)
        block.bn2.bias.fill_(1.0)
        block.downsample[1].weight.fill_(1.0)
        block.downsample[1].bias.fill_(0.0)
    margin = teacher_margin(teacher)
    assert margin.shape == (64,)
    torch.testing.assert_close(margin, torch.full((64,), -1.282156), rtol=0, atol=2e-6)
    wrn = create_model("wrn_16_1", num_classes=10)  # feat = relu(bn1(block3(...))): the network's final BN
    torch.testing.assert_close(teacher_margin(wrn), bn_margin(wrn.bn1))
    vgg = create_model("vgg8", num_classes=10)  # a shape-dependent branch in forward_features does not stop it
    torch.testing.assert_close(teacher_margin(vgg), bn_margin(vgg.block4[1]))


def test_replay_builds_ofd_with_the_teachers_bn_margin() -> None:
    from kdzero.train import build_distiller, load_data

    data = load_data("digits")
    student = create_model("resnet8", num_classes=data.num_classes, in_chans=data.in_chans)
    teacher = create_model("resnet20", num_classes=data.num_classes, in_chans=data.in_chans)
    with torch.no_grad():
        teacher.layer3[-1].bn2.bias.copy_(torch.linspace(-1.0, 1.0, 64))
    method = build_distiller(student, teacher, data, method="ofd")
    torch.testing.assert_close(method.margin.flatten(), bn_margin(teacher.layer3[-1].bn2))


def test_ofd_margin_is_not_read_from_post_relu_maps(student: Features, teacher: Features) -> None:
    with pytest.raises(ConfigError, match="needs margin="):
        create_method("ofd", feature_shapes(student), feature_shapes(teacher))
    with pytest.raises(ConfigError, match="16 finite values <= 0"):
        create_method("ofd", feature_shapes(student), feature_shapes(teacher), margin=[-1.0] * 15)


def test_teacher_margin_names_the_fix_for_a_model_without_bn_before_relu() -> None:
    class NoBN(torch.nn.Module):
        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(x)

    with pytest.raises(ConfigError, match="pass margin="):
        teacher_margin(NoBN())


def test_ickd_matches_inter_channel_correlation(student: Features, teacher: Features, target: torch.Tensor) -> None:
    method = build("ickd", student, teacher)
    s, t = npy(method.connector(student.feat)), npy(teacher.feat)
    total = 0.0
    for n in range(N):
        grams = []
        for f in (s[n].reshape(C, -1), t[n].reshape(C, -1)):
            g = f @ f.T
            grams.append(g / np.linalg.norm(g, axis=1, keepdims=True))
        total += np.sum((grams[0] - grams[1]) ** 2)
    assert close(method(student=student, teacher=teacher, target=target), 2.5 * total / (C * N))


def cwd_reference(s: np.ndarray, t: np.ndarray) -> float:
    T = 4.0
    n, c = t.shape[:2]
    total = sum(kl(softmax(t[i, j].ravel() / T), softmax(s[i, j].ravel() / T)) for i in range(n) for j in range(c))
    return 3 * T * T * total / (n * c)


def test_cwd_matches_channel_wise_formula(student: Features, teacher: Features, target: torch.Tensor) -> None:
    ref = cwd_reference(npy(student.feat), npy(teacher.feat))
    assert close(build("cwd", student, teacher)(student=student, teacher=teacher, target=target), ref)


def test_cwd_connects_mismatched_channels(teacher: Features, target: torch.Tensor) -> None:
    narrow = make_features(3, channels=8)
    method = build("cwd", narrow, teacher)
    ref = cwd_reference(npy(method.connector(narrow.feat)), npy(teacher.feat))
    assert close(method(student=narrow, teacher=teacher, target=target), ref)


# ------------------------------------------------------------------------------------------ embedding methods


def test_cc_on_hand_computed_differences() -> None:
    # Identity heads on 2-D embeddings: d = |s - t| per sample = (1, 2), (3, 1), (0, 4).
    # Neighbouring products summed over features: 1*3 + 2*1 = 5 and 3*0 + 1*4 = 4; mean 4.5; x 0.02 = 0.09.
    s = Features(torch.zeros(3, 1, 1, 1), torch.tensor([[1.0, 2.0], [3.0, 1.0], [0.0, 4.0]]), torch.zeros(3, 2))
    t = Features(torch.zeros(3, 1, 1, 1), torch.zeros(3, 2), torch.zeros(3, 2))
    method = create_method("cc", feature_shapes(s), feature_shapes(t), feat_dim=2)
    with torch.no_grad():
        for head in (method.embed_s, method.embed_t):
            head.weight.copy_(torch.eye(2))
            head.bias.zero_()
    assert math.isclose(method(student=s, teacher=t, target=torch.zeros(3, dtype=torch.long)).item(), 0.09,
                        rel_tol=1e-6)


def test_cc_matches_repdistiller_correlation_through_both_heads(teacher: Features, target: torch.Tensor) -> None:
    narrow = make_features(3, dim=12)
    method = build("cc", narrow, teacher)
    assert method.embed_s.out_features == method.embed_t.out_features == 128
    delta = np.abs(npy(method.embed_s(narrow.emb)) - npy(method.embed_t(teacher.emb)))
    ref = 0.02 * np.mean([delta[i] @ delta[i + 1] for i in range(N - 1)])
    assert close(method(student=narrow, teacher=teacher, target=target), ref)
    assert ref > 1.0  # the weight 0.02 belongs to this scale of term, not to a kernel bounded near 0


def test_rkd_matches_distance_and_angle_formula(student: Features, teacher: Features, target: torch.Tensor) -> None:
    def smooth_l1(a: np.ndarray, b: np.ndarray) -> float:
        x = np.abs(a - b)
        return float(np.mean(np.where(x < 1, 0.5 * x**2, x - 0.5)))

    def distances(e: np.ndarray) -> np.ndarray:
        d = np.array([[np.linalg.norm(e[i] - e[j]) for j in range(N)] for i in range(N)])
        return d / d[~np.eye(N, dtype=bool)].mean()

    def unit(v: np.ndarray) -> np.ndarray:
        norm = np.linalg.norm(v)
        return v / norm if norm > 0 else v

    def angles(e: np.ndarray) -> np.ndarray:
        return np.array(
            [unit(e[j] - e[i]) @ unit(e[k] - e[i]) for i in range(N) for j in range(N) for k in range(N)]
        )

    s, t = npy(student.emb), npy(teacher.emb)
    ref = 25 * smooth_l1(distances(s), distances(t)) + 50 * smooth_l1(angles(s), angles(t))
    assert close(build("rkd", student, teacher)(student=student, teacher=teacher, target=target), ref)


def test_pkt_matches_probabilistic_transfer_formula(
    student: Features, teacher: Features, target: torch.Tensor
) -> None:
    eps = 1e-7

    def probabilities(e: np.ndarray) -> np.ndarray:
        e = e / (np.linalg.norm(e, axis=1, keepdims=True) + eps)
        sim = (e @ e.T + 1) / 2
        return sim / sim.sum(axis=1, keepdims=True)

    p_s, p_t = probabilities(npy(student.emb)), probabilities(npy(teacher.emb))
    ref = 30000 * np.mean(p_t * np.log((p_t + eps) / (p_s + eps)))
    assert close(build("pkt", student, teacher)(student=student, teacher=teacher, target=target), ref)


# ------------------------------------------------------------------------------------------ CRD


def test_crd_memory_bank_shapes_and_negative_clamp(student: Features) -> None:
    teacher = make_features(1, dim=24)
    method = build("crd", student, teacher, dataset_size=20)
    assert method.memory_s.shape == (20, 128) and method.memory_t.shape == (20, 128)
    assert method.nce_k == 19
    assert method.embed_s.in_features == D and method.embed_t.in_features == 24
    assert build("crd", student, teacher, dataset_size=100_000).nce_k == 16384


def test_crd_needs_index(student: Features, teacher: Features, target: torch.Tensor) -> None:
    with pytest.raises(ConfigError, match="index="):
        build("crd", student, teacher)(student=student, teacher=teacher, target=target)


def test_crd_matches_nce_formula_and_updates_memory(
    student: Features, teacher: Features, target: torch.Tensor
) -> None:
    n_data, k, tau = 64, 5, 0.07
    method = build("crd", student, teacher, dataset_size=n_data, nce_k=k)
    index = torch.arange(10, 10 + N)
    contrast = torch.randint(0, n_data, (N, k + 1), generator=torch.Generator().manual_seed(4))
    contrast[:, 0] = index
    mem_s, mem_t = npy(method.memory_s), npy(method.memory_t)
    v_s, v_t = npy(method.embed_s(student.emb)), npy(method.embed_t(teacher.emb))
    v_s /= np.linalg.norm(v_s, axis=1, keepdims=True)
    v_t /= np.linalg.norm(v_t, axis=1, keepdims=True)

    def nce(anchor: np.ndarray, bank: np.ndarray) -> float:
        scores = np.array([[np.exp(bank[j] @ anchor[i] / tau) for j in contrast[i].tolist()] for i in range(N)])
        x = scores / (scores.mean() * n_data)
        noise = k / n_data
        total = np.sum(np.log(x[:, 0] / (x[:, 0] + noise + 1e-7)))
        total += np.sum(np.log(noise / (x[:, 1:] + noise + 1e-7)))
        return -total / N

    ref = 0.8 * (nce(v_s, mem_t) + nce(v_t, mem_s))
    value = method(student=student, teacher=teacher, target=target, index=index, contrast_index=contrast)
    assert close(value, ref)
    mixed = 0.5 * mem_s[10 : 10 + N] + 0.5 * v_s
    np.testing.assert_allclose(
        npy(method.memory_s[10 : 10 + N]), mixed / np.linalg.norm(mixed, axis=1, keepdims=True), rtol=1e-9
    )
    np.testing.assert_array_equal(npy(method.memory_s[:10]), mem_s[:10])


def test_crd_loss_decreases_under_sgd_on_a_toy_problem() -> None:
    torch.manual_seed(0)
    n_data, batch = 32, 8
    teacher_emb = torch.randn(n_data, 16)
    student_emb = torch.nn.Parameter(torch.randn(n_data, 12))
    shapes_s = {"feat": (C, H, W), "emb": (12,), "logit": (K,)}
    shapes_t = {"feat": (C, H, W), "emb": (16,), "logit": (K,)}
    method = create_method("crd", shapes_s, shapes_t, dataset_size=n_data, nce_k=16, feat_dim=16)
    optimiser = torch.optim.SGD([student_emb, *method.parameters()], lr=0.5, momentum=0.9)
    unused_feat, unused_logit = torch.zeros(batch, C, H, W), torch.zeros(batch, K)
    epoch_losses = []
    for _ in range(15):
        total = 0.0
        for index in torch.randperm(n_data).split(batch):
            s = Features(unused_feat, student_emb[index], unused_logit)
            t = Features(unused_feat, teacher_emb[index], unused_logit)
            loss = method(student=s, teacher=t, target=torch.zeros(batch, dtype=torch.long), index=index)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item()
        epoch_losses.append(total)
    assert epoch_losses[-1] < 0.5 * epoch_losses[0]
