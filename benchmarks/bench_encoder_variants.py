"""Does a training option make the encoder earn more of its place? Encoder variants on the quality holdouts.

For each dataset of benchmarks/bench_quality (Complete Journey campaigns 18, 13, 8 and the generated
conversions), one scratch rebuild as of the holdout's date is kept (`backtest --as-of`'s own steps:
`lookalike build` as of the day before, `train`, `score`, `build-index`, all with the defaults). Each
variant then copies that scratch warehouse, retrains the encoder with the variant's options (everything
else default), re-scores, re-indexes, and runs the same backtest (same splits, same seeds) with
`blend`, `blend-no-embedding` and `centroid`. The figure per holdout is the paired difference
blend - blend-no-embedding in AUC (mean ± sd over the splits, splits ahead): what the embedding adds
to the default, with only the encoder changed. The variant `default` retrains with the defaults
(a second training seed's worth of noise beside the kept model's).

    python -m benchmarks.bench_encoder_variants --variants '{"contrastive 0.3": {"contrastive": 0.3}}'

Writes the section `encoder_variants` of benchmarks/RESULTS.md. Takes about 10 minutes a variant on
2 quiet cores (the generated warehouse's training dominates).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import duckdb
import numpy as np

from benchmarks.bench_quality import CAMPAIGNS, GENERATED_CUSTOMERS, GENERATED_SEED, generated_holdouts, raw_warehouse
from benchmarks.results import markdown_table, write_section
from lookalike_cli.settings import Settings
from lookalike_cli.trust.backtest import ABLATION, campaign_sql, run_backtest
from lookalike_cli.trust.backtest_as_of import Holdout, backtests_as_of, campaign_start

SPLITS = 5


def kept_scratches(workdir: Path, customers: int, log) -> list[tuple[Path, list[Holdout]]]:
    """(scratch folder, its holdouts): one as-of rebuild per Complete Journey campaign, one for the generated data."""
    scratches = []
    cj = raw_warehouse(workdir / "completejourney", ["load-sample", "completejourney"], False)
    for campaign in CAMPAIGNS:
        with duckdb.connect(str(cj.db_path), read_only=True) as con:
            population, converters = campaign_sql(con, str(campaign))
            start = campaign_start(con, str(campaign))
        holdout = Holdout(f"cj_campaign_{campaign}", converters, population)
        scratches.append((start, cj, [holdout]))
    generated = raw_warehouse(workdir / f"generated_{customers}",
                              ["generate-data", "--customers", str(customers), "--seed", str(GENERATED_SEED)], False)
    as_of, holdouts = generated_holdouts(customers)
    scratches.append((as_of, generated, holdouts))
    kept = []
    for as_of, settings, holdouts in scratches:
        marker = workdir / "encoder_variants" / f"{holdouts[0].name}.scratch"
        if marker.exists() and Path(marker.read_text()).exists():
            kept.append((Path(marker.read_text()), holdouts))
            continue
        result = backtests_as_of(settings, as_of, holdouts[:1], splits=1, strategies=("centroid",), baselines=("random",),
                                 keep_scratch=True, progress=log)[0]
        folder = Path(result.info["scratch"])
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(folder))
        kept.append((folder, holdouts))
    return kept


def run_variant(scratch: Path, holdouts: list[Holdout], folder: Path, options: dict | None) -> dict[str, np.ndarray]:
    """Per holdout, the per-split AUC differences blend - blend-no-embedding."""
    from lookalike_cli.index.faiss_index import build_index
    from lookalike_cli.model.scoring import score
    from lookalike_cli.model.train import train

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    shutil.copy(scratch / "warehouse.duckdb", folder / "warehouse.duckdb")
    if options is None:  # the kept model and index, as backtest --as-of trained them
        shutil.copytree(scratch / "onnx", folder / "onnx")
        shutil.copytree(scratch / "indexes", folder / "indexes")
    settings = Settings.resolve(db=folder / "warehouse.duckdb", serving_db=folder / "serving.duckdb",
                                onnx_dir=folder / "onnx", index_dir=folder / "indexes")
    if options is not None:
        train(settings.db_path, settings.onnx_dir, name="variant", **options)
        score(settings, model="variant", echo=lambda line: None)
        build_index(settings.db_path, settings.index_dir, progress=lambda message: None)
    differences = {}
    for holdout in holdouts:
        result = run_backtest(settings.db_path, settings.index_dir, holdout.converters_sql,
                              population_sql=holdout.population_sql, name=holdout.name, splits=SPLITS,
                              strategies=("blend", ABLATION, "centroid"), baselines=("random",), progress=lambda m: None)
        per_split = result.info["auc_per_split"]
        differences[holdout.name] = np.array(per_split["model:blend"]) - np.array(per_split[f"model:{ABLATION}"])
    shutil.rmtree(folder, ignore_errors=True)
    return differences


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_quality"))
    parser.add_argument("--customers", type=int, default=GENERATED_CUSTOMERS)
    parser.add_argument("--variants", default='{"default": {}}',
                        help="JSON object: variant name -> lookalike train options (TrainOptions fields).")
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args(argv)
    log = lambda message: print(message, file=sys.stderr)  # noqa: E731
    variants = {"kept model": None, **json.loads(args.variants)}
    started = time.perf_counter()
    scratches = kept_scratches(args.workdir, args.customers, log)
    rows = []
    for name, options in variants.items():
        cells = []
        for scratch, holdouts in scratches:
            for holdout, d in run_variant(scratch, holdouts, args.workdir / "encoder_variants" / "work", options).items():
                cells.append(f"{d.mean():+.4f} ± {d.std(ddof=1):.4f} ({int((d > 0).sum())}/{len(d)})")
                log(f"{name}: {holdout} {cells[-1]}")
        rows.append([name, json.dumps(options) if options is not None else "as trained by backtest --as-of", *cells])
    names = [h.name for _, holdouts in scratches for h in holdouts]
    body = (f"AUC of the default blend minus the same blend without its embedding components, paired over {SPLITS} "
            f"splits (mean ± sd, splits ahead), with only the encoder retrained; generated data {args.customers:,} "
            f"customers, seed {GENERATED_SEED}.\n\n"
            + markdown_table(["variant", "train options", *names], rows)
            + f"\n\nTotal {time.perf_counter() - started:.0f}s.")
    write_section("encoder_variants", "Encoder variants: what the embedding adds to the default blend",
                  body, f"python -m benchmarks.bench_encoder_variants --variants '{args.variants}'", args.results)
    print(body)


if __name__ == "__main__":
    main()
