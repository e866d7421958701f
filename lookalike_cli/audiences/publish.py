"""Publishing audiences to the serving DuckDB file that BI tools read.

BI tools hold read-only connections to the serving file all day, and DuckDB will not let a
writer lock a file a reader has open. So a publish never writes the live file: it copies it
to a temp file beside it, writes the new audience version there in one transaction,
checkpoints, and `os.replace`s it over the live file. Open readers keep their snapshot;
every new connection sees the new version. A lock file serialises concurrent publishers,
and any failure before the replace leaves the live file untouched.

The serving file is written with storage_compatibility_version v1.4.0 so DuckDB 1.x-based
drivers (older JDBC/ODBC, BI connectors) can open it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from lookalike_cli.errors import LookalikeError, ParameterError
from lookalike_cli.files import is_disk_full, remove_stale_temp_files
from lookalike_cli.progress import Progress
from lookalike_cli.warehouse.connection import append_rows, registered, unreadable_serving_file, write_table

STORAGE_COMPATIBILITY = "v1.4.0"
T = TypeVar("T")

SCHEMA = """
create table if not exists audiences (
    audience_id bigint primary key,
    name varchar not null,
    version integer not null,
    created_at timestamp not null,
    strategy varchar not null,
    parameters json,
    seed_requested bigint,
    seed_found bigint,
    seed_missing bigint,
    excluded_count bigint,
    population_size bigint,
    size bigint,
    score_min double,
    score_max double,
    score_mean double,
    score_median double,
    similarity_min double,
    model_version varchar,
    index_version varchar,
    index_type varchar,
    compute_seconds double,
    unique (name, version)
);
create table if not exists audience_members (
    audience_id bigint not null,
    customer_id bigint not null,
    rank integer not null,
    score double not null,
    similarity double,
    nearest_seed_id bigint,
    ring varchar,                       -- the tier of a ringed audience ('0-1%', '1-2%', ...), else null
    is_holdout boolean default false    -- held out of activation to measure incrementality
);
-- Serving files written before rings and holdouts existed.
alter table audience_members add column if not exists ring varchar;
alter table audience_members add column if not exists is_holdout boolean default false;
"""

# Views BI tools query; recreated on every publish so they always match the tables.
VIEWS = """
create or replace view latest_audiences as
    select * from audiences
    qualify version = max(version) over (partition by name);
create or replace view latest_audience_members as
    select a.name as audience_name, a.version as audience_version, m.*
    from audience_members m join latest_audiences a using (audience_id);
-- What an activation sends: the latest members without the holdout.
create or replace view latest_audience_activation as
    select * from latest_audience_members where not coalesce(is_holdout, false);
create or replace view audience_members_enriched as
    select m.*, c.* exclude (customer_id)
    from latest_audience_members m left join customer_attributes c using (customer_id);
"""

AUDIENCE_COLUMNS = [
    "audience_id", "name", "version", "created_at", "strategy", "parameters", "seed_requested", "seed_found",
    "seed_missing", "excluded_count", "population_size", "size", "score_min", "score_max", "score_mean",
    "score_median", "similarity_min", "model_version", "index_version", "index_type", "compute_seconds",
]


def connect_for_write(path: Path) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(str(path), config={"storage_compatibility_version": STORAGE_COMPATIBILITY})


@contextmanager
def publisher_lock(serving_path: Path) -> Iterator[None]:
    """One publisher at a time per serving file (readers never take this lock)."""
    serving_path.parent.mkdir(parents=True, exist_ok=True)
    with open(serving_path.with_name(serving_path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def swapped(serving_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-write connection to a copy of the serving file that replaces it atomically on success."""
    with publisher_lock(serving_path):
        # A publisher killed mid-swap (kill -9, OOM) left its copy; holding the lock, this one may remove it.
        remove_stale_temp_files(serving_path.parent)
        tmp = serving_path.with_name(f".{serving_path.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            if serving_path.exists():
                shutil.copyfile(serving_path, tmp)
            con = open_serving_copy(tmp, serving_path)
            try:
                con.execute("begin")
                con.execute(SCHEMA)
                yield con
                con.execute("commit")
                con.execute("checkpoint")
            finally:
                con.close()
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, serving_path)
        finally:
            tmp.unlink(missing_ok=True)
            tmp.with_name(tmp.name + ".wal").unlink(missing_ok=True)


def open_serving_copy(tmp: Path, serving_path: Path) -> duckdb.DuckDBPyConnection:
    """The copy to publish into; a serving file DuckDB cannot read (truncated, overwritten) is named, not a traceback."""
    try:
        return connect_for_write(tmp)
    except duckdb.Error as exc:
        if is_disk_full(exc):
            raise
        raise unreadable_serving_file(serving_path, exc) from exc


