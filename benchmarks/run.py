"""The whole pipeline at one size, each stage the real CLI command in a subprocess, each
against a baseline measured in the same run:

    python -m benchmarks.run --customers 100000 [--stages generate,build,train,score,index,expand] [--workdir DIR]

Per stage: wall time, rows/s in the stage's own unit, peak RSS of the stage's process tree
(psutil, sampled every 0.2 s, children summed) and a ratio to its baseline:

- generate, build: one bare DuckDB aggregate over the same order lines (bench_warehouse);
- train: a fixed number of epochs (early stopping cannot end it sooner); the training
  loop's own pairs/s in the last epoch, read from the epoch lines, is the baseline of the
  whole command (every epoch's rate is in the notes);
- score (ORT fp32 and int8): the machine's sgemm rate at the encoder's layer shapes,
  turned into customers/s with the encoder's FLOPs; torch eager and ORT network-only rates
  (bench_scoring) beside it;
- index: the built index against exact flat search on the seed customers (recall@10);
- expand: `expand()` with our index against exact search, same seeds, in this process.

Writes the section `pipeline_<N>` of benchmarks/RESULTS.md (`--results` to write elsewhere),
benchmarks/pipeline_<N>.csv (`--csv`), and a projection of each structure's memory to
100M customers from the per-row sizes measured at N.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import psutil
import torch

from benchmarks.bench_scoring import rate, synthetic_inputs
from benchmarks.bench_warehouse import FEATURE_AND_LABEL_MODELS, bare_aggregate_seconds
from benchmarks.results import RESULTS_PATH, markdown_table, write_section
from lookalike_cli.audiences.expand import expand
from lookalike_cli.model.export import load_tower
from lookalike_cli.model.features import encode
from lookalike_cli.index.faiss_index import (COMPRESSED_TYPES, ExactTopK, LoadedIndex, build_index, choose_index_type,
                                 default_nlist, default_pq_m, embeddings_summary, flat_in_memory, human_bytes, iter_embeddings,
                                 load_index, memory_estimate, parse_memory_budget, recall_at_k, recall_with_ties)
from lookalike_cli.model.scoring import Encoder
from lookalike_cli.settings import Settings
from lookalike_cli.vectors import normalise, to_matrix

STAGES = ("generate", "build", "train", "score", "index", "expand")
MODEL_NAME = "bench_pipeline"
PROJECTED_CUSTOMERS = 100_000_000
SAMPLE_QUERIES = 500
K = 10
EXPAND_SIZE = "5%"
# The index-backed strategy: the benchmark measures the index against exact search (the default
# `blend` scores every customer exactly and does not use the index).
EXPAND_STRATEGY = "centroid"
STATE_FILE = "harness_state.json"
# Above this the harness does not build the compressed indexes (ivf_sq8, ivf_pq) for comparison: minutes more at 10M.
COMPARE_COMPRESSED_MAX_CUSTOMERS = 2_000_000
CSV_FIELDS = ["stage", "step", "command", "seconds", "cpu_seconds", "rows", "unit", "rows_per_s", "peak_rss_mb",
              "baseline", "baseline_value", "ratio", "notes"]


@dataclass
class StageRun:
    seconds: float
    peak_rss_mb: float
    output: str
    cpu_seconds: float  # user + system CPU of the stage's whole process tree: what the stage costs on an idle machine


@dataclass
class Row:
    stage: str
    step: str
    command: str
    seconds: float
    rows: int
    unit: str
    peak_rss_mb: float
    baseline: str = ""
    baseline_value: float | str = ""
    ratio: float | str = ""
    notes: str = ""
    cpu_seconds: float | str = ""

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds


@dataclass
class Context:
    customers: int
    settings: Settings
    workdir: Path
    epochs: int
    started: float = field(default_factory=time.perf_counter)
    rows: list[Row] = field(default_factory=list)
    details: dict[str, str] = field(default_factory=dict)  # stage -> its detail table (markdown)
    sizes: dict[str, float] = field(default_factory=dict)  # bytes per customer, for the projection
    loads: dict[str, float] = field(default_factory=dict)  # 1-minute load average at the end of each step
    kept: list[str] = field(default_factory=list)  # stages whose rows come from an earlier run on this workdir

    def say(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.started:7.1f}s] {message}", flush=True)

    def connect(self, read_only: bool = True) -> duckdb.DuckDBPyConnection:
        return duckdb.connect(str(self.settings.db_path), read_only=read_only)

    @property
    def seed_count(self) -> int:
        return max(1, min(10_000, self.customers // 100))

    def seed_sql(self) -> str:
        """min(10,000, 1% of customers) customers of planted segment 0: a real lookalike question."""
        return f"select customer_id from raw.planted_segments where segment_id = 0 order by customer_id limit {self.seed_count}"


def add_row(ctx: Context, run: StageRun, row: Row) -> None:
    row.cpu_seconds = run.cpu_seconds
    ctx.rows.append(row)


def tree_rss(process: psutil.Process) -> int:
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def run_stage(ctx: Context, label: str, args: list[str]) -> StageRun:
    """Run `lookalike ARGS` as a subprocess; wall time, peak RSS of its process tree, its output."""
    log = ctx.workdir / f"{label.replace(' ', '_')}.log"
    ctx.say(f"{label}: started `lookalike {' '.join(args)}`")
    start, cpu_before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "lookalike_cli.cli.main", *args], stdout=out,
                                stderr=subprocess.STDOUT, env=ctx.settings.env())
        handle, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            try:
                peak = max(peak, tree_rss(handle))
            except psutil.NoSuchProcess:
                break
            time.sleep(0.2)
        proc.wait()
    seconds = time.perf_counter() - start
    # Children's CPU is added to RUSAGE_CHILDREN when they are waited for (dbt's by the stage process).
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    output = log.read_text()
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed (exit {proc.returncode}); last output:\n{output[-3000:]}")
    ctx.loads[label] = os.getloadavg()[0]
    ctx.say(f"{label}: finished in {seconds:.1f}s ({cpu:.1f} CPU s), peak RSS {peak / 2**20:,.0f} MiB, "
            f"load average {ctx.loads[label]:.1f}")
    return StageRun(seconds, peak / 2**20, output, cpu)


def bytes_per_row(con: duckdb.DuckDBPyConnection, table: str, limit: int = 100_000) -> float:
    """In-memory (Arrow) bytes per row, measured on the first `limit` rows."""
    sample = con.sql(f"select * from {table} limit {limit}").to_arrow_table()
    return sample.nbytes / max(1, sample.num_rows)


# Above this the bare aggregate (a count distinct per customer and category) spilled 36 GB of temp files at 10M
# under a 10 GB cap before it was stopped: it is not run, and the ratios of generate and build are left empty.
BARE_MAX_CUSTOMERS = 2_000_000


def bare_seconds(ctx: Context) -> float | None:
    if ctx.customers > BARE_MAX_CUSTOMERS:
        ctx.say(f"bare aggregate baseline skipped above {BARE_MAX_CUSTOMERS:,} customers (it spills tens of GB)")
        return None
    return bare_aggregate_seconds(ctx.settings.db_path, **bare_options(ctx))


def bare_options(ctx: Context) -> dict:
    # Under dbt's memory cap; best of 3 below 2M customers, one run above (minutes each at 10M).
    return {"repeats": 3 if ctx.customers <= 2_000_000 else 1,
            "memory_limit": os.environ.get("LOOKALIKE_DUCKDB_MEMORY_LIMIT")}


def stage_generate(ctx: Context) -> None:
    run = run_stage(ctx, "generate", ["generate-data", "--customers", str(ctx.customers), "--days", "365", "--seed", "7"])
    bare = bare_seconds(ctx)
    with ctx.connect() as con:
        lines = con.execute("select count(*) from raw.order_lines").fetchall()[0][0]
        ctx.sizes["raw order lines"] = bytes_per_row(con, "raw.order_lines") * lines / ctx.customers
    add_row(ctx, run, Row("generate", "generate-data", f"lookalike generate-data --customers {ctx.customers}", run.seconds,
                        lines, "order lines", run.peak_rss_mb, "bare DuckDB aggregate (s)", bare or "not run",
                        run.seconds / bare if bare else "", "ratio = stage wall / bare aggregate"))


def stage_build(ctx: Context) -> None:
    run = run_stage(ctx, "build", ["build"])
    run_results = json.loads((Path(ctx.settings.env()["DBT_TARGET_PATH"]) / "run_results.json").read_text())
    models = sum(r["execution_time"] for r in run_results["results"]
                 if r["unique_id"].split(".")[-1] in FEATURE_AND_LABEL_MODELS)
    bare = bare_seconds(ctx)
    with ctx.connect() as con:
        lines = con.execute("select count(*) from raw.order_lines").fetchall()[0][0]
        pairs = con.execute("select count(*) from similarity_pairs").fetchall()[0][0]
        ctx.sizes["customer_features"] = bytes_per_row(con, "customer_features")
    add_row(ctx, run, Row("build", "dbt build", "lookalike build", run.seconds, lines, "order lines", run.peak_rss_mb,
                        "bare DuckDB aggregate (s)", bare or "not run", run.seconds / bare if bare else "",
                        f"ratio = wall (dbt start-up and tests included) / bare; feature+label models alone "
                        f"{models:.1f}s" + (f" = {models / bare:.2f}x bare" if bare else "") + f"; {pairs:,} similarity pairs"))


def stage_train(ctx: Context) -> None:
    epochs = str(ctx.epochs)
    run = run_stage(ctx, "train", ["train", "--name", MODEL_NAME, "--layers", "3", "--location", "word",
                                   "--epochs", epochs, "--patience", epochs, "--seed", "0"])
    train_pairs = int(re.search(r"training on ([\d,]+) pairs", run.output).group(1).replace(",", ""))
    loop_rates = [float(r.replace(",", "")) for r in re.findall(r"epoch \d+(?:/\d+)?: .*\(([\d,]+) pairs/s\)", run.output)]
    loop = loop_rates[-1]
    steps = ctx.epochs * -(-train_pairs // 512)
    row = Row("train", "train", f"lookalike train --layers 3 --location word --epochs {epochs} --patience {epochs}",
              run.seconds, train_pairs * ctx.epochs, "pairs", run.peak_rss_mb, "training loop, last epoch (pairs/s)", loop,
              "", f"{ctx.epochs} epochs = {steps:,} steps of 512 pairs; loop pairs/s per epoch: "
                  f"{', '.join(f'{r:,.0f}' for r in loop_rates)}; ratio = whole command pairs/s / last epoch's loop pairs/s")
    row.ratio = row.rows_per_s / loop
    add_row(ctx, run, row)


def encoder_flops(config: dict) -> tuple[list[tuple[int, int]], int]:
    """The encoder's dense layers as (in, out) and its multiply-add FLOPs per customer."""
    width = config["n_dense"] + sum(config["cardinalities"]) + config["n_categories"]
    width += {"word": config["word_dim"], "sentence": config["sentence_dim"]}.get(config["location"], 0)
    shapes = []
    for _ in range(config["layers"] - 1):
        shapes.append((width, config["hidden"]))
        width = config["hidden"]
    shapes.append((width, config["dim"]))
    return shapes, sum(2 * i * o for i, o in shapes)


