"""CLI commands of the serving layer: build-index, expand, audiences list|show|diff|drop."""

from __future__ import annotations

import json

import click

from lookalike_cli.cli._common import LookalikeGroup, echo_table, pass_settings, progress
from lookalike_cli.settings import Settings







@click.command("build-index")
@click.option("--index-type", type=click.Choice(["auto", "flat", "ivf", "ivf_sq8", "ivf_pq", "hnsw"]), default="auto",
              show_default=True,
              help="auto: exact below 50k customers, IVF tuned to recall@10 >= 0.95 above; when the flat vectors exceed "
                   "--memory-budget, IVF with codes re-ranked by exact vectors on disk: 8-bit codes (ivf_sq8) if they fit "
                   "the budget, else product-quantised codes (ivf_pq, 32 B a vector at dim 128).")
@click.option("--memory-budget", default=None,
              help="RAM the flat float32 vectors may take before auto compresses them: a share of RAM (25%) or a size "
                   "(6GiB, 500MB). Default: 25% of RAM.")
@click.option("--nlist", type=int, default=None, help="IVF lists (default ~2*sqrt(rows)).")
@click.option("--nprobe", type=int, default=None, help="IVF lists probed: starting point, raised until the self-check passes.")
@click.option("--m", "m", type=int, default=None, help="HNSW links per node (default 32).")
@click.option("--pq-m", "pq_m", type=int, default=None,
              help="ivf_pq sub-quantisers = code bytes a vector; must divide the dimension (default dim/4: 32 at dim 128).")
@click.option("--ef-search", type=int, default=None, help="HNSW search breadth: starting point, raised until the self-check passes.")
@click.option("--ef-construction", type=int, default=80, show_default=True, help="HNSW build breadth.")
@click.option("--check-queries", type=int, default=500, show_default=True, help="Sampled queries for the recall@10 self-check.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (training sample, self-check queries).")
@pass_settings
def build_index_cmd(settings: Settings, **options) -> None:
    """Build the FAISS index over customer_embeddings, with a manifest and a recall self-check.

    \b
    Example:
      lookalike build-index                  # auto: says what it chose and why
      lookalike build-index --index-type hnsw --m 32
      lookalike build-index --memory-budget 2GiB   # compressed (ivf_sq8, else ivf_pq) above 2 GiB of vectors
      lookalike build-index --index-type ivf_pq --pq-m 16
    """
    from lookalike_cli.index.faiss_index import build_index, human_bytes

    manifest = build_index(settings.db_path, settings.index_dir, progress=progress, **options)
    click.echo(f"{manifest.index_version}: {manifest.index_type} {json.dumps(manifest.params)} rows={manifest.row_count} "
               f"recall@10={manifest.self_check['recall']} -> {settings.index_dir}")
    click.echo(f"Why: {manifest.reason}")
    click.echo(f"Memory: index ~{human_bytes(manifest.memory['index_ram_bytes'])} in RAM"
               + (f", exact vectors {human_bytes(manifest.memory['exact_vectors_disk_bytes'])} on disk (memory-mapped)"
                  if "exact_vectors_disk_bytes" in manifest.memory else ""))

@click.command("expand")
@click.option("--name", required=True, help="Audience name; re-running a name publishes a new version.")
@click.option("--seed-sql", default=None, help="SQL returning customer_id, run on the warehouse.")
@click.option("--seed-table", default=None, help="Warehouse table (or view) with a customer_id column.")
@click.option("--seed-file", type=click.Path(dir_okay=False), default=None, help="CSV of customer ids (header optional).")
@click.option("--seed-persona", default=None, help="Persona name: seed = customers whose top persona (customer_personas) it is.")
@click.option("--seed-value-sql", default=None,
              help="SQL returning customer_id, value (a number >= 0 per seed member): a value-based seed, each seed "
                   "weighted by its value (weighted centroid, classifier sample weights, weighted self-validation). "
                   "Customers outside the seed are ignored; seed members without a row weigh the median value.")
@click.option("--size", default=None, help="Audience size: a count (20000) or a share of the population (5%), at most every candidate: 100% is the whole population less the seeds and exclusions.")
@click.option("--min-similarity", type=float, default=None,
              help="Keep customers at least this similar (cosine) to the centroid / nearest sub-centroid / nearest seed.")
@click.option("--min-expected-lift", type=float, default=None,
              help="Instead of --size / --min-similarity: the largest size whose expected lift (reach curve: in-seed "
                   "validation, or a backtest named like the audience) is at least this, e.g. 2.")
@click.option("--strategy", type=click.Choice(["blend", "centroid", "knn-vote", "multi-centroid", "classifier"]),
              default="blend", show_default=True,
              help="How candidates are scored against the seed (blend: similarity + propensity, self-validated; see README).")
@click.option("--exclude-sql", default=None, help="SQL returning customer_id to suppress (seeds and raw.opt_outs always are).")
@click.option("--exclude-features", default=None,
              help="customer_features columns to keep out of the ranking, e.g. gender,age_band (blend only: its raw "
                   "components without them, no embedding components; category_shares drops every category share).")
