"""`lookalike expand --engine spark`: lookalike candidates computed on Spark, published like any audience.

For populations whose embeddings do not fit one machine's index. The seed centroid(s) are
broadcast; every partition of customer_embeddings (seeds and suppressed customers removed by
an anti-join) scores its rows by cosine with numpy and keeps only its own top `size` (or every
row above `--min-similarity`); the driver merges those few candidates into the global top.
The search is exact, so it agrees with exact search up to float rounding. The members then go
through the same `publish.publish_audience` as the DuckDB/FAISS path.

Strategies: centroid and multi-centroid (the seed sub-clusters of `expand.seed_clusters`).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa

from lookalike_cli.audiences.expand import (Expansion, base_parameters, cap_share, check_cut, check_found, check_target, is_share,
                                            parse_size, ranked_expansion, seed_clusters)
from lookalike_cli.audiences.seeds import Seeds, id_column, read_id_file, seed_source, seeds_from_embeddings
from lookalike_cli.errors import LookalikeError, ParameterError, input_error
from lookalike_cli.progress import Progress
from lookalike_cli.vectors import ids_and_vectors, normalise

SPARK_STRATEGIES = ("centroid", "multi-centroid")
CANDIDATES_SCHEMA = "customer_id bigint, score double, nearest_seed_id bigint"
# Rows per matrix product in a partition: bounds the (rows x seeds) similarity block in memory.
CHUNK_ROWS = 8192


def top_candidates(batches: Iterator[pa.RecordBatch], search) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: the partition's best `limit` customers (or all above `min_similarity`).

    Score = cosine to the nearest centroid; each kept customer also gets its nearest seed.
    """
    query = search.value
    centroids, seed_ids, seed_vectors = query["centroids"], query["seed_ids"], query["seed_vectors"]
    limit, min_similarity = query["limit"], query["min_similarity"]
    kept_ids, kept_scores, kept_vectors = [], [], []
    for batch in batches:
        if not batch.num_rows:
            continue
        ids, vectors = ids_and_vectors(batch)
        vectors = normalise(vectors)
        scores = (vectors @ centroids.T).max(axis=1)
        keep = np.ones(len(ids), dtype=bool) if min_similarity is None else scores >= min_similarity
        kept_ids.append(ids[keep])
        kept_scores.append(scores[keep])
        kept_vectors.append(vectors[keep])
        kept_ids, kept_scores, kept_vectors = best_of(kept_ids, kept_scores, kept_vectors, limit)
    if not kept_ids:
        return
    ids, scores, vectors = kept_ids[0], kept_scores[0], kept_vectors[0]
    nearest = np.empty(len(ids), dtype=np.int64)
    for start in range(0, len(ids), CHUNK_ROWS):
        block = vectors[start:start + CHUNK_ROWS] @ seed_vectors.T
        nearest[start:start + CHUNK_ROWS] = seed_ids[block.argmax(axis=1)]
    yield pa.RecordBatch.from_arrays(
        [pa.array(ids, pa.int64()), pa.array(scores.astype(np.float64), pa.float64()), pa.array(nearest, pa.int64())],
        names=["customer_id", "score", "nearest_seed_id"],
    )


def best_of(ids: list[np.ndarray], scores: list[np.ndarray], vectors: list[np.ndarray], limit: int | None):
    """Concatenate the running candidates and keep the `limit` best (ties: smaller id first, as in expand.ranked)."""
    ids_all, scores_all, vectors_all = np.concatenate(ids), np.concatenate(scores), np.concatenate(vectors)
    if limit is not None and len(ids_all) > limit:
        order = np.lexsort((ids_all, -scores_all))[:limit]
        ids_all, scores_all, vectors_all = ids_all[order], scores_all[order], vectors_all[order]
    return [ids_all], [scores_all], [vectors_all]


def resolve_seeds_spark(spark, seed_sql: str | None, seed_table: str | None, seed_file: str | Path | None) -> Seeds:
    """Seed ids from SQL run on Spark (or a Spark table, or a CSV file), with their Spark embeddings."""
    source = seed_source(seed_sql, seed_table, seed_file)
    if seed_file:
        requested = spark.createDataFrame(pa.table({"customer_id": pa.array(read_id_file(Path(seed_file)), pa.int64())}))
    else:
        with spark_sql_errors(f"Seed {source}"):
            requested = customer_ids(spark.sql(seed_sql) if seed_sql else spark.table(seed_table), f"Seed {source}")
    requested = requested.distinct().cache()
    try:
        count = requested.count()
        if count == 0:
            raise LookalikeError(f"The seed ({source}) is empty: it returned no customer ids.")
        found = (spark.table("customer_embeddings").join(requested, "customer_id")
                 .select("customer_id", "embedding").orderBy("customer_id").toArrow())
    finally:
        requested.unpersist()
    return seeds_from_embeddings(source, count, found)


