"""The `lookalike` CLI SIGKILLing itself at a named point inside a write, for writes that last milliseconds
(a kill watched from outside, `faults.kill_at`, would race them).

Run as `python -c "from tests.reliability.kill_points import main; main()" <CLI arguments>` with
`LOOKALIKE_TEST_KILL_POINT` holding one point as JSON:

- `{"after_replace": "<glob>", "count": N}`: right after the Nth `os.replace` whose target's file name matches the
  glob (`files.replaced` moves every finished file in with it), before the process does anything else;
- `{"before_sql": "<regex>", "module": "<module>"}`: right before a statement matching the regex is executed on a
  connection opened through `<module>.connection` (the function that module imported from
  lookalike_cli.warehouse.connection), e.g. `replace_tables`' `begin transaction` or one of its renames;
- `{"before_spark_sql": "<regex>"}`: right before SparkSession.sql runs a matching statement (case-insensitive),
  e.g. one of the renames of a dbt-spark table build. tests/reliability/spark_steps.py arms it for its last step.

The process prints `KILL POINT <where>` (flushing what it printed before) and sends itself SIGKILL: no `finally`,
no atexit, no DuckDB close, as with `kill -9 <pid>`. Everything else is the CLI as a user runs it.
"""

from __future__ import annotations

import fnmatch
import importlib
import json
import os
import re
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

ENV = "LOOKALIKE_TEST_KILL_POINT"
CODE = "from tests.reliability.kill_points import main; main()"
MARKER = "KILL POINT "


def die(where: str) -> None:
    print(MARKER + where, flush=True)
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def kill_after_replace(pattern: str, count: int) -> None:
    real_replace = os.replace
    seen = 0

    def replace(src, dst, *args, **kwargs):
        nonlocal seen
        real_replace(src, dst, *args, **kwargs)
        if fnmatch.fnmatch(Path(dst).name, pattern):
            seen += 1
            if seen == count:
                die(f"after os.replace #{count} onto {Path(dst).name}")

    os.replace = replace


class WatchedConnection:
    """A DuckDB connection that dies before executing a statement matching `pattern`."""

    def __init__(self, con, pattern: re.Pattern):
        self._con, self._pattern = con, pattern

    def execute(self, sql, *args, **kwargs):
        if isinstance(sql, str) and self._pattern.search(sql.strip()):
            die(f"before SQL {sql.strip()[:80]!r}")
        return self._con.execute(sql, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._con, name)


def kill_before_sql(pattern: str, module_name: str) -> None:
    module = importlib.import_module(module_name)
    real_connection = module.connection
    compiled = re.compile(pattern)

    @contextmanager
    def connection(*args, **kwargs):
        with real_connection(*args, **kwargs) as con:
            yield WatchedConnection(con, compiled)

    module.connection = connection


def kill_before_spark_sql(pattern: str) -> None:
    """Die right before SparkSession.sql runs a statement matching `pattern` (dbt-spark's session method
    sends every statement of a model through it)."""
    from pyspark.sql import SparkSession

    real_sql = SparkSession.sql
    compiled = re.compile(pattern, re.IGNORECASE | re.DOTALL)

    def sql(self, query, *args, **kwargs):
        if isinstance(query, str) and compiled.search(query.strip()):
            die(f"before Spark SQL {' '.join(query.split())[:100]!r}")
        return real_sql(self, query, *args, **kwargs)

    SparkSession.sql = sql


def install(point: dict) -> None:
    """Arm one kill point (the forms in the module docstring)."""
    if "after_replace" in point:
        kill_after_replace(point["after_replace"], int(point.get("count", 1)))
    elif "before_sql" in point:
        kill_before_sql(point["before_sql"], point["module"])
    elif "before_spark_sql" in point:
        kill_before_spark_sql(point["before_spark_sql"])
    else:
        raise SystemExit(f"unknown kill point {point}")


def main() -> None:
    install(json.loads(os.environ[ENV]))
    from lookalike_cli.cli.main import main as cli_main

    cli_main()
