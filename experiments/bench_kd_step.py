"""Benchmark (issue 8a): a training step with UnifiedLoss(PRESETS["kd"]) against a hand-written KD step.

resnet56a (akamaster CIFAR-10 weights) -> resnet20, batch 64, CIFAR-sized inputs (random by default, real
CIFAR-10 JPEG images with ``--real``). Both steps run the teacher forward (eval, no grad), the student forward,
CE + KD, backward and an SGD step; each variant has its own identically initialised student. KD is

* ``unified``: ``UnifiedLoss(Genome.parse("logit[no,no,no]|kl|no|T4|x1"))``;
* ``handwritten``: ``F.kl_div(log_softmax(s/T), softmax(t/T), reduction="batchmean") * T**2``.

Target: unified/handwritten <= 1.05 (the paper: 0.222 vs 0.219 s/batch for its found loss vs KD). Whole steps
are timed interleaved in rounds; the loss alone (forward + backward on fixed logits) is timed the same way, which
isolates the per-step overhead in milliseconds from the much larger noise of a shared machine.

    python experiments/bench_kd_step.py            # ~3 minutes on 2 shared cores
    python experiments/bench_kd_step.py --real --rounds 20
    python experiments/bench_kd_step.py --device cuda     # timings synchronise the device
"""
from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F
from bench_common import AKAMASTER, Report, ensure_cifar10_jpeg, interleaved, round_ratios, summary, synchronize

from kdzero import PRESETS, Features, UnifiedLoss
from kdzero.loss import feature_shapes
from kdzero.models import create_model, load_checkpoint

TEMPERATURE = 4.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--real", action="store_true", help="real CIFAR-10 JPEG images instead of random ones")
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds of whole steps (default 10)")
    parser.add_argument("--per-round", type=int, default=4, help="timed steps per variant per round (default 4)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first (default 2)")
    parser.add_argument("--loss-calls", type=int, default=200, help="timed loss-only calls per variant per round")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--out", default=None, help="results file (default experiments/results/bench_kd_step.txt)")
    return parser.parse_args()


def handwritten_kd(student: Features, teacher: Features, target: torch.Tensor) -> torch.Tensor:
    """Hinton KD as everyone writes it."""
    t = TEMPERATURE
    return F.kl_div(F.log_softmax(student.logit / t, dim=1), F.softmax(teacher.logit.detach() / t, dim=1),
                    reduction="batchmean") * t * t


def batches(args: argparse.Namespace) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """16 input batches (normalised float32) with labels."""
    n = args.batch_size * 16
    generator = torch.Generator().manual_seed(0)
    if args.real:
        from kdzero.data import AugmentedViews
        from kdzero.train import load_data

        data = load_data(f"imagefolder:{ensure_cifar10_jpeg()}", normalize="imagenet", train_subset=n)
        views = AugmentedViews(data.train, 2, seed=0)
        stream = views.batches(args.batch_size, 16, generator)
        return [(views.batch(v, i), data.train.labels[i]) for v, i in stream]
    x = torch.randn(n, 3, 32, 32, generator=generator)
    y = torch.randint(0, 10, (n,), generator=generator)
    return list(zip(x.split(args.batch_size), y.split(args.batch_size)))


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    report = Report("kd_step", out=args.out)
    device = torch.device(args.device)
    stream = [(x.to(device), y.to(device)) for x, y in batches(args)]
    teacher = create_model("resnet56a", num_classes=10)
    load_checkpoint(teacher, AKAMASTER / "resnet56-4bfd9763.th")
    teacher.to(device).eval().requires_grad_(False)
    with torch.no_grad():
        teacher_shapes = feature_shapes(teacher(stream[0][0][:2]))
        student_shapes = feature_shapes(create_model("resnet20", num_classes=10).to(device).eval()(stream[0][0][:2]))
    unified = UnifiedLoss(PRESETS["kd"], student_shapes, teacher_shapes).to(device)

    def make_step(kd):
        torch.manual_seed(0)
        student = create_model("resnet20", num_classes=10).to(device).train()
        optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        position = [0]

        def step() -> None:
            x, y = stream[position[0] % len(stream)]
            position[0] += 1
            with torch.no_grad():
                t = teacher(x)
            out = student(x)
            total = F.cross_entropy(out.logit, y) + kd(student=out, teacher=t, target=y)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            synchronize(device)

        return step

    x, y = stream[0]
    with torch.no_grad():
        t = teacher(x)
        s = create_model("resnet20", num_classes=10).to(device).eval()(x)
    value_u = float(unified(student=s, teacher=t, target=y))
    value_h = float(handwritten_kd(s, t, y))
    report.add(f"pair: resnet56a (akamaster) -> resnet20, batch {args.batch_size}, on {device}, "
               f"{'real CIFAR-10 JPEG' if args.real else 'random'} 3x32x32 inputs, genome {PRESETS['kd']}")
    report.add(f"same value: unified {value_u:.6f} vs handwritten {value_h:.6f} (|diff| {abs(value_u - value_h):.1e})")

    logit_s = s.logit.clone().requires_grad_(True)
    fixed_s = Features(s.feat, s.emb, logit_s)

    def loss_only(kd):
        def call() -> None:
            kd(student=fixed_s, teacher=t, target=y).backward()
            synchronize(device)
        return call

    report.add(f"loss alone (forward + backward on fixed logits), {args.rounds} rounds x {args.loss_calls} calls:")
    loss_times = interleaved({"unified": loss_only(unified), "handwritten": loss_only(handwritten_kd)},
                             args.rounds, args.loss_calls, warmup=20)
    report.add(f"  unified     : {summary(loss_times['unified'], 1e6, 'us')}")
    report.add(f"  handwritten : {summary(loss_times['handwritten'], 1e6, 'us')}")
    overhead = statistics.median(loss_times["unified"]) - statistics.median(loss_times["handwritten"])
    report.add(f"  overhead of UnifiedLoss: {overhead * 1e6:+.0f} us per step")

    report.add(f"whole step (teacher fwd + student fwd/bwd + SGD): {args.warmup} warm-up steps each, then "
               f"{args.rounds} rounds x {args.per_round} steps per variant, order alternating per round")
    times = interleaved({"unified": make_step(unified), "handwritten": make_step(handwritten_kd)}, args.rounds,
                        args.per_round, args.warmup, progress=print)
    u, h = statistics.median(times["unified"]), statistics.median(times["handwritten"])
    ratios = round_ratios(times["unified"], times["handwritten"], args.per_round)
    report.add("")
    report.add(f"step with UnifiedLoss(kd) : {summary(times['unified'])}")
    report.add(f"step with hand-written KD : {summary(times['handwritten'])}")
    report.add(f"ratio unified/handwritten : {u / h:.3f} (target <= 1.05; per-round ratios min {min(ratios):.2f}, "
               f"median {statistics.median(ratios):.2f}, max {max(ratios):.2f})")
    report.add(f"loss overhead as a share of the hand-written step: {overhead / h * 100:+.3f} % "
               f"(-> expected ratio {(h + overhead) / h:.3f})")
    report.add(f"target <= 1.05: {'met' if u / h <= 1.05 else 'MISSED'} by the whole-step medians; "
               f"{'met' if (h + overhead) / h <= 1.05 else 'MISSED'} by the isolated loss overhead")
    report.finish()


if __name__ == "__main__":
    main()
