"""The paper's Tables 1 and 2 on the current warehouse: test MAE and scoring time per setup.

Every setup (2/3 layers x location none/word/sentence x loss) trains with the same seed and data,
is exported to ONNX, and scores the same customers with ONNX Runtime; both figures are
relative to the paper's baseline (2 layers, no location, the paper's L1 on the sampled pairs).

Two losses: `paper` (seed 000's L1 on the sampled pairs only) and `default` (what `lookalike train`
uses: that L1 plus the L1 over every other pair of a batch and the contrastive term). Table 1 shows
both, so the gain of the architecture (layers, location) and of the training can be read apart.
"""

from __future__ import annotations

import re
import shlex
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from lookalike_cli.model.locations import load_location_lookup, load_sentence_model
from lookalike_cli.model.scoring import DEFAULT_BATCH_SIZE, Encoder
from lookalike_cli.markdown import markdown_table
from lookalike_cli.model.config import EVAL_EPOCHS, LOCATION_MODES
from lookalike_cli.errors import LookalikeError
from lookalike_cli.progress import Progress, quiet
from lookalike_cli.model.train import TrainOptions, fit, load_dataset
from lookalike_cli.warehouse.connection import connection

TIMING_CUSTOMERS = 200_000  # enough for a stable rate, bounded on big warehouses

# Loss name -> TrainOptions fields that differ from the product defaults.
LOSSES = {"paper": {"in_batch": 0.0, "contrastive": 0.0}, "default": {}}
LOSS_NAMES = {"paper": "paper's L1, sampled pairs", "default": "product default loss"}


def time_scoring(encoder: Encoder, features, repeats: int = 3) -> float:
    """Best-of-repeats seconds to encode + run every batch (the whole scoring cost per customer)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for batch in features.to_batches(DEFAULT_BATCH_SIZE):
            encoder.embed(batch)
        best = min(best, time.perf_counter() - start)
    return best


def sentence_cost(con, sample: int = 512) -> tuple[int, float]:
    """(distinct areas, estimated seconds to encode them once): the one-off cost of the sentence setup.

    The vectors are already cached in location_embeddings; this times a sample of the areas.
    """
    areas = [r[0] for r in con.execute("select distinct location_area from customer_features where location_area <> '' order by 1").fetchall()]
    timed = areas[:: max(1, len(areas) // sample)][:sample]
    model = load_sentence_model()
    start = time.perf_counter()
    model.encode(timed, batch_size=256)
    return len(areas), (time.perf_counter() - start) * len(areas) / max(1, len(timed))


def dataset_description(con, db_path: Path) -> tuple[str, str]:
    """(short dataset name, the command that made the warehouse) so each dataset gets its own RESULTS.md section."""
    db = shlex.quote(str(db_path))
    tables = {f"{s}.{t}" for s, t in con.execute("select table_schema, table_name from information_schema.tables").fetchall()}
    if "raw.generator_runs" in tables:
        row = con.execute("select customers, config from raw.generator_runs order by generated_at desc limit 1").fetchall()[0]
        config = dict(re.findall(r"'(\w+)': '([^']*)'", row[1]))
        flags = f"--customers {row[0]} --days {config.get('days', '365')} --seed {config.get('seed', '0')}"
        return "generated", f"lookalike --db {db} generate-data {flags} && lookalike --db {db} build"
    if "raw.products" in tables:
        return "completejourney", f"lookalike --db {db} load-sample completejourney && lookalike --db {db} build"
    return db_path.stem, f"lookalike --db {db} build"


@dataclass
class ModelEvaluation:
    """Every setup's figures, plus what is needed to say how they were made."""

    rows: list[dict]
    customers: int
    one_off: tuple[int, float] | None
    epochs: int
    seed: int
    label: str
    locations: tuple[str, ...]
    dataset: str
    command: str
    losses: tuple[str, ...] = ("default",)

    @property
    def section(self) -> str:
        return f"model_quality_{self.dataset}"

    @property
    def title(self) -> str:
        return f"Model quality and scoring time (paper Tables 1-2), {self.dataset} data"

    def markdown(self) -> str:
        return tables_markdown(self)


