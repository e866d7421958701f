"""Corrupt or truncated artifacts: one line naming the file and the command that rebuilds it, nothing changed.

The model file is checked against the manifest's onnx_sha256 before ONNX Runtime loads it: a truncated
graph used to end `lookalike score` in ONNX Runtime's protobuf traceback, printed through dbt.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import cli_error, run_cli
from tests.reliability.conftest import SEED_SQL
from tests.reliability.faults import assert_one_line_error, published_state, run


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_a_byte(path: Path) -> None:
    """Same size, one byte changed in the middle (a bad disk block, a bad copy)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def overwrite(path: Path) -> None:
    path.write_bytes(b"this is not what it should be\n" * 100)


EXPAND = ("expand", "--name", "vip", "--seed-sql", SEED_SQL, "--size", "3%", "--strategy", "centroid")

# (id, file relative to the warehouse folder, damage, command, fragments of the one-line error)
CASES = [
    ("truncated ONNX model", "onnx/shared.onnx", truncate, ("score", "--model", "shared"),
     ("onnx/shared.onnx", "does not match its manifest", "`lookalike train --name shared`")),
    ("ONNX model with a flipped byte", "onnx/shared.onnx", flip_a_byte, ("score", "--model", "shared"),
     ("onnx/shared.onnx", "does not match its manifest", "`lookalike train --name shared`")),
    ("missing ONNX model", "onnx/shared.onnx", Path.unlink, ("score", "--model", "shared"),
     ("onnx/shared.onnx", "is missing", "`lookalike train --name shared`")),
    ("truncated int8 model", "onnx/shared.int8.onnx", truncate, ("score", "--model", "shared", "--quantize", "int8"),
     ("onnx/shared.int8.onnx", "does not match", "`lookalike train --name shared --quantize int8`")),
    ("truncated model manifest", "onnx/shared.json", truncate, ("score", "--model", "shared"),
     ("onnx/shared.json", "Cannot read model manifest", "`lookalike train --name shared`")),
    ("truncated index", "indexes/customer_embeddings.faiss", truncate, EXPAND,
     ("indexes/customer_embeddings.faiss", "corrupt", "`lookalike build-index`")),
    ("overwritten index manifest", "indexes/customer_embeddings.json", overwrite, EXPAND,
     ("indexes/customer_embeddings.json", "unreadable", "`lookalike build-index`")),
    ("overwritten serving file, read", "w_serving.duckdb", overwrite, ("audiences", "list"),
     ("w_serving.duckdb", "not a readable DuckDB file", "publish again")),
    ("overwritten serving file, publish", "w_serving.duckdb", overwrite, EXPAND,
     ("w_serving.duckdb", "not a readable DuckDB file", "publish again")),
    ("overwritten warehouse", "w.duckdb", overwrite, ("summary",),
     ("w.duckdb", "cannot be opened by DuckDB", "`lookalike build`")),
]


@pytest.mark.slow
@pytest.mark.parametrize("file, damage, command, fragments", [pytest.param(*case[1:], id=case[0]) for case in CASES])
def test_a_damaged_artifact_is_named_with_the_command_that_rebuilds_it(private_copy, file, damage, command, fragments):
    settings = private_copy
    path = settings.db_path.parent / file
    assert path.exists(), file
    damage(path)
    files = user_files(settings.db_path.parent)
    message = cli_error(settings, *command)
    for fragment in fragments:
        assert fragment in message, message
    assert user_files(settings.db_path.parent) == files  # nothing written beside the damage, no temp file left


def user_files(folder: Path) -> dict[str, int]:
    """Every file lookalike writes for the user, with its size (not dbt's state folder, not the publisher lock)."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*")
            if p.is_file() and ".dbt" not in p.relative_to(folder).parts and not p.name.endswith(".lock")}


@pytest.mark.slow
def test_a_truncated_model_stops_score_in_one_line_from_a_real_process_and_train_repairs_it(private_copy):
    """The issue's case end to end: the real CLI, stderr included, then the command the message names."""
    settings = private_copy
    before = published_state(settings)["warehouse"]
    truncate(settings.onnx_dir / "shared.onnx")
    finished = run(settings, "score", "--model", "shared")
    line = assert_one_line_error(finished, "shared.onnx", "lookalike train --name shared")
    assert "dbt" not in line and "protobuf" not in finished.output.lower()
    assert published_state(settings)["warehouse"] == before  # customer_embeddings untouched
    run_cli(settings, "train", "--name", "shared", "--layers", "3", "--location", "word", "--epochs", "1", "--seed", "3")
    run_cli(settings, "score", "--model", "shared")
