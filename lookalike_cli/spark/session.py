"""Apache Spark: the session the CLI's Spark steps share with dbt, and raw data into Spark.

The session is configured from the `spark` target of `profiles.yml` (its
`server_side_parameters`), so dbt-spark and the CLI read and write the same metastore and
warehouse. A local Derby metastore admits one JVM at a time: dbt runs in this process
when the target is Spark (`dbt_runner.run_dbt`), and both use one SparkSession.

Everything here needs the optional extra `[spark]` (pyspark, dbt-spark, Java 17).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pyarrow as pa

from lookalike_cli.errors import LookalikeError
from lookalike_cli.progress import Progress
from lookalike_cli.settings import Settings
from lookalike_cli.warehouse.profile import profile_target

SPARK_TARGET = "spark"
RAW_TABLES = ("customers", "order_lines", "visits", "engagements", "opt_outs")


def require_pyspark() -> None:
    try:
        import pyspark  # noqa: F401
    except ImportError as exc:
        raise LookalikeError("The Spark engine needs the extra [spark]: pip install -e '.[spark]' (and Java 17).") from exc


def session_conf(settings: Settings, target: str = SPARK_TARGET) -> dict[str, str]:
    """Spark configuration of the profile target, plus what local Python workers need."""
    output = profile_target(target, settings)
    conf = {str(k): str(v) for k, v in (output.get("server_side_parameters") or {}).items()}
    # dbt-spark forces this too: Spark 4's ANSI mode would fail casts dbt-spark's macros rely on.
    conf["spark.sql.ansi.enabled"] = "false"
    if conf.get("spark.master", "").startswith("local"):
        # Python workers (mapInArrow) must run this interpreter, the one with onnxruntime.
        conf.setdefault("spark.pyspark.python", sys.executable)
        conf.setdefault("spark.pyspark.driver.python", sys.executable)
    return conf


def schema_name(settings: Settings, target: str = SPARK_TARGET) -> str:
    """The Spark database dbt builds the models in (the target's `schema`)."""
    return str(profile_target(target, settings)["schema"])


def spark_session(settings: Settings, target: str = SPARK_TARGET, progress: Progress | None = None):
    """The process's SparkSession, started with the profile target's configuration.

    Starting the JVM takes ~15 s the first time in a process; later calls return the same session.
    """
    require_pyspark()
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    conf = session_conf(settings, target)
    if settings.spark_dir is not None and conf.get("spark.master", "").startswith("local"):
        settings.spark_dir.mkdir(parents=True, exist_ok=True)
    if "spark.pyspark.python" in conf:
        # PySpark picks the workers' interpreter from this variable, not from the conf.
        os.environ.setdefault("PYSPARK_PYTHON", conf["spark.pyspark.python"])
    if progress:
        progress(f"Starting Spark ({conf.get('spark.master', 'default master')}, metastore in {settings.spark_dir}) ...")
    builder = SparkSession.builder.appName("lookalike").enableHiveSupport()
    for key, value in conf.items():
        builder = builder.config(key, value)
    started = time.perf_counter()
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    if progress:
        progress(f"Spark {session.version} ready in {time.perf_counter() - started:.1f}s")
    return session


def table_exists(spark, name: str) -> bool:
    """`name` may be qualified (schema.table); unqualified names look in the current database."""
    return spark.catalog.tableExists(name)


def require_spark_table(spark, name: str, hint: str) -> None:
    if not table_exists(spark, name):
        raise LookalikeError(f"Spark table {name} does not exist. {hint}")


def load_raw(settings: Settings, raw_schema: str = "raw", tables: tuple[str, ...] = RAW_TABLES,
             progress: Progress = print) -> dict[str, int]:
    """Copy the DuckDB warehouse's raw tables into Spark tables `<raw_schema>.<table>`.

    Each table goes DuckDB -> Parquet (written by DuckDB) -> a Spark managed table, written
    under a temporary name and swapped in only when complete, so a failure leaves the previous
    Spark table as it was. Optional tables absent from DuckDB are dropped from Spark too, so
    dbt's `use_<table>: auto` sees the same sources on both engines.
    """
    import shutil

    from lookalike_cli.files import temp_path
    from lookalike_cli.warehouse.connection import connection, table_exists as duckdb_table_exists

    if not settings.db_path.exists():
        raise LookalikeError(f"Warehouse {settings.db_path} does not exist. Run `lookalike generate-data` first.")
    with connection(settings.db_path, read_only=True) as con:
        present = [t for t in tables if duckdb_table_exists(con, t, schema=raw_schema)]
    for required in ("customers", "order_lines"):
        if required in tables and required not in present:
            raise LookalikeError(f"{settings.db_path} has no table {raw_schema}.{required}. Run `lookalike generate-data` "
                                 "or `lookalike load-sample completejourney` first.")
    spark = spark_session(settings, progress=progress)
    spark.sql(f"create database if not exists {raw_schema}")
    counts: dict[str, int] = {}
    # The Parquet staging folder is pid-named, so one left by a load-raw killed with SIGKILL is removed here.
    remove_stale_staging_folders(Path(settings.spark_dir))
    staging = temp_path(Path(settings.spark_dir) / "raw_parquet")
    staging.mkdir(parents=True)
    try:
        for table in present:
            started = time.perf_counter()
            parquet = Path(staging) / f"{table}.parquet"
            with connection(settings.db_path, read_only=True) as con:
                # COPY returns the number of rows written: no second pass to count them in Spark.
                counts[table] = con.execute(f"copy (select * from {raw_schema}.{table}) to '{parquet}' (format parquet)").fetchall()[0][0]
            frame = spark.read.parquet(str(parquet))
            # DuckDB writes timestamps without a time zone; Spark tables hold them as TIMESTAMP.
            frame = frame.select([
                frame[c].cast("timestamp").alias(c) if t == "timestamp_ntz" else frame[c] for c, t in frame.dtypes
            ])
            replace_table(spark, frame, f"{raw_schema}.{table}")
            progress(f"  {raw_schema}.{table:<12} {counts[table]:>12,} rows in {time.perf_counter() - started:.1f}s")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for table in tables:
        if table not in present and table not in ("customers", "order_lines"):
            spark.sql(f"drop table if exists {raw_schema}.{table}")
    return counts


def remove_stale_staging_folders(folder: Path) -> None:
    """The pid-named staging folders (`files.temp_path` names) in `folder` whose process is gone."""
    import shutil

    from lookalike_cli.files import TEMP_NAME, process_alive

    for path in folder.glob(".*.tmp"):
        match = TEMP_NAME.match(path.name)
        if match and path.is_dir() and not process_alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)


