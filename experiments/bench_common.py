"""Shared plumbing of the ``experiments/bench_*.py`` benchmarks (not a benchmark itself).

The machine the benchmarks run on is small and shared (2 cores, other jobs running), so every benchmark measures
its variants side by side in one process run, interleaved (A, B, B, A, A, B, ...) after a warm-up, in repeated
rounds, and reports medians and their ratio. ``Report`` prints lines and keeps them for
``experiments/results/bench_<name>.txt``, framed by a description of the machine and the load average at start
and end.
"""
from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# Where the data is: ../shared/data beside the repository, unless KDZERO_SHARED_DATA names a folder laid out like
# it (experiments/gpu_check.sh points it at the git-ignored local_data/ on a machine that has only the checkout);
# KDZERO_CIFAR10_JPEG is where the JPEG archive is extracted.
CIFAR10_JPEG = Path(os.environ.get("KDZERO_CIFAR10_JPEG") or "/tmp/cifar10jpeg")
SHARED_DATA = Path(os.environ.get("KDZERO_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
CIFAR10_TAR = SHARED_DATA / "cifar10-jpeg.tar.gz"
AKAMASTER = SHARED_DATA / "teachers" / "akamaster-cifar10"


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or platform's guess elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    """The 1/5/15-minute load averages as text."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def machine_lines() -> list[str]:
    """A short description of the machine and the torch build."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        f"machine: {cpu_model()}; {os.cpu_count()} logical cores ({usable} usable); {platform.system()} "
        f"{platform.release()}",
        f"python {platform.python_version()}, torch {torch.__version__}, torch threads {torch.get_num_threads()}, "
        f"interop threads {torch.get_num_interop_threads()}, cuda {'yes' if torch.cuda.is_available() else 'no'}",
    ]


class Report:
    """Printed lines of one benchmark, written to ``experiments/results/bench_<name>.txt`` on ``finish``."""

    def __init__(self, name: str, argv: Sequence[str] | None = None, out: str | os.PathLike | None = None) -> None:
        self.name = name
        self.path = Path(out) if out else RESULTS_DIR / f"bench_{name}.txt"
        self.lines: list[str] = []
        self.start = time.perf_counter()
        command = " ".join(["python", f"experiments/bench_{name}.py", *(argv if argv is not None else sys.argv[1:])])
        self.add(f"# bench_{name}  ({time.strftime('%Y-%m-%d %H:%M:%S %Z')})")
        self.add(f"command: {command}")
        for line in machine_lines():
            self.add(line)
        self.add(f"load average at start: {load_average()}")

    def add(self, line: str = "") -> None:
        """Print ``line`` and keep it for the results file."""
        print(line, flush=True)
        self.lines.append(line)

    def finish(self) -> Path:
        """Add the end-of-run lines and write the results file."""
        self.add(f"load average at end: {load_average()}; wall time {time.perf_counter() - self.start:.0f} s")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("\n".join(self.lines) + "\n")
        print(f"(written to {self.path})")
        return self.path


def interleaved(variants: dict[str, Callable[[], None]], rounds: int, per_round: int, warmup: int,
                progress: Callable[[str], None] | None = None) -> dict[str, list[float]]:
    """Time ``per_round`` calls of every variant per round, the variants' order alternating between rounds
    (A B, B A, A B, ...), after ``warmup`` untimed calls of each. Returns every call's seconds per variant."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            fn = variants[name]
            for _ in range(per_round):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        if progress is not None:
            progress(f"round {r + 1}/{rounds}: " + ", ".join(
                f"{n} {statistics.median(t[-per_round:]) * 1e3:.1f} ms" for n, t in times.items()))
    return times


def summary(seconds: Sequence[float], unit: float = 1e3, suffix: str = "ms") -> str:
    """Median with the interquartile range and the count."""
    q = statistics.quantiles(seconds, n=4) if len(seconds) > 1 else [seconds[0]] * 3
    return (f"median {statistics.median(seconds) * unit:8.1f} {suffix}  (IQR {q[0] * unit:.1f}-{q[2] * unit:.1f}, "
            f"n={len(seconds)})")


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels (CUDA runs asynchronously): call before reading a clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def round_ratios(a: Sequence[float], b: Sequence[float], per_round: int) -> list[float]:
    """Ratio of medians round by round (``a`` over ``b``): a noise check on the overall ratio."""
    return [statistics.median(a[i:i + per_round]) / statistics.median(b[i:i + per_round])
            for i in range(0, min(len(a), len(b)), per_round)]


def ensure_cifar10_jpeg(root: Path = CIFAR10_JPEG) -> Path:
    """The extracted CIFAR-10 JPEG folder (extracting the shared archive there if needed)."""
    if not (root / "train").is_dir():
        import tarfile

        root.mkdir(parents=True, exist_ok=True)
        with tarfile.open(CIFAR10_TAR) as tar:
            tar.extractall(root, filter="data")
    return root


DIGITS_TEACHER_ROOT = Path(tempfile.gettempdir()) / "kdzero-bench-teachers"
"""Where the digits benchmarks keep their built-in teacher, trained once and shared between them."""


def digits_teacher(root: Path = DIGITS_TEACHER_ROOT) -> tuple[Path, float]:
    """The checkpoint of the default digits teacher (resnet20), trained on first use; and the seconds it took."""
    from kdzero.train import ensure_teacher, load_data

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    checkpoint = ensure_teacher("resnet20", load_data("digits"), root=root, progress=False)
    torch.set_num_threads(threads)
    return checkpoint, time.perf_counter() - start