@click.option("--k-per-seed", type=int, default=None, help="knn-vote: at least this many neighbours per seed vote (default 10, raised to reach --size).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (k-means, classifier sample).")
@click.option("--export-parquet", type=click.Path(file_okay=False), default=None,
              help="Also write audiences.parquet and members/<name>/v<version>.parquet here.")
@click.option("--rings", default=None,
              help="Nested tiers as shares of the population, e.g. 1%,2%,5%: one version up to the outer ring, "
                   "each member's tier in audience_members.ring ('0-1%', '1-2%', '2-5%'). Replaces --size.")
@click.option("--holdout", default=None,
              help="Hold out this share of members (e.g. 10%) from activation to measure lift with `lookalike measure`.")
@click.option("--engine", type=click.Choice(["duckdb", "spark"]), default="duckdb", show_default=True,
              help="duckdb: FAISS index. spark: exact top-k on the Spark customer_embeddings "
                   "(strategies centroid (its default) and multi-centroid; extra [spark]). Both publish to the serving file.")
@pass_settings
def expand_cmd(settings: Settings, **options) -> None:
    """Expand a seed into a lookalike audience and publish it to the serving file.

    \b
    Example:
      lookalike expand --name vip \\
        --seed-sql "select customer_id from customer_features order by total_spend desc limit 500" \\
        --size 5% --strategy knn-vote --exclude-sql "select customer_id from raw.do_not_mail"
      lookalike expand --name cooks --seed-persona "Fresh Food Cook" --size 5%
      lookalike expand --name valuable --size 5% \\
        --seed-sql "select customer_id from customer_features order by total_spend desc limit 500" \\
        --seed-value-sql "select customer_id, total_spend as value from customer_features"
      lookalike expand --name vip_tiers --rings 1%,2%,5% --holdout 10% --seed-table vip_customers
      lookalike expand --name vip_lift --seed-table vip_customers --min-expected-lift 3 \\
        --exclude-features gender,age_band,income_band
      lookalike expand --engine spark --name vip --size 5% \\
        --seed-sql "select customer_id from customer_features order by total_spend desc limit 500"
    """
    from lookalike_cli.audiences.catalog import create_audience

    if options.pop("engine") == "spark":
        from lookalike_cli.errors import LookalikeError
        from lookalike_cli.spark.expand import create_audience_spark

        if options.pop("seed_persona"):
            raise LookalikeError("--seed-persona reads customer_personas in the DuckDB warehouse: use --engine duckdb.")
        if options.pop("rings") or options.pop("holdout"):
            raise LookalikeError("--rings and --holdout are published by --engine duckdb only.")
        if options.pop("k_per_seed"):
            raise LookalikeError("--k-per-seed is a knn-vote option, which --engine spark does not run.")
        if options.pop("min_expected_lift") is not None or options.pop("exclude_features"):
            raise LookalikeError("--min-expected-lift and --exclude-features need --engine duckdb (in-seed validation, raw features).")
        if options.pop("seed_value_sql"):
            raise LookalikeError("--seed-value-sql (a value-based seed) is run by --engine duckdb only.")
        if click.get_current_context().get_parameter_source("strategy") == click.core.ParameterSource.DEFAULT:
            options["strategy"] = "centroid"  # the default blend needs the DuckDB warehouse's raw features
        row = create_audience_spark(settings, progress=progress, **options)
        click.echo(f"audience {row['name']} v{row['version']} (id {row['audience_id']}): {row['size']:,} members, "
                   f"strategy {row['strategy']} on Spark, seeds {row['seed_found']:,} found / {row['seed_missing']:,} missing")
        return
    persona = options.pop("seed_persona")
    if persona:
        from lookalike_cli.errors import LookalikeError
        from lookalike_cli.audiences.seeds import persona_seed_sql

        if options["seed_sql"] or options["seed_table"] or options["seed_file"]:
            raise LookalikeError("Give exactly one seed source: --seed-sql, --seed-table, --seed-file or --seed-persona.")
        options["seed_sql"] = persona_seed_sql(settings.db_path, persona)
    row = create_audience(settings.db_path, settings.serving_db_path, settings.index_dir, progress=progress, **options)
    click.echo(f"audience {row['name']} v{row['version']} (id {row['audience_id']}): {row['size']:,} members, "
               f"strategy {row['strategy']}, seeds {row['seed_found']:,} found / {row['seed_missing']:,} missing")
    if "reach_curve_png" in row:
        click.echo(f"reach curve: {row['reach_curve_png']} (table audience_reach_curve)")

@click.group("audiences", cls=LookalikeGroup)
def audiences_group() -> None:
    """List, show, diff and drop published audiences (in the serving file)."""

