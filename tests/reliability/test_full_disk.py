"""A full disk during publish, score and build-index: one clear line, the earlier versions intact, no temp files.

The disk fills for real, as far as the process can tell: RLIMIT_FSIZE (`ulimit -f`) on the CLI process,
inherited by dbt, makes any write past the limit fail with EFBIG, as ENOSPC does on a full disk (a tmpfs
would need root). The limit sits just above the file the command must grow, so reading works and the
first growing write fails.
"""

from __future__ import annotations

import pytest

from tests.reliability.conftest import SEED_SQL
from tests.reliability.faults import assert_one_line_error, assert_succeeds, published_state, run, stray_files

KiB = 1024


def largest_file(settings) -> int:
    """The largest file the command may need to read or copy whole (the warehouse, the serving file, dbt's state)."""
    return max(p.stat().st_size for p in settings.db_path.parent.rglob("*") if p.is_file())


@pytest.mark.slow
@pytest.mark.parametrize("command, grows", [
    pytest.param(("expand", "--name", "vip", "--seed-sql", SEED_SQL, "--size", "30%", "--strategy", "centroid"),
                 "serving", id="publish (expand)"),
    pytest.param(("score", "--model", "shared"), "warehouse", id="score (dbt Python model)"),
])
def test_a_full_disk_is_one_line_and_keeps_the_earlier_version(private_copy, command, grows):
    settings = private_copy
    before = published_state(settings)
    # Room to read and copy every existing file, not to grow the one being written.
    limit = largest_file(settings) + 64 * KiB
    finished = run(settings, *command, limit_bytes=limit)
    assert_one_line_error(finished, "Out of disk space", "intact")
    assert published_state(settings) == before
    assert stray_files(settings) == []
    assert_succeeds(settings, *command)  # space freed: the same command goes through
    assert published_state(settings)[grows] != before[grows]


@pytest.mark.slow
def test_a_full_disk_while_writing_the_index_keeps_the_previous_index(private_copy):
    settings = private_copy
    before = published_state(settings)
    index_size = (settings.index_dir / "index.faiss").stat().st_size
    finished = run(settings, "build-index", limit_bytes=index_size // 2)  # the warehouse is only read
    assert_one_line_error(finished, "Out of disk space", "index")
    assert published_state(settings) == before
    assert stray_files(settings) == []