def sgemm_gflops(shapes: list[tuple[int, int]], batch: int, repeats: int = 5) -> float:
    """torch float32 matmul rate (GFLOP/s) on exactly the encoder's layer shapes at this batch size."""
    operands = [(torch.randn(batch, i), torch.randn(i, o)) for i, o in shapes]
    flops = sum(2 * batch * i * o for i, o in shapes)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for a, b in operands:
            torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return flops / best / 1e9


ROUNDS = 3


def network_inputs(ctx: Context, encoder: Encoder, rows: int) -> tuple[dict[str, np.ndarray], str]:
    """The encoder's inputs for the first `rows` customers of the warehouse's customer_features."""
    with ctx.connect() as con:
        table = con.sql(f"select * from customer_features order by customer_id limit {rows}").to_arrow_table()
    if table.num_rows == 0 or encoder.spec.location == "sentence":
        return synthetic_inputs(encoder.spec, rows, seed=0), "synthetic customers shaped like the manifest"
    return encode(table, encoder.spec), "customers' real features from customer_features"


def interleaved_rates(engines: dict, inputs: dict[str, np.ndarray], batch: int,
                      shapes: list[tuple[int, int]]) -> tuple[float, dict[str, float]]:
    """The sgemm limit (GFLOP/s) and each engine's customers/s, best over interleaved rounds."""
    limit, network = 0.0, {name: 0.0 for name in engines}
    for _ in range(ROUNDS):
        limit = max(limit, sgemm_gflops(shapes, batch))
        for name, run in engines.items():
            network[name] = max(network[name], rate(run, inputs, batch, repeats=1)[0])
    return limit, network


