"""Warehouse layer: the dbt marts built from generated data and from the Complete Journey
sample, read back with SQL (point-in-time features, similarity labels, summary)."""

from __future__ import annotations

import pytest

from tests.helpers import GENERATED_CUSTOMERS, query, run_cli, scalar

pytestmark = pytest.mark.slow  # every test reads the dbt-built generated or Complete Journey warehouse


def test_customer_features_one_row_per_customer(generated_warehouse):
    w = generated_warehouse
    assert scalar(w, "select count(*) from customer_features") == GENERATED_CUSTOMERS
    assert scalar(w, "select count(distinct customer_id) from customer_features") == GENERATED_CUSTOMERS
    # Shares are a distribution over the category ids; ids index the categories mart.
    assert scalar(w, """
        select max(abs(list_sum(category_shares) - 1)) from customer_features where len(category_ids) > 0
    """) < 1e-9
    n_categories = scalar(w, "select count(*) from categories")
    assert scalar(w, "select max(list_max(category_ids)) from customer_features") < n_categories
    assert scalar(w, "select count(*) from customer_features where len(category_ids) <> len(category_shares)") == 0
    assert scalar(w, "select count(*) from customer_features where location_area = ''") == 0
    assert scalar(w, "select count(distinct gender) from customer_features") >= 3


RECOUNT_FROM_RAW = """
    -- Straight from the raw lines, before a cutoff: what a point-in-time feature table must hold.
    with lines as (
        select o.*, o.quantity < 0 or o.amount < 0 as is_return
        from raw.order_lines o where o.ordered_at < {cutoff}
    ),
    orders as (
        select customer_id, order_id, sum(case when not is_return then 1 else 0 end) as lines, sum(amount) as amount
        from lines group by 1, 2
    )
    select customer_id, sum(case when lines > 0 then 1 else 0 end)::double as order_count,
           sum(lines)::double as order_line_count, sum(amount) as total_spend
    from orders group by 1
"""


def _recount_mismatches(w, table: str, cutoff: str) -> int:
    return scalar(w, f"""
        with direct as ({RECOUNT_FROM_RAW.format(cutoff=cutoff)})
        select count(*) from {table} f left join direct using (customer_id)
        where coalesce(direct.order_count, 0) <> f.order_count
           or coalesce(direct.order_line_count, 0) <> f.order_line_count
           or abs(coalesce(direct.total_spend, 0) - f.total_spend) > 1e-6
    """)


def test_training_features_never_see_the_label_window(generated_warehouse):
    """The leak test: training_features equal a recount of the raw lines before feature_end_at, and
    every customer whose first order line falls in the label window has no training activity."""
    w = generated_warehouse
    feature_end, label_end, as_of = query(w, "select feature_end_at, label_end_at, as_of_at from int_time_windows")[0]
    assert feature_end < label_end <= as_of
    label_lines = scalar(w, "select count(*) from raw.order_lines, int_time_windows t where ordered_at >= t.feature_end_at")
    assert label_lines > 1000  # the label window holds data that could leak
    assert _recount_mismatches(w, "training_features", "(select feature_end_at from int_time_windows)") == 0
    assert scalar(w, """
        with first_line as (select customer_id, min(ordered_at) as first_at from raw.order_lines group by 1)
        select count(*) from training_features f join first_line using (customer_id), int_time_windows t
        where first_line.first_at >= t.feature_end_at
          and (f.order_line_count > 0 or f.total_spend <> 0 or len(f.category_ids) > 0 or f.recent_order_count > 0)
    """) == 0
    assert scalar(w, "select count(*) from training_features f, int_time_windows t where f.features_as_of <> t.feature_end_at") == 0
    # Recency is measured back from the training cutoff, so it can never be negative.
    assert scalar(w, "select min(recency_days) from training_features") >= 0


def test_serving_features_include_the_latest_order_line(generated_warehouse):
    """customer_features are as of the end of the data: every line counts, the latest one included."""
    w = generated_warehouse
    assert _recount_mismatches(w, "customer_features", "timestamp '9999-01-01'") == 0
    latest_customer, latest_at = query(w, """
        select customer_id, ordered_at from raw.order_lines where quantity > 0 and amount > 0
        order by ordered_at desc, customer_id limit 1
    """)[0]
    as_of = scalar(w, "select as_of_at from int_time_windows")
    assert as_of > latest_at and (as_of - latest_at).days < 1
    # The latest customer's recency is measured to the day after the data: 0 or 1 day, never the
    # training window's stale value.
    assert scalar(w, f"select recency_days from customer_features where customer_id = {latest_customer}") <= 1
    assert scalar(w, f"select recency_days from training_features where customer_id = {latest_customer}") >= 0
    more = scalar(w, """
        select count(*) from customer_features s join training_features t using (customer_id)
        where s.order_line_count > t.order_line_count
    """)
    assert more > 0.5 * GENERATED_CUSTOMERS  # most customers bought again after the training cutoff


