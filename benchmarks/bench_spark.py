"""Spark vs DuckDB on the same generated data: dbt build, scoring and expansion.

    python -m benchmarks.bench_spark --customers 20000 --customers 1000000

Per size: generate into DuckDB; `dbt build` on DuckDB (subprocess) and on a local Spark
session (`--target spark`, in this process, after `lookalike spark load-raw`); train one small
model on the DuckDB marts; score every customer with it on both engines (the dbt Python model
vs ONNX Runtime in mapInArrow); expand one seed on both (FAISS vs Spark's exact top-k) and
report the overlap. DuckDB, measured in the same run, is the baseline of every ratio. The
Spark session (local[2] on this machine) starts once, before any timing; its start-up is
reported separately. Both builds run the same nodes (models and data tests); "models" is the
sum of the models' own execution times from dbt's run_results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import duckdb

from benchmarks.results import markdown_table, timed, write_section
from lookalike_cli.settings import Settings

# Nodes only one engine builds (the Python model, DuckDB-only marts) are left out on both.
EXCLUDE = ["customer_embeddings+", "customer_profiles_text", "audience_member_profiles", "persona_definitions"]
SEED_SQL = "select customer_id from customer_features order by order_count desc, customer_id limit {n}"


def model_seconds(settings: Settings) -> float:
    results = json.loads((Path(settings.env()["DBT_TARGET_PATH"]) / "run_results.json").read_text())
    return sum(r["execution_time"] for r in results["results"] if r["unique_id"].startswith("model."))


def audience_ids(serving: Path, name: str) -> list[int]:
    with duckdb.connect(str(serving), read_only=True) as con:
        return [r[0] for r in con.execute(
            "select customer_id from latest_audience_members where audience_name = ? order by rank", [name]).fetchall()]


def run(customers: int, workdir: Path, spark_dir: Path, epochs: int) -> dict:
    from lookalike_cli.audiences.catalog import create_audience
    from lookalike_cli.warehouse.dbt_runner import run_dbt
    from lookalike_cli.warehouse.generate import generate_data
    from lookalike_cli.index.faiss_index import build_index
    from lookalike_cli.model.scoring import score
    from lookalike_cli.spark.session import load_raw, spark_session
    from lookalike_cli.spark.expand import create_audience_spark
    from lookalike_cli.spark.scoring import score_spark
    from lookalike_cli.model.train import train

    quiet = lambda *_: None  # noqa: E731
    db = workdir / f"bench_spark_{customers}.duckdb"
    settings = Settings.resolve(db=db, onnx_dir=workdir / "onnx", index_dir=workdir / f"indexes_{customers}",
                                spark_dir=spark_dir)
    print(f"[{customers:,}] generating ...", flush=True)
    counts = generate_data(db, customers=customers, progress=None)
    build_args = ["build", "--exclude", *EXCLUDE]
    print(f"[{customers:,}] dbt build on DuckDB ...", flush=True)
    with timed() as duck_build:
        run_dbt(settings, build_args, echo=quiet)
    duck_models = model_seconds(settings)
    with timed() as start:
        spark_session(settings, progress=quiet)
    print(f"[{customers:,}] DuckDB dbt build {duck_build.seconds:.1f}s (models {duck_models:.1f}s); "
          f"Spark start {start.seconds:.1f}s", flush=True)
    print(f"[{customers:,}] load raw into Spark ...", flush=True)
    with timed() as load:
        load_raw(settings, progress=quiet)
    print(f"[{customers:,}] dbt build on Spark ...", flush=True)
    with timed() as spark_build:
        run_dbt(settings, [*build_args, "--target", "spark"], echo=quiet)
    spark_models = model_seconds(settings)
    print(f"[{customers:,}] Spark load-raw {load.seconds:.1f}s, dbt build {spark_build.seconds:.1f}s (models {spark_models:.1f}s)", flush=True)

    print(f"[{customers:,}] train ({epochs} epoch) and score on both engines ...", flush=True)
    name = f"bench_spark_{customers}"
    train(db, settings.onnx_dir, name=name, epochs=epochs, layers=2, location="word")
    with timed() as duck_score:
        score(settings, model=name)
    with timed() as spark_score:
        score_spark(settings, model=name, progress=quiet)

    print(f"[{customers:,}] score: DuckDB {duck_score.seconds:.1f}s, Spark {spark_score.seconds:.1f}s", flush=True)
    print(f"[{customers:,}] expand on both engines ...", flush=True)
    seed_sql, size = SEED_SQL.format(n=max(100, customers // 1000)), max(1000, customers // 100)
    with timed() as index:
        build_index(db, settings.index_dir, progress=quiet)
    with timed() as duck_expand:
        create_audience(db, settings.serving_db_path, settings.index_dir, name="duckdb", seed_sql=seed_sql, size=size,
                        strategy="centroid", progress=quiet, on_warning=quiet)
    with timed() as spark_expand:
        create_audience_spark(settings, name="spark", seed_sql=seed_sql, size=size, strategy="centroid",
                              progress=quiet, on_warning=quiet)
    duck_members, spark_members = audience_ids(settings.serving_db_path, "duckdb"), audience_ids(settings.serving_db_path, "spark")
    with duckdb.connect(str(db), read_only=True) as con:
        pairs = con.execute("select count(*) from similarity_pairs").fetchone()[0]
    return {
        "customers": customers, "order_lines": counts["order_lines"], "pairs": pairs,
        "spark_start_s": start.seconds, "load_raw_s": load.seconds,
        "duck_build_s": duck_build.seconds, "spark_build_s": spark_build.seconds,
        "duck_models_s": duck_models, "spark_models_s": spark_models,
        "duck_score_s": duck_score.seconds, "spark_score_s": spark_score.seconds,
        "index_s": index.seconds, "duck_expand_s": duck_expand.seconds, "spark_expand_s": spark_expand.seconds,
        "audience": size, "overlap": len(set(duck_members) & set(spark_members)) / max(1, len(duck_members)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, action="append", help="population size (repeatable)")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs of the model both engines score")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--driver-memory", default=None, help="Spark driver (= local executor) memory, e.g. 6g")
    parser.add_argument("--shuffle-partitions", type=int, default=None, help="spark.sql.shuffle.partitions")
    args = parser.parse_args()
    # The profile's spark target reads these, for dbt and the CLI's session alike.
    if args.driver_memory:
        os.environ["LOOKALIKE_SPARK_DRIVER_MEMORY"] = args.driver_memory
    if args.shuffle_partitions:
        os.environ["LOOKALIKE_SPARK_SHUFFLE_PARTITIONS"] = str(args.shuffle_partitions)
    options = [f"--{name.replace('_', '-')} {value}" for name, value in
               (("driver_memory", args.driver_memory), ("shuffle_partitions", args.shuffle_partitions), ("epochs", args.epochs)) if value]
    sizes = args.customers or [20_000]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        for size in sizes:
            result = run(size, workdir, workdir / "spark", args.epochs)
            print(result, flush=True)
            rows.append([
                f"{result['customers']:,}", f"{result['order_lines']:,}", f"{result['pairs']:,}",
                result["duck_build_s"], result["load_raw_s"], result["spark_build_s"],
                f"{result['spark_build_s'] / result['duck_build_s']:.1f}x",
                f"{result['spark_models_s'] / result['duck_models_s']:.1f}x",
                result["duck_score_s"], result["spark_score_s"], f"{result['spark_score_s'] / result['duck_score_s']:.1f}x",
                result["duck_expand_s"], result["spark_expand_s"], f"{result['overlap']:.4f}",
            ])
    table = markdown_table(
        ["customers", "order lines", "similarity pairs", "DuckDB dbt build (s)", "Spark load-raw (s)",
         "Spark dbt build (s)", "build Spark/DuckDB", "models only Spark/DuckDB", "DuckDB score (s)",
         "Spark score (s)", "score Spark/DuckDB", "DuckDB expand (s)", "Spark expand (s)", "top-K overlap"],
        rows,
    )
    body = (
        table + "\n\nBoth engines on one 2-core machine: Spark runs `local[2]` (one JVM, two Python workers), "
        "DuckDB uses the same cores. dbt build = the same models and data tests on both (wall time, dbt start-up "
        "included; the Spark session was started before timing, ~15 s, and load-raw is listed apart). "
        "Score = every customer through the same ONNX model (DuckDB: the dbt Python model; Spark: mapInArrow). "
        "Expand = one centroid audience of 1% of the customers (DuckDB: FAISS build-index excluded; Spark: exact "
        "top-k per partition + merge); overlap = share of the DuckDB audience that Spark also selected."
    )
    write_section("spark_" + "_".join(str(s) for s in sizes), f"Spark vs DuckDB (same data, same dbt project): {', '.join(f'{s:,}' for s in sizes)} customers", body,
                  "python -m benchmarks.bench_spark " + " ".join([*(f"--customers {s}" for s in sizes), *options]))


if __name__ == "__main__":
    main()
