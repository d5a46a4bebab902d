"""Candidates per hour of a search run cut short: read from its study, whatever stopped it.

``experiments/gpu_check.sh`` runs a CIFAR-10 search for a fixed few minutes and stops it with Ctrl-C (SIGINT);
the study keeps every finished trial with its start and completion times. This script turns them into rates:

* ``steady``: finished candidates over the time from the first trial's start to the last trial's completion,
  what a long search sustains once the one-off costs (data, teacher cache, CE-only reference) are paid;
* ``overall``: finished candidates over the wall time of the whole command (``--wall``), one-off costs included;
* the projected wall time of the paper's search, population 20 + 100 iterations = 120 evaluations, at the
  steady rate (the paper: 21 h on one RTX 3090 Ti).

Only evaluated trials count: a duplicate genome (its result copied from an earlier trial) cost nothing.

    python experiments/gpu_search_timing.py runs/NAME --wall 180 --log search.log --json timing.json
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

PAPER_EVALUATIONS = 120  # population 20 + 100 iterations


def timing(run_dir: Path, wall: float | None, log_text: str = "") -> dict:
    """The rates of the study in ``run_dir`` (see the module docstring); ``log_text`` gives the auto group size."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    database = run_dir / "study.db"
    if not database.is_file():
        return {"run": str(run_dir), "error": f"no study at {database}"}
    storage = f"sqlite:///{database.as_posix()}"
    name = optuna.get_all_study_names(storage)[0]
    trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            and "duplicate_of" not in t.user_attrs and t.datetime_start and t.datetime_complete]
    result: dict = {"run": str(run_dir), "study": name, "evaluated": len(done),
                    "complete": sum(t.state == TrialState.COMPLETE for t in done),
                    "rejected": sum(t.state == TrialState.PRUNED for t in done)}
    found = re.search(r"group size auto: (\d+)", log_text)
    if found:
        result["group_size_auto"] = int(found.group(1))
    if done:
        span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
        result["steady_seconds"] = round(span, 1)
        if span > 0:
            result["steady_per_hour"] = round(3600 * len(done) / span, 1)
            result["paper_search_hours"] = round(PAPER_EVALUATIONS * span / len(done) / 3600, 3)
        best = min((t for t in done if t.state == TrialState.COMPLETE), key=lambda t: t.value, default=None)
        if best is not None:
            result["best"] = {"genome": best.user_attrs.get("genome"), "score": best.value}
    if wall:
        result["wall_seconds"] = round(wall, 1)
        result["overall_per_hour"] = round(3600 * len(done) / wall, 1)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="the search's run folder (holding study.db)")
    parser.add_argument("--wall", type=float, default=None, help="wall seconds of the whole search command")
    parser.add_argument("--log", type=Path, default=None, help="the search's output (for the auto group size)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    log_text = args.log.read_text(errors="replace") if args.log and args.log.is_file() else ""
    result = timing(args.run_dir, args.wall, log_text)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    if "error" in result:
        print(f"gpu_search_timing: {result['error']}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
