"""Warehouse layer: generator, Complete Journey loader, dbt marts, bad input. All real:
the generator writes a DuckDB file, dbt builds it, assertions read the marts back with SQL."""

from __future__ import annotations

import duckdb
import pytest

from tests.helpers import GENERATED_CUSTOMERS, copy_warehouse, query, run_cli, scalar


# --- generated data -------------------------------------------------------------------

def test_generator_writes_planted_structure(generated_warehouse):
    w = generated_warehouse
    assert scalar(w, "select count(*) from raw.customers") == GENERATED_CUSTOMERS
    assert scalar(w, "select count(*) from raw.planted_segments") == GENERATED_CUSTOMERS
    assert scalar(w, "select count(distinct segment_id) from raw.planted_segments") == 12
    lines = scalar(w, "select count(*) from raw.order_lines")
    assert 20 * GENERATED_CUSTOMERS < lines < 200 * GENERATED_CUSTOMERS
    # Dirty rows a real warehouse has.
    assert scalar(w, "select count(*) from raw.order_lines where quantity < 0") > 0
    assert scalar(w, "select count(*) from raw.order_lines where category is null") > 0
    assert scalar(w, "select count(*) from raw.customers where customer_id not in (select customer_id from raw.order_lines)") > 0
    assert scalar(w, "select count(*) from raw.opt_outs") > 0


def test_generator_segments_drive_category_mix_and_location(generated_warehouse):
    w = generated_warehouse
    # Each segment's top department holds far more of its purchases than the 1/20 a uniform mix gives.
    top_department_share = scalar(w, """
        with lines as (
            select p.segment_id, o.department, count(*) as n
            from raw.order_lines o join raw.planted_segments p using (customer_id)
            where o.department is not null
            group by all
        )
        select min(top_share) from (
            select segment_id, max(n) / sum(n) as top_share from lines group by segment_id
        )
    """)
    assert top_department_share > 0.15
    # Segments concentrate in their home cities: the top 3 cities of a segment hold far more
    # than the 3/300 a uniform placement gives.
    city_share = scalar(w, """
        with counts as (
            select p.segment_id, c.city, c.state, count(*) as n
            from raw.customers c join raw.planted_segments p using (customer_id)
            group by all
        ), ranked as (
            select segment_id, n, row_number() over (partition by segment_id order by n desc) as city_rank,
                   sum(n) over (partition by segment_id) as total
            from counts
        )
        select avg(share) from (
            select segment_id, sum(n) / max(total) as share from ranked where city_rank <= 3 group by segment_id
        )
    """)
    assert city_share > 0.3


def test_generator_is_deterministic(tmp_path):
    from lookalike_cli.warehouse.generate import generate_data

    fingerprints = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.duckdb"
        generate_data(path, customers=300, days=60, seed=5, progress=None)
        with duckdb.connect(str(path), read_only=True) as con:
            fingerprints.append(con.execute(
                "select count(*), sum(amount), sum(customer_id * quantity), min(ordered_at) from raw.order_lines"
            ).fetchone())
    assert fingerprints[0] == fingerprints[1]


def test_generator_failure_keeps_the_previous_raw_tables(tmp_path, monkeypatch):
    from lookalike_cli.warehouse import generate

    path = tmp_path / "w.duckdb"
    generate.generate_data(path, customers=300, days=30, seed=5, progress=None)
    real_order_lines, calls = generate._order_lines, []

    def fail_on_the_third_chunk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return real_order_lines(*args, **kwargs)

    monkeypatch.setattr(generate, "_order_lines", fail_on_the_third_chunk)
    with pytest.raises(RuntimeError, match="disk full"):
        # Chunks of 100 are committed one by one: only the final rename may replace the old tables.
        generate.generate_data(path, customers=500, days=30, seed=5, progress=None, chunk_customers=100)
    tables = "select table_name from information_schema.tables where table_schema = 'raw' order by 1"
    with duckdb.connect(str(path)) as con:
        assert con.execute("select count(*) from raw.customers").fetchone()[0] == 300
        assert not [t for (t,) in con.execute(tables).fetchall() if t.startswith(generate.STAGING_PREFIX)]
        con.execute("create view raw.stale_view as select 1 as x")
    monkeypatch.setattr(generate, "_order_lines", real_order_lines)
    generate.generate_data(path, customers=250, days=30, seed=5, progress=None, chunk_customers=100)
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("select count(*), max(customer_id) from raw.customers").fetchone() == (250, 250)
        assert [t for (t,) in con.execute(tables).fetchall()] == sorted(generate.RAW_TABLE_COLUMNS)