def stage_score(ctx: Context) -> None:
    manifest_path = ctx.settings.onnx_dir / f"{MODEL_NAME}.json"
    runs = {}
    for quantize in ("none", "int8"):
        args = ["score", "--model", MODEL_NAME] + (["--quantize", quantize] if quantize != "none" else [])
        runs[quantize] = run_stage(ctx, f"score {quantize}", args)
    with ctx.connect() as con:
        customers = con.execute("select count(*) from customer_embeddings").fetchall()[0][0]
    manifest = json.loads(manifest_path.read_text())
    shapes, flops = encoder_flops(manifest["config"])
    batch = 8192
    fp32, int8, tower = Encoder(manifest_path), Encoder(manifest_path, quantize="int8"), load_tower(manifest_path)
    inputs, source = network_inputs(ctx, fp32, min(ctx.customers, 65_536))

    @torch.inference_mode()
    def eager(b):
        return tower(**{k: torch.from_numpy(v) for k, v in b.items()}).numpy()

    engines = {"torch eager fp32": eager, "ORT fp32": fp32.run,
               "ORT int8 (dynamic)": int8.run}
    limit_gflops, network = interleaved_rates(engines, inputs, batch, shapes)
    limit_rate = limit_gflops * 1e9 / flops
    score_rows = {}
    for quantize, step in (("none", "score ORT fp32"), ("int8", "score ORT int8")):
        run = runs[quantize]
        row = score_rows[quantize] = Row("score", step, "lookalike score" + (" --quantize int8" if quantize == "int8" else ""), run.seconds,
                  customers, "customers", run.peak_rss_mb, "sgemm limit for the same FLOPs (customers/s)", limit_rate,
                  "", "ratio = achieved / limit; whole command (process start-up, feature reads, table write) included")
        row.ratio = row.rows_per_s / limit_rate
        add_row(ctx, run, row)
    table = [[name, speed, speed * flops / 1e9, speed / limit_rate, speed / network["torch eager fp32"]]
             for name, speed in network.items()]
    table += [[f"`{r.command}` end to end", r.rows_per_s, r.rows_per_s * flops / 1e9, r.ratio,
               r.rows_per_s / network["torch eager fp32"]] for r in ctx.rows if r.stage == "score"]
    ctx.details["score"] = (
        f"**Scoring vs the hardware limit.** Encoder {' -> '.join(str(i) for i, _ in shapes)} -> {shapes[-1][1]} "
        f"({manifest['config']['layers']} layers, location {manifest['config']['location']}): {flops:,} FLOPs per customer "
        f"(dense layers). torch sgemm at these shapes, batch {batch}: {limit_gflops:.1f} GFLOP/s = {limit_rate:,.0f} "
        f"customers/s (the limit; int8 is held to the same fp32 limit). Network-only rates on "
        f"{len(inputs['dense']):,} {source}, batch {batch}; the limit and every engine measured in "
        f"{ROUNDS} interleaved rounds, best of each (this machine is shared: interleaving gives each the same "
        "chances of a quiet moment).\n\n"
        + markdown_table(["engine", "customers/s", "GFLOP/s", "achieved / sgemm limit", "vs torch eager"], table)
        + "\n\n**Where users wait vs the network.** Each `lookalike score` run's customers/s end to end (process "
        "start, reading customer_features, encoding, the table write) over ORT's network-only rate of the same "
        "quantisation, and int8's network speed-up over fp32; all measured in this run.\n\n"
        + markdown_table(["ratio", "value", "measured as"], [
            ["end-to-end scoring / network", score_rows["none"].rows_per_s / network["ORT fp32"],
             f"`lookalike score` {score_rows['none'].rows_per_s:,.0f}/s / ORT fp32 network {network['ORT fp32']:,.0f}/s"],
            ["end-to-end scoring int8 / int8 network", score_rows["int8"].rows_per_s / network["ORT int8 (dynamic)"],
             f"`lookalike score --quantize int8` {score_rows['int8'].rows_per_s:,.0f}/s / ORT int8 network "
             f"{network['ORT int8 (dynamic)']:,.0f}/s"],
            ["ORT fp32 / sgemm limit", network["ORT fp32"] / limit_rate, f"network-only / {limit_rate:,.0f}/s"],
            ["ORT int8 / ORT fp32", network["ORT int8 (dynamic)"] / network["ORT fp32"], "network-only, same inputs"],
        ]))


