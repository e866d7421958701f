"""Markdown reports: a plain table, and one named section of a results file replaced in place.

The benchmarks and `lookalike evaluate-model --results FILE` both write their tables this way, so
a results file keeps one section per benchmark, each with the command that reproduces it.
"""

from __future__ import annotations

import os
import platform
import re
import time
from pathlib import Path
from typing import Sequence


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if models:
            cpu = models[0]
    except OSError:
        pass
    import psutil

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


def write_section(path: Path, name: str, title: str, body: str, command: str) -> None:
    """Replace (or append) the section `name` of the markdown file at `path`, keeping every other section."""
    path = Path(path)
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
