"""Seed audiences: resolve `--seed-sql`, `--seed-table` or `--seed-file` to customers with embeddings,
optionally weighted by a value per seed member (`--seed-value-sql`, see `seed_value_weights`)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from lookalike_cli.errors import LookalikeError, ParameterError, input_error
from lookalike_cli.vectors import ids_and_vectors, normalise
from lookalike_cli.warehouse.connection import connection, registered, require_table, sql_errors, table_exists, user_query

# Ad platforms warn below ~100 seeds: the audience then reflects a few individuals, not a segment.
MIN_RECOMMENDED_SEEDS = 100


@dataclass
class Seeds:
    source: str
    requested: int
    ids: np.ndarray          # int64, seeds found in customer_embeddings
    vectors: np.ndarray      # float32 (found, d), L2-normalised
    warnings: list[str]
    # float64 (found,), mean 1: a value-based seed's weight per seed (`seed_value_weights`); None: all alike.
    weights: np.ndarray | None = None

    @property
    def found(self) -> int:
        return len(self.ids)

    @property
    def missing(self) -> int:
        return self.requested - self.found

    def centroid(self) -> np.ndarray:
        """[1, d]: the L2-normalised mean seed vector, weighted by value when the seed has weights."""
        return normalise(np.average(self.vectors, axis=0, weights=self.weights)[None, :])


def seed_source(seed_sql: str | None, seed_table: str | None, seed_file: str | Path | None) -> str:
    """The description of the one seed source given (either engine); refuses none or several."""
    if sum(1 for source in (seed_sql, seed_table, seed_file) if source) != 1:
        raise ParameterError("Give exactly one seed source: {seed_sql}, {seed_table} or {seed_file}.",
                             "seed_sql", "seed_table", "seed_file")
    return f"file {seed_file}" if seed_file else f"sql: {seed_sql}" if seed_sql else f"table {seed_table}"


def id_column(columns: list[str], what: str) -> str:
    """The column of a query's result that holds customer ids: customer_id, or its only column."""
    if "customer_id" in columns:
        return "customer_id"
    if len(columns) == 1:
        return columns[0]
    raise input_error(what, f"returns columns {columns}: name the id column customer_id.")


def requested_ids(con: duckdb.DuckDBPyConnection, seed_sql: str | None, seed_table: str | None, seed_file: str | Path | None) -> tuple[str, np.ndarray]:
    """(description, distinct requested customer ids) from exactly one seed source."""
    source = seed_source(seed_sql, seed_table, seed_file)
    if seed_file:
        return source, read_id_file(Path(seed_file))
    return source, query_ids(con, seed_sql or f"select * from {seed_table}", f"Seed {source}")


def query_ids(con: duckdb.DuckDBPyConnection, sql: str, what: str) -> np.ndarray:
    """Distinct customer ids (sorted) of a query the user gave; `what` names it in errors ("exclude_sql")."""
    return np.unique(ids_from_relation(user_query(con, sql, what), what))


def ids_from_relation(relation: duckdb.DuckDBPyRelation, what: str) -> np.ndarray:
    column = id_column(relation.columns, what)
    with sql_errors(what):
        table = relation.select(f'try_cast("{column}" as bigint) as customer_id').filter("customer_id is not null").distinct().to_arrow_table()
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
    with registered(con, "requested_seed_ids", pa.table({"customer_id": pa.array(ids, pa.int64())})):
        found = con.sql(
            "select e.customer_id, e.embedding from customer_embeddings e "
            "join requested_seed_ids r using (customer_id) order by e.customer_id"
        ).to_arrow_table()
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
    ids, vectors = ids_and_vectors(found)
    seeds = Seeds(source=source, requested=requested, ids=ids, vectors=normalise(vectors), warnings=[])
    if seeds.missing:
        seeds.warnings.append(f"{seeds.missing:,} of {seeds.requested:,} seed ids are not in the population (no embedding); using {seeds.found:,}.")
    if seeds.found < MIN_RECOMMENDED_SEEDS:
        seeds.warnings.append(
            f"Only {seeds.found} seeds matched; ad platforms recommend at least {MIN_RECOMMENDED_SEEDS} "
            "for a stable lookalike audience."
        )
    return seeds


