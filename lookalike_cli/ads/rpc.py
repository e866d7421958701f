"""`lookalike ads predict-rpc`: next-period revenue per click (paper section 4).

A LightGBM regressor on ad, cluster and taxonomy history features, trained with the click-
weighted squared error of eq. 8 (sample weight = the target period's clicks). It predicts a
multiplicative correction of an empirical-Bayes prior, the ad's own RPC pooled with its cluster's
(`POOLING_CLICKS` pseudo-clicks), not RPC itself: see `fit_lightgbm`. Time split with a
horizon H (the held-out period's length, `int_ad_periods.test_days`):

- evaluation: train on features before split-kH -> RPC in [split-kH, split-(k-1)H) (k = 1.., rolling
  windows while a horizon of history remains), judge on features
  before split -> RPC in [split, split+H), against ad-level history, taxonomy-level (product
  type) means, cluster means and a LightGBM without cluster features (the singular-ad model);
- production: the same fit moved to the end of the data, predicting the period after it; its
  predictions go to `ad_rpc_predictions` with the model version.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from lookalike_cli.threads import single_thread
from lookalike_cli.errors import LookalikeError, ParameterError
from lookalike_cli.files import remove_stale_temp_files, replaced, write_text_atomically
from lookalike_cli.warehouse.connection import connection, replace_tables, require_table
from lookalike_cli.progress import Progress, quiet

CLICK_BUCKETS = ((0, 0, "0"), (1, 9, "1-9"), (10, 49, "10-49"), (50, None, "50+"))
AD_FEATURES = ["ad_clicks", "ad_rpc", "ad_recent_clicks", "ad_recent_rpc", "ad_cost_per_click", "ad_click_through_rate"]
CLUSTER_FEATURES = ["cluster_clicks", "cluster_rpc", "cluster_size", "cluster_ads_with_clicks", "ad_rpc_pooled_with_cluster"]
TAXONOMY_FEATURES = ["type_clicks", "type_rpc", "category_rpc", "department_rpc", "ad_rpc_pooled_with_type"]
# Pseudo-clicks of the group's RPC blended into an ad's own history (empirical-Bayes style), so
# an ad with few clicks leans on its group and one with many on itself.
POOLING_CLICKS = 10.0
# The LightGBM files in the models folder: `model_file_name`'s, and the unversioned ones of earlier releases.
MODEL_FILE = re.compile(r"^ads_rpc_[a-z]+(\.[0-9a-f]{12})?\.txt$")
RECENT_DAYS = 14
# Money-per-click features, given to the trees divided by the prior so that one split serves a
# $2 and a $30 product alike (see `model_inputs`); counts stay absolute.
PER_CLICK_FEATURES = {"ad_rpc", "ad_recent_rpc", "cluster_rpc", "ad_rpc_pooled_with_cluster",
                      "type_rpc", "category_rpc", "department_rpc", "ad_rpc_pooled_with_type"}


@dataclass(frozen=True)
class RpcOptions:
    num_trees: int = 150
    learning_rate: float = 0.05
    num_leaves: int = 7
    min_child_samples: int = 40
    seed: int = 0
    horizon_days: int | None = None  # None: the held-out period's length


@dataclass
class Windows:
    first_date: date
    split_date: date
    last_date: date
    horizon_days: int


def read_windows(con, horizon_days: int | None) -> Windows:
    require_table(con, "int_ad_periods", "Build the ads models first: `lookalike ads build`.")
    first, split, last, test_days = con.execute("select first_date, split_date, last_date, test_days from int_ad_periods").fetchone()
    horizon = int(horizon_days or test_days)
    if horizon < 1:
        raise ParameterError(f"{{horizon_days}} must be at least 1, got {horizon}.", "horizon_days")
    if (split - first).days < 2 * horizon:
        raise ParameterError(
            f"The ads history before the split ({first} .. {split}) is shorter than two horizons ({horizon} days each): "
            "load more days, or set a later dbt var ads_split_date / a shorter {horizon_days}.", "horizon_days")
    return Windows(first, split, last, horizon)


def objectives_available(con) -> list[str]:
    has_margin = con.execute("select count(margin) > 0 from ad_daily_performance").fetchone()[0]
    return ["revenue", "margin"] if has_margin else ["revenue"]


def feature_frame(con, feature_end: date, horizon_days: int) -> pd.DataFrame:
    """One row per clustered ad: history before feature_end, target in [feature_end, +horizon)."""
    target_end = feature_end + timedelta(days=horizon_days)
    recent_start = feature_end - timedelta(days=RECENT_DAYS)
    frame = con.execute("""
        with history as (
            select ad_id,
                sum(clicks) as clicks, sum(revenue) as revenue, sum(coalesce(margin, 0)) as margin,
                sum(cost) as cost, sum(impressions) as impressions,
                sum(case when stat_date >= $recent_start then clicks else 0 end) as recent_clicks,
                sum(case when stat_date >= $recent_start then revenue else 0 end) as recent_revenue,
                sum(case when stat_date >= $recent_start then coalesce(margin, 0) else 0 end) as recent_margin
            from ad_daily_performance where stat_date < $feature_end group by ad_id
        ),
        target as (
            select ad_id, sum(clicks) as clicks, sum(revenue) as revenue, sum(coalesce(margin, 0)) as margin
            from ad_daily_performance where stat_date >= $feature_end and stat_date < $target_end group by ad_id
        )
        select c.ad_id, c.cluster_id, c.cluster_size, c.product_type, c.category, c.department,
            coalesce(h.clicks, 0) as ad_clicks, coalesce(h.revenue, 0) as ad_revenue, coalesce(h.margin, 0) as ad_margin,
            coalesce(h.cost, 0) as ad_cost, h.impressions as ad_impressions,
            coalesce(h.recent_clicks, 0) as ad_recent_clicks, coalesce(h.recent_revenue, 0) as ad_recent_revenue,
            coalesce(h.recent_margin, 0) as ad_recent_margin,
            coalesce(t.clicks, 0) as target_clicks, coalesce(t.revenue, 0) as target_revenue, coalesce(t.margin, 0) as target_margin
        from ad_clusters as c
        left join history as h using (ad_id)
        left join target as t using (ad_id)
        order by c.ad_id
    """, {"feature_end": feature_end, "target_end": target_end, "recent_start": recent_start}).df()
    return frame


def rolling_frames(con, first_date: date, cut: date, horizon_days: int, max_windows: int = 4) -> list[pd.DataFrame]:
    """Training rows from every window that ends at `cut` or earlier, stepping back by the horizon
    while at least one horizon of history remains before it: more (ad, period) examples than one
    window gives, none of them looking past `cut`."""
    frames = []
    feature_end = cut - timedelta(days=horizon_days)
    while len(frames) < max_windows and (feature_end - first_date).days >= horizon_days:
        frames.append(feature_frame(con, feature_end, horizon_days))
        feature_end -= timedelta(days=horizon_days)
    return frames


def ratio(numerator, denominator):
    numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
    return np.divide(numerator, denominator, out=np.full(len(numerator), np.nan), where=denominator > 0)


def add_features(frame: pd.DataFrame, objective: str) -> pd.DataFrame:
    """Per-click ratios for one objective (revenue or margin) at ad, cluster and taxonomy level."""
    out = frame.copy()
    value = f"ad_{objective}"
    out["ad_rpc"] = ratio(out[value], out["ad_clicks"])
    out["ad_recent_rpc"] = ratio(out[f"ad_recent_{objective}"], out["ad_recent_clicks"])
    out["ad_cost_per_click"] = ratio(out["ad_cost"], out["ad_clicks"])
    out["ad_click_through_rate"] = ratio(out["ad_clicks"], out["ad_impressions"].fillna(0))
    for level, key in (("cluster", "cluster_id"), ("type", "product_type"), ("category", "category"), ("department", "department")):
        grouped = out.groupby(key, dropna=False)
        clicks = grouped["ad_clicks"].transform("sum")
        out[f"{level}_clicks"] = clicks
        out[f"{level}_rpc"] = ratio(grouped[value].transform("sum"), clicks)
    out["cluster_ads_with_clicks"] = out.groupby("cluster_id")["ad_clicks"].transform(lambda c: (c > 0).sum())
    overall = float(out[value].sum() / max(out["ad_clicks"].sum(), 1))
    type_prior = out["type_rpc"].fillna(overall)
    for level, prior in (("type", type_prior), ("cluster", out["cluster_rpc"].fillna(type_prior))):
        out[f"ad_rpc_pooled_with_{level}"] = (out[value] + POOLING_CLICKS * prior) / (out["ad_clicks"] + POOLING_CLICKS)
    out["target_rpc"] = ratio(out[f"target_{objective}"], out["target_clicks"])
    return out


def prior_feature(features: list[str]) -> str:
    """The empirical-Bayes prior the model corrects: pooled with the cluster, or (no cluster features) the product type."""
    return "ad_rpc_pooled_with_cluster" if "ad_rpc_pooled_with_cluster" in features else "ad_rpc_pooled_with_type"


def model_inputs(frame: pd.DataFrame, features: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(feature matrix, prior RPC): per-click features as ratios to the prior, the rest as they are."""
    prior = frame[prior_feature(features)].to_numpy(float)
    columns = [ratio(frame[name], prior) if name in PER_CLICK_FEATURES else frame[name].to_numpy(float) for name in features]
    return np.column_stack(columns), prior


