"""Customer segments (the GPLR paper's segmentation application).

Each customer is described by one or more blocks: what they buy (square roots of the category
shares, the default), their persona probabilities (`customer_personas`), their embedding. The
blocks, each scaled to unit variance, are reduced by PCA to a few components (the group
structure survives, per-customer noise does not) and clustered by k-means; k is chosen by
silhouette (on a sample) unless given. On generated data the category block alone recovers the
planted segments best (benchmarks/RESULTS.md, "personas"). Quality: silhouette, Calinski-Harabasz, Davies-Bouldin, and
stability as the adjusted Rand index between the chosen clustering and re-runs with other
random seeds. Results, replaced atomically in the warehouse: `customer_segments`,
`segment_profiles` (size, top personas, top and distinctive categories, spend) and `segment_quality`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from lookalike_cli.errors import LookalikeError, ParameterError
from lookalike_cli.personas.labels import PERSONAS_TABLE, RESULT_TABLE, read_category_shares, read_customer_vectors
from lookalike_cli.warehouse.connection import connection, replace_tables, require_table, table_exists, write_table
from lookalike_cli.progress import Progress

SEGMENTS_TABLE = "customer_segments"
PROFILES_TABLE = "segment_profiles"
QUALITY_TABLE = "segment_quality"
SERVING_TABLES = (SEGMENTS_TABLE, PROFILES_TABLE, QUALITY_TABLE)
INPUTS = ("categories", "personas", "embeddings")
DEFAULT_INPUTS = "categories"
# Silhouette is O(n^2): score k on a sample; the final k-means sees everyone.
SILHOUETTE_SAMPLE = 4000


@dataclass
class SegmentQuality:
    k: int
    k_chosen_by: str
    silhouette: float
    calinski_harabasz: float
    davies_bouldin: float
    stability_ari_mean: float
    stability_ari_min: float
    silhouette_by_k: dict
    inputs: str
    pca_components: int
    pca_explained_variance: float
    customers: int


def read_persona_matrix(db_path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(customer ids ascending, (n, personas) probabilities, persona names) from customer_personas."""
    with connection(db_path, read_only=True) as con:
        require_table(con, RESULT_TABLE, "Run `lookalike personas label` and `lookalike personas propagate` first, "
                                         "or segment without personas (inputs: categories).")
        names = [r[0] for r in con.execute(f"select name from {PERSONAS_TABLE} order by persona_id").fetchall()]
        table = con.sql(f"""
            select c.customer_id, list(c.probability order by d.persona_id) as probabilities
            from {RESULT_TABLE} c join {PERSONAS_TABLE} d using (persona_id)
            group by c.customer_id order by c.customer_id
        """).to_arrow_table()
    column = table.column("probabilities").combine_chunks()
    matrix = column.flatten().to_numpy().reshape(len(table), -1) if len(table) else np.empty((0, len(names)))
    if matrix.shape[1] != len(names):
        raise LookalikeError(f"{RESULT_TABLE} does not match {PERSONAS_TABLE}: re-run `lookalike personas propagate`.")
    return table.column("customer_id").to_numpy(), matrix, names


def parse_inputs(inputs: str | Sequence[str]) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(p.strip() for p in (inputs.split(",") if isinstance(inputs, str) else inputs) if p.strip()))
    unknown = [name for name in names if name not in INPUTS]
    if unknown or not names:
        raise LookalikeError(f"Unknown segment input(s) {unknown or [inputs]}: choose from {', '.join(INPUTS)} (comma-separated).")
    return names