NUMERIC_TYPES = {"tinyint", "smallint", "integer", "bigint", "hugeint", "utinyint", "usmallint", "uinteger",
                 "ubigint", "uhugeint", "float", "double", "decimal", "null"}  # null: an untyped NULL column, caught below


def value_column(relation: duckdb.DuckDBPyRelation, what: str) -> str:
    """The value column of a (customer_id, value) query: `value`, or the only column besides customer_id."""
    columns = relation.columns
    others = [c for c in columns if c != "customer_id"]
    if "customer_id" not in columns or not others:
        raise input_error(what, f"returns columns {columns}: it needs customer_id and value "
                                "(select customer_id, <amount> as value from ...).")
    column = "value" if "value" in others else others[0] if len(others) == 1 else None
    if column is None:
        raise input_error(what, f"returns columns {columns}: name the value column `value`.")
    kind = relation.types[columns.index(column)]
    if kind.id not in NUMERIC_TYPES:
        raise input_error(what, f"column {column} is {kind}, not a number: cast it (e.g. {column}::double).")
    return column


def example(ids: np.ndarray, values: np.ndarray | None = None) -> str:
    """The first few offending customers of an error: 'e.g. customer 12, 15' or 'e.g. customer 12: -5'."""
    items = ids[:3].tolist() if values is None else [f"{i}: {v:g}" for i, v in zip(ids[:3].tolist(), values[:3].tolist())]
    return "e.g. customer " + ", ".join(map(str, items))


def seed_values(con: duckdb.DuckDBPyConnection, sql: str, ids: np.ndarray, what: str, noun: str = "seed members"
                ) -> tuple[np.ndarray, dict, list[str]]:
    """(value per id in `ids`, summary, warnings) from a (customer_id, value) query (`what` names it in errors).

    Rows of customers not in `ids` are ignored. Every value given must be a finite number >= 0, one per
    customer, and at least one positive. An id with no row gets the median of the values given (and a
    warning): a value table that misses a few seed members should not drop them, nor stop the job.
    """
    relation = user_query(con, sql, what)
    column = value_column(relation, what)
    wanted = con.from_arrow(pa.table({"customer_id": pa.array(ids, pa.int64())}))
    with sql_errors(what):
        table = (relation.select(f'try_cast("customer_id" as bigint) as customer_id, cast("{column}" as double) as value')
                 .join(wanted, "customer_id").order("customer_id").to_arrow_table())
    found = table.column("customer_id").to_numpy()
    given = table.column("value").to_numpy()  # NaN where null
    repeated = np.unique(found[1:][found[1:] == found[:-1]])
    if len(repeated):
        raise input_error(what, f"returns several rows for {len(repeated):,} customer(s) ({example(repeated)}): "
                                "give one value per customer (aggregate with sum or max).")
    null = np.isnan(given)
    if null.any():
        raise input_error(what, f"gives a null (or NaN) value to {int(null.sum()):,} of the {noun} ({example(found[null])}): "
                                "every value must be a number >= 0 (coalesce(value, 0) counts them as worth nothing).")
    bad = ~np.isfinite(given) | (given < 0)
    if bad.any():
        raise input_error(what, f"gives a negative or infinite value to {int(bad.sum()):,} of the {noun} "
                                f"({example(found[bad], given[bad])}): values must be finite and >= 0.")
    if len(found) == 0:
        raise input_error(what, f"has no row for any of the {len(ids):,} {noun}: check that it returns the "
                                "warehouse's customer_id.")
    if not (given > 0).any():
        raise input_error(what, f"gives each of the {len(found):,} {noun} it covers a value of 0: at least one must be positive.")
    median = float(np.median(given))
    values = np.full(len(ids), median)
    values[np.searchsorted(ids, found)] = given  # ids are sorted and unique (np.unique / ids_and_vectors)
    weights = values / values.mean()
    summary = {"value_sql": sql, "seeds_with_value": int(len(found)), "filled_with_median": int(len(ids) - len(found)),
               "zero_values": int((values == 0).sum()), "min": float(values.min()), "median": median,
               "mean": float(values.mean()), "max": float(values.max()),
               # Kish's effective sample size: how many equally weighted seeds the weights are worth.
               "effective_seeds": round(float(weights.sum() ** 2 / (weights ** 2).sum()), 1)}
    warnings = []
    if len(found) < len(ids):
        warnings.append(f"{len(ids) - len(found):,} of the {len(ids):,} {noun} have no row in the value SQL; "
                        f"they count at the median value ({median:g}).")
    return values, summary, warnings


