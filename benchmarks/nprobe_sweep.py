"""Recall@10 and speed of an IVF index on the harness's seed queries at several nprobe values.

The self-check tunes nprobe on random customers; a user's seeds can sit in denser regions.
This re-reads a `benchmarks.run` workdir (its customer_embeddings and built index), takes the
harness's seed customers as queries, and prints recall by id and the speed-up over streamed
exact search at each nprobe. Run after `python -m benchmarks.run ... --workdir DIR`:

    python -m benchmarks.nprobe_sweep --workdir /work/bench10m --customers 10000000 --nprobe 16,24,32,48
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import faiss

from benchmarks.results import markdown_table
from benchmarks.run import K, Context, seed_vectors, streamed_exact
from lookalike_cli.index.faiss_index import IVF_TYPES, load_index, per_query_recall
from lookalike_cli.settings import Settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="a benchmarks.run workdir with its index built")
    parser.add_argument("--customers", type=int, required=True, help="the --customers of that run (sets the seed size)")
    parser.add_argument("--nprobe", default="8,16,24,32,48,64", help="comma-separated nprobe values")
    parser.add_argument("--queries", type=int, default=500, help="seed customers used as queries")
    args = parser.parse_args(argv)
    workdir = args.workdir.resolve()
    settings = Settings.resolve(db=workdir / "pipeline.duckdb", serving_db=workdir / "pipeline_serving.duckdb",
                                onnx_dir=workdir / "onnx", index_dir=workdir / "indexes")
    loaded = load_index(settings.index_dir)
    if loaded.manifest.index_type not in IVF_TYPES:
        parser.error(f"{settings.index_dir} holds a {loaded.manifest.index_type} index; the sweep needs ivf or ivf_sq8")
    ctx = Context(customers=args.customers, settings=settings, workdir=workdir, epochs=0)
    queries = seed_vectors(ctx)[: args.queries]
    print(f"exact top-{K} of {len(queries)} seed queries over every embedding (streamed)...", flush=True)
    exact_per_query, truth, rows, _ = streamed_exact(ctx, queries)
    ivf = faiss.extract_index_ivf(loaded.index)
    table = []
    for nprobe in (int(v) for v in args.nprobe.split(",")):
        ivf.nprobe = nprobe
        loaded.manifest.params["nprobe"] = nprobe
        start = time.perf_counter()
        _, ids = loaded.index.search(queries, K)
        per_query = (time.perf_counter() - start) / len(queries)
        table.append([nprobe, per_query * 1000, per_query_recall(truth.ids, ids).mean(), exact_per_query / per_query])
        print(f"nprobe {nprobe}: {per_query * 1000:.3f} ms/query, recall@{K} {table[-1][2]:.4f}", flush=True)
    print(f"\n{rows:,} vectors, {loaded.manifest.index_type} {loaded.manifest.params.get('nlist')} lists; exact "
          f"{exact_per_query * 1000:.1f} ms/query\n")
    print(markdown_table(["nprobe", "ms/query", f"recall@{K} by id (seed queries)", "speed-up vs exact"], table))


if __name__ == "__main__":
    main()
