"""kill -9 in `build --target spark` (dbt-spark, session method): the table a build replaces survives a kill while
the new one is written and between the swap's renames, and a model whose SQL fails (docs/RELIABILITY.md).
In a file of its own so that xdist can run it beside the other Spark kill flow (test_kill_pipelines.py)."""

from __future__ import annotations

import json
import subprocess

import duckdb
import pytest

from lookalike_cli.spark.session import schema_name
from tests.reliability.faults import STEPS, cli_command, cli_environment, spark_environment, spark_leftovers, spark_run
from tests.reliability.kill_points import ENV as KILL_POINT_ENV, MARKER
from tests.reliability.spark_steps import states


@pytest.mark.slow
@pytest.mark.spark
def test_kill_9_in_spark_dbt_build(private_copy):
    """kill -9 in `build --target spark` (dbt-spark, session method), in three processes, at the two points where
    dbt-spark's own table materialization (drop, then create) would lose the table: while the new table is written
    (the old one must keep its name and rows), and between the swap's renames (the old table is then
    `<name>__previous`, which the next build puts back). One table model, int_time_windows, over the raw tables.
    Each build writes what the one before wrote (same raw data), so every state must equal the first build's."""
    pytest.importorskip("pyspark", reason="the Spark engine needs the extra [spark]")
    settings = private_copy
    with duckdb.connect(str(settings.db_path)) as con:
        for table in ("visits", "engagements", "opt_outs"):  # not read by the model: fewer Spark table writes
            con.execute(f"drop table if exists raw.{table}")
    schema = schema_name(settings)
    model = f"{schema}.int_time_windows"
    # The views under it, without their tests (relationships tests would pull in every staging model).
    first_build = ["build", "--target", "spark", "--select", "+int_time_windows", "--exclude", "resource_type:test"]
    rebuild = ["build", "--target", "spark", "--select", "int_time_windows"]

    # 1. Load and build once, then build again, killed while Spark writes the new table's staging folder.
    killed = spark_run(settings, [["spark", "load-raw"], first_build, "state", rebuild],
                       {"file_glob": f"{settings.spark_dir.name}/warehouse/{schema}.db/int_time_windows__incoming/*"})
    (first,) = states(killed.output)
    assert first.get(model, [0])[0] == 1, first

    # 2. What the kill left: the old table under its name, the same rows. Then build (it clears the orphaned
    # staging folder Spark would refuse to create the table over), then build killed between the two renames.
    done = subprocess.run(cli_command(settings, json.dumps(["state", rebuild, "state", rebuild]), code=STEPS),
                          env=cli_environment({**spark_environment(settings), KILL_POINT_ENV: json.dumps(
                              {"before_spark_sql": r"alter table \S*int_time_windows__incoming rename to"})}),
                          capture_output=True, text=True, timeout=900, cwd=settings.db_path.parent)
    output = done.stdout.splitlines()
    assert done.returncode == -9 and output[-1].startswith(MARKER), (done.stdout + done.stderr)[-3000:]
    after_kill, after_rerun = states(output)
    assert {t: after_kill.get(t) for t in first} == first, "killed while writing the staging table"
    assert after_rerun == first

    # 3. Killed between the renames: no table under the model's name, the last complete one as __previous.
    # The next build puts it back, builds, and leaves nothing behind. Then a build whose model fails (a var
    # before the data: int_time_windows raises its error inside Spark, after dbt-spark's materialization
    # would have dropped the table) leaves the table as it was, and its staging folder, which the next build
    # removes as in 2. (Not run again here: new vars cost dbt a full parse, and going back to none another.)
    failing = {"fails": [*rebuild, "--vars", "{as_of_date: '1900-01-01'}"]}
    steps = ["state", rebuild, "state", failing, "state"]
    done = subprocess.run(cli_command(settings, json.dumps(steps), code=STEPS),
                          env=cli_environment(spark_environment(settings)), capture_output=True, text=True, timeout=900,
                          cwd=settings.db_path.parent)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    output = done.stdout.splitlines()
    after_kill, after_rerun, after_failure = states(output)
    assert model not in after_kill and after_kill[f"{model}__previous"] == first[model], after_kill
    assert after_rerun == first
    assert any(line.startswith("FAILED") and "as_of_date = 1900-01-01 is outside the data" in line for line in output), \
        "\n".join(output[-20:])
    assert after_failure == first
    staging = settings.spark_dir / "warehouse" / f"{schema}.db" / "int_time_windows__incoming"
    assert spark_leftovers(settings) == [str(staging)]