def seed_value_weights(con: duckdb.DuckDBPyConnection, seeds: Seeds, seed_value_sql: str) -> dict:
    """Weight `seeds` by the values of `seed_value_sql` (mean weight 1); returns the summary for
    audiences.parameters (and adds a warning to the seeds when some have no value)."""
    values, summary, warnings = seed_values(con, seed_value_sql, seeds.ids, "seed_value_sql")
    seeds.weights = values / values.mean()
    seeds.warnings.extend(warnings)
    return summary


def excluded_ids(con: duckdb.DuckDBPyConnection, exclude_sql: str | None) -> tuple[np.ndarray, dict]:
    """Suppression list (exclude_sql) plus raw.opt_outs when present; returns ids and counts per source."""
    parts, counts = [], {}
    if exclude_sql:
        parts.append(query_ids(con, exclude_sql, "exclude_sql"))
        counts["exclude_sql"] = len(parts[-1])
    if table_exists(con, "opt_outs", schema="raw"):
        parts.append(query_ids(con, "select customer_id from raw.opt_outs", "raw.opt_outs"))
        counts["opt_outs"] = len(parts[-1])
    ids = np.unique(np.concatenate(parts)) if parts else np.empty(0, dtype=np.int64)
    return ids, counts


def persona_seed_sql(db_path: Path, name: str) -> str:
    """`--seed-persona NAME` as seed SQL: the customers whose top persona in customer_personas is NAME."""
    with connection(db_path, read_only=True) as con:
        require_table(con, "customer_personas", "Run `lookalike personas label` and `lookalike personas propagate` first.")
        personas = con.execute("select persona_id, name from persona_definitions order by persona_id").fetchall()
    matches = [persona_id for persona_id, persona in personas if persona.strip().lower() == name.strip().lower()]
    if not matches:
        raise LookalikeError(f"No persona named {name!r}; persona_definitions has: {', '.join(p for _, p in personas)}.")
    return f"select customer_id from customer_personas where persona_id = {int(matches[0])} and persona_rank = 1"


def population_vectors(con: duckdb.DuckDBPyConnection, size: int, random_seed: int, index=None) -> tuple[np.ndarray, np.ndarray]:
    """(ids, L2-normalised embeddings) of a repeatable reservoir sample of `size` scored customers.

    With `index` (a LoadedIndex of the same model version) only the ids are sampled from the table and the
    vectors come from the index (the same vectors to the bit: both sides normalise with vectors.normalise):
    sampling the embedding column itself reads every customer's vector (~1 s at 1M customers)."""
    sample = f"using sample reservoir({int(size)} rows) repeatable ({int(random_seed)})"
    if index is not None:
        ids = con.sql(f"select customer_id from customer_embeddings {sample}").fetchnumpy()["customer_id"].astype(np.int64)
        try:
            return ids, normalise(index.vectors(ids)) if len(ids) else np.zeros((0, index.manifest.dim), np.float32)
        except RuntimeError:  # FAISS: a sampled customer scored after the index was built; read the table instead
            pass
    ids, vectors = ids_and_vectors(con.sql(f"select customer_id, embedding from customer_embeddings {sample}").to_arrow_table())
    return ids, normalise(vectors)

