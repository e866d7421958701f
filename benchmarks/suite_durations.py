"""Where the test suite's time goes, before and after a change: two pytest logs compared.

    python -m pytest -n 2 --dist loadfile --durations=0 tests > before.txt 2>&1   # on the old commit
    python -m pytest -n 2 --dist loadfile --durations=0 tests > after.txt 2>&1    # on the new one
    python -m benchmarks.suite_durations before.txt after.txt [--wall-before S --wall-after S]

Sums pytest's per-phase durations (setup, call, teardown) per test file, prints the files that
cost most with the ratio after / before, and writes the section `test_suite` of RESULTS.md.
The two logs should come from runs in the same conditions (this machine is shared: give the
load averages with --note). Session fixtures are charged to the first test that asked for them,
so a file's setup includes any warehouse it happened to build.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

from benchmarks.results import RESULTS_PATH, markdown_table, write_section

DURATION = re.compile(r"^\s*([\d.]+)s (setup|call|teardown)\s+(\S+?)::")
SUMMARY = re.compile(r"^=*\s*(\d+ (?:passed|failed).*?) in ([\d.]+)s")


def per_file(log: Path) -> tuple[dict[str, dict[str, float]], str, float]:
    """{file: {phase: seconds}}, pytest's summary line and its wall seconds."""
    files: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    summary, wall = "", 0.0
    for line in log.read_text().splitlines():
        if match := DURATION.match(line):
            seconds, phase, path = match.groups()
            files[path][phase] += float(seconds)
        elif match := SUMMARY.search(line):
            summary, wall = match.group(1), float(match.group(2))
    if not files:
        raise SystemExit(f"{log}: no `--durations=0` lines (run pytest with --durations=0)")
    return files, summary, wall


def total(phases: dict[str, float]) -> float:
    return sum(phases.values())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--note", default="", help="conditions of the two runs (load average, commits)")
    parser.add_argument("--results", type=Path, default=RESULTS_PATH)
    args = parser.parse_args(argv)

    before, before_summary, before_wall = per_file(args.before)
    after, after_summary, after_wall = per_file(args.after)
    names = sorted(set(before) | set(after), key=lambda name: -max(total(before.get(name, {})), total(after.get(name, {}))))
    rows = []
    for name in names[:args.top]:
        old, new = before.get(name, {}), after.get(name, {})
        rows.append([name, old.get("setup", 0.0), total(old), new.get("setup", 0.0), total(new),
                     total(new) / total(old) if total(old) else ""])
    old_sum, new_sum = sum(map(total, before.values())), sum(map(total, after.values()))
    rows.append(["**all files** (sum of test durations)", "", old_sum, "", new_sum, new_sum / old_sum])
    rows.append(["**wall** (pytest's own clock, 2 workers)", "", before_wall, "", after_wall,
                 after_wall / before_wall if before_wall else ""])
    body = (f"Per test file: seconds of setup and of setup + call + teardown (pytest `--durations=0`, "
            f"summed over the file's tests), before and after, and the ratio after / before (lower is faster). "
            f"Before: {before_summary}. After: {after_summary}. {args.note}\n\n"
            + markdown_table(["file", "setup s before", "total s before", "setup s after", "total s after", "after / before"], rows))
    command = f"python -m benchmarks.suite_durations {args.before} {args.after}"
    write_section("test_suite", "Test suite: where the time goes", body, command, path=args.results)


if __name__ == "__main__":
    main()
