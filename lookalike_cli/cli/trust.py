"""CLI commands that build trust in an audience: backtest, explain, inspect-seed, audiences overlap."""

from __future__ import annotations

import json
from pathlib import Path

import click

from lookalike_cli.cli._common import echo_table, pass_settings, progress
from lookalike_cli.settings import Settings


def default_report_dir(settings: Settings) -> Path:
    """Reports sit beside the warehouse file, like the indexes: <db folder>/reports/."""
    return settings.db_path.parent / "reports"



@click.command("backtest")
@click.option("--name", required=True, help="Name of this backtest (report file name, audience_backtests.name).")
@click.option("--converters-sql", default=None, help="SQL returning the customer_id of the known converters.")
@click.option("--campaign", default=None,
              help="Complete Journey campaign id: population = households it targeted (raw.campaigns), converters = "
                   "those that redeemed its coupons (raw.coupon_redemptions); --as-of defaults to the campaign's start.")
@click.option("--as-of", "as_of", default=None,
              help="Backtest as of this date (YYYY-MM-DD): features, labels, model, scores and index are rebuilt "
                   "with the product's defaults from data before it, in a scratch copy; the warehouse is not touched.")
@click.option("--epochs", type=click.IntRange(1), default=None,
              help="With --as-of: maximum training epochs (default: `lookalike train`'s).")
@click.option("--keep-scratch", is_flag=True, help="With --as-of: keep the scratch warehouse (in .backtests/ beside --db).")
@click.option("--population-sql", default=None, help="SQL returning the customer_id of the population to rank (default: every scored customer).")
@click.option("--value-sql", default=None,
              help="SQL returning customer_id, value (>= 0) of the converters: reports value captured (share of the hidden "
                   "converters' value in the top k%) and runs each strategy also with the seed value-weighted (+value).")
@click.option("--splits", type=int, default=5, show_default=True, help="Random seed/hidden splits of the converters.")
@click.option("--strategy", "strategies", multiple=True,
              type=click.Choice(["blend", "blend-no-embedding", "centroid", "knn-vote", "multi-centroid", "classifier"]),
              help="Model strategies to test (repeatable; default: blend (expand's default), blend-no-embedding "
                   "(the same without the encoder's components) and centroid (embeddings only)).")
@click.option("--baselines", default=None,
              help="Comma-separated baselines to rank beside the model (default: every baseline; see README).")
@click.option("--seed-fraction", type=float, default=0.5, show_default=True, help="Share of converters used as the seed.")
@click.option("--report-dir", type=click.Path(file_okay=False), default=None,
              help="Where backtest_<name>.md and its lift-curve PNGs go. Default: reports/ beside --db.")