def replace_table(spark, frame, name: str) -> None:
    """Write `frame` as table `name`: fully written under a temporary name first, then swapped in.

    The metastore has no atomic swap: the old table is renamed aside and dropped only once the new one has its
    name, so a kill between the two renames leaves the old data under `<name>__previous`, put back by the next run.
    """
    staging, previous = f"{name}__incoming", f"{name}__previous"
    if table_exists(spark, previous):
        if table_exists(spark, name):
            spark.sql(f"drop table {previous}")
        else:
            spark.sql(f"alter table {previous} rename to {name}")
    spark.sql(f"drop table if exists {staging}")
    remove_orphaned_location(spark, staging)
    frame.write.format("parquet").saveAsTable(staging)
    if table_exists(spark, name):
        spark.sql(f"alter table {name} rename to {previous}")
    spark.sql(f"alter table {staging} rename to {name}")
    spark.sql(f"drop table if exists {previous}")


def remove_orphaned_location(spark, name: str) -> None:
    """Delete the folder of managed table `name`, which the metastore no longer (or never) lists: a write killed
    with SIGKILL leaves its files without a table, and Spark refuses to create the table over them
    (LOCATION_ALREADY_EXISTS) until they are gone. Hadoop's FileSystem, so it works on any warehouse storage."""
    database, _, table = name.rpartition(".")
    location = spark.catalog.getDatabase(database or spark.catalog.currentDatabase()).locationUri
    path = spark._jvm.org.apache.hadoop.fs.Path(f"{location.rstrip('/')}/{table.lower()}")
    filesystem = path.getFileSystem(spark._jsc.hadoopConfiguration())
    if filesystem.exists(path):
        filesystem.delete(path, True)


