"""Seed audiences: resolve `--seed-sql`, `--seed-table` or `--seed-file` to customers with embeddings."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from lookalike_cli.errors import LookalikeError

# Ad platforms warn below ~100 seeds: the audience then reflects a few individuals, not a segment.
MIN_RECOMMENDED_SEEDS = 100


@dataclass
class Seeds:
    source: str
    requested: int
    ids: np.ndarray          # int64, seeds found in customer_embeddings
    vectors: np.ndarray      # float32 (found, d), L2-normalised
    warnings: list[str]

    @property
    def found(self) -> int:
        return len(self.ids)

    @property
    def missing(self) -> int:
        return self.requested - self.found


def requested_ids(con: duckdb.DuckDBPyConnection, seed_sql: str | None, seed_table: str | None, seed_file: str | Path | None) -> tuple[str, np.ndarray]:
    """(description, distinct requested customer ids) from exactly one seed source."""
    given = [(k, v) for k, v in (("--seed-sql", seed_sql), ("--seed-table", seed_table), ("--seed-file", seed_file)) if v]
    if len(given) != 1:
        raise LookalikeError("Give exactly one seed source: --seed-sql, --seed-table or --seed-file.")
    if seed_file:
        return f"file {seed_file}", read_id_file(Path(seed_file))
    sql = seed_sql or f"select * from {seed_table}"
    source = f"sql: {seed_sql}" if seed_sql else f"table {seed_table}"
    try:
        relation = con.sql(sql)
    except duckdb.Error as exc:
        raise LookalikeError(f"Seed {source} failed: {str(exc).splitlines()[0]}") from exc
    if relation is None:
        raise LookalikeError(f"Seed {source} is not a query returning customer ids.")
    return source, ids_from_relation(relation, source)


def ids_from_relation(relation: duckdb.DuckDBPyRelation, source: str) -> np.ndarray:
    columns = relation.columns
    column = "customer_id" if "customer_id" in columns else (columns[0] if len(columns) == 1 else None)
    if column is None:
        raise LookalikeError(f"Seed {source} returns columns {columns}: name the id column customer_id.")
    try:
        table = relation.select(f'try_cast("{column}" as bigint) as customer_id').filter("customer_id is not null").distinct().to_arrow_table()
    except duckdb.Error as exc:
        raise LookalikeError(f"Seed {source} failed: {str(exc).splitlines()[0]}") from exc
    return table.column("customer_id").to_numpy().astype(np.int64)


def read_id_file(path: Path) -> np.ndarray:
    """A CSV of ids: one column (header optional) or a column named customer_id."""
    if not path.exists():
        raise LookalikeError(f"Seed file {path} does not exist.")
    with path.open(newline="") as f:
        rows = [row for row in csv.reader(f) if row and any(cell.strip() for cell in row)]
    if not rows:
        return np.empty(0, dtype=np.int64)
    header = [cell.strip().lower() for cell in rows[0]]
    column = header.index("customer_id") if "customer_id" in header else 0
    body = rows[1:] if not header[column].lstrip("-").isdigit() else rows
    try:
        return np.unique(np.array([int(row[column]) for row in body], dtype=np.int64))
    except (ValueError, IndexError) as exc:
        raise LookalikeError(f"Seed file {path}: every row needs an integer customer id ({exc}).") from exc


def resolve_seeds(
    con: duckdb.DuckDBPyConnection,
    seed_sql: str | None = None,
    seed_table: str | None = None,
    seed_file: str | Path | None = None,
) -> Seeds:
    """Requested seed ids joined to customer_embeddings; fails on an empty seed or when none match."""
    source, ids = requested_ids(con, seed_sql, seed_table, seed_file)
    if len(ids) == 0:
        raise LookalikeError(f"The seed ({source}) is empty: it returned no customer ids.")
    requested = pa.table({"customer_id": pa.array(ids, pa.int64())})
    con.register("requested_seed_ids", requested)
    try:
        found = con.sql(
            "select e.customer_id, e.embedding from customer_embeddings e "
            "join requested_seed_ids r using (customer_id) order by e.customer_id"
        ).to_arrow_table()
    finally:
        con.unregister("requested_seed_ids")
    return seeds_from_embeddings(source, len(ids), found)


def seeds_from_embeddings(source: str, requested: int, found: pa.Table) -> Seeds:
    """Seeds from the (customer_id, embedding) rows found for `requested` ids, with warnings.

    Shared by the DuckDB path and the Spark one (`spark_expand`), which look the ids up in
    their own customer_embeddings.
    """
    if found.num_rows == 0:
        raise LookalikeError(
            f"None of the {requested:,} seed ids ({source}) are in customer_embeddings: "
            "check that the seed uses the same customer_id as the warehouse."
        )
    column = found.column("embedding").combine_chunks()
    vectors = column.values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, column.type.list_size)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    seeds = Seeds(source=source, requested=requested, ids=found.column("customer_id").to_numpy().astype(np.int64),
                  vectors=vectors / np.maximum(norms, 1e-12), warnings=[])
    if seeds.missing:
        seeds.warnings.append(f"{seeds.missing:,} of {seeds.requested:,} seed ids are not in the population (no embedding); using {seeds.found:,}.")
    if seeds.found < MIN_RECOMMENDED_SEEDS:
        seeds.warnings.append(
            f"Only {seeds.found} seeds matched; ad platforms recommend at least {MIN_RECOMMENDED_SEEDS} "
            "for a stable lookalike audience."
        )
    return seeds


def excluded_ids(con: duckdb.DuckDBPyConnection, exclude_sql: str | None) -> tuple[np.ndarray, dict]:
    """Suppression list (--exclude-sql) plus raw.opt_outs when present; returns ids and counts per source."""
    parts, counts = [], {}
    if exclude_sql:
        try:
            relation = con.sql(exclude_sql)
        except duckdb.Error as exc:
            raise LookalikeError(f"--exclude-sql failed: {str(exc).splitlines()[0]}") from exc
        parts.append(ids_from_relation(relation, "--exclude-sql"))
        counts["exclude_sql"] = len(parts[-1])
    has_opt_outs = con.execute(
        "select count(*) from information_schema.tables where table_schema = 'raw' and table_name = 'opt_outs'"
    ).fetchall()[0][0]
    if has_opt_outs:
        parts.append(ids_from_relation(con.sql("select customer_id from raw.opt_outs"), "raw.opt_outs"))
        counts["opt_outs"] = len(parts[-1])
    ids = np.unique(np.concatenate(parts)) if parts else np.empty(0, dtype=np.int64)
    return ids, counts


def persona_seed_sql(db_path: Path, name: str) -> str:
    """`--seed-persona NAME` as seed SQL: the customers whose top persona in customer_personas is NAME."""
    from lookalike_cli.warehouse.connection import connection, require_table

    with connection(db_path, read_only=True) as con:
        require_table(con, "customer_personas", "Run `lookalike personas label` and `lookalike personas propagate` first.")
        personas = con.execute("select persona_id, name from persona_definitions order by persona_id").fetchall()
    matches = [persona_id for persona_id, persona in personas if persona.strip().lower() == name.strip().lower()]
    if not matches:
        raise LookalikeError(f"No persona named {name!r}; persona_definitions has: {', '.join(p for _, p in personas)}.")
    return f"select customer_id from customer_personas where persona_id = {int(matches[0])} and persona_rank = 1"