def refresh_attributes(con: duckdb.DuckDBPyConnection, attributes: pa.Table | None) -> None:
    """Snapshot of customer attributes for BI joins (replaced when given, kept otherwise)."""
    if attributes is not None:
        write_table(con, "customer_attributes", attributes)
    else:
        con.execute("create table if not exists customer_attributes (customer_id bigint)")
    con.execute(VIEWS)


def check_name(name: str) -> None:
    """An audience needs a name (checked before any work is done, by every way of publishing one)."""
    if not name or not name.strip():
        raise ParameterError("{name} must not be empty.", "name")


def publish_audience(
    serving_path: Path,
    name: str,
    audience: dict,
    members: pa.Table,
    attributes: pa.Table | None = None,
    export_parquet: Path | None = None,
    progress: Progress = print,
    extra: Callable[[duckdb.DuckDBPyConnection, int], None] | None = None,
) -> dict:
    """Add a new version of audience `name` to the serving file; returns the audiences row written.

    `extra(con, audience_id)` writes companion tables (seeds, seed diagnostics) in the same swap.
    """
    check_name(name)
    with swapped(serving_path) as con:
        audience_id, version = con.execute(
            "select coalesce((select max(audience_id) from audiences), 0) + 1, "
            "coalesce((select max(version) from audiences where name = ?), 0) + 1", [name]
        ).fetchall()[0]
        row = {**audience, "audience_id": audience_id, "name": name, "version": version,
               "created_at": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
               "parameters": json.dumps(audience["parameters"], sort_keys=True)}
        con.execute(
            f"insert into audiences ({', '.join(AUDIENCE_COLUMNS)}) values ({', '.join('?' * len(AUDIENCE_COLUMNS))})",
            [row[c] for c in AUDIENCE_COLUMNS],
        )
        optional = [c for c in ("ring", "is_holdout") if c in members.column_names]
        with registered(con, "incoming_members", members):
            con.execute(
                "insert into audience_members by name select ? as audience_id, customer_id, rank, score, similarity, "
                f"nearest_seed_id{''.join(', ' + c for c in optional)} from incoming_members order by rank", [audience_id]
            )
        if extra is not None:
            extra(con, audience_id)
        refresh_attributes(con, attributes)
        if export_parquet is not None:
            export_audience(con, audience_id, Path(export_parquet))
    progress(f"Published audience {name!r} version {version} (id {audience_id}, {row['size']:,} members) to {serving_path}")
    if export_parquet is not None:
        progress(f"Exported Parquet to {export_parquet}")
    return row


def publish_tables(serving_path: Path, write: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
    """Run `write(con)` on the serving file with the same atomic swap as an audience publish.

    For tables beside the audiences (backtests, explanations, overlaps): BI readers are never
    blocked and see all of a write or none of it.
    """
    with swapped(serving_path) as con:
        result = write(con)
        refresh_attributes(con, None)
    return result


def insert_rows(con: duckdb.DuckDBPyConnection, table: str, rows: pa.Table, ddl: str) -> None:
    """Create `table` with `ddl` when absent and append `rows` by column name."""
    con.execute(ddl)
    append_rows(con, table, rows)


def export_audience(con: duckdb.DuckDBPyConnection, audience_id: int, directory: Path) -> None:
    """members/<name>/v<version>.parquet plus a full audiences.parquet, each swapped in atomically."""
    name, version = con.execute("select name, version from audiences where audience_id = ?", [audience_id]).fetchall()[0]
    targets = {
        directory / "audiences.parquet": con.sql("select * from audiences order by audience_id").to_arrow_table(),
        directory / "members" / safe_file_name(name) / f"v{version}.parquet": con.sql(
            "select * from audience_members where audience_id = ? order by rank", params=[audience_id]
        ).to_arrow_table(),
    }
    for path, table in targets.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(path.parent)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            pq.write_table(table, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def safe_file_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def drop_audience(serving_path: Path, name: str, version: int | None = None) -> int:
    """Remove every version of `name` (or one version); returns how many versions were dropped."""
    if not serving_path.exists():
        raise LookalikeError(f"No serving file at {serving_path}: nothing has been published yet.")
    with swapped(serving_path) as con:
        query = "select audience_id from audiences where name = ?" + (" and version = ?" if version else "")
        ids = [r[0] for r in con.execute(query, [name, version] if version else [name]).fetchall()]
        if not ids:
            which = f"version {version} of " if version else ""
            raise LookalikeError(f"No {which}audience named {name!r}. `lookalike audiences list` shows what exists.")
        con.execute(f"delete from audience_members where audience_id in ({', '.join('?' * len(ids))})", ids)
        con.execute(f"delete from audiences where audience_id in ({', '.join('?' * len(ids))})", ids)
        refresh_attributes(con, None)
    return len(ids)
