"""Expansion speed and recall: approximate index vs exact FAISS vs DuckDB brute force, same run.

Embeddings are synthesised directly into a DuckDB `customer_embeddings` table (clustered,
L2-normalised: segments, each a few sub-centres plus noise), so the benchmark needs no
model layer. Run:

    python -m benchmarks.bench_expand --customers 1000000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import duckdb
import faiss
import numpy as np
import pyarrow as pa
from threadpoolctl import threadpool_info

from benchmarks.results import markdown_table, timed, write_section
from lookalike_cli.expand import expand
from lookalike_cli.index import build_index, load_index, recall_at_k


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
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors[part].reshape(-1)), dim),
            "model_version": pa.array(["bench-synthetic"] * (part.stop - part.start)),
        })
        con.register("chunk", table)
        con.execute("insert into customer_embeddings select * from chunk")
        con.unregister("chunk")
    con.execute("create table seed_customers (customer_id bigint)")
    con.close()
    return ids, vectors, segment


def duckdb_top_k(con: duckdb.DuckDBPyConnection, query: np.ndarray, k: int) -> np.ndarray:
    return np.array([r[0] for r in con.execute(
        f"select customer_id from customer_embeddings order by array_cosine_similarity(embedding, ?::float[{len(query)}]) desc limit {k}",
        [query.tolist()],
    ).fetchall()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--segments", type=int, default=50)
    parser.add_argument("--seeds", type=int, default=10_000)
    parser.add_argument("--k", type=int, default=10, help="neighbours per seed (recall@K)")
    parser.add_argument("--size", default="5%", help="audience size for the end-to-end expand runs")
    parser.add_argument("--duckdb-queries", type=int, default=10, help="DuckDB brute force is timed on this many seeds and extrapolated")
    parser.add_argument("--no-hnswlib", action="store_true", help="skip the hnswlib comparison")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temp dir, removed afterwards")
    args = parser.parse_args()

    blas = [f"{i['internal_api']} {i.get('architecture', '')} {i['num_threads']} threads ({Path(i['filepath']).name})"
            for i in threadpool_info() if "faiss" in i["filepath"]]
    print("faiss thread pools:", "; ".join(blas))
    tmp = tempfile.TemporaryDirectory() if args.workdir is None else None
    work = Path(tmp.name) if tmp else args.workdir
    work.mkdir(parents=True, exist_ok=True)
    db = work / "bench.duckdb"
    db.unlink(missing_ok=True)
    rows, notes = [], []

    print(f"Synthesising {args.customers:,} x {args.dim} clustered embeddings into {db}")
    with timed() as t_gen:
        ids, vectors, segment = synthesise(db, args.customers, args.dim, args.segments, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    # Seeds: two segments mixed, like a real converter list.
    pool = np.flatnonzero(np.isin(segment, [0, 1]))
    seed_rows = np.sort(rng.choice(pool, size=min(args.seeds, len(pool)), replace=False))
    con = duckdb.connect(str(db))
    con.register("s", pa.table({"customer_id": ids[seed_rows]}))
    con.execute("insert into seed_customers select * from s")
    con.close()
    queries = vectors[seed_rows]
    k = args.k

    with timed() as t_build:
        manifest = build_index(db, work / "ann", index_type="auto", seed=args.seed)
    ann = load_index(work / "ann")
    with timed() as t_ann:
        _, ann_ids = ann.search(queries, k)

    exact = faiss.IndexFlatIP(args.dim)
    with timed() as t_exact_build:
        exact.add(vectors)
    with timed() as t_exact:
        _, exact_rows = exact.search(queries, k)
    truth = ids[exact_rows]
    ann_recall = recall_at_k(truth, ann_ids)

    con = duckdb.connect(str(db), read_only=True)
    sample = rng.choice(len(queries), size=min(args.duckdb_queries, len(queries)), replace=False)
    with timed() as t_duck:
        duck_ids = np.array([duckdb_top_k(con, queries[i], k) for i in sample])
    con.close()
    duck_per_query = t_duck.seconds / len(sample)
    duck_recall = recall_at_k(truth[sample], duck_ids)
    notes.append(f"DuckDB brute force timed on {len(sample)} seeds and extrapolated to {len(queries):,} "
                 f"({duck_per_query:.3f} s/query).")

    rows.append([f"FAISS {manifest.index_type} {json.dumps(manifest.params)}", t_build.seconds, t_ann.seconds,
                 ann_recall, t_exact.seconds / t_ann.seconds])
    rows.append(["FAISS IndexFlatIP (exact)", t_exact_build.seconds, t_exact.seconds, 1.0, 1.0])
    rows.append(["DuckDB array_cosine_similarity (brute force)", 0.0, duck_per_query * len(queries), duck_recall,
                 t_exact.seconds / (duck_per_query * len(queries))])

    if not args.no_hnswlib:
        import hnswlib

        graph = hnswlib.Index(space="ip", dim=args.dim)
        with timed() as t_h_build:
            graph.init_index(max_elements=len(vectors), M=16, ef_construction=100, random_seed=args.seed)
            graph.add_items(vectors, ids)
        # Equal recall: the smallest ef (doubling) whose recall reaches the FAISS index's.
        ef, h_recall = k, 0.0
        while h_recall < ann_recall and ef <= 4096:
            graph.set_ef(ef)
            with timed() as t_h:
                h_ids, _ = graph.knn_query(queries, k)
            h_recall = recall_at_k(truth, h_ids.astype(np.int64))
            ef *= 2
        rows.append([f"hnswlib M=16 efC=100 ef={ef // 2}", t_h_build.seconds, t_h.seconds, h_recall, t_exact.seconds / t_h.seconds])
        del graph

    # End-to-end expand (seed resolution, search, exclusion, ranking, nearest seed) with the
    # index already in memory, as a serving process holds it; flat index for the exact audience.
    exact_dir = work / "exact"
    build_index(db, exact_dir, index_type="flat", seed=args.seed, progress=lambda _: None)
    exact_loaded = load_index(exact_dir)
    expand_rows = []
    for strategy in ("centroid", "knn-vote"):
        runs = {}
        for label, loaded in (("ann", ann), ("exact", exact_loaded)):
            with timed() as t_expand:
                result = expand(db, work / label, seed_table="seed_customers", size=args.size, strategy=strategy,
                                seed=args.seed, progress=lambda _: None, loaded_index=loaded)
            runs[label] = (t_expand.seconds, set(result.members.column("customer_id").to_pylist()))
        overlap = len(runs["ann"][1] & runs["exact"][1]) / len(runs["exact"][1])
        expand_rows.append([strategy, args.size, len(runs["ann"][1]), runs["ann"][0], runs["exact"][0], overlap])
    with timed() as t_load:
        load_index(work / "ann")

    body = "\n\n".join([
        f"{args.customers:,} customers x {args.dim} dims ({args.segments} segments x 4 sub-centres + noise, "
        f"synthesised straight into DuckDB `customer_embeddings` in {t_gen.seconds:.0f}s, no model layer); "
        f"{len(queries):,} seeds from two segments; top-{k} neighbours per seed.",
        f"`build-index --index-type auto` chose **{manifest.index_type} {json.dumps(manifest.params)}**: "
        f"{manifest.reason}. Self-check recall@10 {manifest.self_check['recall']}.",
        markdown_table(["search (10k seeds)", "build s", f"query s ({len(queries):,} seeds)", f"recall@{k} vs exact",
                        "speed-up vs exact"], rows),
        "End-to-end `expand()` with the index in memory (seed SQL, search, exclusions, ranking, nearest seed):",
        markdown_table(["strategy", "size", "members", "ANN s", "exact s", "overlap with exact audience"], expand_rows),
        f"Loading the ANN index file from disk adds {t_load.seconds:.2f}s to a cold `lookalike expand`.",
        "faiss thread pools: " + "; ".join(blas) + ". " + " ".join(notes),
    ])
    write_section("bench_expand", "Expansion: approximate vs exact vs DuckDB brute force", body,
                  f"python -m benchmarks.bench_expand --customers {args.customers}")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
