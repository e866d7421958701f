"""`lookalike ads ...`: intention embeddings, clustering, RPC prediction and bids (README "Ads")."""

from __future__ import annotations

import json
from pathlib import Path

import click

from lookalike_cli.cli._common import LookalikeGroup, pass_settings
from lookalike_cli.settings import Settings



@click.group("ads", cls=LookalikeGroup)
def ads_group() -> None:
    """Ads: embed ad texts, cluster ads, predict revenue per click, recommend bids.

    \b
    Typical run:
      lookalike generate-data --customers 10 --ads      (or: load-sample completejourney --ads)
      lookalike ads build
      lookalike ads train-embedding
      lookalike ads cluster
      lookalike ads predict-rpc
      lookalike ads bid --budget 5000 --objective-weights revenue=1,margin=0.5
    """

@ads_group.command("build")
@click.option("--min-coclick-support", type=click.IntRange(min=1), default=None,
              help="Both co-click counts of a positive pair must reach this (dbt var ads_min_coclick_support, default 2).")
@click.option("--min-interactive-metric", type=click.FloatRange(0, 1), default=None,
              help="Positive pairs need I at least this (var ads_min_interactive_metric, default 0); raise it where "
                   "ads co-occur by chance, e.g. 0.001 on Complete Journey baskets.")
@click.option("--split-date", default=None, help="First day of the held-out period, YYYY-MM-DD (default: the last 25% of days).")
@pass_settings
def build_cmd(settings: Settings, min_coclick_support: int | None, min_interactive_metric: float | None,
              split_date: str | None) -> None:
    """Build the ads dbt models (tag:ads) and their tests: ad_daily_performance, ad_pairs.

    The customer `lookalike build` skips them (dbt var use_ads is false by default).

    \b
    Example:
      lookalike --db shop.duckdb ads build --min-coclick-support 3
    """
    from lookalike_cli.warehouse.dbt_runner import run_dbt

    dbt_vars: dict = {"use_ads": True}
    if min_coclick_support is not None:
        dbt_vars["ads_min_coclick_support"] = min_coclick_support
    if min_interactive_metric is not None:
        dbt_vars["ads_min_interactive_metric"] = min_interactive_metric
    if split_date:
        dbt_vars["ads_split_date"] = split_date
    run_dbt(settings, ["build", "--select", "tag:ads", "--vars", json.dumps(dbt_vars)])
    click.echo("Built the ads models. Next: lookalike ads train-embedding")

@ads_group.command("train-embedding")
@click.option("--name", default="ads_encoder", show_default=True, help="Model name: <name>.onnx + <name>.json in the models folder (--onnx-dir).")
@click.option("--epochs", type=click.IntRange(min=1), default=12, show_default=True)
@click.option("--dim", type=click.IntRange(min=2), default=64, show_default=True, help="Embedding size.")
@click.option("--batch-size", type=click.IntRange(min=8), default=512, show_default=True)
@click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), default=3e-3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="Torch threads.")
@pass_settings
def train_embedding_cmd(settings: Settings, name: str, epochs: int, dim: int, batch_size: int, learning_rate: float,
                        seed: int, threads: int) -> None:
    """Train the ad text encoder on co-click pairs, export it to ONNX, and write ad_embeddings.

    Loss: -I log sigmoid(s f(a).f(b)) on co-clicked pairs (I = interactive metric),
    -log sigmoid(-s f(a).f(b)) on sampled negatives. Prints held-out pair AUC against the
    untrained encoder and TF-IDF.

    \b
    Example:
      lookalike ads train-embedding --epochs 12 --dim 64
    """
    from lookalike_cli.ads.embedding import EmbeddingOptions, train_ad_embedding

    options = EmbeddingOptions(epochs=epochs, dim=dim, batch_size=batch_size, learning_rate=learning_rate, seed=seed, threads=threads)
    result = train_ad_embedding(settings.db_path, settings.onnx_dir, name=name, options=options, progress=click.echo)
    click.echo(f"Exported {result['manifest']} ({result['model_version']}) in {result['seconds']}s. Next: lookalike ads cluster")

@ads_group.command("cluster")
@click.option("--distance-threshold", type=float, default=0.4, show_default=True,
              help="Cosine distance at which agglomerative clustering stops merging (smaller: more, tighter clusters).")
