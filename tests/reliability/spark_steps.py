"""Several Spark steps in one process, so they share one JVM (its start is the slowest part of a Spark command):
`python -c "from tests.reliability.spark_steps import main; main()" --db ... --index-dir ... '<steps as JSON>'`.

A step is a CLI command (a list of arguments, run as `lookalike <options> <args>`), {"fails": command} (the
command must stop with an error; prints `FAILED <its message>`), "state" (print one line
`STATE <json>`: row count and content hash of every Spark table, read through the session, which proves them
readable), or "seed-marts" (copy the DuckDB marts that `score --engine spark` and `spark export-training-data`
read into the Spark schema, standing in for `lookalike build --target spark`, whose dbt-spark run would cost
minutes here: the kill tests are about the commands that write after it, not about dbt-spark).
The kill tests SIGKILL this process at a point inside its last step.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from lookalike_cli.cli.main import main as lookalike
from tests.reliability.kill_points import ENV as KILL_POINT_ENV, install

# What `score --engine spark` and `spark export-training-data` read from the dbt schema.
MARTS = ("customer_features", "similarity_pairs", "categories", "training_features", "int_customer_label_vectors")
STATE_PREFIX = "STATE "


def settings_of(options: list[str]):
    from lookalike_cli.settings import Settings

    named = dict(zip(options[::2], options[1::2]))
    return Settings.resolve(db=named["--db"], serving_db=named["--serving-db"], onnx_dir=named["--onnx-dir"],
                            index_dir=named["--index-dir"])


def spark_state(settings) -> dict[str, list[int]]:
    """[rows, sum of Spark's row hash] of every table in the raw and the dbt schema (staging tables included),
    in one query: one Spark job instead of one per table."""
    from lookalike_cli.spark.session import schema_name, spark_session

    spark = spark_session(settings)
    tables = [f"{database}.{table.name}" for database in ("raw", schema_name(settings)) if spark.catalog.databaseExists(database)
              for table in spark.catalog.listTables(database) if table.tableType != "VIEW"]
    if not tables:
        return {}
    rows = spark.sql(" union all ".join(f"select '{name}' as name, count(*) as n, coalesce(sum(hash(*)), 0) as digest from {name}"
                                        for name in tables)).collect()
    return {row["name"]: [int(row["n"]), int(row["digest"])] for row in sorted(rows, key=lambda row: row["name"])}


def seed_marts(settings) -> None:
    from lookalike_cli.spark.session import schema_name, spark_session
    from lookalike_cli.warehouse.connection import connection

    spark = spark_session(settings)
    schema = schema_name(settings)
    spark.sql(f"create database if not exists {schema}")
    folder = Path(settings.spark_dir) / "seed_parquet"
    folder.mkdir(parents=True, exist_ok=True)
    for table in MARTS:
        parquet = folder / f"{table}.parquet"
        with connection(settings.db_path, read_only=True) as con:
            con.execute(f"copy (select * from {table}) to '{parquet}' (format parquet)")
        frame = spark.read.parquet(str(parquet))
        frame = frame.select([frame[c].cast("timestamp").alias(c) if t == "timestamp_ntz" else frame[c] for c, t in frame.dtypes])
        # A plain overwrite: the seeded tables are inputs here, not what the kill tests check (fewer metastore calls).
        frame.write.mode("overwrite").format("parquet").saveAsTable(f"{schema}.{table}")


def main() -> None:
    *options, steps = sys.argv[1:]
    settings = settings_of(options)
    steps = json.loads(steps)
    for number, step in enumerate(steps):
        print(f"START {number}", flush=True)  # a kill point in step n waits for this line (its files may exist before)
        if number == len(steps) - 1 and os.environ.get(KILL_POINT_ENV):
            install(json.loads(os.environ[KILL_POINT_ENV]))  # a kill point inside the process, in its last step
        started = time.perf_counter()
        if step == "state":
            print(STATE_PREFIX + json.dumps(spark_state(settings)), flush=True)
        elif step == "seed-marts":
            seed_marts(settings)
        elif isinstance(step, dict):  # {"fails": command}: the command must stop with an error
            try:
                lookalike([*options, *step["fails"]], standalone_mode=False)
            except Exception as exc:  # noqa: BLE001 (click's exception carrying the CLI's one-line message)
                print(f"FAILED {str(exc).splitlines()[0][:300]}", flush=True)
            else:
                raise SystemExit(f"expected {step['fails']} to fail")
            step = step["fails"]
        else:
            lookalike([*options, *step], standalone_mode=False)
        print(f"STEP {step if isinstance(step, str) else ' '.join(step)} {time.perf_counter() - started:.1f}s", flush=True)


def states(lines: list[str]) -> list[dict[str, list[int]]]:
    """The STATE lines of a run's output, in order."""
    return [json.loads(line.removeprefix(STATE_PREFIX)) for line in lines if line.startswith(STATE_PREFIX)]
