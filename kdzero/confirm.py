"""Confirmation: the search's best genomes and the classical references, trained for real on the run's own pair,
over several seeds, so that a search ends with one answer a user can act on.

``confirm(study, config)`` trains the top-K genomes of the highest rung the search reached, plus every method of
``CONFIRM_REFERENCES`` (CE-only, KD, DKD, KD+LS, DKD+LS), each over ``seeds`` seeds at the confirmation budget,
with the run's dataset, teacher checkpoint and student (its saved config). Each (distiller, seed) is one claim in
the study storage (``kdzero.search.claims``): it is trained once, by one worker; its result is stored in the
study; a training killed half-way resumes from its last epoch (``train_model``'s ``last.pt``), and a finished
one is never repeated.

``confirmed_table(study)`` reports per distiller the mean +- sample std of the test top-1 (%) at the last epoch
(the number the ranking uses: choosing the best epoch on the test split flatters) and at the best epoch, the
gain of the last-epoch mean over KD, over CE-only and over the strongest hand-made reference of the run (the best
of KD, DKD, KD+LS, DKD+LS), and whether each gain is beyond the seed noise.

Seed noise: with two or three seeds a row's own standard deviation is itself very uncertain, so the seed
variance is pooled over every row of the table (all rows share the protocol): ``s_p^2 = sum (n_i - 1) s_i^2 /
sum (n_i - 1)``. A gain ``g`` of row a over reference b has standard error ``se = s_p sqrt(1/n_a + 1/n_b)``; the
gain is **beyond noise** when ``|g| > 2 se`` (about a 95% two-sided test), else **within noise**.
"""
from __future__ import annotations

import json
import math
import re
import sys
import time
import types
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import optuna
import pandas as pd
import torch

from kdzero.data import DatasetSplits, proxy_subset
from kdzero.errors import ConfigError, KdzeroError
from kdzero.models import create_model
from kdzero.search import claims, rungs
from kdzero.search.config import SearchConfig
from kdzero.train import TrainConfig, build_distiller, load_data, load_teacher, train_model

CONFIRM_REFERENCES: tuple[str, ...] = ("ce", "kd", "dkd", "ls", "dkd_ls")
"""The classical distillers every confirmation trains beside the found genomes (``kdzero.methods`` names; ``ce``
is the student alone): KD, DKD and both on standardised logits (Sun et al. 2024), the strongest simple hand-made
distillers with public results, so that a found genome is judged against the best a user could pick by hand."""
REFERENCE_LABELS = {"ce": "CE-only", "kd": "KD", "dkd": "DKD", "ls": "KD+LS", "dkd_ls": "DKD+LS"}
HAND_MADE = tuple(label for method, label in REFERENCE_LABELS.items() if method != "ce")
"""The references that distil (all but CE-only): the best of them on the run is the bar a found genome must pass."""
PREFIX = "kdzero_confirm:"
SETTINGS_ATTR = "kdzero_confirm_settings"
NOISE_Z = 2.0  # a gain is beyond noise when it exceeds NOISE_Z pooled standard errors

Log = Callable[[str], None]


@dataclass(frozen=True)
class ConfirmSettings:
    """The confirmation budget: ``top`` genomes, ``epochs`` per training, ``subset`` labelled training images per
    class (None: all), ``seeds`` seeds each."""

    top: int
    epochs: int
    subset: int | None
    seeds: int

    @property
    def tag(self) -> str:
        """Results of different budgets are kept apart under this tag."""
        return f"e{self.epochs}-n{self.subset or 'all'}"

    @classmethod
    def from_config(cls, config: SearchConfig) -> ConfirmSettings:
        """The run's confirmation settings, dataset defaults filled in."""
        epochs = config.confirm_epochs or TrainConfig.for_dataset(config.student, config.dataset).epochs
        subset = config.confirm_subset or config.proxy.train_subset  # by default the labels the search saw
        return cls(top=config.confirm, epochs=epochs, subset=subset, seeds=config.confirm_seeds)


@dataclass(frozen=True)
class Entrant:
    """One distiller of the confirmation: a searched genome (with its trial and rung) or a reference method."""

    label: str
    genome: str | None = None
    method: str | None = None
    trial: int | None = None
    rung: int | None = None

    @property
    def slug(self) -> str:
        """A file-system-safe name for its training folders."""
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.label).strip("_")[:80] or "distiller"


