"""CLI commands for personas and segments: personas label|propagate|show, segment, recommend."""

from __future__ import annotations

import click

from lookalike_cli.cli._common import LookalikeGroup, echo_table, pass_settings, progress
from lookalike_cli.settings import Settings




def parse_k(value: str) -> int | None:
    if value == "auto":
        return None
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither 'auto' nor an integer.", param_hint="--k") from None



@click.group("personas", cls=LookalikeGroup)
def personas_group() -> None:
    """Label a small sample of customers with personas, then propagate to everyone.

    The persona set is the dbt seed persona_definitions (lookalike_cli/warehouse/dbt_project/seeds/persona_definitions.csv);
    profiles come from the dbt model customer_profiles_text.

    \b
    Example:
      lookalike personas label && lookalike personas propagate && lookalike segment
    """

@personas_group.command("label")
@click.option("--labeller", type=click.Choice(["zero-shot", "llm"]), default="zero-shot", show_default=True,
              help="zero-shot: the packaged sentence encoder scores profile text against persona descriptions (offline). "
                   "llm: an OpenAI-compatible chat-completions endpoint.")
@click.option("--fraction", type=float, default=0.05, show_default=True, help="Share of customers to label.")
@click.option("--diversity-share", type=float, default=0.5, show_default=True,
              help="Part of the sample that covers the --graph space; the rest are the least certain customers.")
@click.option("--neighbours", type=int, default=10, show_default=True, help="k of the k-NN graph used to find uncertain customers.")
@click.option("--restart", type=float, default=0.1, show_default=True, help="Restart probability of the random walk.")
@click.option("--graph", type=click.Choice(["categories", "embeddings"]), default="categories", show_default=True,
              help="Space of the diversity sample and the k-NN graph: category shares or the two-tower embeddings.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (k-means cells, sampling).")
@click.option("--llm-url", default=None, help="llm: base URL of an OpenAI-compatible API (…/v1) or its …/chat/completions URL.")
@click.option("--llm-model", default=None, help="llm: model name.")
@click.option("--llm-api-key", default=None, help="llm: bearer token (env LOOKALIKE_PERSONAS_LABEL_LLM_API_KEY).")
@click.option("--llm-timeout", type=float, default=30.0, show_default=True, help="llm: seconds per call.")
@click.option("--llm-retries", type=int, default=2, show_default=True, help="llm: retries after an invalid answer, timeout, 429 or 5xx.")
@click.option("--llm-backoff", type=float, default=1.0, show_default=True, help="llm: seconds before the first retry (doubling after).")
@click.option("--llm-concurrency", type=int, default=1, show_default=True,
              help="llm: customers labelled at once (parallel requests); the call budget holds across them.")
@click.option("--max-calls", type=int, default=1000, show_default=True,
              help="llm: budget of calls for this run, retries included; customers left over stay unlabelled.")
@pass_settings
def label_cmd(settings: Settings, **options) -> None:
    """Label a diversity-and-uncertainty sample of customers; writes persona_labels.

    Half the sample covers the customer space (one customer per k-means cell first), the
    rest are the customers whose propagated labels are least certain. The llm labeller
    stores every prompt and answer in persona_label_log.

    \b
    Example:
      lookalike personas label                       # 5%, zero-shot, offline
      lookalike personas label --labeller llm --llm-url http://localhost:8000/v1 \\
        --llm-model qwen2.5-7b-instruct --max-calls 2000 --llm-concurrency 8
    """
    from lookalike_cli.personas.labels import label_sample

    summary = label_sample(settings.db_path, progress=progress, **options)
    click.echo(f"labelled {summary['labelled']:,} of {summary['requested']:,} sampled customers "
               f"({summary['population']:,} in all) with {summary['labeller']} in {summary['seconds']:.1f}s"
               + (f"; {summary['calls']:,} calls" if summary["calls"] is not None else "")
               + ". Next: lookalike personas propagate")

@personas_group.command("propagate")
@click.option("--neighbours", type=int, default=10, show_default=True, help="k of the customer k-NN graph.")
@click.option("--restart", type=float, default=0.1, show_default=True, help="Restart probability a in p = (1-a) W p + a y.")
@click.option("--iterations", type=int, default=100, show_default=True, help="Maximum random-walk iterations.")
@click.option("--graph", type=click.Choice(["categories", "embeddings"]), default="categories", show_default=True,
              help="k-NN graph over what customers buy (square-rooted category shares) or the two-tower embeddings.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (IVF training above 50k customers).")
