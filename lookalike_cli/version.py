"""The package version, in a module of its own so any layer can name it without importing the package face (`lookalike_cli/__init__.py`, which reaches up to the API)."""

__version__ = "0.1.0"
