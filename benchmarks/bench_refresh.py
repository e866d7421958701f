"""`lookalike refresh` after 1% new order lines vs the full pipeline, and its audiences vs a full rebuild's.

One warehouse of generated data, three arms, all in this process:

- full: the full pipeline a user would otherwise re-run daily, as `lookalike refresh` runs it on a warehouse
  it has never seen: dbt build (refresh's serving build, then the training side `lookalike train` builds
  first), `lookalike train` with its default options (timed; --train-epochs caps its epochs to save time,
  and the table says so), then score every customer, build the index, apply the audiences file.
  refresh / full is reported against the pipeline without training (what refresh replaces when the model
  is kept: the goal) and with it.
- refresh: ~1% new order lines are appended to raw.order_lines (whole orders copied from existing
  ones, same customers, new order ids), dated after the last order line: on its day (`--when
  same-day`, an intraday load: serving features stay as of the same day) or on the next day
  (`--when next-day`: every customer's recency, tenure and rate features move by a day). Then one
  timed `refresh --audiences`.
- rebuild: a copy of the refreshed warehouse, its serving models rebuilt in full by dbt (no incremental
  merge), every customer scored again (`lookalike score`), the index built from scratch, the audiences
  applied: what a full rebuild on the new data publishes. customer_features is compared with the
  refresh's column by column (doubles to 1e-9 relative: sums in another order), each refreshed audience
  (|refresh ∩ rebuild| / |rebuild| and Jaccard), and the embeddings (minimum cosine).

Run (the data is generated once into --workdir and reused):

    python -m benchmarks.bench_refresh --customers 100000
    python -m benchmarks.bench_refresh --customers 1000000 --workdir /tmp/refresh-1m
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np

from benchmarks.results import RESULTS_PATH, machine_line, markdown_table, write_section

AUDIENCES = """
audiences:
  - name: big_spenders
    seed_sql: select customer_id from customer_features order by total_spend desc limit 500
    size: 5%
    strategy: centroid
  - name: frequent_shoppers
    seed_sql: select customer_id from customer_features order by order_count desc, customer_id limit 300
    size: 2%
    strategy: knn-vote
"""


def settings_in(folder: Path):
    from lookalike_cli.settings import Settings

    return Settings.resolve(db=folder / "warehouse.duckdb")


def append_order_lines(db_path: Path, share: float, when: str) -> dict:
    """Copy every round(1/share)-th order as a new order of the same customer, dated after the last order line."""
    with duckdb.connect(str(db_path)) as con:
        last, max_order, lines = con.execute(
            "select max(ordered_at), max(order_id), count(*) from raw.order_lines").fetchall()[0]
        # Same day: a millisecond after the last line (an intraday load); next day: noon of the day after.
        new_time = "?::timestamp + interval 1 millisecond" if when == "same-day" else "cast(cast(? as date) + 1 as timestamp) + interval 12 hour"
        con.execute(f"""
            insert into raw.order_lines by name
            select * replace (order_id + {max_order} as order_id, {new_time} as ordered_at)
            from raw.order_lines where order_id % {round(1 / share)} = 0""", [last])
        added, customers, first_new = con.execute(
            "select count(*), count(distinct customer_id), min(ordered_at) from raw.order_lines where order_id > ?",
            [max_order]).fetchall()[0]
    if when == "same-day" and first_new.date() != last.date():
        raise SystemExit(f"the last order line ({last}) is too close to midnight for a same-day load")
    return {"lines_before": lines, "lines_added": added, "customers_touched": customers, "last_before": last,
            "first_added": first_new}


def latest_members(serving_db: Path) -> dict[str, set[int]]:
    with duckdb.connect(str(serving_db), read_only=True) as con:
        rows = con.execute("select audience_name, customer_id from latest_audience_members").fetchall()
    members: dict[str, set[int]] = {}
    for name, customer in rows:
        members.setdefault(name, set()).add(customer)
    return members


def min_embedding_cosine(a: Path, b: Path) -> tuple[float, int]:
    with duckdb.connect() as con:
        con.execute(f"attach '{a}' as a (read_only)")
        con.execute(f"attach '{b}' as b (read_only)")
        return con.execute("""
            select min(array_cosine_similarity(x.embedding, y.embedding)), count(*)
            from a.customer_embeddings x join b.customer_embeddings y using (customer_id)""").fetchall()[0]


def dbt_breakdown(settings, top: int = 5) -> str:
    """Where the last dbt build's time went (its run_results.json): models vs tests, the slowest models."""
    import json

    path = settings.db_path.parent / ".dbt" / settings.db_path.stem / "target" / "run_results.json"
    results = json.loads(path.read_text())["results"]
    models = sorted(((r["unique_id"].split(".")[-1], r["execution_time"]) for r in results if r["unique_id"].startswith("model.")),
                    key=lambda item: -item[1])
    tests = sum(r["execution_time"] for r in results if r["unique_id"].startswith(("test.", "unit_test.")))
    slowest = ", ".join(f"{name} {seconds:.0f}s" for name, seconds in models[:top])
    return f"models {sum(s for _, s in models):.0f}s (slowest: {slowest}), tests {tests:.0f}s"


