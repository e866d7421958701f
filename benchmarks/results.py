"""Shared helpers for benchmarks: timing, peak memory, and one section per benchmark in RESULTS.md.

Every benchmark measures against a baseline run in the same process (the machine is shared
and noisy), prints its table, and replaces only its own section of RESULTS.md.
"""

from __future__ import annotations

import os
import platform
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import psutil

from lookalike_cli import markdown
from lookalike_cli.markdown import machine_line, markdown_table  # noqa: F401  (benchmarks import them from here)

RESULTS_PATH = Path(__file__).resolve().parent / "RESULTS.md"


@dataclass
class Timer:
    seconds: float = 0.0
    peak_rss_mb: float = field(default=0.0)


@contextmanager
def timed() -> Iterator[Timer]:
    timer = Timer()
    start = time.perf_counter()
    try:
        yield timer
    finally:
        timer.seconds = time.perf_counter() - start
        timer.peak_rss_mb = peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident memory of this process and its finished children, in MiB."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024.0


def write_section(name: str, title: str, body: str, command: str, path: Path | None = None) -> None:
    """Replace (or append) the section `name` of RESULTS.md (or of `path`), keeping every other section."""
    path = path or RESULTS_PATH
    markdown.write_section(path, name, title, body, command)
    print(f"\n{title}\n{body}\n(written to {path})")
