"""Backtest: would this audience have worked? Hide half of a known outcome and try to find it.

Given converters (a SQL query: coupon redeemers of a campaign, a planted segment, buyers of a
category later on) within a population (default: every scored customer), each split draws a
random half of the converters as the seed and hides the rest. Every method then ranks every
non-seed customer of the population; at audience sizes of 1/2/5/10/20% of the population we
measure recall, precision and lift of the hidden converters, and AUC over the whole ranking.
Means and standard deviations are over the splits.

With a value per converter (`value_sql`: customer_id, value, e.g. what each converter spent) the
backtest also reports **value captured**: the share of the hidden converters' total value that falls
in the top k%, beside recall (the share of their number). Every model strategy then runs twice on the
same splits: unweighted (`model:<strategy>`) and with the seed weighted by the seed converters'
values (`model:<strategy>+value`, what `expand --seed-value-sql` does).

Methods, all ranking the same candidates:
- `model:<strategy>`: expand's own ranking functions (blend, centroid, multi-centroid, knn-vote,
  classifier) on the encoder's embeddings, asked for the whole population instead of a top-K
  (blend: its propensity classifier's unlabelled customers are the candidates, as for
  `raw-classifier`);
- `random`: a random order (lift 1 by construction, the floor);
- `activity`: order-line count in the feature window, biggest first;
- `spend`: total spend in the feature window, biggest first;
- `rfm`: recency, frequency and spend (z-scores of their logs, equal weights);
- `raw-shares-cosine`: cosine to the seed centroid on the raw per-category shares (no scaling);
- `raw-cosine`: cosine to the seed centroid on standardised raw features (no model);
- `raw-classifier`: logistic regression seed vs population (a sample of the other candidates) on the
  category shares as stored + log order-line count (scikit-learn's default C, class-balanced);
- `raw-gbm`: the same classifier with LightGBM (60 shallow trees, one thread, deterministic).
The blend (`blend.py`) has activity, RFM, spend and both classifiers among its components, so its
self-validation can choose them when a seed favours them.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
from threadpoolctl import threadpool_limits

from lookalike_cli.audiences import blend, expand as expansion
from lookalike_cli.errors import LookalikeError, ParameterError
from lookalike_cli.index.faiss_index import LoadedIndex, check_model_version, load_index, read_embeddings
from lookalike_cli.audiences.publish import insert_rows, publish_tables
from lookalike_cli.audiences.raw_features import RawFeatures, load_raw_features
from lookalike_cli.audiences.seeds import Seeds, query_ids, seed_values
from lookalike_cli.warehouse.connection import connection, table_exists
from lookalike_cli.progress import Progress

SIZES_PERCENT = (1.0, 2.0, 5.0, 10.0, 20.0)
BASELINES = ("random", "activity", "spend", "rfm", "raw-shares-cosine", "raw-cosine", "raw-classifier", "raw-gbm")
# The default, the default without its embedding components (does the encoder earn its place?) and
# embedding-only ranking. The ablation is a backtest method, not an expand strategy.
ABLATION = "blend-no-embedding"
DEFAULT_STRATEGIES = ("blend", ABLATION, "centroid")
CURVE_PERCENT = tuple(float(p) for p in (1, 2, 3, 4, 5, 7.5, 10, 12.5, 15, 20, 25, 30, 40, 50))
MIN_CONVERTERS = 10

BACKTESTS_DDL = """
create table if not exists audience_backtests (
    backtest_id bigint not null,
    name varchar not null,
    created_at timestamp not null,
    method varchar not null,
    size_percent double not null,
    audience_size bigint not null,
    recall_mean double, recall_std double,
    precision_mean double, precision_std double,
    lift_mean double, lift_std double,
    auc_mean double, auc_std double,
    value_captured_mean double, value_captured_std double,
    splits integer not null,
    seed_size bigint not null,
    hidden_size bigint not null,
    candidate_count bigint not null,
    population_size bigint not null,
    converters_sql varchar not null,
    population_sql varchar,
    value_sql varchar,
    model_version varchar,
    parameters json
);
"""
# Columns added since the table was first published: added to older serving files before appending.
BACKTESTS_ADDED_COLUMNS = ("value_captured_mean double", "value_captured_std double", "value_sql varchar")


@dataclass
class Backtest:
    name: str
    table: pa.Table                      # one row per method x size, as written to audience_backtests
    curves: dict[str, np.ndarray]        # method -> lift [splits, len(CURVE_PERCENT)]
    info: dict = field(default_factory=dict)
    report_path: Path | None = None
    plot_paths: list[Path] = field(default_factory=list)


def lookup(ids: np.ndarray, values: np.ndarray, wanted: np.ndarray, missing: float) -> np.ndarray:
    """values aligned to `wanted` ids; `missing` where an id has no value."""
    order = np.argsort(ids)
    sorted_ids = ids[order]
    at = np.clip(np.searchsorted(sorted_ids, wanted), 0, max(len(ids) - 1, 0))
    found = sorted_ids[at] == wanted if len(ids) else np.zeros(len(wanted), dtype=bool)
    return np.where(found, values[order][at], missing)


def model_scores(index: LoadedIndex, con: duckdb.DuckDBPyConnection, seeds: Seeds, strategy: str,
                 candidates: np.ndarray, seed: int, embeddings: tuple | None = None, raw: RawFeatures | None = None,
                 evidence: list | None = None) -> np.ndarray:
    """Expand's ranking for `strategy`, asked for every customer (knn-vote: customers no seed reached rank last)."""
    if strategy in ("blend", ABLATION):
        embedding_ids, vectors = embeddings
        candidate_vectors = vectors[np.searchsorted(embedding_ids, candidates)]
        fitted = expansion.fit_blend_for(seeds, candidates, candidate_vectors, raw, seed,
                                         embeddings=strategy == "blend")
        if evidence is not None and strategy == "blend":
            evidence.append(fitted.evidence["weights"])
        return fitted.score(expansion.blend_inputs(candidates, candidate_vectors, raw))
    extra: dict = {}
    if strategy == "multi-centroid":
        extra["centroids"], _ = expansion.seed_clusters(seeds.vectors, seed, weights=seeds.weights)
    elif strategy == "classifier":
        extra["pu"], _ = expansion.train_classifier(con, seeds, seed)
    search = {"centroid": expansion.centroid, "knn-vote": expansion.knn_vote,
              "multi-centroid": expansion.multi_centroid, "classifier": expansion.classifier}[strategy]
    limit = index.manifest.row_count if strategy != "knn-vote" else max(1, math.ceil(0.5 * index.manifest.row_count))
    found = search(index, seeds, limit, **extra)
    return lookup(found.ids, found.scores, candidates, -np.inf)


