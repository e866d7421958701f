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
from typing import Callable

import faiss
import numpy as np

from lookalike_cli.errors import LookalikeError
from lookalike_cli.warehouse import connection, require_table

INDEX_FILE = "customer_embeddings.faiss"
MANIFEST_FILE = "customer_embeddings.json"
INDEX_TYPES = ("auto", "flat", "ivf", "hnsw")
# Below this population exact search is fast enough (a few ms per query) and has recall 1.
AUTO_EXACT_MAX_ROWS = 50_000
TARGET_RECALL = 0.95
SELF_CHECK_K = 10
EMBEDDINGS_HINT = "Build it with `lookalike dbt build` after `lookalike train` (the customer_embeddings model)."

Progress = Callable[[str], None]


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
    metric: str = "inner_product_on_l2_normalised (cosine)"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


@dataclass
class LoadedIndex:
    index: faiss.Index
    manifest: IndexManifest
    path: Path

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (similarities, customer ids) per query; ids are -1 where fewer than k were found."""
        queries = normalise(queries)
        k = min(k, self.manifest.row_count)
        apply_search_params(self.index, self.manifest, k)
        return self.index.search(queries, k)


def normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    faiss.normalize_L2(vectors)
    return vectors


def read_embeddings(db_path: Path, batch_size: int = 100_000, progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """(ids int64, L2-normalised float32 vectors, model_version), streamed from the warehouse in Arrow batches."""
    with connection(db_path, read_only=True) as con:
        require_table(con, "customer_embeddings", EMBEDDINGS_HINT)
        versions = [row[0] for row in con.execute("select distinct model_version from customer_embeddings").fetchall()]
        if len(versions) != 1:
            raise LookalikeError(
                f"customer_embeddings must hold exactly one model_version, found {versions or 'none (empty table)'}. "
                "Re-run the customer_embeddings model."
            )
        total = con.execute("select count(*) from customer_embeddings").fetchall()[0][0]
        reader = con.sql("select customer_id, embedding from customer_embeddings order by customer_id").to_arrow_reader(batch_size)
        ids, vectors, done = [], [], 0
        for batch in reader:
            column = batch.column("embedding")
            dim = column.type.list_size
            flat = column.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
            vectors.append(flat.reshape(-1, dim))
            ids.append(batch.column("customer_id").to_numpy(zero_copy_only=False).astype(np.int64))
            done += batch.num_rows
            if progress:
                progress(f"  read {done:,}/{total:,} embeddings")
    return np.concatenate(ids), normalise(np.concatenate(vectors)), versions[0]


def default_nlist(rows: int) -> int:
    # FAISS suggests 4-16*sqrt(n) lists; 2*sqrt(n) halves the add and quarters k-means training, and the
    # self-check raises nprobe to keep recall (at 1M: 2,000 lists, nprobe 8-16). At least 40 points per list.
    return max(1, min(int(2 * math.sqrt(rows)), rows // 40))


def make_index(index_type: str, dim: int, rows: int, nlist: int | None, m: int | None, ef_construction: int) -> tuple[faiss.Index, dict]:
    if index_type == "flat":
        return faiss.IndexFlatIP(dim), {}
    if index_type == "ivf":
        nlist = nlist or default_nlist(rows)
        quantizer = faiss.IndexFlatIP(dim)
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
    if manifest.index_type == "ivf":
        # Probe enough lists to hold ~4x k vectors, never fewer than the self-checked nprobe.
        per_list = max(1.0, manifest.row_count / params["nlist"])
        faiss.extract_index_ivf(index).nprobe = int(min(params["nlist"], max(params["nprobe"], math.ceil(4 * k / per_list))))
    elif manifest.index_type == "hnsw":
        faiss.downcast_index(index.index).hnsw.efSearch = int(max(params["ef_search"], k))


def exact_neighbours(vectors: np.ndarray, ids: np.ndarray, queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(sampled population vectors as queries, their exact top-10 ids): the self-check's ground truth."""
    sample = np.random.default_rng(seed).choice(len(vectors), size=min(queries, len(vectors)), replace=False)
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    _, truth = exact.search(vectors[sample], SELF_CHECK_K)
    return vectors[sample], ids[truth]


def recall_at_k(truth_ids: np.ndarray, found_ids: np.ndarray) -> float:
    hits = sum(len(np.intersect1d(t, f[f >= 0])) for t, f in zip(truth_ids, found_ids))
    return hits / truth_ids.size


