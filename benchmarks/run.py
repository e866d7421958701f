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
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import faiss
import numpy as np
import psutil
import torch

from benchmarks.bench_expand import exact_index
from benchmarks.bench_scoring import rate, synthetic_inputs
from benchmarks.bench_warehouse import FEATURE_AND_LABEL_MODELS, bare_aggregate_seconds
from benchmarks.results import RESULTS_PATH, markdown_table, write_section
from lookalike_cli.expand import expand
from lookalike_cli.export import load_tower
from lookalike_cli.index import load_index, read_embeddings, recall_at_k
from lookalike_cli.scoring import Encoder
from lookalike_cli.settings import Settings

STAGES = ("generate", "build", "train", "score", "index", "expand")
MODEL_NAME = "bench_pipeline"
PROJECTED_CUSTOMERS = 100_000_000
SAMPLE_QUERIES = 500
K = 10
EXPAND_SIZE = "5%"
PQ_BYTES = 32
CSV_FIELDS = ["stage", "step", "command", "seconds", "rows", "unit", "rows_per_s", "peak_rss_mb",
              "baseline", "baseline_value", "ratio", "notes"]


@dataclass
class StageRun:
    seconds: float
    peak_rss_mb: float
    output: str


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
    details: list[str] = field(default_factory=list)
    sizes: dict[str, float] = field(default_factory=dict)  # bytes per customer, for the projection

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
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "lookalike_cli.cli", *args], stdout=out,
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
    output = log.read_text()
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed (exit {proc.returncode}); last output:\n{output[-3000:]}")
    ctx.say(f"{label}: finished in {seconds:.1f}s, peak RSS {peak / 2**20:,.0f} MiB")
    return StageRun(seconds, peak / 2**20, output)


def bytes_per_row(con: duckdb.DuckDBPyConnection, table: str, limit: int = 100_000) -> float:
    """In-memory (Arrow) bytes per row, measured on the first `limit` rows."""
    sample = con.sql(f"select * from {table} limit {limit}").to_arrow_table()
    return sample.nbytes / max(1, sample.num_rows)


def stage_generate(ctx: Context) -> None:
    run = run_stage(ctx, "generate", ["generate-data", "--customers", str(ctx.customers), "--days", "365", "--seed", "7"])
    bare = bare_aggregate_seconds(ctx.settings.db_path)
    with ctx.connect() as con:
        lines = con.execute("select count(*) from raw.order_lines").fetchall()[0][0]
        ctx.sizes["raw order lines"] = bytes_per_row(con, "raw.order_lines") * lines / ctx.customers
    ctx.rows.append(Row("generate", "generate-data", f"lookalike generate-data --customers {ctx.customers}", run.seconds,
                        lines, "order lines", run.peak_rss_mb, "bare DuckDB aggregate (s)", bare, run.seconds / bare,
                        "ratio = stage wall / bare aggregate"))


def stage_build(ctx: Context) -> None:
    run = run_stage(ctx, "build", ["build"])
    run_results = json.loads((Path(ctx.settings.env()["DBT_TARGET_PATH"]) / "run_results.json").read_text())
    models = sum(r["execution_time"] for r in run_results["results"]
                 if r["unique_id"].split(".")[-1] in FEATURE_AND_LABEL_MODELS)
    bare = bare_aggregate_seconds(ctx.settings.db_path)
    with ctx.connect() as con:
        lines = con.execute("select count(*) from raw.order_lines").fetchall()[0][0]
        pairs = con.execute("select count(*) from similarity_pairs").fetchall()[0][0]
        ctx.sizes["customer_features"] = bytes_per_row(con, "customer_features")
    ctx.rows.append(Row("build", "dbt build", "lookalike build", run.seconds, lines, "order lines", run.peak_rss_mb,
                        "bare DuckDB aggregate (s)", bare, run.seconds / bare,
                        f"ratio = wall (dbt start-up and tests included) / bare; feature+label models alone "
                        f"{models:.1f}s = {models / bare:.2f}x bare; {pairs:,} similarity pairs"))


