"""Expansion: seed customers -> ranked lookalike audience, by one of five strategies.

- blend (default): candidate rankings (embedding and raw-feature similarity, a seed-vs-population
  propensity on embeddings + raw features and one on raw features only, activity, RFM, spend, and seed-vs-population logistic regression and LightGBM on
  category shares + log order lines) as percentiles, mixed with weights chosen per audience by
  cross-validation inside the seed (`blend.py`); scores every customer: from one dense matrix up to
  BLEND_EXACT_MAX customers, above that fitted on a sample and scored batch by batch from
  customer_features (category shares kept sparse) and one pass over the index's vectors.
- centroid: cosine to the mean seed vector (one ANN query; fast, assumes one homogeneous seed).
- knn-vote: each seed's k nearest neighbours vote with their similarity (follows mixed seeds).
- multi-centroid: k-means sub-clusters of the seed (k by silhouette), cosine to the nearest one.
- classifier: logistic regression seed vs population sample (PU learning, Elkan-Noto class-prior
  correction) re-ranking a candidate pool from ANN search around the seeds.

`--min-similarity` cuts on cosine to the centroid (centroid, blend), to the nearest sub-centroid
(multi-centroid) or to the nearest seed (knn-vote, classifier); `--min-expected-lift` sizes the
audience by its reach curve (`reach.py`), which every expansion computes from its in-seed validation.

`--exclude-features` keeps customer_features columns out of the ranking: the blend drops their raw
columns from every raw component and leaves out its embedding components, since the encoder's
embeddings were computed from every column (the other strategies rank on embeddings only, so they
refuse it). The `similarity` and `nearest_seed_id` reported per member stay embedding-based.

`--seed-value-sql` (a value per seed member) weights the seed in every strategy: the weighted
centroid (centroid, blend's centroid components), value-weighted votes (knn-vote), sample weights
in the classifiers (classifier, blend's propensity, propensity_raw, shares_lr and shares_gbm) and value-weighted
held-out AUC in the blend's self-validation. multi-centroid runs weighted k-means: each sub-centroid
moves towards its valuable members, but every sub-group of the seed keeps its share of the audience.

The strategies that search the index (all but blend) first probe recall@10 on up to 32 of the vectors
they search around (index/recall_probe.py): build-index tuned nprobe on random customers, and seeds in a
dense region can fall short of it. nprobe (efSearch) is raised for this expansion only, and the outcome
is recorded in the audience's parameters (`seed_recall_probe`).
"""

from __future__ import annotations

import functools
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import duckdb
import numpy as np
import pyarrow as pa

from lookalike_cli.audiences.seeds import Seeds, excluded_ids, resolve_seeds, seed_value_weights
from lookalike_cli.errors import LookalikeError, ParameterError
from lookalike_cli.index.faiss_index import TARGET_RECALL, LoadedIndex, check_model_version, load_index
from lookalike_cli.index.recall_probe import probe_recall
from lookalike_cli.index.search import exact_search, ivf_search, top_k
from lookalike_cli.progress import Progress
from lookalike_cli.vectors import ids_and_vectors, normalise
from lookalike_cli.warehouse.connection import connection, registered, require_table

if TYPE_CHECKING:
    import faiss

    from lookalike_cli.audiences.reach import BacktestCurve

STRATEGIES = ("blend", "centroid", "knn-vote", "multi-centroid", "classifier")
DEFAULT_STRATEGY = "blend"
# blend: most unlabelled customers the propensity classifier is fitted on (a random sample beyond).
BLEND_UNLABELLED = 20_000
# blend: up to this many customers their raw features are loaded as one dense matrix; above, the blend
# is fitted on a sample of BLEND_UNLABELLED and every customer is scored batch by batch (blend_everyone).
BLEND_EXACT_MAX = 50_000
# blend above BLEND_EXACT_MAX: population batches (raw_features.population_batches, 131,072 customers,
# ~50 MB each) read ahead while the blend is fitted.
PREFETCH_BATCHES = 8
# Most category share columns the blend ranks on: above, those that set the seed apart most (every fitted
# component's time and memory grow with its columns; 3,600 categories at 20k customers took 18 s and 4.7 GB).
BLEND_MAX_CATEGORIES = 1024
# Threads blend_everyone scores population batches on.
SCORE_THREADS = min(2, os.cpu_count() or 1)
# knn-vote: most neighbours one search of all seeds may return (ids + similarities ~12 bytes each).
MAX_VOTES = 20_000_000
# Member vectors are fetched and used this many at a time (128 MiB at dim 128): a 5% audience of
# 100M customers is 5M vectors, 2.4 GiB at once.
VECTOR_SLICE = 262_144


@dataclass
class Candidates:
    """Customers found by a strategy, best first; `frontier` is the lowest similarity the search covered.

    `capped` says the strategy cannot search wider (knn-vote at its per-seed neighbour cap).
    """
    ids: np.ndarray
    scores: np.ndarray
    similarities: np.ndarray
    frontier: float
    nearest_seed: np.ndarray | None = None
    capped: bool = False


@dataclass
class Expansion:
    members: pa.Table
    audience: dict
    warnings: list[str] = field(default_factory=list)
    # The resolved seed (ids and vectors), so publishing can diagnose it without running the seed query again.
    seeds: Seeds | None = None
    # audience_reach_curve rows (reach.py) without the audience_id publishing assigns.
    reach: pa.Table | None = None
    # The index the expansion ranked with (DuckDB engine), so publishing samples the population's vectors from it
    # (seeds.population_vectors) instead of reading every embedding; not part of the result's value.
    index: "LoadedIndex | None" = field(default=None, repr=False, compare=False)


def is_share(size: str | int | None) -> bool:
    """Whether a size is a percentage ('5%') rather than a count."""
    return size is not None and str(size).strip().endswith("%")


