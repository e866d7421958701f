"""`lookalike ads bid`: multi-objective bids per ad cluster under a budget (paper section 2).

Under the paper's Assumption 1 (RPC does not move with the bid, expected clicks c_g * b_g, first
price so expected spend c_g * b_g^2) the optimum of max E[sum_g sum_i w_i R_ig] s.t. E[spend] <= B
equalises the weighted reward per spend across groups (Theorem 1):
    b_g = sum_i w_i RPC_ig / RPS_target,
with RPS_target the value at which the expected spend meets the budget, found by bisection
(bid caps make it a root-finding problem; without caps it is sqrt(sum_g c_g W_g^2 / B)).
c_g is estimated from the last horizon's clicks per unit of cost per click (bid ~ CPC at first price).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from lookalike_cli.errors import LookalikeError, ParameterError
from lookalike_cli.files import remove_stale_temp_files, replaced
from lookalike_cli.warehouse.connection import connection, replace_tables, require_table
from lookalike_cli.progress import Progress, quiet


def parse_objective_weights(objective_weights: str) -> dict[str, float]:
    """'revenue=1,margin=0.5' -> {'revenue': 1.0, 'margin': 0.5}."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in (objective_weights or "").split(","))):
        name, sep, value = part.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise ParameterError(f"{{objective_weights}}: cannot read {part!r}; write name=weight pairs, e.g. revenue=1,margin=0.5.",
                                 "objective_weights")
    if not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ParameterError(f"{{objective_weights}} {objective_weights!r}: weights must be >= 0 with at least one positive.",
                             "objective_weights")
    return weights


@dataclass
class BidSolution:
    bids: np.ndarray
    rps_target: float
    expected_spend: float


def solve_bids(weighted_rpc: np.ndarray, clicks_per_bid: np.ndarray, budget: float,
               min_bid: float = 0.0, max_bid: float | None = None, iterations: int = 200) -> BidSolution:
    """Bids b_g = clip(W_g / T, min_bid, max_bid) with T such that sum_g c_g b_g^2 = budget."""
    if budget <= 0:
        raise ParameterError(f"{{budget}} must be positive, got {budget}.", "budget")
    w = np.maximum(np.asarray(weighted_rpc, float), 0.0)
    c = np.maximum(np.asarray(clicks_per_bid, float), 0.0)
    cap = np.inf if max_bid is None else float(max_bid)

    def bids_at(target: float) -> np.ndarray:
        return np.clip(w / target, min_bid, cap)

    def spend(target: float) -> float:
        return float((c * bids_at(target) ** 2).sum())

    if not (c * w).any():
        raise LookalikeError("No ad group has both predicted value and past clicks: nothing to spend the budget on.")
    # Uncapped optimum, then widen a bracket around it and bisect in log space (spend falls as T grows).
    target = float(np.sqrt((c * w ** 2).sum() / budget))
    low, high = target, target
    while spend(low) < budget and low > 1e-12:
        low /= 4
        if max_bid is not None and spend(low) == spend(low / 4):
            break  # every bid is at its cap: the budget cannot be spent
    while spend(high) > budget:
        high *= 4
    for _ in range(iterations):
        middle = float(np.sqrt(low * high))
        if spend(middle) > budget:
            low = middle
        else:
            high = middle
    target = high
    return BidSolution(bids_at(target), target, spend(target))


