"""dbt's partial parse state lives beside the warehouse and holds the project's absolute paths: a project that
moved (the package reinstalled in another environment, a `lookalike init` folder renamed) must not leave dbt
reading seeds from where the project used to be."""

from __future__ import annotations

import shutil

import duckdb

from lookalike_cli.settings import Settings
from lookalike_cli.warehouse.dbt_runner import run_dbt
from tests.helpers import run_cli


def test_a_moved_project_parses_again_instead_of_reading_the_old_paths(tmp_path):
    first = tmp_path / "first_project"
    run_cli(Settings.resolve(db=tmp_path / "shop.duckdb"), "init", str(first))
    run_dbt(Settings.resolve(db=tmp_path / "shop.duckdb", project_dir=first), ["seed", "--select", "persona_definitions"],
            echo=lambda _: None)
    assert (tmp_path / ".dbt" / "shop" / "target" / "partial_parse.msgpack").exists()

    moved = tmp_path / "moved_project"
    shutil.move(first, moved)  # the old path is gone: a stale parse would look for the seed's CSV there
    rows = len((moved / "seeds" / "persona_definitions.csv").read_text().strip().splitlines()) - 1  # less the header
    run_dbt(Settings.resolve(db=tmp_path / "shop.duckdb", project_dir=moved), ["seed", "--select", "persona_definitions"],
            echo=lambda _: None)
    with duckdb.connect(str(tmp_path / "shop.duckdb"), read_only=True) as con:
        assert con.execute("select count(*) from persona_definitions").fetchall()[0][0] == rows
