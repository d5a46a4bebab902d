"""kdzero on a CUDA device, checked against the CPU: every op, the loss, the proxy, stacked groups, the teacher
cache, the command line and the memory sizing of candidate groups.

Every test computes the same thing on the CPU (the reference) and on the device under test, and compares
numbers: fp32 at float tolerance, bf16 autocast at a looser one, CLI runs by their recorded results. TF32 is
switched off for the module, so "fp32" means fp32 on Ampere and later too.

The device under test is ``cuda`` unless the environment variable ``KDZERO_TEST_DEVICE`` names another one.
Without a GPU the file skips cleanly; to check the file itself on a machine without one, run the same
comparisons CPU against CPU (they must then agree, and the CUDA-only memory test skips):

    KDZERO_TEST_DEVICE=cpu python -m pytest -q -m cuda tests/test_cuda.py
    python -m pytest -q -m cuda tests/test_cuda.py        # on a GPU machine (experiments/gpu_check.sh runs it)
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from kdzero import PRESETS, Features, Genome, UnifiedLoss
from kdzero.models import create_model
from kdzero.ops import DISTANCES, TRANSFORMS, WEIGHTS, OpContext
from kdzero.proxy import ProxyConfig, ProxyTask, _Candidate, _StackedGroup, auto_group_size, evaluate
from kdzero.teacher_cache import TeacherCache
from kdzero.train import load_data

DEVICE = torch.device(os.environ.get("KDZERO_TEST_DEVICE", "cuda"))
ON_CUDA = DEVICE.type == "cuda"
ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(ON_CUDA and not torch.cuda.is_available(),
                       reason="no CUDA device (KDZERO_TEST_DEVICE=cpu runs these checks CPU against CPU)"),
]

FP32 = {"rtol": 1e-4, "atol": 1e-5}
BF16_REL = 3e-2  # relative norm error of one op under bf16 autocast (bf16 keeps 8 mantissa bits: 4e-3 per value)
SHAPES = {2: (6, 10), 3: (4, 5, 9), 4: (4, 8, 7, 7)}


@pytest.fixture(autouse=True, scope="module")
def _exact_fp32():
    """TF32 matmuls and convolutions (cuDNN's default on Ampere+) keep 10 mantissa bits; compare true fp32."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _context() -> OpContext:
    """A context whose random ops (mask, drop) draw on a seeded CPU generator: the same mask on both devices."""
    return OpContext(training=True, generator=torch.Generator().manual_seed(7))


def _relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    value, reference = value.detach().double().cpu(), reference.detach().double().cpu()
    return float((value - reference).norm() / reference.norm().clamp(min=1e-12))


def _applicable(op, shape: tuple[int, ...]) -> bool:
    return len(shape) in op.ranks and not (op.degenerate is not None and op.degenerate(shape))


def _transform_cases() -> list[tuple[str, tuple[int, ...]]]:
    return [(name, shape) for name in TRANSFORMS.names() for shape in SHAPES.values()
            if _applicable(TRANSFORMS[name], shape)]


def _distance_cases() -> list[tuple[str, tuple[int, ...]]]:
    return [(name, shape) for name in DISTANCES.names() for shape in SHAPES.values()
            if len(shape) in DISTANCES[name].ranks]


def _run_transform(name: str, x: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The op's output and the gradient of a fixed weighted sum of it with respect to the input."""
    x = x.clone().requires_grad_(True)
    out = TRANSFORMS[name](x, _context())
    (out.float() * weights.to(out.device)).sum().backward()
    return out.detach(), x.grad


# ------------------------------------------------------------------------------------------------ ops, fp32
@pytest.mark.parametrize("name,shape", _transform_cases(), ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple)
                         else v)
def test_transform_on_device_matches_cpu_with_its_gradient(name, shape):
    x = _randn(*shape, seed=1) * 3
    expected_shape = TRANSFORMS[name].output_shape(shape)
    weights = _randn(*expected_shape, seed=2)
    out_cpu, grad_cpu = _run_transform(name, x, weights)
    out_dev, grad_dev = _run_transform(name, x.to(DEVICE), weights)
    assert out_dev.device.type == DEVICE.type and tuple(out_dev.shape) == expected_shape
    torch.testing.assert_close(out_dev.cpu(), out_cpu, **FP32)
    torch.testing.assert_close(grad_dev.cpu(), grad_cpu, **FP32)


@pytest.mark.parametrize("name,shape", _distance_cases(), ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple)
                         else v)
