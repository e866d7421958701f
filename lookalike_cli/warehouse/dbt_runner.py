"""Run dbt against this project with the same database paths as the CLI."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

from lookalike_cli.errors import LookalikeError
from lookalike_cli.settings import Settings
from lookalike_cli.warehouse.profile import is_session_target

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
# dbt logs its own crash as "12:00:00  Traceback (most recent call last):".
TRACEBACK_START = re.compile(r"^(\d\d:\d\d:\d\d\s+)?Traceback \(most recent call last\):")
# dbt's first line once it has accepted its arguments. Before it come only the complaints about an argument dbt
# refused ("The YAML provided in the --vars argument is not valid.", click's "Usage: dbt build ..." block): held
# back, since the one line lookalike prints says the same.
RUNNING_LINE = "Running with dbt="


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


# The first line of a node's error names the node again ("Runtime Error in model x (path)"): the line says it once.
NODE_ERROR_HEADER = re.compile(r"^\s*(Compilation|Runtime|Database|Parsing|Dependency)? ?Error in \w+ \S+( \(.*\))?\s*$")
MAX_REASON_CHARS = 400


def failure_line(settings: Settings, args: Sequence[str], lines: Sequence[str], started: float) -> str:
    """A failed dbt run in one line: the first node that failed (from the run_results.json this run wrote) and
    why, how many more failed, and where dbt's full log is; dbt's own last error line when it wrote no results
    (its arguments were refused, the project did not parse)."""
    env = dbt_environment(settings)
    log = Path(env["DBT_LOG_PATH"]) / "dbt.log"
    failed = failed_nodes(Path(env["DBT_TARGET_PATH"]) / "run_results.json", started)
    command = f"`dbt {args[0]}`" if args else "dbt"
    if failed:
        kind, name, status, reason = failed[0]
        compiled = next((line.split("compiled code at ", 1)[1].strip() for line in map(clean_line, lines)
                         if "compiled code at " in line and line.rstrip().endswith(f"/{name}.sql")), None)
        if kind == "test" and status == "fail":
            what = f"test {name} failed ({reason}): the rows its SQL selects are the problem" + (f" ({compiled})" if compiled else "")
        else:
            what = f"{kind} {name} failed: {reason}"
        more = f" ({len(failed) - 1} more failed)" if len(failed) > 1 else ""
        return f"{command} stopped: {what}{more}. Fix that and run the command again; dbt's full log: {log}"
    return f"{command} failed: {last_error_line(lines)} dbt's full log: {log}"


def failed_nodes(run_results: Path, started: float) -> list[tuple[str, str, str, str]]:
    """(resource type, name, status, reason) of every node that errored or failed, if this run wrote the file."""
    import json

    try:
        if run_results.stat().st_mtime < started:
            return []  # a previous run's results: this one stopped before running any node
        results = json.loads(run_results.read_text())["results"]
    except (OSError, ValueError, KeyError):
        return []
    failed = []
    for result in results:
        if result.get("status") in ("error", "fail", "runtime error"):
            kind, _, name = result["unique_id"].split(".")[:3]
            failed.append((kind, name, result["status"], node_reason(result.get("message") or "")))
    return failed


def node_reason(message: str) -> str:
    """The message of a failed node, header and SQL excerpt left out, on one line."""
    body = message.splitlines()
    if body and NODE_ERROR_HEADER.match(body[0]):
        body = body[1:]
    kept = []
    for line in body:
        if not line.strip():
            if kept:
                break  # what follows a blank line is the SQL excerpt or the macro stack
            continue
        kept.append(line.strip())
    reason = " ".join(kept).rstrip(".") or "no message"
    return reason if len(reason) <= MAX_REASON_CHARS else reason[:MAX_REASON_CHARS] + " ..."


def clean_line(line: str) -> str:
    return re.sub(r"^\d\d:\d\d:\d\d\s+", "", ANSI_ESCAPE.sub("", line)).rstrip()


def last_error_line(lines: Sequence[str]) -> str:
    """dbt's last line mentioning an error, joined with its neighbour when one of them ends in a colon
    ("Encountered an error:" then "Parsing Error ...")."""
    clean = [line.strip() for line in map(clean_line, lines) if line.strip()]
    for index in range(len(clean) - 1, -1, -1):
        if "error" in clean[index].lower():
            text = clean[index].removeprefix("Error: ")
            if index > 0 and clean[index - 1].endswith(":"):
                text = f"{clean[index - 1]} {text}"
            elif text.endswith(":") and index + 1 < len(clean):
                text = f"{text} {clean[index + 1]}"
            return text.rstrip(".") + "."
    return (clean[-1].rstrip(".") + ".") if clean else "no output."


PROJECT_MARKER = "lookalike_project_dir"  # beside dbt's partial_parse.msgpack: the project that wrote it


def dbt_environment(settings: Settings) -> dict[str, str]:
    """settings.env() plus LOOKALIKE_MODEL_READY, which enables the scoring model once a customer model exists."""
    # The one look this layer takes at the model layer: whether a manifest exists (no torch, no ONNX Runtime).
    from lookalike_cli.model.manifest import customer_manifests

    env = settings.env()
    env.setdefault("LOOKALIKE_MODEL_READY", "true" if customer_manifests(settings.onnx_dir) else "false")
    forget_another_projects_parse(Path(env["DBT_TARGET_PATH"]), settings.dbt_project_dir)
    return env


def forget_another_projects_parse(target: Path, project_dir: Path) -> None:
    """dbt's partial parse state lives in the warehouse's target folder and holds absolute paths (a seed's CSV
    is read from the path parsed). When the project now lives elsewhere (the package reinstalled in another
    environment, a project from `lookalike init`), dbt keeps the old paths: seeds fail with "No files
    found". The state is dropped then, so dbt parses in full once."""
    marker = target / PROJECT_MARKER
    current = str(Path(project_dir).resolve())
    try:
        if marker.read_text() == current:
            return
    except OSError:
        pass
    try:
        (target / "partial_parse.msgpack").unlink(missing_ok=True)
        target.mkdir(parents=True, exist_ok=True)
        marker.write_text(current)
    except OSError:
        pass  # a full or read-only disk: dbt, which writes the same folder, says so in its own words


