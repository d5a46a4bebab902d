"""Floor 4: the search. One Optuna study per run is the population store; samplers propose genomes.

Only this package and the floors above it import Optuna.
"""
from kdzero.search.evolution import EvolutionSampler
from kdzero.search.ranker import Ranker, SurrogateRanker
from kdzero.search.samplers import SAMPLERS, create_sampler
from kdzero.search.space import SPACES, genome_from_params, genome_to_params, named_space

__all__ = ["SAMPLERS", "SPACES", "EvolutionSampler", "Ranker", "SurrogateRanker", "create_sampler",
           "genome_from_params", "genome_to_params", "named_space"]