def parse_size(size: str | int | None, population: int) -> int | None:
    """'5%' -> share of the population, '20000' -> count.

    A share is capped at the candidates by `cap_share` once seeds and exclusions are known, so
    '100%' means every candidate (the seeds are part of the population but never members)."""
    if size is None:
        return None
    text = str(size).strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*%", text)
    if match:
        share = float(match.group(1))
        if not 0 < share <= 100:
            raise ParameterError(f"{{size}} {text}: a percentage must be in (0, 100].", "size")
        return max(1, math.ceil(population * share / 100))
    if not text.isdigit() or int(text) <= 0:
        raise ParameterError(f"{{size}} {text!r}: give a positive count (20000) or a share of the population (5%).", "size")
    return int(text)


def cap_share(target: int | None, size: str | int | None, candidates: int) -> int | None:
    """A percentage size asks for at most every candidate: '100%' of 6,000 customers with 150 seeds and 30
    opt-outs is the 5,820 customers who may be members. A count is left as asked (check_target judges it)."""
    if target is None or not is_share(size):
        return target
    return min(target, candidates)


def candidate_count(con: duckdb.DuckDBPyConnection, population: int, blocked: np.ndarray) -> int:
    """The customers of the population (customer_embeddings) who may be members: not seeds, not excluded.
    Suppression lists may name customers who were never scored, so only the blocked ids in it count."""
    if len(blocked) == 0:
        return population
    with registered(con, "blocked_customer_ids", pa.table({"customer_id": pa.array(blocked, pa.int64())})):
        inside = con.execute("select count(*) from customer_embeddings "
                             "where customer_id in (select customer_id from blocked_customer_ids)").fetchall()[0][0]
    return max(0, population - int(inside))


def check_cut(size: str | int | None, min_similarity: float | None, min_expected_lift: float | None = None) -> None:
    """An audience is cut by size, by similarity or both, or sized by expected lift alone (either engine)."""
    if min_expected_lift is not None:
        from lookalike_cli.audiences.reach import check_min_expected_lift

        if size is not None or min_similarity is not None:
            raise ParameterError("Give {min_expected_lift} alone, without {size} or {min_similarity}: it chooses the size.",
                                 "min_expected_lift", "size", "min_similarity")
        check_min_expected_lift(min_expected_lift)
        return
    if size is None and min_similarity is None:
        raise ParameterError("Give {size} (20000 or 5%), {min_similarity} (e.g. 0.8) or {min_expected_lift} (e.g. 2).",
                             "size", "min_similarity", "min_expected_lift")
    if min_similarity is not None and not -1.0 <= min_similarity <= 1.0:
        raise ParameterError(f"{{min_similarity}} {min_similarity} must be a cosine similarity in [-1, 1].", "min_similarity")


def feature_list(columns: str | list | tuple | None) -> tuple[str, ...]:
    """'gender,age_band' or a list -> ('gender', 'age_band'), blanks and repeats dropped."""
    if columns is None:
        return ()
    if not isinstance(columns, (str, list, tuple)):
        raise ParameterError(f"{{exclude_features}} {columns!r}: list customer_features columns, e.g. gender,age_band.",
                             "exclude_features")
    items = columns.split(",") if isinstance(columns, str) else list(columns)
    return tuple(dict.fromkeys(str(item).strip() for item in items if str(item).strip()))


def check_exclusion(columns: tuple[str, ...], strategy: str, min_similarity: float | None) -> None:
    """exclude_features needs a ranking that can leave columns out: the blend without its embedding components."""
    if columns and strategy != "blend":
        raise ParameterError(f"{{exclude_features}} needs {{strategy}} blend: {strategy} ranks on the encoder's embeddings, "
                             "which were computed from every customer_features column.", "exclude_features", "strategy")
    if columns and min_similarity is not None:
        raise ParameterError("{exclude_features} cannot be combined with {min_similarity}: the similarity is measured on the "
                             "encoder's embeddings, which were computed from every customer_features column.",
                             "exclude_features", "min_similarity")


def check_target(target: int | None, size: str | int | None, population: int, seeds: Seeds) -> None:
    """A count larger than the customers besides the seeds cannot be met (a percentage is capped instead)."""
    if target is not None and not is_share(size) and target > population - seeds.found:
        raise ParameterError(
            f"{{size}} {size} asks for {target:,} customers but the population has only "
            f"{population - seeds.found:,} besides the {seeds.found:,} seeds.", "size"
        )


def check_found(found: int, target: int | None, size: str | int | None, warnings: list[str]) -> None:
    """Refuse an empty audience; warn when the cut left fewer customers than the size asked for."""
    if target is not None and found < target:
        warnings.append(f"Only {found:,} eligible customers found for size {size} ({target:,}) after exclusions.")
    if found == 0:
        raise LookalikeError("The audience is empty: no eligible customer passed the size/similarity cut.")


def base_parameters(seeds: Seeds, size: str | int | None, min_similarity: float | None, exclude_sql: str | None,
                    seed: int) -> dict:
    """The audiences row's `parameters` every strategy and engine records."""
    return {"seed_source": seeds.source, "size": None if size is None else str(size),
            "min_similarity": min_similarity, "exclude_sql": exclude_sql, "random_seed": seed}


def ranked_expansion(ids: np.ndarray, scores: np.ndarray, similarities: np.ndarray, nearest_seed: np.ndarray, *,
                     seeds: Seeds, strategy: str, parameters: dict, excluded_count: int, population: int,
                     model_version: str, index_version: str | None, index_type: str, started: float,
                     warnings: list[str], progress: Progress, engine: str = "", reach: pa.Table | None = None,
                     index: "LoadedIndex | None" = None) -> Expansion:
    """The Expansion of members ranked best first: the members table and the audiences row (either engine)."""
    members = pa.table({
        "rank": pa.array(np.arange(1, len(ids) + 1), pa.int32()),
        "customer_id": pa.array(ids, pa.int64()),
        "score": pa.array(scores, pa.float64()),
        "similarity": pa.array(similarities, pa.float64()),
        "nearest_seed_id": pa.array(nearest_seed, pa.int64()),
    })
    audience = {
        "strategy": strategy,
        "parameters": parameters,
        "seed_requested": seeds.requested,
        "seed_found": seeds.found,
        "seed_missing": seeds.missing,
        "excluded_count": int(excluded_count),
        "population_size": population,
        "size": len(ids),
        "score_min": float(scores.min()),
        "score_max": float(scores.max()),
        "score_mean": float(scores.mean()),
        "score_median": float(np.median(scores)),
        "similarity_min": float(similarities.min()),
        "model_version": model_version,
        "index_version": index_version,
        "index_type": index_type,
        "compute_seconds": round(time.perf_counter() - started, 3),
    }
    progress(f"Audience: {len(ids):,} customers, score {audience['score_min']:.3f}..{audience['score_max']:.3f} "
             f"in {audience['compute_seconds']:.2f}s{engine}")
    return Expansion(members=members, audience=audience, warnings=warnings, seeds=seeds, reach=reach, index=index)


