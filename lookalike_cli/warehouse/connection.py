"""Connections to the DuckDB warehouse file, with errors that say what went wrong, and the table
plumbing every layer shares: existence checks, user SQL, Arrow tables in and atomic replacement."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import duckdb
import pyarrow as pa

from lookalike_cli.errors import LookalikeError, input_error
from lookalike_cli.files import disk_full_error, is_disk_full


# How long a command waits for another process's write lock on a DuckDB file before giving up. Most
# writers hold it for seconds (train reads its pairs, publish swaps a file), so two jobs started together
# (a scheduler, `make demo`) take turns instead of failing; LOOKALIKE_LOCK_WAIT_SECONDS=0 fails at once.
DEFAULT_LOCK_WAIT_SECONDS = 20.0


def lock_wait_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get("LOOKALIKE_LOCK_WAIT_SECONDS", DEFAULT_LOCK_WAIT_SECONDS)))
    except ValueError:
        return DEFAULT_LOCK_WAIT_SECONDS


def connect(db_path: Path, read_only: bool = False, wait_seconds: float | None = None) -> duckdb.DuckDBPyConnection:
    if read_only and not Path(db_path).exists():
        raise LookalikeError(
            f"Warehouse file {db_path} does not exist. Create it with `lookalike generate-data` "
            "or `lookalike load-sample completejourney`, then `lookalike dbt build`."
        )
    wait = lock_wait_seconds() if wait_seconds is None else wait_seconds
    deadline, pause = time.monotonic() + wait, 0.05
    while True:
        try:
            return duckdb.connect(str(db_path), read_only=read_only)
        except duckdb.ConnectionException:
            raise  # this process already holds the file with another configuration: a caller's bug, not the file's
        except duckdb.Error as exc:
            if "lock" not in str(exc).lower():
                if is_disk_full(exc):
                    raise disk_full_error(exc, db_path) from exc
                raise LookalikeError(
                    f"Warehouse file {db_path} cannot be opened by DuckDB ({str(exc).splitlines()[0]}). Restore it from a "
                    "backup, or rebuild it: `lookalike generate-data` or `lookalike load-sample`, then `lookalike build`."
                ) from exc
            if time.monotonic() + pause > deadline:
                raise LookalikeError(
                    f"{db_path} is locked by another process ({exc}); waited {wait:g}s. DuckDB allows one writer or many "
                    "readers: close the other writer, or point BI tools at the serving file instead."
                ) from exc
            time.sleep(pause)
            pause = min(pause * 2, 1.0)


def unreadable_serving_file(path: Path, exc: BaseException) -> LookalikeError:
    return LookalikeError(
        f"Serving file {path} is not a readable DuckDB file ({str(exc).splitlines()[0]}). It is left as it is: move it "
        "aside and publish again (`lookalike audiences apply`, `lookalike expand`) to start a new one."
    )


def connect_serving(path: Path) -> duckdb.DuckDBPyConnection:
    """A read-only connection to the serving file (never locked by a publisher: publishes swap the file)."""
    try:
        return duckdb.connect(str(path), read_only=True)
    except duckdb.Error as exc:
        if "lock" in str(exc).lower():
            raise
        raise unreadable_serving_file(path, exc) from exc


@contextmanager
def connection(db_path: Path, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    con = connect(db_path, read_only=read_only)
    try:
        yield con
    finally:
        con.close()


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """All or nothing: commit when the block finishes, roll back on any error."""
    con.execute("begin transaction")
    try:
        yield con
    except BaseException:
        con.execute("rollback")
        raise
    con.execute("commit")


def table_exists(con: duckdb.DuckDBPyConnection, name: str, schema: str | None = None) -> bool:
    if "." in name and schema is None:
        schema, name = name.split(".", 1)
    query = "select count(*) from information_schema.tables where table_name = ?"
    params: list[str] = [name]
    if schema:
        query += " and table_schema = ?"
        params.append(schema)
    return con.execute(query, params).fetchall()[0][0] > 0


def require_table(con: duckdb.DuckDBPyConnection, name: str, hint: str) -> None:
    if not table_exists(con, name):
        raise LookalikeError(f"Table {name} not found in the warehouse. {hint}")


def table_columns(con: duckdb.DuckDBPyConnection, name: str) -> list[str]:
    return [row[0] for row in con.execute(f"describe {name}").fetchall()]


@contextmanager
def sql_errors(what: str) -> Iterator[None]:
    """DuckDB errors of SQL the user wrote as one line naming it: "<what> failed: <DuckDB's first line>"."""
    try:
        yield
    except duckdb.Error as exc:
        raise input_error(what, f"failed: {str(exc).splitlines()[0]}") from exc


def user_query(con: duckdb.DuckDBPyConnection, sql: str, what: str) -> duckdb.DuckDBPyRelation:
    """The relation of a query the user gave (`what` names it in errors: "exclude_sql", "Seed sql: ...")."""
    with sql_errors(what):
        relation = con.sql(sql)
    if relation is None:
        raise input_error(what, "is not a query returning customer ids.")
    return relation


@contextmanager
def registered(con: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> Iterator[str]:
    """`table` visible to SQL on `con` as `name` for the block."""
    con.register(name, table)
    try:
        yield name
    finally:
        con.unregister(name)


def write_table(con: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> None:
    """Create (or replace) table `name` holding the rows of an Arrow table."""
    with registered(con, "incoming_table", table):
        con.execute(f"create or replace table {name} as select * from incoming_table")


def append_rows(con: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> None:
    """Append the rows of an Arrow table to table `name` by column name (creating it from them when absent)."""
    with registered(con, "incoming_table", table):
        if table_exists(con, name):
            con.execute(f"insert into {name} by name select * from incoming_table")
        else:
            con.execute(f"create table {name} as select * from incoming_table")


def replace_tables(con: duckdb.DuckDBPyConnection, tables: dict[str, pa.Table], append: dict[str, pa.Table] | None = None) -> None:
    """Write each table under a temporary name, then drop + rename (and append log rows) in one transaction:
    a failure leaves the previous tables as they were."""
    for name, table in tables.items():
        write_table(con, f"{name}__new", table)
    with transaction(con):
        for name in tables:
            con.execute(f"drop table if exists {name}")
            con.execute(f"alter table {name}__new rename to {name}")
        for name, table in (append or {}).items():
            append_rows(con, name, table)
