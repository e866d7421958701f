"""Publishing audiences to the serving DuckDB file that BI tools read.

BI tools hold read-only connections to the serving file all day, and DuckDB will not let a
writer lock a file a reader has open. So a publish never writes the live file: it copies it
to a temp file beside it, writes there in one transaction, checkpoints, and `os.replace`s it
over the live file. Open readers keep their snapshot; every new connection sees the new
version. A lock file serialises concurrent publishers, and any failure before the replace
leaves the live file untouched.

Layout (why the swap stays cheap as history grows). Copying the whole file on every publish
made a publish grow with history: at 10M customers the file held the attribute snapshot and
every version's members (1.7 GiB, 4-7 s per publish). Now the bulky rows live outside it, as
immutable Parquet files in a folder beside it, `<serving stem>_parquet/`:

- `members/audience_<id>_<token>.parquet`: one file per audience version, written once (the
  token keeps a reused id from ever overwriting a file an older snapshot still reads);
- `attributes/<fingerprint>.parquet`: the customer attribute snapshot, written only when the
  content fingerprint of the attributes given differs from the current one (expand's publish fingerprints
  customer_features inside DuckDB and reads its rows only then: WarehouseAttributes).

The serving file keeps the small tables (audiences, reach curves, seeds, backtests, ...), the
table `serving_files` (which Parquet files the catalog references) and views over the files:
`audience_members` and `customer_attributes` are `read_parquet([...])` with an explicit file
list rebuilt on every publish, so a swap copies only the catalog (a few MiB) and writes only the
new version's members. BI reads the same names and columns as before, read-only, with DuckDB
1.x drivers too (the catalog keeps storage_compatibility_version v1.4.0; Parquet is written as
format version 1). Measured in benchmarks/bench_publish.py against the full-file copy (one 500k-member
version, 10M customers, 50 prior versions, attributes unchanged, on 2 cores shared with other jobs):
2.7 s vs 35 s wall, 1.0 vs 12.4 CPU s, the same with 0 or 10 prior versions; what remains is the
members file and the attribute fingerprint (0.65 CPU s at 10M), not history.
Keeping everything in DuckDB with one attached file per version was the alternative; it needs
every reader to ATTACH files itself (a BI connection opens one file), so views over Parquet won.

All or nothing: files are written first, under names nothing references yet; the catalog that
references them is swapped in last. A publish killed before the swap leaves the previous
catalog and every file it references in place; its unreferenced files are deleted by the next
publish (which also removes stale temp catalogs). After a swap, files neither catalog
references are deleted: a dropped version's members leave with the drop. A superseded attribute
snapshot stays until the publish after next, so a connection opened before an attribute change
keeps its `customer_attributes`; a connection held across a drop fails when it reads the dropped
version's rows (open a new one).

Paths in the views are absolute: DuckDB resolves a relative `read_parquet` path against the
reader's working directory, not the database file. Moving the serving file therefore needs its
`_parquet` folder moved with it and then one no-op publish (`relink_views(serving_path)`, CLI
`lookalike audiences relink`; any publish does it too), which rewrites the views for the new
location; until then the views name the old paths.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from lookalike_cli.errors import LookalikeError, ParameterError
from lookalike_cli.files import is_disk_full, remove_stale_temp_files
from lookalike_cli.progress import Progress
from lookalike_cli.warehouse.connection import append_rows, registered, table_exists, unreadable_serving_file

STORAGE_COMPATIBILITY = "v1.4.0"
MEMBERS, ATTRIBUTES = "members", "attributes"
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
-- The Parquet files the views read (paths relative to the serving file's _parquet folder).
create table if not exists serving_files (
    file varchar primary key,
    kind varchar not null,              -- 'members' (one audience version) or 'attributes' (the current snapshot)
    audience_id bigint,
    fingerprint varchar,
    row_count bigint not null,
    written_at timestamp not null
);
"""