def search_union(index: LoadedIndex, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Neighbours of all queries as flat (ids, similarity, query row) arrays, plus the search frontier."""
    sims, ids = index.search(queries, k)
    valid = ids >= 0
    rows = np.broadcast_to(np.arange(len(queries))[:, None], ids.shape)
    frontier = float(sims[:, -1].max()) if k < index.manifest.row_count else -1.0
    return ids[valid], sims[valid], rows[valid], frontier


def searched_queries(strategy: str, seeds: Seeds, extra: dict) -> np.ndarray | None:
    """The vectors a strategy searches the index around (None: blend scores every customer, no search)."""
    if strategy == "centroid":
        return seeds.centroid()
    if strategy == "knn-vote":
        return seeds.vectors
    if strategy == "multi-centroid":
        return extra["centroids"]
    if strategy == "classifier":  # its pool: each seed's neighbours and the centroid's
        return np.vstack([seeds.vectors, seeds.centroid()])
    return None


def group_by_id(ids: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per distinct id: (id, max value, position of the (first) max in the input, sum of values); one sort."""
    order = np.argsort(ids, kind="stable")
    ids_sorted, values_sorted = ids[order], values[order]
    starts = np.flatnonzero(np.r_[True, ids_sorted[1:] != ids_sorted[:-1]])
    best = np.maximum.reduceat(values_sorted, starts)
    sums = np.add.reduceat(values_sorted, starts)
    group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(ids_sorted)]))
    hits = np.flatnonzero(values_sorted == best[group])
    first = hits[np.r_[True, group[hits][1:] != group[hits][:-1]]]
    return ids_sorted[starts], best, order[first], sums


def ranked(ids: np.ndarray, scores: np.ndarray, sims: np.ndarray, frontier: float, nearest: np.ndarray | None = None,
           capped: bool = False) -> Candidates:
    order = np.lexsort((ids, -scores))
    return Candidates(ids[order], scores[order].astype(np.float64), sims[order].astype(np.float64), frontier,
                      None if nearest is None else nearest[order], capped)


def over_vectors(index: LoadedIndex, ids: np.ndarray, use: Callable[[np.ndarray, np.ndarray], tuple]) -> tuple:
    """`use(ids, vectors)` over slices of VECTOR_SLICE customers and their stored vectors, outputs concatenated.

    `index.vectors` gives exact vectors for a compressed index (from its memory-mapped exact
    vectors, not decoded codes), so scores and nearest seeds are the same as with exact search.
    """
    slices = [ids[start : start + VECTOR_SLICE] for start in range(0, len(ids), VECTOR_SLICE)] or [ids[:0]]
    parts = [use(part, index.vectors(part)) for part in slices]
    return tuple(np.concatenate(column) for column in zip(*parts))


def centroid(index: LoadedIndex, seeds: Seeds, limit: int, **_) -> Candidates:
    query = seeds.centroid()
    ids, sims, _, frontier = search_union(index, query, limit)
    return ranked(ids, sims, sims, frontier)


