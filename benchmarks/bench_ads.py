"""Ads (issue 11): embedding, RPC and bid quality on generated ad logs and the Complete Journey proxy.

Time split everywhere (int_ad_periods: the last 25% of days are held out):
- embedding: AUC of cosine similarity for held-out co-clicked pairs vs sampled non-co-clicked
  pairs (pairs the training period never showed), co-click-trained encoder vs the same encoder
  untrained vs TF-IDF (words + char trigrams) [vs the packaged MiniLM sentence encoder when installed];
- RPC: click-weighted MSE/MAE on the held-out period by the ads' history clicks, LightGBM on ad +
  cluster + taxonomy features vs ad-level history, taxonomy (product type) means, cluster means
  and a LightGBM without cluster features;
- bids: replay of the held-out period under the paper's Assumption 1 (clicks scale with bid/CPC,
  RPC fixed), every policy's bids scaled to the period's actual spend: revenue of cluster-RPC bids
  vs one uniform bid and vs bids from ad-level history RPC (and, on generated data, true-RPC bids).

    python -m benchmarks.bench_ads --ads 5000 --workdir /tmp/bench_ads
"""

from __future__ import annotations

import argparse
import shutil
import time
from datetime import timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from benchmarks.results import markdown_table, write_section
from lookalike_cli.ads.bid import replay
from lookalike_cli.ads.embedding import cosine_pairs, read_ad_texts, read_pairs
from lookalike_cli.ads.rpc import RpcOptions, add_features, evaluate, feature_frame, read_windows, rolling_frames
from lookalike_cli.cli.main import main
from lookalike_cli.settings import Settings

OURS = "LightGBM ad + cluster + taxonomy"


def cli(settings: Settings, *args: str) -> None:
    main.main(["--db", str(settings.db_path), "--onnx-dir", str(settings.onnx_dir), "--index-dir", str(settings.index_dir), *args],
              standalone_mode=False)


