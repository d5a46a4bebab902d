"""kdzero: automated knowledge-distiller search for PyTorch.

The public surface (see DESIGN.md): ``Genome``, ``UnifiedLoss``, ``Features``, ``PRESETS`` and
``leaderboard``; models under ``kdzero.models``; ``search`` and ``replay`` for models and data held in Python
(``kdzero.api``).
"""
from __future__ import annotations

from kdzero.errors import GenomeError, KdzeroError
from kdzero.features import Features
from kdzero.genome import Genome, SearchSpace
from kdzero.loss import UnifiedLoss
from kdzero.presets import PRESETS
from kdzero.version import __version__


def leaderboard(run: str | None = None, *, storage: str | None = None, study: str | None = None, **kwargs):
    """The population of a search run as a pandas DataFrame (see ``kdzero.leaderboard``)."""
    from kdzero.leaderboard import load_leaderboard

    return load_leaderboard(run, storage=storage, study=study, **kwargs)


def search(teacher, student, train_data, test_data=None, **options):
    """Search distillers for a teacher and student held in Python (see ``kdzero.api.search``).

    Importing the ``kdzero.search`` package rebinds this name to the package, which is callable the same way."""
    from kdzero.api import search as run_search

    return run_search(teacher, student, train_data, test_data, **options)


def replay(run, rank: int = 1, **options):
    """Fully train a run's student with its K-th best genome (see ``kdzero.api.replay``)."""
    from kdzero.api import replay as run_replay

    return run_replay(run, rank, **options)


def confirm(run, **options):
    """Train a run's top genomes and the classical references for real over seeds; the confirmed table (see
    ``kdzero.api.confirm``)."""
    from kdzero.api import confirm as run_confirm

    return run_confirm(run, **options)


__all__ = [
    "PRESETS",
    "Features",
    "Genome",
    "GenomeError",
    "KdzeroError",
    "SearchSpace",
    "UnifiedLoss",
    "__version__",
    "confirm",
    "leaderboard",
    "replay",
    "search",
]
