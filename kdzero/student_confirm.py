"""A student search's verdict: its best students distilled for real, beside the student a user would pick by hand.

DisWOT ranks students at initialisation, without training, so its order is a guess. ``confirm_students`` trains,
with KD from the searched teacher, over several seeds: the top-K students by DisWOT, the **hand pick** (the
largest standard CIFAR ResNet of the zoo within the budget: what a user would otherwise choose) and the **largest
student** the search scored within the budget (the "just take the biggest" rule). Each (student, seed) is one claim
in the run's study (``kdzero.search.claims``), stored when done, so a killed confirmation resumes without repeating
a finished training. ``student_verdict`` reports mean +- std of last-epoch test top-1 per student and the gain over
the hand pick, "within noise" when it does not exceed two pooled standard errors (the distiller confirmation's
rule, ``kdzero.confirm``).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import optuna
import pandas as pd
import torch

from kdzero.confirm import NOISE_Z, ConfirmSettings, Entrant, Pair, _mean_std, _train, pooled_std, verdict
from kdzero.data import DatasetSplits
from kdzero.diswot import Budget, model_cost
from kdzero.models import create_model
from kdzero.search import claims, rungs

PREFIX = "kdzero_student_confirm:"
SETTINGS_ATTR = "kdzero_student_confirm_settings"
HAND_PICKS = ("resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110")
"""The standard CIFAR ResNets a user picks a student from by hand, smallest first."""
VERDICT_COLUMNS = ("rank", "student", "role", "params", "flops", "diswot", "seeds", "last_mean", "last_std",
                   "best_mean", "gain_hand", "noise_hand", "vs_hand")

Log = Callable[[str], None]


@dataclass(frozen=True)
class StudentEntrant:
    """One student of the verdict: its model name (zoo name or architecture text) and why it is there."""

    student: str
    role: str  # "DisWOT #k", "hand pick", "largest", or several joined by ", "
    params: int
    flops: int
    diswot: float | None = None


def hand_pick(budget: Budget, data: DatasetSplits) -> StudentEntrant | None:
    """The largest of ``HAND_PICKS`` within ``budget`` for this data (None when even resnet8 does not fit)."""
    chosen = None
    for name in HAND_PICKS:
        cost = model_cost(create_model(name, num_classes=data.num_classes, in_chans=data.in_chans), data.in_chans,
                          data.image_size)
        if budget.fits(cost):
            chosen = StudentEntrant(name, "hand pick", cost.params, cost.flops)
    return chosen


def student_entrants(board: pd.DataFrame, top: int, hand: StudentEntrant | None) -> list[StudentEntrant]:
    """The top-``top`` students of a student-search leaderboard (``student_frame``), the hand pick and the
    largest scored student, each once (roles merged when one student holds several)."""
    chosen: dict[str, StudentEntrant] = {}

    def add(entrant: StudentEntrant) -> None:
        known = chosen.get(entrant.student)
        chosen[entrant.student] = entrant if known is None else StudentEntrant(
            known.student, f"{known.role}, {entrant.role}", known.params, known.flops,
            known.diswot if known.diswot is not None else entrant.diswot)

    for row in board.head(top).itertuples(index=False):
        add(StudentEntrant(row.student, f"DisWOT #{row.rank}", int(row.params), int(row.flops), float(row.diswot)))
    if hand is not None:
        add(hand)
    if len(board):
        largest = board.sort_values(["params", "rank"], ascending=[False, True]).iloc[0]
        add(StudentEntrant(largest.student, "largest", int(largest.params), int(largest.flops),
                           float(largest.diswot)))
    return list(chosen.values())


def _unit(settings: ConfirmSettings, student: str, seed: int) -> str:
    return f"{PREFIX}{settings.tag}:{student}:{seed}"


def confirm_students(study: optuna.Study, entrants: list[StudentEntrant], data: DatasetSplits,
                     teacher: torch.nn.Module, settings: ConfirmSettings, run_dir: Path, device: str = "cpu",
                     log: Log = print) -> pd.DataFrame:
    """Distil every entrant with KD for ``settings.seeds`` seeds (claims: resumable, never twice), then return
    ``student_verdict``."""
    study.set_user_attr(SETTINGS_ATTR, asdict(settings))
    units = [(e, seed) for e in entrants for seed in range(settings.seeds)]
    beater = claims.Beater(study)
    while True:
        stored = claims.entries(study, f"{PREFIX}{settings.tag}:")
        todo = [(e, s) for e, s in units if stored.get(_unit(settings, e.student, s), {}).get("state") != claims.DONE]
        if not todo:
            break
        claimed = next(((e, s) for e, s in todo if claims.claim(study, _unit(settings, e.student, s))), None)
        if claimed is None:
            time.sleep(rungs.POLL)
            continue
        entrant, seed = claimed
        name = _unit(settings, entrant.student, seed)
        beater.names.add(name)
        pair = Pair(data=data, teacher=teacher, student=entrant.student, device=device)
        kd = Entrant(label=entrant.student, method="kd")
        try:
            result = _train(pair, kd, seed, settings, run_dir / "confirm" / settings.tag / kd.slug / f"seed{seed}")
        except BaseException:
            claims.release(study, [name])
            raise
        claims.finish(study, name, {**result, **asdict(entrant)})
        beater.names.discard(name)
        outcome = (f"failed ({result['error']})" if "error" in result else
                   f"test top-1 {result['last_acc']:.2f}%, {result['seconds']:.0f} s")
        log(f"confirm {len(units) - len(todo) + 1}/{len(units)}: {entrant.student} ({entrant.role}) seed {seed}: "
            f"{outcome}")
    return student_verdict(study, settings)


def student_verdict(study: optuna.Study, settings: ConfirmSettings) -> pd.DataFrame:
    """The confirmed students (``VERDICT_COLUMNS``), best last-epoch mean first, with the gain over the hand pick
    and whether it exceeds the seed noise; empty before any confirmation."""
    by_student: dict[str, list[dict]] = {}
    for entry in claims.entries(study, f"{PREFIX}{settings.tag}:").values():
        if entry.get("state") == claims.DONE:
            by_student.setdefault(entry["student"], []).append(entry)
    accs = {s: [e["last_acc"] for e in rows if "last_acc" in e] for s, rows in by_student.items()}
    sigma = pooled_std(list(accs.values()))
    rows = []
    for student, entries in by_student.items():
        first = entries[0]
        last_mean, last_std = _mean_std(accs[student])
        rows.append({"student": student, "role": first["role"], "params": first["params"], "flops": first["flops"],
                     "diswot": first.get("diswot"), "seeds": len(accs[student]), "last_mean": last_mean,
                     "last_std": last_std,
                     "best_mean": _mean_std([e["best_acc"] for e in entries if "best_acc" in e])[0]})
    df = pd.DataFrame(rows, columns=[c for c in VERDICT_COLUMNS if c not in ("rank", "gain_hand", "noise_hand",
                                                                               "vs_hand")])
    hand = df[df.role.str.contains("hand pick")]
    hand_mean = float(hand.last_mean.iloc[0]) if not hand.empty else math.nan
    hand_n = int(hand.seeds.iloc[0]) if not hand.empty else 0
    df["gain_hand"] = df.last_mean - hand_mean
    df["noise_hand"] = [NOISE_Z * sigma * math.sqrt(1 / n + 1 / hand_n) if n and hand_n else math.nan
                        for n in df.seeds]
    df["vs_hand"] = [verdict(g, n) if "hand pick" not in role else ""
                     for g, n, role in zip(df.gain_hand, df.noise_hand, df.role)]
    df = df.astype({"last_mean": float}).sort_values("last_mean", ascending=False, na_position="last")
    df.insert(0, "rank", pd.array(range(1, len(df) + 1), dtype="Int64"))
    return df[list(VERDICT_COLUMNS)].reset_index(drop=True)


def stored_verdict(study: optuna.Study) -> pd.DataFrame:
    """The verdict of the study's latest student confirmation (empty when never confirmed)."""
    saved = study.user_attrs.get(SETTINGS_ATTR)
    if not isinstance(saved, dict):
        return pd.DataFrame(columns=list(VERDICT_COLUMNS))
    return student_verdict(study, ConfirmSettings(**saved))