def raw_shares_cosine(raw: RawFeatures, seed_ids: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Cosine to the seed's mean category-share vector on the shares as stored (sparse, unscaled)."""
    centre = np.asarray(raw.shares[raw.rows(seed_ids)].mean(axis=0)).ravel()
    rows = raw.shares[raw.rows(candidates)]
    norms = np.sqrt(np.asarray(rows.multiply(rows).sum(axis=1)).ravel()) * max(float(np.linalg.norm(centre)), 1e-12)
    return np.asarray(rows @ centre).ravel() / np.maximum(norms, 1e-12)


def preference_inputs(raw: RawFeatures, ids: np.ndarray):
    """Blend inputs without embeddings: the same activity and category-share columns the blend uses."""
    return blend.BlendInputs(np.zeros((len(ids), 0), np.float32), raw.matrix[raw.rows(ids)], tuple(raw.names), raw.scale)


def preference_classifier(raw: RawFeatures, seed_ids: np.ndarray, candidates: np.ndarray, seed: int,
                          boosted: bool = False) -> np.ndarray:
    """Seed (1) vs a sample of the other candidates (0) on category shares (as stored) + log order lines:
    logistic regression (`raw-classifier`) or LightGBM (`raw-gbm`), as the blend's shares_lr / shares_gbm."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    size = blend.GBM_UNLABELLED if boosted else expansion.BLEND_UNLABELLED
    negatives = rng.choice(candidates, size=min(len(candidates), size), replace=False)
    x = np.vstack([preference_inputs(raw, seed_ids).preference(), preference_inputs(raw, negatives).preference()])
    y = np.r_[np.ones(len(seed_ids)), np.zeros(len(negatives))]
    everyone = preference_inputs(raw, candidates).preference()
    if boosted:
        return blend.fit_gbm(x, y, seed).predict(everyone, raw_score=True)
    model = LogisticRegression(C=blend.SHARES_LR_C, max_iter=1000, class_weight="balanced").fit(x, y)
    return model.decision_function(everyone)


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    finite = np.isfinite(scores)
    floor = scores[finite].min() - 1.0 if finite.any() else 0.0
    return float(roc_auc_score(labels, np.where(finite, scores, floor)))


def hits_at(labels: np.ndarray, scores: np.ndarray, candidates: np.ndarray, sizes: list[int]) -> np.ndarray:
    """Hidden converters among the top `size` candidates, for each size (ties broken by customer id);
    with values instead of 0/1 labels, the value they hold."""
    order = np.lexsort((candidates, -scores))
    cumulative = np.cumsum(labels[order])
    return np.array([cumulative[min(s, len(cumulative)) - 1] for s in sizes])


def campaign_sql(con: duckdb.DuckDBPyConnection, campaign: str) -> tuple[str, str]:
    """(population_sql, converters_sql) of a Complete Journey campaign: the households it targeted and
    those of them that redeemed its coupons (`lookalike load-sample completejourney` loads both tables)."""
    for table in ("campaigns", "coupon_redemptions"):
        if not table_exists(con, table, schema="raw"):
            raise ParameterError(f"{{campaign}} needs raw.{table} (load it with `lookalike load-sample completejourney`).", "campaign")
    quoted = campaign.replace("'", "''")
    if not con.execute(f"select count(*) from raw.campaigns where campaign_id::varchar = '{quoted}'").fetchall()[0][0]:
        known = [r[0] for r in con.execute("select distinct campaign_id::varchar from raw.campaigns order by 1").fetchall()]
        raise LookalikeError(f"Campaign {campaign!r} targeted nobody in raw.campaigns; known campaigns: {', '.join(known[:40])}.")
    return (f"select customer_id from raw.campaigns where campaign_id::varchar = '{quoted}'",
            f"select customer_id from raw.coupon_redemptions where campaign_id::varchar = '{quoted}'")


def run_backtest(
    db_path: Path,
    index_dir: Path,
    converters_sql: str,
    population_sql: str | None = None,
    name: str = "backtest",
    splits: int = 5,
    strategies: tuple[str, ...] = DEFAULT_STRATEGIES,
    baselines: tuple[str, ...] = BASELINES,
    sizes_percent: tuple[float, ...] = SIZES_PERCENT,
    seed_fraction: float = 0.5,
    seed: int = 0,
    progress: Progress = print,
    value_sql: str | None = None,
) -> Backtest:
    """Run the protocol for every method (nothing is written); see the module docstring.

    `value_sql` (customer_id, value >= 0 per converter; other customers ignored, converters without a
    row at the median) adds value captured and the value-weighted model strategies."""
    unknown = [s for s in strategies if s not in (*expansion.STRATEGIES, ABLATION)] + [b for b in baselines if b not in BASELINES]
    if unknown:
        raise LookalikeError(f"Unknown method(s) {unknown}: strategies are {', '.join(expansion.STRATEGIES)}, "
                             f"baselines {', '.join(BASELINES)}.")
    if splits < 1 or not 0 < seed_fraction < 1:
        raise ParameterError("{splits} must be >= 1 and {seed_fraction} in (0, 1).", "splits", "seed_fraction")
    started = time.perf_counter()
    embedding_ids, vectors, model_version = read_embeddings(db_path)
    index = load_index(index_dir, expected_model_version=model_version)
    check_model_version(index.manifest, model_version)
    with connection(db_path, read_only=True) as con:
        raw = load_raw_features(con)
        population = np.intersect1d(embedding_ids, raw.ids)
        if population_sql:
            population = np.intersect1d(population, query_ids(con, population_sql, "population_sql"))
        converters = np.intersect1d(query_ids(con, converters_sql, "converters_sql"), population)
        if len(converters) < MIN_CONVERTERS:
            raise ParameterError(f"Only {len(converters)} converters are in the population (need {MIN_CONVERTERS}): "
                                 "check {converters_sql} and {population_sql} use the warehouse's customer_id.",
                                 "converters_sql", "population_sql")
        if len(converters) >= len(population):
            raise LookalikeError("Every customer of the population is a converter: nothing to rank against.")
        progress(f"Backtest {name!r}: population {len(population):,}, converters {len(converters):,} "
                 f"({len(converters) / len(population):.1%}), {splits} split(s)")
        values, value_summary = None, None
        if value_sql:
            values, value_summary, value_warnings = seed_values(con, value_sql, converters, "value_sql", "converters")
            for message in value_warnings:
                progress(f"  {message}")
        n_seed = max(1, min(len(converters) - 1, round(len(converters) * seed_fraction)))
        sizes = [max(1, math.ceil(len(population) * p / 100)) for p in sizes_percent]
        curve_sizes = [max(1, math.ceil(len(population) * p / 100)) for p in CURVE_PERCENT]
        weightings = ("", "+value") if values is not None else ("",)
        methods = [f"model:{s}{weighting}" for s in strategies for weighting in weightings] + list(baselines)
        recall = {m: [] for m in methods}
        precision = {m: [] for m in methods}
        lift = {m: [] for m in methods}
        aucs = {m: [] for m in methods}
        curves = {m: [] for m in methods}
        captured = {m: [] for m in methods}
        blend_weights: list = []
        value_blend_weights: list = []
        # Small fits (k-means of the seed, logistic regressions): one thread avoids OpenMP oversubscription.
        limits = threadpool_limits(1)
        for split in range(splits):
            rng = np.random.default_rng(seed + split)
            shuffled = rng.permutation(converters)
            seed_ids, hidden = np.sort(shuffled[:n_seed]), np.sort(shuffled[n_seed:])
            candidates = np.setdiff1d(population, seed_ids)
            labels = np.isin(candidates, hidden)
            base_rate = labels.mean()
            seeds = Seeds(source=f"backtest split {split}", requested=n_seed, ids=seed_ids,
                          vectors=vectors[np.searchsorted(embedding_ids, seed_ids)], warnings=[])
            if values is not None:
                gains = np.where(labels, lookup(converters, values, candidates, 0.0), 0.0)
                seed_value = lookup(converters, values, seed_ids, 0.0)
                if not seed_value.any():
                    raise ParameterError(f"{{value_sql}} gives every seed converter of split {split + 1} a value of 0: "
                                         "nothing to weight the seed by.", "value_sql")
                weighted = Seeds(seeds.source, seeds.requested, seeds.ids, seeds.vectors, [], seed_value / seed_value.mean())
            for method in methods:
                if method.startswith("model:"):
                    strategy, _, weighting = method.removeprefix("model:").partition("+")
                    scores = model_scores(index, con, weighted if weighting else seeds, strategy, candidates, seed + split,
                                          (embedding_ids, vectors), raw, value_blend_weights if weighting else blend_weights)
                elif method == "random":
                    scores = rng.random(len(candidates))
                elif method == "spend":
                    scores = raw.spend[raw.rows(candidates)]
                elif method == "rfm":
                    scores = raw.activity[raw.rows(candidates)]
                elif method == "raw-shares-cosine":
                    scores = raw_shares_cosine(raw, seed_ids, candidates)
                elif method == "activity":
                    scores = raw.lines[raw.rows(candidates)]
                elif method == "raw-cosine":
                    scores = blend.cosine_to_centroid(raw.matrix[raw.rows(candidates)], raw.matrix[raw.rows(seed_ids)])
                elif method == "raw-gbm":
                    scores = preference_classifier(raw, seed_ids, candidates, seed + split, boosted=True)
                else:
                    scores = preference_classifier(raw, seed_ids, candidates, seed + split)
                hits = hits_at(labels, scores, candidates, sizes)
                recall[method].append(hits / len(hidden))
                precision[method].append(hits / np.minimum(sizes, len(candidates)))
                lift[method].append(precision[method][-1] / base_rate)
                aucs[method].append(auc(labels, scores))
                curve_hits = hits_at(labels, scores, candidates, curve_sizes)
                curves[method].append(curve_hits / np.minimum(curve_sizes, len(candidates)) / base_rate)
                if values is not None:
                    captured[method].append(hits_at(gains, scores, candidates, sizes) / max(float(gains.sum()), 1e-12))
            progress(f"  split {split + 1}/{splits}: lift@{sizes_percent[min(2, len(sizes) - 1)]:g}% "
                     + ", ".join(f"{m} {lift[m][-1][min(2, len(sizes) - 1)]:.2f}" for m in methods))
        limits.restore_original_limits()

    def spread(values: list) -> tuple[np.ndarray, np.ndarray]:
        array = np.array(values, dtype=np.float64)
        return array.mean(axis=0), array.std(axis=0, ddof=1 if len(array) > 1 else 0)

    parameters = {"strategies": list(strategies), "baselines": list(baselines), "seed_fraction": seed_fraction,
                  "random_seed": seed, "index_version": index.manifest.index_version,
                  **({"blend_weights_per_split": blend_weights} if blend_weights else {}),
                  **({"value": value_summary} if value_summary else {}),
                  **({"value_weighted_blend_weights_per_split": value_blend_weights} if value_blend_weights else {})}
    rows = []
    for method in methods:
        (r_mean, r_std), (p_mean, p_std), (l_mean, l_std) = spread(recall[method]), spread(precision[method]), spread(lift[method])
        a_mean, a_std = spread(aucs[method])
        v_mean, v_std = spread(captured[method]) if values is not None else ([None] * len(sizes), [None] * len(sizes))
        for i, percent in enumerate(sizes_percent):
            rows.append({
                "method": method, "size_percent": float(percent), "audience_size": sizes[i],
                "recall_mean": r_mean[i], "recall_std": r_std[i], "precision_mean": p_mean[i], "precision_std": p_std[i],
                "lift_mean": l_mean[i], "lift_std": l_std[i], "auc_mean": float(a_mean), "auc_std": float(a_std),
                "value_captured_mean": v_mean[i], "value_captured_std": v_std[i],
                "splits": splits, "seed_size": n_seed, "hidden_size": len(converters) - n_seed,
                "candidate_count": len(population) - n_seed, "population_size": len(population),
                "converters_sql": converters_sql, "population_sql": population_sql, "value_sql": value_sql,
                "model_version": model_version,
                "parameters": json.dumps(parameters, sort_keys=True),
            })
    info = {"population": int(len(population)), "converters": int(len(converters)), "seed_size": n_seed,
            "blend_weights": blend_weights, "value_blend_weights": value_blend_weights,
            # Per split, so methods can be compared pairwise (same seeds, same hidden converters).
            "auc_per_split": {m: [float(a) for a in aucs[m]] for m in methods},
            "recall_per_split": {m: {f"{p:g}": [float(r[i]) for r in recall[m]] for i, p in enumerate(sizes_percent)} for m in methods},
            "lift_per_split": {m: {f"{p:g}": [float(l[i]) for l in lift[m]] for i, p in enumerate(sizes_percent)} for m in methods},
            **({"value": value_summary,
                "value_captured_per_split": {m: {f"{p:g}": [float(v[i]) for v in captured[m]] for i, p in enumerate(sizes_percent)}
                                             for m in methods}} if values is not None else {}),
            "seconds": round(time.perf_counter() - started, 2), "model_version": model_version}
    return Backtest(name=name, table=pa.Table.from_pylist(rows), curves={m: np.array(c) for m, c in curves.items()}, info=info)


def publish_backtest(serving_path: Path, result: Backtest) -> int:
    """Append the backtest to `audience_backtests` in the serving file (atomic swap); returns its backtest_id."""
    def write(con: duckdb.DuckDBPyConnection) -> int:
        con.execute(BACKTESTS_DDL)
        for column in BACKTESTS_ADDED_COLUMNS:
            con.execute(f"alter table audience_backtests add column if not exists {column}")
        backtest_id = con.execute("select coalesce(max(backtest_id), 0) + 1 from audience_backtests").fetchall()[0][0]
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        table = result.table.append_column("backtest_id", pa.array([backtest_id] * result.table.num_rows, pa.int64()))
        table = table.append_column("name", pa.array([result.name] * table.num_rows, pa.string()))
        table = table.append_column("created_at", pa.array([created] * table.num_rows, pa.string()))
        insert_rows(con, "audience_backtests", table, BACKTESTS_DDL)
        return backtest_id

    result.info["backtest_id"] = publish_tables(serving_path, write)
    return result.info["backtest_id"]


def summary_table(result: Backtest) -> pa.Table:
    """What the CLI prints: one row per method x size, mean +- sd across splits."""
    def fmt(mean: float, std: float, digits: int = 2) -> str:
        return f"{mean:.{digits}f} ± {std:.{digits}f}"

    rows = [{
        "method": r["method"], "size": f"{r['size_percent']:g}%", "customers": r["audience_size"],
        "recall": fmt(r["recall_mean"], r["recall_std"]),
        **({"value captured": fmt(r["value_captured_mean"], r["value_captured_std"])}
           if r.get("value_captured_mean") is not None else {}),
        "precision": fmt(r["precision_mean"], r["precision_std"], 3),
        "lift": fmt(r["lift_mean"], r["lift_std"]), "auc": fmt(r["auc_mean"], r["auc_std"], 3),
    } for r in result.table.to_pylist()]
    return pa.Table.from_pylist(rows)


def ranking_table(result: Backtest, lift_percent: float = 10.0, precision_percent: float = 5.0) -> pa.Table:
    """One row per method, best mean AUC first: AUC, lift at `lift_percent` and precision at `precision_percent`."""
    rows = {}
    for r in result.table.to_pylist():
        row = rows.setdefault(r["method"], {"method": r["method"], "auc": f"{r['auc_mean']:.3f} ± {r['auc_std']:.3f}",
                                            "_auc": r["auc_mean"]})
        if r["size_percent"] == lift_percent:
            row[f"lift@{lift_percent:g}%"] = f"{r['lift_mean']:.2f} ± {r['lift_std']:.2f}"
            if r.get("value_captured_mean") is not None:
                row[f"value@{lift_percent:g}%"] = f"{r['value_captured_mean']:.3f} ± {r['value_captured_std']:.3f}"
        if r["size_percent"] == precision_percent:
            row[f"precision@{precision_percent:g}%"] = f"{r['precision_mean']:.3f}"
    ranked = sorted(rows.values(), key=lambda row: -row.pop("_auc"))
    for rank, row in enumerate(ranked, 1):
        row["rank"] = rank
    return pa.Table.from_pylist([{"rank": row.pop("rank"), **row} for row in ranked])


def write_report(result: Backtest, report_dir: Path, note: str | None = None) -> Path:
    """backtest_<name>.md plus one lift-curve PNG per method (and one with every method) in `report_dir`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lookalike_cli.audiences.publish import safe_file_name

    report_dir.mkdir(parents=True, exist_ok=True)
    stem = f"backtest_{safe_file_name(result.name)}"
    x = np.array(CURVE_PERCENT)
    plots: list[Path] = []
    for method, curve in [*result.curves.items(), ("all", None)]:
        fig, ax = plt.subplots(figsize=(6, 4))
        for m, c in (result.curves.items() if curve is None else [(method, curve)]):
            mean, std = c.mean(axis=0), c.std(axis=0)
            ax.plot(x, mean, marker="o", markersize=3, label=m)
            ax.fill_between(x, mean - std, mean + std, alpha=0.15)
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="random (lift 1)")
        ax.set_xlabel("audience size (% of population)")
        ax.set_ylabel("lift of hidden converters")
        ax.set_title(f"{result.name}: {method}" + ("" if curve is None else " (mean ± sd over splits)"))
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = report_dir / f"{stem}_{safe_file_name(method.replace(':', '_'))}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        plots.append(path)
    info = result.info
    lines = [
        f"# Backtest `{result.name}`" + (f" (id {info['backtest_id']})" if "backtest_id" in info else ""),
        "",
        f"- converters: `{result.table['converters_sql'][0].as_py()}`",
        f"- population: `{result.table['population_sql'][0].as_py() or 'every scored customer'}` "
        f"({info['population']:,} customers, {info['converters']:,} converters)",
        f"- protocol: {result.table['splits'][0].as_py()} random split(s); seed = {info['seed_size']:,} converters, "
        f"hidden = the rest; every method ranks the {result.table['candidate_count'][0].as_py():,} non-seed customers",
        f"- model version: `{info['model_version']}`; computed in {info['seconds']}s",
        *([f"- values: `{info['value']['value_sql']}`: value captured = share of the hidden converters' total value "
           "in the top k%; `+value` methods weight the seed by its converters' values"] if "value" in info else []),
        *([f"- note: {note}"] if note else []),
        "",
        "Mean ± standard deviation across splits. Lift = precision / share of hidden converters among candidates.",
        "",
    ]
    summary = summary_table(result)
    headers = ["AUC" if c == "auc" else c for c in summary.column_names]
    lines += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in summary.to_pylist():
        lines.append("| " + " | ".join(str(v) for v in row.values()) + " |")
    lines += ["", "## Lift curves", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    path = report_dir / f"{stem}.md"
    path.write_text("\n".join(lines) + "\n")
    result.report_path, result.plot_paths = path, plots
    return path
