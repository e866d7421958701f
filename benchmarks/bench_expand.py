"""Expansion speed and recall: approximate index vs exact FAISS vs DuckDB brute force, same run.

Embeddings are synthesised directly into a DuckDB `customer_embeddings` table (clustered,
L2-normalised: segments, each a few sub-centres plus noise), so the benchmark needs no
model layer. Our index searches every seed; the exact baselines (a full scan per query) are
timed on a sample of the seeds and extrapolated per query. Run:

    python -m benchmarks.bench_expand --customers 1000000 [--no-hnswlib] [--compare-index-types ivf_sq8,ivf_pq]

At 1M the hnswlib build (M=16, efC=100) takes ~11 minutes on 2 busy cores; the rest ~5. The
other index types (default: the compressed ones, ivf_sq8 and ivf_pq) are built explicitly on the
same embeddings and searched for every seed, with their RAM per vector from the manifest.

The default strategy (blend) needs raw features, which synthetic embeddings lack, so it is timed on a
real scored, indexed warehouse (`lookalike generate-data --customers 1000000`, build, train, score,
build-index) against centroid in the same run, in process (index in memory) and as a cold CLI
(`lookalike expand`, a new process: imports, index load, expand, publish to a scratch serving file):

    python -m benchmarks.bench_expand --blend-warehouse /path/pipeline.duckdb --index-dir /path/indexes
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import faiss
import numpy as np
import pyarrow as pa
from threadpoolctl import threadpool_info

from benchmarks.results import RESULTS_PATH, machine_line, markdown_table, timed, write_section
from lookalike_cli.audiences.expand import expand, parse_size
from lookalike_cli.index.faiss_index import INDEX_TYPES, LoadedIndex, build_index, flat_in_memory, load_index, memory_estimate, recall_at_k
from lookalike_cli.vectors import to_column
from lookalike_cli.warehouse.connection import registered


def synthesise(db_path: Path, customers: int, dim: int, segments: int, seed: int, chunk: int = 200_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, vectors, segment) written to customer_embeddings in chunks of Arrow rows."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(segments, dim))
    sub_centres = centres[:, None, :] + 0.6 * rng.normal(size=(segments, 4, dim))
    segment = rng.integers(0, segments, size=customers)
    sub = rng.integers(0, 4, size=customers)
    ids = np.arange(1, customers + 1, dtype=np.int64)
    vectors = np.empty((customers, dim), dtype=np.float32)
    con = duckdb.connect(str(db_path))
    con.execute(f"create table customer_embeddings (customer_id bigint, embedding float[{dim}], model_version varchar)")
    for start in range(0, customers, chunk):
        part = slice(start, min(customers, start + chunk))
        block = sub_centres[segment[part], sub[part]] + 0.9 * rng.normal(size=(part.stop - part.start, dim))
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        vectors[part] = block
        table = pa.table({
            "customer_id": ids[part],
            "embedding": to_column(vectors[part]),
            "model_version": pa.array(["bench-synthetic"] * (part.stop - part.start)),
        })
        with registered(con, "chunk", table):
            con.execute("insert into customer_embeddings select * from chunk")
    con.execute("create table seed_customers (customer_id bigint)")
    con.close()
    return ids, vectors, segment


def duckdb_top_k(con: duckdb.DuckDBPyConnection, query: np.ndarray, k: int) -> np.ndarray:
    return np.array([r[0] for r in con.execute(
        f"select customer_id from customer_embeddings order by array_cosine_similarity(embedding, ?::float[{len(query)}]) desc limit {k}",
        [query.tolist()],
    ).fetchall()])


def thread_pools() -> str:
    return "; ".join(f"{i['internal_api']} {i.get('architecture') or ''} {i['num_threads']} threads ({Path(i['filepath']).name})"
                     for i in threadpool_info() if "faiss" in i["filepath"])


def blend_seed_sql(db: Path, seeds: int) -> tuple[str, str]:
    """(seed SQL, what it is): customers of the generator's largest planted segment, else the top spenders."""
    with duckdb.connect(str(db), read_only=True) as con:
        try:
            segment = con.execute("select segment_id from raw.planted_segments group by 1 order by count(*) desc limit 1").fetchall()[0][0]
        except duckdb.Error:
            return (f"select customer_id from customer_features order by total_spend desc, customer_id limit {seeds}",
                    f"the {seeds} biggest spenders")
    return (f"select customer_id from raw.planted_segments where segment_id = {segment} order by hash(customer_id) limit {seeds}",
            f"{seeds} customers of the largest planted segment ({segment})")


