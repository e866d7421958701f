"""kill -9 in the commands that need another command's output first: personas (label, then propagate), ads
(train-embedding, bid) and Spark (load-raw). The same promise as test_kill.py: what was published
before is intact and readable, the next run of the same command succeeds, no temp file or half-built table left.

Each pipeline runs its steps in order on one private copy, so a step's kill has the outputs of the steps before
it (and of its own earlier run, where one is listed) to lose; a step without a kill point runs to its end.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from lookalike_cli.files import TEMP_NAME
from tests.helpers import copy_warehouse
from tests.reliability.faults import (assert_succeeds, cli_command, cli_environment, kill_and_rerun, kill_at, reports_dir,
                                      stray_files, wait_gone)

# (id, command, kill point or None = run to its end)
PERSONAS = [
    # Between its two labelling rounds (after the diversity sample is labelled).
    ("label", ["personas", "label", "--fraction", "0.01"], {"line": r"^Propagating \d+ labels to find"}),
    ("propagate", ["personas", "propagate"], None),  # so the killed propagate has a customer_personas to lose
    ("propagate", ["personas", "propagate"], {"line": r"^Propagating [\d,]+ labelled customers to"}),
]
ADS = [
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
def test_kill_9_in_ads_train_embedding_and_bid(ads_warehouse_built, tmp_path):
    settings = copy_warehouse(ads_warehouse_built, tmp_path, "w")
    assert any(reports_dir(settings).glob("*.png")), "the copy has no bid curve to keep"  # copy_warehouse copies reports/
    run_pipeline(settings, ADS)


SPARK_ENV = {"LOOKALIKE_SPARK_SHUFFLE_PARTITIONS": "2"}  # small data: one shuffle partition per core
LOADED = re.compile(r"^\s+(raw\.\w+)\s+([\d,]+) rows in")
LISTED = re.compile(r"^(raw\.\w+)\s+([\d,]+)$")
# `lookalike spark tables`, then the rerun of `lookalike spark load-raw`, in one process: one JVM start (the
# slowest part of a Spark command here) for both, the session of the first reused by the second.
TABLES_THEN_LOAD_RAW = ("import sys; from lookalike_cli.cli.main import main; options = sys.argv[1:]; "
                        "main([*options, 'spark', 'tables'], standalone_mode=False); "
                        "main([*options, 'spark', 'load-raw'], standalone_mode=False)")


def table_counts(output: str, pattern: re.Pattern) -> dict[str, int]:
    return {m.group(1): int(m.group(2).replace(",", "")) for m in map(pattern.match, output.splitlines()) if m}


@pytest.mark.slow
@pytest.mark.spark
def test_kill_9_in_spark_load_raw(private_copy):
    pytest.importorskip("pyspark", reason="the Spark engine needs the extra [spark]")
    settings = private_copy
    loaded = table_counts(assert_succeeds(settings, "spark", "load-raw", env=SPARK_ENV).output, LOADED)
    assert {"raw.customers", "raw.order_lines"} <= loaded.keys(), loaded

    # raw.customers replaced again, raw.order_lines on its way (Parquet export, then the Spark write).
    killed = kill_at(settings, "spark", "load-raw", line=r"^\s+raw\.customers\s", delay=0.5, env=SPARK_ENV)

    assert wait_gone(killed.children) == [], f"Spark's JVM outlived the killed command: {killed.children}"
    assert [path for path in settings.spark_dir.iterdir() if TEMP_NAME.match(path.name)], \
        "the kill left no Parquet staging folder: it struck outside the load"
    options = cli_command(settings)[3:]  # --db ... --index-dir ...
    done = subprocess.run([sys.executable, "-c", TABLES_THEN_LOAD_RAW, *options], env=cli_environment(SPARK_ENV),
                          capture_output=True, text=True, timeout=900, cwd=settings.db_path.parent)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    listed = table_counts(done.stdout, LISTED)  # `spark tables` prints to stdout, load-raw's progress goes to stderr
    assert {table: listed.get(table) for table in loaded} == loaded, f"killed at {killed.point!r}"
    assert table_counts(done.stderr, LOADED) == loaded  # the rerun loaded every table again
    staging = [path.name for path in settings.spark_dir.iterdir() if TEMP_NAME.match(path.name)]
    staging += [path.name for path in (settings.spark_dir / "warehouse").rglob("*__*")]  # __incoming, __previous
    assert staging == [] and stray_files(settings) == [], staging
