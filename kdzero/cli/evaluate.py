"""``kdzero evaluate``: proxy-score one genome and show its ProxyResult."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from kdzero.cli._display import console, err_console
from kdzero.errors import ConfigError

EPILOG = """examples:
  kdzero evaluate 'logit[no,no,no]|kl|no|T4|x1'                 # digits, built-in teacher
  kdzero evaluate 'feat[pow2,channel,norm_HW]|l2|no|T1|x100' --steps 300 --json
  kdzero evaluate 'logit[no,no,no]|kl|no|T4|x1' --config experiments/cifar10jpeg_resnet56a_resnet20.toml
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` sub-command."""
    p = subparsers.add_parser("evaluate", help="proxy-score one genome (short training, rejection, CE/S-gap/CKA-gap)",
                              description="Train a fresh student briefly with CE + the genome's loss against the "
                                          "cached teacher, then score it exactly as the search does. Uses the run "
                                          "directory's teacher and cache (runs/NAME), so it agrees with a search "
                                          "of the same name.",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("genome", help="genome text, e.g. 'logit[no,no,no]|kl|no|T4|x1'")
    p.add_argument("--config", metavar="TOML", help="take pair, data and proxy settings from a search config")
    p.add_argument("--name", help="run directory whose teacher and cache to use (default: digits)")
    p.add_argument("--dataset", help="digits (default), cifar10, cifar100, imagefolder:PATH")
    p.add_argument("--data-root")
    p.add_argument("--normalize", choices=("dataset", "imagenet"))
    p.add_argument("--teacher")
    p.add_argument("--teacher-ckpt")
    p.add_argument("--student")
    p.add_argument("--steps", type=int, dest="proxy.steps", metavar="N", help="proxy training steps")
    p.add_argument("--batch-size", type=int, dest="proxy.batch_size", metavar="N")
    p.add_argument("--views", type=int, dest="proxy.num_views", metavar="V")
    p.add_argument("--train-subset", type=int, dest="proxy.train_subset", metavar="N")
    p.add_argument("--bf16", action="store_true", default=None, dest="proxy.bf16",
                   help="bf16 autocast of the student's forward (CUDA, or a CPU with AMX)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device")
    p.add_argument("--threads", type=int)
    p.add_argument("--runs-dir")
    p.add_argument("--no-baseline", action="store_true", help="skip the CE-only reference (one proxy run less)")
    p.add_argument("--json", action="store_true", help="print the ProxyResult as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the proxy task, evaluate the genome, print the result."""
    from kdzero.cli.search import resolve_config
    from kdzero.genome import Genome
    from kdzero.proxy import evaluate
    from kdzero.search import runner

    genome = Genome.parse(args.genome)
    for name in ("sampler", "space", "population", "iterations", "adaptive_shrink", "guided", "presets", "workers",
                 "group_size", "storage", "study", "devices"):
        setattr(args, name, None)
    config = resolve_config(args, base=_run_config(args))
    runner.configure_torch(config)
    log = (lambda message: None) if args.json else (lambda message: err_console.print(message, markup=False))
    task = runner.build_task(config, log=log)
    result = evaluate(task, [genome])[0]
    baseline = None if args.no_baseline or result.rejected else task.baseline()
    if args.json:
        payload = {"result": result.to_dict()}
        if baseline is not None:
            payload["ce_only"] = baseline.to_dict()
        print(json.dumps(payload, indent=2))
        return 0
    console.print(_panel(result, baseline, config))
    return 0


def _run_config(args: argparse.Namespace):
    """The saved config of run ``--name`` when it exists (and no --config is given), with the pair options
    checked against the run's recorded pair: evaluating there uses that run's teacher, student and data."""
    from kdzero.search.config import SearchConfig
    from kdzero.search.record import apply_pair, run_pair

    run_dir = Path(args.runs_dir or "runs") / (args.name or "digits")
    saved = run_dir / "config.json"
    if args.config is not None or not saved.is_file():
        return None
    try:
        config = SearchConfig.from_dict(json.loads(saved.read_text()), source=str(saved))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"{saved} is corrupt; remove it or evaluate under another --name") from None
    pair = run_pair(run_dir)
    given = {"student": args.student, "teacher": args.teacher, "teacher_ckpt": args.teacher_ckpt,
             "dataset": args.dataset, "data_root": args.data_root, "normalize": args.normalize}
    for name, value in apply_pair(pair, run_dir, given, warn=lambda m: err_console.print(m, markup=False),
                                  instead="evaluate under another --name for another pair").items():
        setattr(args, name, value)
    pair.check_teacher()
    return config


def _panel(result, baseline, config) -> Panel:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_column(style="dim")
    table.add_row("genome", escape(result.genome), "")
    if result.rejected:
        table.add_row("verdict", f"[red]rejected[/red] at {result.stage} after {result.steps} steps", "")
        table.add_row("reason", escape(result.reason), "")
    else:
        ref = baseline.to_dict() if baseline is not None else {}

        def row(label: str, value: float, key: str, fmt: str = ".4f") -> None:
            other = ref.get(key)
            table.add_row(label, format(value, fmt), f"CE-only {format(other, fmt)}" if other is not None else "")

        row("score", result.score, "score")
        table.add_row("", "[dim](lower is better)[/dim]", "")
        row("val accuracy", result.val_acc, "val_acc", ".2%")
        row("val CE", result.val_ce, "val_ce")
        row("S-gap", result.s_gap, "s_gap")
        row("CKA-gap", result.cka_gap, "cka_gap")
        table.add_row("distill/CE", f"{result.loss_ratio:.3g}", "at the first batch")
    table.add_row("cost", f"{result.steps} steps, {result.seconds:.1f} s", "")
    title = f"{config.teacher} -> {config.student} on {config.dataset}"
    return Panel(table, title=escape(title), title_align="left",
                 border_style="red" if result.rejected else "green")
