"""``kdzero confirm``: train a finished run's best genomes and the classical references for real, over seeds."""
from __future__ import annotations

import argparse

from kdzero.cli._display import console
from kdzero.errors import ConfigError

EPILOG = """\
examples:
  kdzero confirm runs/digits                         # the run's own settings (search --confirm-*)
  kdzero confirm runs/c10 --top 5 --epochs 60 --seeds 3 --device cuda

Results are stored in the run's study, per (distiller, seed): re-running the command after a kill repeats no
finished training, and a training killed half-way resumes from its last epoch. 'kdzero leaderboard RUN' shows
the confirmed table above the population.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``confirm`` sub-command."""
    p = subparsers.add_parser(
        "confirm", help="train a run's top genomes and the hand-made references for real over seeds; the winner",
        description="Train the top-K genomes of the run's highest rung, plus CE-only, KD, DKD, KD+LS and DKD+LS, "
                    "on the run's own pair (its dataset, teacher checkpoint and student) over several seeds, and "
                    "print mean ± std of test top-1 with the gains over KD, over the strongest hand-made reference "
                    "and over CE-only, and whether they exceed the seed noise.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_path", metavar="RUN", help="a search run folder (runs/NAME)")
    p.add_argument("--top", type=int, metavar="K", help="genomes to confirm (default: the run's confirm, 3)")
    p.add_argument("--epochs", type=int, help="epochs per training (default: the run's, else 30 on digits)")
    p.add_argument("--subset", type=int, metavar="N", help="labelled training images per class (default: run's)")
    p.add_argument("--seeds", type=int, help="seeds per distiller (default: the run's, 2)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: the run's)")
    p.add_argument("--data-root", help="where the dataset lives on this machine (default: the run's)")
    p.add_argument("--teacher-ckpt", help="where the teacher checkpoint lives on this machine (default: the run's)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Confirm the run and print the confirmed table."""
    from kdzero.confirm import ConfirmSettings, confirm, run_config
    from kdzero.leaderboard import open_study

    if args.top is not None and args.top < 1:
        raise ConfigError(f"--top must be at least 1, got {args.top}")
    config = run_config(args.run_path, {"confirm": args.top, "confirm_epochs": args.epochs,
                                             "confirm_subset": args.subset, "confirm_seeds": args.seeds,
                                             "device": args.device, "data_root": args.data_root,
                                             "teacher_ckpt": args.teacher_ckpt})
    if config.confirm == 0:
        config = config.with_overrides({"confirm": 3})  # a search run with --confirm 0, confirmed afterwards
    study = open_study(args.run_path)
    log = (lambda _m: None) if args.quiet else (lambda m: console.print(m, markup=False, highlight=False))
    settings = ConfirmSettings.from_config(config)
    table = confirm(study, config, settings, log=log)
    print_confirmed(table, config.name, settings)
    return 0


def print_confirmed(table, name: str, settings) -> None:
    """The confirmed table and one line naming the winner and its gains."""
    from kdzero.confirm import winner
    from kdzero.leaderboard import confirmed_rich

    subset = f"{settings.subset} labelled images per class" if settings.subset else "all labelled images"
    console.print(confirmed_rich(table, title=f"confirmed: {name} (test top-1 %, mean ± std over {settings.seeds} "
                                              f"seeds, {settings.epochs} epochs, {subset})"))
    best = winner(table)
    if best is not None:
        gains = [_gain(best.gain_kd, best.vs_kd, "KD") if best.distiller != "KD" else "",
                 _gain(best.gain_ce, best.vs_ce, "CE-only") if best.distiller != "CE-only" else ""]
        gains = [g for g in gains if g]
        console.print(f"confirmed winner: {best.distiller} at {best.last_mean:.2f}%"
                      + (f" ({'; '.join(gains)})" if gains else ""), highlight=False, markup=False)
    verdict = hand_made_verdict(table)
    if verdict:
        console.print(verdict, highlight=False, markup=False)


def hand_made_verdict(table) -> str:
    """``best hand-made: DKD+LS 72.30 ± 0.20; best found: GENOME +0.40 ± 0.30, within noise``: the best searched
    genome against the strongest hand-made reference of the run (empty when either is missing)."""
    reference = table[table.distiller == table.best_reference.iloc[0]] if len(table) else table
    found = table[(table.kind == "searched") & table["rank"].notna()]
    if reference.empty or found.empty:
        return ""
    ref, top = reference.iloc[0], found.iloc[0]
    return (f"best hand-made: {ref.distiller} {ref.last_mean:.2f} ± {ref.last_std:.2f}; best found: {top.distiller} "
            f"{top.gain_best:+.2f} ± {top.noise_best:.2f}, {top.vs_best}")


def _gain(value, note: str, reference: str) -> str:
    import math

    if value is None or math.isnan(value):
        return f"no {reference} result"
    return f"{value:+.2f} points over {reference}" + (f", {note}" if note else "")