def group_inputs(con, objectives: list[str], horizon_days: int) -> pd.DataFrame:
    """Per cluster: predicted RPC per objective (history-click weighted), clicks per unit bid over a horizon."""
    end = con.execute("select max(feature_end_date) from ad_rpc_predictions").fetchone()[0]
    recent_start = end - timedelta(days=horizon_days)
    frame = con.execute("""
        with recent as (
            select ad_id, sum(clicks) as clicks, sum(cost) as cost
            from ad_daily_performance where stat_date >= $recent_start group by ad_id
        )
        select c.cluster_id, c.product_type, c.ad_id, coalesce(r.clicks, 0) as recent_clicks, coalesce(r.cost, 0) as recent_cost,
               p.history_clicks
        from ad_clusters as c
        inner join (select distinct ad_id, history_clicks from ad_rpc_predictions) as p using (ad_id)
        left join recent as r using (ad_id)
        order by c.ad_id
    """, {"recent_start": recent_start}).df()
    predictions = con.execute("select ad_id, objective, predicted_rpc from ad_rpc_predictions").df().pivot(
        index="ad_id", columns="objective", values="predicted_rpc")
    frame = frame.join(predictions, on="ad_id")
    overall_cpc = frame["recent_cost"].sum() / max(frame["recent_clicks"].sum(), 1)
    # Zero-click ads still count a little, so a cluster of new ads gets its members' predictions.
    frame["weight"] = frame["history_clicks"] + 1.0
    rows = []
    for cluster_id, group in frame.groupby("cluster_id", sort=True):
        clicks, cost = group["recent_clicks"].sum(), group["recent_cost"].sum()
        cpc = cost / clicks if clicks > 0 and cost > 0 else overall_cpc
        row = {"cluster_id": int(cluster_id), "product_type": group["product_type"].iloc[0], "ad_count": len(group),
               "recent_clicks": int(clicks), "historical_cost_per_click": float(cpc),
               "clicks_per_bid": float(clicks / cpc) if cpc > 0 else 0.0}
        for objective in objectives:
            row[f"predicted_rpc_{objective}"] = float(np.average(group[objective], weights=group["weight"]))
        rows.append(row)
    return pd.DataFrame(rows)


def spend_revenue_curve(groups: pd.DataFrame, weighted_rpc: np.ndarray, budget: float, min_bid: float, max_bid: float | None,
                        points: int = 25) -> pd.DataFrame:
    c = groups["clicks_per_bid"].to_numpy()
    rpc = groups["predicted_rpc_revenue"].to_numpy()
    rows = []
    for scale in np.linspace(0.1, 3.0, points):
        spend_target = budget * scale
        optimised = solve_bids(weighted_rpc, c, spend_target, min_bid, max_bid)
        uniform_bid = np.sqrt(spend_target / c.sum())
        rows.append({"budget": spend_target, "optimised_spend": optimised.expected_spend,
                     "optimised_revenue": float((c * optimised.bids * rpc).sum()),
                     "uniform_spend": float((c * uniform_bid ** 2).sum()), "uniform_revenue": float((c * uniform_bid * rpc).sum())})
    return pd.DataFrame(rows)