@contextmanager
def spark_sql_errors(what: str) -> Iterator[None]:
    """Spark's errors of SQL the user wrote as one line naming it: "<what> failed on Spark: ..."."""
    from pyspark.errors import PySparkException

    try:
        yield
    except PySparkException as exc:
        raise input_error(what, f"failed on Spark: {str(exc).splitlines()[0]}") from exc


def customer_ids(frame, what: str):
    """The non-null customer ids of a Spark frame as bigint (its customer_id column, or its only column)."""
    column = id_column(frame.columns, what)
    return frame.selectExpr(f"try_cast(`{column}` as bigint) as customer_id").where("customer_id is not null")


def excluded_frame(spark, exclude_sql: str | None, raw_schema: str = "raw"):
    """Suppressed customer ids as a Spark frame (exclude_sql plus raw.opt_outs when present) and counts."""
    from lookalike_cli.spark.session import table_exists

    parts, counts = [], {}
    if exclude_sql:
        with spark_sql_errors("exclude_sql"):
            parts.append(customer_ids(spark.sql(exclude_sql), "exclude_sql").distinct())
            counts["exclude_sql"] = parts[-1].count()
    if table_exists(spark, f"{raw_schema}.opt_outs"):
        parts.append(spark.table(f"{raw_schema}.opt_outs").selectExpr("cast(customer_id as bigint) as customer_id").distinct())
        counts["opt_outs"] = parts[-1].count()
    return parts, counts


def expand_spark(
    settings,
    seed_sql: str | None = None,
    seed_table: str | None = None,
    seed_file: str | Path | None = None,
    size: str | int | None = None,
    min_similarity: float | None = None,
    strategy: str = "centroid",
    exclude_sql: str | None = None,
    seed: int = 0,
    progress: Progress = print,
    reach_backtest=None,
) -> Expansion:
    """Compute an audience on Spark (nothing is written); same result shape as `expand.expand`,
    reach curve included (in-seed validation on a population sample, `reach_backtest` where it measured).

    Seed and exclusion SQL run on Spark with the dbt schema as the current database, so the
    same `select customer_id from customer_features ...` works on both engines.
    """
    from pyspark.sql import functions as F

    from lookalike_cli.spark.session import require_spark_table, schema_name, spark_session

    if strategy not in SPARK_STRATEGIES:
        raise ParameterError(f"{{strategy}} {strategy!r} needs the DuckDB engine (FAISS); Spark runs "
                             f"{', '.join(SPARK_STRATEGIES)}.", "strategy")
    check_cut(size, min_similarity)
    started = time.perf_counter()
    spark = spark_session(settings, progress=progress)
    schema = schema_name(settings)
    require_spark_table(spark, f"{schema}.customer_embeddings", "Build it with `lookalike score --engine spark`.")
    spark.catalog.setCurrentDatabase(schema)
    embeddings = spark.table("customer_embeddings")
    versions = [r[0] for r in embeddings.select("model_version").distinct().limit(2).collect()]
    if len(versions) != 1:
        raise LookalikeError(f"{schema}.customer_embeddings holds {len(versions)} model versions: rescore with `lookalike score --engine spark`.")
    population = embeddings.count()
    target = parse_size(size, population)
    seeds = resolve_seeds_spark(spark, seed_sql, seed_table, seed_file)
    warnings = list(seeds.warnings)
    check_target(target, size, population, seeds)
    excluded_parts, excluded_counts = excluded_frame(spark, exclude_sql)
    excluded = None
    for part in excluded_parts:
        excluded = part if excluded is None else excluded.unionByName(part)
    excluded = excluded.distinct() if excluded is not None else None
    excluded_count = excluded.count() if excluded is not None else 0
    blocked = spark.createDataFrame(pa.table({"customer_id": pa.array(seeds.ids, pa.int64())}))
    if excluded is not None:
        blocked = blocked.unionByName(excluded).distinct()
    if is_share(size):
        target = cap_share(target, size, population - embeddings.select("customer_id").join(blocked, "customer_id", "left_semi").count())
    progress(f"Seeds: {seeds.found:,} found, {seeds.missing:,} missing; excluding seeds + "
             f"{excluded_counts or 'no suppression lists'}; strategy {strategy} on Spark")

    parameters = {**base_parameters(seeds, size, min_similarity, exclude_sql, seed), "engine": "spark"}
    if strategy == "multi-centroid":
        centroids, info = seed_clusters(seeds.vectors, seed)
        parameters.update(info)
        progress(f"  seed sub-clusters: {info['clusters']} (silhouette {info['silhouette']})")
    else:
        centroids = normalise(seeds.vectors.mean(axis=0, keepdims=True))
    search = spark.sparkContext.broadcast({
        "centroids": np.ascontiguousarray(centroids, dtype=np.float32),
        "seed_ids": seeds.ids,
        "seed_vectors": np.ascontiguousarray(seeds.vectors, dtype=np.float32),
        "limit": target,
        "min_similarity": min_similarity,
    })
    try:
        candidates = (embeddings.select("customer_id", "embedding")
                      .join(blocked, "customer_id", "left_anti")
                      .mapInArrow(partial(top_candidates, search=search), CANDIDATES_SCHEMA))
        merged = candidates.orderBy(F.desc("score"), F.asc("customer_id"))
        if target is not None:
            merged = merged.limit(target)
        top = merged.toArrow()
    finally:
        search.unpersist()
    check_found(top.num_rows, target, size, warnings)
    scores = top.column("score").to_numpy()
    curve = spark_reach_curve(embeddings, seeds, strategy, centroids, scores, population, seed, reach_backtest)
    return ranked_expansion(top.column("customer_id").to_numpy(), scores, scores, top.column("nearest_seed_id").to_numpy(),
                            seeds=seeds, strategy=strategy, parameters=parameters, excluded_count=excluded_count,
                            population=population, model_version=versions[0], index_version=None,
                            index_type="spark-exact", started=started, warnings=warnings, progress=progress,
                            engine=" on Spark", reach=curve)


