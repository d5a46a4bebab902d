"""A search drawn to an image: score over trials with the best so far and the CE-only baseline, and how often
each op occurs among the best genomes. Needs the optional matplotlib (``kdzero[plot]``)."""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pandas as pd

from kdzero.errors import ConfigError, KdzeroError


def op_frequencies(genomes: list[str]) -> dict[str, Counter]:
    """How often each transform (empty slots not counted), distance and weighting occurs in ``genomes``."""
    from kdzero.genome import Genome

    counts = {"transforms": Counter(), "distances": Counter(), "weights": Counter()}
    for text in genomes:
        genome = Genome.parse(text)
        counts["transforms"].update(name for name in genome.transforms if name != "no")
        counts["distances"][genome.distance] += 1
        counts["weights"][genome.weight] += 1
    return counts


def _all_genomes(texts: list[str]) -> bool:
    """Whether every text is a distiller genome (a student-search run lists architecture texts instead)."""
    from kdzero.genome import Genome

    try:
        for text in texts:
            Genome.parse(text)
    except KdzeroError:
        return False
    return True


def plot(df_all: pd.DataFrame, path: str | Path, top: int = 10, baseline: dict | None = None,
         title: str = "search") -> Path:
    """Draw a search to a PNG (or any format matplotlib writes): (a) the score of every trial in trial order,
    complete trials as points with the best-so-far line, rejected and failed trials as marks on the x axis,
    the CE-only ``baseline`` as a dashed line; (b) how often each op occurs among the ``top`` best genomes
    (left out for a student-search run, whose rows are architectures rather than distillers).
    ``df_all`` is ``frame(study, include_all=True)``. Needs the optional matplotlib (``kdzero[plot]``)."""
    try:
        from matplotlib.figure import Figure
    except ModuleNotFoundError:
        raise KdzeroError("plotting needs matplotlib: pip install 'kdzero[plot]'") from None
    path = Path(path)
    ranked = df_all[df_all["rank"].notna()].sort_values("rank").head(top)
    distillers = _all_genomes([g for g in ranked.genome if g])
    fig = Figure(figsize=(12, 9 if distillers else 5.5), layout="constrained")
    grid = fig.add_gridspec(2, 3, height_ratios=(1.4, 1)) if distillers else fig.add_gridspec(1, 3)
    ax = fig.add_subplot(grid[0, :])
    trials = df_all.sort_values("trial")
    complete = trials[trials.state == "complete"]
    others = trials[trials.state != "complete"]
    if not complete.empty:
        best = complete.score.cummin()
        ax.plot(complete.trial, complete.score, "o", color="tab:blue", alpha=0.7, label="complete trial")
        ax.step(complete.trial, best, where="post", color="tab:green", linewidth=2, label="best so far")
        best_row = complete.loc[complete.score.idxmin()]
        ax.plot([best_row.trial], [best_row.score], "*", color="tab:green", markersize=16,
                label=f"best: #{best_row.trial} {best_row.genome} ({best_row.score:.4f})")
        upper = complete.score.quantile(0.95)
        low, high = min(best.min(), (baseline or {}).get("score") or math.inf), upper
        margin = (high - low) * 0.15 or 0.05
        ax.set_ylim(low - margin, high + margin)
        clipped = complete[complete.score > high + margin]
        if not clipped.empty:
            ax.plot(clipped.trial, [high + margin] * len(clipped), "^", color="tab:blue", clip_on=False,
                    label="score above the range")
    if baseline and baseline.get("score") is not None:
        ax.axhline(baseline["score"], color="tab:gray", linestyle="--", label="CE-only baseline")
    if not others.empty:
        colours = {"rejected": "tab:red", "failed": "black"}
        for state, rows in others.groupby("state"):
            ax.plot(rows.trial, [0.0] * len(rows), "x", color=colours.get(state, "tab:orange"), markersize=9,
                    mew=2, clip_on=False, transform=ax.get_xaxis_transform(), label=f"{state} ({len(rows)})")
    ax.set_xlabel("trial")
    ax.set_ylabel("proxy score (lower is better)" if distillers else "score: -DisWOT (lower is better)")
    ax.set_title(f"{title}: {len(complete)} complete, {len(others)} rejected or failed", loc="left")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=3, fontsize=9, frameon=False)

    counts = op_frequencies([g for g in ranked.genome if g]) if distillers else {}
    for column, (kind, counter) in enumerate(counts.items()):
        bars = fig.add_subplot(grid[1, column])
        items = counter.most_common()[::-1]
        bars.barh([name for name, _ in items], [n for _, n in items], height=0.6, color="tab:purple")
        bars.set_title(f"{kind} in the top {len(ranked)}", loc="left")
        bars.set_xlabel("genomes" if kind != "transforms" else "slots (empty ones not counted)")
        bars.xaxis.get_major_locator().set_params(integer=True)
        bars.grid(axis="x", alpha=0.3)
    try:
        fig.savefig(path, dpi=110)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot write plot {path}: {exc}") from None
    return path
