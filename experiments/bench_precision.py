"""Benchmark: which precision and memory format make a student's training step fastest, model by model.

Why it exists: ``ProxyConfig`` and ``TrainConfig`` run convolutions channels_last (NHWC) by default and offer bf16
autocast (``--bf16`` / ``--amp``) on the CPU as well as on CUDA. Both choices are speed claims, and on a CPU they
depend on the instruction set (AMX tiles run bf16 convolutions natively; without them bf16 is emulated) and on
the layer types (depthwise convolutions have no fast bf16 path). This measures them side by side.

One training step = forward of a batch of 64, CE on fp32 logits, backward, SGD with momentum; for the teacher
row, a forward under ``no_grad`` (what the straightforward proxy loop pays every step). Four variants per model:
fp32 NCHW (PyTorch's default), fp32 NHWC, bf16 NCHW, bf16 NHWC, timed interleaved in rounds after a warm-up;
the table gives medians and the speed-up over fp32 NCHW.

    python experiments/bench_precision.py                  # ~4 minutes on one core
    python experiments/bench_precision.py --models resnet20,mobilenetv2 --rounds 3
"""
from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F
from bench_common import Report, interleaved

from kdzero.models import create_model

DEFAULT_MODELS = "resnet20,resnet8x4,wrn_16_2,vgg8,mobilenetv2,shufflenetv2,teacher:resnet56a"
VARIANTS = {"fp32 NCHW": (False, False), "fp32 NHWC": (False, True), "bf16 NCHW": (True, False),
            "bf16 NHWC": (True, True)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=DEFAULT_MODELS,
                        help="comma-separated model names; 'teacher:NAME' times a no-grad forward instead")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--per-round", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args()


def make_step(name: str, bf16: bool, nhwc: bool, args: argparse.Namespace):
    """A closure running one step of ``name`` in the given precision and layout."""
    forward_only = name.startswith("teacher:")
    torch.manual_seed(0)
    model = create_model(name.removeprefix("teacher:"), num_classes=args.classes)
    x = torch.randn(args.batch_size, 3, 32, 32)
    y = torch.randint(0, args.classes, (args.batch_size,))
    if nhwc:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if forward_only:
        model.eval().requires_grad_(False)

        def step() -> None:
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                model(x)
        return step
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        loss = F.cross_entropy(out.logit.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    report = Report("precision")
    report.add(f"cpu bf16 support (oneDNN): {torch.ops.mkldnn._is_mkldnn_bf16_supported()}; capability "
               f"{torch.backends.cpu.get_cpu_capability()}; batch {args.batch_size}, 32x32 inputs, "
               f"{args.classes} classes; train step = forward, CE, backward, SGD (teacher: no-grad forward)")
    report.add(f"  {'model':22s} " + " ".join(f"{v:>16s}" for v in VARIANTS) + "   best")
    for name in args.models.split(","):
        steps = {v: make_step(name, *flags, args) for v, flags in VARIANTS.items()}
        times = interleaved(steps, rounds=args.rounds, per_round=args.per_round, warmup=args.warmup)
        median = {v: statistics.median(t) for v, t in times.items()}
        base = median["fp32 NCHW"]
        cells = [f"{median[v] * 1e3:7.1f} ms {base / median[v]:4.2f}x" for v in VARIANTS]
        best = min(median, key=median.get)
        report.add(f"  {name:22s} " + " ".join(f"{c:>16s}" for c in cells) + f"   {best}")
    report.add("(each cell: median step time and the speed-up over fp32 NCHW; higher is faster)")
    report.finish()


if __name__ == "__main__":
    main()
