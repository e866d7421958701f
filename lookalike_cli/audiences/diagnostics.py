"""Is this seed a good one? Size, ids found, homogeneity, sub-clusters and outliers.

- homogeneity: mean cosine of seed pairs against the mean cosine of random population pairs,
  summarised as (seed - random) / (1 - random): 0 = as diverse as a random sample, 1 = identical;
- sub-clusters: expand's own k-means with silhouette-chosen k (`expand.seed_clusters`), so what is
  shown here is what the multi-centroid strategy uses;
- outliers: seeds far less similar to their sub-centroid than the other seeds are (robust z < -3).

`lookalike inspect-seed` prints it; `lookalike expand` saves it with the audience in the
serving file (`seed_diagnostics`, one row per audience version, and `audience_seeds`, one row
per seed with its sub-cluster).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import duckdb
import numpy as np
import pyarrow as pa
from lookalike_cli.threads import one_thread

from lookalike_cli.audiences.expand import seed_clusters
from lookalike_cli.audiences.publish import insert_rows
from lookalike_cli.audiences.seeds import MIN_RECOMMENDED_SEEDS, Seeds, population_vectors

RANDOM_PAIR_SAMPLE = 2000
# Below this (seed - random) / (1 - random) the seed is no tighter than random customers.
DIVERSE_AS_RANDOM = 0.05
OUTLIER_ROBUST_Z = -3.0
MAX_STORED_OUTLIERS = 100

DIAGNOSTICS_DDL = """
create table if not exists seed_diagnostics (
    audience_id bigint not null,
    seed_source varchar,
    seed_requested bigint,
    seed_found bigint,
    seed_missing bigint,
    seed_pair_similarity double,
    random_pair_similarity double,
    homogeneity double,
    clusters integer,
    silhouette json,
    cluster_sizes json,
    outlier_count bigint,
    outlier_ids json,
    warnings json
);
"""
SEEDS_DDL = """
create table if not exists audience_seeds (
    audience_id bigint not null,
    customer_id bigint not null,
    cluster integer not null,
    cluster_similarity double not null,
    is_outlier boolean not null
);
"""


@dataclass
class SeedDiagnostics:
    seed_source: str
    seed_requested: int
    seed_found: int
    seed_missing: int
    seed_pair_similarity: float
    random_pair_similarity: float
    homogeneity: float
    clusters: int
    silhouette: dict
    cluster_sizes: list[int]
    outlier_count: int
    outlier_ids: list[int]
    warnings: list[str] = field(default_factory=list)
    # Per seed (same order as Seeds.ids): sub-cluster and cosine to its sub-centroid.
    seed_ids: np.ndarray | None = field(default=None, repr=False)
    seed_cluster: np.ndarray | None = field(default=None, repr=False)
    seed_similarity: np.ndarray | None = field(default=None, repr=False)
    seed_is_outlier: np.ndarray | None = field(default=None, repr=False)

    def summary(self) -> dict:
        data = asdict(self)
        for key in ("seed_ids", "seed_cluster", "seed_similarity", "seed_is_outlier"):
            data.pop(key)
        return data


def mean_pair_similarity(vectors: np.ndarray) -> float:
    """Mean cosine over distinct pairs of L2-normalised vectors, in O(n d): (|sum|^2 - n) / (n (n - 1))."""
    n = len(vectors)
    if n < 2:
        return float("nan")
    total = vectors.astype(np.float64).sum(axis=0)
    return float((total @ total - n) / (n * (n - 1)))


def inspect_seed(con: duckdb.DuckDBPyConnection, seeds: Seeds, seed: int = 0, index=None) -> SeedDiagnostics:
    """Diagnostics of resolved seeds against a random sample of the scored population (its vectors from
    `index` when given: seeds.population_vectors)."""
    random_pairs = mean_pair_similarity(population_vectors(con, RANDOM_PAIR_SAMPLE, seed, index)[1])
    seed_pairs = mean_pair_similarity(seeds.vectors)
    homogeneity = (seed_pairs - random_pairs) / max(1.0 - random_pairs, 1e-9) if seeds.found > 1 else float("nan")
    # One thread: on small seeds OpenMP start-up dominates, and on a shared machine it is 40x slower.
    with one_thread():
        centroids, info = seed_clusters(seeds.vectors, seed)
    similarity_to_centroids = seeds.vectors @ centroids.T
    cluster = similarity_to_centroids.argmax(axis=1)
    similarity = similarity_to_centroids.max(axis=1).astype(np.float64)
    median = np.median(similarity)
    mad = 1.4826 * np.median(np.abs(similarity - median))
    is_outlier = (similarity - median) / max(mad, 1e-6) < OUTLIER_ROBUST_Z if seeds.found >= 10 else np.zeros(seeds.found, bool)
    outliers = seeds.ids[is_outlier][np.argsort(similarity[is_outlier])]

    warnings = list(seeds.warnings)
    if seeds.found > 1 and homogeneity < DIVERSE_AS_RANDOM:
        warnings.append(f"The seed is as diverse as a random sample (mean pair similarity {seed_pairs:.3f} vs "
                        f"{random_pairs:.3f} for random customers): a lookalike of it will be close to random.")
    if info["clusters"] > 1:
        warnings.append(f"The seed has {info['clusters']} sub-clusters (sizes {np.bincount(cluster).tolist()}): "
                        "consider the multi-centroid or knn-vote strategy, or one audience per sub-cluster.")
    if len(outliers):
        warnings.append(f"{len(outliers)} seed(s) are outliers, far from every sub-cluster "
                        f"(e.g. {', '.join(str(i) for i in outliers[:5])}).")
    if seeds.found < MIN_RECOMMENDED_SEEDS and not any("recommend" in w for w in warnings):
        warnings.append(f"Seed too small: {seeds.found} < {MIN_RECOMMENDED_SEEDS} customers.")
    return SeedDiagnostics(
        seed_source=seeds.source, seed_requested=seeds.requested, seed_found=seeds.found, seed_missing=seeds.missing,
        seed_pair_similarity=round(seed_pairs, 4), random_pair_similarity=round(random_pairs, 4),
        homogeneity=round(float(homogeneity), 4), clusters=int(info["clusters"]), silhouette=info["silhouette"],
        cluster_sizes=np.bincount(cluster, minlength=len(centroids)).tolist(), outlier_count=int(len(outliers)),
        outlier_ids=[int(i) for i in outliers[:MAX_STORED_OUTLIERS]], warnings=warnings,
        seed_ids=seeds.ids, seed_cluster=cluster, seed_similarity=similarity, seed_is_outlier=is_outlier,
    )


def write_seed_diagnostics(con: duckdb.DuckDBPyConnection, audience_id: int, diagnostics: SeedDiagnostics) -> None:
    """Rows of seed_diagnostics and audience_seeds for one audience version (inside a publish swap)."""
    row = diagnostics.summary()
    for key in ("silhouette", "cluster_sizes", "outlier_ids", "warnings"):
        row[key] = json.dumps(row[key])
    insert_rows(con, "seed_diagnostics", pa.Table.from_pylist([{"audience_id": audience_id, **row}]), DIAGNOSTICS_DDL)
    seeds = pa.table({
        "audience_id": pa.array(np.full(diagnostics.seed_found, audience_id), pa.int64()),
        "customer_id": pa.array(diagnostics.seed_ids, pa.int64()),
        "cluster": pa.array(diagnostics.seed_cluster, pa.int32()),
        "cluster_similarity": pa.array(diagnostics.seed_similarity, pa.float64()),
        "is_outlier": pa.array(diagnostics.seed_is_outlier, pa.bool_()),
    })
    insert_rows(con, "audience_seeds", seeds, SEEDS_DDL)
