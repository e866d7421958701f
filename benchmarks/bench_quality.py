"""Audience quality: does the default `lookalike expand` strategy beat every simple baseline?

Only the product's own commands, with their defaults: every holdout is a `backtest --as-of`
(lookalike_cli.trust.backtest_as_of), which copies the raw tables to a scratch warehouse, builds with
as_of_date = the day before the holdout's date, trains, scores and indexes with the defaults,
then ranks. Nothing after the date feeds features, labels, the model or any baseline.

Holdouts:
- Complete Journey, Type A campaigns 18, 13, 8 (`backtest --campaign C`): as of the campaign's
  start; population = households C targeted, converters = those that redeemed its coupons.
- Generated data (GENERATED_CUSTOMERS customers, `generate-data` defaults): the three realistic
  conversions the generator plants (raw.planted_conversions, see lookalike_cli/generate.py),
  as of the generator's conversion date.

Seed = a random half of the converters, hidden = the rest, every non-seed customer of the
population ranked, SPLITS splits; every method ranks the same candidates in the same splits, so
the per-split (paired) differences are reported beside mean ± sd. Writes the section `quality` of
benchmarks/RESULTS.md.

    python -m benchmarks.bench_quality --workdir /tmp/bench_quality
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
import time
from pathlib import Path

import duckdb
import numpy as np

from benchmarks.results import markdown_table, write_section
from lookalike_cli.trust.backtest import BASELINES, DEFAULT_STRATEGIES, campaign_sql
from lookalike_cli.trust.backtest_as_of import Holdout, backtests_as_of, campaign_start
from lookalike_cli.cli.main import main
from lookalike_cli.settings import Settings

CAMPAIGNS = (18, 13, 8)
SPLITS = 5
GENERATED_CUSTOMERS, GENERATED_SEED = 20_000, 7  # `make demo`'s scale and seed
DEFAULT = "model:blend"
# The default, the default without its embedding components, and embedding-only ranking.
STRATEGIES = DEFAULT_STRATEGIES


def cli(settings: Settings, *args: str) -> None:
    main.main(["--db", str(settings.db_path), "--serving-db", str(settings.serving_db_path),
               "--onnx-dir", str(settings.onnx_dir), "--index-dir", str(settings.index_dir), *args],
              standalone_mode=False)


def settings_in(folder: Path) -> Settings:
    folder.mkdir(parents=True, exist_ok=True)
    return Settings.resolve(db=folder / "w.duckdb", onnx_dir=folder / "onnx", index_dir=folder / "indexes")


def raw_warehouse(folder: Path, load: list[str], rebuild: bool) -> Settings:
    """A warehouse holding only raw tables (the backtests build everything else in scratch copies)."""
    settings = settings_in(folder)
    if rebuild or not settings.db_path.exists():
        shutil.rmtree(folder, ignore_errors=True)
        settings = settings_in(folder)
        cli(settings, *load)
    return settings


def generated_holdouts(customers: int) -> tuple[dt.date, list[Holdout]]:
    """The generator's planted conversions, each as a holdout, as of the first day of their period."""
    from lookalike_cli.warehouse.generate import GeneratorConfig, planted_holdouts

    as_of, holdouts = planted_holdouts(GeneratorConfig(customers=customers, seed=GENERATED_SEED))
    return as_of, [Holdout(f"gen_{name}", converters, population) for name, converters, population in holdouts]


def metrics(result, size_percent: float) -> dict[str, dict]:
    """method -> {"auc": (mean, sd), "lift": (mean, sd), "auc_splits": [...], "lift_splits": [...]} at one size."""
    out = {}
    for row in result.table.to_pylist():
        if row["size_percent"] == size_percent:
            method = row["method"]
            out[method] = {"auc": (row["auc_mean"], row["auc_std"]), "lift": (row["lift_mean"], row["lift_std"]),
                           "precision": (row["precision_mean"], row["precision_std"]),
                           "auc_splits": np.array(result.info["auc_per_split"][method]),
                           "lift_splits": np.array(result.info["lift_per_split"][method][f"{size_percent:g}"])}
    return out


def verdict(values: dict, metric: str, baselines: tuple[str, ...]) -> tuple[bool, str]:
    """Does the default beat the best baseline on the mean? Margin, and the paired per-split difference."""
    best = max(baselines, key=lambda m: values[m][metric][0])
    margin = values[DEFAULT][metric][0] - values[best][metric][0]
    paired = values[DEFAULT][f"{metric}_splits"] - values[best][f"{metric}_splits"]
    word = "yes" if margin > 0 else "no"
    return margin > 0, (f"{word}: {margin:+.3f} vs {best} (paired {paired.mean():+.3f} ± {paired.std(ddof=1):.3f}, "
                        f"ahead in {int((paired > 0).sum())}/{len(paired)} splits)")