# --- dbt marts --------------------------------------------------------------------------

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


# --- bad input: clear errors, nothing built is dropped ----------------------------------

@pytest.fixture()
def broken_copy(generated_warehouse, tmp_path):
    return copy_warehouse(generated_warehouse, tmp_path)


def _marts_unchanged(settings):
    assert scalar(settings, "select count(*) from customer_features") == GENERATED_CUSTOMERS
    assert scalar(settings, "select count(*) from similarity_pairs") > 0


def _break(settings, *statements):
    with duckdb.connect(str(settings.db_path)) as con:
        for statement in statements:
            con.execute(statement)


def test_missing_required_column_names_table_and_column(broken_copy):
    _break(broken_copy, "alter table raw.order_lines drop column amount")
    result = run_cli(broken_copy, "build", expect_exit=1)
    assert "order_lines" in result.output and "missing required column(s): amount" in result.output
    _marts_unchanged(broken_copy)


def test_empty_orders_fails_the_has_rows_test(broken_copy):
    _break(broken_copy, "delete from raw.order_lines")
    result = run_cli(broken_copy, "build", expect_exit=1)
    assert "has_rows_stg_order_lines" in result.output
    _marts_unchanged(broken_copy)


def test_window_without_data_is_reported(broken_copy):
    result = run_cli(broken_copy, "dbt", "build", "--exclude", "customer_embeddings+",
                     "--vars", "{feature_end_date: '2040-01-01'}", expect_exit=1)
    assert "assert_windows_have_orders" in result.output
    _marts_unchanged(broken_copy)


# Each case is a dbt build (~15 s); as_of_date after the data is the same CASE branch as before it.
@pytest.mark.parametrize("dbt_vars, expected", [
    ("{as_of_date: '2020-01-01'}", "var as_of_date = 2020-01-01 is outside the data"),
    ("{label_end_date: '2040-01-01'}", "ends after as_of_date"),
    ("{feature_end_date: '2000-01-01'}", "leaves the training feature window with no orders"),
])
def test_bad_point_in_time_vars_name_the_var_and_the_data_dates(broken_copy, dbt_vars, expected):
    result = run_cli(broken_copy, "build", "--vars", dbt_vars, expect_exit=1)
    assert expected in result.output
    first, last = query(broken_copy, "select min(ordered_at)::date, max(ordered_at)::date from raw.order_lines")[0]
    assert f"the data's order lines run from {first} to {last}" in result.output
    _marts_unchanged(broken_copy)


def test_orders_for_unknown_customers_fail_relationships(broken_copy):
    _break(broken_copy, "insert into raw.order_lines select 99999999, 1, ordered_at, category, department, quantity, amount from raw.order_lines limit 1")
    result = run_cli(broken_copy, "build", expect_exit=1)
    assert "relationships_stg_order_lines_customer_id" in result.output
    _marts_unchanged(broken_copy)


def test_missing_raw_table_is_named(tmp_path):
    from tests.helpers import make_settings

    settings = make_settings(tmp_path)
    duckdb.connect(str(settings.db_path)).close()
    result = run_cli(settings, "build", expect_exit=1)
    assert "does not exist" in result.output and "customers" in result.output
