"""``kdzero worker``: join a study from any machine and evaluate its trials."""
from __future__ import annotations

import argparse

from kdzero.cli._display import console
from kdzero.cli.search import _group_size, add_run_options


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``worker`` sub-command."""
    p = subparsers.add_parser(
        "worker", help="join a running search from this process or machine",
        description="Evaluate trials of an existing search study until it reaches its planned number of trials. "
                    "The settings come from the study (written by 'kdzero search'); data and teacher paths in "
                    "them must exist on this machine, or be overridden.",
        epilog="example: kdzero worker --storage postgresql://kd:pw@10.0.0.5/kdzero --study c100 --device cuda:1")
    p.add_argument("--storage", required=True, help="SQLAlchemy URL of the study storage")
    p.add_argument("--study", required=True, help="study name")
    add_run_options(p)
    p.add_argument("--data-root", help="where the dataset lives on this machine")
    p.add_argument("--teacher-ckpt", help="where the teacher checkpoint lives on this machine")
    p.add_argument("--group-size", type=_group_size, metavar="G|auto",
                   help="candidates trained together (default: the study's)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Join the study and work until it is done."""
    from kdzero.search import runner
    from kdzero.search.runner import SearchObserver

    overrides = {"device": args.device, "threads": args.threads, "data_root": args.data_root,
                 "teacher_ckpt": args.teacher_ckpt, "group_size": args.group_size}
    log = (lambda message: None) if args.quiet else (lambda message: console.print(message, markup=False))
    search = runner.open_worker_run(args.storage, args.study, overrides, log=log)
    runner.configure_torch(search.config)
    runner.check_device_list(search.config)
    task = runner.build_task(search.config, log=log)
    search.study.sampler.is_valid = runner.validity_checker(task) if hasattr(search.study.sampler, "is_valid") \
        else None
    runner.ensure_baseline(search, task)

    class Printer(SearchObserver):
        def log(self, message: str) -> None:
            log(message)

        def trial_finished(self, number, genome, result, duplicate_of) -> None:
            outcome = f"rejected ({result.stage}: {result.reason})" if result.rejected else f"score {result.score:.4f}"
            log(f"trial {number} {genome}: {outcome}")

        def rung_started(self, rung, steps, genomes) -> None:
            log(f"rung {rung}: the best {genomes} genomes, {steps} proxy steps each")

        def rung_result(self, rung, candidate, result) -> None:
            outcome = f"rejected ({result.stage}: {result.reason})" if result.rejected else f"score {result.score:.4f}"
            log(f"rung {rung} trial {candidate.trial} {candidate.genome}: {outcome}")

    count = runner.run_worker(search, task, Printer())
    log(f"worker done: evaluated {count} genomes")
    return 0
