"""The FAISS index over `customer_embeddings`: choice of index, parameters, manifest, recall self-check.

Cosine similarity is inner product on L2-normalised vectors; customer ids are kept as int64
through `IndexIDMap2`. The manifest (JSON beside the index file) records everything needed to
reload the index with the same search parameters and to refuse one built from other embeddings.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import faiss
import numpy as np

from lookalike_cli.errors import LookalikeError, ParameterError
from lookalike_cli.files import remove_stale_temp_files
from lookalike_cli.progress import Progress
from lookalike_cli.vectors import ids_and_vectors, normalise
from lookalike_cli.warehouse.connection import connection, require_table

INDEX_FILE = "customer_embeddings.faiss"
MANIFEST_FILE = "customer_embeddings.json"
VECTORS_FILE = "customer_embeddings.vectors.npy"  # exact vectors for re-ranking a compressed index (memory-mapped)
IDS_FILE = "customer_embeddings.ids.npy"  # customer ids, sorted (memory-mapped)
ROWS_FILE = "customer_embeddings.rows.npy"  # row of VECTORS_FILE holding each sorted id (memory-mapped)
EXACT_FILES = (VECTORS_FILE, IDS_FILE, ROWS_FILE)
INDEX_TYPES = ("auto", "flat", "ivf", "ivf_sq8", "ivf_pq", "hnsw")
IVF_TYPES = ("ivf", "ivf_sq8", "ivf_pq")
# Compressed: codes in RAM, candidates re-ranked with the exact vectors memory-mapped from disk.
COMPRESSED_TYPES = ("ivf_sq8", "ivf_pq")
# auto: above this share of RAM the flat float32 vectors do not "fit comfortably" and the index is compressed.
DEFAULT_MEMORY_SHARE = 0.25
# A compressed index searches this many times k candidates, then re-ranks them with the exact vectors.
# Starting points; the self-check doubles them with nprobe (up to MAX_RERANK_FACTOR). Product-quantised
# codes are coarser than 8-bit scalar ones, so ivf_pq starts wider.
RERANK_FACTOR = 4
PQ_RERANK_FACTOR = 8
MAX_RERANK_FACTOR = 64
PQ_BITS = 8  # 256 centroids per sub-quantiser: one byte per sub-vector
PQ_MIN_ROWS = 1_000  # PQ k-means needs more points than its 256 centroids; below this ivf_pq is refused
PQ_TRAIN_ROWS = 65_536  # at least this many training vectors for ivf_pq (FAISS uses <= 256 per PQ centroid)
# IndexIDMap2 keeps an id array (8 B) and an id -> row hash map: measured 51-65 B per row with FAISS 1.15
# at 500k rows. Compressed indexes store the ids in their inverted lists instead and do without it.
ID_MAP2_ROW_BYTES = 60
RERANK_SLICE = 262_144  # candidate vectors gathered from disk at once when re-ranking
# Below this population exact search is fast enough (a few ms per query) and has recall 1.
AUTO_EXACT_MAX_ROWS = 50_000
TARGET_RECALL = 0.95
SELF_CHECK_K = 10
MAX_EF_SEARCH = 4096  # HNSW tuning stops here (no exhaustive setting)
EMBEDDINGS_HINT = "Build it with `lookalike dbt build` after `lookalike train` (the customer_embeddings model)."


@dataclass
class IndexManifest:
    index_version: str
    index_type: str
    params: dict
    row_count: int
    dim: int
    model_version: str
    built_at: str
    build_seconds: float
    reason: str
    self_check: dict = field(default_factory=dict)
    memory: dict = field(default_factory=dict)  # bytes: budget, flat vectors, the index in RAM (see memory_estimate)
    # The scored_generation of customer_embedding_inputs this index covers (refresh), None when built
    # from embeddings scored elsewhere: refresh then rebuilds rather than updates it.
    embeddings_generation: int | None = None
    metric: str = "inner_product_on_l2_normalised (cosine)"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


class ExactVectors:
    """The exact float32 vectors beside a compressed index, with the sorted ids and their rows, all
    memory-mapped: the OS pages in only what a lookup touches, so they cost disk, not RAM."""

    def __init__(self, vectors: np.ndarray, sorted_ids: np.ndarray, order: np.ndarray):
        self.vectors, self.sorted_ids, self.order = vectors, sorted_ids, order

    @classmethod
    def from_row_order(cls, vectors: np.ndarray, ids: np.ndarray) -> "ExactVectors":
        """`ids[i]` is the customer of `vectors[i]`; the id lookup is built in RAM (16 B a row)."""
        order = np.argsort(ids, kind="stable")
        return cls(vectors, ids[order], order)

    @classmethod
    def open(cls, index_dir: Path, rows: int) -> "ExactVectors":
        try:
            vectors, ids = np.load(index_dir / VECTORS_FILE, mmap_mode="r"), np.load(index_dir / IDS_FILE, mmap_mode="r")
            # No rows file: built before the lookup was stored; its ids are in row order.
            order = np.load(index_dir / ROWS_FILE, mmap_mode="r") if (index_dir / ROWS_FILE).exists() else None
        except (OSError, ValueError) as exc:
            raise LookalikeError(f"The exact vectors of the compressed index in {index_dir} are missing or corrupt ({exc}). "
                                 "Rebuild it with `lookalike build-index`.") from exc
        if len(vectors) != rows or len(ids) != rows or (order is not None and len(order) != rows):
            raise LookalikeError(f"The exact vectors in {index_dir} ({len(vectors):,} rows) do not match the index manifest "
                                 f"({rows:,} rows). Rebuild it with `lookalike build-index`.")
        return cls.from_row_order(vectors, np.asarray(ids)) if order is None else cls(vectors, ids, order)

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Vectors of `ids` (all must exist), in the order given."""
        ids = np.asarray(ids, dtype=np.int64)
        where = np.searchsorted(self.sorted_ids, ids).clip(0, len(self.sorted_ids) - 1)
        if not np.array_equal(self.sorted_ids[where], ids):
            raise LookalikeError("Some customer ids are not in the index's exact vectors. Rebuild it with `lookalike build-index`.")
        positions = self.order[where]
        # Reading the memory map in row order is mostly sequential on disk.
        by_row = np.argsort(positions, kind="stable")
        out = np.empty((len(ids), self.vectors.shape[1]), dtype=np.float32)
        out[by_row] = self.vectors[positions[by_row]]
        return out