def cli_wall(db: Path, index_dir: Path, serving: Path, strategy: str, seed_sql: str, size: str) -> tuple[float, str]:
    """(wall seconds, last output line) of a cold `lookalike expand` in a new process, publishing to `serving`."""
    import subprocess

    command = [sys.executable, "-m", "lookalike_cli.cli.main", "--db", str(db), "--serving-db", str(serving),
               "--index-dir", str(index_dir), "expand", "--name", f"bench_{strategy.replace('-', '_')}",
               "--seed-sql", seed_sql, "--size", size, "--strategy", strategy]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:6])} ... failed:\n{done.stdout}\n{done.stderr}")
    return seconds, (done.stdout.strip().splitlines() or [""])[-1]


def bench_blend(args: argparse.Namespace) -> None:
    """The default strategy at scale: blend vs centroid on a real warehouse, in process and as a cold CLI."""
    import sklearn.linear_model  # noqa: F401  (a serving process has imported it once; the CLI runs pay it)

    from lookalike_cli.settings import Settings

    # The index the CLI finds for this warehouse (a folder beside it) unless --index-dir names another.
    db = args.blend_warehouse
    index_dir = args.index_dir or Settings.resolve(db=db).index_dir
    seed_sql, seed_text = blend_seed_sql(db, args.blend_seeds)
    load_before = os.getloadavg()[0]
    with timed() as t_load:
        index = load_index(index_dir)
    population = index.manifest.row_count
    runs: dict[str, list[float]] = {"centroid": [], "blend": []}
    audiences = {}
    for _ in range(args.repeats):  # interleaved, so both strategies see the same machine load
        for strategy in runs:
            with timed() as t:
                result = expand(db, index_dir, seed_sql=seed_sql, size=args.blend_size, strategy=strategy,
                                progress=lambda _: None, loaded_index=index)
            runs[strategy].append(t.seconds)
            audiences[strategy] = result
    walls: dict[str, list[float]] = {"centroid": [], "blend": []}
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(args.repeats):
            for strategy in walls:
                seconds, _ = cli_wall(db, index_dir, Path(scratch) / "serving.duckdb", strategy, seed_sql, args.blend_size)
                walls[strategy].append(seconds)
    load_after = os.getloadavg()[0]
    best = {name: min(values) for name, values in runs.items()}
    best_wall = {name: min(values) for name, values in walls.items()}
    blend_info = audiences["blend"].audience["parameters"]["blend"]
    rows = [[name, f"{best[name]:.2f}", f"{best[name] / best['centroid']:.1f}x", f"{best_wall[name]:.2f}",
             f"{best_wall[name] / best_wall['centroid']:.1f}x", audiences[name].audience["size"]] for name in runs]
    body = "\n\n".join([
        f"{population:,} customers ({index.manifest.index_type} {json.dumps(index.manifest.params)}, warehouse {db}); "
        f"seed: {seed_text}; --size {args.blend_size}. Best of {args.repeats} interleaved runs each.",
        markdown_table(["strategy", "expand() s (index in memory)", "vs centroid", "CLI wall s (cold process)", "vs centroid",
                        "members"], rows),
        f"blend scored: {blend_info['scored']} (fitted on {blend_info['unlabelled']:,} sampled customers, "
        f"{blend_info['folds']} folds; weights {blend_info['weights']}). The CLI wall is a new `lookalike expand` process: "
        f"imports, the index file read from disk ({t_load.seconds:.2f}s in this process), expand, publishing to a scratch "
        "serving file.",
        f"{machine_line()}. Machine load average (1 min) {load_before:.1f} at start, {load_after:.1f} at the end "
        "(2 cores shared with other jobs: absolute seconds move with it, the ratios less).",
    ])
    write_section("bench_expand_blend", f"Expansion: the default strategy (blend) at {population:,} customers", body,
                  " ".join(["python -m benchmarks.bench_expand", *sys.argv[1:]]), path=args.results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blend-warehouse", type=Path, default=None,
                        help="only time blend vs centroid on this scored, indexed warehouse (section bench_expand_blend)")
    parser.add_argument("--index-dir", type=Path, default=None, help="with --blend-warehouse (default: indexes/ beside it)")
    parser.add_argument("--blend-seeds", type=int, default=500)
    parser.add_argument("--blend-size", default="5%")
    parser.add_argument("--repeats", type=int, default=2, help="with --blend-warehouse: interleaved runs per strategy")
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--segments", type=int, default=50)
    parser.add_argument("--seeds", type=int, default=10_000)
    parser.add_argument("--k", type=int, default=10, help="neighbours per seed (recall@K)")
    parser.add_argument("--size", default="20000", help="audience size for the end-to-end expand runs")
    parser.add_argument("--exact-queries", type=int, default=500,
                        help="exact FAISS search is timed on this many seeds and extrapolated; recall is measured on them")
    parser.add_argument("--sample-seeds", type=int, default=500,
                        help="end-to-end runs are also made on this many of the seeds (exact knn-vote: one full scan per seed)")
    parser.add_argument("--duckdb-queries", type=int, default=10, help="DuckDB brute force is timed on this many seeds and extrapolated")
    parser.add_argument("--no-hnswlib", action="store_true", help="skip the hnswlib comparison")
    parser.add_argument("--compare-index-types", default="ivf_sq8,ivf_pq",
                        help="comma-separated index types built explicitly besides auto's choice ('' for none)")
    parser.add_argument("--results", type=Path, default=RESULTS_PATH, help="the RESULTS.md to write this section to")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="faiss OpenMP threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temp dir, removed afterwards")
    args = parser.parse_args()
    if args.blend_warehouse:
        bench_blend(args)
        return
    compared = [name for name in args.compare_index_types.split(",") if name]
    unknown = [name for name in compared if name not in INDEX_TYPES or name == "auto"]
    if unknown:
        parser.error(f"--compare-index-types: unknown {unknown}; choose from {', '.join(INDEX_TYPES[1:])}")

    faiss.omp_set_num_threads(args.threads)
    blas = thread_pools()
    coretype = os.environ.get("OPENBLAS_CORETYPE")
    load_before = os.getloadavg()[0]
    print(f"faiss thread pools: {blas}; OPENBLAS_CORETYPE={coretype or 'unset'}; load average {load_before:.1f}")
    tmp = tempfile.TemporaryDirectory() if args.workdir is None else None
    work = Path(tmp.name) if tmp else args.workdir
    work.mkdir(parents=True, exist_ok=True)
    db = work / "bench.duckdb"
    db.unlink(missing_ok=True)

    print(f"Synthesising {args.customers:,} x {args.dim} clustered embeddings into {db}")
    with timed() as t_gen:
        ids, vectors, segment = synthesise(db, args.customers, args.dim, args.segments, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    # Seeds: two segments mixed, like a real converter list.
    pool = np.flatnonzero(np.isin(segment, [0, 1]))
    seed_rows = np.sort(rng.choice(pool, size=min(args.seeds, len(pool)), replace=False))
    sample_rows = np.sort(rng.choice(seed_rows, size=min(args.sample_seeds, len(seed_rows)), replace=False))
    con = duckdb.connect(str(db))
    con.register("s", pa.table({"customer_id": ids[seed_rows]}))
    con.execute("insert into seed_customers select * from s")
    con.register("v", pa.table({"customer_id": ids[sample_rows]}))
    con.execute("create table sample_seed_customers as select * from v")
    con.close()
    queries = vectors[seed_rows]
    n, k = len(queries), args.k
    # Exact baselines run on a sample of the seeds (extrapolated per query); recall is measured on it.
    sample = np.sort(rng.choice(n, size=min(args.exact_queries, n), replace=False))
    duck_sample = sample[:min(args.duckdb_queries, len(sample))]

    with timed() as t_build:
        manifest = build_index(db, work / "ann", index_type="auto", seed=args.seed)
    ann = load_index(work / "ann")
    with timed() as t_ann:
        _, ann_ids = ann.search(queries, k)

    with timed() as t_exact_build:
        exact = flat_in_memory([(ids, vectors)], vectors.shape[1], manifest.model_version, "benchmark exact baseline")
    with timed() as t_exact:
        _, truth = exact.search(queries[sample], k)
    exact_per_query = t_exact.seconds / len(sample)
    ann_recall = recall_at_k(truth, ann_ids[sample])

    con = duckdb.connect(str(db), read_only=True)
    with timed() as t_duck:
        duck_ids = np.array([duckdb_top_k(con, queries[i], k) for i in duck_sample])
    con.close()
    duck_per_query = t_duck.seconds / len(duck_sample)
    duck_recall = recall_at_k(truth[:len(duck_sample)], duck_ids)

    def row(name: str, build: float, per_query: float, measured: str, recall: float, ram: object) -> list:
        return [name, build, per_query * n, per_query * 1000, measured, recall, exact_per_query / per_query, ram]

    def ram_per_vector(loaded: LoadedIndex) -> str:
        memory = loaded.manifest.memory
        disk = f" + {memory['exact_vectors_disk_bytes'] / len(ids):.0f} on disk" if "exact_vectors_disk_bytes" in memory else ""
        return f"{memory['index_ram_bytes'] / len(ids):.0f}{disk}"

    ann_per_query = t_ann.seconds / n
    flat_ram = memory_estimate("flat", len(ids), args.dim, {}, 0)["index_ram_bytes"] / len(ids)
    rows = [
        row(f"FAISS {manifest.index_type} {json.dumps(manifest.params)} (ours, auto)", t_build.seconds, ann_per_query,
            f"all {n:,}", ann_recall, ram_per_vector(ann)),
        row("FAISS IndexFlatIP (exact)", t_exact_build.seconds, exact_per_query, f"{len(sample):,}, extrapolated", 1.0,
            f"{flat_ram:.0f}"),
        row("DuckDB array_cosine_similarity (brute force)", 0.0, duck_per_query, f"{len(duck_sample):,}, extrapolated", duck_recall,
            "0 (table on disk)"),
    ]
    for index_type in compared:
        if index_type == manifest.index_type:
            continue
        # Same embeddings and nlist as auto's index; each one's self-check tunes its own nprobe / rerank_factor.
        print(f"Building {index_type} for comparison")
        with timed() as t_other_build:
            other_manifest = build_index(db, work / index_type, index_type=index_type, nlist=manifest.params.get("nlist"),
                                         seed=args.seed)
        other = load_index(work / index_type)
        with timed() as t_other:
            _, other_ids = other.search(queries, k)
        rows.append(row(f"FAISS {index_type} {json.dumps(other_manifest.params)}", t_other_build.seconds, t_other.seconds / n,
                        f"all {n:,}", recall_at_k(truth, other_ids[sample]), ram_per_vector(other)))
        del other, other_ids

    if not args.no_hnswlib:
        import hnswlib

        graph = hnswlib.Index(space="ip", dim=args.dim)
        graph.set_num_threads(args.threads)
        with timed() as t_h_build:
            graph.init_index(max_elements=len(vectors), M=16, ef_construction=100, random_seed=args.seed)
            graph.add_items(vectors, ids)
        # Equal recall: the smallest ef (doubling) whose recall on the sample reaches our index's.
        ef, h_recall = k, 0.0
        while h_recall < ann_recall and ef < 4096:
            ef *= 2
            graph.set_ef(ef)
            h_recall = recall_at_k(truth, graph.knn_query(queries[sample], k)[0].astype(np.int64))
        with timed() as t_h:
            graph.knn_query(queries, k)
        # hnswlib's layout per element: vector, level-0 links (2M + count), label, upper-level pointer and level,
        # a std::mutex (40 B) and ~50 B of label hash map (like IndexIDMap2's).
        rows.append(row(f"hnswlib M=16 efC=100 ef={ef}", t_h_build.seconds, t_h.seconds / n, f"all {n:,}", h_recall,
                        f"~{args.dim * 4 + (2 * 16 + 1) * 4 + 8 + 8 + 4 + 40 + 50} (from its layout)"))
        del graph

    # End-to-end expand (seed resolution, search, exclusion, ranking, nearest seed) with the
    # index already in memory, as a serving process holds it; exact search gives the reference audience.
    expand_rows = []
    for strategy, table, seed_count, baseline in (("centroid", "seed_customers", n, True),
                                                  ("centroid", "sample_seed_customers", len(sample_rows), True),
                                                  ("knn-vote", "seed_customers", n, False),
                                                  ("knn-vote", "sample_seed_customers", len(sample_rows), True)):
        runs = {}
        for label, loaded in (("ours", ann), ("exact", exact))[:2 if baseline else 1]:
            print(f"expand {strategy} {label}: {seed_count:,} seeds, --size {args.size}")
            with timed() as t_expand:
                result = expand(db, work / "ann", seed_table=table, size=args.size, strategy=strategy,
                                seed=args.seed, progress=print, loaded_index=loaded)
            runs[label] = (t_expand.seconds, set(result.members.column("customer_id").to_pylist()))
        if baseline:
            overlap = len(runs["ours"][1] & runs["exact"][1]) / len(runs["exact"][1])
            compared = [runs["exact"][0], runs["exact"][0] / runs["ours"][0], overlap]
        else:
            compared = ["not run", "", ""]
        expand_rows.append([strategy, f"{seed_count:,}", args.size, len(runs["ours"][1]), runs["ours"][0], *compared])
    with timed() as t_centroid:
        ann.search(queries.mean(axis=0, keepdims=True), parse_size(args.size, len(ids)) + n + 100)
    with timed() as t_load:
        load_index(work / "ann")
    load_after = os.getloadavg()[0]

    body = "\n\n".join([
        f"{args.customers:,} customers x {args.dim} dims ({args.segments} segments x 4 sub-centres + noise, "
        f"synthesised straight into DuckDB `customer_embeddings` in {t_gen.seconds:.0f}s, no model layer); "
        f"{n:,} seeds from two segments; top-{k} neighbours per seed.",
        f"`build-index --index-type auto` chose **{manifest.index_type} {json.dumps(manifest.params)}**: "
        f"{manifest.reason}. Self-check recall@10 {manifest.self_check['recall']}; build (read embeddings, train, add, "
        f"self-check) {manifest.build_seconds:.0f}s.",
        f"{'Our index searches' if args.no_hnswlib else 'Our index and hnswlib search'} all {n:,} seeds"
        f"{' (hnswlib skipped: --no-hnswlib)' if args.no_hnswlib else ''}. Exact FAISS search is timed on {len(sample):,} of them and "
        f"DuckDB brute force on {len(duck_sample):,}, extrapolated per query to {n:,}; recall@{k} is measured on the "
        f"{len(sample):,} sampled seeds (DuckDB: on its {len(duck_sample):,}).",
        "RAM bytes/vector: `memory_estimate` in each index's manifest (codes, ids, maps; the compressed indexes' exact "
        "vectors and id lookup are memory-mapped from disk, shown as `+ N on disk`).",
        markdown_table(["search", "build s", f"query s ({n:,} seeds)", "ms/query", "seeds timed",
                        f"recall@{k} vs exact", "speed-up vs exact", "RAM bytes/vector"], rows),
        "End-to-end `expand()` with the index in memory, as a serving process holds it (seed SQL, search, exclusions, "
        f"ranking, nearest seed). Exact knn-vote scans the population once per seed ({exact_per_query * 1000:.0f} ms "
        f"each here), so it is compared on {len(sample_rows):,} of the seeds; on all {n:,} only our index runs. "
        f"Every member gets its exact nearest seed: {args.size} members x {n:,} seeds is most of the centroid time "
        f"with all seeds; the centroid search itself took {t_centroid.seconds:.2f}s (ours).",
        markdown_table(["strategy", "seeds", "size", "members", "ours s", "exact s", "speed-up", "overlap with exact audience"],
                       expand_rows),
        f"Loading the index file from disk adds {t_load.seconds:.2f}s to a cold `lookalike expand`.",
        f"faiss thread pools: {blas}; OPENBLAS_CORETYPE {coretype or 'unset'} (the kernel OpenBLAS picked is named above). "
        f"Machine load average (1 min) {load_before:.1f} at start, {load_after:.1f} at the end: other jobs shared the 2 cores.",
    ])
    write_section("bench_expand", "Expansion: approximate vs exact vs DuckDB brute force", body,
                  " ".join(["python -m benchmarks.bench_expand", *sys.argv[1:]]), path=args.results)
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