@dataclass
class RpcModel:
    """A LightGBM booster predicting RPC / prior - 1; `predict` turns it back into RPC."""

    booster: object
    features: list[str]

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        inputs, prior = model_inputs(frame, self.features)
        return np.where(prior > 0, prior * (1.0 + self.booster.predict(inputs)), 0.0)


def fit_lightgbm(train: pd.DataFrame, features: list[str], options: RpcOptions) -> RpcModel:
    """Fit RPC = prior x (1 + f(features)) under eq. 8's click-weighted squared error.

    Why a correction of a prior and not RPC itself: RPC is price-like and spans two orders of
    magnitude on real data (Complete Journey: $0.3 .. $35), and trees fitted to it directly predict
    a few leaf averages, which loses the precision of a many-click ad's own history (on the proxy,
    worse than ad history by 60% WMSE). Starting from the empirical-Bayes prior (own RPC for many
    clicks, the cluster's for few) the trees only learn how much to trust and adjust it. The loss is
    unchanged: clicks x (prior x r - y)^2 = (clicks x prior^2) x (r - y / prior)^2, so the
    booster fits the ratio y / prior with weight clicks x prior^2, starting from 1 (init score)."""
    import lightgbm as lgb

    rows = train[(train["target_clicks"] > 0) & (train[prior_feature(features)] > 0)]
    if len(rows) < 10:
        raise LookalikeError(f"Only {len(rows)} ads have clicks in the training target period: too few to fit the RPC model.")
    params = {
        "objective": "regression", "learning_rate": options.learning_rate, "num_leaves": options.num_leaves,
        "min_child_samples": options.min_child_samples, "seed": options.seed, "deterministic": True, "num_threads": 1,
        "force_row_wise": True, "verbose": -1,
    }
    inputs, prior = model_inputs(rows, features)
    dataset = lgb.Dataset(inputs, label=rows["target_rpc"].to_numpy(float) / prior,
                          weight=rows["target_clicks"].to_numpy(float) * prior ** 2, init_score=np.ones(len(rows)),
                          feature_name=features, free_raw_data=False)
    return RpcModel(lgb.train(params, dataset, num_boost_round=options.num_trees), features)


