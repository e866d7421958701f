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
from tests.reliability.faults import kill_and_rerun

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
    # One table model (its upstream is built): the kill strikes inside dbt's table swap as in a full build, and the
    # rerun does not repeat the other 30 models' work.
    ("build (dbt, table models)", ["build", "--select", "customer_features"], {"line": r"START sql table model main\.customer_features"}),
    ("train (training)", ["train", "--name", "shared", "--layers", "3", "--location", "word", "--epochs", "2", "--seed", "4"],
     {"line": r"epoch 1/2"}),
    ("train (export)", ["train", "--name", "shared", "--layers", "3", "--location", "word", "--epochs", "1", "--seed", "4"],
     {"file_glob": "onnx/.shared.onnx.*.tmp.onnx"}),
    ("score (dbt Python model)", ["score", "--model", "shared"], {"line": r"scoring with shared\.json"}),
    ("build-index", ["build-index"], {"line": r"^Sampling"}),
    ("expand (ranking)", ["expand", "--name", "vip", "--seed-sql", SEED_SQL, "--size", "3%", "--strategy", "centroid"],
     {"line": r"^Seeds:"}),
    ("expand (serving swap)", ["expand", "--name", "vip", "--seed-sql", SEED_SQL, "--size", "3%", "--strategy", "centroid"],
     SERVING_SWAP),
    ("audiences apply (serving swap)", ["audiences", "apply", "audiences.yml"], SERVING_SWAP),
    ("segment (serving swap)", ["segment", "--k", "5"], SERVING_SWAP),
    # Popularity: the cheapest model; every --model publishes through the same swap (customer_recommendations and
    # its run and metrics tables in one copy of the serving file).
    ("recommend (serving swap)", ["recommend", "--model", "popularity"], SERVING_SWAP),
    # Killed in its last step (apply): the steps before it (build, score, index) finished and rightly changed
    # the warehouse, so what must be intact is what the killed step writes, the serving file.
    ("refresh (apply: serving swap)", ["refresh", "--audiences", "audiences.yml"], {**SERVING_SWAP, "compare": ("serving",)}),
]


@pytest.mark.slow
@pytest.mark.parametrize("command, kill_point", [pytest.param(c, k, id=i) for i, c, k in CASES])
def test_kill_9_keeps_what_was_published_and_the_next_run_succeeds(private_copy, command, kill_point):
    (private_copy.db_path.parent / "audiences.yml").write_text(AUDIENCES_YAML)
    kill_and_rerun(private_copy, command, kill_point)