@audiences_group.command("apply")
@click.argument("file", type=click.Path(dir_okay=False))
@pass_settings
def apply_cmd(settings: Settings, file: str) -> None:
    """Publish every audience defined in a YAML file (audiences as code), each as a new version.

    The whole file is validated first (unknown keys, duplicate names, sizes, seed SQL, tables,
    files): one error lists every problem and nothing is published. Then every audience is
    computed, then published; each line says its size and what changed since its previous version.

    \b
    Example:
      lookalike audiences apply examples/audiences.yml
    """
    from lookalike_cli.audiences.definitions import apply_definitions
    from lookalike_cli.audiences.catalog import warn

    for applied in apply_definitions(settings, file, progress=progress, on_warning=warn):
        row, diff = applied.row, applied.diff
        parameters = json.loads(row["parameters"])
        extras = "".join(f", {key} {parameters[key]}" for key in ("rings", "holdout") if key in parameters)
        change = (f"vs v{diff.from_version}: +{diff.entered.num_rows:,} entered, -{diff.left.num_rows:,} left, "
                  f"{diff.stayed:,} stayed" if diff else "first version")
        click.echo(f"{row['name']} v{row['version']}: {row['size']:,} members{extras}; {change}"
                   + (f"; reach curve {row['reach_curve_png']}" if "reach_curve_png" in row else ""))


@audiences_group.command("list")
@pass_settings
def list_cmd(settings: Settings) -> None:
    """Every published audience version.

    \b
    Example:
      lookalike audiences list
    """
    from lookalike_cli.audiences.catalog import list_audiences

    echo_table(list_audiences(settings.serving_db_path))

@audiences_group.command("show")
@click.argument("name")
@click.option("--version", type=int, default=None, help="Version to show (default: latest).")
@click.option("--limit", type=int, default=10, show_default=True, help="Members to print, by rank.")
@pass_settings
def show_cmd(settings: Settings, name: str, version: int | None, limit: int) -> None:
    """An audience's row (size, strategy, versions) and its first members, read back with SQL.

    \b
    Example:
      lookalike audiences show vip --limit 10
    """
    from lookalike_cli.audiences.catalog import show_audience

    view = show_audience(settings.serving_db_path, name, version, limit)
    for key, value in view.audience.items():
        click.echo(f"{key}: {value}")
    click.echo("")
    echo_table(view.members)
    if view.reach_curve is not None and view.reach_curve.num_rows:
        click.echo("\nreach curve" + (f" ({view.reach_curve_png})" if view.reach_curve_png else "") + ":")
        echo_table(view.reach_curve)

@audiences_group.command("diff")
@click.argument("name")
@click.option("--from-version", type=int, default=None, help="Default: the version before --to-version.")
@click.option("--to-version", type=int, default=None, help="Default: the latest version.")
@click.option("--limit", type=int, default=20, show_default=True, help="Customers to print per side.")
@pass_settings
def diff_cmd(settings: Settings, name: str, from_version: int | None, to_version: int | None, limit: int) -> None:
    """Who entered and who left an audience between two versions.

    \b
    Example:
      lookalike audiences diff vip                 # previous vs latest
      lookalike audiences diff vip --from-version 1 --to-version 3
    """
    from lookalike_cli.audiences.catalog import diff_audience

    diff = diff_audience(settings.serving_db_path, name, from_version, to_version)
    click.echo(f"{name} v{diff.from_version} -> v{diff.to_version}: {diff.entered.num_rows:,} entered, "
               f"{diff.left.num_rows:,} left, {diff.stayed:,} stayed")
    for label, table in (("entered", diff.entered), ("left", diff.left)):
        if table.num_rows:
            click.echo(f"\n{label} (first {min(limit, table.num_rows)}):")
            echo_table(table.slice(0, limit))

@audiences_group.command("drop")
@click.argument("name")
@click.option("--version", type=int, default=None, help="Drop only this version (default: every version).")
@pass_settings
def drop_cmd(settings: Settings, name: str, version: int | None) -> None:
    """Remove an audience (or one version) from the serving file, with the same atomic swap as expand.

    \b
    Example:
      lookalike audiences drop vip --version 1
    """
    from lookalike_cli.audiences.catalog import drop_audience

    dropped = drop_audience(settings.serving_db_path, name, version)
    click.echo(f"Dropped {dropped} version(s) of {name!r}.")


@audiences_group.command("relink")
@pass_settings
def relink_cmd(settings: Settings) -> None:
    """Point the serving file's views at its Parquet folder again, after moving both.

    Members and attributes are Parquet files in <serving stem>_parquet/ beside the serving file,
    named in its views by absolute path; move the folder with the file, then run this.

    \b
    Example:
      lookalike --serving-db /bi/shop_serving.duckdb audiences relink
    """
    from lookalike_cli.audiences.publish import parquet_dir, relink_views

    relink_views(settings.serving_db_path)
    click.echo(f"Views of {settings.serving_db_path} now read {parquet_dir(settings.serving_db_path).resolve()}.")


# The commands this module adds to `lookalike` (cli/main.py).
COMMANDS = [build_index_cmd, expand_cmd, audiences_group]
