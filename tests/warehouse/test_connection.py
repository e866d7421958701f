"""Another process's write lock on the warehouse: commands wait for it briefly, then fail clearly."""

from __future__ import annotations

import subprocess
import sys
import time

import duckdb
import pytest

from lookalike_cli.errors import LookalikeError
from lookalike_cli.warehouse.connection import connect


def hold_write_lock(path, seconds: float) -> subprocess.Popen:
    """A second process that opens `path` for writing, says so, and keeps it `seconds`."""
    holder = subprocess.Popen(
        [sys.executable, "-c",
         f"import duckdb, sys, time; con = duckdb.connect({str(path)!r}); print('held', flush=True); time.sleep({seconds})"],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_short_lock_is_waited_for_and_a_long_one_is_one_clear_error(tmp_path):
    path = tmp_path / "w.duckdb"
    duckdb.connect(str(path)).close()
    holder = hold_write_lock(path, 1.5)
    try:
        start = time.monotonic()
        con = connect(path, wait_seconds=15)  # the holder exits after 1.5 s: this connect then succeeds
        con.close()
        assert time.monotonic() - start < 15
    finally:
        holder.wait(timeout=30)

    holder = hold_write_lock(path, 30)
    try:
        with pytest.raises(LookalikeError, match=r"is locked by another process .*waited 0.5s"):
            connect(path, wait_seconds=0.5)
    finally:
        holder.kill()
        holder.wait()
