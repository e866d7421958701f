"""kill -9 in the middle of every kind of write: what was published before is intact and readable, the
next run of the same command succeeds, and no temp file or half-built table is left once it has.

Each case starts the real CLI in its own process on a private copy of a scored warehouse with one
published audience, waits for a point inside the command's writing (a progress line, or a temp file
appearing), SIGKILLs that process alone (dbt, its child, must die with it), then compares every table
of the warehouse and the serving file and every model and index file with the state before.
"""

from __future__ import annotations

import pytest

from tests.reliability.conftest import SEED_SQL
from tests.reliability.faults import (assert_succeeds, changed, kill_at, published_state, stray_files, stray_relations,
                                      wait_gone)

AUDIENCES_YAML = f"""
audiences:
  - name: vip
    seed_sql: "{SEED_SQL}"
    size: 4%
    strategy: centroid
  - name: everyone_else
    seed_sql: "{SEED_SQL}"
    size: 100%
    strategy: centroid
"""

# (id, command, kill point). The serving temp copy exists only between the copy and the swap of a publish.
SERVING_SWAP = {"file_glob": ".w_serving.duckdb.*.tmp"}
CASES = [
    # Two chunks of 100k customers: killed after the first is committed to the staging tables, before the swap.
    ("generate-data", ["generate-data", "--customers", "200000", "--days", "120", "--seed", "5"],
     {"line": r"^\s+generated 100,000/200,000"}),
    ("build (dbt, table models)", ["build"], {"line": r"START sql table model main\.customer_features"}),
    ("train (training)", ["train", "--name", "shared", "--layers", "3", "--location", "word", "--epochs", "3", "--seed", "4"],
     {"line": r"epoch 1/3"}),
    ("train (export)", ["train", "--name", "shared", "--layers", "3", "--location", "word", "--epochs", "1", "--seed", "4"],
     {"file_glob": "onnx/.shared.onnx.*.tmp.onnx"}),
    ("score (dbt Python model)", ["score", "--model", "shared"], {"line": r"scoring with shared\.json"}),
    ("build-index", ["build-index"], {"line": r"^Sampling"}),
    ("expand (ranking)", ["expand", "--name", "vip", "--seed-sql", SEED_SQL, "--size", "3%", "--strategy", "centroid"],
     {"line": r"^Seeds:"}),
    ("expand (serving swap)", ["expand", "--name", "vip", "--seed-sql", SEED_SQL, "--size", "3%", "--strategy", "centroid"],
     SERVING_SWAP),
    ("audiences apply (serving swap)", ["audiences", "apply", "audiences.yml"], SERVING_SWAP),
    ("personas label", ["personas", "label", "--fraction", "0.01"], {"line": r"^Propagating \d+ labels to find"}),
    ("segment (serving swap)", ["segment", "--k", "5"], SERVING_SWAP),
    # Killed in its last step (apply): the steps before it (build, score, index) finished and rightly changed
    # the warehouse, so what must be intact is what the killed step writes, the serving file.
    ("refresh (apply: serving swap)", ["refresh", "--audiences", "audiences.yml"], {**SERVING_SWAP, "compare": ("serving",)}),
]


@pytest.mark.slow
@pytest.mark.parametrize("command, kill_point", [pytest.param(c, k, id=i) for i, c, k in CASES])
def test_kill_9_keeps_what_was_published_and_the_next_run_succeeds(private_copy, command, kill_point):
    settings = private_copy
    (settings.db_path.parent / "audiences.yml").write_text(AUDIENCES_YAML)
    kill_point = dict(kill_point)
    compared = kill_point.pop("compare", None)  # sections of the state the killed step writes (default: all)
    before = published_state(settings)

    killed = kill_at(settings, *command, **kill_point)

    if "file_glob" in kill_point:  # killed mid-swap: its temp file is there for the next run to clear
        assert list(settings.db_path.parent.glob(kill_point["file_glob"])), killed.point
    assert wait_gone(killed.children) == [], f"processes outlived the killed command (an orphaned dbt?): {killed.children}"
    now = published_state(settings)
    if compared:
        before_compared, now = {k: before[k] for k in compared}, {k: now[k] for k in compared}
    else:
        before_compared = before
    assert changed(before_compared, now) == [], f"killed at {killed.point!r}"
    assert_succeeds(settings, *command)
    assert stray_files(settings) == [], f"temp files left after the rerun (killed at {killed.point!r})"
    assert stray_relations(settings) == [], "half-built tables left in the warehouse after the rerun"
    after = published_state(settings)  # readable after the rerun too
    assert after["warehouse"].keys() >= before["warehouse"].keys()