@pass_settings
def propagate_cmd(settings: Settings, **options) -> None:
    """Spread persona_labels to every customer by random walk with restart; writes customer_personas.

    \b
    Example:
      lookalike personas propagate --neighbours 10 --restart 0.1 --graph categories
      lookalike dbt show --inline "select * from customer_personas where persona_rank = 1 limit 5"
    """
    from lookalike_cli.personas.labels import propagate_personas, top_personas
    from lookalike_cli.warehouse.connection import connection

    propagate_personas(settings.db_path, progress=progress, **options)
    with connection(settings.db_path, read_only=True) as con:
        echo_table(top_personas(con))

@personas_group.command("show")
@pass_settings
def show_cmd(settings: Settings) -> None:
    """Customers per top persona, from customer_personas.

    \b
    Example:
      lookalike personas show
    """
    from lookalike_cli.personas.labels import top_personas
    from lookalike_cli.warehouse.connection import connection

    with connection(settings.db_path, read_only=True) as con:
        echo_table(top_personas(con))

@click.command("segment")
@click.option("--k", "k", default="auto", show_default=True, help="Number of segments, or auto (best silhouette in --k-min..--k-max).")
@click.option("--k-min", type=int, default=4, show_default=True,
              help="Smallest k tried by auto (silhouette favours 2-3 coarse groups, rarely useful for targeting).")
@click.option("--k-max", type=int, default=15, show_default=True, help="Largest k tried by auto.")
@click.option("--inputs", default="categories", show_default=True,
              help="What to cluster on, comma-separated: categories (square roots of category shares), personas "
                   "(customer_personas probabilities), embeddings; each block scaled to unit variance.")
@click.option("--components", type=int, default=16, show_default=True, help="PCA keeps at most this many components.")
@click.option("--variance", type=float, default=0.95, show_default=True,
              help="...and no more than needed to explain this share of variance.")
@click.option("--stability-runs", type=int, default=5, show_default=True, help="k-means re-runs with other seeds for the stability ARI.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (PCA, k-means, silhouette sample).")
@click.option("--publish/--no-publish", default=True, show_default=True,
              help="Also replace the segment tables in the serving file BI tools read (atomic swap).")
@pass_settings
def segment_cmd(settings: Settings, k: str, publish: bool, **options) -> None:
    """Cluster customers on what they buy (PCA then k-means) and profile the segments.

    Writes customer_segments, segment_profiles (size, top personas, top categories, spend)
    and segment_quality (silhouette, Calinski-Harabasz, Davies-Bouldin, stability ARI) to the
    warehouse, and publishes them to the serving file (--no-publish to skip).

    \b
    Example:
      lookalike segment --k auto
      lookalike segment --k 8 --inputs categories,personas
    """
    from lookalike_cli.personas.segments import segment_customers

    quality, profiles = segment_customers(settings.db_path, k=parse_k(k), progress=progress,
                                          serving_path=settings.serving_db_path if publish else None, **options)
    click.echo(f"{quality.k} segments ({quality.k_chosen_by}) of {quality.customers:,} customers on {quality.inputs}: "
               f"silhouette {quality.silhouette:.3f}, Calinski-Harabasz {quality.calinski_harabasz:,.1f}, "
               f"Davies-Bouldin {quality.davies_bouldin:.3f}, stability ARI {quality.stability_ari_mean:.3f} "
               f"(min {quality.stability_ari_min:.3f})")
    echo_table(profiles)


@click.command("recommend")
@click.option("--model", type=click.Choice(["persona-lightgcn", "lightgcn", "mf", "popularity"]), default="persona-lightgcn",
              show_default=True, help="persona-lightgcn: LightGCN on the customer-persona-item graph (personas from customer_personas); "
                                      "lightgcn: on customer-item only; mf: matrix factorisation (BPR); popularity.")
@click.option("--item-column", default="category", show_default=True,
              help="Column of the order lines that names the item (e.g. product_id on Complete Journey).")
@click.option("--order-lines-table", default="raw.order_lines", show_default=True,
              help="Table with customer_id, ordered_at and the item column (returns, quantity or amount < 0, are left out).")
@click.option("--window", type=click.Choice(["feature", "serving"]), default="feature", show_default=True,
              help="feature: learn from the feature window, evaluate on the held-out label window after it; "
                   "serving: learn from everything before as_of_date (no evaluation).")
@click.option("--k", "k", type=int, default=10, show_default=True, help="Recommendations per customer.")
@click.option("--compare", is_flag=True, help="Also train mf and lightgcn on the same split and print their metrics "
                                              "(popularity is always compared).")
@click.option("--epochs", type=int, default=60, show_default=True,
              help="At most this many passes over the training pairs (early stopping usually stops sooner).")