# The columns and types of audience_members, in order: every members file is written with them.
MEMBER_COLUMNS = {
    "audience_id": "bigint", "customer_id": "bigint", "rank": "integer", "score": "double", "similarity": "double",
    "nearest_seed_id": "bigint",
    "ring": "varchar",          # the tier of a ringed audience ('0-1%', '1-2%', ...), else null
    "is_holdout": "boolean",    # held out of activation to measure incrementality
}

LATEST_AUDIENCES_VIEW = """
create or replace view latest_audiences as
    select * from audiences
    qualify version = max(version) over (partition by name)
"""

# Views over the file views; recreated on every publish so they always match the files.
VIEWS = """
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


def parquet_dir(serving_path: Path) -> Path:
    """The folder of the serving file's Parquet files: <serving file stem>_parquet/ beside it."""
    serving_path = Path(serving_path)
    return serving_path.with_name(f"{serving_path.stem}_parquet")


def sql_string(value: str | Path) -> str:
    return "'" + str(value).replace("'", "''") + "'"


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


@dataclass
class Swap:
    """The Parquet folder of a swap in progress and the files it wrote (deleted again if it fails)."""
    folder: Path
    written: list[Path] = field(default_factory=list)


# The swap each open publishing connection belongs to, so helpers that receive only the
# connection (write_members, refresh_attributes) know where its files go.
_swaps: dict[int, Swap] = {}


def swap_of(con: duckdb.DuckDBPyConnection) -> Swap:
    try:
        return _swaps[id(con)]
    except KeyError:
        raise LookalikeError("Members and attributes are written only inside a publish (publish.swapped).") from None


def referenced_files(con: duckdb.DuckDBPyConnection, kind: str | None = None) -> set[str]:
    query = "select file from serving_files" + (" where kind = ?" if kind else "")
    return {row[0] for row in con.execute(query, [kind] if kind else []).fetchall()}