@click.option("--seed", type=int, default=0, show_default=True)
@pass_settings
def cluster_cmd(settings: Settings, distance_threshold: float, seed: int) -> None:
    """Classify ads into product types from their embeddings, then cluster within each type: ad_clusters.

    \b
    Example:
      lookalike ads cluster --distance-threshold 0.3
    """
    from lookalike_cli.ads.cluster import ClusterOptions, cluster_ads

    cluster_ads(settings.db_path, ClusterOptions(distance_threshold=distance_threshold, seed=seed), progress=click.echo)
    click.echo("Next: lookalike ads predict-rpc")

@ads_group.command("predict-rpc")
@click.option("--horizon-days", type=click.IntRange(min=1), default=None,
              help="Length of the predicted period (default: the held-out period's length).")
@click.option("--trees", type=click.IntRange(min=1), default=150, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@pass_settings
def predict_rpc_cmd(settings: Settings, horizon_days: int | None, trees: int, seed: int) -> None:
    """Predict next-period revenue (and margin) per click with click-weighted LightGBM: ad_rpc_predictions.

    Also writes ad_rpc_evaluation: WMSE/WMAE on the held-out period by history-click bucket,
    against ad history, taxonomy and cluster means.

    \b
    Example:
      lookalike ads predict-rpc --horizon-days 14
    """
    from lookalike_cli.ads.rpc import RpcOptions, predict_rpc

    predict_rpc(settings.db_path, settings.onnx_dir, RpcOptions(num_trees=trees, seed=seed, horizon_days=horizon_days),
                progress=click.echo)
    click.echo("Next: lookalike ads bid --budget B")

@ads_group.command("bid")
@click.option("--budget", type=float, required=True, help="Spend budget for the next period (same currency as cost).")
@click.option("--objective-weights", default="revenue=1", show_default=True,
              help="Weights of the rewards, e.g. revenue=1,margin=0.5 (margin needs a margin column).")
@click.option("--min-bid", type=click.FloatRange(min=0), default=0.0, show_default=True)
@click.option("--max-bid", type=click.FloatRange(min=0, min_open=True), default=None, help="Cap on any bid.")
@click.option("--period-days", type=click.IntRange(min=1), default=None,
              help="Days the budget covers (default: the RPC horizon).")
@click.option("--report-dir", type=click.Path(file_okay=False), default=None,
              help="Where the spend/revenue curve PNG goes (default: reports/ beside the warehouse).")
@click.option("--top", type=click.IntRange(min=0), default=10, show_default=True, help="Recommendations to print.")
@pass_settings
def bid_cmd(settings: Settings, budget: float, objective_weights: str, min_bid: float, max_bid: float | None,
            period_days: int | None, report_dir: str | None, top: int) -> None:
    """Bids per ad cluster that spend the budget where weighted revenue per spend is equal: bid_recommendations.

    b_g = sum_i w_i RPC_ig / RPS_target, RPS_target found so expected spend = budget.
    Per-ad bids: the view ad_bid_recommendations.

    \b
    Example:
      lookalike ads bid --budget 5000 --objective-weights revenue=1,margin=0.5 --max-bid 2
    """
    from lookalike_cli.ads.bid import parse_objective_weights, recommend_bids

    result = recommend_bids(settings.db_path, budget, parse_objective_weights(objective_weights), min_bid=min_bid,
                            max_bid=max_bid, period_days=period_days,
                            report_dir=Path(report_dir) if report_dir else None, progress=click.echo)
    table = result["table"].sort_values("expected_spend", ascending=False).head(top)
    if len(table):
        click.echo(f"{'cluster':>8} {'product type':<24} {'ads':>5} {'bid':>8} {'w. RPC':>8} {'exp. spend':>11} {'exp. revenue':>13}")
        for _, row in table.iterrows():
            click.echo(f"{row['cluster_id']:>8} {str(row['product_type'])[:24]:<24} {row['ad_count']:>5} {row['bid']:>8.3f} "
                       f"{row['weighted_rpc']:>8.3f} {row['expected_spend']:>11,.2f} {row['expected_revenue']:>13,.2f}")


# The commands this module adds to `lookalike` (cli/main.py).
COMMANDS = [ads_group]
