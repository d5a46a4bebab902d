"""Guided selection: before paying for a child, a ranker picks the more promising of two genomes.

A ranker is any callable ``ranker(a, b, history) -> Genome`` returning ``a`` or ``b``, where ``history`` is the
list of (genome, score) pairs evaluated so far, lower score better whatever the study's direction (the sampler
negates a maximised study's values before handing them over). The default is a surrogate fit on that history; a
user can pass their own, an LLM-backed one included, to ``EvolutionSampler(ranker=...)``. Make it picklable (a
class instance or a module-level function, not a lambda or closure) if the sampler is to be pickled or copied.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from sklearn.linear_model import Ridge

from kdzero.genome import GENES, Genome

Ranker = Callable[[Genome, Genome, Sequence[tuple[Genome, float]]], Genome]
MIN_HISTORY = 8


def _one_hot(genomes: Sequence[Genome], vocabulary: dict[tuple[str, str], int]) -> np.ndarray:
    rows = np.zeros((len(genomes), len(vocabulary)))
    for i, genome in enumerate(genomes):
        for gene in GENES:
            column = vocabulary.get((gene, str(genome.gene(gene))))
            if column is not None:
                rows[i, column] = 1.0
        for name in genome.transforms:  # the op's presence anywhere, whatever its slot
            column = vocabulary.get(("any_transform", name))
            if column is not None:
                rows[i, column] = 1.0
    return rows


class SurrogateRanker:
    """Ridge regression of the score on one-hot genes (and transform presence), refit on every call.

    With fewer than ``MIN_HISTORY`` results it has no opinion and keeps the first genome (the mutated child),
    so early iterations behave like plain evolution.
    """

    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha = alpha

    def predict(self, genomes: Sequence[Genome], history: Sequence[tuple[Genome, float]]) -> np.ndarray | None:
        """Predicted scores of ``genomes`` (lower is better), or None without enough history."""
        finite = [(g, s) for g, s in history if np.isfinite(s)]
        if len(finite) < MIN_HISTORY:
            return None
        vocabulary: dict[tuple[str, str], int] = {}
        for genome, _ in finite:
            for gene in GENES:
                vocabulary.setdefault((gene, str(genome.gene(gene))), len(vocabulary))
            for name in genome.transforms:
                vocabulary.setdefault(("any_transform", name), len(vocabulary))
        x = _one_hot([g for g, _ in finite], vocabulary)
        y = np.array([s for _, s in finite])
        model = Ridge(alpha=self.alpha).fit(x, y)
        return model.predict(_one_hot(genomes, vocabulary))

    def __call__(self, a: Genome, b: Genome, history: Sequence[tuple[Genome, float]]) -> Genome:
        predicted = self.predict([a, b], history)
        if predicted is None:
            return a
        return a if predicted[0] <= predicted[1] else b
