"""`lookalike ads cluster`: the paper's two-stage clustering (section 3.2).

Stage 1: a feed-forward classifier from the ad embedding to the product type, trained on the
ads whose product type is known (the paper's single-product ads); ads without one (multi-product
ads) take its prediction. Stage 2: agglomerative clustering with cosine distance, average linkage
and a distance threshold, separately within each product type, so no all-pairs distance matrix
over every ad is ever built.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from lookalike_cli.threads import single_thread
from lookalike_cli.errors import LookalikeError, ParameterError
from lookalike_cli.vectors import to_matrix
from lookalike_cli.warehouse.connection import connection, replace_tables, require_table
from lookalike_cli.progress import Progress, quiet

UNKNOWN_TYPE = "unknown"


@dataclass(frozen=True)
class ClusterOptions:
    distance_threshold: float = 0.4
    hidden: int = 128
    holdout_fraction: float = 0.2
    seed: int = 0


def read_embedded_ads(con) -> tuple[pd.DataFrame, np.ndarray, str]:
    require_table(con, "ad_embeddings", "Run `lookalike ads train-embedding` first.")
    table = con.sql("""
        select ads.ad_id, ads.department, ads.category, ads.product_type, emb.embedding, emb.model_version
        from stg_ads as ads
        inner join ad_embeddings as emb using (ad_id)
        order by ads.ad_id
    """).to_arrow_table()
    if table.num_rows == 0:
        raise LookalikeError("ad_embeddings has no rows matching stg_ads: rerun `lookalike ads train-embedding`.")
    vectors = to_matrix(table.column("embedding"))
    frame = table.drop_columns(["embedding"]).to_pandas()
    version = str(frame["model_version"].iloc[0])
    return frame.drop(columns="model_version"), vectors, version


def classify_product_types(vectors: np.ndarray, known: pd.Series, options: ClusterOptions, progress: Progress = quiet) -> tuple[np.ndarray, np.ndarray, dict]:
    """Product type per ad (known label, else the classifier's) and the classifier's confidence."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    labelled = known.notna().to_numpy()
    labels = known.to_numpy(dtype=object)
    if not labelled.any():
        raise LookalikeError("No ad has a product_type: stage 1 needs labelled ads (raw ads column product_type).")
    classes = np.unique(labels[labelled].astype(str))
    result = labels.copy()
    confidence = np.ones(len(labels))
    metrics: dict = {"labelled_ads": int(labelled.sum()), "unlabelled_ads": int((~labelled).sum()), "product_types": len(classes)}
    if len(classes) == 1:
        result[~labelled] = classes[0]
        return result.astype(str), confidence, metrics

    class Classifier(MLPClassifier):
        def fit(self, x, y):
            # Stopping at max_iter is the intended budget; the convergence warning would only be noise.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                return super().fit(x, y)

    def classifier() -> MLPClassifier:
        return Classifier(hidden_layer_sizes=(options.hidden,), max_iter=300, random_state=options.seed)


    x, y = vectors[labelled], labels[labelled].astype(str)
    if options.holdout_fraction > 0 and len(y) >= 20:
        x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=options.holdout_fraction, random_state=options.seed)
        metrics["holdout_accuracy"] = float((classifier().fit(x_train, y_train).predict(x_test) == y_test).mean())
        progress(f"  stage 1: product-type classifier held-out accuracy {metrics['holdout_accuracy']:.3f} on {len(y_test):,} labelled ads")
    model = classifier().fit(x, y)
    if (~labelled).any():
        probabilities = model.predict_proba(vectors[~labelled])
        result[~labelled] = model.classes_[probabilities.argmax(axis=1)]
        confidence[~labelled] = probabilities.max(axis=1)
    return result.astype(str), confidence, metrics


def cluster_within_types(vectors: np.ndarray, product_types: np.ndarray, distance_threshold: float) -> np.ndarray:
    """Global cluster ids (1..G): agglomerative clusters inside each product type, largest first."""
    from sklearn.cluster import AgglomerativeClustering

    cluster_ids = np.zeros(len(product_types), dtype=np.int64)
    next_id = 1
    for product_type in sorted(set(product_types)):
        members = np.flatnonzero(product_types == product_type)
        if len(members) == 1:
            local = np.zeros(1, dtype=np.int64)
        else:
            local = AgglomerativeClustering(n_clusters=None, distance_threshold=distance_threshold, metric="cosine",
                                            linkage="average").fit_predict(vectors[members])
        sizes = np.bincount(local)
        rank = np.empty_like(sizes)
        rank[np.lexsort((np.arange(len(sizes)), -sizes))] = np.arange(len(sizes))
        cluster_ids[members] = next_id + rank[local]
        next_id += len(sizes)
    return cluster_ids


def strings(values) -> list[str | None]:
    return [None if value is None or (isinstance(value, float) and np.isnan(value)) else str(value) for value in values]


@single_thread
def cluster_ads(db_path: Path, options: ClusterOptions = ClusterOptions(), progress: Progress = quiet) -> dict:
    """Write ad_clusters (one row per ad) in one transaction; return counts and stage-1 metrics."""
    if not 0 < options.distance_threshold <= 2:
        raise ParameterError(f"{{distance_threshold}} must be in (0, 2] (cosine distance), got {options.distance_threshold}.",
                             "distance_threshold")
    started = time.perf_counter()
    with connection(db_path, read_only=True) as con:
        ads, vectors, embedding_version = read_embedded_ads(con)
    progress(f"Clustering {len(ads):,} ads (embeddings {embedding_version}) ...")
    product_types, confidence, metrics = classify_product_types(vectors, ads["product_type"], options, progress)
    # Ads placed by the classifier take the department and category of their predicted type.
    taxonomy = ads.dropna(subset=["product_type"]).groupby("product_type")[["department", "category"]].agg(
        lambda values: values.mode().iloc[0] if values.notna().any() else None)
    known = ads["product_type"].notna().to_numpy()
    department = np.where(known, ads["department"], taxonomy["department"].reindex(product_types).to_numpy())
    category = np.where(known, ads["category"], taxonomy["category"].reindex(product_types).to_numpy())
    cluster_ids = cluster_within_types(vectors, product_types, options.distance_threshold)
    sizes = np.bincount(cluster_ids)[cluster_ids]
    table = pa.table({
        "ad_id": pa.array(ads["ad_id"].to_numpy(np.int64)),
        "department": pa.array(strings(department), type=pa.string()),
        "category": pa.array(strings(category), type=pa.string()),
        "product_type": pa.array(product_types, type=pa.string()),
        "product_type_source": pa.array(np.where(known, "label", "classifier"), type=pa.string()),
        "product_type_confidence": pa.array(confidence, type=pa.float64()),
        "cluster_id": pa.array(cluster_ids, type=pa.int64()),
        "cluster_size": pa.array(sizes, type=pa.int64()),
        "distance_threshold": pa.array([options.distance_threshold] * len(ads), type=pa.float64()),
        "embedding_model_version": pa.array([embedding_version] * len(ads), type=pa.string()),
    })
    with connection(db_path) as con:
        replace_tables(con, {"ad_clusters": table})
    metrics.update(ads=len(ads), clusters=int(cluster_ids.max()), singleton_clusters=int((np.bincount(cluster_ids)[1:] == 1).sum()),
                   seconds=round(time.perf_counter() - started, 1))
    progress(f"Wrote ad_clusters: {len(ads):,} ads in {metrics['clusters']:,} clusters over {metrics['product_types']} product types "
             f"({metrics['singleton_clusters']:,} single-ad clusters).")
    return metrics
