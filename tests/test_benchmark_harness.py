"""Smoke test of `python -m benchmarks.run`: every stage of the real pipeline at a tiny size."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.run import STAGES

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_pipeline_harness_runs_every_stage(tmp_path):
    results, table = tmp_path / "RESULTS.md", tmp_path / "pipeline_2000.csv"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--customers", "2000", "--epochs", "1",
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
    assert "<!-- section:pipeline_2000 -->" in text and "<!-- end:pipeline_2000 -->" in text
    assert "Projection to 100,000,000 customers" in text and "achieved / sgemm limit" in text
