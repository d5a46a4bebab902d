"""The frozen teacher's outputs for every (view, image) of a split, computed once and kept.

During a search every candidate distiller is trained against the same teacher on the same augmented views, so
the teacher's forward passes are pure repetition. ``TeacherCache`` runs them once (eval mode, no grad), stores
``Features`` of shape (V, N, ...) in fp16 in the run directory, and serves mini-batches by (view, index) with
``get``. Its key hashes everything that determines the numbers (teacher weights, images, normalisation, views,
dtype), so a changed teacher or dataset rebuilds the file instead of silently reusing stale outputs.

File format (``FORMAT`` 1), in ``cache_dir``, named after the split: ``teacher-<split>.pt`` is a ``torch.save``
dict ``{"format", "key", "feat", "emb", "logit"}`` with tensors (V, N, ...) in the cache dtype;
``teacher-<split>.json`` is a sidecar with the key and a human-readable description (shapes, size, views).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from kdzero.data import AugmentedViews
from kdzero.errors import ConfigError
from kdzero.features import Features

FORMAT = 1
"""Version of the on-disk layout; part of the key, so a layout change rebuilds old caches."""


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


class TeacherCache:
    """Teacher ``Features`` for all (view, index) pairs of an ``AugmentedViews``, resident on one device.

    Build or reuse one with ``TeacherCache.build_or_load``; draw a batch with ``get(view_ids, indices)``, which
    gives float32 tensors equal (to cache precision) to ``teacher(views.batch(view_ids, indices))``.
    """

    def __init__(self, feat: torch.Tensor, emb: torch.Tensor, logit: torch.Tensor, key: str,
                 device: torch.device | str | None = None) -> None:
        self.feat, self.emb, self.logit = feat, emb, logit
        self.key = key
        self.device = torch.device(device) if device is not None else feat.device

    @property
    def num_views(self) -> int:
        """Number of views V."""
        return self.logit.shape[0]

    @property
    def num_samples(self) -> int:
        """Number of images N per view."""
        return self.logit.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes held by the three cached tensors."""
        return sum(t.numel() * t.element_size() for t in (self.feat, self.emb, self.logit))

    def get(self, view_ids: torch.Tensor | int, indices: torch.Tensor,
            device: torch.device | str | None = None) -> Features:
        """Teacher Features of pairs (view_ids[i], indices[i]) as float32 on ``device`` (default: the
        training device the cache was built for); an int ``view_ids`` applies to all indices."""
        store = self.logit.device
        idx = torch.as_tensor(indices, dtype=torch.long).to(store)
        vid = torch.as_tensor(view_ids, dtype=torch.long).to(store).expand_as(idx)
        out = Features(self.feat[vid, idx], self.emb[vid, idx], self.logit[vid, idx])
        return out.to(device=device if device is not None else self.device, dtype=torch.float32)

    @staticmethod
    def cache_key(teacher: nn.Module, views: AugmentedViews, dtype: torch.dtype,
                  key_extra: Mapping | None = None) -> str:
        """Hex digest of everything that determines the cached numbers: the teacher's class and weights, the
        split's name, rows, pixels, labels and normalisation, the views, the dtype and ``key_extra``."""
        split = views.split
        parts = {
            "format": FORMAT,
            "teacher": f"{type(teacher).__module__}.{type(teacher).__qualname__}",
            "weights": _state_digest(teacher),
            "dataset": split.name,
            "indices": "all" if split.indices is None else _tensor_digest(split.indices),
            "content": _tensor_digest(split.images) + _tensor_digest(split.labels),
            "mean": split.mean,
            "std": split.std,
            "views": views.describe(),
            "dtype": str(dtype),
            "extra": dict(key_extra or {}),
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()

    @classmethod
    def build_or_load(
        cls,
        teacher: nn.Module,
        views: AugmentedViews,
        cache_dir: str | os.PathLike,
        key_extra: Mapping | None = None,
        *,
        dtype: torch.dtype = torch.float16,
        batch_size: int = 256,
        device: torch.device | str | None = None,
        log: Callable[[str], None] = _stderr,
        progress: Callable[[int, int], None] | None = None,
    ) -> TeacherCache:
        """The cache for ``teacher`` on ``views``: loaded from ``cache_dir`` when its key matches, otherwise
        computed (teacher in eval mode, no grad, ``batch_size`` images at a time) and saved, replacing any
        older cache of the same split.

        ``device`` is the training device (default: the split's); the cache stays resident there when it
        fits in half its free memory, else in host memory. ``log`` receives the estimated size before a
        build; ``progress(done, total)`` is called after every teacher batch.
        """
        if not dtype.is_floating_point:
            raise ConfigError(f"teacher cache dtype must be a floating type, got {dtype}")
        key = cls.cache_key(teacher, views, dtype, key_extra)
        device = torch.device(device) if device is not None else views.split.device
        stem = Path(cache_dir) / f"teacher-{_slug(views.split.name)}"
        pt, sidecar = stem.with_suffix(".pt"), stem.with_suffix(".json")
        loaded = _load(pt, sidecar, key, views)
        if loaded is not None:
            return cls(*loaded, key=key, device=device).to_fitting(device, log)

        was_training = teacher.training
        teacher.eval()
        try:
            tensors = _compute(teacher, views, dtype, batch_size, device, stem, log, progress)
        finally:
            teacher.train(was_training)
        cache = cls(*tensors, key=key, device=device)
        _save(cache, pt, sidecar, views, teacher, key_extra)
        return cache

    def to_fitting(self, device: torch.device, log: Callable[[str], None] = _stderr) -> TeacherCache:
        """Move the cached tensors onto ``device`` if they fit in half its free memory (CUDA), else keep them
        in host memory; ``get`` returns batches on ``device`` either way."""
        target = device if _fits(self.nbytes, device) else torch.device("cpu")
        if target != device:
            log(f"teacher cache: {self.nbytes / 2**20:.1f} MB does not fit on {device}; kept in host memory")
        self.feat, self.emb, self.logit = (t.to(target) for t in (self.feat, self.emb, self.logit))
        self.device = device
        return self


def _compute(teacher: nn.Module, views: AugmentedViews, dtype: torch.dtype, batch_size: int,
             device: torch.device, stem: Path, log: Callable[[str], None],
             progress: Callable[[int, int], None] | None) -> tuple[torch.Tensor, ...]:
    """Run the teacher over every view and image into preallocated (V, N, ...) tensors."""
    param = next(teacher.parameters(), None)
    run_on = param.device if param is not None else views.split.device
    n, v_count = len(views.split), views.num_views
    with torch.no_grad():
        probe = _forward(teacher, views.batch(0, torch.zeros(1, dtype=torch.long)).to(run_on))
        shapes = [tuple(t.shape[1:]) for t in probe]
        itemsize = torch.empty(0, dtype=dtype).element_size()
        nbytes = v_count * n * itemsize * sum(torch.Size(s).numel() for s in shapes)
        store = device if _fits(nbytes, device) else torch.device("cpu")
        log(f"teacher cache: building {v_count} views x {n} images of {views.split.name} "
            f"(feat {shapes[0]}, emb {shapes[1]}, logit {shapes[2]}) = {nbytes / 2**20:.1f} MB {dtype} "
            f"on {store} -> {stem}.pt")
        out = [torch.empty((v_count, n, *s), dtype=dtype, device=store) for s in shapes]
        limit = torch.finfo(dtype).max  # a huge fp32 logit becomes the fp16 maximum, not inf
        done, total = 0, v_count * n
        for v in range(v_count):
            for chunk in torch.arange(n).split(batch_size):
                result = _forward(teacher, views.batch(v, chunk).to(run_on))
                for buf, t in zip(out, result):
                    buf[v, chunk.to(store)] = t.clamp(-limit, limit).to(store, dtype)
                done += chunk.numel()
                if progress is not None:
                    progress(done, total)
    return tuple(out)


def _forward(teacher: nn.Module, x: torch.Tensor) -> Features:
    result = teacher(x)
    if not isinstance(result, Features):
        raise TypeError(f"teacher {type(teacher).__name__} returned {type(result).__name__}, not Features; "
                        "wrap it with a kdzero.models adapter")
    return result


def _load(pt: Path, sidecar: Path, key: str, views: AugmentedViews) -> tuple[torch.Tensor, ...] | None:
    """The cached tensors when both files exist and carry ``key`` with the expected shape, else None."""
    try:
        if json.loads(sidecar.read_text()).get("key") != key or not pt.is_file():
            return None
        data = torch.load(pt, map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError):
        return None  # missing, partial or foreign files: rebuilding is the fix
    tensors = tuple(data.get(name) for name in ("feat", "emb", "logit"))
    expected = (views.num_views, len(views.split))
    if data.get("key") != key or any(t is None or tuple(t.shape[:2]) != expected for t in tensors):
        return None
    return tensors


def _save(cache: TeacherCache, pt: Path, sidecar: Path, views: AugmentedViews, teacher: nn.Module,
          key_extra: Mapping | None) -> None:
    """Write the tensors, then the sidecar (its presence means the .pt is complete); both atomically."""
    pt.parent.mkdir(parents=True, exist_ok=True)
    tmp = pt.with_suffix(".pt.tmp")
    torch.save({"format": FORMAT, "key": cache.key, "feat": cache.feat, "emb": cache.emb,
                "logit": cache.logit}, tmp)
    os.replace(tmp, pt)
    meta = {
        "format": FORMAT,
        "key": cache.key,
        "split": views.split.name,
        "subset": views.split.indices is not None,
        "teacher": type(teacher).__name__,
        "views": views.describe(),
        "num_samples": cache.num_samples,
        "dtype": str(cache.logit.dtype),
        "shapes": {name: list(getattr(cache, name).shape) for name in ("feat", "emb", "logit")},
        "size_mb": round(cache.nbytes / 2**20, 3),
        "key_extra": dict(key_extra or {}),
    }
    tmp = sidecar.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=2, default=str))
    os.replace(tmp, sidecar)


def _fits(nbytes: int, device: torch.device) -> bool:
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= free // 2


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")[-80:] or "split"


def _state_digest(module: nn.Module) -> str:
    h = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        h.update(name.encode())
        if isinstance(value, torch.Tensor):
            h.update(f"{value.dtype}{tuple(value.shape)}".encode())
            h.update(_tensor_digest(value).encode())
        else:
            h.update(repr(value).encode())
    return h.hexdigest()


def _tensor_digest(t: torch.Tensor) -> str:
    data = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    return hashlib.blake2b(data, digest_size=16).hexdigest()
