"""Audience quality: does the default `lookalike expand` strategy beat the simple baselines?

Issue 9's protocol on the Complete Journey sample, per Type A campaign C (18, 13, 8):
population = households C targeted (`raw.campaigns`), converters = targeted households that
redeemed C's coupons (`raw.coupon_redemptions`). Only data from before C's start may feed
features, labels and training: each campaign gets its own copy of the warehouse, built with
`feature_end_date` = start - 8 weeks and `label_end_date` = the day before the start, on which
its model is trained; then the feature models are rebuilt with the feature window ending at the
start (every order before it) and the trained encoder scores them (the usual train-on-the-past,
score-on-the-latest shift), so the model and every baseline rank on the same, latest pre-start
features ("spend" is then the total spend before the start). Seed = a random half of the
converters, hidden = the rest, every non-seed targeted household ranked, over 5 splits.

Issue 6's protocol on generated data: the test suite's 3,000-customer warehouse, each planted
segment as the converters.

Every method runs in the same `run_backtest` call, so they rank the same candidates with the
same splits. The table (every method, mean ± sd over splits) goes to the section `quality` of
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
from lookalike_cli.backtest import BASELINES, run_backtest
from lookalike_cli.cli import main
from lookalike_cli.settings import Settings

CAMPAIGNS = (18, 13, 8)
LABEL_WEEKS = 8
EPOCHS = 8
TRAIN_SEED = 3
# The models between the raw tables and customer_features (dbt_project/models).
FEATURE_MODELS = ("int_time_windows", "int_order_lines_windowed", "int_customer_category_counts",
                  "int_customer_orders_aggregated", "customer_features")
GENERATED_CUSTOMERS, GENERATED_SEED = 3000, 11  # the test suite's warehouse (tests/conftest.py)
SEGMENTS = tuple(range(6))
STRATEGIES = ("blend", "centroid", "knn-vote", "classifier")
DEFAULT = "model:blend"
# The baselines issue 9 names; the others (rfm, raw-cosine) are reported and compared too.
ISSUE_BASELINES = ("random", "spend", "raw-shares-cosine", "raw-classifier")


def cli(settings: Settings, *args: str) -> None:
    main.main(["--db", str(settings.db_path), "--serving-db", str(settings.serving_db_path),
               "--onnx-dir", str(settings.onnx_dir), "--index-dir", str(settings.index_dir), *args],
              standalone_mode=False)


def settings_in(folder: Path) -> Settings:
    folder.mkdir(parents=True, exist_ok=True)
    return Settings.resolve(db=folder / "w.duckdb", onnx_dir=folder / "onnx", index_dir=folder / "indexes")


def ready(settings: Settings) -> bool:
    return (settings.index_dir.exists() and any(settings.index_dir.iterdir())) if settings.index_dir.exists() else False


def campaign_window(db_path: Path, campaign: int) -> tuple[str, str, str]:
    """(feature_end, label_end, start) for a campaign: labels are the 8 weeks before its start."""
    with duckdb.connect(str(db_path), read_only=True) as con:
        start = con.execute("select min(start_date) from raw.campaign_descriptions where campaign_id = ?",
                            [str(campaign)]).fetchall()[0][0]
    start = dt.date.fromisoformat(str(start)[:10])  # a DATE or TIMESTAMP column: the day is what counts
    feature_end = start - dt.timedelta(weeks=LABEL_WEEKS)
    # label_end_date is inclusive: the day before the start keeps the campaign's first day out.
    return feature_end.isoformat(), (start - dt.timedelta(days=1)).isoformat(), start.isoformat()


def train_score_index(settings: Settings, name: str, train_args: list[str]) -> None:
    cli(settings, "train", "--name", name, "--epochs", str(EPOCHS), "--seed", str(TRAIN_SEED), *train_args)
    cli(settings, "score", "--model", name)
    cli(settings, "build-index")


def prepare_completejourney(workdir: Path, campaigns: tuple[int, ...], rebuild: bool) -> dict[int, tuple[Settings, tuple]]:
    base = settings_in(workdir / "cj_base")
    if rebuild or not base.db_path.exists():
        shutil.rmtree(base.db_path.parent, ignore_errors=True)
        base = settings_in(workdir / "cj_base")
        cli(base, "load-sample", "completejourney")
        cli(base, "build", "--exclude", "customer_embeddings+")
    prepared = {}
    for campaign in campaigns:
        window = campaign_window(base.db_path, campaign)
        settings = settings_in(workdir / f"cj_{campaign}")
        if rebuild or not ready(settings):
            shutil.rmtree(settings.db_path.parent, ignore_errors=True)
            settings = settings_in(workdir / f"cj_{campaign}")
            shutil.copy(base.db_path, settings.db_path)
            cli(settings, "dbt", "build", "--exclude", "customer_embeddings+",
                "--vars", f"{{feature_end_date: '{window[0]}', label_end_date: '{window[1]}'}}")
            name = f"cj{campaign}"
            cli(settings, "train", "--name", name, "--epochs", str(EPOCHS), "--seed", str(TRAIN_SEED),
                "--layers", "3", "--location", "none")
            # Score with every order before the start: rebuild only the feature models with the
            # feature window ending at the start (the label window is then empty, and the labels
            # the model was trained on are not rebuilt), then apply the trained encoder to them.
            cli(settings, "dbt", "run", "--select", *FEATURE_MODELS,
                "--vars", f"{{feature_end_date: '{window[2]}', label_end_date: '{window[1]}'}}")
            cli(settings, "score", "--model", name)
            cli(settings, "build-index")
        prepared[campaign] = (settings, window)
    return prepared


def prepare_generated(workdir: Path, rebuild: bool) -> Settings:
    settings = settings_in(workdir / "generated")
    if rebuild or not ready(settings):
        shutil.rmtree(settings.db_path.parent, ignore_errors=True)
        settings = settings_in(workdir / "generated")
        cli(settings, "generate-data", "--customers", str(GENERATED_CUSTOMERS), "--days", "365", "--seed", str(GENERATED_SEED))
        cli(settings, "build")
        train_score_index(settings, "gen", ["--layers", "3", "--location", "word"])
    return settings


def metrics(result, size_percent: float) -> dict[str, dict]:
    """method -> {"auc": (mean, sd), "lift": (mean, sd), "auc_splits": [...], "lift_splits": [...]} at one size."""
    out = {}
    for row in result.table.to_pylist():
        if row["size_percent"] == size_percent:
            method = row["method"]
            out[method] = {"auc": (row["auc_mean"], row["auc_std"]), "lift": (row["lift_mean"], row["lift_std"]),
                           "auc_splits": np.array(result.info["auc_per_split"][method]),
                           "lift_splits": np.array(result.info["lift_per_split"][method][f"{size_percent:g}"])}
    return out


def verdict(values: dict, metric: str, baselines: tuple[str, ...]) -> str:
    """Does the default beat the best of `baselines` by more than the spread (the larger sd of the two)?

    Also the paired view: the same splits rank the same hidden converters, so the per-split
    difference (mean ± sd, and in how many splits the default was ahead) is the sharper test.
    """
    best = max(baselines, key=lambda m: values[m][metric][0])
    (mean, sd), (best_mean, best_sd) = values[DEFAULT][metric], values[best][metric]
    margin = mean - best_mean
    word = ("yes" if margin > max(sd, best_sd) else "ahead, within spread" if margin > 1e-9
            else "tie" if margin > -1e-9 else "no")
    paired = values[DEFAULT][f"{metric}_splits"] - values[best][f"{metric}_splits"]
    return (f"{word} ({margin:+.3f} vs {best}; paired {paired.mean():+.3f} ± {paired.std(ddof=1):.3f}, "
            f"ahead in {int((paired > 0).sum())}/{len(paired)} splits)")


def fmt(pair: tuple[float, float], digits: int) -> str:
    return f"{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}"


def run_completejourney(prepared: dict, splits: int) -> tuple[str, list]:
    results = {}
    for campaign, (settings, window) in prepared.items():
        results[campaign] = run_backtest(
            settings.db_path, settings.index_dir, name=f"cj_campaign_{campaign}", splits=splits, strategies=STRATEGIES,
            population_sql=f"select customer_id from raw.campaigns where campaign_id = '{campaign}'",
            converters_sql=f"select customer_id from raw.coupon_redemptions where campaign_id = '{campaign}'",
            progress=lambda m: print(m, file=sys.stderr))
    at10 = {c: metrics(r, 10.0) for c, r in results.items()}
    at5 = {c: metrics(r, 5.0) for c, r in results.items()}
    methods = list(next(iter(at10.values())))
    headers = ["method"] + [f"{c}: {m}" for c in results for m in ("AUC", "lift@10%", "lift@5%")]
    rows = [[m] + [v for c in results for v in (fmt(at10[c][m]["auc"], 3), fmt(at10[c][m]["lift"], 2), fmt(at5[c][m]["lift"], 2))]
            for m in methods]
    checks = []
    for c in results:
        for label, baselines in (("issue-9 baselines", ISSUE_BASELINES), ("every baseline", BASELINES)):
            checks.append([c, label, verdict(at10[c], "auc", baselines), verdict(at10[c], "lift", baselines)])
    windows = "; ".join(f"{c}: training features < {w[0]}, labels {w[0]}..{w[1]}; scored features < {w[2]} (start)"
                        for c, (_, w) in prepared.items())
    info = "; ".join(f"{c}: {r.info['population']:,} targeted, {r.info['converters']:,} converters, "
                     f"blend weights per split {r.info['blend_weights']}" for c, r in results.items())
    body = (f"Complete Journey, Type A campaigns, {splits} splits, mean ± sd. Windows: {windows}. {info}.\n\n"
            + markdown_table(headers, rows)
            + "\n\nDoes the default (`model:blend`) beat the best baseline by more than the spread (larger sd of the two)?\n\n"
            + markdown_table(["campaign", "against", "AUC", "lift@10%"], checks))
    return body, checks


def run_generated(settings: Settings, splits: int) -> str:
    at5 = {}
    for segment in SEGMENTS:
        result = run_backtest(settings.db_path, settings.index_dir, name=f"gen_seg{segment}", splits=splits, strategies=STRATEGIES,
                              converters_sql=f"select customer_id from raw.planted_segments where segment_id = {segment}",
                              progress=lambda m: print(m, file=sys.stderr))
        at5[segment] = (metrics(result, 5.0), result.info)
    methods = list(at5[SEGMENTS[0]][0])
    headers = ["method"] + [f"segment {s} ({at5[s][1]['converters']}) lift@5% / AUC" for s in SEGMENTS]
    rows = [[m] + [f"{fmt(at5[s][0][m]['lift'], 2)} / {at5[s][0][m]['auc'][0]:.3f}" for s in SEGMENTS] for m in methods]
    checks = [[s, verdict(at5[s][0], "lift", BASELINES), verdict(at5[s][0], "auc", BASELINES)] for s in SEGMENTS]
    return (f"Generated data ({GENERATED_CUSTOMERS:,} customers, seed {GENERATED_SEED}, model `train --layers 3 --location word "
            f"--epochs {EPOCHS} --seed {TRAIN_SEED}`), planted segments as converters, {splits} splits, mean ± sd.\n\n"
            + markdown_table(headers, rows)
            + "\n\nDefault (`model:blend`) against the best of every baseline (lift@5%, AUC):\n\n"
            + markdown_table(["segment", "lift@5%", "AUC"], checks))


def run_speed(settings: Settings, seed_count: int = 500, size: str = "5%") -> str:
    """expand() wall time per strategy on one warehouse (index in memory, as a service holds it):
    centroid (one ANN query), blend scoring every customer, and blend re-ranking an ANN pool (the
    path above BLEND_EXACT_MAX customers, forced here) with its overlap with the exact audience."""
    import sklearn.linear_model  # noqa: F401  (imported once by a long-lived process; not part of a call)

    from lookalike_cli import expand as expansion
    from lookalike_cli.index import load_index, read_embeddings

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


def main_(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_quality"))
    parser.add_argument("--campaigns", default=",".join(str(c) for c in CAMPAIGNS))
    parser.add_argument("--prepare-only", action="store_true")
    parser.add_argument("--rebuild", action="store_true", help="Rebuild warehouses and models even if present.")
    parser.add_argument("--splits", type=int, default=5)
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
    campaigns = tuple(int(c) for c in args.campaigns.split(","))
    started = time.perf_counter()
    prepared = prepare_completejourney(args.workdir, campaigns, args.rebuild)
    generated = prepare_generated(args.workdir, args.rebuild)
    print(f"prepared in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    if args.prepare_only:
        return
    cj_body, _ = run_completejourney(prepared, args.splits)
    gen_body = run_generated(generated, args.splits)
    command = "python -m benchmarks.bench_quality" + ("" if args.campaigns == ",".join(map(str, CAMPAIGNS)) else f" --campaigns {args.campaigns}")
    write_section("quality", "Audience quality: default expand strategy vs baselines (issues 9 and 6)",
                  f"{cj_body}\n\n{gen_body}\n\nTotal {time.perf_counter() - started:.0f}s.", command, args.results)


if __name__ == "__main__":
    main_()
