"""kill -9 in the commands that need another command's output first: personas (label, then propagate), ads
(cluster, train-embedding, bid) and Spark (load-raw, score --engine spark, export-training-data). The
same promise as test_kill.py: what was published before is intact and readable, the next run of the same
command succeeds, no temp file or half-built table left.

Each pipeline runs its steps in order on one private copy, so a step's kill has the outputs of the steps before
it (and of its own earlier run, where one is listed) to lose; a step without a kill point runs to its end.
"""

from __future__ import annotations

import hashlib
import json
import subprocess

import duckdb
import pytest

from lookalike_cli.files import TEMP_NAME
from lookalike_cli.spark.session import schema_name
from tests.helpers import copy_warehouse
from tests.reliability.faults import (Killed, assert_succeeds, cli_command, cli_environment, database_state, kill_and_rerun,
                                      kill_at, reports_dir, stray_files, wait_gone)
from tests.reliability.spark_steps import MARTS, states

# (id, command, kill point or None = run to its end)
PERSONAS = [
    # Between its two labelling rounds (after the diversity sample is labelled).
    ("label", ["personas", "label", "--fraction", "0.01"], {"line": r"^Propagating \d+ labels to find"}),
    ("propagate", ["personas", "propagate"], None),  # so the killed propagate has a customer_personas to lose
    ("propagate", ["personas", "propagate"], {"line": r"^Propagating [\d,]+ labelled customers to"}),
]
ADS = [
    # `ads build` is not killed here: it is a dbt build through the same runner and table swap as test_kill.py's
    # `build` case (and cost ~40 s more for that; docs/RELIABILITY.md).
    # With the embeddings read: the classifier's fits and the clustering to come, then the swap (its only write).
    # Killed at its first line, as any later line before the swap would test the same and cost a longer killed run.
    # Same options as the shared build, so what the rerun writes is what was there (train-embedding changes it after).
    ("cluster", ["ads", "cluster"], {"line": r"^Clustering [\d,]+ ads"}),
    # The export: the new graph half-written beside the old one (ad_embeddings is replaced after it).
    ("train-embedding (export)", ["ads", "train-embedding", "--epochs", "1", "--seed", "2"],
     {"file_glob": "onnx/.ads_encoder.onnx.*.tmp.onnx"}),
    # The curve is drawn after bid_recommendations is replaced (rightly changed by then): the picture must survive.
    ("bid (curve PNG)", ["ads", "bid", "--budget", "1000"],
     {"file_glob": "reports/.ads_bid_curve.png.*.tmp.png", "compare": ("reports",)}),
]


def run_pipeline(settings, steps) -> None:
    for name, command, kill_point in steps:
        if kill_point is None:
            assert_succeeds(settings, *command)
        else:
            kill_and_rerun(settings, command, kill_point)


@pytest.mark.slow
def test_kill_9_in_personas_label_and_propagate(private_copy):
    run_pipeline(private_copy, PERSONAS)


@pytest.mark.slow
def test_kill_9_in_ads_cluster_train_embedding_and_bid(ads_warehouse_built, tmp_path):
    settings = copy_warehouse(ads_warehouse_built, tmp_path, "w")
    assert any(reports_dir(settings).glob("*.png")), "the copy has no bid curve to keep"  # copy_warehouse copies reports/
    run_pipeline(settings, ADS)


SPARK_ENV = {"LOOKALIKE_SPARK_SHUFFLE_PARTITIONS": "2"}  # small data: one shuffle partition per core
STEPS = "from tests.reliability.spark_steps import main; main()"
TRAINING = "training.duckdb"  # export-training-data's file, beside the warehouse (where stray_files looks)


def spark_environment(settings) -> dict[str, str]:
    """SPARK_ENV, and a temp folder of the test's own, where the Python workers' temp files can be counted."""
    temp = settings.db_path.parent / "tmp"
    temp.mkdir(exist_ok=True)
    return {**SPARK_ENV, "TMPDIR": str(temp)}


def spark_run(settings, steps: list, kill_point: dict) -> Killed:
    """`steps` (spark_steps) in one process, one JVM, SIGKILLed at `kill_point` inside the last step; the JVM must
    die with it, and every step before the last must have finished."""
    killed = kill_at(settings, json.dumps(steps), code=STEPS, env=spark_environment(settings),
                     armed_by=f"^START {len(steps) - 1}$", **kill_point)
    assert wait_gone(killed.children) == [], f"Spark's JVM outlived the killed command: {killed.children}"
    finished = [line for line in killed.output if line.startswith("STEP ")]
    assert len(finished) == len(steps) - 1, "\n".join(killed.output[-40:])
    return killed