def feature_matrix(db_path: Path, inputs: Sequence[str], progress: Progress) -> tuple[np.ndarray, np.ndarray | sp.csr_matrix, str]:
    """(customer ids, features, description): the chosen blocks side by side, each scaled to unit total
    variance so no block dominates by its width, over the customers every block covers."""
    blocks: list[tuple[np.ndarray, np.ndarray | sp.csr_matrix]] = []
    for name in inputs:
        if name == "categories":
            blocks.append(read_category_shares(db_path))
        elif name == "personas":
            ids, personas, _ = read_persona_matrix(db_path)
            blocks.append((ids, personas))
        else:
            blocks.append(read_customer_vectors(db_path, progress))
    ids = blocks[0][0]
    for other, _ in blocks[1:]:
        ids = np.intersect1d(ids, other)
    if any(len(block_ids) > len(ids) for block_ids, _ in blocks):
        progress(f"  {', '.join(inputs)} cover different customers: segmenting the {len(ids):,} they share")
    scaled = []
    for block_ids, block in blocks:
        block = block[np.searchsorted(block_ids, ids)]
        scaled.append(block / np.sqrt(total_variance(block) or 1.0))
    if len(scaled) == 1:
        features = scaled[0]
    elif any(sp.issparse(block) for block in scaled):
        features = sp.hstack([sp.csr_matrix(block) for block in scaled]).tocsr()
    else:
        features = np.hstack(scaled)
    return ids, features, "+".join(inputs)


def total_variance(matrix: np.ndarray | sp.csr_matrix) -> float:
    """Sum of the column variances (dense or sparse, without densifying)."""
    if sp.issparse(matrix):
        return float(matrix.multiply(matrix).mean(axis=0).sum() - np.square(np.asarray(matrix.mean(axis=0))).sum())
    return float(matrix.var(axis=0).sum())


def reduce(features: np.ndarray | sp.csr_matrix, components: int, variance: float, seed: int) -> tuple[np.ndarray, float]:
    """PCA to the fewest components that explain `variance` of the total, at most `components`
    (a few leading components keep the group structure and drop per-customer noise).
    Returns the reduced matrix and the share of variance it keeps."""
    from sklearn.decomposition import PCA

    n, width = features.shape
    # The covariance route accepts sparse input and costs width^2, not n * width, per pass.
    pca = PCA(n_components=max(1, min(components, width, n - 1)), svd_solver="covariance_eigh", random_state=seed)
    reduced = pca.fit_transform(features)
    # sklearn's explained_variance_ divides by n - 1; total_variance by n.
    explained = np.cumsum(pca.explained_variance_) * (n - 1) / n / max(total_variance(features), 1e-12)
    keep = int(np.searchsorted(explained, variance - 1e-9) + 1) if variance < 1 else len(explained)
    keep = min(keep, len(explained))
    return np.ascontiguousarray(reduced[:, :keep]), float(min(explained[keep - 1], 1.0))


