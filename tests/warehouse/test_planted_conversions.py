"""Generated data (issue 16, item 4): planted conversions driven by preference, activity and recency,
hard enough that methods separate. Real generator, real DuckDB; features straight from the raw tables
(benchmarks.bench_generated_separation), no dbt."""

from __future__ import annotations

import duckdb
import pytest

from benchmarks.bench_generated_separation import evaluate, load_features, tasks
from lookalike_cli.errors import LookalikeError
from lookalike_cli.warehouse.generate import CONVERSION_KINDS, generate_data

CUSTOMERS = 3000
DAYS = 365
CUTOFF = "2025-10-20"  # start_date 2025-01-01 + floor(0.8 * 365) = 292 days: the label period


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("generate") / "g.duckdb"
    generate_data(path, customers=CUSTOMERS, days=DAYS, seed=11, progress=None)
    return path


def query(db, sql, params=None):
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def test_planted_conversions_have_three_kinds_at_realistic_rates(db):
    rows = dict((kind, (n, late)) for kind, n, late in query(db, """
        select conversion_name, count(distinct customer_id), count(*) filter (where converted_at >= ?::timestamp)
        from raw.planted_conversions group by 1
    """, [CUTOFF]))
    assert set(rows) == set(CONVERSION_KINDS) == {"segment_response", "category_adoption", "high_value_next"}
    for kind, (n, late) in rows.items():
        # Converters after the cutoff (the backtest's hidden set): 1-10% of customers.
        assert 0.01 * CUSTOMERS <= late <= 0.10 * CUSTOMERS, (kind, late)
    # One row per converter and kind; the campaign and the upgrade fall in the label period only.
    assert query(db, "select count(*) - count(distinct (conversion_name, customer_id)) from raw.planted_conversions")[0][0] == 0
    assert rows["segment_response"][0] == rows["segment_response"][1]
    assert rows["high_value_next"][0] == rows["high_value_next"][1]
    # Adoption spreads over the whole history: earlier buyers exist to be a seed.
    assert rows["category_adoption"][0] > 1.5 * rows["category_adoption"][1]


def test_category_adoption_is_the_first_purchase_of_the_target_category(db):
    (category,), = query(db, """
        select any_value(o.category) from raw.planted_conversions c
        join raw.order_lines o on o.customer_id = c.customer_id and o.ordered_at = c.converted_at
        where c.conversion_name = 'category_adoption' and o.quantity > 0
        group by o.category order by count(*) desc limit 1
    """)
    mismatches, non_adopter_buyers = query(db, """
        with first_buys as (
            select customer_id, min(ordered_at) as first_at from raw.order_lines
            where category = ? and quantity > 0 group by 1
        ), adopters as (
            select customer_id, converted_at from raw.planted_conversions where conversion_name = 'category_adoption'
        )
        select count(*) filter (where a.converted_at is distinct from f.first_at),
               count(*) filter (where a.customer_id is null)
        from first_buys f full join adopters a using (customer_id)
    """, [category])[0]
    assert (mismatches, non_adopter_buyers) == (0, 0)


def test_converters_are_more_active_and_upgrades_show_in_spend(db):
    rows = dict((kind, (converters, others)) for kind, converters, others in query(db, """
        with lines as (
            select c.customer_id, count(o.customer_id) as n
            from raw.customers c left join raw.order_lines o on o.customer_id = c.customer_id and o.ordered_at < ?::timestamp
            group by 1
        ), kinds as (select distinct conversion_name from raw.planted_conversions)
        select k.conversion_name,
               avg(l.n) filter (where p.customer_id is not null),
               avg(l.n) filter (where p.customer_id is null)
        from kinds k cross join lines l
        left join raw.planted_conversions p on p.conversion_name = k.conversion_name and p.customer_id = l.customer_id
        group by 1
    """, [CUTOFF]))
    for kind, (converters, others) in rows.items():
        assert converters > 1.3 * others, (kind, converters, others)
    # high_value_next: spend per day after the upgrade is well above the same customers' before it.
    before, after = query(db, """
        with per as (
            select c.customer_id, any_value(c.converted_at) as upgraded_at,
                   coalesce(sum(o.amount) filter (where o.ordered_at < c.converted_at), 0) as spend_before,
                   coalesce(sum(o.amount) filter (where o.ordered_at >= c.converted_at), 0) as spend_after
            from raw.planted_conversions c join raw.order_lines o using (customer_id)
            where c.conversion_name = 'high_value_next'
            group by 1
        )
        select sum(spend_before) / sum(date_diff('day', '2025-01-01'::timestamp, upgraded_at)),
               sum(spend_after) / sum(date_diff('day', upgraded_at, '2026-01-01'::timestamp))
        from per
    """)[0]
    assert after > 2 * before, (before, after)


