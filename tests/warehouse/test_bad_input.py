"""Bad input to `lookalike build`: clear errors that name the table, column, test or var, and
nothing built is dropped. Each case is a real, failing `dbt build` on a copy of the shared
generated warehouse.

Every case restores the same copy (one path), so dbt's partial parse state carries over from
case to case; dbt re-parses in full only when --vars change, hence the cases without vars first."""

from __future__ import annotations

import duckdb
import pytest

from tests.helpers import GENERATED_CUSTOMERS, copy_warehouse, make_settings, query, run_cli, scalar

pytestmark = pytest.mark.slow  # every case is a failing `dbt build`


@pytest.fixture(scope="module")
def broken_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("broken")


@pytest.fixture()
def broken_copy(generated_warehouse, broken_folder):
    """A fresh copy of the generated warehouse for each case, always at the same path: dbt's
    profile names the database path, and a new path would make dbt parse the project again."""
    for leftover in broken_folder.glob("*.wal"):
        leftover.unlink()
    return copy_warehouse(generated_warehouse, broken_folder, "broken")


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


def test_orders_for_unknown_customers_fail_relationships(broken_copy):
    _break(broken_copy, "insert into raw.order_lines select 99999999, 1, ordered_at, category, department, quantity, amount from raw.order_lines limit 1")
    result = run_cli(broken_copy, "build", expect_exit=1)
    assert "relationships_stg_order_lines_customer_id" in result.output
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


def test_missing_raw_table_is_named(tmp_path):
    settings = make_settings(tmp_path)
    duckdb.connect(str(settings.db_path)).close()
    result = run_cli(settings, "build", expect_exit=1)
    assert "does not exist" in result.output and "customers" in result.output
