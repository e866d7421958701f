"""Seed queries' recall@10 at build-index's self-checked nprobe vs after expand's seed recall probe, per index type.

Embeddings are synthesised into a DuckDB `customer_embeddings` table: CLUSTERS clusters of L2-normalised
vectors, one of them (DENSE_SHARE of the customers) twice as tight as the others, the dense region a
seed comes from. Each index type is built by `build_index` (its own self-check on 500 random customers
sets nprobe), then `probe_recall` runs on the seed's vectors as knn-vote would search them (a seeded
sample of 32). Recall@10 of every seed's query and of as many random customers' is measured against
exact search (FAISS brute force over all the vectors) at the self-checked params and at the probe's;
"probe truth" is the recall of the probe's own exact neighbours (ivf: nprobe = nlist; compressed: brute
force over the memory-mapped exact vectors) against that brute force, and for compressed indexes so is the
"code scan" (nprobe = nlist, re-ranked at rerank_factor 64), which the probe does not use. One thread
(`--threads`). Run:

    python -m benchmarks.bench_seed_recall --customers 1000000 [--index-types ivf,ivf_sq8,ivf_pq,hnsw]

At 1M x 32 on one core: ~15 s of synthesis and exact search, ~10 s per IVF build, a second or less per
probe; hnsw is left out by default: its build took 240 s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import duckdb
import faiss
import numpy as np
import pyarrow as pa

from benchmarks.results import RESULTS_PATH, machine_line, markdown_table, timed, write_section
from lookalike_cli.index.faiss_index import COMPRESSED_TYPES, MAX_RERANK_FACTOR, TARGET_RECALL, build_index, load_index, recall_at_k
from lookalike_cli.index.recall_probe import PROBE_QUERIES, exact_neighbours, probe_recall
from lookalike_cli.vectors import to_column
from lookalike_cli.warehouse.connection import registered

CLUSTERS = 24
DENSE_SHARE = 0.10
DENSE_SPREAD, SPREAD = 0.5, 1.0  # noise scale per cluster (over sqrt(dim))


def synthesise(db_path: Path, customers: int, dim: int, seed: int, chunk: int = 200_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, vectors, cluster) written to customer_embeddings; cluster 0 is the dense one."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CLUSTERS, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    cluster = np.where(rng.random(customers) < DENSE_SHARE, 0, rng.integers(1, CLUSTERS, customers))
    ids = np.arange(1, customers + 1, dtype=np.int64)
    vectors = np.empty((customers, dim), dtype=np.float32)
    with duckdb.connect(str(db_path)) as con:
        con.execute(f"create table customer_embeddings (customer_id bigint, embedding float[{dim}], model_version varchar)")
        for start in range(0, customers, chunk):
            part = slice(start, min(customers, start + chunk))
            spread = np.where(cluster[part] == 0, DENSE_SPREAD, SPREAD)[:, None] / np.sqrt(dim)
            block = centres[cluster[part]] + rng.normal(size=(part.stop - part.start, dim)) * spread
            vectors[part] = block / np.linalg.norm(block, axis=1, keepdims=True)
            table = pa.table({"customer_id": ids[part], "embedding": to_column(vectors[part]),
                              "model_version": pa.array(["bench-synthetic"] * (part.stop - part.start))})
            with registered(con, "chunk", table):
                con.execute("insert into customer_embeddings select * from chunk")
    return ids, vectors, cluster


def params_text(params: dict) -> str:
    return ", ".join(f"{key} {params[key]}" for key in ("nprobe", "ef_search", "rerank_factor") if key in params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=1000, help="seed customers, all from the dense cluster")
    parser.add_argument("--index-types", default="ivf,ivf_sq8,ivf_pq")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=RESULTS_PATH)
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-seed-recall-") as scratch:
        db_path = Path(scratch) / "warehouse.duckdb"
        with timed() as synthesis:
            ids, vectors, cluster = synthesise(db_path, args.customers, args.dim, args.seed)
        rng = np.random.default_rng(args.seed + 1)
        seeds = vectors[np.sort(rng.choice(np.flatnonzero(cluster == 0), size=args.seeds, replace=False))]
        randoms = vectors[np.sort(rng.choice(len(ids), size=args.seeds, replace=False))]
        with timed() as exact_time:
            seed_truth = ids[faiss.knn(seeds, vectors, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]]
            random_truth = ids[faiss.knn(randoms, vectors, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]]
        print(f"synthesised {args.customers:,} x {args.dim} in {synthesis.seconds:.0f}s; "
              f"exact top-10 of {2 * args.seeds:,} queries in {exact_time.seconds:.1f}s", flush=True)
        for index_type in args.index_types.split(","):
            index_dir = Path(scratch) / index_type
            with timed() as build:
                manifest = build_index(db_path, index_dir, index_type=index_type, seed=args.seed, progress=lambda _: None)
            loaded = load_index(index_dir)
            seed_before = recall_at_k(seed_truth, loaded.search(seeds, 10)[1])
            random_before = recall_at_k(random_truth, loaded.search(randoms, 10)[1])
            probed, probe = probe_recall(loaded, seeds, seed=args.seed)
            seed_after = recall_at_k(seed_truth, probed.search(seeds, 10)[1])
            # The probe's sample, as probe_recall draws it: how exact its own "exact" neighbours are.
            sample = seeds[np.sort(np.random.default_rng(args.seed).choice(len(seeds), size=PROBE_QUERIES, replace=False))]
            sample_truth = ids[faiss.knn(sample, vectors, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]]
            with timed() as truth_time:
                probe_truth = recall_at_k(sample_truth, exact_neighbours(loaded, sample, 10)[1])
            code_scan = "n/a"
            if index_type in COMPRESSED_TYPES:  # the alternative: every code scanned, the widest re-rank
                wide = {**manifest.params, "nprobe": manifest.params["nlist"], "rerank_factor": MAX_RERANK_FACTOR}
                with timed() as scan_time:
                    found = replace(loaded, manifest=replace(manifest, params=wide)).search(sample, 10)[1]
                code_scan = f"{recall_at_k(sample_truth, found):.3f} in {scan_time.seconds:.2f}s"
            rows.append([index_type, f"{manifest.params.get('nlist', '')}", f"{build.seconds:.0f}",
                         params_text(manifest.params), f"{manifest.self_check['recall']:.3f}", f"{random_before:.3f}",
                         f"{seed_before:.3f}", params_text(probed.manifest.params),
                         f"{probe.judged:.3f}" + ("" if probe.passed else " (ceiling)"), f"{seed_after:.3f}",
                         f"{probe_truth:.3f} in {truth_time.seconds:.2f}s", code_scan, f"{probe.seconds:.2f}"])
            print(rows[-1], flush=True)
    header = ["index", "nlist", "build (s)", "self-checked params", "self-check recall@10 (500 random)",
              f"random recall@10 ({args.seeds:,})", f"seed recall@10 ({args.seeds:,}), self-checked",
              "probe chose", f"probe's 95% lower bound ({PROBE_QUERIES} seeds)", "seed recall@10 after probe",
              "probe truth vs exact", "code-scan truth vs exact", "probe (s)"]
    body = "\n".join([
        f"{args.customers:,} synthetic vectors of dim {args.dim}: {CLUSTERS} clusters, one holding {DENSE_SHARE:.0%} of the "
        f"customers at half the others' spread; {args.seeds:,} seeds drawn from that dense cluster. Each index built by "
        f"`build_index` (self-check on 500 random customers, target {TARGET_RECALL}); the probe is `probe_recall` on the "
        f"seeds' vectors (as knn-vote searches them: a seeded sample of {PROBE_QUERIES}, judged by the 95% lower bound). "
        f"Recall@10 of all {args.seeds:,} seed queries and {args.seeds:,} random customers' against FAISS brute force; "
        f"probe truth: the probe's own exact neighbours (ivf: nprobe = nlist; compressed: brute force over the "
        f"memory-mapped exact vectors) against it, and for compressed indexes the alternative (code scan: nprobe = "
        f"nlist, re-ranked at rerank_factor {MAX_RERANK_FACTOR}). Probe (s) includes its exact search; '(ceiling)': nprobe = "
        f"nlist was tried and stayed short of the target, so the probe kept the best value it tried. {args.threads} "
        f"thread(s); synthesis {synthesis.seconds:.0f}s.",
        "",
        markdown_table(header, rows),
        "",
        machine_line(),
    ])
    print(markdown_table(header, rows))
    write_section("bench_seed_recall", "Seed recall probe: seed queries' recall@10 at the self-checked nprobe vs after the probe",
                  body, " ".join(["python -m benchmarks.bench_seed_recall", *sys.argv[1:]]), path=args.results)


if __name__ == "__main__":
    main()