@dataclass
class LoadedIndex:
    index: faiss.Index
    manifest: IndexManifest
    path: Path
    exact: ExactVectors | None = None

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (similarities, customer ids) per query; ids are -1 where fewer than k were found.

        A compressed index (ivf_sq8, ivf_pq) searches rerank_factor*k candidates by their codes and
        returns the best k by exact cosine, so similarities are exact.
        """
        queries = normalise(queries)
        k = min(k, self.manifest.row_count)
        if self.exact is None:
            apply_search_params(self.index, self.manifest, k)
            return self.index.search(queries, k)
        wide = min(self.manifest.row_count, self.manifest.params.get("rerank_factor", RERANK_FACTOR) * k)
        apply_search_params(self.index, self.manifest, wide)
        sims = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        step = max(1, 1_000_000 // wide)  # bound the candidate vectors gathered at once (~0.5 GB at dim 128)
        for first in range(0, len(queries), step):
            block = queries[first : first + step]
            _, candidates = self.index.search(block, wide)
            for row, (query, found) in enumerate(zip(block, candidates)):
                found = found[found >= 0]
                # In slices: a 5% audience of 100M is 20M candidates, 10 GB of vectors at once.
                exact = np.concatenate([self.exact.lookup(found[i : i + RERANK_SLICE]) @ query
                                        for i in range(0, len(found), RERANK_SLICE)] or [np.empty(0, np.float32)])
                best = np.argsort(-exact, kind="stable")[:k]
                sims[first + row, : len(best)] = exact[best]
                ids[first + row, : len(best)] = found[best]
        return sims, ids

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """Stored (L2-normalised) vectors of these customers: exact ones when the index is compressed."""
        if self.exact is not None:
            return self.exact.lookup(ids)
        return self.index.reconstruct_batch(np.asarray(ids, dtype=np.int64))


def flat_in_memory(batches: Iterable[tuple[np.ndarray, np.ndarray]], dim: int, model_version: str,
                   reason: str = "exact search in memory") -> LoadedIndex:
    """Exact search over (customer ids, L2-normalised vectors) batches, held in memory and shaped like a
    loaded index (no files, no self-check): the exact baseline benchmarks compare the built index with."""
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    for ids, vectors in batches:
        index.add_with_ids(vectors, ids)
    manifest = IndexManifest(index_version="flat-in-memory", index_type="flat", params={}, row_count=int(index.ntotal),
                             dim=dim, model_version=model_version, built_at="", build_seconds=0.0, reason=reason)
    return LoadedIndex(index=index, manifest=manifest, path=Path("(memory)"))


def model_version_of_embeddings(con) -> str:
    """The one model_version customer_embeddings holds, refusing a missing, empty or mixed-version table."""
    require_table(con, "customer_embeddings", EMBEDDINGS_HINT)
    versions = [row[0] for row in con.execute("select distinct model_version from customer_embeddings").fetchall()]
    if len(versions) != 1:
        raise LookalikeError(
            f"customer_embeddings must hold exactly one model_version, found {versions or 'none (empty table)'}. "
            "Re-run the customer_embeddings model."
        )
    return versions[0]


def read_embeddings(db_path: Path, batch_size: int = 100_000, progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """(ids int64, L2-normalised float32 vectors, model_version), streamed from the warehouse in Arrow batches."""
    with connection(db_path, read_only=True) as con:
        version = model_version_of_embeddings(con)
        total = con.execute("select count(*) from customer_embeddings").fetchall()[0][0]
        reader = con.sql("select customer_id, embedding from customer_embeddings order by customer_id").to_arrow_reader(batch_size)
        ids, vectors, done = [], [], 0
        for batch in reader:
            batch_ids, batch_vectors = ids_and_vectors(batch)
            ids.append(batch_ids)
            vectors.append(batch_vectors)
            done += batch.num_rows
            if progress:
                progress(f"  read {done:,}/{total:,} embeddings")
    return np.concatenate(ids), normalise(np.concatenate(vectors)), version


def embeddings_summary(db_path: Path) -> tuple[int, int, str]:
    """(rows, dim, model_version) of customer_embeddings, refusing an empty or mixed-version table."""
    with connection(db_path, read_only=True) as con:
        version = model_version_of_embeddings(con)
        rows, dim = con.execute("select count(*), any_value(len(embedding)) from customer_embeddings").fetchall()[0]
    return int(rows), int(dim), version


def iter_embeddings(db_path: Path, batch_size: int = 100_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, L2-normalised vectors) batches in the table's stored order (deterministic; no sort of the whole table)."""
    with connection(db_path, read_only=True) as con:
        reader = con.sql("select customer_id, embedding from customer_embeddings").to_arrow_reader(batch_size)
        for batch in reader:
            ids, vectors = ids_and_vectors(batch)
            yield ids, normalise(vectors)


