"""One progress type for every long step: a callable that takes one line of text.

The library reports through it and never prints on its own; the CLI passes click.echo (or
stderr), notebooks pass print, tests and benchmarks pass `quiet`.
"""

from __future__ import annotations

from typing import Callable

Progress = Callable[[str], None]


def quiet(message: str) -> None:
    """Progress that goes nowhere."""
