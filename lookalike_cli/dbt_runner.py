"""Run dbt against this project with the same database paths as the CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from lookalike_cli.errors import LookalikeError
from lookalike_cli.settings import DBT_PROJECT_DIR, PROFILES_DIR, Settings


def dbt_executable() -> str:
    # Prefer the dbt installed beside this interpreter (the project venv) over one on PATH.
    beside = Path(sys.executable).with_name("dbt")
    if beside.exists():
        return str(beside)
    found = shutil.which("dbt")
    if not found:
        raise LookalikeError("dbt is not installed in this environment: `pip install -e .` installs it.")
    return found


def dbt_command(args: Sequence[str]) -> list[str]:
    args = list(args)
    command = [dbt_executable(), *args]
    # dbt subcommands that touch the project need both dirs; `--version` etc. do not.
    if args and not args[0].startswith("-"):
        if "--project-dir" not in args:
            command += ["--project-dir", str(DBT_PROJECT_DIR)]
        if "--profiles-dir" not in args:
            command += ["--profiles-dir", str(PROFILES_DIR)]
    return command


def run_dbt(settings: Settings, args: Sequence[str], capture: bool = False) -> subprocess.CompletedProcess:
    """Run dbt; raise LookalikeError naming the failed step. With capture, output is returned, not shown."""
    command = dbt_command(args)
    result = subprocess.run(
        command,
        env=settings.env(),
        cwd=str(DBT_PROJECT_DIR),
        text=True,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.STDOUT if capture else None,
    )
    if result.returncode != 0:
        tail = ""
        if capture and result.stdout:
            errors = [line for line in result.stdout.splitlines() if "error" in line.lower() or "fail" in line.lower()]
            tail = "\n" + "\n".join((errors or result.stdout.splitlines())[-25:])
        raise LookalikeError(f"`dbt {' '.join(args)}` failed (exit {result.returncode}).{tail}")
    return result
