"""The `lookalike` command line: thin click wrappers over the library modules."""

from __future__ import annotations

import functools
import sys

import click

from lookalike_cli import __version__
from lookalike_cli.errors import LookalikeError
from lookalike_cli.settings import Settings


class LookalikeGroup(click.Group):
    """Turns LookalikeError into a one-line `Error: ...` and exit 1, like ClickException."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LookalikeError as exc:
            raise click.ClickException(str(exc)) from exc


def pass_settings(func):
    @click.pass_context
    @functools.wraps(func)
    def wrapper(ctx: click.Context, *args, **kwargs):
        return ctx.invoke(func, ctx.find_object(Settings), *args, **kwargs)

    return wrapper


@click.group(cls=LookalikeGroup, context_settings={"auto_envvar_prefix": "LOOKALIKE", "help_option_names": ["-h", "--help"]})
@click.option("--db", "db", type=click.Path(dir_okay=False), envvar="LOOKALIKE_DB", default="lookalike.duckdb",
              show_default=True, help="Warehouse DuckDB file (the same one profiles.yml uses).")
@click.option("--serving-db", type=click.Path(dir_okay=False), envvar="LOOKALIKE_SERVING_DB", default=None,
              help="Serving DuckDB file that BI tools read. Default: <db>_serving.duckdb beside --db.")
@click.option("--onnx-dir", type=click.Path(file_okay=False), envvar="LOOKALIKE_ONNX_DIR", default=None,
              help="Folder of exported models and manifests. Default: onnx/ in the project.")
@click.option("--index-dir", type=click.Path(file_okay=False), envvar="LOOKALIKE_INDEX_DIR", default=None,
              help="Folder of FAISS indexes. Default: indexes/ beside --db.")
@click.option("--spark-dir", type=click.Path(file_okay=False), envvar="LOOKALIKE_SPARK_DIR", default=None,
              help="Local Spark metastore and tables (profile target `spark`). Default: <db>_spark/ beside --db.")
@click.version_option(__version__, prog_name="lookalike")
@click.pass_context
def main(ctx: click.Context, db: str, serving_db: str | None, onnx_dir: str | None, index_dir: str | None,
         spark_dir: str | None) -> None:
    """Warehouse-native lookalike audiences.

    \b
    Typical run:
      lookalike generate-data --customers 100000
      lookalike dbt build
      lookalike train && lookalike score
      lookalike build-index
      lookalike expand --name vip --seed-sql "select customer_id from customer_features order by total_spend desc limit 500" --size 5%
    """
    ctx.obj = Settings.resolve(db=db, serving_db=serving_db, onnx_dir=onnx_dir, index_dir=index_dir, spark_dir=spark_dir)


@main.command("dbt", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("dbt_args", nargs=-1, type=click.UNPROCESSED)
@pass_settings
def dbt_cmd(settings: Settings, dbt_args: tuple[str, ...]) -> None:
    """Run dbt on the project with --db, --project-dir and --profiles-dir set.

    \b
    Example:
      lookalike --db shop.duckdb dbt build --select marts
      lookalike dbt build --target spark --select marts
    """
    from lookalike_cli.warehouse.dbt_runner import run_dbt

    run_dbt(settings, dbt_args or ("build",))


from lookalike_cli.cli import ads as cli_ads, cli_data, cli_model, cli_personas, cli_serving, cli_spark, cli_trust  # noqa: E402  (commands register on `main`)

for module in (cli_data, cli_model, cli_serving, cli_trust, cli_personas, cli_spark, cli_ads):
    module.register(main)


if __name__ == "__main__":
    sys.exit(main())
