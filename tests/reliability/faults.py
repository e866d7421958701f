"""Faults done for real: the `lookalike` CLI in its own process, SIGKILLed at a chosen point, run under a
file-size limit (a full disk), beside another process holding a file; and what to compare afterwards.

Nothing here mocks DuckDB, dbt, ONNX Runtime or FAISS: the command runs exactly as a user's would, and
the checks read the files back with DuckDB.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import duckdb

from lookalike_cli.files import TEMP_NAME
from lookalike_cli.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CLI = "from lookalike_cli.cli.main import main; main()"
# A kill point not reached in this long is a test failure (the command hung or printed something else).
KILL_POINT_TIMEOUT = 300


def cli_command(settings: Settings, *args: str, code: str = CLI) -> list[str]:
    """`code` run with the warehouse options then `args` as its arguments: the CLI, or a script that runs
    several CLI calls in one process (spark_steps)."""
    return [sys.executable, "-c", code, "--db", str(settings.db_path), "--serving-db", str(settings.serving_db_path),
            "--onnx-dir", str(settings.onnx_dir), "--index-dir", str(settings.index_dir), *args]


def cli_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.update(extra or {})
    return env


def file_size_limit(limit_bytes: int):
    """preexec_fn: no file this process (or dbt, its child) writes may grow past `limit_bytes`, as on a full
    disk. SIGXFSZ ignored, so the write fails with EFBIG instead of killing the process."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return apply


@dataclass
class Finished:
    returncode: int
    output: str

    @property
    def lines(self) -> list[str]:
        return self.output.splitlines()


def run(settings: Settings, *args: str, env: dict[str, str] | None = None, limit_bytes: int | None = None,
        timeout: float = 600) -> Finished:
    """The CLI run to its end in a subprocess: exit code and stdout + stderr together."""
    done = subprocess.run(cli_command(settings, *args), env=cli_environment(env), capture_output=True, text=True,
                          timeout=timeout, cwd=settings.db_path.parent,
                          preexec_fn=file_size_limit(limit_bytes) if limit_bytes else None)
    return Finished(done.returncode, done.stdout + done.stderr)


