"""Synthetic ad logs with planted intents: the known answer for the ads tests and benchmarks.

What is planted (README "Ads"):
- a three-level taxonomy: departments -> categories -> product types;
- two intents per product type; an ad belongs to one intent, and its text draws words from
  its intent's synonym set (so two ads of one intent often share no word: text overlap alone,
  e.g. TF-IDF, cannot find them, co-clicks can), plus its product type's name half the time,
  a brand and generic filler words;
- search queries per intent: 85% of an ad's clicks come from its own intent's queries, the
  rest from other intents of its product type or anywhere (co-clicks = shared queries);
- revenue per click is set by the intent (lognormal, spread within a product type) times a
  small per-ad factor; a click converts with probability 20%, so few-click ads have very
  noisy observed RPC and pooling over an intent cluster pays;
- click rates are long-tailed (lognormal), historical CPCs are independent of RPC (room for
  better bids); ~10% of ads have no product type label (multi-product ads).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from lookalike_cli.warehouse.connection import connection, transaction, write_table
from lookalike_cli.progress import Progress, quiet


CONSONANTS = list("bcdfghklmnprstvz")
VOWELS = list("aeiou")
CONVERSION_RATE = 0.20
OWN_INTENT_QUERY_SHARE = 0.85
SAME_TYPE_QUERY_SHARE = 0.10  # the rest (5%) of clicks come from any query


def pseudo_words(rng: np.random.Generator, count: int, syllables: tuple[int, int] = (2, 3)) -> list[str]:
    """`count` distinct pronounceable nonsense words, so no word carries meaning by accident."""
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < count:
        n = int(rng.integers(syllables[0], syllables[1] + 1))
        word = "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(n))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def generate_ads(
    db_path: Path,
    ads: int = 3000,
    days: int = 84,
    seed: int = 7,
    departments: int = 6,
    categories_per_department: int = 3,
    types_per_category: int = 3,
    intents_per_type: int = 2,
    queries_per_intent: int = 8,
    start_date: str = "2026-01-05",
    progress: Progress = quiet,
) -> dict[str, int]:
    """Replace raw.ads, raw.ad_daily_stats, raw.ad_query_clicks (+ ground truth raw.ad_planted_intents)."""
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    type_count = departments * categories_per_department * types_per_category
    intent_count = type_count * intents_per_type

    # Taxonomy names and words.
    department_names = pseudo_words(rng, departments, (2, 2))
    category_names = pseudo_words(rng, departments * categories_per_department, (2, 3))
    type_names = pseudo_words(rng, type_count, (2, 3))
    synonyms_per_intent = 6
    intent_words = np.array(pseudo_words(rng, intent_count * synonyms_per_intent + 120 + 60, (2, 3)))
    filler_words = intent_words[intent_count * synonyms_per_intent: intent_count * synonyms_per_intent + 120]
    brands = intent_words[intent_count * synonyms_per_intent + 120:]
    intent_words = intent_words[: intent_count * synonyms_per_intent].reshape(intent_count, synonyms_per_intent)
    type_of_intent = np.repeat(np.arange(type_count), intents_per_type)
    category_of_type = np.repeat(np.arange(departments * categories_per_department), types_per_category)
    department_of_category = np.repeat(np.arange(departments), categories_per_department)

    # Value of an intent: RPC spread within a product type, margin rate per intent.
    intent_rpc = np.exp(rng.normal(np.log(3.0), 0.7, intent_count))
    intent_margin_rate = rng.uniform(0.1, 0.45, intent_count)

    # Ads.
    ad_ids = np.arange(1, ads + 1, dtype=np.int64)
    ad_intent = rng.integers(0, intent_count, ads)
    ad_type = type_of_intent[ad_intent]
    ad_category = category_of_type[ad_type]
    ad_department = department_of_category[ad_category]
    ad_rpc = intent_rpc[ad_intent] * np.exp(rng.normal(0.0, 0.15, ads))
    click_rate = np.exp(rng.normal(-2.0, 1.5, ads))  # clicks per day at the historical bid: long tail
    historical_cpc = np.round(0.4 * np.exp(rng.normal(0.0, 0.35, ads)), 2).clip(0.05)
    ctr = rng.uniform(0.01, 0.05, ads)
    texts = []
    for index in range(ads):
        words = list(rng.choice(intent_words[ad_intent[index]], size=int(rng.integers(2, 4)), replace=False))
        if rng.random() < 0.5:
            words.append(type_names[ad_type[index]])
        words += list(rng.choice(filler_words, size=2, replace=False))
        rng.shuffle(words)
        size = f"{int(rng.choice([1, 2, 4, 6, 8, 12, 16, 24, 32]))} {rng.choice(['oz', 'lb', 'ct', 'pk'])}"
        texts.append(f"{rng.choice(brands)} {' '.join(words)} {size}")
    labelled = rng.random(ads) >= 0.10
    ads_table = pd.DataFrame({
        "ad_id": ad_ids,
        "ad_text": texts,
        "department": [department_names[d] for d in ad_department],
        "category": [category_names[c] for c in ad_category],
        "product_type": pd.array([type_names[t] if keep else None for t, keep in zip(ad_type, labelled)], dtype="string"),
    })
    truth = pd.DataFrame({
        "ad_id": ad_ids,
        "planted_intent": ad_intent.astype(np.int64),
        "true_product_type": [type_names[t] for t in ad_type],
        "true_rpc": ad_rpc,
        "true_margin_rate": intent_margin_rate[ad_intent],
        "clicks_per_day": click_rate,
    })
    progress(f"  {ads:,} ads over {intent_count} intents in {type_count} product types")

    # Daily stats: Poisson clicks, conversions at 20%, order values gamma-distributed around rpc / 20%.
    dates = pd.date_range(start_date, periods=days, freq="D")
    clicks = rng.poisson(click_rate[:, None] * np.ones((1, days)))
    conversions = rng.binomial(clicks, CONVERSION_RATE)
    order_value_shape = 3.0
    order_value_scale = (ad_rpc / CONVERSION_RATE / order_value_shape)[:, None]
    revenue = np.where(conversions > 0, rng.gamma(np.maximum(conversions, 1) * order_value_shape) * order_value_scale, 0.0)
    impressions = clicks + rng.poisson((click_rate / ctr - click_rate)[:, None] * np.ones((1, days)))
    cost = clicks * historical_cpc[:, None]
    ad_index, day_index = np.nonzero(impressions)
    stats = pd.DataFrame({
        "ad_id": ad_ids[ad_index],
        "stat_date": dates[day_index].date,
        "impressions": impressions[ad_index, day_index].astype(np.int64),
        "clicks": clicks[ad_index, day_index].astype(np.int64),
        "cost": np.round(cost[ad_index, day_index], 2),
        "revenue": np.round(revenue[ad_index, day_index], 2),
        "margin": np.round(revenue[ad_index, day_index] * intent_margin_rate[ad_intent[ad_index]], 2),
    })

    # Search-term report: each click attributed to a query.
    click_ad, click_day = np.nonzero(clicks)
    repeat = clicks[click_ad, click_day]
    click_ad = np.repeat(click_ad, repeat)
    click_day = np.repeat(click_day, repeat)
    n_clicks = len(click_ad)
    source = rng.random(n_clicks)
    own_intent = ad_intent[click_ad]
    # Same product type, any of its intents; or any intent at all.
    same_type_intent = type_of_intent[own_intent] * intents_per_type + rng.integers(0, intents_per_type, n_clicks)
    any_intent = rng.integers(0, intent_count, n_clicks)
    query_intent = np.where(source < OWN_INTENT_QUERY_SHARE, own_intent,
                            np.where(source < OWN_INTENT_QUERY_SHARE + SAME_TYPE_QUERY_SHARE, same_type_intent, any_intent))
    # Popular queries get most clicks (Zipf-like within an intent).
    query_weights = 1.0 / np.arange(1, queries_per_intent + 1)
    query_rank = rng.choice(queries_per_intent, size=n_clicks, p=query_weights / query_weights.sum())
    query_id = query_intent.astype(np.int64) * queries_per_intent + query_rank
    keys = pd.DataFrame({"ad_id": ad_ids[click_ad], "query_id": query_id, "day": click_day})
    query_clicks = keys.groupby(["ad_id", "query_id", "day"], sort=True).size().rename("clicks").reset_index()
    query_clicks["stat_date"] = dates[query_clicks["day"].to_numpy()].date
    query_clicks["query_id"] = "q" + query_clicks["query_id"].astype(str)
    query_clicks = query_clicks[["ad_id", "query_id", "stat_date", "clicks"]]
    progress(f"  {int(clicks.sum()):,} clicks over {days} days, {len(query_clicks):,} ad x query x day rows")

    tables = {
        "ads": ads_table,
        "ad_daily_stats": stats,
        "ad_query_clicks": query_clicks,
        "ad_planted_intents": truth,
    }
    write_raw_tables(db_path, tables)
    counts = {name: len(frame) for name, frame in tables.items()}
    counts["seconds"] = round(time.perf_counter() - started, 2)
    return counts


def write_raw_tables(db_path: Path, tables: dict[str, pd.DataFrame]) -> None:
    """Replace raw.<name> for each table in one transaction; other raw tables are kept."""
    Path(db_path).parent.mkdir(parents=True, exist_ok=True)
    with connection(Path(db_path)) as con, transaction(con):
        con.execute("create schema if not exists raw")
        for name, frame in tables.items():
            write_table(con, f"raw.{name}", pa.Table.from_pandas(frame, preserve_index=False))
