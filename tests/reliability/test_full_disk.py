"""A full disk during publish, score and build-index: one clear line, the earlier versions intact, no temp files.

The disk fills for real, as far as the process can tell: RLIMIT_FSIZE (`ulimit -f`) on the CLI process,
inherited by dbt, makes any write past the limit fail with EFBIG, as ENOSPC does on a full disk (a tmpfs
would need root). The limit sits just above the file the command must grow, so reading works and the
first growing write fails.
"""

from __future__ import annotations

import pytest

from lookalike_cli.index.faiss_index import INDEX_FILE
from tests.reliability.conftest import SEED_SQL
from tests.reliability.faults import assert_one_line_error, assert_succeeds, published_state, run, stray_files

KiB = 1024


def grown_file_limit(settings, grows: str) -> int:
    """Room to copy and rewrite the file in place, not to grow it: the serving file's size plus 64 KiB for a
    publish; 256 KiB for score, below what its dbt run writes (1.5 MiB of embeddings into the warehouse's
    WAL, ~1 MiB of dbt's parse state) but above what lookalike writes before dbt starts."""
    return settings.serving_db_path.stat().st_size + 64 * KiB if grows == "serving" else 256 * KiB


@pytest.mark.slow
@pytest.mark.parametrize("command, grows", [
    pytest.param(("expand", "--name", "vip", "--seed-sql", SEED_SQL, "--size", "30%", "--strategy", "centroid"),
                 "serving", id="publish (expand)"),
    pytest.param(("score", "--model", "shared"), "warehouse", id="score (dbt Python model)"),
])
def test_a_full_disk_is_one_line_and_keeps_the_earlier_version(private_copy, command, grows):
    settings = private_copy
    before = published_state(settings)
    finished = run(settings, *command, limit_bytes=grown_file_limit(settings, grows))
    assert_one_line_error(finished, "Out of disk space", "intact")
    assert published_state(settings) == before
    assert stray_files(settings) == []
    assert_succeeds(settings, *command)  # space freed: the same command goes through
    if grows == "serving":
        assert published_state(settings)["serving"] != before["serving"]


@pytest.mark.slow
def test_a_full_disk_while_writing_the_index_keeps_the_previous_index(private_copy):
    settings = private_copy
    before = published_state(settings)
    index_size = (settings.index_dir / INDEX_FILE).stat().st_size
    finished = run(settings, "build-index", limit_bytes=index_size // 2)  # the warehouse is only read
    assert_one_line_error(finished, "Out of disk space", INDEX_FILE)
    assert published_state(settings) == before
    assert stray_files(settings) == []
