"""The one shape every model speaks: ``Features(feat, emb, logit)``.

Teacher and student never hand each other raw module outputs; they hand over these three views of one forward
pass, so a distiller can pick its knowledge input by name (``genome.input``) without knowing the architecture.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

KNOWLEDGE_INPUTS: tuple[str, ...] = ("feat", "emb", "logit")


class Features(NamedTuple):
    """One forward pass seen three ways.

    feat:  the last stage's feature map before pooling, (N, C, H, W)
    emb:   the pooled embedding that feeds the classifier, (N, D)
    logit: the classifier output, (N, K)

    A NamedTuple rather than a dataclass so that it passes through ``torch.func``/``vmap`` and
    ``torch.compile`` as a plain pytree.
    """

    feat: torch.Tensor
    emb: torch.Tensor
    logit: torch.Tensor

    def select(self, name: str) -> torch.Tensor:
        """The tensor for knowledge input ``name`` (one of feat, emb, logit)."""
        if name not in KNOWLEDGE_INPUTS:
            raise ValueError(f"unknown knowledge input {name!r}; valid: {', '.join(KNOWLEDGE_INPUTS)}")
        return getattr(self, name)

    def detach(self) -> Features:
        """A copy cut from the autograd graph (the teacher side of every loss)."""
        return Features(*(t.detach() for t in self))

    def to(self, *args, **kwargs) -> Features:
        """Move or cast all three tensors at once (``Tensor.to`` arguments)."""
        return Features(*(t.to(*args, **kwargs) for t in self))

    def for_loss(self) -> Features:
        """fp32, NCHW-contiguous copies (no copy where already so): what every loss expects, whatever precision
        (bf16 autocast) and memory format (channels_last) the forward ran in."""
        return Features(*(t.float().contiguous() for t in self))

    def index(self, idx: torch.Tensor | slice) -> Features:
        """The rows ``idx`` of each tensor (a mini-batch out of a cached full split)."""
        return Features(*(t[idx] for t in self))
