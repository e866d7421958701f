"""Shared fixtures: real DuckDB files built by the real generator and a real `dbt build`.

Session-scoped because dbt costs seconds per invocation, and built once per run: under xdist
(`make test` runs two workers) the first worker that needs a warehouse builds it in the run's
shared temp folder while holding a file lock, and every worker then takes a private copy of
the built files (a file copy costs milliseconds; the build costs a minute). So each worker still
has warehouses of its own, exactly as when each built them, and the second worker never repeats
the dbt build, the training and the scoring.

Tests must treat the shared warehouses as read-only; a test that writes copies one with
`tests.helpers.copy_warehouse`. Helpers live in tests/helpers.py; nothing imports this file.

Every test that takes more than a few seconds is marked `slow` (`make test-quick` deselects
them). A test that needs one of the dbt-built warehouses below is slow whatever its own time:
collection fails if such a test lacks the marker, so the quick run never starts dbt.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from lookalike_cli.settings import Settings
from tests.helpers import (ADS_BID_WEIGHTS, ADS_BUDGET, GENERATED_ADS, GENERATED_CUSTOMERS, GENERATED_SEED, build_once_and_copy,
                           copy_warehouse, make_settings, run_cli)

DBT_BUILT_FIXTURES = {"generated_warehouse", "completejourney_warehouse", "scored_warehouse", "ads_warehouse_built"}

# The test files that take longest (setup included), from `--durations` runs on two workers. xdist's
# loadfile hands out files in collection order (reordering by test count is switched off below), so these
# start first and the two workers finish together instead of one starting the Spark kill flow (four JVM
# starts) when the other is nearly done. The second is the self-contained wheel test: the first worker
# builds the shared warehouses meanwhile, which the second would otherwise wait for, idle, under the lock.
LONGEST_FIRST = (
    "tests/reliability/test_kill_pipelines.py",
    "tests/reliability/test_kill_spark_build.py",
    "tests/audiences/test_refresh_incremental.py",
    "tests/packaging/test_installed_wheel.py",
    "tests/spark/test_spark.py",
    "tests/reliability/test_kill.py",
    "tests/trust/test_backtest_as_of.py",
    "tests/ads/test_ads.py",
    "tests/benchmarks/test_benchmark_harness.py",
    "tests/warehouse/test_bad_input.py",
    "tests/audiences/test_lifecycle.py",
    "tests/reliability/test_kill_refresh.py",
)


def pytest_configure(config):
    # xdist's default sorts files by their number of tests, which would send the long files above
    # (few tests, minutes each) last; keep the collection order instead.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    unmarked = [item.nodeid for item in items
                if DBT_BUILT_FIXTURES & set(item.fixturenames) and item.get_closest_marker("slow") is None]
    if unmarked:
        raise pytest.UsageError("These tests use a dbt-built warehouse fixture ({}) but are not marked slow:\n  {}".format(
            ", ".join(sorted(DBT_BUILT_FIXTURES)), "\n  ".join(unmarked)))
    rank = {path: position for position, path in enumerate(LONGEST_FIRST)}
    # A stable sort: within a file, and among the other files, the collection order stays.
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


def built_once(tmp_path_factory, name: str, build: Callable[[Settings], None], file_name: str = "warehouse") -> Settings:
    """The warehouse `build` makes, built once per test run (see `tests.helpers.build_once_and_copy`).

    Without xdist it is built in this process's temp folder and returned as is; under xdist the
    workers share the run's temp root (`getbasetemp().parent`) and each gets a private copy."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        settings = make_settings(tmp_path_factory.mktemp(name), file_name)
        build(settings)
        return settings
    shared = tmp_path_factory.getbasetemp().parent / "shared_warehouses"
    return build_once_and_copy(shared, name, build, tmp_path_factory.mktemp(name), file_name)


def build_generated(settings: Settings) -> None:
    run_cli(settings, "generate-data", "--customers", str(GENERATED_CUSTOMERS), "--days", "365", "--seed", str(GENERATED_SEED))
    run_cli(settings, "build")


@pytest.fixture(scope="session")
def generated_warehouse(tmp_path_factory) -> Settings:
    """3,000 generated customers, raw tables + every dbt model and test except scoring."""
    return built_once(tmp_path_factory, "generated", build_generated)


@pytest.fixture(scope="session")
def completejourney_warehouse(tmp_path_factory) -> Settings:
    """The Complete Journey sample loaded (with the ads proxy tables, for the ads tests' copy) and
    built by dbt (the customer models only: ads models build in `lookalike ads build`)."""
    def build(settings: Settings) -> None:
        run_cli(settings, "load-sample", "completejourney", "--ads", "--ads-min-baskets", "400")
        run_cli(settings, "build")

    return built_once(tmp_path_factory, "completejourney", build)


@pytest.fixture(scope="session")
def scored_warehouse(generated_warehouse, tmp_path_factory) -> Settings:
    """The generated warehouse with a trained 3-layer word-location model "shared" (exported with
    its int8 twin), every customer scored through dbt, and a FAISS index: the starting point of
    serving-side tests and of the model layer's export and scoring tests.
    Read-only: tests that write take `copy_warehouse(scored_warehouse, ...)`."""
    def build(settings: Settings) -> None:
        copy_warehouse(generated_warehouse, settings.db_path.parent, settings.db_path.stem)
        run_cli(settings, "train", "--name", "shared", "--layers", "3", "--location", "word", "--epochs", "8", "--seed", "3",
                "--quantize", "int8")
        run_cli(settings, "score", "--model", "shared")
        run_cli(settings, "build-index")

    return built_once(tmp_path_factory, "scored", build, file_name="scored")



@pytest.fixture(scope="session")
def ads_warehouse_built(tmp_path_factory) -> Settings:
    """10 customers and 1,500 generated ads over 84 days, through every `lookalike ads` command (build,
    train-embedding, cluster, predict-rpc, bid). Read-only: tests that write take a copy."""
    def build(settings: Settings) -> None:
        run_cli(settings, "generate-data", "--customers", "10", "--days", "14", "--seed", "5",
                "--ads", "--ad-count", str(GENERATED_ADS), "--ad-days", "84")
        run_cli(settings, "ads", "build")
        run_cli(settings, "ads", "train-embedding", "--epochs", "4", "--seed", "1")
        run_cli(settings, "ads", "cluster")
        run_cli(settings, "ads", "predict-rpc", "--trees", "100")
        run_cli(settings, "ads", "bid", "--budget", str(ADS_BUDGET), "--objective-weights", ADS_BID_WEIGHTS)

    return built_once(tmp_path_factory, "ads_generated", build, file_name="ads")