def plot_curve(curve: pd.DataFrame, budget: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(curve["optimised_spend"], curve["optimised_revenue"], label="optimised bids (equal weighted RPS)")
    axis.plot(curve["uniform_spend"], curve["uniform_revenue"], label="one uniform bid", linestyle="--")
    axis.axvline(budget, color="grey", linewidth=0.8)
    axis.set_xlabel("expected spend per period")
    axis.set_ylabel("expected revenue per period")
    axis.set_title("Ads: expected revenue vs spend")
    axis.legend()
    figure.tight_layout()
    remove_stale_temp_files(path.parent)  # of a bid killed while saving
    with replaced(path, ".png") as png_tmp:  # a kill mid-save keeps the previous picture
        figure.savefig(png_tmp, dpi=100)
    plt.close(figure)


def recommend_bids(db_path: Path, budget: float, objective_weights: dict[str, float] | None = None, min_bid: float = 0.0,
                   max_bid: float | None = None, period_days: int | None = None, report_dir: Path | None = None,
                   progress: Progress = quiet) -> dict:
    """Write bid_recommendations (one row per cluster) and view ad_bid_recommendations; plot the curve."""
    if budget is None or budget <= 0:
        raise ParameterError(f"{{budget}} must be positive, got {budget}.", "budget")
    if max_bid is not None and max_bid <= min_bid:
        raise ParameterError(f"{{max_bid}} ({max_bid}) must be above {{min_bid}} ({min_bid}).", "max_bid", "min_bid")
    weights = objective_weights or {"revenue": 1.0}
    started = time.perf_counter()
    with connection(db_path, read_only=True) as con:
        require_table(con, "ad_rpc_predictions", "Run `lookalike ads predict-rpc` first.")
        objectives = [row[0] for row in con.execute("select distinct objective from ad_rpc_predictions order by 1").fetchall()]
        unknown = sorted(set(weights) - set(objectives))
        if unknown:
            raise ParameterError(f"{{objective_weights}} names {', '.join(unknown)}, but ad_rpc_predictions only has "
                                 f"{', '.join(objectives)} (margin needs a margin column in raw ad_daily_stats).",
                                 "objective_weights")
        horizon, model_version = con.execute("select max(horizon_days), max(model_version) from ad_rpc_predictions").fetchone()
        period = int(period_days or horizon)
        groups = group_inputs(con, objectives, period)
    weighted = sum(w * groups[f"predicted_rpc_{name}"].to_numpy() for name, w in weights.items())
    solution = solve_bids(weighted, groups["clicks_per_bid"].to_numpy(), budget, min_bid, max_bid)
    c = groups["clicks_per_bid"].to_numpy()
    groups["bid"] = solution.bids
    groups["weighted_rpc"] = weighted
    groups["expected_clicks"] = c * solution.bids
    groups["expected_spend"] = c * solution.bids ** 2
    for objective in objectives:
        groups[f"expected_{objective}"] = groups["expected_clicks"] * groups[f"predicted_rpc_{objective}"]
    if solution.expected_spend < 0.999 * budget:
        progress(f"Warning: with every bid at the maximum bid {max_bid} the expected spend is {solution.expected_spend:,.2f}, "
                 f"below the budget {budget:,.2f}: raise --max-bid to spend it.")
    uniform_bid = float(np.sqrt(budget / c.sum()))
    uniform_revenue = float((c * uniform_bid * groups["predicted_rpc_revenue"]).sum())
    run_id = uuid.uuid4().hex[:12]
    table = groups.assign(run_id=run_id, rps_target=solution.rps_target, budget=float(budget), period_days=period,
                          objective_weights=json.dumps(weights), rpc_model_version=model_version,
                          created_at=pd.Timestamp.now(tz="UTC").tz_localize(None))
    with connection(db_path) as con:
        replace_tables(con, {"bid_recommendations": pa.Table.from_pandas(table, preserve_index=False)})
        con.execute("""
            create or replace view ad_bid_recommendations as
            select clusters.ad_id, bids.cluster_id, bids.product_type, bids.bid, bids.weighted_rpc, bids.run_id
            from ad_clusters as clusters inner join bid_recommendations as bids using (cluster_id)
        """)
    report_dir = report_dir or Path(db_path).parent / "reports"
    curve = spend_revenue_curve(groups, weighted, budget, min_bid, max_bid)
    plot_path = report_dir / "ads_bid_curve.png"
    plot_curve(curve, budget, plot_path)
    result = {
        "run_id": run_id, "groups": len(groups), "rps_target": solution.rps_target, "expected_spend": solution.expected_spend,
        "expected_revenue": float(groups["expected_revenue"].sum()), "uniform_bid": uniform_bid,
        "uniform_expected_revenue": uniform_revenue, "plot": str(plot_path), "period_days": period,
        "seconds": round(time.perf_counter() - started, 1), "table": table,
    }
    progress(f"Bids for {len(groups):,} ad groups, budget {budget:,.2f} per {period} days: RPS target {solution.rps_target:.3f}, "
             f"expected spend {solution.expected_spend:,.2f}, expected revenue {result['expected_revenue']:,.2f} "
             f"(one uniform bid {uniform_bid:.3f}: {uniform_revenue:,.2f}). Curve: {plot_path}")
    return result


def replay(bids: np.ndarray, clicks: np.ndarray, revenue: np.ndarray, historical_cpc: np.ndarray, budget: float) -> dict:
    """Held-out replay under Assumption 1: an ad that got `clicks` at its historical CPC gets
    clicks * b / cpc at bid b, paying b per click, with the same revenue per click. Bids are
    scaled (one factor for all) so the replayed spend equals the budget: equal-spend comparison."""
    scale = np.divide(bids, historical_cpc, out=np.zeros(len(bids)), where=historical_cpc > 0)
    spend = float((clicks * scale * bids).sum())
    if spend <= 0:
        return {"spend": 0.0, "revenue": 0.0, "clicks": 0.0}
    factor = np.sqrt(budget / spend)
    return {"spend": budget, "revenue": float((revenue * scale).sum() * factor), "clicks": float((clicks * scale).sum() * factor)}