@click.option("--dim", type=int, default=64, show_default=True, help="Embedding dimension.")
@click.option("--layers", type=int, default=3, show_default=True, help="LightGCN propagation layers.")
@click.option("--batch-size", type=int, default=0, show_default=True, help="BPR pairs per step; 0 = about 10 steps an epoch.")
@click.option("--lr", type=float, default=None, help="Adam learning rate. Default: 0.005 for mf, 0.02 for the LightGCNs.")
@click.option("--reg", type=float, default=1e-4, show_default=True, help="L2 penalty on the batch's embeddings.")
@click.option("--validation-share", type=float, default=0.1, show_default=True,
              help="Training pairs held out of the graph to pick the epoch (early stopping); 0 = train on all for --epochs.")
@click.option("--eval-every", type=int, default=2, show_default=True, help="Epochs between validation checks.")
@click.option("--patience", type=int, default=3, show_default=True, help="Checks without improvement before stopping.")
@click.option("--personas-table", default="customer_personas", show_default=True, help="Propagated personas (persona-lightgcn).")
@click.option("--persona-edges", type=int, default=1, show_default=True, help="Each customer links to its top-n personas.")
@click.option("--persona-weight", type=float, default=1.0, show_default=True,
              help="Total weight of a customer's persona edges (each item edge weighs 1).")
@click.option("--include-purchased", is_flag=True,
              help="Also recommend (and count as hits) items the customer already bought in the training window.")
@click.option("--min-item-customers", type=int, default=1, show_default=True, help="Items bought by fewer training customers are left out.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (initialisation, batches, negatives).")
@click.option("--threads", type=int, default=0, show_default=True,
              help="torch threads for training and scoring; 0 = torch's default (all cores). On a busy machine 1 can be much faster.")
@click.option("--refit/--no-refit", default=True, show_default=True,
              help="With --window feature: after the held-out evaluation, train again on every purchase before as_of_date "
                   "(as many epochs as validation chose) and publish that model, so recommendations use the latest purchases.")
@click.option("--publish/--no-publish", default=True, show_default=True,
              help="Replace customer_recommendations in the serving file BI tools read (atomic swap).")
@click.option("--show", type=int, default=3, show_default=True, help="Print the recommendations of this many customers.")
@pass_settings
def recommend_cmd(settings: Settings, compare: bool, publish: bool, show: int, **options) -> None:
    """Recommend items to every customer from a customer-persona-item graph (GPLR, LightGCN).

    Learns from the (customer, item) pairs of the feature window plus each customer's persona edges
    (customer_personas), evaluates NDCG@K and F1@K on the items bought in the held-out window after it
    against popularity (and mf, lightgcn with --compare), and writes the top --k items of every customer
    (customer_features) to customer_recommendations (customer_id, rank, item, score, model_version) in the
    serving file, with recommendation_runs and recommendation_metrics. The published model is trained again
    on every purchase before as_of_date (--no-refit publishes the evaluated one). Customers without a
    purchase in the training window get the most popular items.

    \b
    Example:
      lookalike personas label && lookalike personas propagate
      lookalike recommend --k 10 --compare
      lookalike recommend --item-column product_id --window serving     # Complete Journey products, all data
    """
    from lookalike_cli.personas.recommend import RecommendOptions, read_recommendations, recommend

    result = recommend(settings.db_path, settings.serving_db_path if publish else None, RecommendOptions(**options),
                       compare=compare, progress=progress)
    for warning in result.warnings:
        click.echo(f"Warning: {warning}", err=True)
    s = result.summary
    click.echo(f"{result.model_version}: {s['customers']:,} customers x {s['items']:,} items, {s['train_interactions']:,} training pairs"
               f" ({s['train_start']} .. {s['train_end']}), trained in {s['train_seconds']:.1f}s; "
               f"{s['cold_start_customers']:,} more customers without a training purchase get the most popular items")
    if result.metrics:
        rows = {}
        for m in result.metrics:
            rows.setdefault(m["model"], {"model": m["model"]}).update({f"NDCG@{m['k']}": round(m["ndcg"], 4), f"F1@{m['k']}": round(m["f1"], 4)})
        import pyarrow as pa

        click.echo(f"Held out: items first bought {s['train_end']} .. {s['test_end']} (exclusive), "
                   f"{result.metrics[0]['customers_evaluated']:,} customers")
        echo_table(pa.Table.from_pylist(list(rows.values())))
    if publish and show > 0:
        echo_table(read_recommendations(settings.serving_db_path, show))


# The commands this module adds to `lookalike` (cli/main.py).
COMMANDS = [personas_group, segment_cmd, recommend_cmd]
