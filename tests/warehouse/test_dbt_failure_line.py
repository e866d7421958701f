"""A failed dbt run becomes one line: the first failed node and why (from the run_results.json this run wrote),
else dbt's last error line; always the path of dbt's log. Messages below are dbt 1.11's, copied from real runs
(the CLI cases with a real dbt are in tests/reliability/test_cli_errors.py)."""

from __future__ import annotations

import json
import os
import time

import pytest

from lookalike_cli.errors import LookalikeError
from lookalike_cli.warehouse.dbt_runner import check_vars, failure_line, last_error_line, node_reason
from tests.helpers import make_settings

COMPILATION = ('Compilation Error in model stg_customers (models/staging/stg_customers.sql)\n'
               '  Raw table "w"."raw"."no_such_table" does not exist. Load data with `lookalike generate-data`.\n'
               '  \n  > in macro require_columns (macros/raw_sources.sql)\n'
               '  > called by model stg_customers (models/staging/stg_customers.sql)')
RUNTIME = ('Runtime Error in model int_time_windows (models/intermediate/int_time_windows.sql)\n'
           '  Conversion Error: invalid date field format: "soon", expected format is (YYYY-MM-DD)\n  \n'
           "  LINE 38:     (cast('soon' as date) + cast(1 as bigint) * interval 1 day...\n"
           '                ^^^^^^^^^^^^^^^^^^^^')


def test_node_reason_keeps_the_cause_and_drops_header_sql_and_macro_stack():
    assert node_reason(COMPILATION) == ('Raw table "w"."raw"."no_such_table" does not exist. '
                                        'Load data with `lookalike generate-data`')
    assert node_reason(RUNTIME) == 'Conversion Error: invalid date field format: "soon", expected format is (YYYY-MM-DD)'
    assert node_reason("Got 3 results, configured to fail if != 0") == "Got 3 results, configured to fail if != 0"
    assert len(node_reason("x" * 5000)) < 500


def write_run_results(settings, results) -> None:
    target = settings.db_path.parent / ".dbt" / settings.db_path.stem / "target"
    target.mkdir(parents=True)
    (target / "run_results.json").write_text(json.dumps({"results": results}))


def test_the_first_failed_node_is_named_with_the_count_of_the_others(tmp_path, monkeypatch):
    for name in ("DBT_TARGET_PATH", "DBT_LOG_PATH"):
        monkeypatch.delenv(name, raising=False)
    settings = make_settings(tmp_path, "w")
    started = time.time() - 1
    write_run_results(settings, [
        {"unique_id": "model.lookalike.stg_orders", "status": "success", "message": "OK"},
        {"unique_id": "model.lookalike.int_time_windows", "status": "error", "message": RUNTIME},
        {"unique_id": "test.lookalike.has_rows_stg_order_lines_.b1d0", "status": "fail",
         "message": "Got 1 result, configured to fail if >0"},
        {"unique_id": "test.lookalike.unique_x.c7", "status": "skipped", "message": None},
    ])
    line = failure_line(settings, ["build", "--select", "marts"], [], started)
    log = tmp_path / ".dbt" / "w" / "logs" / "dbt.log"
    assert line == ("`dbt build` stopped: model int_time_windows failed: Conversion Error: invalid date field format: "
                    f'"soon", expected format is (YYYY-MM-DD) (1 more failed). Fix that and run the command again; '
                    f"dbt's full log: {log}")
    assert "\n" not in line


def test_a_failing_test_points_at_its_compiled_sql(tmp_path, monkeypatch):
    for name in ("DBT_TARGET_PATH", "DBT_LOG_PATH"):
        monkeypatch.delenv(name, raising=False)
    settings = make_settings(tmp_path, "w")
    write_run_results(settings, [{"unique_id": "test.lookalike.has_rows_stg_order_lines_.b1d0", "status": "fail",
                                  "message": "Got 1 result, configured to fail if >0"}])
    compiled = "/x/target/compiled/lookalike/models/staging/_staging.yml/has_rows_stg_order_lines_.sql"
    line = failure_line(settings, ["build"], [f"\x1b[0m21:08:04    compiled code at {compiled}"], time.time() - 1)
    assert line.startswith("`dbt build` stopped: test has_rows_stg_order_lines_ failed (Got 1 result, configured to "
                           f"fail if >0): the rows its SQL selects are the problem ({compiled}).")


def test_results_of_an_earlier_run_are_not_blamed(tmp_path, monkeypatch):
    for name in ("DBT_TARGET_PATH", "DBT_LOG_PATH"):
        monkeypatch.delenv(name, raising=False)
    settings = make_settings(tmp_path, "w")
    write_run_results(settings, [{"unique_id": "model.lookalike.old", "status": "error", "message": "old failure"}])
    results = tmp_path / ".dbt" / "w" / "target" / "run_results.json"
    os.utime(results, (time.time() - 60, time.time() - 60))
    lines = ["Usage: dbt build [OPTIONS]", "Try 'dbt build --help' for help.", "",
             "Error: Invalid value for '--vars': String '{oops' is not valid YAML"]
    line = failure_line(settings, ["build"], lines, time.time() - 5)
    assert line.startswith("`dbt build` failed: Invalid value for '--vars': String '{oops' is not valid YAML. dbt's full log:")
    assert "old" not in line


def test_last_error_line_joins_a_line_ending_in_a_colon_with_the_next():
    assert last_error_line(["12:00:00  Encountered an error:", "12:00:00  Parsing Error in models/x.yml",
                            "12:00:01  done"]) == "Encountered an error: Parsing Error in models/x.yml."


@pytest.mark.parametrize("args, fragment", [
    (["build", "--vars", "{oops"], "`--vars '{oops'` is not valid YAML (expected ',' or '}', but got '<stream end>' at character 6)"),
    (["build", "--vars={a: [1}"], "`--vars '{a: [1}'` is not valid YAML"),
    (["build", "--vars", "[1, 2]"], "`--vars '[1, 2]'` is not a mapping"),
    (["run", "--select", "x", "--vars", "oops"], "`--vars 'oops'` is not a mapping"),
])
def test_vars_dbt_cannot_read_are_refused_in_one_line(args, fragment):
    with pytest.raises(LookalikeError) as refused:
        check_vars(args)
    assert fragment in str(refused.value) and "\n" not in str(refused.value)


def test_vars_dbt_can_read_pass():
    check_vars(["build", "--vars", "{as_of_date: 2025-06-30, use_ads: true}"])
    check_vars(["build", "--vars", '{"max_pairs": 10}'])
    check_vars(["build", "--select", "marts"])