def tune(index: faiss.Index, manifest: IndexManifest, vectors: np.ndarray, ids: np.ndarray, queries: int, seed: int, progress: Progress) -> float:
    """Raise nprobe / efSearch until the self-check recall@10 reaches TARGET_RECALL (or exact search)."""
    if manifest.index_type == "flat":
        return 1.0
    sample, truth = exact_neighbours(vectors, ids, queries, seed)
    key, ceiling = ("nprobe", manifest.params["nlist"]) if manifest.index_type == "ivf" else ("ef_search", 4096)
    value = manifest.params.get(key) or (8 if key == "nprobe" else 32)
    while True:
        manifest.params[key] = min(value, ceiling)
        apply_search_params(index, manifest, SELF_CHECK_K)
        recall = recall_at_k(truth, index.search(sample, SELF_CHECK_K)[1])
        progress(f"  self-check {key}={manifest.params[key]}: recall@{SELF_CHECK_K}={recall:.3f}")
        if recall >= TARGET_RECALL or value >= ceiling:
            return recall
        value *= 2


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
    progress: Progress = print,
) -> IndexManifest:
    """Build the index over customer_embeddings, self-check recall@10, write index + manifest atomically.

    `auto` uses exact search up to AUTO_EXACT_MAX_ROWS rows and IVF above that, with nprobe
    raised until the self-check recall@10 is at least TARGET_RECALL. Explicit nprobe /
    ef_search are starting points for the same tuning.
    """
    if index_type not in INDEX_TYPES:
        raise LookalikeError(f"Unknown index type {index_type!r}; choose one of {', '.join(INDEX_TYPES)}.")
    start = time.perf_counter()
    progress(f"Reading customer_embeddings from {db_path}")
    ids, vectors, model_version = read_embeddings(db_path, batch_size, progress)
    rows, dim = vectors.shape
    if index_type == "auto":
        if rows <= AUTO_EXACT_MAX_ROWS:
            chosen, reason = "flat", f"auto: {rows:,} rows <= {AUTO_EXACT_MAX_ROWS:,}, exact search is fast enough and has recall 1"
        else:
            chosen, reason = "ivf", (f"auto: {rows:,} rows > {AUTO_EXACT_MAX_ROWS:,}, IVF with ~2*sqrt(n) lists; "
                                     f"nprobe raised until self-check recall@{SELF_CHECK_K} >= {TARGET_RECALL}")
    else:
        chosen, reason = index_type, f"requested --index-type {index_type}"
    inner, params = make_index(chosen, dim, rows, nlist, m, ef_construction)
    if chosen == "ivf":
        params["nprobe"] = nprobe or 8
        # k-means on ~40 points per list (FAISS wants >= 39) is as good as on everything, and much faster.
        train = vectors[np.random.default_rng(seed).choice(rows, size=min(rows, 40 * params["nlist"]), replace=False)]
        progress(f"Training IVF coarse quantizer: {params['nlist']} lists on {len(train):,} vectors")
        inner.cp.seed = seed
        inner.train(train)
    elif chosen == "hnsw":
        params["ef_search"] = ef_search or 32
    index = faiss.IndexIDMap2(inner)
    progress(f"Adding {rows:,} vectors (dim {dim}) to a {chosen} index")
    index.add_with_ids(vectors, ids)

    built_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    manifest = IndexManifest(
        index_version=f"{chosen}-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}-{model_version}",
        index_type=chosen, params=params, row_count=rows, dim=dim, model_version=model_version,
        built_at=built_at, build_seconds=0.0, reason=reason,
    )
    recall = tune(index, manifest, vectors, ids, check_queries, seed, progress)
    manifest.self_check = {"k": SELF_CHECK_K, "queries": min(check_queries, rows), "recall": round(recall, 4),
                           "target": TARGET_RECALL, "passed": recall >= TARGET_RECALL}
    if recall < TARGET_RECALL:
        progress(f"Warning: self-check recall@{SELF_CHECK_K} {recall:.3f} is below {TARGET_RECALL}; "
                 "use --index-type auto or raise --nlist/--m.")
    manifest.build_seconds = round(time.perf_counter() - start, 2)
    write_index(index, manifest, index_dir)
    progress(f"Index {manifest.index_version}: {chosen} {params}, {rows:,} rows, recall@{SELF_CHECK_K} "
             f"{recall:.3f}, built in {manifest.build_seconds:.1f}s ({reason})")
    return manifest


def write_index(index: faiss.Index, manifest: IndexManifest, index_dir: Path) -> None:
    """Index first, manifest last, each via a temp file + os.replace: a reader never sees half a file."""
    index_dir.mkdir(parents=True, exist_ok=True)
    tmp_index = index_dir / f".{INDEX_FILE}.{os.getpid()}.tmp"
    tmp_manifest = index_dir / f".{MANIFEST_FILE}.{os.getpid()}.tmp"
    faiss.write_index(index, str(tmp_index))
    tmp_manifest.write_text(manifest.to_json())
    os.replace(tmp_index, index_dir / INDEX_FILE)
    os.replace(tmp_manifest, index_dir / MANIFEST_FILE)


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
        # Lets reconstruct() fetch member vectors straight from the index.
        faiss.extract_index_ivf(index).make_direct_map()
    return LoadedIndex(index=index, manifest=manifest, path=path)