def run_dbt(
    settings: Settings,
    args: Sequence[str],
    echo: Callable[[str], None] | None = None,
) -> list[str]:
    """Run dbt, streaming its output to `echo` (stdout by default); return the output lines.

    On failure raise LookalikeError in one line naming the first model or test that failed and why
    (dbt's own output has streamed to `echo` by then, and stays in its log file, which the line names).
    """
    echo = echo or (lambda line: print(line, flush=True))
    check_vars(args)
    if is_session_target(target_of(args), settings):
        return run_dbt_in_process(settings, args, echo)
    wait_for_warehouse(settings, args)
    lines: list[str] = []
    started = time.time()
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
        before_running: list[str] | None = []  # None once dbt has accepted its arguments
        for line in process.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            if before_running is not None:
                if RUNNING_LINE not in line:
                    before_running.append(line)
                    continue
                for held in before_running:
                    echo(held)
                before_running = None
            if crash or TRACEBACK_START.match(ANSI_ESCAPE.sub("", line)):
                crash.append(line)
            else:
                echo(line)
        returncode = process.wait()
    if returncode == 0:  # commands that never print the running line (`dbt --version`)
        for line in before_running or []:
            echo(line)
    elif any(TRACEBACK_START.match(ANSI_ESCAPE.sub("", line)) for line in before_running or []):
        crash = before_running  # dbt crashed before it started: its traceback is shown as any other crash's
    failure = environment_failure(settings, args, lines) if returncode != 0 else None
    if failure is None:
        for line in crash:
            echo(line)
    if returncode != 0:
        raise failure or LookalikeError(failure_line(settings, args, lines, started))
    return lines


def check_vars(args: Sequence[str]) -> None:
    """Refuse a `--vars` dbt could not read, in one line, before starting dbt (which would print its own complaint and
    click's usage block first). dbt's rule: YAML (or JSON) that is a mapping."""
    import yaml

    args = list(args)
    for position, arg in enumerate(args):
        if arg == "--vars" and position + 1 < len(args):
            text = args[position + 1]
        elif arg.startswith("--vars="):
            text = arg.split("=", 1)[1]
        else:
            continue
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at character {mark.column + 1}" if mark is not None and mark.line == 0 else ""
            problem = getattr(exc, "problem", None) or "not YAML"
            raise LookalikeError(f"`--vars {text!r}` is not valid YAML ({problem}{where}). Give a mapping, "
                                 "e.g. `--vars '{as_of_date: 2025-06-30}'`.") from None
        if not isinstance(value, dict):
            raise LookalikeError(f"`--vars {text!r}` is not a mapping of var names to values. Give one, "
                                 "e.g. `--vars '{as_of_date: 2025-06-30}'`.")


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
    from lookalike_cli.spark.session import remove_orphaned_staging, schema_name, spark_session

    target = target_of(args)
    spark = spark_session(settings, target, progress=echo)
    # A table build killed while Spark wrote it leaves its `__incoming` folder without a metastore entry, and
    # Spark refuses to create the table over it (macros/spark_table_swap.sql): removed before dbt starts.
    for name in remove_orphaned_staging(spark, schema_name(settings, target)):
        echo(f"Removed {name}: the staging folder of a killed table build (not a table)")
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
    started = time.time()
    with environment(dbt_environment(settings)):
        result = dbtRunner(callbacks=[on_event]).invoke(command)
    if not result.success:
        raise LookalikeError(failure_line(settings, args, lines or [str(result.exception)], started))
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
