"""Load a checkpoint file into a model, whatever common layout it was saved in, and say clearly when it does not fit.

Recognised layouts (after ``torch.load``):

* RepDistiller / mdistiller: ``{'model': state_dict, 'epoch': ..., 'best_acc': ...}``;
* akamaster/pytorch_resnet_cifar10: ``{'state_dict': state_dict, 'best_prec1': float}``, keys ``module.*``;
* ``{'state_dict': state_dict, ...}`` (Lightning and many training scripts);
* a plain state dict.

Keys lose any ``module.`` (DataParallel) and ``_orig_mod.`` (``torch.compile``) prefix. Files are always read with
``weights_only=True``: that unpickler accepts tensors, containers and plain Python numbers, which covers all four
layouts (akamaster's ``best_prec1`` is a plain ``float``, so it needs no exception), and it cannot run code hidden in
a malicious pickle. ``weights_only=False`` exists for files that pickle whole objects and that the caller trusts.
"""
from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdzero.errors import CheckpointError
from kdzero.models.adapters import HookedFeatureModel

_PREFIXES = ("module.", "_orig_mod.")
_SHOWN = 5  # keys listed per category in an error message


@dataclass
class CheckpointInfo:
    """What ``load_checkpoint`` found: the layout, keys it could not match (``strict=False``) and extra entries.

    ``meta`` holds the file's non-weight entries (``best_prec1``, ``epoch``, ...), for logs and sanity checks.
    """

    layout: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _strip(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return key


def load_failure(err: Exception, weights_only: bool = True) -> str:
    """Why ``torch.load`` failed on a file, in a few words, for a one-line error that also names the file.

    A damaged file fails in many ways, depending on its format and on where it was cut: a truncated zip
    checkpoint raises RuntimeError, a truncated legacy one (``_use_new_zipfile_serialization=False``, the format
    of akamaster's ``.th`` files) struct.error, IndexError or EOFError, a text file UnpicklingError. Callers
    therefore catch every ``Exception`` around ``torch.load`` and report it through this function.
    """
    text = str(err).strip()
    detail = text.splitlines()[0] if text else type(err).__name__
    if isinstance(err, pickle.UnpicklingError) and weights_only and "weights_only" in text:
        return "it pickles Python objects besides tensors; re-save its state_dict() or, if you trust the file, " \
               "pass weights_only=False"
    if isinstance(err, OSError):
        return err.strerror or detail
    return f"damaged, truncated or not a PyTorch file ({type(err).__name__}: {detail})"


def read_checkpoint(path: str | Path, weights_only: bool = True) -> tuple[dict[str, torch.Tensor], CheckpointInfo]:
    """The state dict in the file at ``path`` (prefixes stripped) and its layout and extra entries.

    Raises ``CheckpointError("cannot read checkpoint PATH: ...")`` for a missing, truncated or non-torch file, and
    for a file holding no recognisable state dict.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as err:  # torch.load fails on a damaged file in many ways: see load_failure
        raise CheckpointError(f"cannot read checkpoint {path}: {load_failure(err, weights_only)}") from None
    if _is_state_dict(obj):
        layout, state, meta = "state_dict", obj, {}
    elif isinstance(obj, Mapping) and _is_state_dict(obj.get("model")):
        layout, state = "repdistiller", obj["model"]
        meta = {k: v for k, v in obj.items() if k not in ("model", "optimizer")}
    elif isinstance(obj, Mapping) and _is_state_dict(obj.get("state_dict")):
        layout = "akamaster" if "best_prec1" in obj else "wrapped_state_dict"
        state = obj["state_dict"]
        meta = {k: v for k, v in obj.items() if k not in ("state_dict", "optimizer", "optimizer_states")}
    else:
        found = ", ".join(map(str, list(obj)[:8])) if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: no state dict in it (found: {found or 'nothing'})")
    stripped = {_strip(k): v for k, v in state.items()}
    return stripped, CheckpointInfo(layout=layout, meta=meta)


def _listing(label: str, items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN]) + (f", ... (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else "")
    return f"  {label} ({len(items)}): {shown}"


def _target(model: nn.Module) -> nn.Module:
    return model.model if isinstance(model, HookedFeatureModel) else model


def load_checkpoint(
    model: nn.Module, path: str | Path, strict: bool = True, weights_only: bool = True
) -> CheckpointInfo:
    """Load the weights in ``path`` into ``model`` (in place) and return what was found.

    ``strict`` (the default) refuses missing or unexpected keys; tensors of the wrong shape are refused always.
    Every refusal is a ``CheckpointError`` whose first line names the file and the model, followed by one line per
    category (missing, unexpected, mis-shaped) with the first few keys; a classifier of another width is reported
    as "checkpoint has 10 classes, model has 100". A wrapped torchvision model loads torchvision's own keys.
    """
    state, info = read_checkpoint(path, weights_only=weights_only)
    target = _target(model)
    own = target.state_dict()
    name = type(target).__name__
    # BatchNorm fills in a missing num_batches_tracked itself, so old (PyTorch < 0.4.1) files are not incomplete.
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    misshaped = [k for k in state if k in own and state[k].shape != own[k].shape]
    if misshaped or (strict and (missing or unexpected)):
        lines = [f"checkpoint {path} does not fit {name}:"]
        linear = [n for n, m in target.named_modules() if isinstance(m, nn.Linear)]
        head = f"{linear[-1]}.weight" if linear else None
        if head in misshaped and state[head].dim() == 2 and state[head].shape[1] == own[head].shape[1]:
            lines[0] = (f"checkpoint has {state[head].shape[0]} classes, model has {own[head].shape[0]}: {path} "
                        f"(build the model with num_classes={state[head].shape[0]})")
        elif len(missing) > len(own) // 2:
            lines[0] += f" most of its weights are absent ({len(own) - len(missing)} of {len(own)} keys match);" \
                        " is it a checkpoint of another architecture?"
        if missing and strict:
            lines.append(_listing("missing", missing))
        if unexpected and strict:
            lines.append(_listing("unexpected", unexpected))
        if misshaped:
            lines.append(_listing("mis-shaped", [
                f"{k} checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in misshaped
            ]))
        raise CheckpointError("\n".join(lines))
    target.load_state_dict(state, strict=False)
    info.missing, info.unexpected = missing, unexpected
    return info