def fmt(pair: tuple[float, float], digits: int) -> str:
    return f"{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}"


def holdout_table(results: list) -> tuple[str, list[list], int]:
    """Every method's AUC, lift@10% and precision@5% per holdout; the default vs the best baseline."""
    at10 = {r.name: metrics(r, 10.0) for r in results}
    at5 = {r.name: metrics(r, 5.0) for r in results}
    methods = list(next(iter(at10.values())))
    headers = ["method"] + [f"{r.name}: {m}" for r in results for m in ("AUC", "lift@10%", "prec@5%")]
    rows = [[m] + [v for r in results for v in (fmt(at10[r.name][m]["auc"], 3), fmt(at10[r.name][m]["lift"], 2),
                                                f"{at5[r.name][m]['precision'][0]:.3f}")]
            for m in methods]
    checks, wins = [], 0
    baselines = tuple(m for m in methods if not m.startswith("model:"))
    for r in results:
        auc_ok, auc_text = verdict(at10[r.name], "auc", baselines)
        lift_ok, lift_text = verdict(at10[r.name], "lift", baselines)
        wins += auc_ok and lift_ok
        checks.append([r.name, f"{r.info['population']:,} / {r.info['converters']:,}",
                       r.info["windows"]["feature_end_date"] + " / " + r.info["windows"]["as_of_date"], auc_text, lift_text])
    return markdown_table(headers, rows), checks, wins


def ablation_table(results: list) -> list[list]:
    """Per holdout: the default minus the same blend without the encoder's components, and minus the
    embedding-only centroid (paired per split: same seeds, same hidden converters)."""
    rows = []
    for r in results:
        values = metrics(r, 10.0)
        cells = [r.name]
        for other in ("model:blend-no-embedding", "model:centroid"):
            for metric, digits in (("auc", 3), ("lift", 2)):
                paired = values[DEFAULT][f"{metric}_splits"] - values[other][f"{metric}_splits"]
                cells.append(f"{paired.mean():+.{digits}f} ± {paired.std(ddof=1):.{digits}f} ({int((paired > 0).sum())}/{len(paired)})")
        rows.append(cells)
    return rows


def run_speed(settings: Settings, seed_count: int = 500, size: str = "5%") -> str:
    """expand() wall time per strategy on one warehouse (index in memory, as a service holds it):
    centroid (one ANN query), blend scoring every customer, and blend re-ranking an ANN pool (the
    path above BLEND_EXACT_MAX customers, forced here) with its overlap with the exact audience."""
    import sklearn.linear_model  # noqa: F401  (imported once by a long-lived process; not part of a call)

    from lookalike_cli.audiences import expand as expansion
    from lookalike_cli.index.faiss_index import load_index, read_embeddings

    with duckdb.connect(str(settings.db_path), read_only=True) as con:
        population = con.execute("select count(*) from customer_embeddings").fetchall()[0][0]
        segment = con.execute("select segment_id from raw.planted_segments group by 1 order by count(*) desc limit 1").fetchall()[0][0]
        members = {r[0] for r in con.execute(f"select customer_id from raw.planted_segments where segment_id = {segment}").fetchall()}
    seed_sql = (f"select customer_id from raw.planted_segments where segment_id = {segment} "
                f"order by hash(customer_id) limit {seed_count}")
    index = load_index(settings.index_dir, expected_model_version=read_embeddings(settings.db_path)[2])
    rows, audiences = [], {}
    for label, strategy, exact_max in (("centroid", "centroid", None), ("blend, every customer", "blend", 10**12),
                                       ("blend, ANN pool", "blend", 0)):
        original = expansion.BLEND_EXACT_MAX
        expansion.BLEND_EXACT_MAX = exact_max if exact_max is not None else original
        try:
            started = time.perf_counter()
            result = expansion.expand(settings.db_path, settings.index_dir, seed_sql=seed_sql, size=size, strategy=strategy,
                                      progress=lambda _: None, loaded_index=index)
            seconds = time.perf_counter() - started
        finally:
            expansion.BLEND_EXACT_MAX = original
        ids = set(result.members.column("customer_id").to_pylist())
        audiences[label] = ids
        rows.append([label, f"{seconds:.2f}", f"{len(ids & members) / len(ids):.3f}"])
    overlap = len(audiences["blend, ANN pool"] & audiences["blend, every customer"]) / len(audiences["blend, every customer"])
    return (f"expand() on {population:,} generated customers, {seed_count} seeds from the largest planted segment, --size {size} "
            f"(index in memory; blend's time includes reading the raw features and its self-validation):\n\n"
            + markdown_table(["strategy", "seconds", "share of the audience in the seed's segment"], rows)
            + f"\n\nANN-pool blend audience overlaps the every-customer blend audience by {overlap:.3f}.")


