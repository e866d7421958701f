"""Run dbt against this project with the same database paths as the CLI."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

from lookalike_cli.errors import LookalikeError
from lookalike_cli.settings import Settings
from lookalike_cli.warehouse.profile import is_session_target

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
# dbt logs its own crash as "12:00:00  Traceback (most recent call last):".
TRACEBACK_START = re.compile(r"^(\d\d:\d\d:\d\d\s+)?Traceback \(most recent call last\):")


def dbt_executable() -> list[str]:
    """How to start dbt: the `dbt` script beside this interpreter (the venv's), else dbt's module with this interpreter.

    Never a `dbt` found first on PATH: that one may belong to another environment with another
    adapter version, or be missing when lookalike was installed without activating its venv.
    """
    beside = Path(sys.executable).with_name("dbt")
    if beside.exists():
        return [str(beside)]
    try:
        import dbt.cli.main  # noqa: F401
    except ImportError as exc:
        raise LookalikeError("dbt is not installed in this environment: `pip install lookalike` installs dbt-core and dbt-duckdb.") from exc
    return [sys.executable, "-m", "dbt.cli.main"]


def dbt_command(settings: Settings, args: Sequence[str]) -> list[str]:
    args = list(args)
    command = [*dbt_executable(), *args]
    # dbt subcommands that touch the project need both dirs; `--version` etc. do not.
    if args and not args[0].startswith("-"):
        if "--project-dir" not in args:
            command += ["--project-dir", str(settings.dbt_project_dir)]
        if "--profiles-dir" not in args:
            command += ["--profiles-dir", str(settings.profiles_dir)]
    return command


def failure_summary(lines: Sequence[str]) -> str:
    """dbt's own end-of-run summary of what failed (the lines after 'Completed with ...')."""
    clean = [ANSI_ESCAPE.sub("", line).rstrip() for line in lines]
    for index, line in enumerate(clean):
        if "Completed with" in line and "error" in line:
            body = [re.sub(r"^\d\d:\d\d:\d\d\s+", "", l) for l in clean[index + 1:]]
            return "\n".join(l for l in body if l.strip() and not l.strip().startswith("Done."))[:4000]
    errors = [line for line in clean if "error" in line.lower()]
    return "\n".join((errors or clean)[-20:])


def dbt_environment(settings: Settings) -> dict[str, str]:
    """settings.env() plus LOOKALIKE_MODEL_READY, which enables the scoring model once a customer model exists."""
    # The one look this layer takes at the model layer: whether a manifest exists (no torch, no ONNX Runtime).
    from lookalike_cli.model.manifest import customer_manifests

    env = settings.env()
    env.setdefault("LOOKALIKE_MODEL_READY", "true" if customer_manifests(settings.onnx_dir) else "false")
    return env


def run_dbt(
    settings: Settings,
    args: Sequence[str],
    echo: Callable[[str], None] | None = None,
) -> list[str]:
    """Run dbt, streaming its output to `echo` (stdout by default); return the output lines.

    On failure raise LookalikeError carrying dbt's summary of the failed models and tests,
    so the message names the table, column and test that failed.
    """
    echo = echo or (lambda line: print(line, flush=True))
    if is_session_target(target_of(args), settings):
        return run_dbt_in_process(settings, args, echo)
    wait_for_warehouse(settings, args)
    lines: list[str] = []
    with subprocess.Popen(
        dbt_command(settings, args),
        env=dbt_environment(settings),
        cwd=str(settings.dbt_project_dir),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=die_with_parent,
    ) as process:
        assert process.stdout is not None
        # dbt's own crash traceback (it dies writing target/ on a full disk) is held back until the end:
        # shown when dbt failed for a reason of its own, replaced by one line when the machine is to blame.
        crash: list[str] = []
        for line in process.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            if crash or TRACEBACK_START.match(ANSI_ESCAPE.sub("", line)):
                crash.append(line)
            else:
                echo(line)
        returncode = process.wait()
    failure = environment_failure(settings, args, lines) if returncode != 0 else None
    if failure is None:
        for line in crash:
            echo(line)
    if returncode != 0:
        raise failure or LookalikeError(f"`dbt {' '.join(args)}` failed (exit {returncode}):\n{failure_summary(lines)}")
    return lines


# dbt subcommands that open the warehouse for writing (ls, parse, compile, docs only read the project).
WRITING_COMMANDS = {"build", "run", "seed", "snapshot", "test", "run-operation"}


def wait_for_warehouse(settings: Settings, args: Sequence[str]) -> None:
    """Take turns with another writer of the warehouse before starting dbt, as every other command does
    (connection.connect waits for the lock), instead of letting dbt fail at once on it."""
    if args and args[0] in WRITING_COMMANDS and target_of(args) in (None, "duckdb") and Path(settings.db_path).exists():
        from lookalike_cli.warehouse.connection import connect

        connect(settings.db_path).close()


def die_with_parent() -> None:
    """In the dbt child, before exec: ask Linux to SIGKILL it when the lookalike process dies.

    Without it a `kill -9` of lookalike leaves dbt running on its own, still writing the warehouse and
    holding its lock, so the next command waits for a job nobody is watching."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def environment_failure(settings: Settings, args: Sequence[str], lines: Sequence[str]) -> LookalikeError | None:
    """A dbt run that failed for the machine's reason, not the project's: one line saying what to do,
    instead of dbt's summary (which, for these, is a DuckDB traceback)."""
    from lookalike_cli.files import DISK_FULL_MESSAGES, disk_full_error

    text = "\n".join(ANSI_ESCAPE.sub("", line) for line in lines)
    lowered = text.lower()
    for message in DISK_FULL_MESSAGES:
        if message in lowered:
            return disk_full_error(OSError(message), f"the warehouse {settings.db_path} or dbt's state beside it "
                                                     f"(during `dbt {args[0] if args else ''}`)")
    if "could not set lock on file" in lowered:
        return LookalikeError(
            f"{settings.db_path} is locked by another process, so `dbt {args[0] if args else ''}` could not write it. DuckDB "
            "allows one writer or many readers: close the other connection (a BI tool, a notebook, another lookalike "
            "command) and run the command again."
        )
    return None


def target_of(args: Sequence[str]) -> str | None:
    """The profile target named by `--target NAME` / `-t NAME` / `--target=NAME` (None = the default)."""
    args = list(args)
    for position, arg in enumerate(args):
        if arg in ("--target", "-t") and position + 1 < len(args):
            return args[position + 1]
        if arg.startswith("--target="):
            return arg.split("=", 1)[1]
    return None


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_dbt_in_process(settings: Settings, args: Sequence[str], echo: Callable[[str], None]) -> list[str]:
    """dbt in this process, sharing its SparkSession (dbt-spark `method: session`).

    A local Spark metastore (Derby) admits one JVM at a time, so dbt in a child process could
    not open it while this process holds a session (tests, notebooks, `--engine spark` steps).
    dbt's own console output is silenced; its messages go through `echo` like the subprocess's.
    """
    from dbt.cli.main import dbtRunner

    # The one look this layer takes at the Spark engine: dbt-spark's `method: session` runs in the
    # SparkSession this process holds, so start it (from the same profile target) before dbt does.
    from lookalike_cli.spark.session import spark_session

    spark_session(settings, target_of(args), progress=echo)
    lines: list[str] = []

    def on_event(event) -> None:
        if event.info.level in ("info", "warn", "error") and event.info.msg:
            line = ANSI_ESCAPE.sub("", str(event.info.msg))
            lines.append(line)
            echo(line)

    command = dbt_command(settings, args)[len(dbt_executable()):]
    if "--log-level" not in command:
        command += ["--log-level", "none"]
    if "--log-level-file" not in command:
        command += ["--log-level-file", "debug"]  # dbt.log in DBT_LOG_PATH, as with the subprocess
    with environment(dbt_environment(settings)):
        result = dbtRunner(callbacks=[on_event]).invoke(command)
    if not result.success:
        detail = failure_summary(lines) if lines else str(result.exception)
        raise LookalikeError(f"`dbt {' '.join(args)}` failed:\n{detail}")
    return lines


def scaffold_project(folder: Path) -> list[Path]:
    """Copy the bundled dbt project (models, macros, seeds, tests, the scoring Python model, profiles.yml) into folder.

    Refuses a folder that already holds a dbt project, so nothing of the user's is overwritten.
    """
    from lookalike_cli.settings import BUNDLED_DBT_PROJECT_DIR

    folder = Path(folder).expanduser().resolve()
    if (folder / "dbt_project.yml").exists():
        raise LookalikeError(f"{folder} already holds a dbt project (dbt_project.yml); choose an empty or new folder.")
    folder.mkdir(parents=True, exist_ok=True)
    copied = []
    for source in sorted(BUNDLED_DBT_PROJECT_DIR.rglob("*")):
        relative = source.relative_to(BUNDLED_DBT_PROJECT_DIR)
        if source.is_dir() or relative.parts[0] in ("target", "logs", "dbt_packages") or "__pycache__" in relative.parts:
            continue
        destination = folder / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)
        copied.append(destination)
    return copied