def entrants(study: optuna.Study, top: int) -> list[Entrant]:
    """The top-``top`` genomes of the highest rung holding results, then the references."""
    rung = rungs.top_rung(study)
    found = [Entrant(label=c.genome, genome=c.genome, trial=c.trial, rung=rung)
             for c, _ in rungs.ranked(study, rung)[:top]]
    return found + [Entrant(label=REFERENCE_LABELS.get(m, m), method=None if m == "ce" else m)
                    for m in CONFIRM_REFERENCES]


def unit_name(settings: ConfirmSettings, entrant: Entrant, seed: int) -> str:
    """The storage name of one (distiller, seed) training."""
    return f"{PREFIX}{settings.tag}:{entrant.label}:{seed}"


@dataclass
class Pair:
    """The run's data (labelled subset applied), teacher and student: what every confirmation trains. The student
    is built by ``factory`` when given (a run searched on Python objects), else by name from the zoo or a spec."""

    data: DatasetSplits
    teacher: torch.nn.Module
    student: str
    device: str
    factory: Callable[[], torch.nn.Module] | None = None

    def new_student(self) -> torch.nn.Module:
        """A fresh student (the caller seeds the RNG)."""
        if self.factory is not None:
            return self.factory()
        return create_model(self.student, num_classes=self.data.num_classes, in_chans=self.data.in_chans)


def run_config(run_path: str | Path, overrides: dict):
    """The saved config of a run folder with ``overrides`` applied."""
    saved = Path(run_path) / "config.json"
    if not saved.is_file():
        raise ConfigError(f"no search run at {run_path} (no config.json)")
    try:
        data = json.loads(saved.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"{saved} is corrupt") from None
    data["runs_dir"] = str(Path(run_path).parent)
    data["study"] = data.get("study") or data.get("name")  # the folder may have been moved or renamed
    data["name"] = Path(run_path).name
    return SearchConfig.from_dict(data, source=str(saved)).with_overrides(overrides)


def load_pair(config: SearchConfig, settings: ConfirmSettings, log: Log = print) -> Pair:
    """Build the pair from the run's saved config: its dataset, teacher checkpoint (the built-in one on digits)
    and student. A teacher checkpoint whose bytes changed since the search recorded it is refused; a run searched
    on Python objects cannot be rebuilt from its folder (``kdzero.confirm`` takes the objects again)."""
    from kdzero.search.record import load_pair as recorded_pair
    from kdzero.search.runner import teacher_checkpoint

    recorded = recorded_pair(config.run_dir)
    if recorded is not None:
        if recorded.from_python:
            raise ConfigError(f"run {config.run_dir} was searched on Python objects: confirm it with "
                              "kdzero.confirm(run, teacher=, student=, train_data=, test_data=)")
        if config.teacher_ckpt == recorded.teacher_ckpt:
            recorded.check_teacher()
    data = load_data(config.dataset, config.data_root, normalize=config.normalize)
    create_model(config.student, num_classes=data.num_classes, in_chans=data.in_chans)
    # The teacher the search used: resolved on the whole training split (a built-in teacher is keyed by what it
    # was trained on), before the confirmation's labelled subset is taken for the students.
    teacher = load_teacher(config.teacher, teacher_checkpoint(config, data, log), data)
    if settings.subset is not None:
        data = replace(data, train=proxy_subset(data.train, per_class=settings.subset, seed=config.seed))
    return Pair(data=data, teacher=teacher, student=config.student, device=config.device)


def _train(pair: Pair, entrant: Entrant, seed: int, settings: ConfirmSettings, out: Path,
           heartbeat: Callable[[], None] | None = None) -> dict:
    """One training of the confirmation; returns its stored result (test top-1 in %). ``heartbeat`` keeps the
    training's claim alive while it runs."""
    torch.manual_seed(seed)
    model = pair.new_student()
    loss = None
    if entrant.genome is not None or entrant.method is not None:
        loss = build_distiller(model, pair.teacher, pair.data, genome=entrant.genome, method=entrant.method)
    train_config = TrainConfig.for_dataset(pair.student, pair.data.name, epochs=settings.epochs, seed=seed,
                                           device=pair.device)
    started = time.process_time()
    try:
        result = train_model(model, pair.data, train_config, teacher=pair.teacher if loss is not None else None,
                             distill_loss=loss, run_dir=out, resume=True, progress=False, heartbeat=heartbeat)
    except KdzeroError as exc:  # a loss that blows up in full training is a result too: it failed
        return {"error": str(exc).splitlines()[0], "seed": seed}
    return {"seed": seed, "last_acc": result.last_acc, "best_acc": result.best_acc,
            "best_epoch": result.best_epoch, "seconds": round(result.seconds, 3),
            "cpu_seconds": round(time.process_time() - started, 3)}