def parse_memory_budget(budget: str | int | None, total_ram: int | None = None) -> int:
    """'25%' of RAM, '6GiB', '500MB', or bytes -> bytes. None -> DEFAULT_MEMORY_SHARE of RAM."""
    import psutil

    total_ram = total_ram or psutil.virtual_memory().total
    if budget is None:
        return int(total_ram * DEFAULT_MEMORY_SHARE)
    text = str(budget).strip().lower().replace(" ", "")
    units = {"%": None, "tib": 2**40, "gib": 2**30, "mib": 2**20, "kib": 2**10, "tb": 10**12, "gb": 10**9,
             "mb": 10**6, "kb": 10**3, "b": 1, "": 1}
    for unit, factor in units.items():
        number = text[: len(text) - len(unit)] if unit else text
        if text.endswith(unit):
            try:
                value = float(number)
            except ValueError:
                continue
            if value <= 0 or (unit == "%" and value > 100):
                break
            return int(total_ram * value / 100) if unit == "%" else int(value * factor)
    raise ParameterError(f"{{memory_budget}} {budget!r}: give a share of RAM (25%) or a size (6GiB, 500MB).", "memory_budget")


def default_nlist(rows: int) -> int:
    # FAISS suggests 4-16*sqrt(n) lists; 2*sqrt(n) halves the add and quarters k-means training, and the
    # self-check raises nprobe to keep recall (at 1M: 2,000 lists, nprobe 8-16). At least 40 points per list.
    return max(1, min(int(2 * math.sqrt(rows)), rows // 40))


def default_pq_m(dim: int) -> int:
    """Sub-quantisers for ivf_pq: 4 dimensions each (32 bytes a vector at dim 128), m dividing dim."""
    return max([m for m in range(1, dim + 1) if dim % m == 0 and dim // m >= 4] or [1])


def check_pq_m(pq_m: int, dim: int) -> None:
    if pq_m <= 0 or dim % pq_m:
        divisors = [m for m in range(1, dim + 1) if dim % m == 0]
        raise ParameterError(f"{{pq_m}} {pq_m} must divide the embedding dimension {dim} (one of {divisors}).", "pq_m")


def make_index(index_type: str, dim: int, rows: int, nlist: int | None, m: int | None, ef_construction: int,
               pq_m: int | None = None) -> tuple[faiss.Index, dict]:
    if index_type == "flat":
        return faiss.IndexFlatIP(dim), {}
    if index_type in IVF_TYPES:
        nlist = nlist or default_nlist(rows)
        quantizer = faiss.IndexFlatIP(dim)
        if index_type == "ivf_sq8":
            return (faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT),
                    {"nlist": nlist, "code_bytes": dim, "rerank_factor": RERANK_FACTOR})
        if index_type == "ivf_pq":
            pq_m = pq_m or default_pq_m(dim)
            check_pq_m(pq_m, dim)
            if rows < PQ_MIN_ROWS:
                raise ParameterError(f"ivf_pq needs at least {PQ_MIN_ROWS:,} vectors to train its codebooks ({rows:,} here); "
                                     "use {index_type} flat or ivf_sq8.", "index_type")
            return (faiss.IndexIVFPQ(quantizer, dim, nlist, pq_m, PQ_BITS, faiss.METRIC_INNER_PRODUCT),
                    {"nlist": nlist, "pq_m": pq_m, "code_bytes": pq_m * PQ_BITS // 8, "rerank_factor": PQ_RERANK_FACTOR})
        return faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT), {"nlist": nlist}
    if index_type == "hnsw":
        m = m or 32
        inner = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = ef_construction
        return inner, {"m": m, "ef_construction": ef_construction}
    raise LookalikeError(f"Unknown index type {index_type!r}; choose one of {', '.join(INDEX_TYPES)}.")


def apply_search_params(index: faiss.Index, manifest: IndexManifest, k: int) -> None:
    """Set nprobe/efSearch from the manifest, widened for large k so the search can return k results."""
    params = manifest.params
    if manifest.index_type in IVF_TYPES:
        # Probe enough lists to hold ~4x k vectors, never fewer than the self-checked nprobe.
        per_list = max(1.0, manifest.row_count / params["nlist"])
        faiss.extract_index_ivf(index).nprobe = int(min(params["nlist"], max(params["nprobe"], math.ceil(4 * k / per_list))))
    elif manifest.index_type == "hnsw":
        faiss.downcast_index(index.index).hnsw.efSearch = int(max(params["ef_search"], k))


def per_query_recall(truth_ids: np.ndarray, found_ids: np.ndarray) -> np.ndarray:
    return np.array([len(np.intersect1d(t, f[f >= 0])) for t, f in zip(truth_ids, found_ids)]) / truth_ids.shape[1]


def recall_at_k(truth_ids: np.ndarray, found_ids: np.ndarray) -> float:
    return float(per_query_recall(truth_ids, found_ids).mean())


# One-sided 95% normal quantile: the self-check asks that recall's lower confidence bound, not its
# sample mean, reach the target. 500 random customers are not the seeds a user will bring: at 10M
# a mean of 0.953 on them came out at 0.940 on a planted segment's customers.
CONFIDENCE_Z = 1.645


def lower_confidence_bound(per_query: np.ndarray) -> float:
    """Mean recall minus CONFIDENCE_Z standard errors over the queries."""
    if len(per_query) < 2:
        return float(per_query.mean())
    return float(per_query.mean() - CONFIDENCE_Z * per_query.std(ddof=1) / math.sqrt(len(per_query)))


TIE_TOLERANCE = 1e-6


def recall_with_ties(truth_sims: np.ndarray, found_ids: np.ndarray, found_sims: np.ndarray) -> float:
    """recall@k where a neighbour as similar as the true k-th (within TIE_TOLERANCE) counts as found.

    Customers with identical features have identical embeddings: 8% of sampled customers at 1M have
    ten or more exact duplicates, and which ten of them exact search lists is arbitrary. `found_sims`
    must be exact similarities (every index here returns them; compressed ones after re-ranking).
    """
    return float(per_query_recall_with_ties(truth_sims, found_ids, found_sims).mean())


def per_query_recall_with_ties(truth_sims: np.ndarray, found_ids: np.ndarray, found_sims: np.ndarray) -> np.ndarray:
    kth = truth_sims[:, -1:] - TIE_TOLERANCE
    hits = np.minimum(((found_sims >= kth) & (found_ids >= 0)).sum(axis=1), truth_sims.shape[1])
    return hits / truth_sims.shape[1]


class ExactTopK:
    """Running exact top-k of a few query vectors over a population seen batch by batch: the
    self-check's ground truth without holding the population in memory."""

    def __init__(self, queries: np.ndarray, k: int):
        self.queries, self.k = queries, k
        self.sims = np.full((len(queries), k), -np.inf, dtype=np.float32)
        self.ids = np.full((len(queries), k), -1, dtype=np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        sims, rows = faiss.knn(self.queries, vectors, min(self.k, len(vectors)), metric=faiss.METRIC_INNER_PRODUCT)
        all_sims = np.concatenate([self.sims, sims], axis=1)
        all_ids = np.concatenate([self.ids, ids[rows]], axis=1)
        best = np.argsort(-all_sims, axis=1, kind="stable")[:, : self.k]
        self.sims, self.ids = np.take_along_axis(all_sims, best, 1), np.take_along_axis(all_ids, best, 1)


def search_knob(manifest: IndexManifest) -> tuple[str, int]:
    """The search parameter that trades speed for recall, and its ceiling (nprobe = nlist is exhaustive)."""
    if manifest.index_type in IVF_TYPES:
        return "nprobe", manifest.params["nlist"]
    return "ef_search", MAX_EF_SEARCH


def widened(params: dict, key: str, ceiling: int) -> dict:
    """`params` with `key` doubled (up to `ceiling`) and a compressed index's rerank_factor with it."""
    wider = {**params, key: min(2 * params[key], ceiling)}
    if params.get("rerank_factor"):
        # Codes blur near-ties among close neighbours: re-rank more candidates as well as probing more lists.
        wider["rerank_factor"] = min(MAX_RERANK_FACTOR, 2 * params["rerank_factor"])
    return wider


def per_query_self_check(index_type: str, truth_ids: np.ndarray, truth_sims: np.ndarray, ids: np.ndarray,
                         sims: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(recall by id, recall with ties, the one that judges the index) per query.

    Recall with ties judges every index type: a neighbour as similar as the true k-th is as good an
    answer. Customers with the same features have the same vector (the ~3% who never ordered, among
    others), so which of the duplicates an index returns depends on its list order, not on its quality.
    This holds for compressed indexes (re-ranked candidates in code order), for IVF (lists scanned in
    probe order), and for an index updated in place (re-scored vectors appended to their lists). Judged
    by id, a 1M index reached recall 0.957 with every list probed, so tuning probed every list for every
    later search."""
    by_id, with_ties = per_query_recall(truth_ids, ids), per_query_recall_with_ties(truth_sims, ids, sims)
    return by_id, with_ties, with_ties


def tune(loaded: LoadedIndex, queries: np.ndarray, truth: "ExactTopK | None", progress: Progress) -> float:
    """Raise nprobe / efSearch until the self-check recall@10's lower confidence bound reaches
    TARGET_RECALL (or exact search); returns the mean recall (the bound is in manifest.self_check)."""
    manifest = loaded.manifest
    if manifest.index_type == "flat":
        return 1.0
    key, ceiling = search_knob(manifest)
    manifest.params[key] = min(manifest.params.get(key) or (8 if key == "nprobe" else 32), ceiling)
    while True:
        sims, ids = loaded.search(queries, SELF_CHECK_K)
        by_id, with_ties, per_query = per_query_self_check(manifest.index_type, truth.ids, truth.sims, ids, sims)
        recall, lower = float(per_query.mean()), lower_confidence_bound(per_query)
        manifest.self_check.update(recall_by_id=round(float(by_id.mean()), 4), recall_with_ties=round(float(with_ties.mean()), 4),
                                   recall_lower_bound=round(lower, 4))
        rerank = manifest.params.get("rerank_factor")
        progress(f"  self-check {key}={manifest.params[key]}" + (f", rerank_factor={rerank}" if rerank else "")
                 + f": recall@{SELF_CHECK_K}={recall:.3f} (95% lower bound {lower:.3f})")
        if lower >= TARGET_RECALL or manifest.params[key] >= ceiling:
            return recall
        manifest.params.update(widened(manifest.params, key, ceiling))


def human_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def choose_index_type(index_type: str, rows: int, dim: int, budget: int, nlist: int | None = None,
                      pq_m: int | None = None) -> tuple[str, str]:
    """The index `auto` picks for this population and memory budget, and why (recorded in the manifest).

    Flat float32 vectors within the budget: exact search (small populations) or IVF. Over it: the
    compressed index whose estimated RAM fits, ivf_sq8 first (finer codes), else ivf_pq.
    """
    flat_bytes = rows * dim * 4
    fits = f"flat float32 vectors {human_bytes(flat_bytes)} {'<=' if flat_bytes <= budget else '>'} memory budget {human_bytes(budget)}"
    if index_type != "auto":
        return index_type, f"requested index type {index_type} ({fits})"
    if flat_bytes <= budget:
        if rows <= AUTO_EXACT_MAX_ROWS:
            return "flat", f"auto: {rows:,} rows <= {AUTO_EXACT_MAX_ROWS:,}, exact search is fast enough and has recall 1 ({fits})"
        return "ivf", (f"auto: {rows:,} rows > {AUTO_EXACT_MAX_ROWS:,}, IVF with ~2*sqrt(n) lists ({fits}); "
                       f"nprobe raised until self-check recall@{SELF_CHECK_K} (95% lower bound) >= {TARGET_RECALL}")
    params = {"nlist": nlist or default_nlist(rows), "pq_m": pq_m or default_pq_m(dim)}
    sq8 = memory_estimate("ivf_sq8", rows, dim, params, budget)["index_ram_bytes"]
    tuning = (f"rerank_factor*k candidates re-ranked by exact vectors memory-mapped from disk; nprobe and "
              f"rerank_factor raised until self-check recall@{SELF_CHECK_K} (95% lower bound) >= {TARGET_RECALL}")
    if sq8 <= budget or rows < PQ_MIN_ROWS:
        return "ivf_sq8", (f"auto: {fits}, so compressed: ivf_sq8, IVF with 8-bit scalar codes ({dim} B a vector), "
                           f"~{human_bytes(sq8)} in RAM {'<=' if sq8 <= budget else '> (too few rows for ivf_pq)'} budget; {tuning}")
    pq = memory_estimate("ivf_pq", rows, dim, params, budget)["index_ram_bytes"]
    over = "" if pq <= budget else " (still over the budget: the smallest index here; lower pq_m or raise the memory budget)"
    return "ivf_pq", (f"auto: {fits}, and ivf_sq8 would take ~{human_bytes(sq8)} in RAM > budget, so ivf_pq: IVF with "
                      f"product-quantised codes ({params['pq_m']} B a vector), ~{human_bytes(pq)} in RAM{over}; {tuning}")


def memory_estimate(index_type: str, rows: int, dim: int, params: dict, budget: int) -> dict:
    """Bytes each part takes in RAM once loaded (and on disk for the exact vectors of a compressed index).

    Per row: flat and hnsw hold float32 vectors (+ HNSW links) and an IndexIDMap2; ivf adds its list
    ids and the direct map `load_index` makes for reconstruct(); compressed indexes hold only codes
    and list ids (customer ids), their exact vectors and id lookup are memory-mapped from disk.
    """
    centroids = params.get("nlist", 0) * dim * 4
    if index_type == "ivf_sq8":
        resident = rows * (dim + 8) + centroids + 2 * dim * 4  # codes + ids; per-dimension min and range
    elif index_type == "ivf_pq":
        m = params.get("pq_m") or default_pq_m(dim)
        resident = rows * (m * PQ_BITS // 8 + 8) + centroids + (2**PQ_BITS) * dim * 4  # codes + ids; codebooks
    elif index_type == "hnsw":
        resident = rows * (dim * 4 + 2 * params["m"] * 4 + ID_MAP2_ROW_BYTES)  # level-0 links dominate
    elif index_type == "ivf":
        resident = rows * (dim * 4 + 8 + 8 + ID_MAP2_ROW_BYTES) + centroids
    else:
        resident = rows * (dim * 4 + ID_MAP2_ROW_BYTES)
    estimate = {"budget_bytes": budget, "flat_vectors_bytes": rows * dim * 4, "index_ram_bytes": resident}
    if index_type in COMPRESSED_TYPES:
        estimate["exact_vectors_disk_bytes"] = rows * (dim * 4 + 16)  # vectors + sorted ids + their rows
    return estimate


def collect_rows(db_path: Path, wanted: np.ndarray, batch_size: int, rows: int, progress: Progress) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of the rows at sorted positions `wanted` of the stored order, in one streaming pass."""
    ids, vectors, offset, started, last_report = [], [], 0, time.perf_counter(), 0.0
    for batch_ids, batch_vectors in iter_embeddings(db_path, batch_size):
        local = wanted[(wanted >= offset) & (wanted < offset + len(batch_ids))] - offset
        ids.append(batch_ids[local])
        vectors.append(batch_vectors[local])
        offset += len(batch_ids)
        elapsed = time.perf_counter() - started
        if elapsed - last_report >= 2.0 or offset == rows:
            last_report, rate = elapsed, offset / max(elapsed, 1e-9)
            progress(f"  sampled from {offset:,}/{rows:,} vectors ({rate:,.0f}/s, ETA {(rows - offset) / rate:.0f}s)")
    return np.concatenate(ids), np.ascontiguousarray(np.concatenate(vectors))


def build_index(
    db_path: Path,
    index_dir: Path,
    index_type: str = "auto",
    nlist: int | None = None,
    nprobe: int | None = None,
    m: int | None = None,
    ef_search: int | None = None,
    ef_construction: int = 80,
    check_queries: int = 500,
    seed: int = 0,
    batch_size: int = 100_000,
    memory_budget: str | int | None = None,
    pq_m: int | None = None,
    progress: Progress = print,
    embeddings_generation: int | None = None,
) -> IndexManifest:
    """Build the index over customer_embeddings, self-check recall@10, write index + manifest atomically.

    `auto` uses exact search up to AUTO_EXACT_MAX_ROWS rows and IVF above that, with nprobe
    raised until the self-check recall@10 is at least TARGET_RECALL; when the flat float32
    vectors exceed `memory_budget` (default 25% of RAM) it compresses them (ivf_sq8, or ivf_pq
    when even ivf_sq8 would exceed the budget) and re-ranks with exact vectors kept on disk.
    Explicit nprobe / ef_search are starting points for the same tuning. Vectors are streamed: IVF
    trains on a sample, then adds batch by batch, and the self-check's exact neighbours are merged
    batch by batch too.
    """
    if index_type not in INDEX_TYPES:
        raise LookalikeError(f"Unknown index type {index_type!r}; choose one of {', '.join(INDEX_TYPES)}.")
    from lookalike_cli.settings import writable_folder

    start = time.perf_counter()
    rows, dim, model_version = embeddings_summary(db_path)  # first: a missing warehouse creates no folder
    writable_folder(Path(index_dir), "indexes")  # fail before minutes of work, not at the write
    budget = parse_memory_budget(memory_budget)
    if pq_m is not None:
        check_pq_m(pq_m, dim)
    chosen, reason = choose_index_type(index_type, rows, dim, budget, nlist, pq_m)
    progress(f"customer_embeddings in {db_path}: {rows:,} vectors of dim {dim}; index {chosen}")
    inner, params = make_index(chosen, dim, rows, nlist, m, ef_construction, pq_m)
    rng = np.random.default_rng(seed)
    check_rows = np.sort(rng.choice(rows, size=min(check_queries, rows), replace=False))
    # k-means on ~40 points per list (FAISS wants >= 39) is as good as on everything, and much faster.
    # PQ codebooks (256 centroids per sub-quantiser) want more points than that.
    train_size = max(40 * params["nlist"], PQ_TRAIN_ROWS if chosen == "ivf_pq" else 0) if chosen in IVF_TYPES else 0
    train_rows = np.sort(rng.choice(rows, size=min(rows, train_size), replace=False))
    progress(f"Sampling {len(check_rows):,} self-check queries" + (f" and {len(train_rows):,} training vectors" if len(train_rows) else ""))
    sample_ids, sample_vectors = collect_rows(db_path, np.union1d(check_rows, train_rows), batch_size, rows, progress)
    sample_positions = np.union1d(check_rows, train_rows)
    queries = sample_vectors[np.isin(sample_positions, check_rows)]
    if chosen in IVF_TYPES:
        params["nprobe"] = nprobe or 8
        codes = {"ivf_sq8": " and 8-bit codes", "ivf_pq": f" and {params.get('pq_m')} PQ codebooks"}.get(chosen, "")
        progress(f"Training IVF coarse quantizer{codes}: "
                 f"{params['nlist']} lists on {len(train_rows):,} vectors")
        inner.cp.seed = seed
        inner.train(sample_vectors[np.isin(sample_positions, train_rows)])
    elif chosen == "hnsw":
        params["ef_search"] = ef_search or 32
    del sample_vectors, sample_ids
    # Compressed: the inverted lists hold the customer ids (8 B a row); IndexIDMap2's id -> row map
    # (~50 B a row) would cost more than the codes, and the exact vectors serve lookups by id.
    index = inner if chosen in COMPRESSED_TYPES else faiss.IndexIDMap2(inner)

    index_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(index_dir)  # of a build-index killed before its swap
    tmp = {name: index_dir / f".{name}.{os.getpid()}.tmp" for name in EXACT_FILES}
    exact_store = None
    if chosen in COMPRESSED_TYPES:
        exact_store = (np.lib.format.open_memmap(tmp[VECTORS_FILE], mode="w+", dtype=np.float32, shape=(rows, dim)),
                       np.lib.format.open_memmap(tmp[IDS_FILE], mode="w+", dtype=np.int64, shape=(rows,)))
    truth = ExactTopK(queries, SELF_CHECK_K) if chosen != "flat" else None
    done, added_at, last_report = 0, time.perf_counter(), 0.0
    try:
        for ids, vectors in iter_embeddings(db_path, batch_size):
            index.add_with_ids(vectors, ids)
            if truth is not None:
                truth.add(ids, vectors)
            if exact_store is not None:
                exact_store[0][done : done + len(ids)] = vectors
                exact_store[1][done : done + len(ids)] = ids
            done += len(ids)
            elapsed = time.perf_counter() - added_at
            if elapsed - last_report >= 2.0 or done == rows:
                last_report = elapsed
                rate = done / max(elapsed, 1e-9)
                progress(f"  added {done:,}/{rows:,} vectors to the {chosen} index ({rate:,.0f}/s, ETA {(rows - done) / rate:.0f}s)")
        if done != rows:
            raise LookalikeError(f"customer_embeddings changed while the index was built ({done:,} rows read, {rows:,} expected). Rebuild.")

        built_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        manifest = IndexManifest(
            index_version=f"{chosen}-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}-{model_version}",
            index_type=chosen, params=params, row_count=rows, dim=dim, model_version=model_version,
            built_at=built_at, build_seconds=0.0, reason=reason, embeddings_generation=embeddings_generation,
        )
        exact = None
        if exact_store is not None:
            exact_store[0].flush()
            exact = ExactVectors.from_row_order(exact_store[0], np.array(exact_store[1]))
            # The ids file holds them sorted, beside the row of each: lookups by id memory-map both.
            with open(tmp[ROWS_FILE], "wb") as rows_file:  # np.save(path) would append ".npy" to the temp name
                np.save(rows_file, exact.order)
            exact_store[1][:] = exact.sorted_ids
            exact_store[1].flush()
        loaded = LoadedIndex(index=index, manifest=manifest, path=index_dir / INDEX_FILE, exact=exact)
        recall = tune(loaded, queries, truth, progress)
        manifest.self_check = {"k": SELF_CHECK_K, "queries": min(check_queries, rows), "recall": round(recall, 4),
                               "recall_by_id": manifest.self_check.get("recall_by_id", 1.0),
                               "recall_with_ties": manifest.self_check.get("recall_with_ties", 1.0),
                               "recall_lower_bound": manifest.self_check.get("recall_lower_bound", 1.0),
                               "criterion": "recall_with_ties",
                               "target": TARGET_RECALL}
        manifest.self_check["passed"] = manifest.self_check["recall_lower_bound"] >= TARGET_RECALL
        manifest.memory = memory_estimate(chosen, rows, dim, params, budget)
        if not manifest.self_check["passed"]:
            progress(f"Warning: self-check recall@{SELF_CHECK_K} {recall:.3f} (95% lower bound "
                     f"{manifest.self_check['recall_lower_bound']:.3f}) is below {TARGET_RECALL}; "
                     "use index type auto or raise nlist / m / pq_m.")
        manifest.build_seconds = round(time.perf_counter() - start, 2)
        del exact_store, exact, loaded
        write_index(index, manifest, index_dir, exact_files={name: path for name, path in tmp.items() if path.exists()})
    finally:
        for path in tmp.values():
            path.unlink(missing_ok=True)
    progress(f"Index {manifest.index_version}: {chosen} {params}, {rows:,} rows, recall@{SELF_CHECK_K} "
             f"{recall:.3f}, RAM ~{human_bytes(manifest.memory['index_ram_bytes'])}, built in {manifest.build_seconds:.1f}s ({reason})")
    return manifest


# Index types refresh updates in place (IndexIDMap2 over them). HNSW cannot replace a vector, and the
# compressed types keep their exact vectors in row-ordered files beside the index: both are rebuilt.
UPDATABLE_TYPES = ("flat", "ivf")
# Above this share of rows changed, refresh rebuilds instead: the IVF lists were trained and nprobe
# tuned on the older vectors, and a rebuild re-does both (the self-check only re-measures them then).
# Measured (benchmarks/RESULTS.md, bench_index_update: 200k vectors, IVF 894 lists, re-scored vectors
# moved halfway to another customer's): recall@10 on the re-scored customers after an update 0.921 /
# 0.909 / 0.908 at 5 / 15 / 30% re-scored, a rebuild's 0.941 / 0.945 at the same nprobe (5, 15%) and
# 0.972 at 30%, where it re-tuned nprobe to 64; the update takes 6-12% of a rebuild's time. Up to 15%
# the update loses ~1 point against 5% and 2-4 against a rebuild; by 30% a rebuild is 6 points ahead:
# the line is drawn between, at 20% (the 1%-new-lines day re-scores ~14% of customers).
MAX_UPDATE_SHARE = 0.20
# Re-scored vectors sampled after an update: at least TARGET_RECALL of them must find themselves (or an
# identical vector) through the tuned nprobe, or refresh rebuilds. The build's recall@10 is kept beside it.
UPDATE_CHECK_QUERIES = 500


def update_index(db_path: Path, index_dir: Path, progress: Progress = print) -> tuple[IndexManifest | None, str]:
    """Bring the index up to date with the rows of customer_embeddings re-scored since it was built, in place.

    Returns (the new manifest, what was done) or (None, why it must be rebuilt instead). Customers re-scored
    since the manifest's embeddings_generation (customer_embedding_inputs.scored_generation) replace their
    vector where it is: IVF's update_vectors moves it to its new list under the same internal id, so
    IndexIDMap2's id map stays valid. IndexIDMap2 over IVF cannot remove a vector (IVF keeps its internal
    ids, the id map would shift), so customers who left customer_features mean a rebuild; a flat index
    removes and re-adds. Written like a build: index file then manifest, each by temp file + os.replace.
    """
    from lookalike_cli.model.rescoring import INPUTS_TABLE

    start = time.perf_counter()
    try:
        manifest = read_manifest(index_dir)
    except LookalikeError:
        return None, "no readable index manifest yet"
    if manifest.index_type not in UPDATABLE_TYPES:
        return None, f"a {manifest.index_type} index cannot be updated in place (only {', '.join(UPDATABLE_TYPES)})"
    if manifest.embeddings_generation is None:
        return None, "the index was built from embeddings scored outside refresh"
    with connection(db_path, read_only=True) as con:
        version = model_version_of_embeddings(con)
        if version != manifest.model_version:
            return None, f"the model changed ({manifest.model_version} -> {version})"
        require_table(con, INPUTS_TABLE, "Run `lookalike refresh`: it scores customers and records their inputs.")
        rows, oldest = con.execute(f"select count(*), min(scored_generation) from {INPUTS_TABLE}").fetchall()[0]
        if rows != con.execute("select count(*) from customer_embeddings").fetchall()[0][0]:
            return None, f"{INPUTS_TABLE} does not describe customer_embeddings (row counts differ)"
        if oldest is None or manifest.embeddings_generation < oldest:
            return None, "every customer was re-scored since the index was built"
        changed = con.sql(f"""select e.customer_id, e.embedding from customer_embeddings e
                              semi join (select customer_id from {INPUTS_TABLE} where scored_generation > ?) i using (customer_id)""",
                          params=[manifest.embeddings_generation]).to_arrow_table()
        generation = con.execute(f"select max(scored_generation) from {INPUTS_TABLE}").fetchall()[0][0]
    share = changed.num_rows / max(rows, 1)
    what = f"{changed.num_rows:,} of {rows:,} vectors re-scored ({share:.2%})"
    if share > MAX_UPDATE_SHARE:
        return None, f"{what} > {MAX_UPDATE_SHARE:.0%}: a rebuild re-trains the IVF lists and re-tunes nprobe"
    path = index_dir / INDEX_FILE
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        return None, f"the index file is unreadable ({str(exc).splitlines()[0]})"
    indexed_ids = faiss.vector_to_array(index.id_map)
    if index.ntotal != manifest.row_count:
        return None, "the index file does not match its manifest"
    ids, vectors = ids_and_vectors(changed.combine_chunks().to_batches()[0]) if changed.num_rows else (
        np.empty(0, np.int64), np.empty((0, manifest.dim), np.float32))
    vectors = normalise(vectors)
    # Each re-scored customer's internal id (its position in the id map), or not indexed yet (new).
    order = np.argsort(indexed_ids, kind="stable")
    where = np.searchsorted(indexed_ids, ids, sorter=order).clip(0, max(len(indexed_ids) - 1, 0))
    known = (indexed_ids[order[where]] == ids) if len(indexed_ids) else np.zeros(len(ids), bool)
    if len(indexed_ids) + int((~known).sum()) != rows:
        return None, f"{len(indexed_ids) + int((~known).sum()) - rows:,} indexed customers left customer_embeddings " \
                     "(IndexIDMap2 cannot remove them in place)"
    progress(f"Updating index {manifest.index_version} in place: {int(known.sum()):,} vectors replaced, "
             f"{int((~known).sum()):,} added")
    if manifest.index_type == "ivf":
        inner = faiss.extract_index_ivf(index)
        inner.make_direct_map(True)  # update_vectors finds each internal id's list through it
        if known.any():
            inner.update_vectors(order[where[known]].astype(np.int64), np.ascontiguousarray(vectors[known]))
        inner.make_direct_map(False)  # stored without one, as a build writes it (load_index adds it)
    elif known.any():
        index.remove_ids(faiss.IDSelectorBatch(ids[known]))  # IndexFlat shifts its rows, the id map with it
        index.add_with_ids(np.ascontiguousarray(vectors[known]), ids[known])
    if (~known).any():
        index.add_with_ids(np.ascontiguousarray(vectors[~known]), ids[~known])

    updated = IndexManifest(**{**asdict(manifest), "row_count": int(index.ntotal), "embeddings_generation": int(generation)})
    updated.index_version = f"{manifest.index_type}-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}-{version}"
    updated.built_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    found = updated_rows_found(LoadedIndex(index=index, manifest=updated, path=path), vectors)
    if found < TARGET_RECALL:
        return None, f"after an update only {found:.1%} of the re-scored vectors find themselves through nprobe " \
                     f"{manifest.params.get('nprobe')}: rebuilding re-tunes it"
    updated.self_check = {**manifest.self_check, "updated_rows_found": round(found, 4)}
    updated.reason = f"updated in place from {manifest.index_version} ({what}); built: {manifest.reason}"
    updated.build_seconds = round(time.perf_counter() - start, 2)
    remove_stale_temp_files(index_dir)
    write_index(index, updated, index_dir)
    return updated, f"updated in place: {what} <= {MAX_UPDATE_SHARE:.0%}"


def updated_rows_found(loaded: LoadedIndex, vectors: np.ndarray, seed: int = 0) -> float:
    """Share of (a sample of) the re-scored vectors whose top hit is as similar as themselves (ties count:
    customers with identical inputs have identical vectors)."""
    if len(vectors) == 0:
        return 1.0
    rng = np.random.default_rng(seed)
    sample = vectors[np.sort(rng.choice(len(vectors), size=min(UPDATE_CHECK_QUERIES, len(vectors)), replace=False))]
    sims, _ = loaded.search(sample, 1)
    return float(np.mean(sims[:, 0] >= np.einsum("ij,ij->i", sample, sample) - 1e-5))


def write_index(index: faiss.Index, manifest: IndexManifest, index_dir: Path, exact_files: dict[str, Path] | None = None) -> None:
    """Exact vectors (compressed index only), index, manifest last, each via a temp file + os.replace:
    a reader never sees half a file."""
    index_dir.mkdir(parents=True, exist_ok=True)
    for name, path in (exact_files or {}).items():
        os.replace(path, index_dir / name)
    if not exact_files:
        for name in EXACT_FILES:  # left by an earlier compressed build
            (index_dir / name).unlink(missing_ok=True)
    tmp_index = index_dir / f".{INDEX_FILE}.{os.getpid()}.tmp"
    tmp_manifest = index_dir / f".{MANIFEST_FILE}.{os.getpid()}.tmp"
    try:
        faiss.write_index(index, str(tmp_index))
        tmp_manifest.write_text(manifest.to_json())
        os.replace(tmp_index, index_dir / INDEX_FILE)
        os.replace(tmp_manifest, index_dir / MANIFEST_FILE)
    finally:  # a failed write (a full disk) leaves the previous index and no temp files
        tmp_index.unlink(missing_ok=True)
        tmp_manifest.unlink(missing_ok=True)


def read_manifest(index_dir: Path) -> IndexManifest:
    path = index_dir / MANIFEST_FILE
    if not path.exists():
        raise LookalikeError(f"No index manifest at {path}. Run `lookalike build-index` first.")
    try:
        return IndexManifest(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise LookalikeError(f"Index manifest {path} is unreadable ({exc}). Rebuild with `lookalike build-index`.") from exc


def check_model_version(manifest: IndexManifest, embeddings_version: str | None) -> None:
    if embeddings_version is not None and manifest.model_version != embeddings_version:
        raise LookalikeError(
            f"Index {manifest.index_version} was built from model version {manifest.model_version!r} but "
            f"customer_embeddings now holds {embeddings_version!r}. Rebuild it with `lookalike build-index`."
        )


def load_index(index_dir: Path, expected_model_version: str | None = None) -> LoadedIndex:
    """Load index + manifest, refusing a missing/corrupt file or one built from another model version."""
    manifest = read_manifest(index_dir)
    path = index_dir / INDEX_FILE
    if not path.exists():
        raise LookalikeError(f"Index file {path} is missing. Run `lookalike build-index`.")
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        raise LookalikeError(f"Index file {path} is corrupt ({str(exc).splitlines()[0]}). Rebuild it with `lookalike build-index`.") from exc
    if index.ntotal != manifest.row_count or index.d != manifest.dim:
        raise LookalikeError(
            f"Index file {path} ({index.ntotal:,} rows, dim {index.d}) does not match its manifest "
            f"({manifest.row_count:,} rows, dim {manifest.dim}). Rebuild it with `lookalike build-index`."
        )
    check_model_version(manifest, expected_model_version)
    if manifest.index_type == "ivf":
        # Lets reconstruct() fetch member vectors straight from the index (LoadedIndex.vectors()).
        # Compressed indexes serve vectors from their exact vectors instead: decoded codes are
        # approximate (8-bit: within ~0.5%; PQ: much coarser) and a direct map costs 8 B a row.
        faiss.extract_index_ivf(index).make_direct_map()
    exact = ExactVectors.open(index_dir, manifest.row_count) if manifest.index_type in COMPRESSED_TYPES else None
    return LoadedIndex(index=index, manifest=manifest, path=path, exact=exact)
