"""``kdzero leaderboard``: the population of a search run as a table, CSV or JSON, and optionally a plot."""
from __future__ import annotations

import argparse
import json
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
  kdzero leaderboard runs/digits --json                # rows plus the run's metadata, pair and confirmed table
  kdzero leaderboard runs/digits --rung 2              # the genomes promoted to rung 2, by their rung-2 score
  kdzero leaderboard runs/digits --table confirmed --format json   # the confirmed table (kdzero confirm)
  kdzero leaderboard runs/digits --plot search.png     # score over trials and op frequencies (kdzero[plot])
  kdzero leaderboard --storage postgresql://user:pw@host/db --study c100
  kdzero leaderboard runs/diswot-resnet20-digits       # a student search: students by DisWOT, params, FLOPs

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
    parser.add_argument("--format", choices=FORMATS, default="table",
                        help="output format (default table); the population's csv and json end with the CE-only "
                             "baseline row")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object: the run's metadata (run.json), its pair (pair.json), the CE-only "
                             "baseline, the confirmed table and the rows")
    parser.add_argument("-o", "--output", metavar="FILE", help="write the output here instead of standard output")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="also draw the score over trials and the op frequencies of the top K (default 10)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Read the study, print or write the leaderboard, draw the plot if asked."""
    from kdzero.confirm import confirmed_table, stored_settings
    from kdzero.leaderboard import arrange, baseline, confirmed_rich, frame, open_study, plot, rich_table, with_baseline
    from kdzero.leaderboard.students import is_student_search, student_plot, student_table
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
    students = is_student_search(study)
    if args.plot:
        path = (student_plot(df_all, args.plot, title=str(name)) if students else
                plot(df_all, args.plot, top=args.top or 10, baseline=baseline(study), title=str(name)))
        err_console.print(f"wrote plot {path}", highlight=False, markup=False)
    if args.json:
        document = _document(args, name, study, df)
        document["confirmed"] = json.loads(confirmed.to_json(orient="records", double_precision=15))
        _write(args.output, json.dumps(document, indent=2, default=str) + "\n")
    elif args.format == "table":
        if students:
            parts = [student_table(df, title=f"students: {name} (DisWOT, higher is better)")]
        else:
            title = (f"leaderboard: {name}{_pair_text(args.run_path)} (lower score is better)"
                     + (f", rung {args.rung}" if args.rung else ""))
            parts = [rich_table(df, title=title, baseline=None if args.rung else baseline(study))]
        if not confirmed.empty:
            settings = stored_settings(study)
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
        rows = confirmed if args.table == "confirmed" else with_baseline(df, None if args.rung else baseline(study))
        _write(args.output, rows.to_csv(index=False) if args.format == "csv" else
               rows.to_json(orient="records", indent=2, double_precision=15) + "\n")
    if args.output is not None:
        err_console.print(f"wrote {args.output}", highlight=False, markup=False)
    return 0


def _pair_text(run_path: str | None) -> str:
    """``: resnet56a -> resnet20 on cifar10`` for a run folder that recorded its pair, else nothing."""
    from kdzero.search.record import load_pair

    pair = load_pair(run_path) if run_path is not None else None
    return f": {pair.teacher} -> {pair.student} on {pair.dataset}" if pair is not None else ""


def _write(output: str | None, text: str) -> None:
    if output is None:
        sys.stdout.write(text)
        return
    with _open(output) as handle:
        handle.write(text)


def _document(args: argparse.Namespace, name, study, df) -> dict:
    """``--json``: what the run is (metadata and pair, when its folder has them), its baseline and rows."""
    from kdzero.leaderboard import baseline
    from kdzero.search.record import load_meta, load_pair

    run_dir = Path(args.run_path) if args.run_path else None
    pair = load_pair(run_dir) if run_dir is not None else None
    meta = (load_meta(run_dir) if run_dir is not None else None) or {}
    if df is not None and "seconds" in df:
        meta = {**meta, "trial_seconds_shown": float(df["seconds"].fillna(0).sum())}
    return {"run": str(name), "meta": meta, "pair": pair.to_dict() if pair is not None else None,
            "baseline": baseline(study), "rows": json.loads(df.to_json(orient="records", double_precision=15))}


def _open(path: str):
    try:
        return Path(path).open("w")
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
