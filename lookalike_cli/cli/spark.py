"""CLI commands of the Spark engine: `lookalike spark load-raw | tables`.

The Spark steps of the pipeline are options of the usual commands:
`lookalike build --target spark`, `lookalike score --engine spark`, `lookalike expand --engine spark`.
"""

from __future__ import annotations

import click

from lookalike_cli.cli._common import LookalikeGroup, pass_settings, progress
from lookalike_cli.settings import Settings





@click.group("spark", cls=LookalikeGroup)
def spark_group() -> None:
    """Run the project on Apache Spark (extra [spark], Java 17).

    \b
    The whole job on a local Spark session:
      lookalike generate-data --customers 100000
      lookalike spark load-raw
      lookalike build --target spark
      lookalike train                        # the DuckDB marts, or:
      lookalike spark export-training-data --to training.duckdb && lookalike --db training.duckdb train
      lookalike score --engine spark
      lookalike expand --engine spark --name vip --size 5% \\
        --seed-sql "select customer_id from customer_features order by total_spend desc limit 500"

    Spark's metastore and tables live in --spark-dir (default <db>_spark/ beside --db);
    profiles.yml's `spark` target holds the session settings dbt and these commands share.
    """

@spark_group.command("load-raw")
@click.option("--raw-schema", default="raw", show_default=True, help="Schema of the raw tables, in DuckDB and in Spark.")
@pass_settings
def load_raw_cmd(settings: Settings, raw_schema: str) -> None:
    """Copy the DuckDB warehouse's raw tables into Spark tables (via Parquet).

    Reads raw.customers, raw.order_lines and the optional raw.visits, raw.engagements and
    raw.opt_outs; each Spark table is replaced only once fully written.

    \b
    Example:
      lookalike --db shop.duckdb spark load-raw && lookalike --db shop.duckdb build --target spark
    """
    from lookalike_cli.spark.session import load_raw

    counts = load_raw(settings, raw_schema=raw_schema, progress=progress)
    click.echo(f"Loaded {len(counts)} raw table(s) into Spark ({settings.spark_dir}): "
               + ", ".join(f"{table} {rows:,}" for table, rows in counts.items()))

@spark_group.command("export-training-data")
@click.option("--to", "to", type=click.Path(dir_okay=False), required=True,
              help="DuckDB file to write (replaced): similarity_pairs, categories, training_features of paired customers.")
@pass_settings
def export_training_data_cmd(settings: Settings, to: str) -> None:
    """Copy the training set from the Spark marts into a DuckDB file for `lookalike train`.

    Training reads only the sampled pairs (at most the dbt var max_pairs) and their
    customers, so it fits one machine however large the Spark population is.

    \b
    Example:
      lookalike spark export-training-data --to training.duckdb
      lookalike --db training.duckdb train --layers 3 --location word
      lookalike score --engine spark
    """
    from pathlib import Path

    from lookalike_cli.spark.session import export_training_data

    counts = export_training_data(settings, Path(to), progress=progress)
    click.echo(f"Wrote {to}: " + ", ".join(f"{table} {rows:,}" for table, rows in counts.items())
               + f". Next: lookalike --db {to} train")

@spark_group.command("tables")
@pass_settings
def tables_cmd(settings: Settings) -> None:
    """Row counts of the Spark tables (raw and the dbt schema).

    \b
    Example:
      lookalike spark tables
    """
    from lookalike_cli.spark.session import spark_tables

    for name, rows in spark_tables(settings, progress=progress).items():
        click.echo(f"{name:<45} {rows:>12,}")


# The commands this module adds to `lookalike` (cli/main.py).
COMMANDS = [spark_group]
