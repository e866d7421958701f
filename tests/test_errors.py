"""ParameterError: the library names its parameters, the CLI shows the flags of the command that ran.

The layers' tests check real sites through both doors (tests/<layer>/: expand, bid, backtest, label).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import click

import lookalike_cli
from lookalike_cli import LookalikeError, ParameterError
from lookalike_cli.cli._common import LookalikeGroup, flags
from lookalike_cli.cli.main import main
from lookalike_cli.errors import input_error


def test_str_reads_with_python_names_and_render_with_the_callers_spelling():
    error = ParameterError("{max_bid} (3) must be above {min_bid} (5).", "max_bid", "min_bid")
    assert isinstance(error, LookalikeError) and error.params == ("max_bid", "min_bid")
    assert str(error) == "max_bid (3) must be above min_bid (5)."
    assert error.render({"max_bid": "--max-bid", "min_bid": "--min-bid"}) == "--max-bid (3) must be above --min-bid (5)."
    assert error.render({"max_bid": "--max-bid"}) == "--max-bid (3) must be above min_bid (5)."


def test_braces_in_values_are_left_alone():
    # Values are interpolated before ParameterError sees the template: only its parameters' fields are replaced.
    sql = "select {customer_id} from t"
    error = ParameterError(f"{{exclude_sql}} failed on {sql!r} ({{}}).", "exclude_sql")
    assert str(error) == "exclude_sql failed on 'select {customer_id} from t' ({})."


def test_input_error_is_a_parameter_error_only_when_it_names_a_parameter():
    named = input_error("exclude_sql", "failed: Catalog Error")
    assert isinstance(named, ParameterError) and str(named) == "exclude_sql failed: Catalog Error"
    described = input_error("Seed sql: select 1", "failed: Catalog Error")
    assert not isinstance(described, ParameterError) and str(described) == "Seed sql: select 1 failed: Catalog Error"


def test_flags_are_the_options_whose_param_name_matches():
    @click.command()
    @click.option("-m", "--pq-m", "--product-quantiser-m", "pq_m")
    @click.option("--audience", "name")
    @click.option("--size")
    def command(pq_m, name, size):
        pass

    assert flags(command, ("pq_m", "name", "size", "min_similarity")) == {
        "pq_m": "--product-quantiser-m",  # the longest `--` opt
        "name": "--audience",             # the option's param name, not its flag, is what matches
        "size": "--size",
        "min_similarity": "--min-similarity",  # no such option: the name with dashes
    }


def test_every_group_maps_errors_of_its_own_commands():
    # The group that catches a ParameterError reads the flags of its invoked subcommand, so a group
    # that is not a LookalikeGroup would leave its commands' errors to its parent, which has other flags.
    def groups(group):
        yield group
        for command in group.commands.values():
            if isinstance(command, click.Group):
                yield from groups(command)

    assert [g.name for g in groups(main) if not isinstance(g, LookalikeGroup)] == []


def library_errors():
    """(where, literal text, declared params) of every LookalikeError / ParameterError the library raises."""
    package = Path(lookalike_cli.__file__).parent
    for path in sorted(package.rglob("*.py")):
        if (package / "cli") in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("LookalikeError", "ParameterError") and node.args:
                parts = node.args[0].values if isinstance(node.args[0], ast.JoinedStr) else [node.args[0]]
                text = "".join(p.value if isinstance(p, ast.Constant) else "?" for p in parts)
                params = [a.value for a in node.args[1:] if isinstance(a, ast.Constant)]
                yield f"{path.relative_to(package)}:{node.lineno}", text, params


def test_the_library_names_parameters_not_flags():
    # Flags are left only in commands to run, which are quoted: "run `lookalike score --quantize int8`".
    flagged = [where for where, text, _ in library_errors() if re.search(r"--[a-z]", re.sub(r"`[^`]*`", "", text))]
    assert flagged == []


def test_every_declared_parameter_has_its_field_in_the_message():
    missing = [(where, p) for where, text, params in library_errors() for p in params if "{" + p + "}" not in text]
    assert missing == []