def feature_differences(a: Path, b: Path, table: str = "customer_features") -> dict[str, int]:
    """Rows whose column differs between the two warehouses' tables (joined on customer_id), per column that differs."""
    with duckdb.connect() as con:
        con.execute(f"attach '{a}' as a (read_only)")
        con.execute(f"attach '{b}' as b (read_only)")
        columns = con.execute(f"select column_name, column_type from (describe a.{table})").fetchall()
        differs = {}
        for column, kind in columns:
            same = (f"abs(x.{column} - y.{column}) <= 1e-9 * greatest(1, abs(x.{column}))" if kind == "DOUBLE"
                    else f"x.{column} is not distinct from y.{column}")
            count = con.execute(f"select count(*) from a.{table} x full join b.{table} y using (customer_id) "
                                f"where not coalesce({same}, false)").fetchall()[0][0]
            if count:
                differs[column] = count
        return differs


def main() -> None:
    from lookalike_cli.api import build_index, score, train
    from lookalike_cli.audiences.definitions import apply_definitions
    from lookalike_cli.audiences.refresh import build_serving, ensure_training_current, refresh
    from lookalike_cli.warehouse.generate import generate_data

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--share", type=float, default=0.01, help="new order lines as a share of the existing ones")
    parser.add_argument("--when", choices=("same-day", "next-day"), default="same-day")
    parser.add_argument("--train-epochs", type=int, default=None,
                        help="cap `lookalike train`'s epochs (default: its own default options, as a user runs it)")
    parser.add_argument("--workdir", type=Path, default=None, help="keeps the generated raw data between runs")
    parser.add_argument("--results", type=Path, default=RESULTS_PATH)
    args = parser.parse_args()

    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-refresh-")
        args.workdir = Path(tmp.name)
    args.workdir.mkdir(parents=True, exist_ok=True)
    raw = args.workdir / f"raw-{args.customers}.duckdb"
    if not raw.exists():
        print(f"generating {args.customers:,} customers into {raw} ...", flush=True)
        generate_data(raw, customers=args.customers, days=args.days, seed=7)
    load_before = os.getloadavg()[0]
    arms = {name: args.workdir / f"{name}-{args.customers}" for name in ("full", "rebuild")}
    for folder in arms.values():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
    full = settings_in(arms["full"])
    shutil.copyfile(raw, full.db_path)
    audiences = args.workdir / "audiences.yml"
    audiences.write_text(AUDIENCES)
    log = lambda line: print(line, flush=True)  # noqa: E731

    # Full pipeline: a first refresh builds (no model yet), train (untimed), a second refresh does the rest.
    started = time.perf_counter()
    refresh(full, progress=log)
    serving_dbt = dbt_breakdown(full)
    ensure_training_current(full, progress=log)
    full_build = time.perf_counter() - started
    training_dbt = dbt_breakdown(full)
    started = time.perf_counter()
    train(full, progress=log, **({"epochs": args.train_epochs} if args.train_epochs else {}))
    train_seconds = time.perf_counter() - started
    started = time.perf_counter()
    first = refresh(full, audiences, progress=log)
    full_rest = time.perf_counter() - started
    full_steps = {r.step: r.seconds for r in first}
    full_steps["build"] = full_build

    appended = append_order_lines(full.db_path, args.share, args.when)
    log(f"appended {appended['lines_added']:,} order lines ({appended['lines_added'] / appended['lines_before']:.2%}) "
        f"for {appended['customers_touched']:,} customers, from {appended['first_added']} (last before: {appended['last_before']})")
    started = time.perf_counter()
    refreshed = refresh(full, audiences, progress=log)
    refresh_seconds = time.perf_counter() - started
    refresh_steps = {r.step: r for r in refreshed}
    refresh_dbt = dbt_breakdown(full)

    # Full rebuild on the same new rows: the refreshed dbt tables, then score / index / apply from scratch.
    shutil.rmtree(arms["rebuild"])
    shutil.copytree(arms["full"], arms["rebuild"], ignore=shutil.ignore_patterns("*indexes", "*serving*", "*reach_curves*"))
    rebuild = settings_in(arms["rebuild"])
    started = time.perf_counter()
    build_serving(rebuild)
    rebuild_dbt = time.perf_counter() - started
    started = time.perf_counter()
    score(rebuild, progress=log)
    scored = time.perf_counter()
    build_index(rebuild, progress=log)
    indexed = time.perf_counter()
    apply_definitions(rebuild, audiences)
    rebuild_steps = {"score": scored - started, "index": indexed - scored, "apply": time.perf_counter() - indexed}

    cosine, compared = min_embedding_cosine(full.db_path, rebuild.db_path)
    differing = feature_differences(full.db_path, rebuild.db_path)
    ours, theirs = latest_members(full.serving_db_path), latest_members(rebuild.serving_db_path)
    full_total = full_build + full_rest
    full_trained = full_total + train_seconds
    load_after = os.getloadavg()[0]

    from lookalike_cli.model.config import TrainOptions

    default_epochs = TrainOptions().epochs
    train_label = ("train (`lookalike train`, default options)" if not args.train_epochs else
                   f"train (`lookalike train`, default options but {args.train_epochs} of its {default_epochs} epochs)")
    rows = [["step", "full pipeline (s)", "refresh (s)", "refresh / full", "what refresh did"]]
    for name in ("build", "score", "index", "apply"):
        step = refresh_steps.get(name)
        rows.append([name, f"{full_steps.get(name, 0):.1f}", f"{step.seconds:.1f}" if step and step.ran else "skipped",
                     f"{step.seconds / full_steps[name]:.3f}" if step and step.ran and full_steps.get(name) else "",
                     (step.detail or step.reason) if step else ""])
    rows.insert(2, [train_label, f"{train_seconds:.1f}", "not run", "", "refresh keeps the model: `lookalike train` is the user's to run"])
    rows.append(["**total without training** (build, score, index, apply; incl. fingerprints)", f"{full_total:.1f}",
                 f"{refresh_seconds:.1f}", f"**{refresh_seconds / full_total:.3f}**", "goal <= 0.15"])
    rows.append(["total with training (the above + `lookalike train`)", f"{full_trained:.1f}", f"{refresh_seconds:.1f}",
                 f"{refresh_seconds / full_trained:.3f}", "not the goal's measure: training dominates it"])
    overlap = [["audience", "members (refresh)", "members (rebuild)", "shared / rebuild", "Jaccard"]]
    for name in sorted(theirs):
        a, b = ours.get(name, set()), theirs[name]
        overlap.append([name, f"{len(a):,}", f"{len(b):,}", f"{len(a & b) / max(len(b), 1):.4f}",
                        f"{len(a & b) / max(len(a | b), 1):.4f}"])
    body = "\n".join([
        f"{args.customers:,} generated customers ({appended['lines_before']:,} order lines, {args.days} days, seed 7); "
        f"appended {appended['lines_added']:,} lines ({appended['lines_added'] / appended['lines_before']:.2%}) for "
        f"{appended['customers_touched']:,} existing customers, dated {args.when} after the last line "
        f"({appended['last_before']} -> from {appended['first_added']}). Model: `lookalike train`'s defaults"
        + (f", epochs capped at {args.train_epochs} (of {default_epochs}; early stopping may end a default run sooner)" if args.train_epochs else "")
        + ". Audiences: 5% centroid, 2% knn-vote.",
        "",
        markdown_table(rows[0], rows[1:]),
        "",
        f"Rebuild arm (same new rows, serving models rebuilt in full by dbt, every customer scored, index built from "
        f"scratch): dbt {rebuild_dbt:.1f}s, score "
        f"{rebuild_steps['score']:.1f}s, index {rebuild_steps['index']:.1f}s, apply {rebuild_steps['apply']:.1f}s. "
        f"Embeddings refresh vs rebuild: min cosine {cosine:.6f} over {compared:,} customers (goal >= 0.9999). "
        f"customer_features refresh vs rebuild: "
        + ("every column equal (doubles to 1e-9 relative)" if not differing else
           "DIFFERENT: " + ", ".join(f"{column} in {rows:,} rows" for column, rows in differing.items())) + ".",
        "",
        f"dbt build, full pipeline: serving models {serving_dbt}; training side {training_dbt}. In the refresh: {refresh_dbt}.",
        "",
        markdown_table(overlap[0], overlap[1:]),
        "",
        machine_line() + f" Load average (1 min) {load_before:.1f} at start, {load_after:.1f} at the end.",
    ])
    write_section(f"bench_refresh_{args.when}", f"Refresh after {args.share:.0%} new order lines ({args.when}), "
                  f"{args.customers:,} customers", body, " ".join(["python -m benchmarks.bench_refresh", *sys.argv[1:]]),
                  path=args.results)
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
