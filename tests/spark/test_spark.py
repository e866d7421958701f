"""The same project on Apache Spark: dbt models on a local Spark session agree with DuckDB,
Spark scoring equals DuckDB scoring, Spark expansion agrees with exact search.

One Spark session and one `dbt build --target spark` for the module, over the shared scored
warehouse (generated data, a trained model, DuckDB embeddings and a flat FAISS index).
"""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from tests.helpers import run_cli
from lookalike_cli.settings import Settings

pyspark = pytest.importorskip("pyspark", reason="the Spark engine needs the extra [spark]")
pytestmark = [pytest.mark.spark, pytest.mark.slow]

LABELS = ["similarity_orders", "similarity_visits", "similarity_engagements", "jaccard_orders"]
# Exact-valued ordering (counts, ids): both engines pick the same seed customers.
SEED_SQL = "select customer_id from customer_features order by order_count desc, customer_id limit 150"


def run_spark_cli(settings: Settings, *args: str, expect_exit: int | None = 0):
    return run_cli(settings, "--spark-dir", str(settings.spark_dir), *args, expect_exit=expect_exit)


@pytest.fixture(scope="module")
def spark_warehouse(scored_warehouse, tmp_path_factory):
    """The scored warehouse's raw tables loaded into Spark, every dbt model built there, and
    customers scored on Spark with the same model. The DuckDB files are only read; audiences
    go to a private serving file."""
    folder = tmp_path_factory.mktemp("spark")
    settings = Settings.resolve(db=scored_warehouse.db_path, serving_db=folder / "serving.duckdb",
                                onnx_dir=scored_warehouse.onnx_dir, index_dir=scored_warehouse.index_dir,
                                spark_dir=folder / "spark")
    with pytest.MonkeyPatch.context() as patch:
        # Small data: one shuffle partition per core instead of the profile's 8 (fewer tasks per stage).
        patch.setenv("LOOKALIKE_SPARK_SHUFFLE_PARTITIONS", "2")
        run_spark_cli(settings, "spark", "load-raw")
        # Every model, and the data tests this project defines (has_rows, unique_combination, between,
        # the singular tests: our SQL, which must be portable); dbt's built-in not_null, unique,
        # accepted_values and relationships tests are dbt-spark's SQL, ~90 Spark jobs that took half
        # the build, and the marts they guard are compared value by value with DuckDB's (where they
        # all ran) in test_marts_agree_with_duckdb. So is similarity_pairs, whose unit test (fixture rows
        # through the same SQL, a fifth of this build on Spark) therefore runs on DuckDB only.
        run_spark_cli(settings, "build", "--target", "spark", "--exclude", "customer_embeddings+ test_type:unit " + " ".join(
            f"test_name:{name}" for name in ("not_null", "unique", "accepted_values", "relationships")))
        run_spark_cli(settings, "score", "--engine", "spark", "--model", "shared")
        from lookalike_cli.spark.session import spark_session

        spark = spark_session(settings)
        yield settings, spark
        spark.stop()


def duckdb_table(settings: Settings, sql: str) -> pa.Table:
    with duckdb.connect(str(settings.db_path), read_only=True) as con:
        return con.sql(sql).to_arrow_table()


def spark_table(spark, sql: str) -> pa.Table:
    return spark.sql(sql).toArrow()


# A row hash each engine computes its own way (refresh compares it only with its own earlier value).
ENGINE_LOCAL_COLUMNS = {"customer_features_hash"}


@pytest.mark.parametrize("table, key", [
    ("categories", "category_id"),
    ("int_customer_pairs_sampled", "customer_id_a, customer_id_b"),
    ("similarity_pairs", "customer_id_a, customer_id_b"),
    # Both points in time: one feature definition, the same two tables on either engine.
    ("training_features", "customer_id"),
    ("customer_features", "customer_id"),
    # Strings compare exactly: every customer's profile_text and bands are identical on both engines.
    ("customer_profiles_text", "customer_id"),
])
def test_marts_agree_with_duckdb(spark_warehouse, table, key):
    settings, spark = spark_warehouse
    expected = duckdb_table(settings, f"select * from {table} order by {key}")
    actual = spark_table(spark, f"select * from lookalike.{table} order by {key}")
    assert actual.num_rows == expected.num_rows > 0
    assert actual.column_names == expected.column_names
    for name in expected.column_names:
        if name in ENGINE_LOCAL_COLUMNS:
            continue
        want, got = expected.column(name).combine_chunks(), actual.column(name).combine_chunks()
        if pa.types.is_floating(want.type):
            # Labels (similarity_*, jaccard) and numeric features: sums in another order, same values.
            a = want.to_numpy(zero_copy_only=False).astype(float)
            b = got.to_numpy(zero_copy_only=False).astype(float)
            assert np.array_equal(np.isnan(a), np.isnan(b)), f"{table}.{name}: nulls differ"
            assert np.allclose(a, b, rtol=0, atol=1e-6, equal_nan=True), f"{table}.{name}: max diff {np.nanmax(np.abs(a - b))}"
        elif pa.types.is_timestamp(want.type):
            # Spark's TIMESTAMP arrives as UTC-aware, DuckDB's as naive: the same instants (session time zone UTC).
            assert want.cast(pa.timestamp("us")).to_pylist() == got.cast(pa.timestamp("us", tz="UTC")).cast(
                pa.timestamp("us")).to_pylist(), f"{table}.{name} differs"
        elif pa.types.is_list(want.type) and pa.types.is_floating(want.type.value_type):
            assert pc_lengths(want) == pc_lengths(got), f"{table}.{name}: list lengths differ"
            assert np.allclose(want.flatten().to_numpy(), got.flatten().to_numpy(), rtol=0, atol=1e-9)
        else:
            assert want.to_pylist() == got.to_pylist(), f"{table}.{name} differs"


