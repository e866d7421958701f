"""Backtest input errors, checked before any warehouse is read: quick, unlike test_backtest.py."""

from __future__ import annotations

import pytest

from lookalike_cli.errors import ParameterError
from lookalike_cli.trust.backtest import run_backtest
from tests.helpers import cli_error, make_settings


def test_split_errors_name_both_parameters_as_the_caller_spells_them(tmp_path):
    settings = make_settings(tmp_path)
    with pytest.raises(ParameterError) as raised:
        run_backtest(settings.db_path, settings.index_dir, "select 1", splits=0, progress=lambda _: None)
    assert str(raised.value) == "splits must be >= 1 and seed_fraction in (0, 1)."
    assert cli_error(settings, "backtest", "--name", "x", "--converters-sql", "select 1", "--seed-fraction", "1") == (
        "--splits must be >= 1 and --seed-fraction in (0, 1).")
    assert not settings.db_path.exists()