def prepare(folder: Path, load: list[str], build: list[str], epochs: int, reuse: bool = False) -> tuple[Settings, dict[str, float]]:
    settings = Settings.resolve(db=folder / "w.duckdb", onnx_dir=folder / "onnx", index_dir=folder / "indexes")
    times_path = folder / "times.json"
    if reuse and times_path.exists():
        import json

        return settings, json.loads(times_path.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    times = {}
    for step, args in (("load", load), ("dbt build (ads)", ["ads", "build", *build]),
                       ("train-embedding", ["ads", "train-embedding", "--epochs", str(epochs), "--seed", "1"]),
                       ("cluster", ["ads", "cluster"]), ("predict-rpc", ["ads", "predict-rpc"])):
        started = time.perf_counter()
        cli(settings, *args)
        times[step] = round(time.perf_counter() - started, 1)
    import json

    times_path.write_text(json.dumps(times))
    return settings, times


def threshold_sweep(settings: Settings, thresholds: list[float], default: float) -> str:
    """How --distance-threshold trades cluster count against intent recovery and RPC error."""
    from sklearn.metrics import adjusted_rand_score

    rows = []
    for threshold in thresholds + [default]:
        cli(settings, "ads", "cluster", "--distance-threshold", str(threshold))
        cli(settings, "ads", "predict-rpc")
        if threshold == default and len(rows) == len(thresholds):
            break  # the last run only restores the default clusters
        with duckdb.connect(str(settings.db_path), read_only=True) as con:
            frame = con.execute("select c.cluster_id, p.planted_intent from ad_clusters c join raw.ad_planted_intents p using (ad_id)").df()
            errors = dict(con.execute("""select method, wmse from ad_rpc_evaluation
                                         where objective = 'revenue' and click_bucket = 'all'""").fetchall())
            few = dict(con.execute("""select method, wmse from ad_rpc_evaluation
                                      where objective = 'revenue' and click_bucket = '1-9'""").fetchall())
        rows.append([threshold, int(frame["cluster_id"].nunique()), adjusted_rand_score(frame["planted_intent"], frame["cluster_id"]),
                     errors["cluster mean"], errors[OURS], errors["LightGBM ad + taxonomy"], few[OURS], few["LightGBM ad + taxonomy"]])
    return markdown_table(["distance threshold", "clusters", "ARI vs planted intents", "cluster mean WMSE", "ours WMSE",
                           "LightGBM ad + taxonomy WMSE", "ours WMSE, 1-9 clicks", "ad + taxonomy WMSE, 1-9 clicks"], rows)


def sentence_auc(settings: Settings) -> float | None:
    """AUC of the packaged MiniLM sentence encoder (no co-click training), when installed."""
    try:
        from lookalike_cli.model.locations import load_sentence_model

        model = load_sentence_model()
    except Exception:
        return None
    from lookalike_cli.ads.embedding import pair_auc

    with duckdb.connect(str(settings.db_path), read_only=True) as con:
        ads = read_ad_texts(con)
        _, train = read_pairs(con, ads, "train")
        test, _ = read_pairs(con, ads, "test", exclude=train)
    vectors = model.encode(ads.texts, batch_size=256, normalize_embeddings=True, show_progress_bar=False)
    return pair_auc(cosine_pairs(vectors, test), test.label)


def bid_replay(settings: Settings, truth: bool) -> list[list]:
    """Held-out revenue of each bidding policy at the period's actual spend."""
    with duckdb.connect(str(settings.db_path), read_only=True) as con:
        windows = read_windows(con, None)
        horizon = windows.horizon_days
        train = pd.concat([add_features(f, "revenue") for f in rolling_frames(con, windows.first_date, windows.split_date, horizon)],
                          ignore_index=True)
        test = add_features(feature_frame(con, windows.split_date, horizon), "revenue")
        held_out = con.execute("""
            select c.ad_id,
                   coalesce(sum(case when d.period = 'test' then d.clicks end), 0) as clicks,
                   coalesce(sum(case when d.period = 'test' then d.revenue end), 0) as revenue,
                   coalesce(sum(case when d.period = 'test' then d.cost end), 0) as cost,
                   sum(case when d.period = 'train' then d.cost end) / nullif(sum(case when d.period = 'train' then d.clicks end), 0) as cpc
            from ad_clusters c left join ad_daily_performance d using (ad_id)
            group by c.ad_id order by c.ad_id""").df()
        true_rpc = con.execute("select ad_id, true_rpc from raw.ad_planted_intents order by ad_id").df() if truth else None
    _, predictions = evaluate(train, test, RpcOptions())
    held_out = held_out.set_index("ad_id").loc[test["ad_id"]].reset_index()
    cpc = held_out["cpc"].fillna(held_out["cost"].sum() / max(held_out["clicks"].sum(), 1)).to_numpy()
    budget = float(held_out["cost"].sum())
    weight = test["ad_clicks"].to_numpy() + 1.0

    def per_cluster(values: np.ndarray) -> np.ndarray:
        frame = pd.DataFrame({"cluster_id": test["cluster_id"], "v": values * weight, "w": weight})
        sums = frame.groupby("cluster_id")[["v", "w"]].transform("sum")
        return (sums["v"] / sums["w"]).to_numpy()

    policies = {
        "one uniform bid": np.ones(len(test)),
        "ad-level history RPC (per ad)": predictions["ad history"],
        "taxonomy mean RPC (per product type)": predictions["taxonomy mean"],
        "LightGBM RPC, bid per cluster (ours)": per_cluster(np.maximum(predictions[OURS], 0)),
        # The same predictions without grouping: separates RPC quality from the one-bid-per-cluster constraint.
        "LightGBM RPC, bid per ad": np.maximum(predictions[OURS], 0),
        "empirical Bayes RPC (ad pooled with cluster), per ad": predictions["empirical Bayes: ad pooled with cluster"],
    }
    if true_rpc is not None:
        policies["true RPC (oracle)"] = true_rpc.set_index("ad_id").loc[test["ad_id"], "true_rpc"].to_numpy()
    rows, base = [], None
    for name, bids in policies.items():
        outcome = replay(np.asarray(bids, float), held_out["clicks"].to_numpy(float), held_out["revenue"].to_numpy(float), cpc, budget)
        base = base or outcome["revenue"]
        rows.append([name, outcome["spend"], outcome["revenue"], outcome["revenue"] / base])
    return rows


def report(name: str, settings: Settings, times: dict, truth: bool) -> str:
    import json

    with duckdb.connect(str(settings.db_path), read_only=True) as con:
        ads, clusters, types = con.execute("select count(*), count(distinct cluster_id), count(distinct product_type) from ad_clusters").fetchone()
        positives, pairs = con.execute("select count(*) filter (where label = 1), count(*) from ad_pairs where period = 'train'").fetchone()
        evaluation = con.execute("select method, click_bucket, ads, wmse, wmae from ad_rpc_evaluation where objective = 'revenue'").df()
        windows = con.execute("select first_date, split_date, last_date from int_ad_periods").fetchone()
        ari = None
        if truth:
            from sklearn.metrics import adjusted_rand_score

            frame = con.execute("select c.cluster_id, p.planted_intent from ad_clusters c join raw.ad_planted_intents p using (ad_id)").df()
            ari = adjusted_rand_score(frame["planted_intent"], frame["cluster_id"])
    metrics = json.loads((settings.onnx_dir / "ads_encoder.json").read_text())["metrics"]
    minilm = sentence_auc(settings)
    lines = [f"### {name}", "",
             f"{ads:,} ads, {types:,} product types -> {clusters:,} clusters"
             + (f" (adjusted Rand index vs planted intents {ari:.3f})" if ari is not None else "")
             + f"; history {windows[0]} .. {windows[1]} (train), held out {windows[1]} .. {windows[2]}; "
             f"{positives:,} co-clicked of {pairs:,} training pairs. Step times (s): "
             + ", ".join(f"{k} {v}" for k, v in times.items()) + ".", "",
             "Embedding: held-out pair AUC "
             f"({metrics['heldout_positive_pairs']:,} co-clicked of {metrics['heldout_pairs']:,} pairs unseen in training)", ""]
    auc_rows = [["co-click trained encoder (ours)", metrics["auc_trained"]], ["same encoder, untrained", metrics["auc_untrained"]],
                ["TF-IDF words + char trigrams", metrics["auc_tfidf"]]]
    if minilm is not None:
        auc_rows.append(["MiniLM sentence encoder (packaged, not co-click trained)", minilm])
    lines += [markdown_table(["method", "AUC"], auc_rows), ""]
    lines += ["RPC (revenue per click), held-out period, by history clicks: WMSE / WMAE", ""]
    buckets = [b for b in ["all", "0", "1-9", "10-49", "50+"] if b in set(evaluation["click_bucket"])]
    table = []
    for method in evaluation["method"].unique():
        part = evaluation[evaluation["method"] == method].set_index("click_bucket")
        table.append([method] + [f"{part.loc[b, 'wmse']:.3f} / {part.loc[b, 'wmae']:.3f}" for b in buckets])
    counts = evaluation.drop_duplicates("click_bucket").set_index("click_bucket")["ads"]
    lines += [markdown_table(["method"] + [f"{b} ({counts[b]:,} ads)" for b in buckets], table), ""]
    lines += ["Bids: held-out replay at the period's actual spend", ""]
    lines += [markdown_table(["policy", "spend", "revenue", "revenue / uniform"], bid_replay(settings, truth)), ""]
    return "\n".join(lines)


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ads", type=int, default=5000, help="Generated ads.")
    parser.add_argument("--days", type=int, default=84)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--cj-min-baskets", type=int, default=50)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_ads"))
    parser.add_argument("--skip-completejourney", action="store_true")
    parser.add_argument("--thresholds", default="0.2,0.3,0.5", help="Extra --distance-threshold values to sweep on generated data.")
    parser.add_argument("--reuse", action="store_true", help="Reuse the trained warehouses in --workdir from a previous run.")
    args = parser.parse_args()
    sections = []
    settings, times = prepare(args.workdir / "generated",
                              ["generate-data", "--customers", "10", "--days", "14", "--ads", "--ad-count", str(args.ads),
                               "--ad-days", str(args.days), "--seed", "7"], [], args.epochs, args.reuse)
    sections.append(report(f"Generated: {args.ads:,} ads, {args.days} days (seed 7)", settings, times, truth=True))
    if args.thresholds:
        sweep = threshold_sweep(settings, [float(t) for t in args.thresholds.split(",")], 0.4)
        sections.append("Cluster distance threshold sweep (generated data, default 0.4 above; RPC = revenue, held-out WMSE)\n\n" + sweep)
    if not args.skip_completejourney:
        settings, times = prepare(args.workdir / "completejourney",
                                  ["load-sample", "completejourney", "--ads", "--ads-min-baskets", str(args.cj_min_baskets)],
                                  ["--min-interactive-metric", "0.001"], args.epochs, args.reuse)
        sections.append(report(f"Complete Journey proxy: products in >= {args.cj_min_baskets} baskets", settings, times, truth=False))
    command = f"python -m benchmarks.bench_ads --ads {args.ads} --days {args.days} --epochs {args.epochs} --cj-min-baskets {args.cj_min_baskets}"
    write_section("ads", "Ads: intention embeddings, RPC prediction, bids", "\n\n".join(sections), command)


if __name__ == "__main__":
    run()
