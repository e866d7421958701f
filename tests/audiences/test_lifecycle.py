"""Audience lifecycle on a real scored warehouse: apply a YAML file, rings, holdouts, measure, refresh.

Every table is read back with SQL from the serving file, as a BI tool would.
"""

from __future__ import annotations

import duckdb
import pytest

from tests.helpers import copy_warehouse, run_cli

pytestmark = pytest.mark.slow

AUDIENCES = """
audiences:
  - name: spenders
    seed_sql: select customer_id from customer_features order by total_spend desc limit 150
    size: 10%
    holdout: 20%
  - name: tiers
    seed_sql: select customer_id from customer_features order by order_count desc limit 150
    rings: [1%, 2%, 5%]
    strategy: centroid
"""


@pytest.fixture(scope="module")
def lifecycle(scored_warehouse, tmp_path_factory):
    folder = tmp_path_factory.mktemp("lifecycle")
    settings = copy_warehouse(scored_warehouse, folder)
    path = folder / "audiences.yml"
    path.write_text(AUDIENCES)
    return settings, path


def serving_sql(settings, sql: str, params=None):
    with duckdb.connect(str(settings.serving_db_path), read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def test_apply_publishes_rings_and_holdouts(lifecycle):
    settings, path = lifecycle
    out = run_cli(settings, "audiences", "apply", str(path)).output
    assert "spenders v1" in out and "tiers v1" in out
    population = serving_sql(settings, "select max(population_size) from audiences")[0][0]
    rings = dict(serving_sql(settings, "select ring, count(*) from latest_audience_members "
                                       "where audience_name = 'tiers' group by ring"))
    bounds = [-(-population * share // 100) for share in (1, 2, 5)]
    assert rings == {"0-1%": bounds[0], "1-2%": bounds[1] - bounds[0], "2-5%": bounds[2] - bounds[1]}
    size, held, activated = serving_sql(settings, """
        select count(*), count(*) filter (where is_holdout),
               (select count(*) from latest_audience_activation where audience_name = 'spenders')
        from latest_audience_members where audience_name = 'spenders'""")[0]
    assert size == -(-population * 10 // 100)
    assert 0.12 * size < held < 0.28 * size and activated == size - held
    skew = serving_sql(settings, "select count(distinct attribute) from audience_attribute_skew s "
                                 "join latest_audiences a using (audience_id) where a.name = 'spenders'")[0][0]
    assert skew >= 2
    curve = serving_sql(settings, """
        select a.name, c.size, c.min_score, c.expected_lift, c.source from audience_reach_curve c
        join latest_audiences a using (audience_id) order by a.name, c.size""")
    for name in ("spenders", "tiers"):
        rows = [r for r in curve if r[0] == name]
        assert len(rows) >= 6 and {r[4] for r in rows} == {"in_seed"}, rows
        assert all(a[2] >= b[2] and a[3] >= b[3] for a, b in zip(rows, rows[1:])), rows  # size up: score and lift down
    assert f"reach curve {settings.serving_db_path.with_name(settings.serving_db_path.stem + '_reach_curves')}" in out

    # Re-applying publishes version 2 and reports the diff; who stays keeps their holdout arm.
    again = run_cli(settings, "audiences", "apply", str(path)).output
    assert "spenders v2" in again and "vs v1" in again
    changed_arm = serving_sql(settings, """
        select count(*) from audience_members a join audience_members b using (customer_id)
        where a.audience_id = (select audience_id from audiences where name = 'spenders' and version = 1)
          and b.audience_id = (select audience_id from audiences where name = 'spenders' and version = 2)
          and a.is_holdout <> b.is_holdout""")[0][0]
    assert changed_arm == 0


def test_apply_lists_every_problem_and_publishes_nothing(lifecycle, tmp_path):
    settings, _ = lifecycle
    before = serving_sql(settings, "select count(*) from audiences")[0][0] if settings.serving_db_path.exists() else 0
    bad = tmp_path / "bad.yml"
    bad.write_text("""
audiences:
  - name: a
    seed_sql: select customer_id from no_such_table
    size: 5%
    colour: blue
  - name: a
    seed_table: customer_features
    size: 100000000
  - name: b
    seed_sql: select customer_id from customer_features limit 10
    size: 5%
    holdout: 70%
""")
    result = run_cli(settings, "audiences", "apply", str(bad), expect_exit=1)
    for fragment in ("no_such_table", "colour", "used twice", "not fewer than the population", "holdout", "nothing was published"):
        assert fragment in result.output, (fragment, result.output)
    after = serving_sql(settings, "select count(*) from audiences")[0][0] if settings.serving_db_path.exists() else 0
    assert after == before


def test_measure_compares_treated_and_holdout(lifecycle):
    settings, path = lifecycle
    run_cli(settings, "audiences", "apply", str(path))
    # Outcome: exactly the treated members converted -> holdout rate 0, treated rate 1.
    members = serving_sql(settings, "select customer_id, is_holdout from latest_audience_members where audience_name = 'spenders'")
    treated = [c for c, h in members if not h]
    with duckdb.connect(str(settings.db_path)) as con:
        con.execute("create or replace table converted_test as select unnest(?::bigint[]) as customer_id", [treated])
    out = run_cli(settings, "measure", "--audience", "spenders", "--outcome-sql", "select customer_id from converted_test").output
    assert "holdout 0/" in out
    row = serving_sql(settings, "select treated_rate, holdout_rate, lift_ci_low, p_value from audience_measurements "
                                "order by measured_at desc limit 1")[0]
    assert row[0] == 1.0 and row[1] == 0.0 and row[2] > 0.9 and row[3] < 1e-6
    result = run_cli(settings, "measure", "--audience", "tiers", "--outcome-sql", "select 1 as customer_id", expect_exit=1)
    assert "no holdout" in result.output


def test_refresh_runs_only_what_changed(lifecycle):
    settings, path = lifecycle
    first = run_cli(settings, "refresh", "--audiences", str(path)).output
    assert "build: ran" in first
    idle = run_cli(settings, "refresh", "--audiences", str(path)).output
    assert "ran nothing" in idle
    # New order lines land: everything downstream runs again and the audiences get new versions.
    with duckdb.connect(str(settings.db_path)) as con:
        con.execute("""insert into raw.order_lines
                       select * replace (order_id + 10000000 as order_id, ordered_at + interval 1 day as ordered_at)
                       from raw.order_lines where ordered_at = (select max(ordered_at) from raw.order_lines)""")
    versions = serving_sql(settings, "select max(version) from audiences where name = 'spenders'")[0][0]
    again = run_cli(settings, "refresh", "--audiences", str(path)).output
    for step in ("build: ran", "score: ran", "index: ran", "apply: ran"):
        assert step in again, again
    assert serving_sql(settings, "select max(version) from audiences where name = 'spenders'")[0][0] == versions + 1
