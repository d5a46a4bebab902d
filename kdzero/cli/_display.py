"""Shared pieces of the command line: the rich consoles and small formatting helpers."""
from __future__ import annotations

from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def parse_shapes(text: str | None, option: str) -> dict[str, tuple[int, ...]] | None:
    """Read per-sample shapes written as 'feat=64x8x8,emb=64,logit=10'."""
    from kdzero.errors import ConfigError

    if not text:
        return None
    shapes: dict[str, tuple[int, ...]] = {}
    for part in text.split(","):
        name, _, dims = part.partition("=")
        name = name.strip()
        if name not in ("feat", "emb", "logit") or not dims:
            raise ConfigError(f"{option}: bad entry {part!r}; write e.g. feat=64x8x8,emb=64,logit=10")
        try:
            shapes[name] = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            raise ConfigError(f"{option}: dimensions of {name!r} must be integers like 64x8x8, got {dims!r}") from None
        if any(d <= 0 for d in shapes[name]):
            raise ConfigError(f"{option}: dimensions of {name!r} must be positive, got {dims!r}")
    return shapes
