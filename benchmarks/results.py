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


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if models:
            cpu = models[0]
    except OSError:
        pass
    memory_gib = psutil.virtual_memory().total / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {memory_gib:.0f} GiB RAM, Python {platform.python_version()}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def fmt(value: object) -> str:
        if isinstance(value, float):
            return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(name: str, title: str, body: str, command: str, path: Path | None = None) -> None:
    """Replace (or append) the section `name` of RESULTS.md (or of `path`), keeping every other section."""
    path = path or RESULTS_PATH
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    block = (
        f"<!-- section:{name} -->\n## {title}\n\n"
        f"Command: `{command}`  \nMachine: {machine_line()}  \nRun: {stamp}\n\n{body.strip()}\n"
        f"<!-- end:{name} -->"
    )
    text = path.read_text() if path.exists() else "# Benchmark results\n\nEach section is written by the benchmark named in its command.\n"
    pattern = re.compile(rf"<!-- section:{re.escape(name)} -->.*?<!-- end:{re.escape(name)} -->", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
    print(f"\n{title}\n{body}\n(written to {path})")
