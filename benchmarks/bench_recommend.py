"""Recommendations (issue 19, GPLR's first application): LightGCN on the customer-persona-item graph vs
popularity, MF (BPR) and LightGCN on customer-item, on the same split, NDCG@K and F1@K over seeds.

Split: the model learns from the (customer, item) pairs of the feature window [data start,
feature_end_date) and is scored on the items each customer buys for the first time in the held-out
label window after it (`lookalike recommend --window feature`). Personas must not see the held-out
window, so they are labelled and propagated on a warehouse built as of the day before
feature_end_date, once from a 5% sample and once labelling 100% of the customers, then the
warehouse is rebuilt on all the data. One extra row shows what leaking does: personas labelled
(5%) on the full warehouse, whose customer_features include the held-out window.

    python -m benchmarks.bench_recommend --customers 10000 --seeds 3
    python -m benchmarks.bench_recommend --skip-generated --skip-completejourney --scale 1000000 \
        --workdir /tmp/recommend-1m --reuse --threads 2                                         # time, memory
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import duckdb
import numpy as np
import psutil
import scipy.sparse as sp

from benchmarks.results import machine_line, markdown_table, write_section
from lookalike_cli.cli.main import main
from lookalike_cli.personas.recommend import (
    EVAL_KS, BipartiteAdjacency, RecommendOptions, evaluate, fit, load_interactions, load_persona_edges, normalised_adjacency,
)

ROOT = Path(__file__).resolve().parent.parent


def cli(db: Path, *args: str) -> None:
    main.main(["--db", str(db), *args], standalone_mode=False)


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def copy_table(db: Path, source: str, target: str) -> None:
    with duckdb.connect(str(db)) as con:
        con.execute(f"create or replace table {target} as select * from {source}")


def prepared(db: Path, leaky: bool) -> bool:
    if not db.exists():
        return False
    with duckdb.connect(str(db), read_only=True) as con:
        tables = {r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()}
    return {"customer_personas_5pct", "customer_personas_100pct", "int_time_windows"} | ({"customer_personas_leaky"} if leaky else set()) <= tables


def prepare(folder: Path, load: list[str], leaky: bool, reuse: bool = False) -> Path:
    """A warehouse with honest personas (as of the day before feature_end_date) from 5% and 100% labelling."""
    if reuse and prepared(folder / "w.duckdb", leaky):
        say(f"{folder.name}: reusing {folder / 'w.duckdb'}")
        return folder / "w.duckdb"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    db = folder / "w.duckdb"
    cli(db, *load)
    cli(db, "build")
    with duckdb.connect(str(db), read_only=True) as con:
        feature_end = con.execute("select feature_end_at from int_time_windows").fetchall()[0][0]
    before = (feature_end - timedelta(days=1)).date()
    say(f"{folder.name}: personas as of {before} (feature_end_date {feature_end.date()})")
    cli(db, "build", "--vars", json.dumps({"as_of_date": str(before)}))
    for fraction, table in ((0.05, "customer_personas_5pct"), (1.0, "customer_personas_100pct")):
        start = time.perf_counter()
        cli(db, "personas", "label", "--fraction", str(fraction), "--seed", "0")
        cli(db, "personas", "propagate")
        copy_table(db, "customer_personas", table)
        say(f"{folder.name}: labelled {fraction:.0%} and propagated in {time.perf_counter() - start:.0f}s")
    cli(db, "build")
    if leaky:
        cli(db, "personas", "label", "--fraction", "0.05", "--seed", "0")
        cli(db, "personas", "propagate")
        copy_table(db, "customer_personas", "customer_personas_leaky")
    return db


VARIANTS = (
    # (label, model, personas table, options)
    ("popularity", "popularity", None, {}),
    ("MF (BPR)", "mf", None, {}),
    ("LightGCN, customer-item", "lightgcn", None, {}),
    ("ours: LightGCN, customer-persona-item, personas from 5%", "persona-lightgcn", "customer_personas_5pct", {}),
    ("ours: LightGCN, customer-persona-item, personas from 100%", "persona-lightgcn", "customer_personas_100pct", {}),
)
EXTRA_VARIANTS = (
    ("ours, 5%, top-3 personas per customer", "persona-lightgcn", "customer_personas_5pct", {"persona_edges": 3}),
    ("ours, 5%, persona edge weight 5", "persona-lightgcn", "customer_personas_5pct", {"persona_weight": 5.0}),
    ("ours, 5%, LEAKY personas (labelled on data incl. the held-out window)", "persona-lightgcn", "customer_personas_leaky", {}),
)


def run_models(db: Path, options: RecommendOptions, seeds: int, variants, extras=(), extra_seeds: int = 1) -> tuple[list[list], dict]:
    data = load_interactions(db, options.item_column, options.order_lines_table, min_item_customers=options.min_item_customers,
                             progress=say)
    items_per_customer = np.diff(data.train.indptr)
    light = items_per_customer <= np.quantile(items_per_customer, 0.25)
    rows, per_seed = [], {}
    with duckdb.connect(str(db), read_only=True) as con:
        tables = {r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()}
    for label, model, table, extra in [*variants, *extras]:
        if table is not None and table not in tables:
            continue
        n_seeds = 1 if model == "popularity" else seeds if (label, model, table, extra) in variants else extra_seeds
        if n_seeds == 1 and model != "popularity" and seeds > 1:
            label += " (1 seed)"
        personas = None
        if table is not None:
            opts = replace(options, personas_table=table, **extra)
            personas = load_persona_edges(db, data.customer_ids, table, opts.persona_edges, opts.persona_weight)
        runs = []
        for seed in range(n_seeds):
            opts = replace(options, model=model, seed=seed, **extra)
            fitted = fit(data, opts, personas)
            metrics = {m["k"]: m for m in evaluate(fitted, data, EVAL_KS)}
            light_ndcg = evaluate(fitted, data, (10,), only=light)[0]["ndcg"]
            runs.append((metrics, light_ndcg, fitted.seconds, fitted.epoch))
            say(f"  {label} seed {seed}: NDCG@10 {metrics[10]['ndcg']:.4f} (light customers {light_ndcg:.4f}), "
                f"epoch {fitted.epoch}, {fitted.seconds:.0f}s")
        per_seed[label] = [r[0][10]["ndcg"] for r in runs]
        ndcg = {k: np.mean([r[0][k]["ndcg"] for r in runs]) for k in EVAL_KS}
        f1 = {k: np.mean([r[0][k]["f1"] for r in runs]) for k in EVAL_KS}
        sd = np.std([r[0][10]["ndcg"] for r in runs])
        rows.append([label, *(f"{ndcg[k]:.4f}" for k in EVAL_KS), *(f"{f1[k]:.4f}" for k in EVAL_KS),
                     f"{sd:.4f}" if len(runs) > 1 else "", f"{np.mean([r[1] for r in runs]):.4f}",
                     f"{np.mean([r[3] for r in runs]):.0f}" if model != "popularity" else "",
                     f"{np.mean([r[2] for r in runs]):.1f}"])
    evaluated = evaluate(fit(data, replace(options, model="popularity")), data, (10,))[0]["customers_evaluated"]
    info = {"customers": data.shape[0], "items": data.shape[1], "train": data.train.nnz, "test": data.test.nnz,
            "evaluated": evaluated, "light": int((light & (np.diff(data.test.indptr) > 0)).sum()),
            "light_max_items": int(items_per_customer[light].max()), "windows": data.windows, "per_seed": per_seed}
    return rows, info


HEADER = ["model", *(f"NDCG@{k}" for k in EVAL_KS), *(f"F1@{k}" for k in EVAL_KS), "sd NDCG@10",
          "NDCG@10, light customers", "epoch kept", "train s"]


def paired(info: dict, ours: str, base: str) -> str:
    a, b = np.array(info["per_seed"].get(ours, [])), np.array(info["per_seed"].get(base, []))
    if not len(a) or len(a) != len(b):
        return ""
    d = a - b
    return f"{d.mean():+.4f} (per seed: {', '.join(f'{x:+.4f}' for x in d)})"


def section(title: str, rows: list[list], info: dict) -> str:
    w = info["windows"]
    ours5 = "ours: LightGCN, customer-persona-item, personas from 5%"
    ours100 = "ours: LightGCN, customer-persona-item, personas from 100%"
    return (
        f"**{title}**: {info['customers']:,} customers with a training pair x {info['items']:,} items, {info['train']:,} training pairs "
        f"({w['train_start']} .. {w['train_end']}, exclusive); held out {info['test']:,} new (customer, item) pairs up to "
        f"{w['test_end']} (exclusive); {info['evaluated']:,} customers evaluated, {info['light']:,} of them light "
        f"(<= {info['light_max_items']} training items, the lightest quarter).\n\n"
        + markdown_table(HEADER, rows)
        + f"\n\nOurs (5%) minus LightGCN, NDCG@10: {paired(info, ours5, 'LightGCN, customer-item')}; "
          f"ours (100%) minus LightGCN: {paired(info, ours100, 'LightGCN, customer-item')}."
    )


def tree_rss(process: psutil.Process) -> int:
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def timed_command(db: Path, args: list[str], log: Path, threads: int | None = None) -> tuple[float, float, float, str]:
    """(seconds, peak RSS MiB of the process tree sampled every 0.2 s, the process's own ru_maxrss MiB, output) of
    `lookalike --db DB ARGS` in a subprocess."""
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)  # torch's intra-op threads
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "lookalike_cli.cli.main", "--db", str(db), *args], stdout=out,
                                stderr=subprocess.STDOUT, env=env)
        handle, peak = psutil.Process(proc.pid), 0
        while True:
            # wait4 reaps the child with its own resource usage (ru_maxrss in KiB on Linux).
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            try:
                peak = max(peak, tree_rss(handle))
            except psutil.NoSuchProcess:
                pass
            time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)
    output = log.read_text()
    if proc.returncode != 0:
        raise SystemExit(f"lookalike {' '.join(args)} failed:\n{output[-3000:]}")
    return time.perf_counter() - start, peak / 2**20, usage.ru_maxrss / 1024, output


def full_csr_product(adjacency: BipartiteAdjacency):
    """The earlier propagation, for comparison: the whole symmetric A as one torch CSR matrix."""
    import torch

    full = sp.bmat([[None, adjacency.block], [adjacency.block.T, None]], format="csr", dtype=np.float32)
    full.sort_indices()
    return torch.sparse_csr_tensor(torch.from_numpy(full.indptr.astype(np.int64)), torch.from_numpy(full.indices.astype(np.int64)),
                                   torch.from_numpy(full.data), size=full.shape)


def propagation_rows(db: Path, dim: int, threads: int, repeats: int = 2) -> list[list]:
    """One propagation layer (A @ E, d = dim) on the real graph: the bipartite product vs the full CSR product."""
    import torch

    torch.set_num_threads(threads)
    data = load_interactions(db, progress=say)
    with duckdb.connect(str(db), read_only=True) as con:
        has_personas = con.execute("select count(*) from information_schema.tables where table_name = 'customer_personas'").fetchall()[0][0]
    graphs = [("customer-item", None)] + ([("customer-persona-item", load_persona_edges(db, data.customer_ids))] if has_personas else [])
    rows = []
    for label, persona_edges in graphs:
        adjacency = normalised_adjacency(data.train, persona_edges)
        full = full_csr_product(adjacency)
        x = torch.randn(adjacency.shape[0], dim, generator=torch.Generator().manual_seed(0))
        timings = {}
        for name, product in (("full CSR", lambda: full @ x), ("bipartite", lambda: adjacency @ x)):
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                out = product()
                best = min(best, time.perf_counter() - start)
            timings[name] = (best, out)
        difference = float((timings["full CSR"][1] - timings["bipartite"][1]).abs().max())
        rows.append([label, f"{adjacency.shape[0]:,}", f"{2 * adjacency.block.nnz:,}", f"{timings['full CSR'][0]:.2f}",
                     f"{timings['bipartite'][0]:.2f}", f"{timings['full CSR'][0] / timings['bipartite'][0]:.1f}", f"{difference:.1e}"])
        say(f"propagation {label}: {rows[-1]}")
        del full
    return rows


def scale_warehouse(workdir: Path, n: int, reuse: bool, epochs: int) -> tuple[Path, str]:
    """workdir/scale_N/w.duckdb generated (seed 11) and built, personas labelled (5%) and propagated."""
    folder = workdir / f"scale_{n}"
    db = folder / "w.duckdb"
    if reuse and db.exists():
        with duckdb.connect(str(db), read_only=True) as con:
            tables = {r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()}
        # Timing the propagation alone needs no personas (their graph row is then left out).
        if {"customer_features", "int_time_windows"} <= tables and ("customer_personas" in tables or not epochs):
            say(f"scale {n:,}: reusing {db}")
            return db, "reused"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    start = time.perf_counter()
    cli(db, "generate-data", "--customers", str(n), "--seed", "11")
    cli(db, "build")
    say(f"scale {n:,}: generated and built in {time.perf_counter() - start:.0f}s")
    label_s, label_mb, _, _ = timed_command(db, ["personas", "label", "--fraction", "0.05"], folder / "label.log")
    prop_s, prop_mb, _, _ = timed_command(db, ["personas", "propagate"], folder / "propagate.log")
    return db, f"personas label {label_s:.0f} s / propagate {prop_s:.0f} s, peak RSS {max(label_mb, prop_mb):,.0f} MiB"


def scale_rows(db: Path, n: int, epochs: int, threads: int) -> list[list]:
    rows = []
    for model in ("lightgcn", "persona-lightgcn"):
        seconds, peak, own_peak, output = timed_command(
            db, ["recommend", "--model", model, "--epochs", str(epochs), "--validation-share", "0", "--show", "0",
                 *(["--threads", str(threads)] if threads else [])],
            db.parent / f"recommend_{model}.log", threads)
        line = next(l for l in output.splitlines() if "trained in" in l)
        trained = float(line.rsplit("trained in ", 1)[1].split("s")[0])
        pairs = int(line.split(" training pairs")[0].rsplit(", ", 1)[1].replace(",", ""))
        load = os.getloadavg()[0]
        rows.append([f"{n:,}", model, f"{pairs:,}", epochs, f"{trained:.0f}", f"{trained / epochs:.0f}", f"{seconds:.0f}",
                     f"{own_peak:,.0f}", f"{peak:,.0f}", f"{load:.1f}"])
        say(f"scale {n:,} {model}: {rows[-1]}")
    return rows


def preamble(options: RecommendOptions, seeds: int, threads: int) -> str:
    return (
        f"{machine_line()}; shared with other jobs (load average {os.getloadavg()[0]:.1f} when this section was written), "
        f"torch threads {threads}. Every model: d = {options.dim}, Adam lr 0.005 (MF) / 0.02 (LightGCNs), L2 {options.reg}, BPR with "
        f"one negative per pair, auto batch (~10 steps an epoch), LightGCN {options.layers} layers; at most {options.epochs} epochs, "
        f"the epoch kept is the best NDCG@10 on {options.validation_share:.0%} of the training pairs held out of the graph (checked "
        f"every {options.eval_every} epochs, stop after {options.patience} checks without gain). Metrics: mean over {seeds} seeds "
        "(initialisation, batches, negatives; data and personas fixed) of the per-customer NDCG@K and F1@K (2PR/(P+R), 0 without "
        "a hit) over the customers with at least one new item in the held-out window; items bought in the training window are "
        "neither recommended nor counted. Personas are labelled zero-shot (the packaged sentence encoder, `lookalike personas "
        "label`) on a warehouse built as of the day before feature_end_date, so they never see the held-out window. Rows marked "
        "(1 seed) ran one seed."
    )


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=10000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--extra-seeds", type=int, default=1, help="Seeds of the extra persona variants and the leaky row.")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_recommend"))
    parser.add_argument("--reuse", action="store_true", help="Reuse a workdir warehouse that already has the persona tables.")
    parser.add_argument("--skip-generated", action="store_true")
    parser.add_argument("--skip-completejourney", action="store_true")
    parser.add_argument("--skip-products", action="store_true", help="Complete Journey: categories only.")
    parser.add_argument("--skip-categories", action="store_true", help="Complete Journey: products only.")
    parser.add_argument("--no-extras", action="store_true", help="Skip the persona variants and the leaky row.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine: 2 contended threads ran 5x slower).")
    parser.add_argument("--scale", type=int, action="append", default=[], help="Time `lookalike recommend` at N customers.")
    parser.add_argument("--scale-epochs", type=int, default=3, help="0: with --propagation, time the propagation only.")
    parser.add_argument("--propagation", action="store_true", help="With --scale: time one propagation layer, full CSR vs bipartite.")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    extras = () if args.no_extras else EXTRA_VARIANTS
    options = RecommendOptions()
    title = "Recommendations: LightGCN on customer-persona-item (GPLR) vs popularity, MF, LightGCN"
    common = f" --seeds {args.seeds} --extra-seeds {args.extra_seeds}" + (" --no-extras" if args.no_extras else "") + \
        (f" --threads {args.threads}" if args.threads != 1 else "")
    if not args.skip_generated:
        started = time.perf_counter()
        db = prepare(args.workdir / "generated", ["generate-data", "--customers", str(args.customers), "--seed", "11"], bool(extras), args.reuse)
        rows, info = run_models(db, options, args.seeds, VARIANTS, extras, args.extra_seeds)
        body = preamble(options, args.seeds, args.threads) + "\n\n" + section(
            f"Generated data, {args.customers:,} customers (seed 11, 12 planted segments), items = 300 categories", rows, info)
        write_section("recommend_generated", title + ", generated data", body + f"\n\nTotal {time.perf_counter() - started:.0f}s.",
                      f"python -m benchmarks.bench_recommend --customers {args.customers}{common} --skip-completejourney")
    if not args.skip_completejourney:
        started = time.perf_counter()
        db = prepare(args.workdir / "completejourney", ["load-sample", "completejourney"], bool(extras), args.reuse)
        if not args.skip_categories:
            rows, info = run_models(db, options, args.seeds, VARIANTS, extras, args.extra_seeds)
            body = preamble(options, args.seeds, args.threads) + "\n\n" + section(
                "Complete Journey (2,469 households), items = product categories", rows, info)
            write_section("recommend_completejourney", title + ", Complete Journey", body + f"\n\nTotal {time.perf_counter() - started:.0f}s.",
                          f"python -m benchmarks.bench_recommend{common} --skip-generated --skip-products")
        if not args.skip_products:
            started = time.perf_counter()
            products = replace(options, item_column="product_id", min_item_customers=5)
            rows, info = run_models(db, products, args.seeds, VARIANTS, (), args.extra_seeds)
            body = preamble(options, args.seeds, args.threads) + "\n\n" + section(
                "Complete Journey, items = products (`--item-column product_id --min-item-customers 5`: products bought by at "
                "least 5 households in the feature window)", rows, info)
            write_section("recommend_completejourney_products", title + ", Complete Journey, products as items",
                          body + f"\n\nTotal {time.perf_counter() - started:.0f}s.",
                          f"python -m benchmarks.bench_recommend --seeds {args.seeds}"
                          + (f" --threads {args.threads}" if args.threads != 1 else "") + " --skip-generated --skip-categories")
    if args.scale or args.propagation:
        parts = []
        for n in args.scale:
            db, prepared_how = scale_warehouse(args.workdir, n, args.reuse, args.scale_epochs)
            if args.propagation:
                propagation = propagation_rows(db, options.dim, args.threads)
                parts.append(f"**One propagation layer at {n:,} customers** (A @ E, d = {options.dim}, the real graph of the feature "
                             f"window, best of 2, same process, torch threads {args.threads}): the whole symmetric A as one torch CSR product (the earlier code) "
                             "vs the bipartite product (`BipartiteAdjacency`: embedding_bag gathers for the customers' half, a "
                             "scipy CSC scatter for the items' and personas' half).\n\n"
                             + markdown_table(["graph", "nodes", "nonzeros of A", "full CSR s", "bipartite s", "speed-up",
                                               "max abs difference"], propagation))
            if not args.scale_epochs:
                continue
            rows = scale_rows(db, n, args.scale_epochs, args.threads)
            parts.append(f"**`lookalike recommend` at {n:,} customers** (warehouse: {prepared_how}).\n\n"
                         + markdown_table(["customers", "model", "training pairs", "epochs", "train s", "s / epoch", "command s",
                                           "peak RSS MiB (ru_maxrss)", "peak RSS MiB (sampled tree)", "load average at end"], rows))
        commands = (f"`lookalike recommend --epochs {args.scale_epochs} --validation-share 0` in a subprocess (no early "
                "stopping, so every run does the same epochs; the product default adds validation checks and stops early), "
                "then the same epochs again on the serving window (--refit, the default) and publishing; generated data "
                f"(seed 11), personas from 5%; torch threads {args.threads}. `train s` is the evaluated model's training; "
                "`command s` includes reading the interactions, the popularity baseline, the held-out evaluation, the refit, "
                "scoring top-10 for every customer and publishing the serving file.") if args.scale_epochs else ""
        body = (f"{machine_line()}; shared with other jobs (1-minute load average {os.getloadavg()[0]:.1f} at the end; per row "
                f"below: above 2, work waited for a core). {commands}\n\n" + "\n\n".join(parts))
        write_section("recommend_scale", "Recommendations: training time and peak memory by scale", body,
                      "python -m benchmarks.bench_recommend --skip-generated --skip-completejourney"
                      + "".join(f" --scale {n}" for n in args.scale) + f" --scale-epochs {args.scale_epochs}"
                      + f" --workdir {args.workdir}" + (" --reuse" if args.reuse else "") + (" --propagation" if args.propagation else "")
                      + (f" --threads {args.threads}" if args.threads != 1 else ""))

if __name__ == "__main__":
    main_bench()
