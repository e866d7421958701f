"""The default ranking (`expand --strategy blend`) against every backtest baseline, per holdout.

For each holdout (a warehouse + converters + population) it runs the backtest protocol (same splits
for every method) with: the default blend, the blend without the encoder (`embeddings=False`: no
embedding cosine, propensity on raw features only), the embedding-only centroid, and every baseline
in `backtest.BASELINES`. It prints, per holdout, AUC and lift@10% mean ± sd, the default's margin
over the best baseline and the paired per-split differences, and writes all of it as JSON.

Warehouses are prepared as benchmarks/bench_quality.py does (Complete Journey: trained on features
before START - 8 weeks, scored on features up to START; generated: trained on the default windows,
scored on features over the whole history), e.g.:

    python -m benchmarks.bench_default_ranking --holdout cj18=/tmp/bq/cj_18/w.duckdb:campaign:18 \
        --holdout gen0=/tmp/gen/w.duckdb:segment:0 --splits 5 --json out.json
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np

from lookalike_cli import expand as expansion
from lookalike_cli.backtest import BASELINES, run_backtest

SIZE = 10.0


def holdout_sql(kind: str, value: str) -> tuple[str, str | None]:
    """(converters_sql, population_sql)."""
    if kind == "campaign":
        return (f"select customer_id from raw.coupon_redemptions where campaign_id = '{value}'",
                f"select customer_id from raw.campaigns where campaign_id = '{value}'")
    if kind == "segment":
        return f"select customer_id from raw.planted_segments where segment_id = {int(value)}", None
    if kind == "active-segment":  # taste and activity both matter: the segment's more active half
        return (f"select customer_id from customer_features where customer_id in (select customer_id from "
                f"raw.planted_segments where segment_id = {int(value)}) qualify order_line_count >= "
                f"median(order_line_count) over ()"), None
    if kind == "noisy-activity":  # converters defined by activity alone: log order lines + a hash-uniform noise
        return (f"select customer_id from customer_features order by ln(order_line_count + 1) + "
                f"(hash(customer_id) % 1000) / 1000.0 desc limit {int(value)}"), None
    raise SystemExit(f"unknown holdout kind {kind!r} (campaign, segment, active-segment, noisy-activity)")


def per_method(result) -> dict:
    out = {}
    for row in result.table.to_pylist():
        if row["size_percent"] == SIZE:
            m = row["method"]
            out[m] = {"auc": result.info["auc_per_split"][m], "lift": result.info["lift_per_split"][m][f"{SIZE:g}"]}
    return out


def run_holdout(db: Path, kind: str, value: str, splits: int) -> dict:
    converters, population = holdout_sql(kind, value)
    index_dir = db.parent / "indexes"
    quiet = lambda m: print(m, file=sys.stderr)  # noqa: E731
    started = time.perf_counter()
    full = run_backtest(db, index_dir, converters, population, name="default", splits=splits,
                        strategies=("blend", "centroid"), baselines=BASELINES, progress=quiet)
    seconds = time.perf_counter() - started
    original = expansion.fit_blend_for
    expansion.fit_blend_for = functools.partial(original, embeddings=False)
    try:
        ablation = run_backtest(db, index_dir, converters, population, name="no-embeddings", splits=splits,
                                strategies=("blend",), baselines=(), progress=quiet)
    finally:
        expansion.fit_blend_for = original
    methods = per_method(full)
    methods["model:blend (no embeddings)"] = per_method(ablation)["model:blend"]
    weights = {"default": full.info["blend_weights"], "no-embeddings": ablation.info["blend_weights"]}
    return {"methods": methods, "weights": weights, "population": full.info["population"],
            "converters": full.info["converters"], "seconds_full_backtest": round(seconds, 1)}


def report(name: str, data: dict) -> str:
    methods = data["methods"]
    default = "model:blend"
    lines = [f"### {name}: population {data['population']:,}, converters {data['converters']:,}", "",
             "| method | AUC | lift@10% |", "|---|---|---|"]
    for m, v in methods.items():
        a, l = np.array(v["auc"]), np.array(v["lift"])
        lines.append(f"| {m} | {a.mean():.3f} ± {a.std(ddof=1):.3f} | {l.mean():.2f} ± {l.std(ddof=1):.2f} |")
    lines.append("")
    for metric in ("auc", "lift"):
        best = max(BASELINES, key=lambda m: np.mean(methods[m][metric]))
        diff = np.array(methods[default][metric]) - np.array(methods[best][metric])
        lines.append(f"- {metric}: default − best baseline ({best}) = {diff.mean():+.3f}; per split "
                     f"{', '.join(f'{d:+.3f}' for d in diff)} (sd {diff.std(ddof=1):.3f}, ahead in {(diff > 0).sum()}/{len(diff)})")
        behind = [m for m in BASELINES if np.mean(methods[m][metric]) >= np.mean(methods[default][metric])]
        lines.append(f"  baselines not beaten on mean {metric}: {behind or 'none'}")
    lines.append(f"- blend weights per split: {data['weights']['default']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--holdout", action="append", required=True,
                        help="name=DB:campaign:ID, name=DB:segment:ID or name=DB:active-segment:ID (indexes/ beside DB)")
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    results = {}
    for spec in args.holdout:
        name, rest = spec.split("=", 1)
        db, kind, value = rest.rsplit(":", 2)
        results[name] = run_holdout(Path(db), kind, value, args.splits)
        print(report(name, results[name]), flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
