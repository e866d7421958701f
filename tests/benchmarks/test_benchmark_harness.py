"""Smoke test of `python -m benchmarks.run`: every stage of the real pipeline at a tiny size."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.run import STAGES

REPO = Path(__file__).resolve().parents[2]
HARNESS_CUSTOMERS = 1000


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_pipeline_harness_runs_every_stage(tmp_path):
    # A small size: at this scale the harness costs start-up, dbt and its fixed baselines, not data.
    results, table = tmp_path / "RESULTS.md", tmp_path / f"pipeline_{HARNESS_CUSTOMERS}.csv"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--customers", str(HARNESS_CUSTOMERS), "--epochs", "1",
         "--workdir", str(tmp_path / "work"), "--results", str(results), "--csv", str(table)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "generate: started" in done.stdout and "expand: finished" in done.stdout

    rows = list(csv.DictReader(table.open()))
    assert {r["stage"] for r in rows} == set(STAGES)
    assert {r["step"] for r in rows} >= {"score ORT fp32", "score ORT int8"}
    for r in rows:
        assert float(r["seconds"]) > 0 and float(r["rows_per_s"]) > 0 and float(r["peak_rss_mb"]) > 0, r
        assert float(r["ratio"]) > 0, r

    text = results.read_text()
    assert f"<!-- section:pipeline_{HARNESS_CUSTOMERS} -->" in text and f"<!-- end:pipeline_{HARNESS_CUSTOMERS} -->" in text
    assert "Projection to 100,000,000 customers" in text and "achieved / sgemm limit" in text


def test_rerunning_some_stages_keeps_the_other_stages_rows(tmp_path):
    from benchmarks.run import Context, Row, restore_state, save_state
    from lookalike_cli.settings import Settings

    settings = Settings.resolve(db=tmp_path / "w.duckdb")
    first = Context(customers=1000, settings=settings, workdir=tmp_path, epochs=1)
    first.rows = [Row("generate", "generate-data", "g", 2.0, 10, "order lines", 100.0),
                  Row("index", "build-index", "i", 3.0, 10, "vectors", 50.0, ratio=40.0)]
    first.details, first.sizes = {"index": "index table"}, {"flat index": 520.0, "customer_features": 423.0}
    save_state(first)

    again = Context(customers=1000, settings=settings, workdir=tmp_path, epochs=1)
    restore_state(again, ["index", "expand"])
    assert [r.stage for r in again.rows] == ["generate"] and again.rows[0].seconds == 2.0
    # The index stage re-measures index sizes; table sizes stay.
    assert again.details == {} and again.sizes == {"customer_features": 423.0}
    other_size = Context(customers=2000, settings=settings, workdir=tmp_path, epochs=1)
    restore_state(other_size, ["index"])
    assert other_size.rows == []