def remove_orphaned_staging(spark, database: str) -> list[str]:
    """Delete the `<table>__incoming` folders in `database`'s location that the metastore does not list (a
    killed dbt table build's half-written staging table, macros/spark_table_swap.sql); returns their names.
    A listed staging table is left to the materialization, which drops it before writing the next one."""
    if not spark.catalog.databaseExists(database):
        return []
    listed = {table.name.lower() for table in spark.catalog.listTables(database)}
    location = spark.catalog.getDatabase(database).locationUri
    folder = spark._jvm.org.apache.hadoop.fs.Path(location)
    filesystem = folder.getFileSystem(spark._jsc.hadoopConfiguration())
    if not filesystem.exists(folder):
        return []
    removed = []
    for status in filesystem.listStatus(folder):
        name = status.getPath().getName()
        if status.isDirectory() and name.endswith("__incoming") and name.lower() not in listed:
            filesystem.delete(status.getPath(), True)
            removed.append(name)
    return removed


def to_arrow(frame) -> pa.Table:
    """A (small) Spark DataFrame collected to the driver as Arrow."""
    return frame.toArrow()


def spark_tables(settings: Settings, raw_schema: str = "raw", progress: Progress | None = None) -> dict[str, int]:
    """Row count of every table in the raw schema and the dbt schema."""
    spark = spark_session(settings, progress=progress)
    counts = {}
    for database in (raw_schema, schema_name(settings)):
        if not spark.catalog.databaseExists(database):
            continue
        for table in sorted(spark.catalog.listTables(database), key=lambda t: t.name):
            if table.tableType != "VIEW":
                counts[f"{database}.{table.name}"] = spark.table(f"{database}.{table.name}").count()
    return counts


def export_training_data(settings: Settings, target_db: Path, progress: Progress = print) -> dict[str, int]:
    """Copy what `lookalike train` reads from the Spark marts into a DuckDB file.

    similarity_pairs (capped by the dbt var max_pairs), categories, and the training_features and
    int_customer_label_vectors rows of the customers in those pairs (features as of feature_end_date,
    label-window vectors after it): a training set that fits one machine however large the
    population. The file is written beside, then renamed over `target_db` (all or nothing).
    """
    from lookalike_cli.files import remove_stale_temp_files, temp_path
    from lookalike_cli.warehouse.connection import connect, write_table

    spark = spark_session(settings, progress=progress)
    schema = schema_name(settings)
    for table in ("similarity_pairs", "categories", "training_features"):
        require_spark_table(spark, f"{schema}.{table}", "Build it with `lookalike build --target spark`.")
    pairs = spark.table(f"{schema}.similarity_pairs")
    in_pairs = pairs.selectExpr("customer_id_a as customer_id").union(pairs.selectExpr("customer_id_b")).distinct()
    tables = {
        "similarity_pairs": pairs,
        "categories": spark.table(f"{schema}.categories"),
        "training_features": spark.table(f"{schema}.training_features").join(in_pairs, "customer_id", "left_semi"),
        # The label-window vectors of the same customers: train labels every pair of a batch from them.
        "int_customer_label_vectors": spark.table(f"{schema}.int_customer_label_vectors").join(in_pairs, "customer_id", "left_semi"),
    }
    target_db = Path(target_db).resolve()
    target_db.parent.mkdir(parents=True, exist_ok=True)
    # The staging file is pid-named (files.temp_path), like every other temp file: one a killed export left (with
    # its .wal) is removed here whatever its target, and two exports to one file never share a staging file.
    remove_stale_temp_files(target_db.parent)
    staging = temp_path(target_db)
    counts = {}
    try:
        con = connect(staging)
        try:
            for name, frame in tables.items():
                started = time.perf_counter()
                write_table(con, name, frame.toArrow())
                counts[name] = con.execute(f"select count(*) from {name}").fetchall()[0][0]
                progress(f"  {name:<18} {counts[name]:>12,} rows in {time.perf_counter() - started:.1f}s")
            con.execute("checkpoint")
        finally:
            con.close()
        staging.replace(target_db)
    finally:
        staging.unlink(missing_ok=True)
        staging.with_name(staging.name + ".wal").unlink(missing_ok=True)
    return counts
