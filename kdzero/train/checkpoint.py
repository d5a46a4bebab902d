"""What a training run keeps in its folder, and the checks before it continues from there.

Checkpoints and ``results.json`` are written through a temporary file and renamed, so an interrupted write never
leaves a truncated file; ``last.pt`` is read back with a clear error when damaged, and a resume is refused when
the saved run had another schedule or data order (``_check_resumable``; the fields that only change speed, in
``_RESUME_FREE``, may differ). Run folders are named with ``_slug``.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from kdzero.errors import CheckpointError, ConfigError
from kdzero.models.checkpoint import load_failure
from kdzero.train.config import TrainConfig


def _save(obj: Any, path: Path) -> None:
    """torch.save through a temporary file, so an interrupted write never leaves a truncated checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _write_json(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _load_last(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load fails on a damaged file in many ways: see load_failure
        raise CheckpointError(f"cannot resume from {path}: {load_failure(err)}; delete it to start afresh") from None
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise CheckpointError(f"cannot resume from {path}: not a kdzero training checkpoint")
    return state


_RESUME_FREE = ("device", "eval_every", "amp", "channels_last")


def _check_resumable(state: dict[str, Any], config: TrainConfig, path: Path) -> None:
    """Refuse to resume a run whose schedule or data order would differ from the saved one."""
    saved = state.get("config", {})
    now = asdict(config)
    differ = [k for k in now if k not in _RESUME_FREE and k in saved and _plain(saved[k]) != _plain(now[k])]
    if differ:
        shown = ", ".join(f"{k} {saved[k]!r} -> {now[k]!r}" for k in differ)
        raise ConfigError(f"cannot resume {path}: the run was started with other settings ({shown}); use the "
                          "same settings, another --out, or drop --resume")
    if state["epoch"] > config.epochs:
        raise ConfigError(f"cannot resume {path}: it has already trained {state['epoch']} epochs, more than "
                          f"{config.epochs}")


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.replace("imagefolder:", "")).strip("_") or "data"
