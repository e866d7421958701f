"""Recall probe at search time: the self-check's nprobe, re-checked on the queries about to be searched.

build-index tunes nprobe (efSearch) on random customers' queries. Seeds are not random customers: they
sit in dense regions, whose lists are crowded, and at 10M their queries reached recall@10 0.940 where
random ones reached 0.96. `probe_recall` measures recall@k on (a sample of) the actual queries against
exact search and doubles nprobe until it reaches TARGET_RECALL, for that search only: it returns a
copy of the LoadedIndex whose manifest carries the raised value, and leaves the manifest file alone.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

import faiss
import numpy as np

from lookalike_cli.index.faiss_index import (COMPRESSED_TYPES, IVF_TYPES, MAX_RERANK_FACTOR, SELF_CHECK_K, TARGET_RECALL,
                                             LoadedIndex, lower_confidence_bound, per_query_self_check, search_knob, widened)
from lookalike_cli.vectors import normalise

# Queries probed at most (a seeded sample beyond): 32 exhaustive searches stay well under a second at 1M.
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
    passed: bool  # judged >= TARGET_RECALL (False: stopped at the ceiling below it)
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

    IVF with nprobe = nlist scans every list: exact for ivf (float32 vectors in the lists); a compressed
    index scans every code and re-ranks MAX_RERANK_FACTOR*k candidates by their exact vectors (near-exact:
    a true neighbour is missed only if over 64*k vectors' codes look closer; benchmarks/bench_seed_recall
    measures it), which keeps to RAM where a brute force over the memory-mapped exact vectors would read
    them all from disk. HNSW searches its flat storage by brute force.
    """
    manifest = loaded.manifest
    if manifest.index_type in IVF_TYPES:
        exhaustive = {**manifest.params, "nprobe": manifest.params["nlist"]}
        how = "nprobe = nlist"
        if manifest.index_type in COMPRESSED_TYPES:
            exhaustive["rerank_factor"] = MAX_RERANK_FACTOR
            how += f", rerank_factor {MAX_RERANK_FACTOR}"
        sims, ids = replace(loaded, manifest=replace(manifest, params=exhaustive)).search(queries, k)
        return sims, ids, how
    hnsw = faiss.downcast_index(loaded.index.index)
    sims, rows = hnsw.storage.search(queries, k)
    return sims, faiss.vector_to_array(loaded.index.id_map)[rows], "brute force over the HNSW storage"


def probe_recall(loaded: LoadedIndex, queries: np.ndarray, seed: int = 0, k: int = SELF_CHECK_K,
                 max_queries: int = PROBE_QUERIES) -> tuple[LoadedIndex, RecallProbe]:
    """(the index to search `queries` with, what the probe found): recall@k of up to `max_queries` of them
    (a sample seeded by `seed` beyond) against exact search, nprobe / efSearch doubled from the manifest's
    until recall reaches TARGET_RECALL or the ceiling (nlist; MAX_EF_SEARCH). Never lowers the manifest's value.

    The criterion is the mean recall when every query is probed (it is then the recall of this search, with
    no sampling error), and tune's one-sided 95% lower confidence bound when they are a sample (a sample's
    mean just over the target is, about half the time, over the recall of all the queries). Flat: exact
    search, returned as is.
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
    params, first = dict(manifest.params), None
    while True:
        probed = replace(loaded, manifest=replace(manifest, params=params))
        sims, ids = probed.search(sample, k)
        per_query = per_query_self_check(manifest.index_type, truth_ids, truth_sims, ids, sims)[2]
        recall = float(per_query.mean())
        judged = lower_confidence_bound(per_query) if criterion == "lower_bound" else recall
        first = recall if first is None else first
        if judged >= TARGET_RECALL or params[key] >= ceiling:
            break
        params = widened(params, key, ceiling)
    return probed, RecallProbe(
        manifest.index_type, k, len(sample), len(queries), criterion, key, int(manifest.params[key]), int(params[key]),
        round(first, 4), round(recall, 4), round(judged, 4), judged >= TARGET_RECALL,
        round(time.perf_counter() - started, 3), how, params.get("rerank_factor"))
