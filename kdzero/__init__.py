"""kdzero: automated knowledge-distiller search for PyTorch.

The public surface (see DESIGN.md): ``Genome``, ``UnifiedLoss``, ``Features``, ``PRESETS`` and
``leaderboard``; models under ``kdzero.models``.
"""
from __future__ import annotations

from kdzero.errors import GenomeError, KdzeroError
from kdzero.features import Features
from kdzero.genome import Genome, SearchSpace
from kdzero.loss import UnifiedLoss
from kdzero.presets import PRESETS

__version__ = "0.1.0"


def leaderboard(run: str | None = None, *, storage: str | None = None, study: str | None = None, **kwargs):
    """The population of a search run as a pandas DataFrame (see ``kdzero.leaderboard``)."""
    from kdzero.leaderboard import load_leaderboard

    return load_leaderboard(run, storage=storage, study=study, **kwargs)


__all__ = [
    "PRESETS",
    "Features",
    "Genome",
    "GenomeError",
    "KdzeroError",
    "SearchSpace",
    "UnifiedLoss",
    "__version__",
    "leaderboard",
]