def summarise_weights(per_split: list[dict]) -> str:
    """'propensity 0.58, raw 0.20, ...': each component's mean weight over the splits, biggest first."""
    totals: dict[str, float] = {}
    for weights in per_split:
        for name, weight in weights.items():
            totals[name] = totals.get(name, 0.0) + weight / len(per_split)
    return ", ".join(f"{name} {weight:.2f}" for name, weight in sorted(totals.items(), key=lambda kv: -kv[1]) if weight >= 0.005)


def main_(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_quality"))
    parser.add_argument("--campaigns", default=",".join(str(c) for c in CAMPAIGNS))
    parser.add_argument("--customers", type=int, default=GENERATED_CUSTOMERS)
    parser.add_argument("--splits", type=int, default=SPLITS)
    parser.add_argument("--rebuild", action="store_true", help="Reload the raw warehouses even if present.")
    parser.add_argument("--skip-generated", action="store_true")
    parser.add_argument("--skip-completejourney", action="store_true")
    parser.add_argument("--results", type=Path, default=None, help="Write the section here instead of benchmarks/RESULTS.md.")
    parser.add_argument("--speed-db", type=Path, default=None,
                        help="Only time expand() per strategy on this scored, indexed generated warehouse (indexes/ beside it); "
                             "writes the section quality_speed.")
    args = parser.parse_args(argv)
    if args.speed_db:
        settings = Settings.resolve(db=args.speed_db)
        write_section("quality_speed", "Audience quality: expand() time of the blend strategy",
                      run_speed(settings), f"python -m benchmarks.bench_quality --speed-db {args.speed_db}", args.results)
        return
    started = time.perf_counter()
    log = lambda message: print(message, file=sys.stderr)  # noqa: E731
    results = []
    if not args.skip_completejourney:
        cj = raw_warehouse(args.workdir / "completejourney", ["load-sample", "completejourney"], args.rebuild)
        for campaign in (int(c) for c in args.campaigns.split(",")):
            with duckdb.connect(str(cj.db_path), read_only=True) as con:
                population, converters = campaign_sql(con, str(campaign))
                start = campaign_start(con, str(campaign))
            results += backtests_as_of(cj, start, [Holdout(f"cj_campaign_{campaign}", converters, population)],
                                       splits=args.splits, strategies=STRATEGIES, baselines=BASELINES, progress=log)
    if not args.skip_generated:
        generated = raw_warehouse(args.workdir / f"generated_{args.customers}",
                                  ["generate-data", "--customers", str(args.customers), "--seed", str(GENERATED_SEED)],
                                  args.rebuild)
        as_of, holdouts = generated_holdouts(args.customers)
        results += backtests_as_of(generated, as_of, holdouts, splits=args.splits, strategies=STRATEGIES,
                                   baselines=BASELINES, progress=log)
    table, checks, wins = holdout_table(results)
    stages = "; ".join(f"{r.name}: " + ", ".join(f"{k.split(' (')[0]} {v:.0f}s" for k, v in r.info["stage_seconds"].items())
                       for r in results if r.info.get("stage_seconds"))
    weights = "; ".join(f"{r.name}: {summarise_weights(r.info['blend_weights'])}" for r in results)
    body = (f"Every holdout through `backtest --as-of` (product defaults: `lookalike build` as of the day before, "
            f"`lookalike train`, `score`, `build-index`), {args.splits} splits, mean ± sd; seed = half the converters. "
            f"Generated data: {args.customers:,} customers, `generate-data --seed {GENERATED_SEED}`.\n\n"
            + table
            + "\n\nDoes the default (`model:blend`) beat the best baseline on mean AUC and mean lift@10%? "
              f"(Both on {wins} of {len(results)} holdouts.)\n\n"
            + markdown_table(["holdout", "population / converters", "feature_end / as_of", "AUC", "lift@10%"], checks)
            + "\n\nDoes the encoder earn its place? The default minus the same blend without the embedding components, "
              "and minus the embedding-only centroid (paired per split: mean ± sd, splits where the default is ahead):\n\n"
            + markdown_table(["holdout", "AUC vs no-embedding", "lift@10% vs no-embedding", "AUC vs centroid", "lift@10% vs centroid"],
                             ablation_table(results))
            + f"\n\nBlend weights (mean over the splits): {weights}.\n\nStages: {stages}.\n\nTotal {time.perf_counter() - started:.0f}s.")
    command = "python -m benchmarks.bench_quality" + "".join(
        f" {flag}" for flag, on in (("--skip-generated", args.skip_generated), ("--skip-completejourney", args.skip_completejourney)) if on)
    write_section("quality", "Audience quality: the default expand strategy vs every baseline, as of each holdout's date",
                  body, command, args.results)
    print(body)


if __name__ == "__main__":
    main_()
