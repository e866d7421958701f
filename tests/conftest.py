"""Shared fixtures: real DuckDB files built by the real generator and a real `dbt build`.

Session-scoped because dbt costs seconds per invocation. Tests must treat the shared
warehouses as read-only; a test that writes copies one with `copy_warehouse`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from lookalike_cli.cli.main import main
from lookalike_cli.settings import Settings

GENERATED_CUSTOMERS = 3000
GENERATED_SEED = 11


def run_cli(settings: Settings, *args: str, expect_exit: int | None = 0):
    """Invoke the `lookalike` CLI in-process against the given warehouse; assert the exit code."""
    runner = CliRunner()
    result = runner.invoke(
        main,
        [
            "--db", str(settings.db_path),
            "--serving-db", str(settings.serving_db_path),
            "--onnx-dir", str(settings.onnx_dir),
            "--index-dir", str(settings.index_dir),
            *args,
        ],
        catch_exceptions=False,
    )
    if expect_exit is not None:
        assert result.exit_code == expect_exit, f"exit {result.exit_code}: {result.output}"
    return result


def make_settings(folder: Path, name: str = "warehouse") -> Settings:
    folder.mkdir(parents=True, exist_ok=True)
    return Settings.resolve(
        db=folder / f"{name}.duckdb",
        serving_db=folder / f"{name}_serving.duckdb",
        onnx_dir=folder / "onnx",
        index_dir=folder / "indexes",
    )


def query(settings: Settings, sql: str, params=None) -> list[tuple]:
    """Rows of a SQL query on the warehouse, opened read-only."""
    import duckdb

    with duckdb.connect(str(settings.db_path), read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def scalar(settings: Settings, sql: str, params=None):
    return query(settings, sql, params)[0][0]


def copy_warehouse(source: Settings, folder: Path, name: str = "copy") -> Settings:
    """A private copy of a built warehouse (database, serving file, models, indexes) to mutate."""
    target = make_settings(folder, name)
    shutil.copy(source.db_path, target.db_path)
    if source.serving_db_path.exists():
        shutil.copy(source.serving_db_path, target.serving_db_path)
    for attribute in ("onnx_dir", "index_dir"):
        src = getattr(source, attribute)
        if src.exists():
            shutil.copytree(src, getattr(target, attribute), dirs_exist_ok=True)
    return target


@pytest.fixture(scope="session")
def generated_warehouse(tmp_path_factory) -> Settings:
    """3,000 generated customers, raw tables + every dbt model and test except scoring."""
    settings = make_settings(tmp_path_factory.mktemp("generated"))
    run_cli(settings, "generate-data", "--customers", str(GENERATED_CUSTOMERS), "--days", "365", "--seed", str(GENERATED_SEED))
    run_cli(settings, "build")
    return settings


@pytest.fixture(scope="session")
def completejourney_warehouse(tmp_path_factory) -> Settings:
    """The Complete Journey sample loaded and built by dbt."""
    settings = make_settings(tmp_path_factory.mktemp("completejourney"))
    run_cli(settings, "load-sample", "completejourney")
    run_cli(settings, "build")
    return settings


@pytest.fixture(scope="session")
def scored_warehouse(generated_warehouse, tmp_path_factory) -> Settings:
    """The generated warehouse with a trained 3-layer word-location model, every customer
    scored through dbt, and a FAISS index: the starting point of serving-side tests.
    Read-only: tests that write take `copy_warehouse(scored_warehouse, ...)`."""
    settings = copy_warehouse(generated_warehouse, tmp_path_factory.mktemp("scored"), "scored")
    run_cli(settings, "train", "--name", "shared", "--layers", "3", "--location", "word", "--epochs", "8", "--seed", "3")
    run_cli(settings, "score", "--model", "shared")
    run_cli(settings, "build-index")
    return settings