@click.option("--note", default=None, help="A caveat printed in the report (e.g. how features were windowed).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed of the splits.")
@click.option("--full-table", is_flag=True, help="Also print recall, precision, lift and AUC at every size.")
@pass_settings
def backtest_cmd(settings: Settings, name: str, converters_sql: str | None, campaign: str | None,
                 as_of: str | None, epochs: int | None, keep_scratch: bool, population_sql: str | None,
                 value_sql: str | None, splits: int,
                 strategies: tuple[str, ...], baselines: str, seed_fraction: float, report_dir: str | None,
                 note: str | None, seed: int, full_table: bool) -> None:
    """Would this have worked? Hide half of known converters, expand from the other half, measure.

    Reports recall, precision, lift and AUC of the hidden converters at 1/2/5/10/20% of the
    population for the model and for baselines (random, spend, RFM activity, category-share
    cosine, raw-feature cosine, raw-feature classifier); writes audience_backtests (serving
    file) and a Markdown report with lift-curve PNGs. With --value-sql (a value per converter)
    also value captured, and every strategy again with the seed weighted by value (`+value`).

    Without --as-of (and --campaign) it ranks with the warehouse's current embeddings and index.
    With --as-of DATE (or --campaign C, which sets DATE to C's start) it first rebuilds everything
    from data before DATE in a scratch copy, with the product's defaults (build, train, score,
    build-index), so converters may be defined by what happened on or after DATE.

    \b
    Example:
      lookalike backtest --name segment_3 --splits 5 \\
        --converters-sql "select customer_id from raw.planted_segments where segment_id = 3"
      lookalike backtest --name campaign_18 \\
        --population-sql "select customer_id from raw.campaigns where campaign_id = '18'" \\
        --converters-sql "select customer_id from raw.coupon_redemptions where campaign_id = '18'"
      lookalike backtest --name campaign_18 --campaign 18    # the same, as of the campaign's start
      lookalike backtest --name response_value --strategy blend \\
        --converters-sql "select customer_id from raw.planted_conversions where conversion_name = 'segment_response'" \\
        --value-sql "select customer_id, conversion_value as value from raw.planted_conversions
                     where conversion_name = 'segment_response'"
      lookalike backtest --name later_pet_buyers --as-of 2025-10-01 \
        --converters-sql "select customer_id from raw.order_lines where category like 'Pet%' group by 1
                          having min(ordered_at) >= date '2025-10-01'"
    """
    from lookalike_cli.trust.backtest import (DEFAULT_STRATEGIES, campaign_sql, publish_backtest, ranking_table, run_backtest,
                                        summary_table, write_report)
    from lookalike_cli.errors import LookalikeError
    from lookalike_cli.warehouse.connection import connection

    from lookalike_cli.trust.backtest_as_of import backtest_as_of, campaign_start, parse_date

    as_of_date = parse_date(as_of, "--as-of") if as_of else None
    if campaign is not None:
        if converters_sql or population_sql:
            raise LookalikeError("Give --campaign or --converters-sql/--population-sql, not both.")
        with connection(settings.db_path, read_only=True) as con:
            population_sql, converters_sql = campaign_sql(con, campaign)
            as_of_date = as_of_date or campaign_start(con, campaign)
    elif not converters_sql:
        raise LookalikeError("Give --converters-sql (SQL of the known converters) or --campaign (Complete Journey).")
    if as_of_date is None and (epochs or keep_scratch):
        raise LookalikeError("--epochs and --keep-scratch apply to --as-of (or --campaign) backtests only.")

    from lookalike_cli.trust.backtest import BASELINES

    options = dict(population_sql=population_sql, value_sql=value_sql, name=name, splits=splits,
                   strategies=strategies or DEFAULT_STRATEGIES,
                   baselines=tuple(b.strip() for b in baselines.split(",") if b.strip()) if baselines else BASELINES,
                   seed_fraction=seed_fraction, seed=seed, progress=progress)
    if as_of_date is not None:
        result = backtest_as_of(settings, as_of_date, converters_sql, keep_scratch=keep_scratch,
                                train_options={"epochs": epochs} if epochs else None, **options)
        windows = result.info["windows"]
        note = "; ".join(filter(None, [note, f"as of {as_of_date}: training features before {windows['feature_end_date']}, "
                                             f"labels to {windows['label_end_date']}, serving features to {windows['as_of_date']}"]))
    else:
        result = run_backtest(settings.db_path, settings.index_dir, converters_sql, **options)
    backtest_id = publish_backtest(settings.serving_db_path, result)
    report = write_report(result, Path(report_dir) if report_dir else default_report_dir(settings), note=note)
    click.echo(f"backtest {name} (id {backtest_id}): population {result.info['population']:,}, "
               f"converters {result.info['converters']:,}, seed {result.info['seed_size']:,} per split, {splits} split(s)")
    if full_table:
        echo_table(summary_table(result))
    click.echo("Methods ranked by mean AUC over the splits (every size: --full-table, or the report):")
    echo_table(ranking_table(result))
    click.echo(f"Report: {report} (+ {len(result.plot_paths)} PNG); table audience_backtests in {settings.serving_db_path}")

@click.command("explain")
@click.option("--audience", "name", required=True, help="Audience name.")
@click.option("--version", type=int, default=None, help="Audience version (default: latest).")
@click.option("--customer", type=int, default=None, help="Print this member's explanation (all members are stored).")
@click.option("--exemplars", type=int, default=3, show_default=True, help="Nearest seeds per member.")
@click.option("--features", type=int, default=3, show_default=True, help="Distinguishing features per member.")
@click.option("--limit", type=int, default=5, show_default=True, help="Members to print when --customer is not given.")
@pass_settings
def explain_cmd(settings: Settings, name: str, version: int | None, customer: int | None, exemplars: int,
                features: int, limit: int) -> None:
    """Why each member is in an audience: nearest seed exemplars and the features that set the audience apart.

    Stores audience_member_explanations (one row per member) and audience_feature_differences
    (standardised mean difference audience vs population, top features) in the serving file.

    \b
    Example:
      lookalike explain --audience vip
      lookalike explain --audience vip --customer 1234
    """
    from lookalike_cli.errors import LookalikeError
    from lookalike_cli.trust.explain import explain_audience, publish_explanations

    result = explain_audience(settings.db_path, settings.serving_db_path, name, version, exemplars, features, progress)
    publish_explanations(settings.serving_db_path, result)
    click.echo("Audience vs population (standardised mean difference):")
    import pyarrow as pa

    echo_table(pa.Table.from_pylist([{"rank": r["feature_rank"], "feature": r["feature"],
                                      "smd": round(r["standardised_mean_difference"], 3)}
                                     for r in result.differences.slice(0, 10).to_pylist()]))
    members = result.members
    if customer is not None:
        rows = [r for r in members.to_pylist() if r["customer_id"] == customer]
        if not rows:
            raise LookalikeError(f"Customer {customer} is not a member of {name!r}.")
    else:
        rows = members.slice(0, limit).to_pylist()
    click.echo("")
    echo_table(pa.Table.from_pylist([{k: r[k] for k in ("rank", "customer_id", "explanation")} for r in rows]))

