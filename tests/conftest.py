"""Shared fixtures: real DuckDB files built by the real generator and a real `dbt build`.

Session-scoped because dbt costs seconds per invocation. Tests must treat the shared
warehouses as read-only; a test that writes copies one with `tests.helpers.copy_warehouse`.
Helpers live in tests/helpers.py; nothing imports this file.

Every test that takes more than a few seconds is marked `slow` (`make test-quick` deselects
them). A test that needs one of the dbt-built warehouses below is slow whatever its own time:
collection fails if such a test lacks the marker, so the quick run never starts dbt.
"""

from __future__ import annotations

import pytest

from lookalike_cli.settings import Settings
from tests.helpers import GENERATED_CUSTOMERS, GENERATED_SEED, copy_warehouse, make_settings, run_cli

DBT_BUILT_FIXTURES = {"generated_warehouse", "completejourney_warehouse", "scored_warehouse"}


def pytest_collection_modifyitems(config, items):
    unmarked = [item.nodeid for item in items
                if DBT_BUILT_FIXTURES & set(item.fixturenames) and item.get_closest_marker("slow") is None]
    if unmarked:
        raise pytest.UsageError("These tests use a dbt-built warehouse fixture ({}) but are not marked slow:\n  {}".format(
            ", ".join(sorted(DBT_BUILT_FIXTURES)), "\n  ".join(unmarked)))


@pytest.fixture(scope="session")
def generated_warehouse(tmp_path_factory) -> Settings:
    """3,000 generated customers, raw tables + every dbt model and test except scoring."""
    settings = make_settings(tmp_path_factory.mktemp("generated"))
    run_cli(settings, "generate-data", "--customers", str(GENERATED_CUSTOMERS), "--days", "365", "--seed", str(GENERATED_SEED))
    run_cli(settings, "build")
    return settings


@pytest.fixture(scope="session")
def completejourney_warehouse(tmp_path_factory) -> Settings:
    """The Complete Journey sample loaded (with the ads proxy tables, for the ads tests' copy) and
    built by dbt (the customer models only: ads models build in `lookalike ads build`)."""
    settings = make_settings(tmp_path_factory.mktemp("completejourney"))
    run_cli(settings, "load-sample", "completejourney", "--ads", "--ads-min-baskets", "400")
    run_cli(settings, "build")
    return settings


@pytest.fixture(scope="session")
def scored_warehouse(generated_warehouse, tmp_path_factory) -> Settings:
    """The generated warehouse with a trained 3-layer word-location model "shared" (exported with
    its int8 twin), every customer scored through dbt, and a FAISS index: the starting point of
    serving-side tests and of the model layer's export and scoring tests.
    Read-only: tests that write take `copy_warehouse(scored_warehouse, ...)`."""
    settings = copy_warehouse(generated_warehouse, tmp_path_factory.mktemp("scored"), "scored")
    run_cli(settings, "train", "--name", "shared", "--layers", "3", "--location", "word", "--epochs", "8", "--seed", "3",
            "--quantize", "int8")
    run_cli(settings, "score", "--model", "shared")
    run_cli(settings, "build-index")
    return settings
