"""Two publishers at once, a BI reader holding the serving file, another process holding the warehouse:
every command succeeds or fails with one clear line, and nothing is lost."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import duckdb
import pytest

from tests.reliability.conftest import SEED_SQL
from tests.reliability.faults import (assert_one_line_error, cli_command, cli_environment, published_state, run,
                                      stray_files)

HOLDER = textwrap.dedent("""
    import sys, duckdb
    con = duckdb.connect(sys.argv[1], read_only=sys.argv[2] == "read_only")
    if len(sys.argv) > 3:
        print(con.execute(sys.argv[3]).fetchall()[0][0], flush=True)
    else:
        print("held", flush=True)
    sys.stdin.readline()  # until the test is done
    if len(sys.argv) > 3:
        print(con.execute(sys.argv[3]).fetchall()[0][0], flush=True)
""")


def hold(path, mode: str, sql: str | None = None) -> tuple[subprocess.Popen, str]:
    """Another process (a BI tool, a notebook) holding `path` open: read_only or read_write. Returns it and its
    first answer (`sql`'s value, or 'held')."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), mode, *([sql] if sql else [])],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return holder, holder.stdout.readline().strip()


@pytest.mark.slow
def test_two_publishers_at_once_beside_a_bi_reader_of_the_serving_file(private_copy):
    settings = private_copy
    reader, seen = hold(settings.serving_db_path, "read_only", "select count(*) from audiences")
    assert seen == "1"
    try:
        publishers = [subprocess.Popen(cli_command(settings, "expand", "--name", name, "--seed-sql", SEED_SQL, "--size", size,
                                                   "--strategy", "centroid"),
                                       env=cli_environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                      for name, size in (("first", "2%"), ("second", "3%"))]
        outputs = [p.communicate(timeout=600)[0] for p in publishers]
        assert [p.returncode for p in publishers] == [0, 0], outputs
        reader.stdin.write("done\n")
        reader.stdin.flush()
        assert reader.stdout.readline().strip() == "1", "the BI reader keeps its snapshot"
    finally:
        reader.kill()
        reader.wait()
    with duckdb.connect(str(settings.serving_db_path), read_only=True) as con:
        rows = con.execute("select name, version, size from audiences order by name").fetchall()
        members = dict(con.execute("select audience_name, count(*) from latest_audience_members group by 1").fetchall())
    assert rows == [("first", 1, 60), ("second", 1, 90), ("vip", 1, 150)], "every publish kept: none overwrote the other"
    assert members == {"first": 60, "second": 90, "vip": 150}
    assert stray_files(settings) == []


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["read_only", "read_write"])
def test_another_process_holding_the_warehouse(private_copy, mode):
    """A BI tool (read-only) or a notebook (read-write) on the warehouse file. DuckDB allows one writer or many
    readers: writers wait LOOKALIKE_LOCK_WAIT_SECONDS, then stop with one line; readers go on beside a reader."""
    settings = private_copy
    before = published_state(settings)
    holder, seen = hold(settings.db_path, mode)
    assert seen == "held"
    quick = {"LOOKALIKE_LOCK_WAIT_SECONDS": "1"}
    try:
        for command in (("score", "--model", "shared"), ("build",), ("generate-data", "--customers", "100")):
            assert_one_line_error(run(settings, *command, env=quick), str(settings.db_path), "locked by another process")
        expand = run(settings, "expand", "--name", "vip", "--seed-sql", SEED_SQL, "--size", "2%", "--strategy", "centroid",
                     env=quick)
        if mode == "read_only":
            assert expand.returncode == 0, expand.output[-2000:]  # readers share the file
        else:
            assert_one_line_error(expand, str(settings.db_path), "locked by another process")
    finally:
        holder.kill()
        holder.wait()
    after = published_state(settings)
    assert after["warehouse"] == before["warehouse"] and after["models"] == before["models"]
    assert stray_files(settings) == []
