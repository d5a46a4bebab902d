"""``kdzero search``: the main job. Evolve (or sample) distillers for a teacher-student pair."""
from __future__ import annotations

import argparse
import subprocess
import sys
import time

from kdzero.cli._display import console

EPILOG = """examples:
  kdzero search                                   # digits, built-in teacher, a few minutes on 2 CPU cores
  kdzero search --population 20 --iterations 100  # the paper's budget
  kdzero search --config experiments/cifar100_resnet56_resnet20.toml --device cuda
  kdzero search --sampler tpe --name digits-tpe   # any Optuna sampler over the same space
  kdzero search --workers 2                       # two local worker processes, one population
  kdzero search --storage postgresql://user:pw@host/db --study c100 --config ...   # many machines

Re-running the same command resumes the run (runs/NAME). Ctrl-C stops cleanly; finished trials are kept.
A finished run continues with more --iterations or a larger --population; options that change what a score
means (pair, data, --steps, --train-subset, space, seed, ...) are refused: use --name NEW, or --fresh.
Every finished trial is one line in runs/NAME/search.log (and on the terminal with --quiet or off a terminal).
"""


def _group_size(text: str) -> int | str:
    """``--group-size``: a positive integer or 'auto'."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}")
    return value


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``search`` (all) and ``worker`` (device and threads)."""
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--threads", type=int, help="intra-op CPU threads per worker (default 1)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``search`` sub-command."""
    p = subparsers.add_parser("search", help="search the best distiller for a teacher-student pair (main job)",
                              description="Search distillation losses (genomes) for a teacher and a student: each "
                                          "candidate is scored by a short proxy training; bad ones are rejected "
                                          "early. Ends with the leaderboard.",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="TOML", help="a config file (experiments/*.toml); options below override it")
    p.add_argument("--name", help="run name: results go to RUNS_DIR/NAME (default: digits, or the config's stem)")
    p.add_argument("--fresh", action="store_true",
                   help="discard the run of this name (its study, config, pair and log) and start it again")
    g = p.add_argument_group("pair and data")
    g.add_argument("--dataset", help="digits (embedded, default), cifar10, cifar100, imagefolder:PATH, or "
                                     "package.module:function returning (train, test) datasets")
    g.add_argument("--data-root", help="folder holding the dataset files (cifar)")
    g.add_argument("--normalize", choices=("dataset", "imagenet"),
                   help="input normalisation: the dataset's statistics, or ImageNet's (akamaster teachers)")
    g.add_argument("--teacher", help="teacher model: a zoo name, torchvision:NAME[?kw=v], timm:NAME or "
                                     "package.module:function ('kdzero models' lists them)")
    g.add_argument("--teacher-ckpt", help="teacher checkpoint (required except on digits, where one is trained)")
    g.add_argument("--student", help="student model, in the same forms as --teacher")
    g = p.add_argument_group("search")
    g.add_argument("--sampler", help="evolution (KD-Zero, default), tpe, random, grid, ga")
    g.add_argument("--space", help="shrunk (default: one op family per slot), full, or kd-grid")
    g.add_argument("--population", type=int, help="population size P (default 12; the paper uses 20)")
    g.add_argument("--iterations", type=int, help="evolution iterations T (default 28; the paper uses 100)")
    g.add_argument("--no-adaptive-shrink", dest="adaptive_shrink", action="store_false", default=None,
                   help="keep ops whose genomes keep failing")
    g.add_argument("--no-guided", dest="guided", action="store_false", default=None,
                   help="turn off guided selection (the surrogate ranker)")
    g.add_argument("--no-presets", dest="presets", action="store_false", default=None,
                   help="do not seed the population with the classical presets")
    g.add_argument("--seed", type=int, help="seed of the sampler and the proxy (default 0)")
    g = p.add_argument_group("proxy")
    g.add_argument("--steps", type=int, dest="proxy.steps", metavar="N", help="training steps per candidate")
    g.add_argument("--batch-size", type=int, dest="proxy.batch_size", metavar="N", help="proxy batch size")
    g.add_argument("--views", type=int, dest="proxy.num_views", metavar="V",
                   help="augmented views cached for the teacher")
    g.add_argument("--train-subset", type=int, dest="proxy.train_subset", metavar="N",
                   help="images per class in the proxy train split (default: all)")
    g.add_argument("--bf16", action="store_true", default=None, dest="proxy.bf16",
                   help="bf16 autocast of the proxy students' forward: CUDA, or a CPU with AMX "
                        "(dense CNNs 2-3.5x faster there; MobileNet/ShuffleNet slower)")
    g = p.add_argument_group("execution")
    add_run_options(g)
    g.add_argument("--devices", help="comma-separated devices, one per worker (e.g. cuda:0,cuda:1)")
    g.add_argument("--workers", type=int, help="local worker processes sharing one population (default 1)")
    g.add_argument("--group-size", type=_group_size, metavar="G|auto",
                   help="candidates trained together in one step loop; auto: the most that fit on CUDA, 4 on CPU")
    g.add_argument("--storage", help="SQLAlchemy URL of the study storage (default: SQLite in the run directory)")
    g.add_argument("--study", help="study name in the storage (default: the run name)")
    g.add_argument("--runs-dir", help="parent folder of run directories (default runs)")
    g.add_argument("--top", type=int, default=10, help="rows of the final leaderboard (default 10)")
    g.add_argument("--quiet", action="store_true", help="no live display; plain log lines")
    p.set_defaults(func=run)


def resolve_config(args: argparse.Namespace, base=None):
    """Defaults (or ``base``, e.g. an existing run's config), then the config file, then the command line."""
    from kdzero.search.config import SearchConfig, load_config

    config = load_config(args.config) if args.config else (base or SearchConfig())
    overrides = {key: value for key, value in vars(args).items()
                 if key in SearchConfig.__dataclass_fields__ or key.startswith("proxy.")}
    overrides.pop("proxy", None)
    if args.devices:
        overrides["devices"] = [d.strip() for d in args.devices.split(",") if d.strip()]
    else:
        overrides.pop("devices", None)
    return config.with_overrides(overrides)


def run(args: argparse.Namespace) -> int:
    """Prepare the run, evaluate trials (here or in worker processes), print the leaderboard."""
    from kdzero.cli._search_display import LiveSearchDisplay
    from kdzero.leaderboard import frame, rich_table
    from kdzero.search import record, runner
    from kdzero.search import study as studies

    config = resolve_config(args)
    runner.configure_torch(config)
    devices = runner.check_device_list(config)
    if args.fresh:
        runner.discard_run(config)
    runner.check_run_dir(config, write=False)  # written by prepare_run, once data and teacher loaded
    studies.check_storage_file(config.storage_url)  # a corrupt study.db: refuse before minutes of loading
    console.print(f"[bold]kdzero search[/bold] {config.name}: {config.teacher} -> {config.student} on "
                  f"{config.dataset}, {config.sampler} sampler, {config.trials} trials "
                  f"({config.population} + {config.iterations}), run dir {config.run_dir}", highlight=False)
    display = LiveSearchDisplay(config.trials, title=config.name, enabled=not args.quiet,
                                plain_lines=not console.is_terminal, run_log=record.RunLog(config.run_dir))
    task = runner.build_task(config, log=display.log, device=devices[0])
    search = runner.prepare_run(config, is_valid=runner.validity_checker(task), log=display.log)
    pair = runner.run_pair(config, task)
    record.save_pair(config.run_dir, pair)
    search.study.set_user_attr(record.PAIR_ATTR, pair.to_dict())  # for workers and readers of a shared storage
    record.start_session(config.run_dir, ",".join(sorted(set(devices))))
    display.progress.update(display.trials, total=search.config.trials)
    done = len([t for t in search.study.get_trials(deepcopy=False) if t.state.is_finished()
                and t.state.name != "FAIL"])
    display.progress.update(display.trials, completed=done)
    start = time.monotonic()
    try:
        with display:
            baseline = runner.ensure_baseline(search, task, display)
            display.set_baseline(baseline)
            if config.workers > 1:
                _run_workers(config, devices, search, display)
            else:
                runner.run_worker(search, task, display)
    except KeyboardInterrupt:
        record.end_session(config.run_dir, _trial_seconds(search.study))
        console.print("[yellow]interrupted[/yellow]: finished trials are saved; re-run the same command to resume")
        return 130
    record.end_session(config.run_dir, _trial_seconds(search.study))
    df = frame(search.study)
    console.print(rich_table(df.head(args.top), title=f"leaderboard: {config.name} (lower score is better)",
                             baseline=baseline.to_dict()))
    _summary(df, baseline, time.monotonic() - start, config)
    return 0


def _trial_seconds(study) -> float:
    """Seconds of proxy training the run's finished trials took, together."""
    return float(sum(t.user_attrs.get("seconds", 0.0) or 0.0 for t in study.get_trials(deepcopy=False)
                     if t.state.is_finished()))


def _run_workers(config, devices: list[str], search, display) -> None:
    """Start one worker process per device and follow the shared study until they finish."""
    from optuna.trial import TrialState

    commands = [[sys.executable, "-m", "kdzero", "worker", "--storage", config.storage_url, "--study",
                 config.study_name, "--device", device, "--threads", str(config.threads), "--quiet"]
                for device in devices]
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for cmd in commands]
    display.log(f"started {len(procs)} workers on {', '.join(devices)}")
    seen: set[int] = set()
    try:
        while True:
            for trial in search.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
                if trial.number not in seen:
                    seen.add(trial.number)
                    display.progress.advance(display.trials)
                    display.record(trial.number, trial.user_attrs.get("genome", "?"), trial.value,
                                   trial.user_attrs.get("stage") if trial.state == TrialState.PRUNED else None,
                                   seconds=trial.user_attrs.get("seconds"),
                                   duplicate_of=trial.user_attrs.get("duplicate_of"),
                                   rung=trial.user_attrs.get("rung"))
            running = search.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            display.current = [f"#{t.number} {t.user_attrs.get('worker', '')}" for t in running]
            if all(p.poll() is not None for p in procs):
                break
            time.sleep(1.0)
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        raise
    failed = [p for p in procs if p.returncode not in (0, None)]
    for p in failed:
        message = (p.stderr.read() or "").strip().splitlines()
        display.log(f"a worker exited with code {p.returncode}: {message[-1] if message else ''}")


def _summary(df, baseline, seconds: float, config) -> None:
    from kdzero.presets import PRESETS

    if df.empty:
        console.print("no complete trials yet")
        return
    best = df.iloc[0]
    kd_key = PRESETS["kd"].key
    kd_rows = df[df.key == kd_key]
    kd_text = f"; KD preset {kd_rows.iloc[0].score:.4f}" if not kd_rows.empty else ""
    console.print(f"best score {best.score:.4f} (CE-only student {baseline.score:.4f}{kd_text}) in "
                  f"{seconds:.0f} s", highlight=False)
    from rich.markup import escape

    console.print(f"replay it:  kdzero replay {escape(str(config.run_dir))} --rank 1", highlight=False)
