"""The default `expand` (blend) on a warehouse with thousands of categories: screened vs every share column.

Real catalogues come at many granularities: a user may map `category` to a few hundred commodities
(Complete Journey) or to thousands of sub-categories. Every fitted blend component's time and memory
grow with the share columns, so above BLEND_MAX_CATEGORIES the blend ranks on the categories that set
the seed apart most. This benchmark makes such a warehouse from generated data (each generated
category split into `--split` pseudo-random sub-categories, so the signal is the same and the columns
many times more), runs the product's own build, train, score and build-index, then expands seeds of
planted segments twice in one process: with the default screening and with every category column.
It reports the precision of each audience against the planted segment, the time, and the ratio.

    python -m benchmarks.bench_many_categories --customers 20000 --split 12 --workdir /tmp/manycat
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import duckdb

from benchmarks.results import RESULTS_PATH, machine_line, markdown_table, write_section
from lookalike_cli.audiences import expand as expansion


def lookalike(db: Path, *args: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lookalike_cli.cli.main", "--db", str(db), *args], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--split", type=int, default=12, help="sub-categories each generated category is split into")
    parser.add_argument("--segments", default="1,5,7", help="planted segments whose customers seed an audience each")
    parser.add_argument("--seeds", type=int, default=300)
    parser.add_argument("--size", default="5%")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_many_categories"))
    parser.add_argument("--results", type=Path, default=RESULTS_PATH)
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    db = args.workdir / "warehouse.duckdb"
    for path in args.workdir.glob("warehouse*"):
        subprocess.run(["rm", "-rf", str(path)], check=True)
    stages = {"generate-data": lookalike(db, "generate-data", "--customers", str(args.customers), "--days", "365", "--seed", "7")}
    with duckdb.connect(str(db)) as con:
        before = con.execute("select count(distinct category) from raw.order_lines").fetchall()[0][0]
        con.execute(f"update raw.order_lines set category = category || ' #' || "
                    f"cast(hash(order_id, ordered_at) % {args.split} as varchar)")
        categories = con.execute("select count(distinct category) from raw.order_lines").fetchall()[0][0]
    for step in ("build", "train", "score", "build-index"):
        stages[step] = lookalike(db, step)
    index_dir = args.workdir / "warehouse_indexes"

    rows, ratios = [], []
    with duckdb.connect(str(db), read_only=True) as con:
        for segment in (int(s) for s in args.segments.split(",")):
            truth = set(con.execute(f"select customer_id from raw.planted_segments where segment_id = {segment}").fetchnumpy()["customer_id"].tolist())
            seed_sql = (f"select customer_id from raw.planted_segments where segment_id = {segment} "
                        f"order by hash(customer_id) limit {args.seeds}")
            measured = {}
            for label, limit in (("screened (default)", expansion.BLEND_MAX_CATEGORIES), ("every category", 10**9)):
                original, expansion.BLEND_MAX_CATEGORIES = expansion.BLEND_MAX_CATEGORIES, limit
                try:
                    started = time.perf_counter()
                    result = expansion.expand(db, index_dir, seed_sql=seed_sql, size=args.size, progress=lambda _: None)
                    seconds = time.perf_counter() - started
                finally:
                    expansion.BLEND_MAX_CATEGORIES = original
                members = result.members.column("customer_id").to_pylist()
                measured[label] = (sum(m in truth for m in members) / len(members), seconds,
                                   result.audience["parameters"]["blend"].get("categories"))
            (p_screened, t_screened, used), (p_all, t_all, _) = measured["screened (default)"], measured["every category"]
            ratios.append(t_screened / t_all)
            rows.append([segment, len(truth), f"{p_screened:.3f}", f"{p_all:.3f}", f"{t_screened:.1f}", f"{t_all:.1f}",
                         f"{t_screened / t_all:.2f}", f"{used['used']:,} of {used['of']:,}" if used else "all"])

    body = "\n".join([
        f"{args.customers:,} generated customers (seed 7), each of the {before:,} generated categories split into "
        f"{args.split} pseudo-random sub-categories: {categories:,} categories. Stages (s): "
        + ", ".join(f"{k} {v:.0f}" for k, v in stages.items())
        + f". Seeds: {args.seeds} customers of a planted segment; --size {args.size}; precision = share of the "
        "audience in the seed's planted segment. Both arms in one process, the screened one first.",
        "",
        markdown_table(["segment", "segment size", "precision, screened", "precision, every category",
                        "expand s, screened", "expand s, every category", "time ratio", "share columns used"], rows),
        "",
        f"Time ratio screened / every category: {min(ratios):.2f}-{max(ratios):.2f}.",
        "",
        machine_line(),
    ])
    write_section("bench_many_categories", f"The default expand with {categories:,} categories: screened vs every share column",
                  body, " ".join(["python -m benchmarks.bench_many_categories", *sys.argv[1:]]), path=args.results)


if __name__ == "__main__":
    main()
