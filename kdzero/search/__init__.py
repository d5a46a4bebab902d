"""Floor 4: the search. One Optuna study per run is the population store; samplers propose genomes.

Only this package and the floors above it import Optuna.
"""
import sys
import types

from kdzero.search.evolution import EvolutionSampler
from kdzero.search.ranker import Ranker, SurrogateRanker
from kdzero.search.samplers import SAMPLERS, create_sampler
from kdzero.search.space import SPACES, genome_from_params, genome_to_params, named_space

__all__ = ["SAMPLERS", "SPACES", "EvolutionSampler", "Ranker", "SurrogateRanker", "create_sampler",
           "genome_from_params", "genome_to_params", "named_space"]


class _CallableSearch(types.ModuleType):
    """``kdzero.search`` names both this package and the public function ``kdzero.search(teacher, student,
    data)``; importing the package rebinds the name, so the package itself is callable and delegates to
    ``kdzero.api.search`` (imported at call time: this floor does not depend on the API above it)."""

    def __call__(self, teacher, student, train_data, test_data=None, **options):
        from kdzero.api import search

        return search(teacher, student, train_data, test_data, **options)


sys.modules[__name__].__class__ = _CallableSearch