# Exact halves (0.25, 2.5, 216.5), halves that are not exact in binary (0.35, 2.675, 99.95),
# and values that Java's Formatter and C printf round differently.
FORMAT_VALUES = [0.0, 0.05, 0.25, 0.35, 0.45, 0.75, 1.5, 2.5, 2.675, 3.5, 99.95, 216.5, 217.5, 1234567.85, 0.3 * 3, 1e-7]


@pytest.mark.parametrize("decimals", [0, 1, 2])
def test_format_fixed_decimals_rounds_like_printf_on_spark(spark_warehouse, decimals):
    """The profile text's numbers: the spark__ macro must print what DuckDB's printf prints."""
    settings, spark = spark_warehouse
    values = ", ".join(f"({i}, cast({v!r} as double))" for i, v in enumerate(FORMAT_VALUES))
    sql = "select {} as text from values {} as t(i, x) order by i"
    expected = duckdb_table(settings, sql.format(render_macro("default__format_fixed_decimals", "x", decimals), values))
    actual = spark_table(spark, sql.format(render_macro("spark__format_fixed_decimals", "x", decimals), values))
    assert actual.column("text").to_pylist() == expected.column("text").to_pylist()


def render_macro(name: str, *args) -> str:
    """One dispatch implementation from macros/portable_sql.sql as SQL (plain Jinja: it calls no dbt context)."""
    import jinja2

    from lookalike_cli.settings import BUNDLED_DBT_PROJECT_DIR as DBT_PROJECT_DIR

    macros = (DBT_PROJECT_DIR / "macros" / "portable_sql.sql").read_text()
    call = "{{ " + name + "(" + ", ".join(repr(a) for a in args) + ") }}"
    return jinja2.Environment().from_string(macros + call).render().strip()


def pc_lengths(column: pa.Array) -> list[int]:
    import pyarrow.compute as pc

    return pc.list_value_length(column).to_pylist()


def test_spark_scoring_equals_duckdb_scoring(spark_warehouse):
    settings, spark = spark_warehouse
    expected = duckdb_table(settings, "select * from customer_embeddings order by customer_id")
    frame = spark.table("lookalike.customer_embeddings")
    assert frame.dtypes == [("customer_id", "bigint"), ("embedding", "array<float>"), ("model_version", "string")]
    actual = frame.orderBy("customer_id").toArrow()
    assert actual.column("customer_id").to_pylist() == expected.column("customer_id").to_pylist()
    assert set(actual.column("model_version").to_pylist()) == set(expected.column("model_version").to_pylist())
    want = np.array(expected.column("embedding").to_pylist(), dtype=np.float32)
    got = np.array(actual.column("embedding").to_pylist(), dtype=np.float32)
    assert want.shape == got.shape and want.shape[1] > 1
    assert np.allclose(want, got, atol=1e-5)