def stage_train(ctx: Context) -> None:
    epochs = str(ctx.epochs)
    run = run_stage(ctx, "train", ["train", "--name", MODEL_NAME, "--layers", "3", "--location", "word",
                                   "--epochs", epochs, "--patience", epochs, "--seed", "0"])
    train_pairs = int(re.search(r"training on ([\d,]+) pairs", run.output).group(1).replace(",", ""))
    loop_rates = [float(r.replace(",", "")) for r in re.findall(r"epoch \d+: .*\(([\d,]+) pairs/s\)", run.output)]
    loop = loop_rates[-1]
    steps = ctx.epochs * -(-train_pairs // 512)
    row = Row("train", "train", f"lookalike train --layers 3 --location word --epochs {epochs} --patience {epochs}",
              run.seconds, train_pairs * ctx.epochs, "pairs", run.peak_rss_mb, "training loop, last epoch (pairs/s)", loop,
              "", f"{ctx.epochs} epochs = {steps:,} steps of 512 pairs; loop pairs/s per epoch: "
                  f"{', '.join(f'{r:,.0f}' for r in loop_rates)}; ratio = whole command pairs/s / last epoch's loop pairs/s")
    row.ratio = row.rows_per_s / loop
    ctx.rows.append(row)


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
    limit_gflops = sgemm_gflops(shapes, batch)
    limit_rate = limit_gflops * 1e9 / flops
    fp32, int8, tower = Encoder(manifest_path), Encoder(manifest_path, quantize="int8"), load_tower(manifest_path)
    inputs = synthetic_inputs(fp32.spec, min(ctx.customers, 65_536), seed=0)

    @torch.inference_mode()
    def eager(b):
        return tower(**{k: torch.from_numpy(v) for k, v in b.items()}).numpy()

    engines = {"torch eager fp32": eager, "ORT fp32": lambda b: fp32.session.run(None, b)[0],
               "ORT int8 (dynamic)": lambda b: int8.session.run(None, b)[0]}
    network = {name: rate(run, inputs, batch, repeats=2)[0] for name, run in engines.items()}
    for quantize, step in (("none", "score ORT fp32"), ("int8", "score ORT int8")):
        run = runs[quantize]
        row = Row("score", step, "lookalike score" + (" --quantize int8" if quantize == "int8" else ""), run.seconds,
                  customers, "customers", run.peak_rss_mb, "sgemm limit for the same FLOPs (customers/s)", limit_rate,
                  "", "ratio = achieved / limit; whole command (dbt start-up, feature reads, table write) included")
        row.ratio = row.rows_per_s / limit_rate
        ctx.rows.append(row)
    table = [[name, speed, speed * flops / 1e9, speed / limit_rate, speed / network["torch eager fp32"]]
             for name, speed in network.items()]
    table += [[f"`{r.command}` end to end", r.rows_per_s, r.rows_per_s * flops / 1e9, r.ratio,
               r.rows_per_s / network["torch eager fp32"]] for r in ctx.rows if r.stage == "score"]
    ctx.details.append(
        f"**Scoring vs the hardware limit.** Encoder {' -> '.join(str(i) for i, _ in shapes)} -> {shapes[-1][1]} "
        f"({manifest['config']['layers']} layers, location {manifest['config']['location']}): {flops:,} FLOPs per customer "
        f"(dense layers). torch sgemm at these shapes, batch {batch}: {limit_gflops:.1f} GFLOP/s = {limit_rate:,.0f} "
        f"customers/s (the limit; int8 is held to the same fp32 limit). Network-only rates on "
        f"{len(inputs['dense']):,} synthetic customers shaped like the manifest, batch {batch}, best of 2.\n\n"
        + markdown_table(["engine", "customers/s", "GFLOP/s", "achieved / sgemm limit", "vs torch eager"], table))


def seed_vectors(ctx: Context, ids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    with ctx.connect() as con:
        seeds = np.array([r[0] for r in con.execute(ctx.seed_sql()).fetchall()], dtype=np.int64)
    return vectors[np.isin(ids, seeds)]


def timed_search(index, queries: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    found = index.search(queries, k)[1]
    return (time.perf_counter() - start) / len(queries), found


def compressed(kind: str, vectors: np.ndarray, ids: np.ndarray, nlist: int, nprobe: int) -> faiss.Index:
    index = faiss.index_factory(vectors.shape[1], f"IVF{nlist},{kind}", faiss.METRIC_INNER_PRODUCT)
    sample = np.random.default_rng(0).choice(len(vectors), size=min(len(vectors), max(40 * nlist, 10_000)), replace=False)
    index.train(vectors[sample])
    index.nprobe = nprobe
    wrapped = faiss.IndexIDMap2(index)
    wrapped.add_with_ids(vectors, ids)
    return wrapped


def stage_index(ctx: Context) -> None:
    run = run_stage(ctx, "build-index", ["build-index", "--seed", "0"])
    ours = load_index(ctx.settings.index_dir)
    ids, vectors, model_version = read_embeddings(ctx.settings.db_path)
    queries = seed_vectors(ctx, ids, vectors)
    queries = queries[np.random.default_rng(0).choice(len(queries), size=min(SAMPLE_QUERIES, len(queries)), replace=False)]
    start = time.perf_counter()
    exact = exact_index(vectors, ids, model_version)
    exact_build = time.perf_counter() - start
    exact_per_query, truth = timed_search(exact, queries, K)
    ours_per_query, found = timed_search(ours, queries, K)
    manifest = ours.manifest
    ctx.sizes["embeddings float32 + id"] = (ids.nbytes + vectors.nbytes) / len(ids)
    ctx.sizes["flat index (exact)"] = faiss.serialize_index(exact.index).nbytes / len(ids)
    ctx.sizes[f"{manifest.index_type} index (built: {json.dumps(manifest.params)})"] = ours.path.stat().st_size / len(ids)
    lines = [[f"ours: {manifest.index_type} {json.dumps(manifest.params)}", run.seconds, ours_per_query * 1000,
              recall_at_k(truth, found), ours.path.stat().st_size / len(ids)],
             ["exact IndexFlatIP", exact_build, exact_per_query * 1000, 1.0, ctx.sizes["flat index (exact)"]]]
    nlist = manifest.params.get("nlist") or max(1, min(int(2 * len(ids) ** 0.5), len(ids) // 40))
    nprobe = min(nlist, manifest.params.get("nprobe", 16))
    start = time.perf_counter()
    sq8 = compressed("SQ8", vectors, ids, nlist, nprobe)
    built = time.perf_counter() - start
    per_query, candidates = timed_search(sq8, queries, K)
    ctx.sizes[f"IVF{nlist},SQ8 index"] = faiss.serialize_index(sq8).nbytes / len(ids)
    lines.append([f"IVF{nlist},SQ8 nprobe {nprobe} (not built by the CLI)", built, per_query * 1000,
                  recall_at_k(truth, candidates), ctx.sizes[f"IVF{nlist},SQ8 index"]])
    # PQ codebook training (32 x 256 centroids) takes minutes on a busy machine: its size follows from the format.
    ctx.sizes[f"IVF{nlist},PQ32 index (from the format: 32 B code + 8 B list id + 8 B id map; not built)"] = PQ_BYTES + 8 + 8
    row = Row("index", "build-index", "lookalike build-index", run.seconds, len(ids), "vectors", run.peak_rss_mb,
              "exact flat search (ms/query)", exact_per_query * 1000, exact_per_query / ours_per_query,
              f"ratio = search speed-up over exact; recall@{K} {recall_at_k(truth, found):.3f} on {len(queries):,} seed "
              f"queries; self-check recall {manifest.self_check.get('recall')}")
    ctx.rows.append(row)
    ctx.details.append(
        f"**Index vs exact search.** {len(queries):,} seed customers as queries, top-{K}; `build s` for ours is the whole "
        f"`lookalike build-index` command (reading embeddings, training, adding, self-check, writing).\n\n"
        + markdown_table(["index", "build s", "ms/query", f"recall@{K} vs exact", "bytes/vector"], lines))


def stage_expand(ctx: Context) -> None:
    seed_sql = ctx.seed_sql()
    run = run_stage(ctx, "expand", ["expand", "--name", "bench_pipeline", "--seed-sql", seed_sql, "--size", EXPAND_SIZE])
    ours = load_index(ctx.settings.index_dir)
    ids, vectors, model_version = read_embeddings(ctx.settings.db_path)
    exact = exact_index(vectors, ids, model_version)
    del vectors
    results = {}
    for label, loaded in (("ours", ours), ("exact", exact)):
        start = time.perf_counter()
        result = expand(ctx.settings.db_path, ctx.settings.index_dir, seed_sql=seed_sql, size=EXPAND_SIZE,
                        progress=lambda message: None, loaded_index=loaded)
        results[label] = (time.perf_counter() - start, set(result.members.column("customer_id").to_pylist()))
    seeds = ctx.seed_count
    overlap = len(results["ours"][1] & results["exact"][1]) / len(results["exact"][1])
    ctx.rows.append(Row("expand", "expand", f'lookalike expand --seed-sql "<{seeds:,} of planted segment 0>" --size {EXPAND_SIZE}',
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
                             "rows": r.rows, "unit": r.unit, "rows_per_s": round(r.rows_per_s, 1),
                             "peak_rss_mb": round(r.peak_rss_mb, 1), "baseline": r.baseline,
                             "baseline_value": r.baseline_value if isinstance(r.baseline_value, str) else round(r.baseline_value, 4),
                             "ratio": r.ratio if isinstance(r.ratio, str) else round(r.ratio, 4), "notes": r.notes})
    table = markdown_table(
        ["step", "wall s", "rows", "rows/s", "peak RSS MiB", "baseline", "baseline value", "ratio", "notes"],
        [[r.step, r.seconds, f"{r.rows:,} {r.unit}", f"{r.rows_per_s:,.0f}", r.peak_rss_mb, r.baseline, r.baseline_value,
          r.ratio if isinstance(r.ratio, str) else f"{r.ratio:.3f}", r.notes] for r in ctx.rows])
    body = "\n\n".join([
        f"{ctx.customers:,} generated customers; every step is the real `lookalike` command in a subprocess; peak RSS is "
        "the step's process tree (dbt's children included), sampled every 0.2 s. Baselines run in the harness process "
        f"right after their step. Each step's output is logged to `<workdir>/<step>.log`; the table is also in `{csv_path.name}`.",
        table, *ctx.details, projection(ctx) if ctx.sizes else ""])
    write_section(f"pipeline_{ctx.customers}", f"Pipeline at {ctx.customers:,} customers", body, command, path=results_path)
    print(f"CSV: {csv_path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temp dir, removed afterwards")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs (fixed: no early stop)")
    parser.add_argument("--results", type=Path, default=RESULTS_PATH, help="markdown file to write the section to")
    parser.add_argument("--csv", type=Path, default=None, help="default: benchmarks/pipeline_<N>.csv")
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
    ctx = Context(customers=args.customers, settings=settings, workdir=workdir, epochs=args.epochs)
    ctx.say(f"pipeline at {args.customers:,} customers in {workdir}: {', '.join(stages)}")
    runners = {"generate": stage_generate, "build": stage_build, "train": stage_train, "score": stage_score,
               "index": stage_index, "expand": stage_expand}
    for stage in STAGES:
        if stage in stages:
            runners[stage](ctx)
    csv_path = args.csv or Path(__file__).resolve().parent / f"pipeline_{args.customers}.csv"
    write_outputs(ctx, args.results, csv_path, " ".join(["python -m benchmarks.run", *(argv if argv is not None else sys.argv[1:])]))
    ctx.say("done")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
