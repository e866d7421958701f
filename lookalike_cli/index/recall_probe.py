"""Recall probe at search time: the self-check's nprobe, re-checked on the queries about to be searched.

build-index tunes nprobe (efSearch) on random customers' queries. Seeds are not random customers: they
sit in dense regions, and at 10M their queries reached recall@10 0.940 where random ones reached 0.96.
`probe_recall` measures recall@k on (a sample of) the actual queries against exact search and doubles
nprobe (with a compressed index's rerank_factor, as tuning does) until it reaches TARGET_RECALL, for that
search only: it returns a copy of the LoadedIndex whose manifest carries the raised value, and leaves
the manifest file alone.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

import faiss
import numpy as np

from lookalike_cli.index.faiss_index import (COMPRESSED_TYPES, RERANK_SLICE, SELF_CHECK_K, TARGET_RECALL, ExactTopK,
                                             LoadedIndex, lower_confidence_bound, per_query_self_check, search_knob, widened)
from lookalike_cli.vectors import normalise

# Queries probed at most (a seeded sample beyond): the probe took 0.3-0.7 s at 1M x 32 (bench_seed_recall).
PROBE_QUERIES = 32


@dataclass
class RecallProbe:
    """What the probe measured and chose; `as_parameters` is what an audience records."""
    index_type: str
    k: int
    queries: int  # probed
    of_queries: int  # the search's queries
    criterion: str  # "mean" (every query probed) or "lower_bound" (a sample: its one-sided 95% bound)
    knob: str | None  # nprobe, ef_search; None for exact search
    self_checked: int | None  # the knob's value in the manifest (build-index's self-check)
    chosen: int | None
    recall_self_checked: float  # mean recall@k at the self-checked value
    recall: float  # mean recall@k at the chosen value
    judged: float  # the criterion's value at the chosen value (compared with the target)
    passed: bool  # judged >= TARGET_RECALL (False: the ceiling reached below it; `chosen` is the best value tried)
    seconds: float
    truth: str  # how the exact neighbours were found
    rerank_factor: int | None = None  # compressed indexes: raised with nprobe, as build-index's tuning does

    def as_parameters(self) -> dict:
        return {name: value for name, value in asdict(self).items() if value is not None}

    def summary(self) -> str:
        if self.knob is None:
            return f"seed recall probe: skipped, {self.index_type} index is exact search (recall 1)"
        sample = f"{self.queries} of {self.of_queries} queries" if self.queries < self.of_queries else f"{self.queries} queries"
        bound = f", 95% lower bound {self.judged:.3f}" if self.criterion == "lower_bound" else ""
        return (f"seed recall probe: recall@{self.k} {self.recall:.3f}{bound} at {self.knob} {self.chosen} "
                f"(self-checked {self.self_checked}: {self.recall_self_checked:.3f}; {sample}, {self.seconds:.2f}s)")


def exact_neighbours(loaded: LoadedIndex, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(similarities, ids, how) of the exact top-k of L2-normalised `queries`, from the index's own storage.

    ivf: nprobe = nlist scans every list, which hold the float32 vectors (at 1M x 32, 0.28-0.40 s for 32
    queries; a BLAS brute force over the lists read in place took 0.17 s, not worth a second reader of the
    lists beside expand.embedding_products). hnsw: brute force over its flat
    storage. Compressed: brute force over the memory-mapped exact vectors, RERANK_SLICE rows at a time (a
    sequential read of the file). Scanning every code and re-ranking even 64*k candidates is not exact:
    in a dense cluster product-quantised codes cannot tell the neighbours apart (benchmarks/RESULTS.md,
    bench_seed_recall, 1M x 32: that code scan found 0.70 of ivf_pq's true top-10 in 0.26 s, the brute
    force all of them in 0.14 s).
    """
    manifest = loaded.manifest
    if manifest.index_type == "ivf":
        exhaustive = replace(loaded, manifest=replace(manifest, params={**manifest.params, "nprobe": manifest.params["nlist"]}))
        return (*exhaustive.search(queries, k), "nprobe = nlist")
    if manifest.index_type in COMPRESSED_TYPES:
        exact, truth = loaded.exact, ExactTopK(queries, k)
        for start in range(0, len(exact.vectors), RERANK_SLICE):
            rows = np.arange(start, min(start + RERANK_SLICE, len(exact.vectors)), dtype=np.int64)
            truth.add(rows, np.ascontiguousarray(exact.vectors[start : start + RERANK_SLICE]))
        # Rows -> customer ids: `order` holds the row of each sorted id; one pass finds the few rows wanted.
        wanted = np.flatnonzero(np.isin(exact.order, truth.ids))
        row_ids = dict(zip(np.asarray(exact.order[wanted]).tolist(), np.asarray(exact.sorted_ids[wanted]).tolist()))
        ids = np.vectorize(row_ids.__getitem__, otypes=[np.int64])(truth.ids)
        return truth.sims, ids, "brute force over the exact vectors"
    hnsw = faiss.downcast_index(loaded.index.index)
    sims, rows = hnsw.storage.search(queries, k)
    return sims, faiss.vector_to_array(loaded.index.id_map)[rows], "brute force over the HNSW storage"