def test_spark_expand_agrees_with_exact_search(spark_warehouse):
    settings, _ = spark_warehouse
    run_spark_cli(settings, "expand", "--name", "exact", "--strategy", "centroid", "--seed-sql", SEED_SQL, "--size", "5%")
    run_spark_cli(settings, "expand", "--engine", "spark", "--name", "on_spark", "--seed-sql", SEED_SQL, "--size", "5%")
    with duckdb.connect(str(settings.serving_db_path), read_only=True) as con:
        audiences = {row[0]: row[1:] for row in con.execute(
            "select name, strategy, index_type, size, model_version from latest_audiences").fetchall()}
        members = {name: con.execute(
            "select customer_id, rank, score, nearest_seed_id from latest_audience_members where audience_name = ? order by rank",
            [name]).fetchall() for name in ("exact", "on_spark")}
        curves = {name: con.execute(
            "select c.size, c.min_score, c.expected_lift, c.source from audience_reach_curve c join latest_audiences a "
            "using (audience_id) where a.name = ? order by c.size", [name]).fetchall() for name in ("exact", "on_spark")}
    # Below 50k customers build-index chose a flat (exact) index: the DuckDB path is exact search.
    assert audiences["exact"][1] == "flat"
    assert audiences["on_spark"][:3] == ("centroid", "spark-exact", audiences["exact"][2])
    assert audiences["on_spark"][3] == audiences["exact"][3]
    exact = [row[0] for row in members["exact"]]
    on_spark = [row[0] for row in members["on_spark"]]
    overlap = len(set(exact) & set(on_spark)) / len(exact)
    assert overlap >= 0.95, overlap
    assert [row[1] for row in members["on_spark"]] == list(range(1, len(on_spark) + 1))
    scores = np.array([row[2] for row in members["on_spark"]])
    assert np.all(np.diff(scores) <= 1e-12), "members must be ranked by score"
    seeds = set(duckdb_table(settings, SEED_SQL).column("customer_id").to_pylist())
    opted_out = set(duckdb_table(settings, "select customer_id from raw.opt_outs").column("customer_id").to_pylist())
    assert not (set(on_spark) & (seeds | opted_out)), "seeds and opt-outs are never members"
    assert {row[3] for row in members["on_spark"]} <= seeds
    # Spark audiences get a reach curve like DuckDB ones: the same sizes, in-seed lifts, min scores of its ranking.
    assert [row[0] for row in curves["on_spark"]] == [row[0] for row in curves["exact"]]
    at_size = [row for row in curves["on_spark"] if row[0] == len(on_spark)]
    assert at_size and at_size[0][1] == pytest.approx(scores[-1])
    assert {row[3] for row in curves["on_spark"]} == {"in_seed"} and curves["on_spark"][0][2] > 1


def test_spark_errors_name_the_problem_and_keep_tables(spark_warehouse):
    settings, spark = spark_warehouse
    before = spark.table("lookalike.customer_embeddings").count()
    result = run_spark_cli(settings, "score", "--engine", "spark", "--model", "shared", "--model-version", "nope", expect_exit=1)
    assert "version nope was requested" in result.output
    assert spark.table("lookalike.customer_embeddings").count() == before
    result = run_spark_cli(settings, "expand", "--engine", "spark", "--name", "x", "--strategy", "knn-vote",
                           "--seed-sql", SEED_SQL, "--size", "10", expect_exit=1)
    assert "centroid, multi-centroid" in result.output
    result = run_spark_cli(settings, "expand", "--engine", "spark", "--name", "x",
                           "--seed-sql", "select customer_id from customer_features where customer_id < 0", "--size", "10", expect_exit=1)
    assert "is empty" in result.output
    # A raw schema that is not in Spark fails compilation with the Spark hint; nothing is rebuilt.
    features = spark.table("lookalike.customer_features").count()
    result = run_spark_cli(settings, "dbt", "run", "--target", "spark", "--select", "stg_customers",
                           "--vars", "{raw_schema: nowhere}", expect_exit=1)
    assert "nowhere.customers does not exist" in result.output and "lookalike spark load-raw" in result.output
    assert spark.table("lookalike.customer_features").count() == features


def test_training_data_exported_from_spark_trains(spark_warehouse, tmp_path):
    settings, _ = spark_warehouse
    training = tmp_path / "training.duckdb"
    run_spark_cli(settings, "spark", "export-training-data", "--to", str(training))
    expected_pairs, expected_customers = duckdb_table(settings, (
        "select (select count(*) from similarity_pairs) as pairs, (select count(*) from training_features where customer_id in "
        " (select customer_id_a from similarity_pairs union select customer_id_b from similarity_pairs)) as customers"
    )).to_pylist()[0].values()
    with duckdb.connect(str(training), read_only=True) as con:
        pairs, customers, unpaired = con.execute(
            "select (select count(*) from similarity_pairs), (select count(*) from training_features), "
            "(select count(*) from training_features where customer_id not in "
            " (select customer_id_a from similarity_pairs union select customer_id_b from similarity_pairs))").fetchone()
    assert (pairs, customers, unpaired) == (expected_pairs, expected_customers, 0)
    onnx = tmp_path / "onnx"
    run_cli(Settings.resolve(db=training, onnx_dir=onnx, index_dir=tmp_path / "indexes"),
            "train", "--name", "from_spark", "--epochs", "1")
    assert (onnx / "from_spark.onnx").exists()