def spark_reach_curve(embeddings, seeds: Seeds, strategy: str, centroids: np.ndarray, ranked_scores: np.ndarray,
                      population: int, seed: int, backtest) -> pa.Table:
    """The reach curve as the DuckDB path computes it (reach.py), from a seeded sample of the Spark population."""
    from lookalike_cli.audiences.reach import VALIDATION_SAMPLE, reach_curve, vector_validation

    wanted = VALIDATION_SAMPLE + len(seeds.ids)
    fraction = min(1.0, 2.0 * wanted / max(population, 1))  # Bernoulli sampling: twice the share, then cut
    rows = embeddings.select("customer_id", "embedding").sample(fraction=fraction, seed=seed).limit(wanted).toArrow()
    ids, vectors = ids_and_vectors(rows)
    sample = normalise(vectors[~np.isin(ids, seeds.ids)][:VALIDATION_SAMPLE])
    validation = vector_validation(strategy, seeds.vectors, sample, seed, population, clusters=len(centroids))
    return reach_curve(population, ranked_scores, len(ranked_scores), population - seeds.found, validation, backtest,
                       lambda: (sample @ centroids.T).max(axis=1))


def customer_attributes_spark(spark, schema: str) -> pa.Table | None:
    """customer_features without its array columns, from Spark: what BI joins audiences to."""
    from lookalike_cli.spark.session import table_exists

    if not table_exists(spark, f"{schema}.customer_features"):
        return None
    frame = spark.table(f"{schema}.customer_features")
    columns = [name for name, data_type in frame.dtypes if not data_type.startswith("array")]
    return frame.select(*columns).toArrow()


def create_audience_spark(settings, name: str, export_parquet: str | Path | None = None,
                          progress: Progress = print, on_warning: Progress | None = None, **options) -> dict:
    """Expand on Spark and publish the members to the serving file like `audiences.create_audience`."""
    from lookalike_cli.audiences.catalog import warn
    from lookalike_cli.audiences.publish import check_name, publish_audience
    from lookalike_cli.audiences.reach import latest_backtest, write_reach
    from lookalike_cli.spark.session import schema_name, spark_session

    check_name(name)
    backtest = latest_backtest(settings.serving_db_path, name, options.get("strategy", "centroid"))
    result = expand_spark(settings, progress=progress, reach_backtest=backtest, **options)
    for message in result.warnings:
        (on_warning or warn)(message)
    attributes = customer_attributes_spark(spark_session(settings), schema_name(settings))
    return publish_audience(settings.serving_db_path, name, result.audience, result.members, attributes=attributes,
                            export_parquet=Path(export_parquet) if export_parquet else None, progress=progress,
                            extra=lambda con, audience_id: write_reach(con, audience_id, result.reach))