def knn_vote(index: LoadedIndex, seeds: Seeds, limit: int, k_per_seed: int | None = None, **_) -> Candidates:
    """Score = sum of the similarities of the seeds that have the customer among their k nearest
    (each times the seed's weight, for a value-based seed).

    Seeds' neighbourhoods overlap, so the union of k neighbours per seed holds far fewer than
    seeds*k customers. k grows by the observed shortfall (at least doubling) until the union
    holds `limit` customers: a few searches of all seeds, not one per doubling of the audience.
    k is capped so one search returns at most MAX_VOTES neighbours (memory and time).
    """
    population = index.manifest.row_count
    floor = k_per_seed or 10
    cap = min(population, max(floor, MAX_VOTES // seeds.found))
    k = min(cap, max(floor, math.ceil(2 * limit / seeds.found)))
    while True:
        ids, sims, rows, frontier = search_union(index, seeds.vectors, k)
        unique, best, at, votes = group_by_id(ids, sims)
        if len(unique) >= limit or k >= cap:
            break
        k = min(cap, max(2 * k, math.ceil(1.5 * k * limit / len(unique))))
    if seeds.weights is not None:
        votes = group_by_id(ids, sims * seeds.weights[rows])[3]
    return ranked(unique, votes, best, frontier, seeds.ids[rows[at]], capped=k >= cap and frontier > -1.0)


def seed_clusters(vectors: np.ndarray, seed: int, max_k: int = 8, weights: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """Sub-centroids of the seed by (value-weighted) k-means, k chosen by silhouette (k=1 when no split is clearly better)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    upper = min(max_k, len(vectors) // 20)
    best = (0.1, 1, normalise(np.average(vectors, axis=0, weights=weights)[None, :]))  # a split must beat silhouette 0.1
    scores = {}
    for k in range(2, upper + 1):
        model = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(vectors, sample_weight=weights)
        score = float(silhouette_score(vectors, model.labels_, sample_size=min(len(vectors), 2000), random_state=seed))
        scores[k] = round(score, 3)
        if score > best[0]:
            best = (score, k, normalise(model.cluster_centers_))
    return best[2], {"clusters": best[1], "silhouette": scores}


def multi_centroid(index: LoadedIndex, seeds: Seeds, limit: int, centroids: np.ndarray, **_) -> Candidates:
    ids, sims, _, frontier = search_union(index, centroids, limit)
    unique, best, _, _ = group_by_id(ids, sims)
    return ranked(unique, best, best, frontier)


@dataclass
class PUClassifier:
    """Seed (labelled) vs population sample (unlabelled) logistic regression, Elkan-Noto corrected."""
    model: object
    label_frequency: float  # c = P(labelled | positive), estimated on held-out seeds

    def probability(self, vectors: np.ndarray) -> np.ndarray:
        return np.clip(self.model.predict_proba(vectors)[:, 1] / self.label_frequency, 0.0, 1.0)


def train_classifier(con: duckdb.DuckDBPyConnection, seeds: Seeds, seed: int, sample_size: int | None = None) -> tuple[PUClassifier, dict]:
    sample_size = sample_size or int(np.clip(5 * seeds.found, 5_000, 50_000))
    table = con.sql(
        f"select customer_id, embedding from customer_embeddings using sample reservoir({sample_size} rows) repeatable ({seed})"
    ).to_arrow_table()
    ids, unlabelled = ids_and_vectors(table)
    return fit_pu(seeds.vectors, unlabelled[~np.isin(ids, seeds.ids)], seed, seeds.weights)


def fit_pu(positives: np.ndarray, unlabelled: np.ndarray, seed: int, positive_weights: np.ndarray | None = None
           ) -> tuple[PUClassifier, dict]:
    """The PU classifier of seed vectors (value-weighted by `positive_weights`) against unlabelled vectors
    (also refitted per fold by reach.py)."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    held_out = rng.random(len(positives)) < 0.2
    if held_out.sum() < 5 or (~held_out).sum() < 5:
        held_out = np.zeros(len(positives), dtype=bool)
    train_pos = positives[~held_out]
    x = np.vstack([train_pos, unlabelled])
    y = np.r_[np.ones(len(train_pos)), np.zeros(len(unlabelled))]
    weights = None if positive_weights is None else np.r_[positive_weights[~held_out], np.ones(len(unlabelled))]
    model = LogisticRegression(C=1.0, max_iter=1000, random_state=seed).fit(x, y, sample_weight=weights)
    check = positives[held_out] if held_out.any() else train_pos
    c = float(np.clip(model.predict_proba(check)[:, 1].mean(), 1e-6, 1.0))
    return PUClassifier(model, c), {"population_sample": int(len(unlabelled)), "label_frequency": round(c, 4)}


def classifier(index: LoadedIndex, seeds: Seeds, limit: int, pu: PUClassifier, **_) -> Candidates:
    """Candidate pool = each seed's neighbours plus the centroid's, re-ranked by the PU classifier."""
    pool = knn_vote(index, seeds, 2 * limit)
    around_centroid = centroid(index, seeds, 2 * limit)
    ids = np.union1d(pool.ids, around_centroid.ids)
    search = seed_search(seeds, len(ids))
    probability, nearest, nearest_sims = over_vectors(
        index, ids, lambda _, vectors: (pu.probability(vectors), *nearest_seeds(vectors, seeds, search)))
    return ranked(ids, probability, nearest_sims, max(pool.frontier, around_centroid.frontier), nearest)


def blend_inputs(ids: np.ndarray, vectors: np.ndarray, raw) -> "BlendInputs":
    """Embeddings (aligned to `ids`) beside the customers' standardised raw features (none: a zero-width block),
    with the raw columns' names and scale so the blend finds its activity and preference columns."""
    from lookalike_cli.audiences.blend import BlendInputs

    if raw is None:
        return BlendInputs(vectors, np.zeros((len(ids), 0), np.float32))
    return BlendInputs(vectors, raw.matrix[raw.rows(ids)], tuple(raw.names), raw.scale)


def fit_blend_for(seeds: Seeds, population_ids: np.ndarray, population_vectors: np.ndarray, raw, seed: int,
                  embeddings: bool = True):
    """The self-validated blend of a seed against the unlabelled population (every non-seed customer, sampled).

    `embeddings=False` fits it without the encoder (a benchmark's ablation; expand always uses them)."""
    from lookalike_cli.audiences.blend import fit_blend

    unlabelled = np.flatnonzero(~np.isin(population_ids, seeds.ids))
    if len(unlabelled) > BLEND_UNLABELLED:
        unlabelled = np.sort(np.random.default_rng(seed).choice(unlabelled, BLEND_UNLABELLED, replace=False))
    seed_inputs = blend_inputs(seeds.ids, seeds.vectors, raw)
    seed_inputs.weights = seeds.weights
    return fit_blend(seed_inputs, blend_inputs(population_ids[unlabelled], population_vectors[unlabelled], raw), seed, embeddings)


def blend(index: LoadedIndex, seeds: Seeds, limit: int, blend_population: tuple, **_) -> Candidates:
    """Every customer scored by the fitted blend (exact: no candidate pool); similarity = cosine to the centroid."""
    ids, vectors, raw, fitted = blend_population
    scores = fitted.score(blend_inputs(ids, vectors, raw))
    similarities = vectors @ seeds.centroid()[0]
    return ranked(ids, scores, similarities, -1.0)


def embedding_products(index: LoadedIndex, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids ascending, [n, m + 1] float64) for every vector of the index: its products with the m
    `directions` columns, then its squared norm. One pass over the stored vectors (an IVF index's
    lists, a compressed index's memory-mapped exact vectors), in slices, without searching."""
    import faiss

    def products(vectors: np.ndarray) -> np.ndarray:
        vectors = vectors.astype(np.float64)
        return np.column_stack([vectors @ directions, np.einsum("ij,ij->i", vectors, vectors)])

    parts, ids = [], []
    ivf = faiss.try_extract_index_ivf(index.index) if index.exact is None else None
    ivf = faiss.downcast_index(ivf) if ivf is not None else None
    if index.exact is not None:
        vectors, order = index.exact.vectors, index.exact.order
        for start in range(0, len(vectors), VECTOR_SLICE):
            parts.append(products(np.asarray(vectors[start : start + VECTOR_SLICE])))
        ids = np.empty(len(order), dtype=np.int64)
        ids[np.asarray(order)] = index.exact.sorted_ids  # exact row -> customer id
        ids = [ids]
    elif isinstance(ivf, faiss.IndexIVFFlat) and isinstance(index.index, faiss.IndexIDMap2):
        # The lists hold the float32 vectors themselves: read in place, no reconstruct copies.
        external = faiss.vector_to_array(index.index.id_map)
        lists, dim = ivf.invlists, ivf.d
        for number in range(ivf.nlist):
            size = lists.list_size(number)
            if size:
                codes = faiss.rev_swig_ptr(lists.get_codes(number), size * dim * 4).view(np.float32).reshape(size, dim)
                parts.append(products(codes))
                ids.append(external[faiss.rev_swig_ptr(lists.get_ids(number), size).view(np.int64)])
    else:
        everyone = np.sort(faiss.vector_to_array(index.index.id_map)) if hasattr(index.index, "id_map") else None
        if everyone is None:
            raise LookalikeError(f"The {index.manifest.index_type} index has no id map to read its vectors by; "
                                 "rebuild it with `lookalike build-index`.")
        (values,) = over_vectors(index, everyone, lambda _, vectors: (products(vectors),))
        return everyone, values
    ids, values = np.concatenate(ids), np.concatenate(parts)
    order = np.argsort(ids, kind="stable")
    return ids[order], values[order]


class PopulationReader:
    """customer_features of the whole population in batches (raw_features.population_batches), read on a
    background thread up to PREFETCH_BATCHES ahead from the moment it is made: expand makes it before
    fitting the blend, so the read overlaps the fit (DuckDB and numpy release the GIL)."""

    def __init__(self, db_path: Path, scale: tuple, names: tuple, layout_scale: tuple | None = None,
                 categories: np.ndarray | None = None):
        """`scale`: customer_features' whole raw layout (what population_batches reads); `names` and
        `layout_scale` the blend's columns when it uses only the category shares `categories` (positions)."""
        import queue
        import threading

        self.db_path, self.scale, self.names = db_path, scale, names
        self.layout_scale = scale if layout_scale is None else layout_scale
        self.categories = categories
        self.queue: "queue.Queue" = queue.Queue(maxsize=PREFETCH_BATCHES)
        self.stop = threading.Event()
        self.used = False
        self.thread = threading.Thread(target=self._read, daemon=True, name="population-prefetch")
        self.thread.start()

    def _read(self) -> None:
        from lookalike_cli.audiences.blend import share_terms
        from lookalike_cli.audiences.raw_features import population_batches

        try:
            with connection(self.db_path, read_only=True) as con:
                for ids, head, shares in self._population(con):
                    if self.stop.is_set():
                        return
                    # The fit-independent scoring terms, here on the reader's thread while the blend is fitted.
                    self.queue.put((ids, head, shares, share_terms(head, shares, self.names, self.layout_scale)))
            self.queue.put(None)
        except BaseException as exc:  # handed to the consumer, raised there
            self.queue.put(exc)

    def batches(self):
        """The batches, once (a second pass reads them again, without prefetch)."""
        if self.used:
            from lookalike_cli.audiences.raw_features import population_batches

            with connection(self.db_path, read_only=True) as con:
                for batch in self._population(con):
                    yield (*batch, None)
            return
        self.used = True
        while (item := self.queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    def _population(self, con):
        from lookalike_cli.audiences.raw_features import population_batches

        for ids, head, shares in population_batches(con, self.scale):
            yield ids, head, (shares if self.categories is None else shares[:, self.categories])

    def close(self) -> None:
        """Stop reading ahead (an expand that failed before scoring)."""
        self.stop.set()
        while self.thread.is_alive():
            try:
                self.queue.get(timeout=0.1)
            except Exception:  # noqa: BLE001 (queue.Empty: the reader is finishing)
                pass


def blend_everyone(index: LoadedIndex, seeds: Seeds, limit: int, blend_everyone: tuple, **_) -> Candidates:
    """Large populations: every customer scored by the blend fitted on the sample, straight from
    customer_features read batch by batch (category shares kept sparse, SparseRows) and one pass over
    the index's vectors for the embedding components: the same ranking as scoring a dense matrix of
    everyone, in bounded memory, with no candidate pool to miss the customers the blend ranks high."""
    from lookalike_cli.audiences.blend import SparseRows

    reader, fitted, layout = blend_everyone
    centre = seeds.centroid()[0].astype(np.float64)  # `similarity`: cosine to the seed centroid, as centroid reports it
    if layout.scale is None:  # no raw features: the embedding components alone, from the stored vectors
        everyone = embedding_products(index, centre[:, None])[0]
        scores, similarities = over_vectors(index, everyone, lambda part, vectors: (
            fitted.score(blend_inputs(part, vectors, None)), vectors @ centre))
        return ranked(everyone, scores, similarities, -1.0)
    embedded, products = embedding_products(index, np.column_stack([fitted.components.embedding_directions(), centre]))

    def score_batch(batch_ids, head, shares, terms):
        at = np.minimum(np.searchsorted(embedded, batch_ids), len(embedded) - 1)
        scored = embedded[at] == batch_ids  # customers with features but no embedding are not in the population
        rows = np.flatnonzero(scored)
        values = products[at[rows]]
        if len(rows) < len(batch_ids):  # some rows left out: their terms are computed again for the rest
            head, shares, terms = head[rows], shares[rows], None
        return batch_ids[rows], fitted.score_sparse(SparseRows(head, shares, values[:, [0, 1, 3]], terms), layout), values[:, 2]

    # Batches scored SCORE_THREADS at a time (numpy's array arithmetic releases the GIL), in order, with at
    # most 2 x SCORE_THREADS in flight so memory stays bounded.
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    parts, pending = [], deque()
    with ThreadPoolExecutor(SCORE_THREADS, thread_name_prefix="blend-score") as pool:
        for batch in reader.batches():
            pending.append(pool.submit(score_batch, *batch))
            if len(pending) >= 2 * SCORE_THREADS:
                parts.append(pending.popleft().result())
        parts.extend(future.result() for future in pending)
    ids, scores, similarities = (np.concatenate(column) for column in zip(*parts))
    return ranked(ids, scores, similarities, -1.0)


def blend_scan(index: LoadedIndex, seeds: Seeds, limit: int, blend_scan: tuple, **_) -> Candidates:
    """Large populations under exclude_features: every customer scored on its raw features, BLEND_EXACT_MAX
    at a time (an ANN pool around the seeds would be found with the embeddings, which saw the excluded columns)."""
    from lookalike_cli.audiences.raw_features import load_raw_features, with_columns, without_columns

    db_path, fitted, scale, columns, names = blend_scan
    ids, scores = [], []
    with connection(db_path, read_only=True) as con:
        everyone = con.sql("select customer_id from customer_embeddings order by customer_id").fetchnumpy()["customer_id"]
        for start in range(0, len(everyone), BLEND_EXACT_MAX):
            raw = with_columns(without_columns(load_raw_features(con, ids=everyone[start : start + BLEND_EXACT_MAX],
                                                                 scale=scale), columns), names)
            ids.append(raw.ids)
            scores.append(fitted.score(blend_inputs(raw.ids, np.zeros((len(raw.ids), 0), np.float32), raw)))
    ids = np.concatenate(ids)
    centre = seeds.centroid()[0]
    (similarities,) = over_vectors(index, ids, lambda _, vectors: (normalise(vectors) @ centre,))
    return ranked(ids, np.concatenate(scores), similarities, -1.0)


def blend_population(con: duckdb.DuckDBPyConnection, seeds: Seeds, sample_seed: int | None = None,
                     index: LoadedIndex | None = None) -> tuple[np.ndarray, np.ndarray, object, list[str]]:
    """(ids, L2-normalised embeddings, RawFeatures or None, warnings) of every scored customer, or with
    `sample_seed` of a reservoir sample of BLEND_UNLABELLED (large populations: raw features of the sample and the seeds only;
    the sample's vectors from `index` when given: reading every embedding to keep 20,000 cost seconds).

    Without usable raw features (customer_features or categories missing or incomplete) the blend
    falls back to its embedding components and says so.
    """
    from lookalike_cli.audiences.raw_features import load_raw_features

    sample = "" if sample_seed is None else f"using sample reservoir({BLEND_UNLABELLED} rows) repeatable ({sample_seed}) "
    if sample_seed is not None and index is not None:
        ids = np.sort(con.sql(f"select customer_id from customer_embeddings {sample}").fetchnumpy()["customer_id"]).astype(np.int64)
        vectors = normalise(index.vectors(ids))
    else:
        table = con.sql(f"select customer_id, embedding from customer_embeddings {sample}order by customer_id").to_arrow_table()
        ids, vectors = ids_and_vectors(table)
        vectors = normalise(vectors)
    try:
        raw = load_raw_features(con, ids=None if sample_seed is None else np.union1d(ids, seeds.ids))
    except (LookalikeError, duckdb.Error) as exc:
        return ids, vectors, None, [f"blend: no raw features ({str(exc).splitlines()[0]}); using the embedding components only."]
    missing = ~np.isin(seeds.ids, raw.ids)
    if missing.any():
        raise LookalikeError(f"{int(missing.sum()):,} seed(s) have embeddings but no row in customer_features "
                             f"(e.g. {seeds.ids[missing][:3].tolist()}): rebuild with `lookalike build` and re-score.")
    keep = np.isin(ids, raw.ids)
    return ids[keep], vectors[keep], raw, []


def seed_search(seeds: Seeds, members: int) -> "faiss.Index":
    """Search over the seeds for the nearest seed of `members` vectors; IVF when exact would be slow."""
    if members * seeds.found <= 200_000_000:
        return exact_search(seeds.vectors)
    return ivf_search(seeds.vectors, nlist=int(math.sqrt(seeds.found)), nprobe=8, seed=0)


def nearest_seeds(vectors: np.ndarray, seeds: Seeds, search: "faiss.Index | None" = None) -> tuple[np.ndarray, np.ndarray]:
    """Nearest seed id and similarity per vector (`search` from seed_search, built once for many slices)."""
    search = seed_search(seeds, len(vectors)) if search is None else search
    sims, rows = top_k(search, vectors, 1)
    return seeds.ids[rows[:, 0]], sims[:, 0]


# What expand and the publish import on first use (scikit-learn alone takes over a second): loaded on
# a thread while expand reads the index and the seed (DuckDB and FAISS calls release the GIL). Every
# strategy's validation fits an isotonic curve and the seed diagnostics cluster the seed; the blend
# first needs its classifiers.
EXPAND_IMPORTS = ("sklearn.isotonic", "sklearn.cluster", "sklearn.metrics", "matplotlib.figure",
                  "matplotlib.backends.backend_agg")
BLEND_IMPORTS = ("sklearn.linear_model", "lightgbm", "scipy.sparse", *EXPAND_IMPORTS)


def import_in_background(modules: tuple[str, ...]) -> None:
    """Start importing `modules` on a daemon thread; whoever imports one of them first waits for it
    (Python's per-module import lock), so nothing is imported twice or half. A failure is left for
    the real import to raise."""
    import importlib
    import sys
    import threading

    def load() -> None:
        for module in modules:
            if module not in sys.modules:
                try:
                    importlib.import_module(module)
                except Exception:  # noqa: BLE001 (raised again, with context, where it is used)
                    return

    threading.Thread(target=load, daemon=True, name="blend-imports").start()


def in_background(function: Callable, *args) -> "concurrent.futures.Future":
    """`function(*args)` started on a daemon thread; its Future's result() waits and raises as a direct call would."""
    import concurrent.futures
    import threading

    future: concurrent.futures.Future = concurrent.futures.Future()

    def run() -> None:
        try:
            future.set_result(function(*args))
        except BaseException as exc:  # noqa: BLE001 (raised by result(), in the caller's thread)
            future.set_exception(exc)

    threading.Thread(target=run, daemon=True, name=getattr(function, "__name__", "background")).start()
    return future


def _stopping_background_reads(function):
    """`function` given a list to register its background reads in (PopulationReader), each stopped however
    it ends: an exception (a bad seed, a kill of the caller's thread) must not leave a reader thread behind."""

    @functools.wraps(function)
    def run(*args, **kwargs):
        readers: list = []
        try:
            return function(*args, readers=readers, **kwargs)
        finally:
            for reader in readers:
                reader.close()

    return run


@_stopping_background_reads
def expand(
    db_path: Path,
    index_dir: Path,
    seed_sql: str | None = None,
    seed_table: str | None = None,
    seed_file: str | Path | None = None,
    seed_value_sql: str | None = None,
    size: str | int | None = None,
    min_similarity: float | None = None,
    strategy: str = DEFAULT_STRATEGY,
    exclude_sql: str | None = None,
    k_per_seed: int | None = None,
    seed: int = 0,
    progress: Progress = print,
    loaded_index: LoadedIndex | None = None,
    min_expected_lift: float | None = None,
    exclude_features: str | list | None = None,
    reach_backtest: "BacktestCurve | None" = None,
    *,
    readers: list,
) -> Expansion:
    """Compute an audience (nothing is written): members ranked by score, the audiences row and its reach curve.

    `min_expected_lift` sizes it by the reach curve instead of `size` / `min_similarity`;
    `exclude_features` ('gender,age_band' or a list) keeps customer_features columns out of the
    ranking (blend only); `reach_backtest` (reach.latest_backtest) puts a backtest's measured lift
    on the curve where it measured; `seed_value_sql` (customer_id, value) makes a value-based seed,
    each seed weighing by its value (seeds.seed_values says what is accepted; seed members without a
    row weigh the median). A long-lived process (a service, a benchmark) can pass
    `loaded_index` to skip reading the index file; its model version is checked all the same.
    `readers` is filled in by the decorator, not by callers.
    """
    from lookalike_cli.audiences.reach import population_sample, reach_curve, size_for_lift, Validation, vector_validation

    if strategy not in STRATEGIES:
        raise LookalikeError(f"Unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}.")
    check_cut(size, min_similarity, min_expected_lift)
    excluded_features = feature_list(exclude_features)
    check_exclusion(excluded_features, strategy, min_similarity)
    started = time.perf_counter()
    import_in_background(BLEND_IMPORTS if strategy == "blend" else EXPAND_IMPORTS)
    with connection(db_path, read_only=True) as con:
        require_table(con, "customer_embeddings", "Build it with `lookalike dbt build` after `lookalike train`.")
        versions = [r[0] for r in con.execute("select distinct model_version from customer_embeddings").fetchall()]
        current = versions[0] if len(versions) == 1 else None
        # The index file (hundreds of MB at 1M customers) is read on a thread while DuckDB resolves the
        # seed and the exclusions: FAISS's read releases the GIL. Its errors are raised here all the same.
        index_loading = None if loaded_index is not None else in_background(load_index, index_dir, current)
        if excluded_features:
            from lookalike_cli.audiences.raw_features import check_excludable

            check_excludable(con, excluded_features)
        try:
            seeds = resolve_seeds(con, seed_sql, seed_table, seed_file)
            seed_value = seed_value_weights(con, seeds, seed_value_sql) if seed_value_sql else None
            excluded, excluded_counts = excluded_ids(con, exclude_sql)
        finally:
            index = loaded_index or index_loading.result()
        check_model_version(index.manifest, current)
        manifest = index.manifest
        population = manifest.row_count
        target = parse_size(size, population)
        warnings = list(seeds.warnings)
        check_target(target, size, population, seeds)
        blocked = np.union1d(seeds.ids, excluded)
        target = cap_share(target, size, candidate_count(con, population, blocked))
        progress(f"Seeds: {seeds.found:,} found, {seeds.missing:,} missing; excluding {len(blocked):,} "
                 f"(seeds + {excluded_counts or 'no suppression lists'}); strategy {strategy}")

        extra: dict = {}
        parameters = base_parameters(seeds, size, min_similarity, exclude_sql, seed)
        if excluded_features:
            parameters["exclude_features"] = list(excluded_features)
        if seed_value:
            parameters["seed_value"] = {"weighted": True, **seed_value}
            progress(f"  value-weighted seed: values {seed_value['min']:.4g}..{seed_value['max']:.4g} "
                     f"(median {seed_value['median']:.4g}), worth {seed_value['effective_seeds']:,} equally weighted seeds")
        validation, sample_scores = None, None
        if strategy == "multi-centroid":
            extra["centroids"], info = seed_clusters(seeds.vectors, seed, weights=seeds.weights)
            parameters.update(info)
            progress(f"  seed sub-clusters: {info['clusters']} (silhouette {info['silhouette']})")
        elif strategy == "classifier":
            extra["pu"], info = train_classifier(con, seeds, seed)
            parameters.update(info)
            progress(f"  PU classifier on {info['population_sample']:,} population vectors, label frequency c={info['label_frequency']}")
        elif strategy == "blend":
            exact = population <= BLEND_EXACT_MAX
            ids_all, vectors_all, raw, raw_warnings = blend_population(con, seeds, None if exact else seed, index)
            scale = None if raw is None else raw.scale
            if excluded_features:
                from lookalike_cli.audiences.raw_features import without_columns

                if raw is None:
                    raise ParameterError(f"{{exclude_features}} ranks on raw features only, and there are none: "
                                         f"{raw_warnings[0]}", "exclude_features")
                raw = without_columns(raw, excluded_features)
                progress(f"  excluding {', '.join(excluded_features)}: {len(raw.names)} raw feature columns left; "
                         "no embedding components (the encoder saw every column)")
            warnings += raw_warnings
            screened = None
            if raw is not None:
                from lookalike_cli.audiences.raw_features import screened_categories, with_columns

                screened = screened_categories(raw, seeds.ids, BLEND_MAX_CATEGORIES, seeds.weights)
            categories = None
            if screened is not None:
                total = sum(n.startswith("category:") for n in raw.names)
                kept = set(screened)
                share_names = [n for n in raw.names if n.startswith("category:")]
                categories = np.array([i for i, n in enumerate(share_names) if n in kept], dtype=np.int64)
                raw = with_columns(raw, [n for n in raw.names if not n.startswith("category:") or n in kept])
                progress(f"  {total:,} categories: the blend ranks on the {len(kept):,} whose shares set the seed "
                         f"apart most (largest |seed mean z-score|, at most {BLEND_MAX_CATEGORIES:,})")
            reader = None if exact or excluded_features or raw is None else PopulationReader(
                db_path, scale, tuple(raw.names), raw.scale, categories)
            if reader is not None:
                readers.append(reader)
            fitted = fit_blend_for(seeds, ids_all, vectors_all, raw, seed, embeddings=not excluded_features)
            validation = Validation(*fitted.validation) if fitted.validation is not None else None
            if exact:
                extra["blend_population"] = (ids_all, vectors_all, raw, fitted)
            elif excluded_features:
                extra["blend_scan"] = (db_path, fitted, scale, excluded_features, tuple(raw.names))
                progress(f"  blend scores every customer on raw features, {BLEND_EXACT_MAX:,} at a time")
            else:
                extra["blend_everyone"] = (reader, fitted, blend_inputs(ids_all[:0], vectors_all[:0], raw))
                sample_scores = lambda: fitted.score(blend_inputs(ids_all, vectors_all, raw))
                progress(f"  blend fitted on a sample, scores all {population:,} customers (> {BLEND_EXACT_MAX:,}) "
                         "batch by batch")
            parameters["blend"] = {**fitted.evidence, "scored": "every customer"}
            if screened is not None:
                parameters["blend"]["categories"] = {"used": len(screened), "of": total,
                                                     "chosen": "largest |mean z-score| of the seed's category shares"}
            progress(f"  blend weights {fitted.evidence['weights']} (self-validated: {fitted.evidence['folds']} folds "
                     f"of the seed, AUC of held-out seeds {fitted.evidence.get('validation_auc', 'n/a')})")
        if strategy == "knn-vote" and k_per_seed:
            parameters["k_per_seed"] = k_per_seed
        if strategy != "blend":
            sample = population_sample(con, seeds.ids, seed, index)
            # knn-vote's k as its search starts (it grows when the union of neighbours falls short).
            k = max(k_per_seed or 10, math.ceil(2 * ((target or 1000) + len(blocked) + 100) / seeds.found))
            validation = vector_validation(strategy, seeds.vectors, sample, seed, population,
                                           clusters=len(extra.get("centroids", [])), k_per_seed=k)
            centre = seeds.centroid()[0]  # the centroid strategy's own centre, weighted for a value-based seed
            sample_scores = {"centroid": lambda: sample @ centre,
                             "multi-centroid": lambda: (sample @ extra["centroids"].T).max(axis=1),
                             "classifier": lambda: extra["pu"].probability(sample)}.get(strategy)
        if min_expected_lift is not None:
            target, chosen = size_for_lift(float(min_expected_lift), population, population - seeds.found, validation,
                                           reach_backtest, seeds.found)
            parameters.update(min_expected_lift=float(min_expected_lift), expected_lift=round(chosen["expected_lift"], 4),
                              lift_source=chosen["source"])
            progress(f"  min expected lift {float(min_expected_lift):g}: {target:,} customers ({target / population:.2%}), "
                     f"expected lift {chosen['expected_lift']:.2f} ({chosen['source']})")
    # The self-checked nprobe was tuned on random customers; seeds sit in dense regions, where it can fall short.
    searched_index = index
    queries = searched_queries(strategy, seeds, extra)
    if queries is not None:
        searched_index, probe = probe_recall(index, queries, seed)
        parameters["seed_recall_probe"] = probe.as_parameters()
        progress(f"  {probe.summary()}")
        if not probe.passed:
            warnings.append(f"The seed recall probe reached recall@{probe.k} {probe.judged:.3f} < {TARGET_RECALL} at "
                            f"{probe.knob} {probe.chosen}, its ceiling: rebuild the index with `lookalike build-index` "
                            "(more lists, or index type ivf rather than a compressed one).")
    search = {"centroid": centroid, "knn-vote": knn_vote, "multi-centroid": multi_centroid, "classifier": classifier,
              "blend": blend if "blend_population" in extra else blend_scan if "blend_scan" in extra else blend_everyone}[strategy]

    # Widen the search until enough eligible customers are found (size) or the search frontier
    # drops below the threshold (min-similarity), or the whole population is covered (frontier -1).
    limit = (target or 1000) + len(blocked) + 100
    while True:
        found = search(searched_index, seeds, limit, k_per_seed=k_per_seed, **extra)
        keep = ~np.isin(found.ids, blocked)
        if min_similarity is not None:
            keep &= found.similarities >= min_similarity
        enough = (target is not None and keep.sum() >= target) or (target is None and found.frontier < min_similarity)
        if enough or found.frontier <= -1.0 or found.capped:
            break
        limit *= 2
        progress(f"  widening the search ({limit:,} candidates)")
    ids, scores, sims = found.ids[keep], found.scores[keep], found.similarities[keep]
    nearest = found.nearest_seed[keep] if found.nearest_seed is not None else None
    eligible_scores = scores
    if target is not None:
        ids, scores, sims = ids[:target], scores[:target], sims[:target]
        nearest = nearest[:target] if nearest is not None else None
    check_found(len(ids), target, size if min_expected_lift is None else target, warnings)
    curve = reach_curve(population, eligible_scores, len(ids), population - seeds.found, validation, reach_backtest,
                        sample_scores)
    if found.capped and not enough:
        warnings.append(f"knn-vote stopped at its cap of {MAX_VOTES:,} neighbours over all {seeds.found:,} seeds before "
                        "reaching the size/similarity cut; use fewer seeds or another strategy.")
    if nearest is None:
        search = seed_search(seeds, len(ids))
        nearest, _ = over_vectors(index, ids, lambda _, vectors: nearest_seeds(vectors, seeds, search))
    return ranked_expansion(ids, scores, sims, nearest, seeds=seeds, strategy=strategy, parameters=parameters,
                            excluded_count=len(excluded), population=population, model_version=manifest.model_version,
                            index_version=manifest.index_version, index_type=manifest.index_type, started=started,
                            warnings=warnings, progress=progress, reach=curve, index=index)