def test_distance_on_device_matches_cpu_with_its_gradient(name, shape):
    s, t = _randn(*shape, seed=3), _randn(*shape, seed=4)

    def run(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        student = s.to(device).requires_grad_(True)
        per_sample = DISTANCES[name](student, t.to(device))
        per_sample.sum().backward()
        return per_sample.detach(), student.grad

    (d_cpu, g_cpu), (d_dev, g_dev) = run(torch.device("cpu")), run(DEVICE)
    assert tuple(d_dev.shape) == (shape[0],)
    torch.testing.assert_close(d_dev.cpu(), d_cpu, **FP32)
    torch.testing.assert_close(g_dev.cpu(), g_cpu, **FP32)


@pytest.mark.parametrize("with_target", [True, False], ids=["labels", "teacher-argmax"])
@pytest.mark.parametrize("name", WEIGHTS.names())
def test_weighting_on_device_matches_cpu(name, with_target):
    distances = _randn(8, seed=5).abs()
    student_logit, teacher_logit = _randn(8, 10, seed=6) * 2, _randn(8, 10, seed=7) * 2
    target = torch.arange(8) % 10 if with_target else None

    def run(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        d = distances.to(device).requires_grad_(True)
        value = WEIGHTS[name](d, student_logit.to(device), teacher_logit.to(device),
                              None if target is None else target.to(device))
        value.backward()
        return value.detach(), d.grad

    (v_cpu, g_cpu), (v_dev, g_dev) = run(torch.device("cpu")), run(DEVICE)
    torch.testing.assert_close(v_dev.cpu(), v_cpu, **FP32)
    torch.testing.assert_close(g_dev.cpu(), g_cpu, **FP32)


# ------------------------------------------------------------------------------------------------ ops, bf16
@pytest.mark.parametrize("name,shape", _transform_cases(), ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple)
                         else v)
def test_transform_under_bf16_autocast_is_finite_and_near_fp32(name, shape):
    x = _randn(*shape, seed=1) * 3
    reference = TRANSFORMS[name](x, _context())
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        out = TRANSFORMS[name](x.to(DEVICE), _context())
    assert bool(torch.isfinite(out).all())
    assert _relative_error(out, reference) <= BF16_REL


@pytest.mark.parametrize("name,shape", _distance_cases(), ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple)
                         else v)
def test_distance_under_bf16_autocast_is_finite_and_near_fp32(name, shape):
    s, t = _randn(*shape, seed=3), _randn(*shape, seed=4)
    reference = DISTANCES[name](s, t)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        out = DISTANCES[name](s.to(DEVICE), t.to(DEVICE))
    assert bool(torch.isfinite(out).all())
    assert _relative_error(out, reference) <= BF16_REL


@pytest.mark.parametrize("name", WEIGHTS.names())
def test_weighting_under_bf16_autocast_is_finite_and_near_fp32(name):
    distances = _randn(8, seed=5).abs()
    logits = _randn(8, 10, seed=6) * 2, _randn(8, 10, seed=7) * 2
    target = torch.arange(8) % 10
    reference = WEIGHTS[name](distances, *logits, target)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        out = WEIGHTS[name](distances.to(DEVICE), *(t.to(DEVICE) for t in logits), target.to(DEVICE))
    assert bool(torch.isfinite(out))
    assert _relative_error(out, reference) <= BF16_REL