def probe_recall(loaded: LoadedIndex, queries: np.ndarray, seed: int = 0, k: int = SELF_CHECK_K,
                 max_queries: int = PROBE_QUERIES) -> tuple[LoadedIndex, RecallProbe]:
    """(the index to search `queries` with, what the probe found): recall@k of up to `max_queries` of them
    (a sample seeded by `seed` beyond) against exact search, nprobe / efSearch doubled from the manifest's
    until recall reaches TARGET_RECALL or the ceiling (nlist; MAX_EF_SEARCH); short of the target there, the
    value that measured best. Never lowers the manifest's value.

    The criterion is the mean recall when every query is probed (it is then the recall of this search, with
    no sampling error), and tune's one-sided 95% lower confidence bound when they are a sample (a sample
    whose mean just reaches the target overstates the recall of all the queries about half the time).
    Flat: exact search, returned as is.
    """
    started = time.perf_counter()
    manifest = loaded.manifest
    k = min(k, manifest.row_count)
    if manifest.index_type == "flat":
        return loaded, RecallProbe(manifest.index_type, k, 0, len(queries), "mean", None, None, None, 1.0, 1.0, 1.0, True,
                                   round(time.perf_counter() - started, 3), "exact search")
    sample = normalise(np.asarray(queries, dtype=np.float32))
    if len(sample) > max_queries:
        sample = sample[np.sort(np.random.default_rng(seed).choice(len(sample), size=max_queries, replace=False))]
    truth_sims, truth_ids, how = exact_neighbours(loaded, sample, k)
    key, ceiling = search_knob(manifest)
    criterion = "lower_bound" if len(sample) < len(queries) else "mean"
    params, tried = dict(manifest.params), []
    while True:
        probed = replace(loaded, manifest=replace(manifest, params=params))
        sims, ids = probed.search(sample, k)
        per_query = per_query_self_check(manifest.index_type, truth_ids, truth_sims, ids, sims)[2]
        recall = float(per_query.mean())
        tried.append((lower_confidence_bound(per_query) if criterion == "lower_bound" else recall, recall, probed))
        if tried[-1][0] >= TARGET_RECALL or params[key] >= ceiling:
            break
        params = widened(params, key, ceiling)
    # Short of the target at the ceiling, the best value tried: probing more lists can lower a compressed
    # index's recall (more codes compete for the same rerank_factor*k candidates).
    judged, recall, probed = max(tried, key=lambda attempt: attempt[0])  # the last one when it reached the target
    chosen = probed.manifest.params
    return probed, RecallProbe(
        manifest.index_type, k, len(sample), len(queries), criterion, key, int(manifest.params[key]), int(chosen[key]),
        round(tried[0][1], 4), round(recall, 4), round(judged, 4), judged >= TARGET_RECALL,
        round(time.perf_counter() - started, 3), how, chosen.get("rerank_factor"))
