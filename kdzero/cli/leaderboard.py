"""``kdzero leaderboard``: the population of a search run as a table, CSV or JSON, and optionally a plot."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from kdzero.cli._display import console, err_console
from kdzero.errors import ConfigError

EPILOG = """\
examples:
  kdzero leaderboard runs/digits                       # complete genomes, best first, with the CE-only baseline
  kdzero leaderboard runs/digits --all --top 30        # rejected and failed trials too, with their reasons
  kdzero leaderboard runs/digits --sort val_acc        # any column: score, val_acc, val_ce, s_gap, seconds, ...
  kdzero leaderboard runs/digits --format csv -o board.csv
  kdzero leaderboard runs/digits --rung 2              # the genomes promoted to rung 2, by their rung-2 score
  kdzero leaderboard runs/digits --table confirmed --format json   # the confirmed table (kdzero confirm)
  kdzero leaderboard runs/digits --plot search.png     # score over trials and op frequencies (kdzero[plot])
  kdzero leaderboard --storage postgresql://user:pw@host/db --study c100

Scores are lower-is-better proxy scores; acc % is the student's proxy validation accuracy.
"""
FORMATS = ("table", "csv", "json")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``leaderboard`` sub-command."""
    parser = subparsers.add_parser(
        "leaderboard", help="show the genomes of a search run, best first (table, CSV, JSON, plot)",
        description="List the genomes of a search run, best first: score, proxy accuracy, CE, S-gap, CKA-gap,\n"
                    "state, rejection reason and seconds, with the CE-only student as a reference row.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_path", nargs="?", metavar="RUN", help="a search run folder (runs/NAME)")
    parser.add_argument("--storage", metavar="URL", help="SQLAlchemy URL of the study storage (instead of RUN)")
    parser.add_argument("--study", metavar="NAME", help="study name in --storage")
    parser.add_argument("--top", type=int, metavar="K", help="keep the first K rows (default: all)")
    parser.add_argument("--all", action="store_true", dest="include_all",
                        help="include rejected, failed and duplicate trials")
    parser.add_argument("--sort", metavar="COLUMN", help="order by this column (ascending, val_acc descending)")
    parser.add_argument("--rung", type=int, metavar="R", default=0,
                        help="the genomes promoted to rung R, with their rung-R results (default 0: the search)")
    parser.add_argument("--table", choices=("population", "confirmed"), default="population",
                        help="what --format csv/json writes: the population (default) or the confirmed table "
                             "(the table format shows the confirmed table above the population)")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default table)")
    parser.add_argument("-o", "--output", metavar="FILE", help="write the output here instead of standard output")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="also draw the score over trials and the op frequencies of the top K (default 10)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Read the study, print or write the leaderboard, draw the plot if asked."""
    from kdzero.confirm import confirmed_table, stored_settings
    from kdzero.leaderboard import arrange, baseline, confirmed_rich, frame, open_study, plot, rich_table
    from kdzero.search.rungs import top_rung

    if args.run_path is None and (args.storage is None or args.study is None):
        raise ConfigError("give a run folder (kdzero leaderboard runs/NAME) or both --storage URL and --study NAME")
    study = open_study(args.run_path, storage=args.storage, study=args.study)
    if args.rung < 0:
        raise ConfigError(f"--rung must be >= 0, got {args.rung}")
    df_all = frame(study, include_all=True, rung=args.rung)
    if args.rung and df_all.empty:
        raise ConfigError(f"rung {args.rung} holds no genome yet (the search promoted up to rung "
                          f"{top_rung(study)})")
    confirmed = confirmed_table(study)
    df = arrange(df_all if args.include_all else df_all[df_all["rank"].notna()].reset_index(drop=True),
                 top=args.top, sort=args.sort)
    name = args.run_path or args.study
    if args.plot:
        path = plot(df_all, args.plot, top=args.top or 10, baseline=baseline(study), title=str(name))
        err_console.print(f"wrote plot {path}", highlight=False, markup=False)
    if args.format == "table":
        title = f"leaderboard: {name} (lower score is better)" + (f", rung {args.rung}" if args.rung else "")
        parts = [rich_table(df, title=title, baseline=None if args.rung else baseline(study))]
        settings = stored_settings(study)
        if not confirmed.empty:
            subset = f"{settings.subset} labelled/class" if settings.subset else "all labelled images"
            parts.insert(0, confirmed_rich(confirmed, title=f"confirmed: {name} (test top-1 %, {settings.seeds} "
                                                            f"seeds x {settings.epochs} epochs, {subset})"))
        if args.output is None:
            for part in parts:
                console.print(part)
        else:
            with _open(args.output) as handle:
                for part in parts:
                    Console(file=handle, width=160, color_system=None).print(part)
    else:
        shown = confirmed if args.table == "confirmed" else df
        text = shown.to_csv(index=False) if args.format == "csv" else \
            shown.to_json(orient="records", indent=2, double_precision=15) + "\n"
        if args.output is None:
            sys.stdout.write(text)
        else:
            with _open(args.output) as handle:
                handle.write(text)
    if args.output is not None:
        err_console.print(f"wrote {args.output}", highlight=False, markup=False)
    return 0


def _open(path: str):
    try:
        return Path(path).open("w")
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