def assert_one_line_error(finished: Finished, *fragments: str) -> str:
    """Exit 1, no traceback, the last line the one `Error: ...` line; returns it."""
    assert finished.returncode == 1, f"exit {finished.returncode}:\n{finished.output[-3000:]}"
    assert "Traceback" not in finished.output, finished.output[-3000:]
    errors = [line for line in finished.lines if line.startswith("Error: ")]
    assert errors == finished.lines[-1:], finished.output[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def assert_succeeds(settings: Settings, *args: str, env: dict[str, str] | None = None) -> Finished:
    finished = run(settings, *args, env=env)
    assert finished.returncode == 0, f"`lookalike {' '.join(args)}` exit {finished.returncode}:\n{finished.output[-3000:]}"
    return finished


@dataclass
class Killed:
    """What a kill saw: where it struck, the output until then, the child processes alive at that moment."""
    point: str
    output: list[str] = field(default_factory=list)
    children: list[int] = field(default_factory=list)


def children_of(pid: int) -> list[int]:
    """Every descendant of `pid` (dbt started by lookalike, its own workers)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def kill_at(settings: Settings, *args: str, line: str | None = None, file_glob: str | None = None,
            delay: float = 0.0, env: dict[str, str] | None = None, code: str = CLI, armed_by: str | None = None) -> Killed:
    """Start the CLI, SIGKILL it (that process alone, as `kill -9 <pid>` does) `delay` s after an output line
    matches the regex `line` or a file matching `file_glob` (relative to the warehouse folder) appears; with
    `armed_by`, only once an output line has matched that regex (a script's earlier steps make the file too).
    Fails if the command finished before the kill point: the point must be inside the command's writing."""
    assert (line is None) != (file_glob is None)
    process = subprocess.Popen(cli_command(settings, *args, code=code), env=cli_environment(env), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, cwd=settings.db_path.parent)
    lines: queue.Queue = queue.Queue()
    seen: list[str] = []

    def read() -> None:
        for text in process.stdout:
            lines.put(text.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    pattern = re.compile(line) if line else None
    armed = re.compile(armed_by) if armed_by else None
    deadline = time.monotonic() + KILL_POINT_TIMEOUT
    hit = None
    try:
        while hit is None:
            assert time.monotonic() < deadline, f"kill point {line or file_glob} not reached:\n" + "\n".join(seen[-40:])
            if file_glob and armed is None:
                matches = list(settings.db_path.parent.glob(file_glob))
                if matches:
                    hit = matches[0].name
                    break
            try:
                text = lines.get(timeout=0.005 if file_glob else 0.5)
            except queue.Empty:
                continue
            assert text is not None, (f"`lookalike {' '.join(args)}` ended (exit {process.wait()}) before the kill point "
                                      f"{line or file_glob}:\n" + "\n".join(seen[-40:]))
            seen.append(text)
            if armed is not None and armed.search(text):
                armed = None
            elif armed is None and pattern and pattern.search(text):
                hit = text
        if delay:
            time.sleep(delay)
        children = children_of(process.pid)
        assert process.poll() is None, f"`lookalike {' '.join(args)}` ended before the kill at {hit!r}"
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return Killed(point=hit, output=seen, children=children)


def kill_inside(settings: Settings, *args: str, point: dict, env: dict[str, str] | None = None) -> Killed:
    """The CLI run under tests/reliability/kill_points.py, which SIGKILLs the process itself at `point` (a precise
    point inside a write of milliseconds). Fails unless it died there: killed by SIGKILL, its last line the kill
    point's."""
    from tests.reliability.kill_points import CODE, ENV, MARKER

    done = subprocess.run(cli_command(settings, *args, code=CODE), env=cli_environment({**(env or {}), ENV: json.dumps(point)}),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=KILL_POINT_TIMEOUT,
                          cwd=settings.db_path.parent)
    lines = done.stdout.splitlines()
    assert done.returncode == -signal.SIGKILL and lines and lines[-1].startswith(MARKER), (
        f"`lookalike {' '.join(args)}` exit {done.returncode}, kill point {point} not reached:\n" + "\n".join(lines[-40:]))
    return Killed(point=lines[-1][len(MARKER):], output=lines)


def wait_gone(pids: list[int], seconds: float = 15) -> list[int]:
    """The pids still running after `seconds` (an orphaned dbt would keep writing and holding the lock)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = [pid for pid in pids if alive(pid)]
        if not left:
            return []
        time.sleep(0.1)
    return [pid for pid in pids if alive(pid)]


# --- what must survive ------------------------------------------------------------------------------

def database_state(path: Path) -> dict[str, tuple]:
    """Every table of a DuckDB file, opened read-only: (rows, hash of all rows). Reading it proves it readable."""
    with duckdb.connect(str(path), read_only=True) as con:
        tables = con.execute("select schema_name, table_name from duckdb_tables() where not temporary "
                             "order by all").fetchall()
        return {f"{schema}.{table}": tuple(con.execute(
            f'select count(*), coalesce(sum(hash(t)::hugeint), 0) from "{schema}"."{table}" t').fetchall()[0])
            for schema, table in tables}


def folder_state(folder: Path) -> dict[str, str]:
    """sha256 of every file in a folder except temp files (models, indexes, pictures)."""
    if not folder.exists():
        return {}
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.iterdir()) if path.is_file() and not TEMP_NAME.match(path.name)}


def reports_dir(settings: Settings) -> Path:
    """Where `lookalike ads bid` draws its curve by default."""
    return settings.db_path.parent / "reports"


def published_state(settings: Settings) -> dict:
    """What a user has: the warehouse's tables, the serving file's tables, every model, index and report file."""
    serving = settings.serving_db_path
    return {
        "warehouse": database_state(settings.db_path),
        "serving": database_state(serving) if serving.exists() else None,
        "models": folder_state(settings.onnx_dir),
        "indexes": folder_state(settings.index_dir),
        "reports": folder_state(reports_dir(settings)),
    }


def changed(before: dict, after: dict) -> list[str]:
    """What was published before and is no longer there as it was (new tables and files do not count: a
    killed writer may leave its staging, which the next run must clear; `stray_relations` checks that)."""
    differences = []
    for section, items in before.items():
        now = after.get(section)
        if items is None:
            continue
        if now is None:
            differences.append(f"{section}: gone")
            continue
        differences += [f"{section}: {name} {value} -> {now.get(name)}" for name, value in items.items() if now.get(name) != value]
    return differences


def stray_files(settings: Settings) -> list[str]:
    """Temp files left in any folder lookalike writes (warehouse folder, models, indexes, reach curves)."""
    folders = {settings.db_path.parent, settings.onnx_dir, settings.index_dir, reports_dir(settings),
               settings.serving_db_path.with_name(f"{settings.serving_db_path.stem}_reach_curves")}
    return sorted(str(path) for folder in folders if folder.is_dir() for path in folder.iterdir()
                  if TEMP_NAME.match(path.name) or path.name.endswith(".duckdb.wal") and not path.with_suffix("").exists())


def stray_relations(settings: Settings) -> list[str]:
    """Half-built relations a killed writer may leave in the warehouse (dbt's temp/backup, replace_tables' __new,
    generate-data's __generating_ staging)."""
    with duckdb.connect(str(settings.db_path), read_only=True) as con:
        return [name for (name,) in con.execute(
            "select table_schema || '.' || table_name from information_schema.tables "
            "where table_name like '%\\_\\_dbt\\_tmp%' escape '\\' or table_name like '%\\_\\_dbt\\_backup%' escape '\\' "
            "or table_name like '%\\_\\_new' escape '\\' or table_name like '\\_\\_generating\\_%' escape '\\'").fetchall()]


def kill_and_rerun(settings: Settings, command: list[str], kill_point: dict,
                   after_kill: Callable[[Killed], None] | None = None) -> Killed:
    """The kill case: SIGKILL `lookalike <command>` at `kill_point` (kill_at's `line`, `file_glob`, `delay`, plus
    `compare`: the sections of published_state the killed step writes, default all; the steps of a command that
    finished before the kill point may rightly have changed the others), or `inside`: a kill_points point, where the
    process kills itself (`kill_inside`). Then: its children died with it, what was published is as it was and
    readable, `after_kill` (the caller's checks of what the kill left) passes, the same command run again succeeds,
    and leaves no temp file or half-built table."""
    kill_point = dict(kill_point)
    compared = kill_point.pop("compare", None)
    before = published_state(settings)

    inside = kill_point.pop("inside", None)
    killed = kill_inside(settings, *command, point=inside) if inside else kill_at(settings, *command, **kill_point)

    if "file_glob" in kill_point:  # killed mid-swap: its temp file is there for the next run to clear
        assert list(settings.db_path.parent.glob(kill_point["file_glob"])), killed.point
    assert wait_gone(killed.children) == [], f"processes outlived the killed command (an orphaned dbt?): {killed.children}"
    now = published_state(settings)
    sections = compared or tuple(before)
    assert changed({k: before[k] for k in sections}, {k: now[k] for k in sections}) == [], f"killed at {killed.point!r}"
    if after_kill:
        after_kill(killed)
    assert_succeeds(settings, *command)
    assert stray_files(settings) == [], f"temp files left after the rerun (killed at {killed.point!r})"
    assert stray_relations(settings) == [], "half-built tables left in the warehouse after the rerun"
    after = published_state(settings)  # readable after the rerun too
    assert after["warehouse"].keys() >= before["warehouse"].keys()
    return killed


# Spark flows: several CLI steps in one process (tests/reliability/spark_steps.py), one JVM.
SPARK_ENV = {"LOOKALIKE_SPARK_SHUFFLE_PARTITIONS": "2"}  # small data: one shuffle partition per core
STEPS = "from tests.reliability.spark_steps import main; main()"


def spark_environment(settings) -> dict[str, str]:
    """SPARK_ENV, and a temp folder of the test's own, where the Python workers' temp files can be counted."""
    temp = settings.db_path.parent / "tmp"
    temp.mkdir(exist_ok=True)
    return {**SPARK_ENV, "TMPDIR": str(temp)}


def spark_run(settings, steps: list, kill_point: dict) -> Killed:
    """`steps` (spark_steps) in one process, one JVM, SIGKILLed at `kill_point` inside the last step; the JVM must
    die with it, and every step before the last must have finished."""
    killed = kill_at(settings, json.dumps(steps), code=STEPS, env=spark_environment(settings),
                     armed_by=f"^START {len(steps) - 1}$", **kill_point)
    assert wait_gone(killed.children) == [], f"Spark's JVM outlived the killed command: {killed.children}"
    finished = [line for line in killed.output if line.startswith("STEP ")]
    assert len(finished) == len(steps) - 1, "\n".join(killed.output[-40:])
    return killed


def spark_leftovers(settings) -> list[str]:
    """Staging a finished Spark command must not leave: pid-named folders in the Spark dir, `__incoming` /
    `__previous` table folders, temp files beside the warehouse."""
    left = [path.name for path in settings.spark_dir.iterdir() if TEMP_NAME.match(path.name)]
    left += [str(path) for path in (settings.spark_dir / "warehouse").glob("*.db/*__*")]
    return left + stray_files(settings)