def cluster(
    features: np.ndarray | sp.csr_matrix,
    k: int | None = None,
    k_min: int = 2,
    k_max: int = 15,
    components: int = 16,
    variance: float = 0.95,
    stability_runs: int = 5,
    seed: int = 0,
    progress: Progress = print,
) -> tuple[np.ndarray, np.ndarray, SegmentQuality]:
    """(labels, distance to own centre, quality) for a feature matrix; k=None chooses k by silhouette."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, calinski_harabasz_score, davies_bouldin_score, silhouette_score

    n = features.shape[0]
    if n < 3:
        raise LookalikeError(f"Segmenting needs at least 3 customers, found {n}.")
    reduced, kept_variance = reduce(features, components, variance, seed)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, min(n, SILHOUETTE_SAMPLE), replace=False))
    scores: dict[int, float] = {}
    if k is None:
        for candidate in range(max(2, k_min), min(k_max, len(sample) - 1) + 1):
            labels = KMeans(candidate, n_init=3, random_state=seed).fit_predict(reduced[sample])
            scores[candidate] = round(float(silhouette_score(reduced[sample], labels)), 4)
            progress(f"  k={candidate:>2}: silhouette {scores[candidate]:.3f}")
        k, chosen_by = max(scores, key=scores.get), "silhouette"
    else:
        chosen_by = "given"
    if not 2 <= k < n:
        raise ParameterError(f"{{k}} must be between 2 and {n - 1}, got {k}.", "k")
    model = KMeans(k, n_init=5, random_state=seed).fit(reduced)
    labels = model.labels_
    distances = np.linalg.norm(reduced - model.cluster_centers_[labels], axis=1)
    reruns = [adjusted_rand_score(labels[sample], KMeans(k, n_init=1, random_state=seed + 1 + run).fit_predict(reduced)[sample])
              for run in range(stability_runs)]
    quality = SegmentQuality(
        k=int(k), k_chosen_by=chosen_by,
        silhouette=round(float(silhouette_score(reduced[sample], labels[sample])), 4),
        calinski_harabasz=round(float(calinski_harabasz_score(reduced, labels)), 2),
        davies_bouldin=round(float(davies_bouldin_score(reduced, labels)), 4),
        stability_ari_mean=round(float(np.mean(reruns)), 4) if reruns else float("nan"),
        stability_ari_min=round(float(np.min(reruns)), 4) if reruns else float("nan"),
        silhouette_by_k=scores, inputs="", pca_components=int(reduced.shape[1]),
        pca_explained_variance=round(kept_variance, 4), customers=n,
    )
    return labels, distances, quality


PROFILE_SQL = f"""
with members as (
    select * from {SEGMENTS_TABLE}__new
),
sizes as (
    select segment_id, count(*) as customer_count from members group by segment_id
),
persona_means as (
    {{persona_means}}
),
top_personas as (
    select segment_id,
           string_agg(name || ' ' || cast(round(100 * mean_probability) as integer) || '%', ', ' order by mean_probability desc) as top_personas
    from (select *, row_number() over (partition by segment_id order by mean_probability desc, name) as position from persona_means)
    where position <= 3 group by segment_id
),
category_shares as (
    select m.segment_id, s.category_id, sum(s.share) as share
    from members m
    join (select customer_id, unnest(category_ids) as category_id, unnest(category_shares) as share from customer_features) s
        using (customer_id)
    group by m.segment_id, s.category_id
),
segment_totals as (
    select segment_id, sum(share) as total from category_shares group by segment_id
),
category_lift as (
    -- A category's share of the segment's lines, and that share over its share of everyone's lines.
    select c.segment_id, c.category_id, c.share / t.total as segment_share,
           (c.share / t.total) / (sum(c.share) over (partition by c.category_id) / sum(c.share) over ()) as lift
    from category_shares c join segment_totals t using (segment_id)
),
top_categories as (
    select segment_id,
           string_agg(category || ' ' || cast(round(100 * segment_share) as integer) || '%', ', ' order by segment_share desc) as top_categories
    from (select *, row_number() over (partition by segment_id order by segment_share desc, category_id) as position from category_lift)
    join categories using (category_id)
    where position <= 3 group by segment_id
),
distinctive_categories as (
    -- Over-represented categories (at least 0.5% of the segment's lines): what sets the segment apart.
    select segment_id,
           string_agg(category || ' ' || printf('%.1f', lift) || 'x', ', ' order by lift desc) as distinctive_categories
    from (select *, row_number() over (partition by segment_id order by lift desc, category_id) as position
          from category_lift where segment_share >= 0.005)
    join categories using (category_id)
    where position <= 3 group by segment_id
),
spend as (
    select m.segment_id, avg(f.total_spend) as avg_spend, median(f.total_spend) as median_spend,
           avg(f.orders_per_month) as avg_orders_per_month, avg(f.avg_order_value) as avg_order_value
    from members m join customer_features f using (customer_id)
    group by m.segment_id
),
final as (
    select
        s.segment_id,
        s.customer_count,
        round(s.customer_count / sum(s.customer_count) over (), 4) as customer_share,
        coalesce(p.top_personas, '') as top_personas,
        coalesce(c.top_categories, '') as top_categories,
        coalesce(d.distinctive_categories, '') as distinctive_categories,
        round(x.avg_spend, 2) as avg_spend,
        round(x.median_spend, 2) as median_spend,
        round(x.avg_order_value, 2) as avg_order_value,
        round(x.avg_orders_per_month, 2) as avg_orders_per_month
    from sizes s
    left join top_personas p using (segment_id)
    left join top_categories c using (segment_id)
    left join distinctive_categories d using (segment_id)
    left join spend x using (segment_id)
)
select * from final order by customer_count desc
"""
PERSONA_MEANS_SQL = f"""
    select m.segment_id, d.name, avg(c.probability) as mean_probability
    from members m join {RESULT_TABLE} c using (customer_id) join {PERSONAS_TABLE} d using (persona_id)
    group by m.segment_id, d.name"""
# Segments on categories alone need no personas: top_personas is then empty.
NO_PERSONAS_SQL = "select null::integer as segment_id, null::varchar as name, null::double as mean_probability where false"


def segment_customers(
    db_path: Path,
    k: int | None = None,
    k_min: int = 4,
    k_max: int = 15,
    inputs: str | Sequence[str] = DEFAULT_INPUTS,
    components: int = 16,
    variance: float = 0.95,
    stability_runs: int = 5,
    seed: int = 0,
    serving_path: Path | None = None,
    progress: Progress = print,
) -> tuple[SegmentQuality, pa.Table]:
    """Cluster customers into segments; replaces customer_segments, segment_profiles, segment_quality,
    and publishes them to `serving_path` (the file BI tools read) when given.

    Returns the quality metrics and the segment profiles (largest segment first).
    """
    started = time.perf_counter()
    ids, features, inputs = feature_matrix(db_path, parse_inputs(inputs), progress)
    progress(f"Segmenting {len(ids):,} customers on {inputs} ({features.shape[1]} columns)"
             + (f", choosing k in {k_min}..{k_max} by silhouette" if k is None else f", k={k}"))
    from lookalike_cli.threads import one_thread

    # One BLAS/OpenMP thread: sklearn's k-means oversubscribes a shared machine (many times slower).
    with one_thread():
        labels, distances, quality = cluster(features, k, k_min, k_max, components, variance, stability_runs, seed, progress)
    quality.inputs = inputs
    # Segment ids by size: 1 is the largest segment.
    order = np.argsort(-np.bincount(labels), kind="stable")
    renumber = np.empty_like(order)
    renumber[order] = np.arange(1, len(order) + 1)
    segments = pa.table({
        "customer_id": pa.array(ids, pa.int64()),
        "segment_id": pa.array(renumber[labels], pa.int32()),
        "distance_to_centre": pa.array(distances, pa.float64()),
    })
    quality_row = {**asdict(quality), "silhouette_by_k": json.dumps(quality.silhouette_by_k),
                   "created_at": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "seed": seed}
    with connection(db_path) as con:
        write_table(con, f"{SEGMENTS_TABLE}__new", segments)
        has_personas = table_exists(con, RESULT_TABLE) and table_exists(con, PERSONAS_TABLE)
        profiles = con.sql(PROFILE_SQL.replace("{persona_means}", PERSONA_MEANS_SQL if has_personas else NO_PERSONAS_SQL)).to_arrow_table()
        replace_tables(con, {SEGMENTS_TABLE: segments, PROFILES_TABLE: profiles,
                             QUALITY_TABLE: pa.Table.from_pylist([quality_row])})
    progress(f"Wrote {SEGMENTS_TABLE}, {PROFILES_TABLE}, {QUALITY_TABLE}: k={quality.k} ({quality.k_chosen_by}), "
             f"silhouette {quality.silhouette:.3f}, stability ARI {quality.stability_ari_mean:.3f} "
             f"in {time.perf_counter() - started:.1f}s")
    if serving_path is not None:
        publish_segments(db_path, serving_path)
        progress(f"Published {', '.join(SERVING_TABLES)} to {serving_path}")
    return quality, profiles


def publish_segments(db_path: Path, serving_path: Path) -> None:
    """Replace the segment tables in the serving file with the warehouse's, in one atomic swap
    (BI readers keep their snapshot, new connections see all the new tables or none)."""
    from lookalike_cli.audiences.publish import publish_tables

    with connection(db_path, read_only=True) as con:
        for name in SERVING_TABLES:
            require_table(con, name, "Run `lookalike segment` first.")
        tables = {name: con.sql(f"select * from {name}").to_arrow_table() for name in SERVING_TABLES}

    def write(con) -> None:
        for name, table in tables.items():
            write_table(con, name, table)

    publish_tables(serving_path, write)


def read_profiles(db_path: Path) -> pa.Table:
    with connection(db_path, read_only=True) as con:
        require_table(con, PROFILES_TABLE, "Run `lookalike segment` first.")
        return con.sql(f"select * from {PROFILES_TABLE} order by segment_id").to_arrow_table()
