"""The package version, in a module of its own so that any floor can read it without importing ``kdzero``'s
public surface (which reaches up to the API)."""

__version__ = "0.1.0"
