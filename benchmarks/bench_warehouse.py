"""Warehouse layer: generation time, `dbt build` time, and the feature+label models against
one bare DuckDB aggregate over the same order lines, measured in the same run.

    python -m benchmarks.bench_warehouse --customers 100000 --customers 1000000

The dbt figure is the sum of the models' own execution times from run_results.json
(dbt start-up, parsing and tests excluded, as the goal states); the whole `dbt build`
wall time, tests included, is reported beside it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import duckdb

from benchmarks.results import markdown_table, timed, write_section
from lookalike_cli.warehouse.dbt_runner import run_dbt
from lookalike_cli.warehouse.generate import generate_data
from lookalike_cli.settings import Settings

FEATURE_AND_LABEL_MODELS = {
    "int_time_windows", "int_feature_cutoffs", "int_customer_order_days", "int_customer_orders_aggregated",
    "int_customer_category_counts_serving", "int_customer_category_counts_training",
    "int_customer_label_vectors", "int_customer_pairs_sampled", "categories", "training_features",
    "customer_features", "similarity_pairs",
}


def bare_aggregate_seconds(db_path: Path, repeats: int = 3, memory_limit: str | None = None) -> float:
    """Best of `repeats`: one group-by over every order line, materialised like a dbt table.

    `memory_limit` caps DuckDB like dbt's profile does (LOOKALIKE_DUCKDB_MEMORY_LIMIT), so the
    baseline runs under the same ceiling as the models it is compared with.
    """
    best = float("inf")
    with duckdb.connect(str(db_path)) as con:
        if memory_limit:
            # Under a cap the group-by must spill; keeping insertion order made it run out of memory at 10M.
            con.execute(f"set memory_limit = '{memory_limit}'")
            con.execute("set preserve_insertion_order = false")
        for _ in range(repeats):
            start = time.perf_counter()
            con.execute("""
                create or replace temp table bare_aggregate as
                select customer_id, category, count(*) as lines, count(distinct order_id) as orders,
                       sum(amount) as spend, max(ordered_at) as last_ordered_at
                from raw.order_lines group by customer_id, category
            """)
            best = min(best, time.perf_counter() - start)
    return best


def run(customers: int, workdir: Path) -> dict:
    db = workdir / f"bench_{customers}.duckdb"
    settings = Settings.resolve(db=db, onnx_dir=workdir / "onnx", index_dir=workdir / "indexes")
    with timed() as generation:
        counts = generate_data(db, customers=customers, progress=None)
    with timed() as build:
        run_dbt(settings, ["build", "--exclude", "customer_embeddings+"], echo=lambda line: None)
    run_results = json.loads((Path(settings.env()["DBT_TARGET_PATH"]) / "run_results.json").read_text())
    model_seconds = sum(
        r["execution_time"] for r in run_results["results"]
        if r["unique_id"].split(".")[-1] in FEATURE_AND_LABEL_MODELS
    )
    bare = bare_aggregate_seconds(db)
    with duckdb.connect(str(db), read_only=True) as con:
        pairs = con.execute("select count(*) from similarity_pairs").fetchone()[0]
    db.unlink()
    return {
        "customers": customers,
        "order_lines": counts["order_lines"],
        "generate_s": generation.seconds,
        "dbt_build_s": build.seconds,
        "models_s": model_seconds,
        "bare_s": bare,
        "ratio": model_seconds / bare,
        "pairs": pairs,
        "lines_per_s": counts["order_lines"] / model_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, action="append", help="population size (repeatable)")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    args = parser.parse_args()
    sizes = args.customers or [100_000]
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        rows = []
        for size in sizes:
            result = run(size, workdir)
            print(result, flush=True)
            rows.append([
                f"{result['customers']:,}", f"{result['order_lines']:,}", result["generate_s"], result["dbt_build_s"],
                result["models_s"], result["bare_s"], f"{result['ratio']:.2f}x", f"{result['pairs']:,}",
                f"{result['lines_per_s']:,.0f}",
            ])
    table = markdown_table(
        ["customers", "order lines", "generate (s)", "dbt build wall (s)", "feature+label models (s)",
         "bare aggregate (s)", "models / bare", "similarity pairs", "order lines/s (models)"],
        rows,
    )
    body = (
        table + "\n\nGoal: feature+label models within 3x of one bare DuckDB aggregate over the same order lines "
        "(dbt start-up excluded; `dbt build wall` includes start-up and all data tests)."
    )
    write_section("warehouse", "Warehouse layer: generation and dbt build", body,
                  "python -m benchmarks.bench_warehouse " + " ".join(f"--customers {s}" for s in sizes))


if __name__ == "__main__":
    main()
