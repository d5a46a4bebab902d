"""Code that runs only inside an exported file: how its ``Distiller`` reads its inputs.

These are ordinary functions so that they are linted and read like the rest of kdzero; ``SourceSet`` copies
their source into the exported file, which imports no kdzero.
"""
from __future__ import annotations

import torch


def _select(x, name: str) -> torch.Tensor:
    """The tensor ``x`` itself, or its attribute ``name`` (feat, emb or logit) for a features object."""
    return x if isinstance(x, torch.Tensor) else getattr(x, name)


def _logits(x) -> torch.Tensor:
    """The logits of a features object; the weighting needs them even though the distilled input is another."""
    if isinstance(x, torch.Tensor):
        raise TypeError("this distiller's weighting reads the logits: pass objects with .feat, .emb and .logit")
    return x.logit
