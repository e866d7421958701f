"""Model artifacts belong to one warehouse: a model from another warehouse is refused, a copy's is not;
unwritable artifact folders and missing dbt projects fail at once with what to do."""

from __future__ import annotations

import os

import duckdb
import pytest

from lookalike_cli.errors import LookalikeError
from lookalike_cli.model.manifest import warehouse_id
from lookalike_cli.settings import Settings
from tests.helpers import copy_warehouse, make_settings, run_cli


@pytest.mark.slow
def test_a_model_from_another_warehouse_is_refused_and_a_copy_is_fine(scored_warehouse, tmp_path):
    with duckdb.connect(str(scored_warehouse.db_path), read_only=True) as con:
        trained_on = warehouse_id(con)
    assert trained_on, "lookalike train writes the warehouse id"
    # A copy (backup, moved file) keeps the id: scoring with the shared models folder works.
    copy = copy_warehouse(scored_warehouse, tmp_path / "copy")
    run_cli(copy, "score")
    # Another warehouse (its own id, e.g. after training there once) with the first one's models folder.
    other = copy_warehouse(scored_warehouse, tmp_path / "other")
    with duckdb.connect(str(other.db_path)) as con:
        con.execute("drop table lookalike_warehouse")
        assert warehouse_id(con, create=True) != trained_on
    result = run_cli(other, "score", expect_exit=1)
    assert "trained on another warehouse" in result.output and "lookalike train" in result.output


def test_unwritable_models_folder_fails_before_training(tmp_path):
    if os.geteuid() == 0:
        folder = tmp_path / "not_a_folder"
        folder.write_text("a file where the models folder should be")
    else:
        folder = tmp_path / "locked"
        folder.mkdir()
        folder.chmod(0o500)
    settings = Settings.resolve(db=tmp_path / "w.duckdb", onnx_dir=folder / "models")
    result = run_cli(settings, "train", expect_exit=1)
    assert "Cannot write models to" in result.output and "(--onnx-dir, env LOOKALIKE_ONNX_DIR)" in result.output


def test_missing_dbt_project_says_to_run_init(tmp_path):
    with pytest.raises(LookalikeError, match="lookalike init"):
        Settings.resolve(db=tmp_path / "w.duckdb", project_dir=tmp_path / "nowhere")
    settings = make_settings(tmp_path)
    result = run_cli(settings, "init", str(tmp_path / "project"))
    assert (tmp_path / "project" / "dbt_project.yml").is_file() and (tmp_path / "project" / "profiles.yml").is_file()
    assert "Wrote" in result.output
    again = run_cli(settings, "init", str(tmp_path / "project"), expect_exit=1)
    assert "already holds a dbt project" in again.output
