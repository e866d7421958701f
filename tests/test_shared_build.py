"""tests.helpers.build_once_and_copy, what lets both xdist workers share one dbt build: real
processes racing for the lock, real DuckDB files; a stand-in build instead of dbt (seconds less)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from tests.helpers import build_once_and_copy, make_settings

REPO = Path(__file__).resolve().parents[1]

# One "worker": build (slowly, so the other process arrives while the lock is held) or copy, then
# report the private copy's path.
WORKER = """
import sys, time
from pathlib import Path
import duckdb
from tests.helpers import build_once_and_copy

shared, private, log = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])

def build(settings):
    with log.open("a") as out:
        out.write(f"{settings.db_path}\\n")
    time.sleep(1.5)
    with duckdb.connect(str(settings.db_path)) as con:
        con.execute("create table built as select 42 as answer")

print(build_once_and_copy(shared, "demo", build, private).db_path)
"""


@pytest.mark.slow  # two Python processes start (imports: seconds)
def test_two_processes_build_once_and_each_gets_its_own_copy(tmp_path):
    shared, log = tmp_path / "shared", tmp_path / "builds.log"
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(shared), str(tmp_path / f"gw{i}"), str(log)],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [worker.communicate(timeout=120) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    assert len(log.read_text().splitlines()) == 1, "the warehouse was built more than once"
    copies = [Path(out.strip()) for out, _ in outputs]
    assert copies[0] != copies[1] and {c.parent.name for c in copies} == {"gw0", "gw1"}
    for copy in copies:
        with duckdb.connect(str(copy), read_only=True) as con:
            assert con.execute("select answer from built").fetchall() == [(42,)]
    # The copies are private: writing one leaves the other and the shared build as they were.
    with duckdb.connect(str(copies[0])) as con:
        con.execute("drop table built")
    with duckdb.connect(str(copies[1]), read_only=True) as con:
        assert con.execute("select count(*) from built").fetchall() == [(1,)]


def test_a_failed_build_is_not_copied_and_the_next_process_builds_again(tmp_path):
    shared = tmp_path / "shared"

    def failing(settings):
        with duckdb.connect(str(settings.db_path)) as con:
            con.execute("create table half as select 1 as x")
        raise RuntimeError("dbt build failed")

    with pytest.raises(RuntimeError, match="dbt build failed"):
        build_once_and_copy(shared, "demo", failing, tmp_path / "gw0")
    assert not (shared / "demo.done").exists()

    built = []

    def working(settings):
        built.append(settings.db_path)
        with duckdb.connect(str(settings.db_path)) as con:
            con.execute("create table whole as select 1 as x")

    started = time.perf_counter()
    copy = build_once_and_copy(shared, "demo", working, tmp_path / "gw1")
    assert time.perf_counter() - started < 30  # the failed holder released the lock
    assert len(built) == 1 and built[0].parent != make_settings(tmp_path / "gw1").db_path.parent
    with duckdb.connect(str(copy.db_path), read_only=True) as con:
        tables = {row[0] for row in con.execute("select table_name from information_schema.tables").fetchall()}
    assert tables == {"whole"}, "the second build started from a fresh folder, not the failed one's leftovers"
