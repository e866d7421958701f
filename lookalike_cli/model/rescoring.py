"""Re-score only the customers whose model inputs changed: what `lookalike refresh` runs instead of a full score.

An embedding is a deterministic function of (the model, the customer's feature columns the model
reads), so a customer whose columns hash the same as when they were last scored keeps their
embedding. The hashes live beside the embeddings in `customer_embedding_inputs` (customer_id,
feature_hash, scored_generation), written in the same transaction as customer_embeddings, so the two
never disagree. Each run that scores anything gets a new, larger `scored_generation`: the index update
reads the rows scored after the generation its manifest covers, so a refresh killed between scoring
and indexing still updates the index with those rows next time. A full re-score gives every row the
same generation, so an index older than the oldest generation left in the table predates a full
re-score and is rebuilt.

Everything is re-scored (and the hashes rewritten) when the hashes cannot be trusted: no hash table
yet, customer_embeddings from another model version, or customer_embeddings rewritten by something
else since the last refresh (`lookalike score`, the dbt model: the caller passes `trusted=False`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pyarrow as pa

from lookalike_cli.progress import Progress, quiet

INPUTS_TABLE = "customer_embedding_inputs"


@dataclass
class RescoreResult:
    full: bool
    reason: str
    scored: int          # customers scored by this run (new or with changed inputs)
    removed: int         # customers gone from customer_features, their embeddings deleted
    customers: int       # rows of customer_embeddings afterwards
    generation: int      # scored_generation of the rows this run wrote
    model_version: str
    seconds: float


def feature_hash_sql(columns: list[str], alias: str = "f") -> str:
    """DuckDB's 64-bit hash of the model's input columns of one customer_features row."""
    return "hash(" + ", ".join(f'{alias}."{column}"' for column in columns if column != "customer_id") + ")"


def rescore_changed(settings, trusted: bool = True, progress: Progress = quiet) -> RescoreResult:
    """Bring customer_embeddings up to date with customer_features and the latest model, scoring only what changed.

    `trusted=False` forces a full re-score (the caller found customer_embeddings changed behind its back)."""
    from lookalike_cli.model.locations import embed_locations
    from lookalike_cli.model.manifest import check_trained_here, find_manifest, load_manifest, verified_model_file
    from lookalike_cli.model.features import FeatureSpec
    from lookalike_cli.model.scoring import EMBEDDINGS_TABLE, score_relation
    from lookalike_cli.warehouse.connection import connection, registered, table_exists, transaction

    started = time.perf_counter()
    manifest_path = find_manifest(settings.onnx_dir, None)
    manifest = load_manifest(manifest_path)
    version = manifest["model_version"]
    verified_model_file(manifest_path, manifest, "none")  # a damaged file fails here, before any row is read
    columns = FeatureSpec.from_dict(manifest["features"]).required_columns
    hashed = feature_hash_sql(columns)
    with connection(settings.db_path) as con:
        check_trained_here(manifest_path, manifest, settings.db_path, con)
        if manifest["features"]["location"] == "sentence":
            embed_locations(con, progress=progress)
        reason = full_rescore_reason(con, version, trusted)
        previous = (con.execute(f"select coalesce(max(scored_generation), 0) from {INPUTS_TABLE}").fetchall()[0][0]
                    if table_exists(con, INPUTS_TABLE) else 0)
        # Microseconds since the epoch, and always above the last one: generations never repeat, even
        # across a dropped hash table, so an index manifest's generation can only name these rows.
        generation = max(previous + 1, time.time_ns() // 1000)
        if reason:
            changed = con.sql(f"select f.customer_id, {hashed} as feature_hash, {generation}::bigint as scored_generation "
                              "from customer_features f").to_arrow_table()
            removed = pa.table({"customer_id": pa.array([], pa.int64())})
        else:
            changed = con.sql(f"""
                select f.customer_id, {hashed} as feature_hash, {generation}::bigint as scored_generation
                from customer_features f left join {INPUTS_TABLE} i using (customer_id)
                where i.feature_hash is distinct from {hashed}""").to_arrow_table()
            removed = con.sql(f"select customer_id from {INPUTS_TABLE} anti join customer_features using (customer_id)").to_arrow_table()
        total = con.execute("select count(*) from customer_features").fetchall()[0][0]
        progress(f"re-scoring {'all ' if reason else ''}{changed.num_rows:,} of {total:,} customers"
                 + (f" ({reason})" if reason else f" (their model inputs changed or they are new); {removed.num_rows:,} removed"))
        if changed.num_rows == 0 and removed.num_rows == 0:
            rows = con.execute(f"select count(*) from {EMBEDDINGS_TABLE}").fetchall()[0][0]
            return RescoreResult(False, "no customer's model inputs changed", 0, 0, rows, previous, version,
                                 time.perf_counter() - started)
        reader = con.cursor()  # reads customer_features while `con` writes
        try:
            with registered(reader, "changed_customers", changed.select(["customer_id"])):
                relation = reader.sql("select f.* from customer_features f semi join changed_customers c using (customer_id)")
                stream = score_relation(relation, reader, onnx_dir=manifest_path.parent, model=str(manifest_path),
                                        expected_version=version, progress=progress)
                write_changed(con, stream, changed, removed, full=bool(reason))
        finally:
            reader.close()
        rows = con.execute(f"select count(*) from {EMBEDDINGS_TABLE}").fetchall()[0][0]
    return RescoreResult(bool(reason), reason or "only customers whose model inputs changed", changed.num_rows,
                         removed.num_rows, rows, generation, version, time.perf_counter() - started)


def full_rescore_reason(con, model_version: str, trusted: bool) -> str | None:
    """Why every customer must be scored, or None when the stored hashes describe customer_embeddings."""
    from lookalike_cli.model.scoring import EMBEDDINGS_TABLE
    from lookalike_cli.warehouse.connection import table_exists

    if not table_exists(con, EMBEDDINGS_TABLE):
        return "no customer_embeddings yet"
    if not table_exists(con, INPUTS_TABLE):
        return f"no {INPUTS_TABLE} yet (embeddings scored outside refresh)"
    if not trusted:
        return "customer_embeddings was rewritten outside refresh since it last ran"
    versions = [row[0] for row in con.execute(f"select distinct model_version from {EMBEDDINGS_TABLE}").fetchall()]
    if versions != [model_version]:
        return f"the model changed ({', '.join(map(str, versions)) or 'empty table'} -> {model_version})"
    return None


def write_changed(con, stream: pa.RecordBatchReader, changed: pa.Table, removed: pa.Table, full: bool) -> None:
    """customer_embeddings and customer_embedding_inputs updated in one transaction: the scored rows replace
    their customers' old rows and the removed customers' rows go. A failure mid-stream rolls both back and
    raises the stream's own error (as scoring.write_embeddings does)."""
    from lookalike_cli.model.scoring import EMBEDDINGS_TABLE, consumed_in_a_write
    from lookalike_cli.warehouse.connection import registered, transaction

    with consumed_in_a_write(stream) as scored, transaction(con), registered(con, "scored_customer_batches", scored), \
            registered(con, "changed_inputs", changed), registered(con, "removed_customers", removed):
        if full:
            con.execute(f"create or replace table {EMBEDDINGS_TABLE} as select * from scored_customer_batches")
            con.execute(f"create or replace table {INPUTS_TABLE} as select * from changed_inputs")
            return
        for table in (EMBEDDINGS_TABLE, INPUTS_TABLE):
            con.execute(f"delete from {table} where customer_id in "
                        "(select customer_id from changed_inputs union all select customer_id from removed_customers)")
        con.execute(f"insert into {EMBEDDINGS_TABLE} select * from scored_customer_batches")
        con.execute(f"insert into {INPUTS_TABLE} select * from changed_inputs")