def test_conversion_values_follow_spend_propensity_and_feed_a_value_holdout(db):
    """Every conversion has a positive value, heavy-tailed, higher for customers who spent more before
    the cutoff (but far from a copy of it); planted_value_holdouts' SQL returns each kind's values."""
    from lookalike_cli.warehouse.generate import GeneratorConfig, planted_value_holdouts

    for kind, n, smallest, p50, p90, correlation in query(db, """
        with spend as (select customer_id, sum(amount) as spend from raw.order_lines where ordered_at < ?::timestamp group by 1)
        select conversion_name, count(*), min(conversion_value), quantile_cont(conversion_value, 0.5),
               quantile_cont(conversion_value, 0.9), corr(ln(conversion_value), ln(1 + greatest(coalesce(spend, 0), 0)))
        from raw.planted_conversions left join spend using (customer_id) group by 1
    """, [CUTOFF]):
        assert smallest > 0 and 2 < p90 / p50 < 8, (kind, smallest, p50, p90)
        assert 0.2 < correlation < 0.9, (kind, correlation)
    as_of, holdouts = planted_value_holdouts(GeneratorConfig(customers=CUSTOMERS, days=DAYS, seed=11))
    assert str(as_of) == CUTOFF and [h[0] for h in holdouts] == list(CONVERSION_KINDS)
    for name, converters_sql, _, value_sql in holdouts:
        converters = {r[0] for r in query(db, converters_sql)}
        values = dict(query(db, value_sql))
        assert set(values) == converters and min(values.values()) > 0, name


def test_activity_is_heavy_tailed_and_customers_lapse(db):
    p50, p90, lapsed = query(db, """
        with per as (select customer_id, count(*) as n, max(ordered_at) as last_at from raw.order_lines group by 1)
        select quantile_cont(n, 0.5), quantile_cont(n, 0.9), avg(case when last_at < '2025-07-01' then 1.0 else 0.0 end)
        from per
    """)[0]
    assert p90 > 4 * p50, (p50, p90)
    # ~30% of customers lapse at a uniform day of their history: well over 10% stop before July.
    assert lapsed > 0.10, lapsed


@pytest.mark.slow
def test_methods_separate_but_none_is_perfect(db):
    with duckdb.connect(str(db), read_only=True) as con:
        features = load_features(con, 0.8)
        todo = {name: task for name, *task in tasks(con, features)}
    assert {"segment_0", "segment_response", "category_adoption", "high_value_next"} <= set(todo)
    methods = ("random", "activity", "spend", "cosine", "logreg")
    results = {name: evaluate(features, *todo[name], splits=2, methods=methods)
               for name in todo if "/" not in name}
    for name, r in results.items():
        # Nothing is perfect: the learned classifier misses converters in its top 5%.
        assert max(r[m]["p5"] for m in methods) < 0.97, (name, r)
        # The learned classifier finds far more than random.
        assert r["logreg"]["auc"] > r["random"]["auc"] + 0.15, (name, r)
        assert r["logreg"]["lift10"] > 2.0, (name, r)
    for name in CONVERSION_KINDS:
        r = results[name]
        # Activity is a real baseline on every conversion kind (as on real data)...
        assert r["activity"]["auc"] > 0.58 and r["spend"]["auc"] > 0.58, (name, r)
        # ...and preference matters too: the classifier on shares + activity beats activity alone.
        assert r["logreg"]["auc"] > r["activity"]["auc"] + 0.02, (name, r)
    # The largest planted segment can fill the top 5% (base rate > 5%) yet no method gets there.
    largest = [name for name in results if name.endswith("(largest)")] or ["segment_0"]
    r = results[largest[0]]
    assert r["_"]["p5_max"] == 1.0 and max(r[m]["p5"] for m in methods) < 0.97, r
    assert r["logreg"]["p5"] > 5 * r["random"]["p5"], r


def test_generator_is_deterministic_given_the_seed(tmp_path):
    fingerprints = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        path = tmp_path / f"{name}.duckdb"
        generate_data(path, customers=400, days=60, seed=seed, progress=None, chunk_customers=150)
        fingerprints.append(query(path, """
            select (select (count(*), sum(amount), sum(customer_id * quantity), min(ordered_at)) from raw.order_lines),
                   (select (count(*), sum(customer_id), sum(epoch(converted_at))) from raw.planted_conversions),
                   (select sum(segment_id * customer_id) from raw.planted_segments)
        """)[0])
    assert fingerprints[0] == fingerprints[1]
    assert fingerprints[0] != fingerprints[2]


@pytest.mark.parametrize("overrides, message", [
    ({"staples_share": 0.7, "favourites_share": 0.4}, "sum to less than 1"),
    ({"lapse_probability": 1.0}, "lapse_probability"),
    ({"label_fraction": 0.9}, "label_fraction"),
    ({"activity_sigma": -1}, "activity_sigma"),
])
def test_bad_generator_settings_are_clear_errors(tmp_path, overrides, message):
    with pytest.raises(LookalikeError, match=message):
        generate_data(tmp_path / "x.duckdb", customers=100, progress=None, **overrides)
    assert not (tmp_path / "x.duckdb").exists()
