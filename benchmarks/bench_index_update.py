"""Index update in place vs rebuild, by share of vectors re-scored: where should refresh stop updating?

On a scored warehouse that refresh has indexed (customer_embeddings, customer_embedding_inputs and an
index built with its embeddings generation: e.g. the full arm of bench_refresh, `--workdir
/tmp/refresh-200k` -> /tmp/refresh-200k/full-200000/warehouse.duckdb), for each share: a copy of
the warehouse in which that share of customers (a random sample) was "re-scored" - its vector moved
halfway towards another random customer's and normalised, so it stays among the model's vectors
but usually changes IVF list - with a new scored_generation, as rescoring writes it. Then, on
the same copy, both arms:

- update: `update_index` (re-scored vectors replaced in their new lists, lists and nprobe kept),
  with the share limit lifted so it runs at every share;
- rebuild: `build_index` (lists re-trained, nprobe re-tuned).

Each index's recall@10 is measured on the same 500 queries (re-scored customers' vectors: the ones
an update can get wrong) against exact search over the copy's vectors. Run:

    python -m benchmarks.bench_index_update --warehouse /tmp/refresh-200k/full-200000/warehouse.duckdb
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from benchmarks.results import RESULTS_PATH, machine_line, markdown_table, timed, write_section
from lookalike_cli.index import faiss_index
from lookalike_cli.index.faiss_index import build_index, load_index, recall_at_k, update_index
from lookalike_cli.model.rescoring import INPUTS_TABLE
from lookalike_cli.vectors import ids_and_vectors, normalise

QUERIES = 500


def rescore_share(db_path: Path, share: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Move `share` of the customers' vectors (see the module docstring); returns every id and vector after
    it, and the moved customers' ids."""
    with duckdb.connect(str(db_path)) as con:
        table = con.sql("select customer_id, embedding from customer_embeddings order by customer_id").to_arrow_table()
        ids, vectors = ids_and_vectors(table.combine_chunks().to_batches()[0])
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(len(ids), size=int(round(share * len(ids))), replace=False))
        partners = rng.choice(len(ids), size=len(chosen))
        moved = normalise(normalise(vectors[chosen]) + normalise(vectors[partners])).astype(vectors.dtype)
        vectors = vectors.copy()
        vectors[chosen] = moved
        generation = con.execute(f"select max(scored_generation) from {INPUTS_TABLE}").fetchall()[0][0] + 1
        kind = con.execute("select data_type from information_schema.columns "
                           "where table_name = 'customer_embeddings' and column_name = 'embedding'").fetchall()[0][0]
        con.register("moved", pa.table({"customer_id": pa.array(ids[chosen]), "embedding": pa.FixedSizeListArray.from_arrays(
            pa.array(moved.astype(np.float32).ravel()), vectors.shape[1])}))
        con.execute(f"update customer_embeddings set embedding = moved.embedding::{kind} "
                    "from moved where customer_embeddings.customer_id = moved.customer_id")
        con.execute(f"update {INPUTS_TABLE} set scored_generation = ? where customer_id in (select customer_id from moved)",
                    [generation])
        con.unregister("moved")
    return ids, vectors, ids[chosen]


def measured_recall(index_dir: Path, ids: np.ndarray, vectors: np.ndarray, queries: np.ndarray) -> float:
    normalised = normalise(vectors)
    position = np.searchsorted(ids, queries)
    query_vectors = normalised[position]
    exact = np.argsort(-(query_vectors @ normalised.T), axis=1)[:, :10]
    _, found = load_index(index_dir).search(query_vectors, 10)
    return recall_at_k(ids[exact], found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warehouse", type=Path, required=True)
    parser.add_argument("--shares", default="0.05,0.15,0.30")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=RESULTS_PATH)
    args = parser.parse_args()
    source_index = args.warehouse.parent / f"{args.warehouse.stem}_indexes"
    base = load_index(source_index).manifest
    faiss_index.MAX_UPDATE_SHARE = 1.0  # measured here at every share, the limit is what this sets
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-index-update-") as scratch:
        for share in (float(s) for s in args.shares.split(",")):
            folder = Path(scratch) / f"share-{share}"
            folder.mkdir()
            db_path = folder / "warehouse.duckdb"
            shutil.copyfile(args.warehouse, db_path)
            ids, vectors, moved = rescore_share(db_path, share, args.seed)
            queries = np.random.default_rng(args.seed + 1).choice(moved, size=min(QUERIES, len(moved)), replace=False)
            update_dir, rebuild_dir = folder / "updated", folder / "rebuilt"
            shutil.copytree(source_index, update_dir)
            with timed() as update_time:
                updated, why = update_index(db_path, update_dir, progress=lambda _: None)
            if updated is None:
                raise SystemExit(f"update refused at {share:.0%}: {why}")
            update_recall = measured_recall(update_dir, ids, vectors, queries)
            with timed() as rebuild_time:
                rebuilt = build_index(db_path, rebuild_dir, progress=lambda _: None,
                                      nlist=base.params.get("nlist") if base.index_type == "ivf" else None)
            rebuild_recall = measured_recall(rebuild_dir, ids, vectors, queries)
            rows.append([f"{share:.0%}", f"{len(moved):,}", f"{update_time.seconds:.1f}", f"{update_recall:.3f}",
                         f"{updated.self_check.get('updated_rows_found')}", f"{rebuild_time.seconds:.1f}",
                         f"{rebuild_recall:.3f}", f"nprobe {rebuilt.params.get('nprobe')}",
                         f"{update_time.seconds / rebuild_time.seconds:.3f}"])
            print(rows[-1], flush=True)
    header = ["re-scored", "vectors", "update (s)", "update recall@10", "update self-find", "rebuild (s)",
              "rebuild recall@10", "rebuild tuned", "update / rebuild time"]
    body = "\n".join([
        f"{base.row_count:,} vectors of dim {base.dim} ({args.warehouse}), index {base.index_type} "
        f"{base.params} as built by refresh. Re-scored vectors moved halfway towards a random other customer's "
        f"(usually a new IVF list); recall@10 on {QUERIES} re-scored customers' vectors vs exact search. The update "
        f"keeps the lists and nprobe; the rebuild re-trains and re-tunes them.",
        "",
        markdown_table(header, rows),
        "",
        machine_line(),
    ])
    print(markdown_table(header, rows))
    write_section("bench_index_update", "Index update in place vs rebuild, by share re-scored", body,
                  " ".join(["python -m benchmarks.bench_index_update", *sys.argv[1:]]), path=args.results)


if __name__ == "__main__":
    main()