def confirm(study: optuna.Study, config: SearchConfig, settings: ConfirmSettings | None = None, log: Log = print,
            pair: Pair | None = None, people: list[Entrant] | None = None) -> pd.DataFrame:
    """Train every (distiller, seed) of the confirmation not yet done (claiming each), then return the
    confirmed table. Other workers' claims are waited for; dead ones are taken over. ``people`` replaces the
    default entrants (``entrants(study, settings.top)``), e.g. to confirm a whole rung for a benchmark."""
    settings = settings or ConfirmSettings.from_config(config)
    if settings.top < 1:
        raise ConfigError("confirm needs at least one genome (--top / --confirm K >= 1)")
    people = people or entrants(study, settings.top)
    if len(people) == len(CONFIRM_REFERENCES):
        raise ConfigError("the run has no complete genome to confirm yet; run the search first")
    study.set_user_attr(SETTINGS_ATTR, asdict(settings))
    units = [(e, seed) for e in people for seed in range(settings.seeds)]
    beater = claims.Beater(study)
    while True:
        stored = claims.entries(study, f"{PREFIX}{settings.tag}:")
        todo = [(e, s) for e, s in units if stored.get(unit_name(settings, e, s), {}).get("state") != claims.DONE]
        if not todo:
            break
        if pair is None:  # before claiming: loading a large dataset must not age a claim past its grace period
            pair = load_pair(config, settings, log)
        claimed = next(((e, s) for e, s in todo if claims.claim(study, unit_name(settings, e, s))), None)
        if claimed is None:
            time.sleep(rungs.POLL)
            continue
        entrant, seed = claimed
        name = unit_name(settings, entrant, seed)
        beater.names.add(name)
        try:
            out = config.run_dir / "confirm" / settings.tag / entrant.slug / f"seed{seed}"
            result = _train(pair, entrant, seed, settings, out, heartbeat=beater.tick)
        except BaseException:
            claims.release(study, [name])
            raise
        claims.finish(study, name, {**result, **asdict(entrant)})
        beater.names.discard(name)
        done = len(units) - len(todo) + 1
        outcome = (f"failed ({result['error']})" if "error" in result else
                   f"test top-1 {result['last_acc']:.2f}% (best {result['best_acc']:.2f}% at epoch "
                   f"{result['best_epoch']}), {result['seconds']:.0f} s")
        log(f"confirm {done}/{len(units)}: {entrant.label} seed {seed}: {outcome}")
    return confirmed_table(study, settings)


def stored_settings(study: optuna.Study) -> ConfirmSettings | None:
    """The settings of the run's latest confirmation (None when never confirmed)."""
    saved = study.user_attrs.get(SETTINGS_ATTR)
    return ConfirmSettings(**saved) if isinstance(saved, dict) else None


CONFIRMED_COLUMNS = ("rank", "distiller", "kind", "trial", "rung", "seeds", "last_mean", "last_std", "best_mean",
                     "best_std", "best_epoch", "gain_kd", "noise_kd", "vs_kd", "gain_ce", "noise_ce", "vs_ce",
                     "best_reference", "gain_best", "noise_best", "vs_best", "failed")


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def pooled_std(groups: list[list[float]]) -> float:
    """The seed standard deviation pooled over groups: sqrt(sum (n_i - 1) s_i^2 / sum (n_i - 1)); NaN when no
    group has two values.

    >>> round(pooled_std([[1.0, 3.0], [10.0, 10.0, 13.0]]), 4)
    1.5811
    """
    dof = sum(len(g) - 1 for g in groups if len(g) > 1)
    if dof == 0:
        return math.nan
    ss = sum(sum((v - sum(g) / len(g)) ** 2 for v in g) for g in groups if len(g) > 1)
    return math.sqrt(ss / dof)


