"""Searches over vectors held in memory: an audience's seeds, the customers of a k-NN graph.

By inner product, so cosine on L2-normalised rows; a search returns (similarities, rows), rows
being positions in the vectors searched, not customer ids. Exact (brute force) unless the caller
asks for IVF, where exact search would be too slow. The index over all of customer_embeddings,
with its manifest and self-check, is `faiss_index`.
"""

from __future__ import annotations

import faiss
import numpy as np


def exact_search(vectors: np.ndarray) -> faiss.Index:
    """Exact inner-product search over `vectors` (build once, search many query blocks)."""
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def ivf_search(vectors: np.ndarray, nlist: int, nprobe: int, train: np.ndarray | None = None,
               seed: int | None = None) -> faiss.Index:
    """Approximate inner-product search over `vectors`: IVF with `nlist` lists, trained on `train`
    (default: all the vectors; k-means seeded with `seed`, FAISS's default when None), probing `nprobe`."""
    dim = vectors.shape[1]
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    if seed is not None:
        index.cp.seed = seed
    index.train(np.ascontiguousarray(vectors if train is None else train, dtype=np.float32))
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    index.nprobe = nprobe
    return index


def top_k(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, rows) of the `k` nearest vectors of `index` per query, best first; rows are -1 where fewer exist."""
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def exact_neighbours(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, rows of `vectors`) of the `k` nearest per query, by exact search."""
    return top_k(exact_search(vectors), queries, k)
