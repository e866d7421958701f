"""Value-based seeds: does weighting the seed by value make an audience capture more value?

Generated data (CUSTOMERS customers, `generate-data --seed 7`): every planted conversion carries a
`conversion_value`, log-normal around the customer's latent spend propensity (price level, value
segment, activity; lookalike_cli/warehouse/generate.py). The holdout is a kind's converters after the
conversion cutoff with their values (`generate.planted_value_holdouts`; by default all three kinds,
one rebuild for all). Complete Journey (`load-sample completejourney`): campaigns CAMPAIGNS, each as
of its start date; converters are the households that redeemed its coupons, and a converter's value
is its spend during the campaign (order lines from the start to the end date in
raw.campaign_descriptions): which look-alikes of valuable redeemers are worth most.

Only the product's commands, with their defaults: one `backtest --as-of` of the cutoff with
`--value-sql` (scratch copy, `lookalike build` as of the day before, `train`, `score`, `build-index`),
SPLITS splits (seed = a random half of the converters, with their values; hidden = the rest). Every
strategy ranks twice on the same splits, unweighted (`model:<s>`) and with the seed weighted by its
converters' values (`model:<s>+value`, what `expand --seed-value-sql` does). Reports recall and value
captured (share of the hidden converters' total value in the top k%) and the paired per-split
difference weighted minus unweighted. Writes the section `value_seeds` of benchmarks/RESULTS.md.

    python -m benchmarks.bench_value_seeds --workdir /tmp/bench_value_seeds
    python -m benchmarks.bench_value_seeds --skip-generated      # Complete Journey only
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_quality import GENERATED_SEED, raw_warehouse, summarise_weights
from benchmarks.results import markdown_table, write_section
from lookalike_cli.trust.backtest import campaign_sql
from lookalike_cli.trust.backtest_as_of import Holdout, backtests_as_of, campaign_start

CUSTOMERS = 20_000
SPLITS = 5
KINDS = ("segment_response", "category_adoption", "high_value_next")  # generate.CONVERSION_KINDS
STRATEGIES = ("blend", "centroid")  # the default, and the plain weighted centroid
BASELINES = ("random", "activity", "spend", "rfm")
SIZES = (1.0, 5.0, 10.0, 20.0)
CAMPAIGNS = (18, 13, 8)  # bench_quality's Complete Journey campaigns


def campaign_value_sql(campaign: int) -> str:
    """(customer_id, value): each redeemer's spend during the campaign (start to end date)."""
    return (f"select r.customer_id, coalesce(sum(o.amount), 0) as value "
            f"from (select distinct customer_id from raw.coupon_redemptions where campaign_id::varchar = '{campaign}') r "
            f"join raw.campaign_descriptions d on d.campaign_id::varchar = '{campaign}' "
            f"left join raw.order_lines o on o.customer_id = r.customer_id "
            f"and o.ordered_at >= d.start_date and o.ordered_at < d.end_date + interval 1 day "
            f"group by r.customer_id")


def completejourney_results(workdir: Path, campaigns: list[int], splits: int, rebuild: bool, log) -> list:
    import duckdb

    cj = raw_warehouse(workdir / "completejourney", ["load-sample", "completejourney"], rebuild)
    results = []
    for campaign in campaigns:
        with duckdb.connect(str(cj.db_path), read_only=True) as con:
            population, converters = campaign_sql(con, str(campaign))
            start = campaign_start(con, str(campaign))
        holdout = Holdout(f"cj_campaign_{campaign}_value", converters, population, campaign_value_sql(campaign))
        results += backtests_as_of(cj, start, [holdout], splits=splits, strategies=STRATEGIES, baselines=BASELINES,
                                   progress=log)
    return results


def pm(values, digits: int = 3) -> str:
    values = np.asarray(values, dtype=np.float64)
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def per_split(result, key: str, method: str, size: float) -> np.ndarray:
    return np.array(result.info[key][method][f"{size:g}"])


def method_table(result) -> str:
    """Every method: AUC, then recall and value captured at each size (mean ± sd over the splits)."""
    methods = list(result.info["auc_per_split"])
    headers = ["method", "AUC"] + [f"{label}@{p:g}%" for p in SIZES for label in ("recall", "value")]
    rows = [[m, pm(result.info["auc_per_split"][m])]
            + [pm(per_split(result, key, m, p)) for p in SIZES for key in ("recall_per_split", "value_captured_per_split")]
            for m in methods]
    return markdown_table(headers, rows)


def paired_rows(result) -> list[list]:
    """Per strategy and size: weighted minus unweighted value captured and recall, paired by split."""
    rows = []
    for strategy in STRATEGIES:
        plain, weighted = f"model:{strategy}", f"model:{strategy}+value"
        for size in SIZES:
            cells = [result.name, strategy, f"{size:g}%"]
            for key in ("value_captured_per_split", "recall_per_split"):
                diff = per_split(result, key, weighted, size) - per_split(result, key, plain, size)
                cells.append(f"{diff.mean():+.3f} ± {diff.std(ddof=1):.3f} ({int((diff > 0).sum())}/{len(diff)})")
            rows.append(cells)
    return rows