def click_bucket(clicks: np.ndarray) -> np.ndarray:
    labels = np.empty(len(clicks), dtype=object)
    for low, high, name in CLICK_BUCKETS:
        labels[(clicks >= low) & ((clicks <= high) if high is not None else True)] = name
    return labels


def weighted_errors(prediction: np.ndarray, actual: np.ndarray, clicks: np.ndarray) -> tuple[float, float]:
    weight = clicks / clicks.sum()
    error = prediction - actual
    return float((weight * error ** 2).sum()), float((weight * np.abs(error)).sum())


def baseline_predictions(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Ad history, product-type mean, cluster mean: each falls back to the next coarser level, then the global mean."""
    global_rpc = float(np.nansum(frame["ad_clicks"] * frame["ad_rpc"].fillna(0)) / max(frame["ad_clicks"].sum(), 1))
    type_rpc = frame["type_rpc"].fillna(global_rpc).to_numpy()
    return {
        "ad history": frame["ad_rpc"].fillna(global_rpc).to_numpy(),
        "taxonomy mean": type_rpc,
        "cluster mean": frame["cluster_rpc"].fillna(pd.Series(type_rpc, index=frame.index)).to_numpy(),
    }


def evaluate(train: pd.DataFrame, test: pd.DataFrame, options: RpcOptions) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """WMSE/WMAE per method and history-click bucket on the held-out period; returns (table, predictions)."""
    full = AD_FEATURES + CLUSTER_FEATURES + TAXONOMY_FEATURES
    predictions = baseline_predictions(test)
    predictions["empirical Bayes: ad pooled with cluster"] = test["ad_rpc_pooled_with_cluster"].to_numpy(float)
    predictions["LightGBM ad + taxonomy"] = fit_lightgbm(train, AD_FEATURES + TAXONOMY_FEATURES, options).predict(test)
    predictions["LightGBM ad + cluster + taxonomy"] = fit_lightgbm(train, full, options).predict(test)
    judged = (test["target_clicks"] > 0).to_numpy()
    actual, clicks = test["target_rpc"].to_numpy()[judged], test["target_clicks"].to_numpy(float)[judged]
    buckets = click_bucket(test["ad_clicks"].to_numpy()[judged])
    rows = []
    for method, values in predictions.items():
        for bucket in ["all"] + [name for _, _, name in CLICK_BUCKETS]:
            chosen = np.ones(len(actual), bool) if bucket == "all" else buckets == bucket
            if not chosen.any():
                continue
            wmse, wmae = weighted_errors(values[judged][chosen], actual[chosen], clicks[chosen])
            rows.append({"method": method, "click_bucket": bucket, "ads": int(chosen.sum()), "clicks": int(clicks[chosen].sum()),
                         "wmse": wmse, "wmae": wmae})
    return pd.DataFrame(rows), predictions


def model_file_name(objective: str, version: str) -> str:
    """`ads_rpc_<objective>.<hash>.txt`: one objective's LightGBM model of one model version."""
    return f"ads_rpc_{objective}.{version.removeprefix('ads_rpc-')}.txt"


def model_version(model_texts: list[str]) -> str:
    """The version of a set of models (one per objective, in the manifest's order): a hash of their text, so a reader
    can check the files it loaded against the manifest's (or a prediction row's) model_version."""
    return "ads_rpc-" + hashlib.sha256("".join(model_texts).encode()).hexdigest()[:12]


def remove_unlisted_model_files(onnx_dir: Path, keep: set[str]) -> list[Path]:
    """Delete the model files of other versions (and the unversioned `ads_rpc_<objective>.txt` of earlier releases)."""
    removed = []
    for path in onnx_dir.iterdir():
        if MODEL_FILE.match(path.name) and path.name not in keep and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@single_thread
def predict_rpc(db_path: Path, onnx_dir: Path, options: RpcOptions = RpcOptions(), progress: Progress = quiet) -> dict:
    """Evaluate on the held-out period, refit at the end of the data, write ad_rpc_predictions and ad_rpc_evaluation."""
    started = time.perf_counter()
    features = AD_FEATURES + CLUSTER_FEATURES + TAXONOMY_FEATURES
    with connection(db_path, read_only=True) as con:
        require_table(con, "ad_clusters", "Run `lookalike ads cluster` first (after `lookalike ads train-embedding`).")
        require_table(con, "ad_daily_performance", "Build the ads models first: `lookalike ads build`.")
        windows = read_windows(con, options.horizon_days)
        objectives = objectives_available(con)
        horizon = windows.horizon_days
        end = windows.last_date + timedelta(days=1)
        frames = {
            "eval_train": rolling_frames(con, windows.first_date, windows.split_date, horizon),
            "eval_test": [feature_frame(con, windows.split_date, horizon)],
            "final_train": rolling_frames(con, windows.first_date, end, horizon),
            "final_predict": [feature_frame(con, end, horizon)],
        }
    evaluations, prediction_rows, models, summary = [], [], {}, {}
    for objective in objectives:
        data = {key: pd.concat([add_features(frame, objective) for frame in parts], ignore_index=True)
                for key, parts in frames.items()}
        progress(f"RPC ({objective}): evaluating on the held-out period from {windows.split_date} ({horizon} days) ...")
        table, _ = evaluate(data["eval_train"], data["eval_test"], options)
        evaluations.append(table.assign(objective=objective))
        for _, row in table[table["click_bucket"] == "all"].iterrows():
            progress(f"  {row['method']:<40} WMSE {row['wmse']:10.4f}  WMAE {row['wmae']:8.4f}")
        model = fit_lightgbm(data["final_train"], features, options)
        models[objective] = model
        predicted = np.maximum(model.predict(data["final_predict"]), 0.0)
        prediction_rows.append(pd.DataFrame({
            "ad_id": data["final_predict"]["ad_id"], "cluster_id": data["final_predict"]["cluster_id"], "objective": objective,
            "predicted_rpc": predicted, "history_clicks": data["final_predict"]["ad_clicks"].astype("int64"),
        }))
        summary[objective] = table[table["click_bucket"] == "all"].set_index("method")[["wmse", "wmae"]].to_dict("index")
    version = model_version([models[o].booster.model_to_string() for o in objectives])
    model_files = {objective: model_file_name(objective, version) for objective in objectives}
    onnx_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(onnx_dir)  # of a predict-rpc killed while saving
    # The model files are named by the version, so saving them replaces no file of the published models (each is
    # written beside its target and moved in when whole); the manifest, replaced in one step, switches to them.
    for objective, model in models.items():
        with replaced(onnx_dir / model_files[objective], ".txt") as model_tmp:
            model.booster.save_model(str(model_tmp))
    write_text_atomically(onnx_dir / "ads_rpc.json", json.dumps({
        "kind": "ad_rpc", "model_version": version, "objectives": objectives, "features": features,
        "target": "predicted_rpc = prior x (1 + booster output); per-click features divided by the prior",
        "prior_feature": prior_feature(features), "pooling_clicks": POOLING_CLICKS,
        "model_files": model_files, "options": asdict(options),
        "windows": {"first_date": str(windows.first_date), "split_date": str(windows.split_date),
                    "last_date": str(windows.last_date), "horizon_days": horizon},
        "evaluation": summary,
    }, indent=2) + "\n")
    predictions = pd.concat(prediction_rows, ignore_index=True).assign(
        feature_end_date=end, horizon_days=horizon, model_version=version)
    evaluation = pd.concat(evaluations, ignore_index=True).assign(model_version=version, split_date=windows.split_date,
                                                                  horizon_days=horizon)
    with connection(db_path) as con:
        replace_tables(con, {"ad_rpc_predictions": pa.Table.from_pandas(predictions, preserve_index=False),
                             "ad_rpc_evaluation": pa.Table.from_pandas(evaluation, preserve_index=False)})
    # Only now the previous version's files go (and those of a run killed before its manifest): until the tables
    # were swapped, their model_version named them.
    remove_unlisted_model_files(onnx_dir, set(model_files.values()))
    progress(f"Wrote ad_rpc_predictions ({len(predictions):,} rows, {version}) and ad_rpc_evaluation.")
    return {"model_version": version, "objectives": objectives, "evaluation": evaluation, "horizon_days": horizon,
            "seconds": round(time.perf_counter() - started, 1)}
