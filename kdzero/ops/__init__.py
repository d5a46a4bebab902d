"""Floor 1: pure tensor functions the genome is built from, one registry per kind.

``TRANSFORMS`` (41), ``DISTANCES`` (8), ``WEIGHTS`` (5) map names to :class:`Op` entries carrying each op's
formula, applicable ranks and shape rule. Nothing here knows about models, genomes or Optuna.
"""
from kdzero.ops import distances, transforms, weights  # noqa: F401 - importing registers the ops
from kdzero.ops._registry import DISTANCES, TRANSFORMS, WEIGHTS, Op, OpContext, Registry

INPUTS: tuple[str, ...] = ("feat", "emb", "logit")
INPUT_RANKS: dict[str, int] = {"feat": 4, "emb": 2, "logit": 2}
TEMPERATURES: tuple[int, ...] = (1, 4, 8, 16)
MAGNITUDES: tuple[float, ...] = (100, 50, 25, 10, 5, 1, 0.1, 0.01)

__all__ = ["DISTANCES", "INPUTS", "INPUT_RANKS", "MAGNITUDES", "TEMPERATURES", "TRANSFORMS", "WEIGHTS", "Op",
           "OpContext", "Registry"]