def seed_vectors(ctx: Context) -> np.ndarray:
    """L2-normalised embeddings of the seed customers, read with SQL (not the whole table)."""
    with ctx.connect() as con:
        column = con.sql(f"select embedding from customer_embeddings where customer_id in ({ctx.seed_sql()}) "
                         "order by customer_id").to_arrow_table().column("embedding")
    return normalise(to_matrix(column))


def streamed_exact(ctx: Context, queries: np.ndarray) -> tuple[float, ExactTopK, int, int]:
    """Exact top-K of `queries` over every embedding, streamed in batches (bounded memory at any size).

    Returns (seconds per query spent in brute-force search alone, true ids and similarities, rows, dim).
    """
    truth, searching, rows, dim = ExactTopK(queries, K), 0.0, 0, queries.shape[1]
    for ids, vectors in iter_embeddings(ctx.settings.db_path):
        start = time.perf_counter()
        truth.add(ids, vectors)
        searching += time.perf_counter() - start
        rows += len(ids)
    return searching / len(queries), truth, rows, dim


def streamed_exact_index(ctx: Context) -> LoadedIndex:
    """Exact flat inner-product index over all embeddings, filled batch by batch (one copy of the vectors)."""
    _, dim, model_version = embeddings_summary(ctx.settings.db_path)
    return flat_in_memory(iter_embeddings(ctx.settings.db_path), dim, model_version, "benchmark exact baseline")