def verdict(gain: float, noise: float) -> str:
    """``beyond noise`` when ``|gain| > noise`` (noise = NOISE_Z standard errors), else ``within noise``."""
    if math.isnan(gain) or math.isnan(noise):
        return ""
    return "beyond noise" if abs(gain) > noise else "within noise"


def confirmed_table(study: optuna.Study, settings: ConfirmSettings | None = None) -> pd.DataFrame:
    """The confirmed results of the run (``CONFIRMED_COLUMNS``), winner first; empty when never confirmed.

    ``rank`` orders the rows by last-epoch mean (rows whose every seed failed come last, unranked)."""
    settings = settings or stored_settings(study)
    if settings is None:
        return pd.DataFrame(columns=list(CONFIRMED_COLUMNS))
    stored = claims.entries(study, f"{PREFIX}{settings.tag}:")
    by_label: dict[str, list[dict]] = {}
    for entry in stored.values():
        if entry.get("state") == claims.DONE:
            by_label.setdefault(entry["label"], []).append(entry)
    accs = {label: [e["last_acc"] for e in rows if "last_acc" in e] for label, rows in by_label.items()}
    sigma = pooled_std(list(accs.values()))
    rows = []
    for label, entries in by_label.items():
        last_mean, last_std = _mean_std(accs[label])
        best_mean, best_std = _mean_std([e["best_acc"] for e in entries if "best_acc" in e])
        epochs = [e["best_epoch"] for e in entries if "best_epoch" in e]
        first = entries[0]
        rows.append({"distiller": label, "kind": "reference" if first.get("genome") is None else "searched",
                     "trial": first.get("trial"), "rung": first.get("rung"), "seeds": len(accs[label]),
                     "last_mean": last_mean, "last_std": last_std, "best_mean": best_mean, "best_std": best_std,
                     "best_epoch": sum(epochs) / len(epochs) if epochs else math.nan,
                     "failed": len(entries) - len(accs[label])})
    df = pd.DataFrame(rows, columns=[c for c in CONFIRMED_COLUMNS if c != "rank"])
    hand = df[df.distiller.isin(HAND_MADE) & df.last_mean.notna()]
    strongest = str(hand.sort_values("last_mean", ascending=False).distiller.iloc[0]) if not hand.empty else ""
    df["best_reference"] = strongest
    for ref, column in (("KD", "kd"), ("CE-only", "ce"), (strongest, "best")):
        ref_row = df[df.distiller == ref]
        ref_mean = float(ref_row.last_mean.iloc[0]) if not ref_row.empty else math.nan
        ref_n = int(ref_row.seeds.iloc[0]) if not ref_row.empty else 0
        df[f"gain_{column}"] = df.last_mean - ref_mean
        df[f"noise_{column}"] = [NOISE_Z * sigma * math.sqrt(1 / n + 1 / ref_n) if n and ref_n else math.nan
                                 for n in df.seeds]
        df[f"vs_{column}"] = [verdict(g, n) if label != ref else ""
                              for g, n, label in zip(df[f"gain_{column}"], df[f"noise_{column}"], df.distiller)]
    df = df.astype({"last_mean": float, "best_mean": float}).sort_values(
        ["last_mean", "best_mean"], ascending=False, na_position="last")
    df.insert(0, "rank", [i + 1 if not math.isnan(m) else pd.NA for i, m in enumerate(df.last_mean)])
    df["rank"] = df["rank"].astype("Int64")
    df["trial"] = df["trial"].astype("Int64")
    df["rung"] = df["rung"].astype("Int64")
    return df[list(CONFIRMED_COLUMNS)].reset_index(drop=True)


def winner(table: pd.DataFrame) -> pd.Series | None:
    """The confirmed winner: the best last-epoch mean (None for an empty table)."""
    ranked = table[table["rank"].notna()]
    return None if ranked.empty else ranked.iloc[0]


class _CallableConfirm(types.ModuleType):
    """``kdzero.confirm`` names both this module and the public function ``kdzero.confirm(run, ...)``; importing
    the module rebinds the package attribute, so the module itself is callable and delegates to
    ``kdzero.api.confirm`` (imported at call time: this floor does not depend on the API above it)."""

    def __call__(self, run, **options) -> pd.DataFrame:
        from kdzero.api import confirm as confirm_run

        return confirm_run(run, **options)


sys.modules[__name__].__class__ = _CallableConfirm
