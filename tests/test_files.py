"""Temp files of a killed writer are removed by the next one; a live writer's are left alone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lookalike_cli.files import disk_full_error, is_disk_full, remove_stale_temp_files, replaced, temp_path


def test_only_temp_files_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = [tmp_path / f".serving.duckdb.{dead_pid}.tmp", tmp_path / f".serving.duckdb.{dead_pid}.tmp.wal",
             tmp_path / f".vip.{dead_pid}.tmp.png"]
    mine = temp_path(tmp_path / "serving.duckdb")
    kept = [mine, tmp_path / "serving.duckdb", tmp_path / ".hidden", tmp_path / "notes.123.tmp"]
    for path in stale + kept:
        path.write_text("x")
    (tmp_path / f".folder.{dead_pid}.tmp").mkdir()  # never a folder
    assert sorted(remove_stale_temp_files(tmp_path)) == sorted(stale)
    assert all(path.exists() for path in kept) and (tmp_path / f".folder.{dead_pid}.tmp").is_dir()


def test_replaced_moves_in_whole_or_leaves_the_old_file(tmp_path):
    target = tmp_path / "model.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with replaced(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["model.json"]
    with replaced(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["model.json"]


def test_a_full_disk_is_recognised_from_the_errno_or_the_message():
    assert is_disk_full(OSError(28, "No space left on device"))
    assert is_disk_full(RuntimeError('Could not write file "x": File too large'))
    assert not is_disk_full(OSError(2, "No such file or directory"))
    message = str(disk_full_error(OSError(27, "File too large", "/data/w.duckdb")))
    assert message.startswith("Out of disk space writing /data/w.duckdb (File too large).") and "intact" in message
