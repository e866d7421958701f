"""Reach curve calibration: does an audience's in-seed expected lift match the lift it actually gets?

On a scored, indexed generated warehouse (`make demo`'s demo/lookalike.duckdb: its three planted
conversions in raw.planted_conversions), for each conversion and seed size the seed is a random
sample of the converters and the hidden converters are the rest. `expand` (product defaults,
--size 20%, nothing published) ranks the population and computes its reach curve from the seed
alone; at every size of the curve its expected lift is set against the actual lift of the hidden
converters in the same ranking (precision among members / share of hidden converters among the
non-seed customers). Then `--min-expected-lift` for the default strategy: the size it chose and the
actual lift there. Writes the section `reach` of benchmarks/RESULTS.md.

    python -m benchmarks.bench_reach --db demo/lookalike.duckdb
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import duckdb
import numpy as np

from benchmarks.results import machine_line, markdown_table, write_section
from lookalike_cli.audiences.expand import expand
from lookalike_cli.settings import Settings

STRATEGIES = ("blend", "centroid", "knn-vote", "multi-centroid", "classifier")
SEED_SIZES = (100, 300)
LIFTS = (3.0, 5.0)


def quiet(_: str) -> None:
    pass


def seed_sql(conversion: str, seeds: int) -> str:
    return (f"select distinct customer_id from raw.planted_conversions where conversion_name = '{conversion}' "
            f"order by hash(customer_id + 7) limit {seeds}")


def actual_lifts(member_ids: list[int], hidden: set[int], base_rate: float, sizes: list[int]) -> list[float]:
    hits = np.cumsum([customer in hidden for customer in member_ids])
    return [float(hits[size - 1] / size / base_rate) for size in sizes]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, required=True, help="A scored, indexed generated warehouse (make demo).")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--results", type=Path, default=None, help="Write the section here instead of benchmarks/RESULTS.md.")
    args = parser.parse_args(argv)
    settings = Settings.resolve(db=args.db)
    with duckdb.connect(str(settings.db_path), read_only=True) as con:
        population = con.execute("select count(*) from customer_embeddings").fetchall()[0][0]
        converters = {name: {r[0] for r in con.execute(
            "select distinct customer_id from raw.planted_conversions where conversion_name = ?", [name]).fetchall()}
            for (name,) in con.execute("select distinct conversion_name from raw.planted_conversions order by 1").fetchall()}
        seeds_of = {(name, n): {r[0] for r in con.execute(seed_sql(name, n)).fetchall()} for name in converters for n in SEED_SIZES}
    started = time.perf_counter()
    curve_rows, summary_rows, lift_rows = [], [], []
    shares = None
    for strategy in args.strategies.split(","):
        errors, seconds = [], 0.0
        for (name, n), seed_ids in seeds_of.items():
            hidden = converters[name] - seed_ids
            base_rate = len(hidden) / (population - len(seed_ids))
            began = time.perf_counter()
            result = expand(settings.db_path, settings.index_dir, seed_sql=seed_sql(name, n), size="20%",
                            strategy=strategy, progress=quiet)
            seconds += time.perf_counter() - began
            curve = result.reach.to_pylist()
            shares = shares or [f"{100 * row['share_of_population']:g}%" for row in curve]
            actual = actual_lifts(result.members.column("customer_id").to_pylist(), hidden, base_rate,
                                  [row["size"] for row in curve])
            errors += [np.log(row["expected_lift"] / a) for row, a in zip(curve, actual) if a > 0]
            curve_rows.append([strategy, name, n] + [f"{row['expected_lift']:.1f} / {a:.1f}" for row, a in zip(curve, actual)])
            if strategy == "blend":
                for lift in LIFTS:
                    chosen = expand(settings.db_path, settings.index_dir, seed_sql=seed_sql(name, n), min_expected_lift=lift,
                                    progress=quiet)
                    size = chosen.members.num_rows
                    got = actual_lifts(chosen.members.column("customer_id").to_pylist(), hidden, base_rate, [size])[0]
                    lift_rows.append([name, n, lift, f"{size:,} ({size / population:.1%})",
                                      round(chosen.audience["parameters"]["expected_lift"], 2), round(got, 2)])
        errors = np.array(errors)
        summary_rows.append([strategy, len(errors), f"{errors.mean():+.3f}", f"{np.abs(errors).mean():.3f}",
                             f"{np.exp(np.abs(errors).mean()) - 1:.0%}", round(seconds / len(seeds_of), 2)])
    body = "\n\n".join([
        f"{population:,} customers (`{settings.db_path.name}`); the demo's planted conversions, seed = "
        f"{' or '.join(map(str, SEED_SIZES))} random converters, hidden = the rest; `expand --size 20%` with the "
        "product defaults, nothing published. Expected lift: the reach curve (in-seed validation). Actual: "
        "precision of the hidden converters among the members / their share of the non-seed customers.",
        "Calibration per strategy (every conversion, seed size and curve size): mean and mean absolute "
        "log(expected / actual lift), the typical relative error that is, and expand() seconds per audience.",
        markdown_table(["strategy", "points", "mean log ratio", "mean abs log ratio", "typical error", "s / audience"],
                       summary_rows),
        "Expected / actual lift at each size of the curve:",
        markdown_table(["strategy", "conversion", "seeds", *(shares or [])], curve_rows),
        "`--min-expected-lift X` (blend): the size it chose, the expected lift there and the actual lift there:",
        markdown_table(["conversion", "seeds", "X", "size chosen", "expected lift", "actual lift"], lift_rows),
        f"Machine: {machine_line()}. Total {time.perf_counter() - started:.0f}s.",
    ])
    write_section("reach", "Reach curve: expected lift from the seed vs actual lift of hidden converters", body,
                  f"python -m benchmarks.bench_reach --db {args.db}", args.results)


if __name__ == "__main__":
    main()
