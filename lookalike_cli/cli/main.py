"""The `lookalike` root group: global path options, then the commands of each cli module.

Arrows run one way: main imports the command modules, they import only cli/_common and
(when a command runs) the library.
"""

from __future__ import annotations

import os
import sys

# OpenMP threads (torch's intra-op pool, FAISS) that sleep when idle instead of spinning, unless the user
# chose otherwise. libgomp reads this once, when torch loads, so it is set before any command imports it.
# Measured (benchmarks/bench_train_threads.py): `train --threads 2` on a shared 2-core machine ran 20x slower
# than one thread with spinning threads, and near one thread's rate with sleeping ones.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import click  # noqa: E402  (after the environment default above)

from lookalike_cli import __version__
from lookalike_cli.cli import ads, data, model, personas, serving, spark, trust
from lookalike_cli.cli._common import LookalikeGroup, pass_settings
from lookalike_cli.settings import Settings


@click.group(cls=LookalikeGroup, context_settings={"auto_envvar_prefix": "LOOKALIKE", "help_option_names": ["-h", "--help"]})
@click.option("--db", "db", type=click.Path(dir_okay=False), envvar="LOOKALIKE_DB", default="lookalike.duckdb",
              show_default=True, help="Warehouse DuckDB file (the same one the dbt profile uses).")
@click.option("--serving-db", type=click.Path(dir_okay=False), envvar="LOOKALIKE_SERVING_DB", default=None,
              help="Serving DuckDB file that BI tools read. Default: <db>_serving.duckdb beside --db.")
@click.option("--onnx-dir", type=click.Path(file_okay=False), envvar="LOOKALIKE_ONNX_DIR", default=None,
              help="Folder of exported models and manifests. Default: <db>_models/ beside --db.")
@click.option("--index-dir", type=click.Path(file_okay=False), envvar="LOOKALIKE_INDEX_DIR", default=None,
              help="Folder of FAISS indexes. Default: <db>_indexes/ beside --db.")
@click.option("--spark-dir", type=click.Path(file_okay=False), envvar="LOOKALIKE_SPARK_DIR", default=None,
              help="Local Spark metastore and tables (profile target `spark`). Default: <db>_spark/ beside --db.")
@click.option("--project-dir", type=click.Path(file_okay=False), envvar="LOOKALIKE_PROJECT_DIR", default=None,
              help="dbt project to run (one made by `lookalike init`). Default: the project bundled with the package.")
@click.version_option(__version__, prog_name="lookalike")
@click.pass_context
def main(ctx: click.Context, db: str, serving_db: str | None, onnx_dir: str | None, index_dir: str | None,
         spark_dir: str | None, project_dir: str | None) -> None:
    """Warehouse-native lookalike audiences.

    \b
    Typical run:
      lookalike generate-data --customers 100000
      lookalike build
      lookalike train && lookalike score
      lookalike build-index
      lookalike expand --name vip --seed-sql "select customer_id from customer_features order by total_spend desc limit 500" --size 5%
      lookalike audiences show vip
    """
    ctx.obj = Settings.resolve(db=db, serving_db=serving_db, onnx_dir=onnx_dir, index_dir=index_dir, spark_dir=spark_dir,
                               project_dir=project_dir)


@main.command("dbt", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("dbt_args", nargs=-1, type=click.UNPROCESSED)
@pass_settings
def dbt_cmd(settings: Settings, dbt_args: tuple[str, ...]) -> None:
    """Run dbt on the project with --db, --project-dir and --profiles-dir set.

    On a warehouse with no trained model, `customer_embeddings` is skipped with a message
    (it needs `lookalike train`); everything else builds.

    \b
    Example:
      lookalike --db shop.duckdb dbt build --select marts
      lookalike dbt build --target spark --select marts
    """
    from lookalike_cli.warehouse.dbt_runner import run_dbt

    run_dbt(settings, dbt_args or ("build",))


for module in (data, model, serving, trust, personas, spark, ads):
    for command in module.COMMANDS:
        main.add_command(command)
for command in trust.AUDIENCES_COMMANDS:
    serving.audiences_group.add_command(command)


if __name__ == "__main__":
    sys.exit(main())