@click.command("inspect-seed")
@click.option("--seed-sql", default=None, help="SQL returning customer_id, run on the warehouse.")
@click.option("--seed-table", default=None, help="Warehouse table (or view) with a customer_id column.")
@click.option("--seed-file", type=click.Path(dir_okay=False), default=None, help="CSV of customer ids (header optional).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (k-means, random pairs).")
@click.option("--json", "as_json", is_flag=True, help="Print the diagnostics as JSON.")
@pass_settings
def inspect_seed_cmd(settings: Settings, seed_sql: str | None, seed_table: str | None, seed_file: str | None,
                     seed: int, as_json: bool) -> None:
    """Check a seed before expanding: size, ids found, homogeneity, sub-clusters, outliers, warnings.

    `lookalike expand` runs the same checks and saves them with the audience (seed_diagnostics,
    audience_seeds in the serving file).

    \b
    Example:
      lookalike inspect-seed --seed-sql "select customer_id from customer_features order by total_spend desc limit 500"
    """
    from lookalike_cli.audiences.diagnostics import inspect_seed
    from lookalike_cli.audiences.seeds import resolve_seeds
    from lookalike_cli.warehouse.connection import connection

    with connection(settings.db_path, read_only=True) as con:
        diagnostics = inspect_seed(con, resolve_seeds(con, seed_sql, seed_table, seed_file), seed)
    summary = diagnostics.summary()
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    for key, value in summary.items():
        if key != "warnings":
            click.echo(f"{key}: {value}")
    for message in diagnostics.warnings:
        click.echo(f"Warning: {message}")


@click.command("overlap")
@click.argument("names", nargs=-1)
@click.option("--disjoint", is_flag=True,
              help="Make the audiences disjoint by priority (NAMES in order, highest first): publishes new versions.")
@pass_settings
def overlap_cmd(settings: Settings, names: tuple[str, ...], disjoint: bool) -> None:
    """Overlap matrix (members in both, Jaccard) of the latest audience versions; optionally make them disjoint.

    Writes audience_overlaps to the serving file.

    \b
    Example:
      lookalike audiences overlap                      # every audience
      lookalike audiences overlap vip churners --disjoint   # churners loses vip's members
    """
    from lookalike_cli.trust.overlap import audience_overlaps, make_disjoint

    if disjoint:
        for row in make_disjoint(settings.serving_db_path, list(names)):
            click.echo(f"{row['name']} v{row['version']} (id {row['audience_id']}): {row['size']:,} members, "
                       f"{row['removed']:,} removed (in a higher-priority audience)")
    table = audience_overlaps(settings.serving_db_path, list(names) or None)
    echo_table(table.select(["audience_a", "audience_b", "size_a", "size_b", "overlap", "jaccard"]))


@click.command("measure")
@click.option("--audience", "name", required=True, help="Audience name (published with a holdout).")
@click.option("--version", type=int, default=None, help="Audience version (default: the latest).")
@click.option("--outcome-sql", required=True, help="SQL returning the customer_id of everyone who converted, run on the warehouse.")
@pass_settings
def measure_cmd(settings: Settings, name: str, version: int | None, outcome_sql: str) -> None:
    """Incrementality: conversion of treated members vs the audience's holdout, with a 95% interval.

    Writes a row to audience_measurements in the serving file.

    \b
    Example:
      lookalike measure --audience vip --outcome-sql "select customer_id from orders where ordered_at >= '2025-11-01'"
    """
    from lookalike_cli.trust.measure import measure_audience, publish_measurement

    m = measure_audience(settings.db_path, settings.serving_db_path, name, outcome_sql, version=version)
    publish_measurement(settings.serving_db_path, m)
    relative = f" ({m.relative_lift:+.1%} relative)" if m.relative_lift is not None else ""
    click.echo(f"audience {name} v{m.audience_version}: treated {m.treated_conversions:,}/{m.treated_size:,} = "
               f"{m.treated_rate:.2%}, holdout {m.holdout_conversions:,}/{m.holdout_size:,} = {m.holdout_rate:.2%}")
    click.echo(f"lift {m.absolute_lift:+.2%} points{relative}, 95% CI [{m.lift_ci_low:+.2%}, {m.lift_ci_high:+.2%}], "
               f"p = {m.p_value:.3g} -> audience_measurements")


# The commands this module adds to `lookalike` (cli/main.py).
COMMANDS = [backtest_cmd, explain_cmd, inspect_seed_cmd, measure_cmd]
# `lookalike audiences overlap` (the audiences group lives in cli/serving.py).
AUDIENCES_COMMANDS = [overlap_cmd]
