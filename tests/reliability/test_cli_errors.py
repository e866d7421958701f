"""Every error a user can cause ends in one line without a traceback: exit 1 for a bad value or a bad state
(the library's LookalikeError), exit 2 for bad usage (click: unknown option, missing argument, wrong type)."""

from __future__ import annotations

import duckdb
import pytest

from tests.helpers import cli_error, make_settings, run_cli
from tests.reliability.conftest import SEED_SQL

EXPAND = ("expand", "--name", "x", "--seed-sql", SEED_SQL)
# A missing source table, a var that breaks a model's SQL, and an empty order-lines table (made by the test).
DBT_VARS = "{customers_table: no_such_table, order_lines_table: no_order_lines, as_of_date: 'soon'}"
# --vars dbt could not read: refused before dbt starts, so their line names no dbt log.
UNREADABLE_VARS = ("{oops", "[1, 2]")

# (command, exit code, a fragment of the one-line error)
BAD_INPUTS = [
    (("expand", "--name", "x", "--size", "5%"), 1, "Give exactly one seed source"),
    ((*EXPAND, "--size", "abc"), 1, "--size 'abc': give a positive count"),
    ((*EXPAND, "--size", "150%"), 1, "--size 150%: a percentage must be in (0, 100]"),
    ((*EXPAND, "--size", "0"), 1, "--size '0': give a positive count"),
    ((*EXPAND, "--size", "999999"), 1, "asks for 999,999 customers"),
    ((*EXPAND, "--size", "5%", "--min-similarity", "3"), 1, "--min-similarity 3.0 must be a cosine similarity"),
    ((*EXPAND, "--min-expected-lift", "2", "--size", "5%"), 1, "alone"),
    (("expand", "--name", " ", "--seed-sql", SEED_SQL, "--size", "5%"), 1, "--name must not be empty"),
    (("expand", "--name", "x", "--seed-sql", "select nonsense", "--size", "5%"), 1, "Seed sql: select nonsense failed"),
    (("expand", "--name", "x", "--seed-table", "no_such_table", "--size", "5%"), 1, "no_such_table"),
    (("expand", "--name", "x", "--seed-file", "/no/such/seed.csv", "--size", "5%"), 1, "/no/such/seed.csv does not exist"),
    ((*EXPAND, "--size", "5%", "--exclude-sql", "select broken from"), 1, "--exclude-sql"),
    (("score", "--model", "nope"), 1, "No model manifest"),
    (("audiences", "show", "nope"), 1, "No audience named 'nope'"),
    (("audiences", "drop", "nope"), 1, "No audience named 'nope'"),
    (("audiences", "apply", "/no/such/audiences.yml"), 1, "No audiences file"),
    (("backtest", "--name", "b", "--converters-sql", "select 1 as customer_id"), 1, "converters"),
    # dbt failures that are the user's: the one line names the failed node and why, and points at dbt's log.
    # One --vars for the three, so dbt parses the project in full once (a change of vars re-parses it).
    (("build", "--select", "stg_customers", "--vars", DBT_VARS), 1,
     "`dbt build` stopped: model stg_customers failed: Raw table \"w\".\"raw\".\"no_such_table\" does not exist"),
    (("build", "--select", "int_time_windows", "--vars", DBT_VARS), 1,
     "model int_time_windows failed: Conversion Error: invalid date field format: \"soon\""),
    # Builds the view stg_order_lines over the empty table, then its has_rows test fails: the last dbt row.
    (("build", "--select", "stg_order_lines", "--vars", DBT_VARS), 1,
     "test has_rows_stg_order_lines_ failed (Got 1 result, configured to fail if >0)"),
    # A --vars dbt cannot read: refused before dbt starts (dbt would print its complaint and click's usage block).
    (("build", "--vars", UNREADABLE_VARS[0]), 1, "`--vars '{oops'` is not valid YAML (expected ',' or '}'"),
    (("dbt", "build", "--vars", UNREADABLE_VARS[0]), 1, "`--vars '{oops'` is not valid YAML"),
    (("build", "--vars", UNREADABLE_VARS[1]), 1, "`--vars '[1, 2]'` is not a mapping"),
    # An option dbt refuses: dbt's usage block held back, its error in our line.
    (("dbt", "build", "--bogus"), 1, "`dbt build` failed: No such option '--bogus'."),
    # usage errors: click's own, exit 2
    (("expand", "--size"), 2, "Option '--size' requires an argument"),
    (("expand", "--bogus"), 2, "No such option '--bogus'"),
    (("no-such-command",), 2, "No such command"),
    ((*EXPAND, "--size", "5%", "--strategy", "nope"), 2, "Invalid value for '--strategy'"),
    (("build-index", "--index-type", "nope"), 2, "Invalid value for '--index-type'"),
    (("train", "--epochs", "zero"), 2, "Invalid value for '--epochs'"),
    (("score", "--quantize", "int4"), 2, "Invalid value for '--quantize'"),
    (("generate-data", "--customers", "5"), 2, "Invalid value for '--customers'"),
    (("segment", "--k", "abc"), 2, "Invalid value for --k"),
    (("audiences", "apply"), 2, "Missing argument 'FILE'"),
]


def usage_error(settings, *args: str) -> str:
    """The message of a usage error: exit 2, one `Error: ...` line last, no traceback."""
    result = run_cli(settings, *args, expect_exit=2)
    lines = result.output.splitlines()
    assert "Traceback" not in result.output, result.output
    assert [line for line in lines if line.startswith("Error: ")] == lines[-1:], result.output
    return lines[-1].removeprefix("Error: ")


@pytest.mark.slow
def test_every_bad_input_is_one_line_with_the_right_exit_code(private_copy):
    """One warehouse for the whole table (each command only reads it, or fails before writing)."""
    with duckdb.connect(str(private_copy.db_path)) as con:
        con.execute("create table raw.no_order_lines as select * from raw.order_lines limit 0")
    log = private_copy.db_path.parent / ".dbt" / private_copy.db_path.stem / "logs" / "dbt.log"
    failures = []
    for args, code, fragment in BAD_INPUTS:
        message = cli_error(private_copy, *args) if code == 1 else usage_error(private_copy, *args)
        dbt_ran = args[0] in ("build", "dbt") and not set(UNREADABLE_VARS) & set(args)
        expected = [fragment] + ([f"dbt's full log: {log}"] if dbt_ran else [])
        failures += [f"lookalike {' '.join(args)}: {message!r} lacks {text!r}" for text in expected if text not in message]
    assert not failures, "\n".join(failures)
    assert log.stat().st_size > 0


@pytest.mark.parametrize("command", [("summary",), ("expand", "--name", "x", "--seed-sql", SEED_SQL, "--size", "5%"),
                                     ("score",), ("build-index",), ("audiences", "list")])
def test_a_missing_warehouse_or_serving_file_is_one_line(tmp_path, command):
    settings = make_settings(tmp_path / "nothing here")
    message = cli_error(settings, *command)
    assert "nothing here" in message or "No exported model" in message, message
    assert sorted(p.name for p in (tmp_path / "nothing here").iterdir()) == [], "a failed command created files"
