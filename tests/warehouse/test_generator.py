"""The data generator: planted segments drive category mix and location, dirty rows, determinism,
and a failed run that keeps the previous raw tables. Real generator, real DuckDB; the first two
read the raw tables of the shared (dbt-built) generated warehouse."""

from __future__ import annotations

import duckdb
import pytest

from tests.helpers import GENERATED_CUSTOMERS, scalar


@pytest.mark.slow
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


@pytest.mark.slow
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