# --------------------------------------------------------------------------------------------- UnifiedLoss
@pytest.mark.parametrize("text", ["feat[no,no,no]|l2|no|T1|x1", "feat[satt,norm_C,no]|smooth_l1|entropy|T4|x10",
                                  "emb[no,no,norm_C]|cosine|focal|T4|x1"])
def test_unified_loss_with_connector_on_device_matches_cpu(text):
    genome = Genome.parse(text)
    student = Features(_randn(6, 8, 4, 4, seed=10), _randn(6, 8, seed=11), _randn(6, 10, seed=12))
    teacher = Features(_randn(6, 16, 4, 4, seed=13), _randn(6, 16, seed=14), _randn(6, 10, seed=15))
    target = torch.arange(6) % 10
    torch.manual_seed(0)
    loss_cpu = UnifiedLoss(genome).build(student, teacher)
    assert loss_cpu.connector is not None
    built_on_device = UnifiedLoss(genome).build(student.to(DEVICE), teacher.to(DEVICE))
    assert {p.device.type for p in built_on_device.parameters()} == {DEVICE.type}  # lands on the features' device
    loss_dev = copy.deepcopy(loss_cpu).to(DEVICE)  # the same connector weights on both sides

    def run(loss_fn: UnifiedLoss, device: torch.device) -> tuple[torch.Tensor, list[torch.Tensor]]:
        s = Features(*(t.to(device).requires_grad_(True) for t in student))
        value = loss_fn(student=s, teacher=teacher.to(device), target=target.to(device))
        value.backward()
        picked = s.select(genome.input)
        return value.detach(), [picked.grad, *(p.grad for p in loss_fn.parameters())]

    v_cpu, g_cpu = run(loss_cpu, torch.device("cpu"))
    v_dev, g_dev = run(loss_dev, DEVICE)
    assert bool(torch.isfinite(v_dev)) and v_dev.device.type == DEVICE.type
    torch.testing.assert_close(v_dev.cpu(), v_cpu, **FP32)
    for grad_dev, grad_cpu in zip(g_dev, g_cpu, strict=True):
        torch.testing.assert_close(grad_dev.cpu(), grad_cpu, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------- proxy tasks
PROXY = {"steps": 12, "batch_size": 32, "num_views": 2, "warmup_steps": 4, "sharpness_samples": 64,
         "cka_samples": 64, "seed": 0}
PROXY_GENOMES = [PRESETS["kd"], PRESETS["at"], Genome.parse("feat[no,no,no]|l2|no|T1|x1"),
                 Genome.parse("feat[pow4,exp,pow4]|l2|no|T1|x100")]


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


@pytest.fixture(scope="module")
def teacher(digits):
    torch.manual_seed(0)  # 128 feature channels against resnet8's 64: feat genomes need a connector
    return create_model("wrn_16_2", num_classes=digits.num_classes, in_chans=digits.in_chans).eval()


def _task(teacher, digits, device: torch.device, cache_dir: Path, **changes) -> ProxyTask:
    config = ProxyConfig(device=str(device), **{**PROXY, **changes})
    factory = lambda: create_model("resnet8", num_classes=digits.num_classes, in_chans=digits.in_chans)  # noqa: E731
    return ProxyTask(copy.deepcopy(teacher), factory, digits, config, cache_dir, log=lambda _m: None)


@pytest.fixture(scope="module")
def cpu_task(teacher, digits, tmp_path_factory):
    return _task(teacher, digits, torch.device("cpu"), tmp_path_factory.mktemp("cache-cpu"))


@pytest.fixture(scope="module")
def device_task(teacher, digits, tmp_path_factory):
    return _task(teacher, digits, DEVICE, tmp_path_factory.mktemp("cache-device"))


def _assert_results_close(result, reference, score_rtol: float) -> None:
    assert (result.status, result.stage, result.steps) == (reference.status, reference.stage, reference.steps)
    if reference.rejected:
        return
    for name in ("val_ce", "score"):
        assert getattr(result, name) == pytest.approx(getattr(reference, name), rel=score_rtol), name
    assert result.cka_gap == pytest.approx(reference.cka_gap, abs=1e-2)
    assert result.s_gap == pytest.approx(reference.s_gap, abs=1e-2)
    assert abs(result.val_acc - reference.val_acc) <= 0.02 + 1e-9


def test_proxy_task_lives_on_the_device_with_its_teacher_cache(device_task):
    assert device_task.device.type == DEVICE.type
    assert next(device_task.teacher.parameters()).device.type == DEVICE.type
    assert device_task.val_x.device.type == DEVICE.type
    assert {t.device.type for t in (device_task.cache.feat, device_task.cache.emb, device_task.cache.logit)} \
        == {DEVICE.type}  # a digits cache is far below half the free memory


def test_teacher_cache_on_device_serves_the_teachers_outputs(device_task, cpu_task):
    views, cache = device_task.views, device_task.cache
    indices = torch.tensor([0, 5, 17, 3, 40, 41])  # CPU indices, as the batch stream gives them
    view_ids = torch.tensor([0, 1, 1, 0, 1, 0])
    got = cache.get(view_ids, indices)
    assert {t.device.type for t in got} == {DEVICE.type} and all(t.dtype == torch.float32 for t in got)
    with torch.no_grad():
        direct = device_task.teacher(views.batch(view_ids, indices))
    for cached, fresh in zip(got, direct):
        torch.testing.assert_close(cached, fresh.float(), rtol=2e-3, atol=2e-3)  # fp16 storage
    reference = cpu_task.cache.get(view_ids, indices)
    for cached, on_cpu in zip(got, reference):
        torch.testing.assert_close(cached.cpu(), on_cpu, rtol=2e-3, atol=2e-3)


def test_teacher_cache_built_on_device_reloads_on_cpu_bit_for_bit(device_task, tmp_path):
    cache = device_task.cache
    saved = TeacherCache(cache.feat, cache.emb, cache.logit, key="k", device=DEVICE)
    from kdzero.teacher_cache import _save

    _save(saved, tmp_path / "teacher-x.pt", tmp_path / "teacher-x.json", device_task.views, device_task.teacher, None)
    data = torch.load(tmp_path / "teacher-x.pt", map_location="cpu", weights_only=True)
    for name in ("feat", "emb", "logit"):
        assert torch.equal(data[name], getattr(cache, name).cpu())


@pytest.mark.parametrize("genome,needs_connector", list(zip(PROXY_GENOMES[:3], (False, False, True))),
                         ids=["kd", "at", "feat-l2-connector"])
def test_proxy_evaluation_on_device_gives_the_cpu_score(device_task, cpu_task, genome, needs_connector):
    assert (UnifiedLoss(genome, device_task.student_shapes, device_task.teacher_shapes).connector is not None) \
        == needs_connector
    on_device = evaluate(device_task, [genome], stacked=False)[0]
    on_cpu = evaluate(cpu_task, [genome], stacked=False)[0]
    assert on_device.status == "complete"
    _assert_results_close(on_device, on_cpu, score_rtol=2e-2)


def test_proxy_rejects_the_same_bad_genome_on_device_as_on_cpu(device_task, cpu_task):
    bad = PROXY_GENOMES[3]
    on_device, on_cpu = evaluate(device_task, [bad])[0], evaluate(cpu_task, [bad])[0]
    assert on_device.rejected and (on_device.stage, on_device.steps) == (on_cpu.stage, on_cpu.steps)


def test_bf16_proxy_on_device_is_finite_and_near_the_fp32_score(teacher, digits, tmp_path, cpu_task):
    task = _task(teacher, digits, DEVICE, tmp_path, bf16=True)
    result = evaluate(task, [PRESETS["kd"]], stacked=False)[0]
    reference = evaluate(cpu_task, [PRESETS["kd"]], stacked=False)[0]
    assert result.status == "complete"
    assert result.score == pytest.approx(reference.score, rel=0.1)
    assert result.val_ce == pytest.approx(reference.val_ce, rel=0.1)


def test_stacked_group_on_device_matches_the_looped_group(device_task):
    stacked = evaluate(device_task, PROXY_GENOMES, stacked=True)
    looped = evaluate(device_task, PROXY_GENOMES, stacked=False)
    assert [r.status for r in stacked] == ["complete", "complete", "complete", "rejected"]
    for s, loop in zip(stacked, looped, strict=True):
        _assert_results_close(s, loop, score_rtol=1e-3)


def test_default_grouping_stacks_on_cuda_only(device_task):
    default = evaluate(device_task, PROXY_GENOMES[:2])
    explicit = evaluate(device_task, PROXY_GENOMES[:2], stacked=ON_CUDA)
    assert [_without_time(r) for r in default] == [_without_time(r) for r in explicit]


def _without_time(result) -> dict:
    return {k: v for k, v in result.to_dict().items() if k != "seconds"}


def test_flop_count_of_a_model_on_the_device_equals_the_cpu_count():
    from kdzero.diswot import model_cost  # student-search counts its teacher's FLOPs after moving it to --device

    model = create_model("resnet20", num_classes=10)
    on_cpu = model_cost(model, 3, (32, 32))
    assert model_cost(copy.deepcopy(model).to(DEVICE), 3, (32, 32)) == on_cpu
    assert 40e6 < on_cpu.flops < 42e6  # resnet20 at 32x32: ~41M multiply-accumulates (the CIFAR papers' figure)


# ------------------------------------------------------------------------------------------- memory (CUDA)
def _group_peak(task: ProxyTask, size: int) -> int:
    """Bytes allocated at the peak of one stacked step of ``size`` KD candidates, above what was held before."""
    torch.cuda.synchronize(task.device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(task.device)
    before = torch.cuda.memory_allocated(task.device)
    candidates = [_Candidate(task, PRESETS["kd"]) for _ in range(size)]
    group = _StackedGroup(task, candidates)
    view_ids, indices = next(iter(task.batches()))
    group.step(task, 0, *task.batch(view_ids, indices))
    torch.cuda.synchronize(task.device)
    peak = torch.cuda.max_memory_allocated(task.device) - before
    del group, candidates
    torch.cuda.empty_cache()
    return peak


@pytest.mark.skipif(not ON_CUDA, reason="CUDA memory statistics only")
def test_peak_memory_grows_with_the_group_and_auto_size_fits_the_free_memory(device_task, monkeypatch):
    device_task.baseline()
    peaks = {size: _group_peak(device_task, size) for size in (1, 2, 4, 8)}
    print("peak bytes per stacked group size:", peaks)
    assert peaks[1] < peaks[2] < peaks[4] < peaks[8]
    per_candidate = (peaks[8] - peaks[4]) / 4  # the marginal cost of one more stacked student
    assert per_candidate > 0
    measured: list[int] = []
    real = torch.cuda.mem_get_info

    def spy(device=None):
        free, total = real(device)
        measured.append(free)
        return free, total

    monkeypatch.setattr(torch.cuda, "mem_get_info", spy)
    size = auto_group_size(device_task)
    assert measured, "auto_group_size did not read the free memory"
    free = measured[-1]
    assert 1 <= size <= 32
    assert size * per_candidate <= free
    monkeypatch.setattr(torch.cuda, "mem_get_info", real)
    assert _group_peak(device_task, size) <= free  # the chosen group really runs within what was free


# ---------------------------------------------------------------------------------------- command line
def _kdzero(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "160",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "kdzero", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _finished(runs: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{(runs / name / 'study.db').as_posix()}")
    trials = study.get_trials()
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    return [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


SEARCH = ["--population", "3", "--iterations", "3", "--steps", "12", "--no-presets", "--sampler", "random",
          "--quiet"]


def test_cli_search_on_the_device_finishes_its_budget_with_scores(tiny_run, tmp_path):
    runs = tmp_path / "runs"
    proc = _kdzero(["search", "--config", str(tiny_run["config"]), "--name", "dev", "--runs-dir", str(runs),
                    "--device", str(DEVICE), "--group-size", "auto", *SEARCH])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    finished = _finished(runs, "dev")
    assert len(finished) == 6
    complete = [t for t in finished if t.state == TrialState.COMPLETE]
    assert complete and all(0 < t.value < float("inf") for t in complete)
    assert json.loads((runs / "dev" / "config.json").read_text())["device"] == str(DEVICE)
    chosen = int(proc.stdout.split("group size auto: ", 1)[1].split()[0])
    if not ON_CUDA:
        assert chosen == 4  # the looped CPU group
    assert 1 <= chosen <= 32
    sizes = {t.user_attrs["group_size"] for t in complete}
    assert 1 <= max(sizes) <= min(chosen, 6)  # fresh genomes per group: at most what fits, at most the budget


def test_cli_search_with_two_workers_on_one_device_shares_the_population(tiny_run, tmp_path):
    runs = tmp_path / "runs"
    device = "cuda:0" if ON_CUDA else str(DEVICE)  # both workers on the first GPU
    proc = _kdzero(["search", "--config", str(tiny_run["config"]), "--name", "pair", "--runs-dir", str(runs),
                    "--devices", f"{device},{device}", "--workers", "2", *SEARCH])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"started 2 workers on {device}, {device}" in proc.stdout
    finished = _finished(runs, "pair")
    assert len(finished) == 6
    evaluated = [t.user_attrs["key"] for t in finished if "duplicate_of" not in t.user_attrs]
    assert len(evaluated) == len(set(evaluated)), "a canonical genome was trained twice"
    assert len({t.user_attrs.get("worker") for t in finished}) == 2


@pytest.mark.skipif(not ON_CUDA, reason="device indices exist on CUDA only")
def test_cli_search_refuses_a_gpu_index_the_machine_lacks_in_one_line(tiny_run, tmp_path):
    missing = f"cuda:{torch.cuda.device_count()}"
    proc = _kdzero(["search", "--config", str(tiny_run["config"]), "--runs-dir", str(tmp_path), "--devices",
                    f"cuda:0,{missing}", "--workers", "2", "--quiet"], timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and missing in lines[0] and "Traceback" not in proc.stderr


def test_cli_replay_on_the_device_with_amp_reports_its_saved_models_accuracy(tiny_run, tmp_path):
    from kdzero.train import evaluate as accuracy

    out = tmp_path / "replay"
    ckpt = tiny_run["folder"] / "teacher.pt"
    proc = _kdzero(["replay", "--genome", "logit[no,no,no]|kl|no|T4|x1", "--teacher", "resnet8", "--teacher-ckpt",
                    str(ckpt), "--student", "resnet8", "--epochs", "2", "--device", str(DEVICE), "--amp", "--out",
                    str(out), "--json"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    result = json.loads((out / "seed0" / "results.json").read_text())
    assert len(result["history"]) == 2
    assert all(0 <= r["train_loss"] < float("inf") for r in result["history"])
    best = torch.load(out / "seed0" / "best.pt", map_location="cpu", weights_only=True)
    model = create_model("resnet8", num_classes=10, in_chans=1)
    model.load_state_dict(best["model"])
    model.to(memory_format=torch.channels_last)  # as replay trained and evaluated it
    test = load_data("digits").test
    again = accuracy(model.to(DEVICE), test.to(DEVICE), amp=True)
    assert again == pytest.approx(best["best_acc"], abs=2 * 100.0 / len(test) + 1e-9)  # bf16 ties
    assert summary["best_acc_mean"] == pytest.approx(best["best_acc"], abs=1e-6)