def evaluate_models(db_path: Path, epochs: int = EVAL_EPOCHS, seed: int = 0, label: str = "similarity_orders",
                    locations: tuple[str, ...] = LOCATION_MODES, layer_options: tuple[int, ...] = (2, 3),
                    losses: tuple[str, ...] = tuple(LOSSES), progress: Progress = quiet,
                    results_file: Path | None = None) -> ModelEvaluation:
    """Train, export and time every setup (nothing is written to the warehouse or the models folder).

    `results_file` only goes into the reproducing command of the report.
    """
    from lookalike_cli.model.export import export_model

    unknown = [x for x in locations if x not in LOCATION_MODES] + [x for x in losses if x not in LOSSES]
    if unknown or not locations or not losses:
        raise LookalikeError(f"Unknown location mode or loss {', '.join(map(repr, unknown)) or '(none given)'}: "
                             f"locations are {', '.join(LOCATION_MODES)}; losses are {', '.join(LOSSES)}.")
    rows = []
    with tempfile.TemporaryDirectory() as folder, connection(db_path, read_only="sentence" not in locations) as con:
        dataset, data_command = dataset_description(con, db_path)
        features = con.sql(f"select * from customer_features order by customer_id limit {TIMING_CUSTOMERS}").to_arrow_table()
        for location in locations:
            data = load_dataset(con, label, location)
            lookup = load_location_lookup(con) if location == "sentence" else None
            for loss in losses:
                for layers in layer_options:
                    options = TrainOptions(layers=layers, location=location, label=label, epochs=epochs, seed=seed, **LOSSES[loss])
                    result = fit(data, options)
                    encoder = Encoder(export_model(result, Path(folder), f"eval_{layers}l_{location}_{loss}"))
                    encoder.sentence_lookup = lookup
                    seconds = time_scoring(encoder, features)
                    rows.append({"layers": layers, "location": location, "loss": loss, "test_mae": result.metrics["test_mae"],
                                 "best_epoch": result.metrics["best_epoch"], "score_seconds": seconds,
                                 "customers_per_second": features.num_rows / seconds})
                    progress(f"{layers} layers, location {location:<8} loss {loss:<7} test MAE {result.metrics['test_mae']:.4f} "
                             f"(best epoch {result.metrics['best_epoch']}), scoring {rows[-1]['customers_per_second']:,.0f} customers/s")
        one_off = sentence_cost(con) if "sentence" in locations else None
    command = (f"{data_command} && lookalike --db {shlex.quote(str(db_path))} evaluate-model --epochs {epochs} "
               f"--seed {seed} --label {label} --locations {','.join(locations)} --losses {','.join(losses)}"
               + (f" --results {shlex.quote(str(results_file))}" if results_file else ""))
    return ModelEvaluation(rows, features.num_rows, one_off, epochs, seed, label, tuple(locations), dataset, command,
                           tuple(losses))


def loss_description(options: TrainOptions | None = None) -> str:
    """How the setups were trained beyond layers/location: the loss terms and input scaling."""
    options = options or TrainOptions()
    loss = "L1 on the sampled pairs" + (f" + {options.in_batch:g} x L1 on every other pair of the batch"
                                        if options.in_batch > 0 else "")
    loss += (f" + {options.contrastive:g} x in-batch contrastive (temperature {options.temperature:g})"
             if options.contrastive > 0 else "")
    return f"loss {loss}, category shares {'z-scored' if options.scale_shares else 'as stored'}"


def tables_markdown(evaluation: ModelEvaluation) -> str:
    rows, locations, label, seed, epochs = (evaluation.rows, evaluation.locations, evaluation.label, evaluation.seed,
                                            evaluation.epochs)
    customers, one_off, losses = evaluation.customers, evaluation.one_off, evaluation.losses
    layer_options = sorted({r["layers"] for r in rows})
    cell = {(r["layers"], r["location"], r.get("loss", "default")): r for r in rows}
    base = cell[layer_options[0], locations[0], losses[0]]
    headers = ["", *[f"location {loc}" for loc in locations]]

    def row_name(layers: int, loss: str) -> str:
        return f"{layers} layers" + (f", {LOSS_NAMES[loss]}" if len(losses) > 1 else "")

    quality = [[row_name(n, loss), *[f"{100 * cell[n, loc, loss]['test_mae'] / base['test_mae']:.0f}% ({cell[n, loc, loss]['test_mae']:.4f})"
                                     for loc in locations]]
               for loss in losses for n in layer_options]
    # Scoring time depends on the architecture only: one row per layer count (the last loss's models).
    timed = losses[-1]
    speed_base = cell[layer_options[0], locations[0], timed]
    speed = [[f"{n} layers", *[f"{100 * cell[n, loc, timed]['score_seconds'] / speed_base['score_seconds']:.0f}% "
                               f"({cell[n, loc, timed]['customers_per_second']:,.0f}/s)" for loc in locations]]
             for n in layer_options]
    losses_text = "; ".join(f"{LOSS_NAMES[x]}: {loss_description(TrainOptions(**LOSSES[x]))}" for x in losses)
    body = (
        f"Table 1, test MAE relative to {row_name(base['layers'], losses[0])} / location {base['location']} (absolute MAE in brackets; "
        f"label {label}, seed {seed}, up to {epochs} epochs, early stopping on valid; {losses_text}):\n\n"
        + markdown_table(headers, quality)
        + f"\n\nTable 2, ONNX Runtime scoring time (features re-coding + inference, {customers:,} customers, "
        f"best of 3) relative to {speed_base['layers']} layers / location {speed_base['location']} (customers/s in brackets):\n\n"
        + markdown_table(headers, speed)
    )
    if one_off:
        areas, seconds = one_off
        body += (f"\n\nThe sentence setup reads precomputed vectors; computing them is a one-off of about {seconds:.1f} s for "
                 f"{areas:,} distinct location_area values ({areas / seconds:,.0f}/s), not a per-customer cost as in the paper's BERT row.")
    return body