def spark_leftovers(settings) -> list[str]:
    """Staging a finished Spark command must not leave: pid-named folders in the Spark dir, `__incoming` /
    `__previous` table folders, temp files beside the warehouse."""
    left = [path.name for path in settings.spark_dir.iterdir() if TEMP_NAME.match(path.name)]
    left += [str(path) for path in (settings.spark_dir / "warehouse").glob("*.db/*__*")]
    return left + stray_files(settings)


@pytest.mark.slow
@pytest.mark.spark
def test_kill_9_in_spark_load_raw_score_and_export(private_copy):
    """kill -9 in `spark load-raw`, `score --engine spark` and `spark export-training-data`, in four processes (four
    JVM starts): each process checks what the previous kill left, reruns the killed command, then starts the next
    and is killed in it. Every command writes what it wrote before (same data, same model), so what a kill left must
    equal what the rerun then wrote, table for table (rows and content hash), and each rerun must leave no staging."""
    pytest.importorskip("pyspark", reason="the Spark engine needs the extra [spark]")
    settings = private_copy
    training = settings.db_path.parent / TRAINING
    with duckdb.connect(str(settings.db_path)) as con:
        # The optional raw tables only add Spark table writes like the two kept (each costs seconds here).
        for table in ("visits", "engagements", "opt_outs"):
            con.execute(f"drop table if exists raw.{table}")
    score = ["score", "--engine", "spark", "--model", "shared"]
    export = ["spark", "export-training-data", "--to", str(training)]
    schema = schema_name(settings)
    schema_tables = [f"raw.{t}" for t in ("customers", "order_lines")] + [f"{schema}.{t}" for t in (*MARTS, "customer_embeddings")]

    # 1. Every output once, then load-raw again, killed while Spark writes raw.order_lines' staging table.
    killed = spark_run(settings, [["spark", "load-raw"], "seed-marts", score, export, ["spark", "load-raw"]],
                       {"file_glob": f"{settings.spark_dir.name}/warehouse/raw.db/order_lines__incoming"})
    exported = (hashlib.sha256(training.read_bytes()).hexdigest(), database_state(training))
    assert [p for p in settings.spark_dir.iterdir() if TEMP_NAME.match(p.name)], "no Parquet staging: struck outside the load"
    # Each Python worker that scored wrote the model to a temp folder; it must be gone once the model is loaded.
    assert list((settings.db_path.parent / "tmp").glob("lookalike_model_*")) == []

    # 2. What the kill left, load-raw again, then score, killed while Spark writes customer_embeddings' staging table.
    scoring = f"{settings.spark_dir.name}/warehouse/{schema}.db/customer_embeddings__incoming"
    killed = spark_run(settings, ["state", ["spark", "load-raw"], "state", score], {"file_glob": scoring})
    assert list(settings.db_path.parent.glob(scoring)), "the staging table's folder is gone: the kill struck after the swap"
    after_kill, first = states(killed.output)
    # The rerun loaded every table again (and left no staging table): what the first run had published.
    assert sorted(first) == sorted(schema_tables) and all(rows for rows, _ in first.values()), first
    assert {t: after_kill.get(t) for t in first} == first, f"load-raw killed at {killed.point!r}"

    # 3. What the kill left, score again, then export, killed while DuckDB writes its staging file.
    killed = spark_run(settings, ["state", score, "state", export], {"file_glob": f".{TRAINING}.*.tmp"})
    assert list(settings.db_path.parent.glob(f".{TRAINING}.*.tmp")), "no staging file: the kill struck after the rename"
    after_kill, after_rerun = states(killed.output)
    assert {t: after_kill.get(t) for t in first} == first, f"score killed at {killed.point!r}"
    assert after_rerun == first
    assert (hashlib.sha256(training.read_bytes()).hexdigest(), database_state(training)) == exported, \
        f"export killed at {killed.point!r}"

    # 4. Export again (it clears the killed one's staging file), and the end: the same tables, nothing left over.
    done = subprocess.run(cli_command(settings, json.dumps([export]), code=STEPS),
                          env=cli_environment(spark_environment(settings)), capture_output=True, text=True, timeout=900,
                          cwd=settings.db_path.parent)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert database_state(training) == exported[1]
    assert spark_leftovers(settings) == []