def test_both_feature_sets_have_the_same_columns(generated_warehouse):
    columns = "select column_name, data_type from information_schema.columns where table_name = '{}' order by ordinal_position"
    assert query(generated_warehouse, columns.format("customer_features")) == query(generated_warehouse, columns.format("training_features"))


def test_similarity_pairs_labels(generated_warehouse):
    w = generated_warehouse
    splits = dict(query(w, "select split, count(*) from similarity_pairs group by split"))
    assert set(splits) == {"train", "valid", "test"}
    assert splits["train"] > 4 * splits["test"]
    assert scalar(w, "select count(*) from similarity_pairs where customer_id_a >= customer_id_b") == 0
    # Not dominated by near-zero pairs.
    assert scalar(w, "select avg(case when similarity_orders < 0.05 then 1 else 0 end) from similarity_pairs") < 0.6
    by_source = dict(query(w, "select pair_source, avg(similarity_orders) from similarity_pairs group by 1"))
    assert by_source["shared_top_category"] > by_source["random"]
    assert scalar(w, "select count(similarity_visits) from similarity_pairs") > 0


def test_similarity_labels_reflect_planted_segments(generated_warehouse):
    same, different = query(generated_warehouse, """
        select
            avg(case when a.segment_id = b.segment_id then s.similarity_orders end),
            avg(case when a.segment_id <> b.segment_id then s.similarity_orders end)
        from similarity_pairs s
        join raw.planted_segments a on a.customer_id = s.customer_id_a
        join raw.planted_segments b on b.customer_id = s.customer_id_b
    """)[0]
    assert same > 2 * different


def test_cosine_matches_numpy_on_a_sample(generated_warehouse):
    import numpy as np

    rows = query(generated_warehouse, """
        select s.customer_id_a, s.customer_id_b, s.similarity_orders
        from similarity_pairs s order by s.customer_id_a, s.customer_id_b limit 20
    """)
    vectors = {}
    for customer_id, category, weight in query(generated_warehouse, """
        select customer_id, category, weight from int_customer_label_vectors where signal = 'orders'
    """):
        vectors.setdefault(customer_id, {})[category] = weight
    for a, b, label in rows:
        keys = sorted(set(vectors[a]) | set(vectors[b]))
        va = np.array([vectors[a].get(k, 0.0) for k in keys])
        vb = np.array([vectors[b].get(k, 0.0) for k in keys])
        assert abs(va @ vb / np.linalg.norm(va) / np.linalg.norm(vb) - label) < 1e-9


def test_completejourney_sample_builds(completejourney_warehouse):
    w = completejourney_warehouse
    assert scalar(w, "select count(*) from customer_features") == 2469
    assert scalar(w, "select count(*) from raw.order_lines") > 1_000_000
    assert scalar(w, "select count(*) from raw.coupon_redemptions") > 0
    assert scalar(w, "select count(*) from raw.campaign_descriptions where campaign_type = 'Type A'") > 0
    assert scalar(w, "select count(*) from similarity_pairs") > 5000
    assert scalar(w, "select count(*) from categories") > 100
    # No visits/engagements source: the optional columns are zero, the labels null.
    assert scalar(w, "select max(visit_count) from customer_features") == 0
    assert scalar(w, "select count(similarity_visits) from similarity_pairs") == 0


def test_summary_command(generated_warehouse):
    result = run_cli(generated_warehouse, "summary")
    assert "main.customer_features" in result.output and "main.training_features" in result.output
    assert f"{GENERATED_CUSTOMERS:,}" in result.output
    # The three dates of the point-in-time design, as the dbt vars spell them.
    feature_end, label_end, as_of = query(generated_warehouse, """
        select cast(feature_end_at as date), cast(label_end_at as date) - 1, cast(as_of_at as date) - 1 from int_time_windows
    """)[0]
    assert f"feature_end_date {feature_end}" in result.output
    assert f"label_end_date {label_end}" in result.output
    assert f"as_of_date {as_of}" in result.output
