"""Do methods separate on the generated data? A backtest straight on the raw tables, no dbt.

For planted segment 0 and every conversion kind in `raw.planted_conversions`, features come from
the order lines before a cutoff (the first `--cutoff` fraction of the days) and converters are
defined after it where time-based (`converted_at >= cutoff`; see generate.py's docstring):
- `segment_0`: customers whose primary planted segment is 0 (not time-based);
- `<kind>`: customers with a `<kind>` conversion at or after the cutoff; customers who converted
  before it (category_adoption's earlier buyers) are not candidates;
- `category_adoption/earlier-seed`: the "seed = earlier buyers, converters = later first buyers"
  protocol: every customer who converted before the cutoff is the seed, the later ones are hidden.

Each split draws a random half of the converters as the seed (except the earlier-seed protocol);
every other customer is a candidate. Methods rank the candidates:
random; activity (order-line count); spend; rfm (z-scores of -recency, orders, spend, equal
weights); cosine (to the seed centroid on category shares); logreg and lightgbm (seed vs the rest,
on category shares + log1p order lines). Reported: AUC, precision at 5% of the candidates, lift at
10% (means over the splits), and the best precision@5% any ranking could reach (`p5_max`).

    PYTHONPATH=. python -m benchmarks.bench_generated_separation --customers 20000 --seed 7
    PYTHONPATH=. python -m benchmarks.bench_generated_separation --db /tmp/x.duckdb
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np

from lookalike_cli.audiences.blend import cosine_to_centroid
from lookalike_cli.warehouse.connection import table_exists

METHODS = ("random", "activity", "spend", "rfm", "cosine", "logreg", "lightgbm")
# Small, regularised trees: a seed is a few hundred rows against ~20k; with 15 leaves and
# is_unbalance the boosting memorised the seed (AUC 0.56-0.66 on the conversion kinds).
LIGHTGBM_PARAMS = dict(n_estimators=150, learning_rate=0.05, num_leaves=7, min_child_samples=50, reg_lambda=5.0,
                       max_bin=31, subsample=0.8, subsample_freq=1, colsample_bytree=0.3,
                       n_jobs=2, verbose=-1, random_state=0)


@dataclass
class Features:
    ids: np.ndarray  # (N,) customer ids, sorted
    lines: np.ndarray  # order lines before the cutoff (positive quantity and amount)
    orders: np.ndarray
    spend: np.ndarray
    recency: np.ndarray  # days from the last order to the cutoff (window length + 1 if none)
    shares: np.ndarray  # (N, C) category shares of the lines
    cutoff: object


def load_features(con: duckdb.DuckDBPyConnection, cutoff_fraction: float = 0.8) -> Features:
    start, end = con.execute("select min(ordered_at)::date, max(ordered_at)::date from raw.order_lines").fetchone()
    days = (end - start).days + 1
    cutoff = con.execute(
        "select (?::date + to_days(cast(floor(? * ?) as integer)))::timestamp", [start, cutoff_fraction, days]
    ).fetchone()[0]
    window = (cutoff.date() - start).days
    ids = con.execute("select customer_id from raw.customers order by customer_id").fetchnumpy()["customer_id"]
    per_customer = con.execute("""
        select customer_id, count(*) as lines, count(distinct order_id) as orders, sum(amount) as spend,
               date_diff('day', max(ordered_at), ?::timestamp) as recency
        from raw.order_lines
        where ordered_at < ?::timestamp and quantity > 0 and amount > 0
        group by customer_id
    """, [cutoff, cutoff]).fetchnumpy()
    rows = np.searchsorted(ids, per_customer["customer_id"])
    n = len(ids)
    lines, orders, spend = np.zeros(n), np.zeros(n), np.zeros(n)
    recency = np.full(n, float(window + 1))
    lines[rows] = per_customer["lines"]
    orders[rows] = per_customer["orders"]
    spend[rows] = per_customer["spend"]
    recency[rows] = per_customer["recency"]
    cells = con.execute("""
        with categories as (select category, row_number() over (order by category) - 1 as c
                            from (select distinct category from raw.order_lines where category is not null))
        select o.customer_id, c.c, count(*) as n
        from raw.order_lines o join categories c using (category)
        where o.ordered_at < ?::timestamp and o.quantity > 0 and o.amount > 0
        group by all
    """, [cutoff]).fetchnumpy()
    n_categories = int(cells["c"].max()) + 1 if len(cells["c"]) else 1
    shares = np.zeros((n, n_categories), dtype=np.float32)
    np.add.at(shares, (np.searchsorted(ids, cells["customer_id"]), cells["c"]), cells["n"].astype(np.float32))
    totals = shares.sum(axis=1, keepdims=True)
    shares = np.divide(shares, totals, out=np.zeros_like(shares), where=totals > 0)
    return Features(ids, lines, orders, spend, recency, shares, cutoff)


def tasks(con: duckdb.DuckDBPyConnection, features: Features) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]]:
    """(name, converter mask, candidate-population mask, fixed seed mask or None) per task."""
    ids, n = features.ids, len(features.ids)

    def mask(sql: str, params=()) -> np.ndarray:
        found = con.execute(sql, list(params)).fetchnumpy()["customer_id"]
        out = np.zeros(n, dtype=bool)
        out[np.searchsorted(ids, found)] = True
        return out

    everyone = np.ones(n, dtype=bool)
    out = [("segment_0", mask("select customer_id from raw.planted_segments where segment_id = 0"), everyone, None)]
    largest = con.execute("select segment_id from raw.planted_segments group by 1 order by count(*) desc, 1 limit 1").fetchone()[0]
    if largest != 0:  # the largest segment: precision@5% can reach 1 (segment 0 may be too small to)
        out.append((f"segment_{largest} (largest)",
                    mask("select customer_id from raw.planted_segments where segment_id = ?", (largest,)), everyone, None))
    if not table_exists(con, "planted_conversions", schema="raw"):
        return out
    for (kind,) in con.execute("select distinct conversion_name from raw.planted_conversions order by 1").fetchall():
        later = mask("select customer_id from raw.planted_conversions where conversion_name = ? and converted_at >= ?",
                     (kind, features.cutoff))
        earlier = mask("select customer_id from raw.planted_conversions where conversion_name = ? and converted_at < ?",
                       (kind, features.cutoff))
        out.append((kind, later, ~earlier, None))
        if earlier.sum() >= 20:
            out.append((f"{kind}/earlier-seed", later, everyone, earlier))
    return out


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    positives = labels.sum()
    negatives = len(labels) - positives
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def score(method: str, f: Features, seed: np.ndarray, candidates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if method == "random":
        return rng.random(candidates.sum())
    if method == "activity":
        return f.lines[candidates] + 1e-6 * rng.random(candidates.sum())
    if method == "spend":
        return f.spend[candidates]
    if method == "rfm":
        columns = np.column_stack([-f.recency, np.log1p(f.orders), np.log1p(np.maximum(f.spend, 0))])
        z = (columns - columns.mean(axis=0)) / (columns.std(axis=0) + 1e-12)
        return z.sum(axis=1)[candidates]
    if method == "cosine":
        return cosine_to_centroid(f.shares[candidates], f.shares[seed])
    x = np.column_stack([f.shares, np.log1p(f.lines)]).astype(np.float32)
    train = seed | candidates
    y = seed[train]
    if method == "logreg":
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=1.0, class_weight="balanced", max_iter=200, tol=1e-3)
        model.fit(x[train], y)
        return model.decision_function(x[candidates])
    if method == "lightgbm":
        import lightgbm

        model = lightgbm.LGBMClassifier(**LIGHTGBM_PARAMS)
        model.fit(x[train], y)
        return model.predict_proba(x[candidates])[:, 1]
    raise ValueError(method)


def evaluate(f: Features, converters: np.ndarray, population: np.ndarray, fixed_seed: np.ndarray | None,
             splits: int = 5, methods=METHODS) -> dict[str, dict[str, float]]:
    results = {m: {"auc": [], "p5": [], "lift10": []} for m in methods}
    ceilings = []
    for split in range(splits):
        rng = np.random.default_rng(split)
        if fixed_seed is None:
            members = np.flatnonzero(converters & population)
            seed = np.zeros(len(converters), dtype=bool)
            seed[rng.choice(members, size=len(members) // 2, replace=False)] = True
        else:
            seed = fixed_seed
        candidates = population & ~seed
        labels = converters[candidates]
        k5, k10 = max(1, int(round(0.05 * len(labels)))), max(1, int(round(0.10 * len(labels))))
        ceilings.append(min(1.0, labels.sum() / k5))
        for method in methods:
            s = score(method, f, seed, candidates, rng)
            order = np.argsort(-s, kind="stable")
            results[method]["auc"].append(auc(s, labels))
            results[method]["p5"].append(labels[order[:k5]].mean())
            results[method]["lift10"].append(labels[order[:k10]].mean() / labels.mean())
    summary = {m: {k: float(np.mean(v)) for k, v in r.items()} for m, r in results.items()}
    summary["_"] = {"p5_max": float(np.mean(ceilings)), "converters": int(converters[population].sum()),
                    "base_rate": float(converters[population].mean())}
    return summary


def run(db: Path, splits: int = 5, cutoff: float = 0.8, methods=METHODS) -> list[tuple[str, dict]]:
    warnings.filterwarnings("ignore")
    with duckdb.connect(str(db), read_only=True) as con:
        features = load_features(con, cutoff)
        todo = tasks(con, features)
    return [(name, evaluate(features, converters, population, seed, splits, methods))
            for name, converters, population, seed in todo]


def print_table(results: list[tuple[str, dict]], methods=METHODS) -> None:
    print(f"{'task':32} {'conv':>6} {'base':>6} {'p5max':>6}  " + "  ".join(f"{m:>16}" for m in methods))
    print(f"{'':32} {'':>6} {'':>6} {'':>6}  " + "  ".join(f"{'auc  p@5 lift10':>16}" for _ in methods))
    for name, r in results:
        meta = r["_"]
        cells = "  ".join(f"{r[m]['auc']:.2f} {r[m]['p5']:.2f} {r[m]['lift10']:5.2f}".rjust(16) for m in methods)
        print(f"{name:32} {meta['converters']:>6} {meta['base_rate']:6.3f} {meta['p5_max']:6.2f}  {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, help="an existing warehouse with generated raw tables")
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--cutoff", type=float, default=0.8)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    args = parser.parse_args()
    methods = tuple(args.methods.split(","))
    db = args.db
    if db is None:
        from lookalike_cli.warehouse.generate import generate_data

        db = Path(tempfile.mkdtemp()) / "separation.duckdb"
        counts = generate_data(db, customers=args.customers, days=args.days, seed=args.seed, progress=None)
        print(f"generated {counts['customers']:,} customers, {counts['order_lines']:,} lines in {counts['seconds']}s")
    started = time.perf_counter()
    print_table(run(db, args.splits, args.cutoff, methods), methods)
    print(f"({time.perf_counter() - started:.0f}s)")


if __name__ == "__main__":
    main()