def headline(results) -> str:
    """One line per holdout: the default blend, value-weighted minus unweighted, at 5% and 10%."""
    lines = []
    for result in results:
        cells = []
        for size in (5.0, 10.0):
            for key, label in (("value_captured_per_split", "value captured"), ("recall_per_split", "recall")):
                diff = per_split(result, key, "model:blend+value", size) - per_split(result, key, "model:blend", size)
                cells.append(f"{label}@{size:g}% {diff.mean():+.3f} ({int((diff > 0).sum())}/{len(diff)} splits ahead)")
        lines.append(f"- {result.name}: " + ", ".join(cells))
    return "\n".join(lines)


def main_(argv: list[str] | None = None) -> None:
    from lookalike_cli.warehouse.generate import GeneratorConfig, planted_value_holdouts

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_value_seeds"))
    parser.add_argument("--customers", type=int, default=CUSTOMERS)
    parser.add_argument("--splits", type=int, default=SPLITS)
    parser.add_argument("--kinds", default=",".join(KINDS), help="Planted conversion kinds to backtest (comma-separated).")
    parser.add_argument("--rebuild", action="store_true", help="Regenerate the raw warehouse even if present.")
    parser.add_argument("--campaigns", default=",".join(str(c) for c in CAMPAIGNS), help="Complete Journey campaigns.")
    parser.add_argument("--skip-generated", action="store_true")
    parser.add_argument("--skip-completejourney", action="store_true")
    parser.add_argument("--results", type=Path, default=None, help="Write the section here instead of benchmarks/RESULTS.md.")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    log = lambda message: print(message, file=sys.stderr)  # noqa: E731
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    results = []
    if not args.skip_generated:
        generated = raw_warehouse(args.workdir / f"generated_{args.customers}",
                                  ["generate-data", "--customers", str(args.customers), "--seed", str(GENERATED_SEED)], args.rebuild)
        as_of, holdouts = planted_value_holdouts(GeneratorConfig(customers=args.customers, seed=GENERATED_SEED))
        chosen = [Holdout(f"gen_{name}_value", converters, population, values)
                  for name, converters, population, values in holdouts if name in kinds]
        results += backtests_as_of(generated, as_of, chosen, splits=args.splits, strategies=STRATEGIES, baselines=BASELINES,
                                   progress=log)
    if not args.skip_completejourney:
        results += completejourney_results(args.workdir, [int(c) for c in args.campaigns.split(",")], args.splits,
                                           args.rebuild, log)
    sections = []
    for result in results:
        value = result.info["value"]
        sections.append(
            f"**{result.name}**: {result.info['population']:,} customers, {result.info['converters']:,} converters "
            f"after {result.info['as_of']} (seed {result.info['seed_size']:,} per split), values {value['min']:.2f}–{value['max']:.2f} "
            f"(median {value['median']:.2f}, mean {value['mean']:.2f}; their Kish effective sample size is "
            f"{value['effective_seeds'] / value['seeds_with_value']:.0%} of the converters). Mean ± sd over the splits:\n\n"
            + method_table(result)
            + f"\n\nBlend weights, unweighted seed: {summarise_weights(result.info['blend_weights'])}; value-weighted: "
            + summarise_weights(result.info['value_blend_weights']) + ".")
    paired = markdown_table(["holdout", "strategy", "size", "value captured: +value − unweighted", "recall: +value − unweighted"],
                            [row for result in results for row in paired_rows(result)])
    # One scratch rebuild serves every generated holdout, one per campaign: stages once per rebuild.
    rebuilds = {}
    for result in results:
        key = "generated" if result.name.startswith("gen_") else result.name
        rebuilds.setdefault(key, result.info["stage_seconds"])
    stages = "; ".join(f"{key}: " + ", ".join(f"{k.split(' (')[0]} {v:.0f}s" for k, v in timings.items())
                       for key, timings in rebuilds.items())
    body = ("Value captured (value@k%) = share of the hidden converters' total `conversion_value` in the top k% of the "
            "population; recall = share of their number. `+value` = the same strategy with the seed weighted by its "
            f"converters' values (`expand --seed-value-sql`). {args.splits} splits, product defaults through "
            f"`backtest --as-of` rebuilds (one for the generated holdouts, one per campaign); generated data: "
            f"{args.customers:,} customers, `generate-data --seed {GENERATED_SEED}`; Complete Journey: a campaign's "
            "redeemers valued by their spend during the campaign.\n\n"
            "The default (`blend`), value-weighted minus unweighted seed, paired by split:\n\n" + headline(results) + "\n\n"
            + "\n\n".join(sections)
            + "\n\nWeighted minus unweighted, paired by split (mean ± sd, splits where weighting is ahead):\n\n" + paired
            + f"\n\nStages per rebuild: {stages}. Total {time.perf_counter() - started:.0f}s.")
    command = "python -m benchmarks.bench_value_seeds" + (f" --kinds {args.kinds}" if kinds != list(KINDS) else "") + "".join(
        f" {flag}" for flag, on in (("--skip-generated", args.skip_generated),
                                    ("--skip-completejourney", args.skip_completejourney)) if on)
    write_section("value_seeds", "Value-based seeds: value captured with and without value-weighting the seed", body, command,
                  args.results)


if __name__ == "__main__":
    main_()
