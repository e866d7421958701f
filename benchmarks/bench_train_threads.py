"""`lookalike train --threads N`: one torch thread vs two, with OpenMP's threads spinning or sleeping when idle.

Issue 20 asks training to use both cores or show why not. torch's intra-op pool is OpenMP (libgomp), whose
idle threads spin by default; on a machine whose cores other processes also want, a spinning thread holds a
core the thread doing the work then waits for. The CLI sets `OMP_WAIT_POLICY=PASSIVE` unless the user set
it (lookalike_cli/cli/main.py); this benchmark runs the same training in new CLI processes, interleaved:

- `threads 1` (the default),
- `threads 2, OMP_WAIT_POLICY=PASSIVE` (what `--threads 2` now does),
- `threads 2, OMP_WAIT_POLICY=ACTIVE` (what it did before: libgomp's spinning default).

Each arm reports the last epoch's pairs/s (the command's own line) and the process's wall and CPU seconds;
ratios are against `threads 1` in the same round. The machine's load is printed: on an idle machine two
threads may gain where this shared one shows none.

Run (generates and builds --customers into --workdir once, then reuses it):

    python -m benchmarks.bench_train_threads --customers 20000 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.results import machine_line, markdown_table, write_section

ARMS = (
    ("threads 1 (default)", 1, None),
    ("threads 2, OMP_WAIT_POLICY=PASSIVE (the CLI's default now)", 2, "PASSIVE"),
    ("threads 2, OMP_WAIT_POLICY=ACTIVE (libgomp's spinning, before)", 2, "ACTIVE"),
)
PAIRS_PER_SECOND = re.compile(r"\(([\d,]+) pairs/s\)")


def lookalike(db: Path, *args: str, env: dict | None = None) -> tuple[float, float, str]:
    """(wall s, CPU s of the child, output) of one `lookalike` process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lookalike_cli.cli.main", "--db", str(db), *args],
                          capture_output=True, text=True, env=env or os.environ.copy())
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"lookalike {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2, help="Interleaved rounds of every arm (best of them is reported).")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_train_threads"))
    args = parser.parse_args()

    db = args.workdir / f"w{args.customers}.duckdb"
    args.workdir.mkdir(parents=True, exist_ok=True)
    if not db.exists():
        lookalike(db, "generate-data", "--customers", str(args.customers), "--days", "365", "--seed", "7")
        lookalike(db, "build")
    load_before = os.getloadavg()[0]
    runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name, _, _ in ARMS}
    for _ in range(args.rounds):
        for name, threads, policy in ARMS:
            env = os.environ.copy()
            env.pop("OMP_WAIT_POLICY", None)
            if policy:
                env["OMP_WAIT_POLICY"] = policy
            wall, cpu, output = lookalike(db, "train", "--name", f"threads_{threads}_{policy or 'default'}",
                                          "--epochs", str(args.epochs), "--seed", "0", "--threads", str(threads), env=env)
            rates = PAIRS_PER_SECOND.findall(output)
            if not rates:
                raise SystemExit(f"no pairs/s line in the output of train --threads {threads}:\n{output[-2000:]}")
            runs[name].append((float(rates[-1].replace(",", "")), wall, cpu))
            print(f"{name}: {runs[name][-1][0]:,.0f} pairs/s, wall {wall:.1f}s, CPU {cpu:.1f}s", flush=True)
    load_after = os.getloadavg()[0]

    base = max(rate for rate, _, _ in runs[ARMS[0][0]])
    rows = []
    for name, _, _ in ARMS:
        rate, wall, cpu = max(runs[name])  # the best round: the machine's quietest moment for that arm
        rows.append([name, f"{rate:,.0f}", f"{rate / base:.2f}", f"{wall:.1f}", f"{cpu:.1f}"])
    body = (f"{args.customers:,} generated customers (seed 7), `lookalike train --epochs {args.epochs} --seed 0 --threads N`, "
            f"each arm a new CLI process, {args.rounds} interleaved rounds, best round per arm.\n\n"
            + markdown_table(["arm", "pairs/s (last epoch)", "vs threads 1", "wall s", "CPU s"], rows)
            + f"\n\n{machine_line()}. Load average (1 min) {load_before:.1f} at start, {load_after:.1f} at the end: "
              "the cores were shared with other jobs, which is when spinning threads cost most (the ratios move with "
              "the load; the default stays one thread).")
    write_section("train_threads", "Training threads: one vs two, OpenMP threads spinning or sleeping", body,
                  f"python -m benchmarks.bench_train_threads --customers {args.customers} --rounds {args.rounds}")


if __name__ == "__main__":
    main()