def timed_search(index, queries: np.ndarray, k: int) -> tuple[float, tuple[np.ndarray, np.ndarray]]:
    start = time.perf_counter()
    sims, ids = index.search(queries, k)
    return (time.perf_counter() - start) / len(queries), (ids, sims)


def recalls(truth: ExactTopK, found: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
    """recall@K by id, and with ties counted (duplicates of the true K-th neighbour are as good)."""
    ids, sims = found
    return recall_at_k(truth.ids, ids), recall_with_ties(truth.sims, ids, sims)


def stage_index(ctx: Context) -> None:
    run = run_stage(ctx, "build-index", ["build-index", "--seed", "0"])
    ours = load_index(ctx.settings.index_dir)
    queries = seed_vectors(ctx)
    queries = queries[np.random.default_rng(0).choice(len(queries), size=min(SAMPLE_QUERIES, len(queries)), replace=False)]
    exact_per_query, truth, rows, dim = streamed_exact(ctx, queries)
    ours_per_query, found = timed_search(ours, queries, K)
    manifest = ours.manifest
    ctx.sizes["embeddings float32 + id"] = 8 + dim * 4
    ctx.sizes["flat index (exact; from the format: vectors + id map)"] = dim * 4 + 8
    built = sum(p.stat().st_size for p in ctx.settings.index_dir.iterdir() if not p.name.startswith("."))
    ctx.sizes[f"{manifest.index_type} index as built (files on disk)"] = built / rows
    ctx.sizes[f"{manifest.index_type} index in RAM (manifest estimate)"] = manifest.memory["index_ram_bytes"] / rows
    lines = [[f"ours: {manifest.index_type} {json.dumps(manifest.params)}", run.seconds, ours_per_query * 1000,
              *recalls(truth, found), built / rows],
             ["exact brute force (faiss.knn, streamed)", "", exact_per_query * 1000, 1.0, 1.0, dim * 4 + 8]]
    for compressed in COMPRESSED_TYPES:
        if compressed == manifest.index_type or ctx.customers > COMPARE_COMPRESSED_MAX_CUSTOMERS:
            continue
        # The compressed indexes auto picks above the memory budget, built here explicitly.
        start = time.perf_counter()
        build_index(ctx.settings.db_path, ctx.workdir / f"indexes_{compressed}", index_type=compressed,
                    nlist=manifest.params.get("nlist"), seed=0, progress=lambda message: None)
        seconds = time.perf_counter() - start
        other = load_index(ctx.workdir / f"indexes_{compressed}")
        per_query, candidates = timed_search(other, queries, K)
        # Its RAM at this size (fixed codebooks and centroids spread over few rows) is in the table, not the
        # projection: the projection below takes memory_estimate at 100M itself.
        ram = other.manifest.memory["index_ram_bytes"] / rows
        lines.append([f"{compressed} {json.dumps(other.manifest.params)}, exact re-ranking (build_index in process)", seconds,
                      per_query * 1000, *recalls(truth, candidates), ram])
        del other
    # At 100M, from the same memory_estimate build-index's auto decides with (nlist ~2*sqrt(n) is sublinear).
    projected = {"nlist": default_nlist(PROJECTED_CUSTOMERS), "pq_m": default_pq_m(dim)}
    for compressed in COMPRESSED_TYPES:
        estimate = memory_estimate(compressed, PROJECTED_CUSTOMERS, dim, projected, 0)
        settings = f"nlist {projected['nlist']:,}" + (f", pq_m {projected['pq_m']}" if compressed == "ivf_pq" else "")
        ctx.sizes[f"{compressed} index in RAM at {PROJECTED_CUSTOMERS // 1_000_000}M (memory_estimate, {settings})"] = (
            estimate["index_ram_bytes"] / PROJECTED_CUSTOMERS)
    ctx.sizes["ivf_sq8 / ivf_pq index: exact vectors + sorted ids + rows (disk, memory-mapped)"] = (
        estimate["exact_vectors_disk_bytes"] / PROJECTED_CUSTOMERS)
    budget = parse_memory_budget(None)
    chosen, why = choose_index_type("auto", PROJECTED_CUSTOMERS, dim, budget)
    row = Row("index", "build-index", "lookalike build-index", run.seconds, rows, "vectors", run.peak_rss_mb,
              "exact flat search (ms/query)", exact_per_query * 1000, exact_per_query / ours_per_query,
              f"ratio = search speed-up over exact; recall@{K} {recalls(truth, found)[0]:.3f} by id, "
              f"{recalls(truth, found)[1]:.3f} with ties counted, on {len(queries):,} seed queries; self-check "
              f"{manifest.self_check.get('criterion', 'recall')} {manifest.self_check.get('recall')}; auto chose {manifest.index_type}: "
              f"{manifest.reason}")
    add_row(ctx, run, row)
    ctx.details["index"] = (
        f"**Index vs exact search.** {len(queries):,} seed customers as queries, top-{K}; `build s` for ours is the whole "
        f"`lookalike build-index` command (reading embeddings, training, adding, self-check, writing); exact search is "
        f"faiss.knn over every embedding, streamed in 100k batches (search time only). The last column is bytes per "
        f"vector: files on disk for ours, RAM for the compressed indexes (their exact vectors are memory-mapped from "
        f"disk).\n\n"
        + markdown_table(["index", "build s", "ms/query", f"recall@{K} by id", f"recall@{K} ties counted", "bytes/vector"], lines)
        + f"\n\nAt {PROJECTED_CUSTOMERS:,} customers x {dim} dims, `build-index --index-type auto` with this machine's default "
        f"budget ({human_bytes(budget)}) would choose **{chosen}**: {why}.")


def stage_expand(ctx: Context) -> None:
    seed_sql = ctx.seed_sql()
    run = run_stage(ctx, "expand", ["expand", "--name", "bench_pipeline", "--seed-sql", seed_sql, "--size", EXPAND_SIZE,
                                    "--strategy", EXPAND_STRATEGY])
    ours = load_index(ctx.settings.index_dir)
    exact = streamed_exact_index(ctx)
    results = {}
    for label, loaded in (("ours", ours), ("exact", exact)):
        start = time.perf_counter()
        result = expand(ctx.settings.db_path, ctx.settings.index_dir, seed_sql=seed_sql, size=EXPAND_SIZE, strategy=EXPAND_STRATEGY,
                        progress=lambda message: None, loaded_index=loaded)
        results[label] = (time.perf_counter() - start, set(result.members.column("customer_id").to_pylist()))
    seeds = ctx.seed_count
    overlap = len(results["ours"][1] & results["exact"][1]) / len(results["exact"][1])
    add_row(ctx, run, Row("expand", "expand", f'lookalike expand --seed-sql "<{seeds:,} of planted segment 0>" --size {EXPAND_SIZE} '
                        f'--strategy {EXPAND_STRATEGY}',
                        run.seconds, seeds, "seeds", run.peak_rss_mb, "expand() with exact search, in process (s)",
                        results["exact"][0], results["exact"][0] / results["ours"][0],
                        f"ratio = exact / ours, both in process with the index in memory (ours {results['ours'][0]:.2f}s); "
                        f"audience overlap with exact {overlap:.3f}; wall includes start-up, index load and publishing"))


def projection(ctx: Context) -> str:
    rows = [[name, per_customer, per_customer * PROJECTED_CUSTOMERS / 2**30] for name, per_customer in ctx.sizes.items()]
    return (f"**Projection to {PROJECTED_CUSTOMERS:,} customers**, linear in customers from the per-customer sizes "
            f"measured at {ctx.customers:,} (in-memory Arrow sizes for tables, serialized FAISS sizes for indexes; "
            "order lines are per customer, at this generator's lines per customer).\n\n"
            + markdown_table(["structure", "bytes per customer", f"GiB at {PROJECTED_CUSTOMERS // 1_000_000}M"], rows))


def write_outputs(ctx: Context, results_path: Path, csv_path: Path, command: str) -> None:
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for r in ctx.rows:
            writer.writerow({"stage": r.stage, "step": r.step, "command": r.command, "seconds": round(r.seconds, 3),
                             "cpu_seconds": r.cpu_seconds if isinstance(r.cpu_seconds, str) else round(r.cpu_seconds, 1),
                             "rows": r.rows, "unit": r.unit, "rows_per_s": round(r.rows_per_s, 1),
                             "peak_rss_mb": round(r.peak_rss_mb, 1), "baseline": r.baseline,
                             "baseline_value": r.baseline_value if isinstance(r.baseline_value, str) else round(r.baseline_value, 4),
                             "ratio": r.ratio if isinstance(r.ratio, str) else round(r.ratio, 4), "notes": r.notes})
    table = markdown_table(
        ["step", "wall s", "CPU s", "rows", "rows/s", "peak RSS MiB", "baseline", "baseline value", "ratio", "notes"],
        [[r.step, r.seconds, r.cpu_seconds, f"{r.rows:,} {r.unit}", f"{r.rows_per_s:,.0f}", r.peak_rss_mb, r.baseline, r.baseline_value,
          r.ratio if isinstance(r.ratio, str) else f"{r.ratio:.3f}", r.notes] for r in ctx.rows])
    body = "\n\n".join([
        f"{ctx.customers:,} generated customers; every step is the real `lookalike` command in a subprocess; peak RSS is "
        "the step's process tree (dbt's children included), sampled every 0.2 s. Baselines run in the harness process "
        f"right after their step. CPU s is user + system time of the step's process tree (load-independent: "
        f"on an idle 2-core machine wall time is between CPU s / 2 and CPU s). Each step's output is logged to `<workdir>/<step>.log`; the table is also in `{csv_path.name}`."
        + (f" Rows of {', '.join(ctx.kept)} were measured by an earlier run of the same command on the same --workdir "
           f"(this run redid only the other stages)." if ctx.kept else ""),
        table,
        f"The machine is shared with other engineers' test runs: 1-minute load average at the end of each step "
        f"(2 cores): {', '.join(f'{label} {load:.1f}' for label, load in ctx.loads.items())}. Wall times above 2 "
        f"runnable processes per core include waiting for a core.",
        *ctx.details.values(), projection(ctx) if ctx.sizes else ""])
    write_section(f"pipeline_{ctx.customers}", f"Pipeline at {ctx.customers:,} customers", body, command, path=results_path)
    print(f"CSV: {csv_path}")


def save_state(ctx: Context) -> None:
    """Rows, details, sizes and loads so far, so a later run on the same workdir can redo some stages only."""
    state = {"customers": ctx.customers, "rows": [asdict(r) for r in ctx.rows], "details": ctx.details,
             "sizes": ctx.sizes, "loads": ctx.loads}
    (ctx.workdir / STATE_FILE).write_text(json.dumps(state, indent=1))


def restore_state(ctx: Context, stages: list[str]) -> None:
    """Keep the results of the stages not being re-run from an earlier run on this workdir."""
    path = ctx.workdir / STATE_FILE
    if not path.exists():
        return
    state = json.loads(path.read_text())
    if state["customers"] != ctx.customers:
        return
    ctx.rows = [Row(**r) for r in state["rows"] if r["stage"] not in stages]
    ctx.details = {k: v for k, v in state["details"].items() if k not in stages}
    # Index sizes are re-measured by the index stage; table sizes by generate and build.
    ctx.sizes = {k: v for k, v in state["sizes"].items() if not ("index" in stages and "index" in k)}
    ctx.loads = state["loads"]
    ctx.say(f"kept the results of {', '.join(sorted({r.stage for r in ctx.rows})) or 'no stage'} from {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temp dir, removed afterwards")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs (fixed: no early stop)")
    parser.add_argument("--results", type=Path, default=RESULTS_PATH, help="markdown file to write the section to")
    parser.add_argument("--csv", type=Path, default=None, help="default: benchmarks/pipeline_<N>.csv")
    parser.add_argument("--duckdb-memory-limit", default=None,
                        help="DuckDB memory_limit for dbt (LOOKALIKE_DUCKDB_MEMORY_LIMIT), e.g. 8GB on a shared machine")
    args = parser.parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = set(stages) - set(STAGES)
    if unknown:
        parser.error(f"unknown stage(s) {', '.join(sorted(unknown))}; choose from {','.join(STAGES)}")
    tmp = tempfile.TemporaryDirectory() if args.workdir is None else None
    workdir = (Path(tmp.name) if tmp else args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    settings = Settings.resolve(db=workdir / "pipeline.duckdb", serving_db=workdir / "pipeline_serving.duckdb",
                                onnx_dir=workdir / "onnx", index_dir=workdir / "indexes")
    if args.duckdb_memory_limit:
        os.environ["LOOKALIKE_DUCKDB_MEMORY_LIMIT"] = args.duckdb_memory_limit  # Settings.env() passes it to dbt
    ctx = Context(customers=args.customers, settings=settings, workdir=workdir, epochs=args.epochs)
    ctx.say(f"pipeline at {args.customers:,} customers in {workdir}: {', '.join(stages)}")
    restore_state(ctx, stages)
    ctx.kept = sorted({r.stage for r in ctx.rows}, key=STAGES.index)
    runners = {"generate": stage_generate, "build": stage_build, "train": stage_train, "score": stage_score,
               "index": stage_index, "expand": stage_expand}
    csv_path = args.csv or Path(__file__).resolve().parent / f"pipeline_{args.customers}.csv"
    command = " ".join(["python -m benchmarks.run", *(argv if argv is not None else sys.argv[1:])])

    for stage in STAGES:
        if stage in stages:
            runners[stage](ctx)
            ctx.rows.sort(key=lambda r: STAGES.index(r.stage))
            save_state(ctx)
            # After every stage: a run that cannot finish (10M on a shared machine) still reports what it did.
            write_outputs(ctx, args.results, csv_path, command)
    ctx.say("done")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
