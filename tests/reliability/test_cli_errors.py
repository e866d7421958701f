"""Every error a user can cause ends in one line without a traceback: exit 1 for a bad value or a bad state
(the library's LookalikeError), exit 2 for bad usage (click: unknown option, missing argument, wrong type)."""

from __future__ import annotations

import pytest

from tests.helpers import cli_error, make_settings, run_cli
from tests.reliability.conftest import SEED_SQL

EXPAND = ("expand", "--name", "x", "--seed-sql", SEED_SQL)

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
    failures = []
    for args, code, fragment in BAD_INPUTS:
        message = cli_error(private_copy, *args) if code == 1 else usage_error(private_copy, *args)
        if fragment not in message:
            failures.append(f"lookalike {' '.join(args)}: {message!r} lacks {fragment!r}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("command", [("summary",), ("expand", "--name", "x", "--seed-sql", SEED_SQL, "--size", "5%"),
                                     ("score",), ("build-index",), ("audiences", "list")])
def test_a_missing_warehouse_or_serving_file_is_one_line(tmp_path, command):
    settings = make_settings(tmp_path / "nothing here")
    message = cli_error(settings, *command)
    assert "nothing here" in message or "No exported model" in message, message
    assert sorted(p.name for p in (tmp_path / "nothing here").iterdir()) == [], "a failed command created files"