@contextmanager
def swapped(serving_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-write connection to a copy of the serving catalog that replaces it atomically on success."""
    serving_path = Path(serving_path)
    with publisher_lock(serving_path):
        remove_killed_publish_files(serving_path)
        swap = Swap(parquet_dir(serving_path))
        tmp = serving_path.with_name(f".{serving_path.name}.{os.getpid()}.tmp")
        replaced = False
        try:
            if serving_path.exists():  # inside the try: a full disk mid-copy leaves no partial copy behind
                shutil.copyfile(serving_path, tmp)
            con = open_serving_copy(tmp, serving_path)
            _swaps[id(con)] = swap
            try:
                con.execute("begin")
                con.execute(SCHEMA)
                if migrate_single_file_layout(con) or not table_exists(con, "audience_members"):
                    refresh_views(con)  # for the writes that read them; otherwise the copied catalog's are current
                previous_attributes = referenced_files(con, ATTRIBUTES)
                yield con
                refresh_views(con)
                current = referenced_files(con)
                con.execute("commit")
                con.execute("checkpoint")
            finally:
                _swaps.pop(id(con), None)
                con.close()
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, serving_path)
            replaced = True
            fsync_dir(serving_path.parent)
        finally:
            tmp.unlink(missing_ok=True)
            tmp.with_name(tmp.name + ".wal").unlink(missing_ok=True)
            if not replaced:
                for path in swap.written:
                    path.unlink(missing_ok=True)
        collect_garbage(swap.folder, current | previous_attributes)


def remove_killed_publish_files(serving_path: Path) -> None:
    """Temp catalogs and half-written Parquet files of publishes that were killed (we hold the lock,
    so no other publisher of this file is running)."""
    for path in serving_path.parent.glob(f".{serving_path.name}.*.tmp*"):
        path.unlink(missing_ok=True)
    for path in parquet_dir(serving_path).glob("*/.*.tmp"):
        path.unlink(missing_ok=True)


def collect_garbage(folder: Path, keep: set[str]) -> None:
    """Delete the Parquet files of `folder` that no catalog a reader can open still needs."""
    for kind in (MEMBERS, ATTRIBUTES):
        for path in (folder / kind).glob("*.parquet"):
            if f"{kind}/{path.name}" not in keep:
                path.unlink(missing_ok=True)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_to_parquet(con: duckdb.DuckDBPyConnection, query: str, path: Path) -> int:
    """Write `query` to `path` whole or not at all (temp name, fsync, rename); returns its row count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    # Format version 1: what every DuckDB 1.x reader (and any other Parquet reader) understands.
    rows = con.execute(f"copy ({query}) to {sql_string(tmp)} (format parquet, parquet_version v1)").fetchall()[0][0]
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return rows


def record_file(con: duckdb.DuckDBPyConnection, path: Path, kind: str, rows: int,
                audience_id: int | None = None, fingerprint: str | None = None) -> None:
    con.execute("insert or replace into serving_files values (?, ?, ?, ?, ?, current_timestamp::timestamp)",
                [f"{kind}/{path.name}", kind, audience_id, fingerprint, rows])


def write_members(con: duckdb.DuckDBPyConnection, audience_id: int, query: str) -> int:
    """Write one audience version's members, the rows of `query` (MEMBER_COLUMNS but audience_id;
    ring and is_holdout may be absent), as a new Parquet file the catalog being written references.
    The views show it once the swap ends (`refresh_views` binds every file, so it runs once per swap)."""
    swap = swap_of(con)
    available = {c.lower() for c in con.sql(f"select * from ({query}) limit 0").columns}

    def column(name: str, kind: str) -> str:
        if name == "audience_id":
            return f"{int(audience_id)}::bigint as audience_id"
        if name == "is_holdout":  # never null, so activation filters need no coalesce
            return "coalesce(is_holdout, false) as is_holdout" if name in available else "false as is_holdout"
        return f"{name}::{kind} as {name}" if name in available else f"null::{kind} as {name}"

    select = ", ".join(column(name, kind) for name, kind in MEMBER_COLUMNS.items())
    path = swap.folder / MEMBERS / f"audience_{int(audience_id)}_{uuid.uuid4().hex[:12]}.parquet"
    swap.written.append(path)
    rows = copy_to_parquet(con, f"select {select} from ({query}) order by rank", path)
    record_file(con, path, MEMBERS, rows, audience_id=audience_id)
    return rows


def forget_members(con: duckdb.DuckDBPyConnection, audience_ids: list[int]) -> None:
    """Stop referencing the members files of `audience_ids` (the swap deletes them once it succeeded)."""
    if audience_ids:
        con.execute(f"delete from serving_files where kind = 'members' and audience_id in ({', '.join('?' * len(audience_ids))})",
                    audience_ids)


def attributes_fingerprint(attributes: pa.Table) -> str:
    """A fingerprint of the table's content: its schema and a CRC-32 of every Arrow buffer of every column.

    A full content hash, because the point is to skip the write when nothing changed; CRC-32 (zlib
    releases the GIL, so columns hash in parallel) is what stays cheap at 10M rows. A table with the
    same content but another chunking gets another fingerprint (a needless rewrite, never a missed one)."""
    def column_crc(column: pa.ChunkedArray) -> str:
        crc = 0
        for chunk in column.chunks:
            crc = zlib.crc32(f"{chunk.offset}:{len(chunk)}:{chunk.null_count}".encode(), crc)
            for buffer in chunk.buffers():
                if buffer is not None:
                    crc = zlib.crc32(buffer, crc)
        return f"{crc:08x}"

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        crcs = list(pool.map(column_crc, attributes.columns))
    header = zlib.crc32(f"{attributes.schema.to_string(show_schema_metadata=False)}:{attributes.num_rows}".encode())
    return f"{header:08x}" + "".join(crcs)[:56]


class WarehouseAttributes:
    """The attribute snapshot of a warehouse table, read lazily: its content fingerprint is computed inside DuckDB
    (row count and the sum of every row's hash, with the column names and types), so a publish whose attributes
    did not change moves no rows out of the warehouse; `table()` reads them when the serving file's snapshot is
    another one. `con` must stay open (read-only) until the publish is done: while it is, no other process can
    write the warehouse, so the rows read are the rows fingerprinted."""

    def __init__(self, con: duckdb.DuckDBPyConnection, relation: str, columns: list[tuple[str, str]]):
        self.con, self.relation = con, relation
        self.columns = [name for name, _ in columns]
        listed = ", ".join(f'"{name}"' for name in self.columns)
        rows, total = con.execute(f"select count(*), coalesce(sum(hash({listed})::hugeint), 0) from {relation}").fetchall()[0]
        self.num_rows = int(rows)
        schema = ";".join(f"{name}:{kind}" for name, kind in columns)
        # A prefix of its own: never equal to an Arrow fingerprint (attributes_fingerprint) of the same rows, so
        # a serving file alternately published from DuckDB and from Spark rewrites its snapshot, never keeps a stale one.
        self.fingerprint = f"db{zlib.crc32(f'{schema}:{rows}'.encode()):08x}{int(total) & (2**128 - 1):032x}"

    def table(self) -> pa.Table:
        listed = ", ".join(f'"{name}"' for name in self.columns)
        return self.con.sql(f"select {listed} from {self.relation}").to_arrow_table()


def open_serving_copy(tmp: Path, serving_path: Path) -> duckdb.DuckDBPyConnection:
    """The copy to publish into; a serving file DuckDB cannot read (truncated, overwritten) is named, not a traceback."""
    try:
        return connect_for_write(tmp)
    except duckdb.Error as exc:
        if is_disk_full(exc):
            raise
        raise unreadable_serving_file(serving_path, exc) from exc


def refresh_attributes(con: duckdb.DuckDBPyConnection, attributes: "pa.Table | WarehouseAttributes | None") -> None:
    """Snapshot of customer attributes for BI joins: written when given and different from the
    current one (by content fingerprint), kept otherwise. A WarehouseAttributes is read only then."""
    if attributes is not None:
        lazy = isinstance(attributes, WarehouseAttributes)
        fingerprint = attributes.fingerprint if lazy else attributes_fingerprint(attributes)
        current = con.execute("select fingerprint from serving_files where kind = 'attributes'").fetchall()
        if [row[0] for row in current] != [fingerprint]:
            swap = swap_of(con)
            path = swap.folder / ATTRIBUTES / f"{fingerprint}.parquet"
            if not path.exists():  # a file of a fingerprint is complete (written under a temp name)
                swap.written.append(path)
                with registered(con, "incoming_attributes", attributes.table() if lazy else attributes):
                    copy_to_parquet(con, "select * from incoming_attributes", path)
            con.execute("delete from serving_files where kind = 'attributes'")
            record_file(con, path, ATTRIBUTES, attributes.num_rows, fingerprint=fingerprint)


def parquet_source(con: duckdb.DuckDBPyConnection, files: list[str], empty: str) -> str:
    """A FROM clause over `files` of this swap's folder (absolute paths), or the typed empty `empty`."""
    if not files:
        return f"({empty})"
    folder = swap_of(con).folder.resolve()
    return f"read_parquet([{', '.join(sql_string(folder / f) for f in files)}])"


def refresh_views(con: duckdb.DuckDBPyConnection) -> None:
    """The BI views over the files the catalog references (every file exists: files are written first)."""
    member_files = [r[0] for r in con.execute("select file from serving_files where kind = 'members' order by audience_id").fetchall()]
    empty_members = "select " + ", ".join(f"null::{kind} as {name}" for name, kind in MEMBER_COLUMNS.items()) + " where false"
    con.execute(f"create or replace view audience_members as select * from {parquet_source(con, member_files, empty_members)}")
    attribute_files = sorted(referenced_files(con, ATTRIBUTES))
    con.execute("create or replace view customer_attributes as select * from "
                + parquet_source(con, attribute_files, "select null::bigint as customer_id where false"))
    con.execute(LATEST_AUDIENCES_VIEW)  # which picks the latest files
    latest = [r[0] for r in con.execute(
        "select f.file from serving_files f join latest_audiences a using (audience_id) where f.kind = 'members' "
        "order by f.audience_id").fetchall()]
    # Only the latest versions' files: what most BI queries read does not grow with history.
    con.execute("create or replace view latest_audience_members as "
                "select a.name as audience_name, a.version as audience_version, m.* "
                f"from {parquet_source(con, latest, empty_members)} m join latest_audiences a using (audience_id)")
    con.execute(VIEWS)


def migrate_single_file_layout(con: duckdb.DuckDBPyConnection) -> bool:
    """A serving file from before the Parquet layout holds audience_members and customer_attributes as
    tables: move them to Parquet files once (inside the swap, so a failure keeps the old file).
    Returns whether it did."""
    tables = {r[0] for r in con.execute("select table_name from information_schema.tables where table_schema = 'main' "
                                        "and table_type = 'BASE TABLE' and table_name in ('audience_members', 'customer_attributes')").fetchall()}
    if not tables:
        return False
    for view in ("audience_members_enriched", "latest_audience_activation", "latest_audience_members"):
        con.execute(f"drop view if exists {view}")
    for table in tables:  # out of the way of the views of the same names
        con.execute(f"alter table {table} rename to single_file_{table}")
    if "audience_members" in tables:
        ids = [r[0] for r in con.execute("select distinct audience_id from single_file_audience_members order by 1").fetchall()]
        for audience_id in ids:
            write_members(con, audience_id, f"select * from single_file_audience_members where audience_id = {int(audience_id)}")
        con.execute("drop table single_file_audience_members")
    if "customer_attributes" in tables:
        attributes = con.sql("select * from single_file_customer_attributes").to_arrow_table()
        con.execute("drop table single_file_customer_attributes")
        refresh_attributes(con, attributes if attributes.num_rows else None)
    return True


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
        with registered(con, "incoming_members", members):
            write_members(con, audience_id, "select * from incoming_members")
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
    blocked and see all of a write or none of it. New audience versions' members go through
    `write_members(con, audience_id, query)` (audience_members is a view over Parquet files).
    """
    with swapped(serving_path) as con:
        return write(con)


def relink_views(serving_path: Path) -> None:
    """Point the views at the Parquet folder's current location (after moving the serving file and its folder)."""
    if not Path(serving_path).exists():
        raise LookalikeError(f"No serving file at {serving_path}: nothing has been published yet.")
    missing = [f for f in serving_files(serving_path) if not (parquet_dir(serving_path) / f).exists()]
    if missing:
        raise LookalikeError(f"{len(missing)} Parquet file(s) the serving file references are not in "
                             f"{parquet_dir(serving_path)} (e.g. {missing[0]}): move that folder beside the serving file.")
    publish_tables(serving_path, lambda con: None)


def serving_files(serving_path: Path) -> list[str]:
    """The Parquet files (relative to parquet_dir) the serving file references, read without locking it."""
    with duckdb.connect(str(serving_path), read_only=True) as con:
        if not table_exists(con, "serving_files"):
            return []
        return [r[0] for r in con.execute("select file from serving_files order by file").fetchall()]


def insert_rows(con: duckdb.DuckDBPyConnection, table: str, rows: pa.Table, ddl: str) -> None:
    """Create `table` with `ddl` when absent and append `rows` by column name."""
    con.execute(ddl)
    append_rows(con, table, rows)


def export_audience(con: duckdb.DuckDBPyConnection, audience_id: int, directory: Path) -> None:
    """members/<name>/v<version>.parquet plus a full audiences.parquet, each swapped in atomically."""
    refresh_views(con)  # the views are rebuilt once per swap, at its end: this one reads members written in it
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
    """Remove every version of `name` (or one version) and their members files; returns how many versions were dropped."""
    if not serving_path.exists():
        raise LookalikeError(f"No serving file at {serving_path}: nothing has been published yet.")
    with swapped(serving_path) as con:
        query = "select audience_id from audiences where name = ?" + (" and version = ?" if version else "")
        ids = [r[0] for r in con.execute(query, [name, version] if version else [name]).fetchall()]
        if not ids:
            which = f"version {version} of " if version else ""
            raise LookalikeError(f"No {which}audience named {name!r}. `lookalike audiences list` shows what exists.")
        con.execute(f"delete from audiences where audience_id in ({', '.join('?' * len(ids))})", ids)
        forget_members(con, ids)
    return len(ids)
