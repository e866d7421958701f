"""kill -9 in the commands that need another command's output first: personas (label, then propagate), ads
(cluster, train-embedding, bid, predict-rpc) and Spark (load-raw, score --engine spark, export-training-data). The
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

from lookalike_cli.ads.rpc import MODEL_FILE, model_file_name, model_version
from lookalike_cli.files import TEMP_NAME
from lookalike_cli.spark.session import schema_name
from tests.helpers import copy_warehouse
from tests.reliability.faults import (STEPS, Killed, assert_succeeds, cli_command, cli_environment, database_state, folder_state,
                                      kill_and_rerun, reports_dir, spark_environment, spark_leftovers, spark_run)
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


# `ads predict-rpc` writes for milliseconds (after its fits): each point is a kill the process does itself
# (tests/reliability/kill_points.py), right where named. (id, --trees, kill point, what must be as it was: the
# published_state sections, and whether the models folder's files other than the manifest count too). The trees
# alternate, so each killed run writes models other than the published ones: a file it replaced would show.
RPC_SWAP = "lookalike_cli.ads.rpc"  # the module whose `connection` replace_tables is given
RPC_KILLS = [
    # (a) The first LightGBM file moved in, the second and the manifest not.
    ("first model file in", "30", {"after_replace": "ads_rpc_*.txt", "count": 1}, None),
    # (b) Every file moved in, the manifest last; replace_tables not called.
    ("manifest in, before the tables", "20", {"after_replace": "ads_rpc.json"}, ("warehouse", "serving", "indexes", "reports")),
    # (c) In replace_tables: both `__new` tables written (each committed on its own), the swap's transaction not begun.
    ("__new tables written, before the swap", "30", {"before_sql": r"^begin transaction$", "module": RPC_SWAP},
     ("warehouse", "serving", "indexes", "reports")),
    # (d) In the swap's transaction: ad_rpc_predictions dropped and its __new renamed in, ad_rpc_evaluation not, no commit.
    ("inside the swap transaction", "20", {"before_sql": r"^alter table ad_rpc_evaluation__new rename", "module": RPC_SWAP},
     ("warehouse", "serving", "indexes", "reports")),
]


def rpc_state(settings) -> dict:
    """The manifest's version and files, the tables' model versions and objectives, the `__new` tables, and the
    LightGBM files in the models folder."""
    manifest = json.loads((settings.onnx_dir / "ads_rpc.json").read_text())
    with duckdb.connect(str(settings.db_path), read_only=True) as con:
        versions = {row[0] for table in ("ad_rpc_predictions", "ad_rpc_evaluation")
                    for row in con.execute(f"select distinct model_version from {table}").fetchall()}
        objectives = [row[0] for row in con.execute(
            "select distinct objective from ad_rpc_predictions order by objective = 'margin', objective").fetchall()]
        staged = sorted(row[0] for row in con.execute(
            "select table_name from information_schema.tables where table_name like 'ad\\_rpc\\_%\\_\\_new' escape '\\'").fetchall())
    return {"manifest": manifest, "table_versions": versions, "objectives": objectives, "staged": staged,
            "files": sorted(p.name for p in settings.onnx_dir.iterdir() if MODEL_FILE.match(p.name))}


def assert_models_match(settings, version: str, files: list[str]) -> None:
    """The LightGBM files a reader would load for `version` are there and are that version's (their text hashes to it)."""
    missing = [name for name in files if not (settings.onnx_dir / name).is_file()]
    assert missing == [], f"{version}: model files gone: {missing}"
    assert model_version([(settings.onnx_dir / name).read_text() for name in files]) == version, f"{version}: files {files}"


def assert_rpc_consistent(settings) -> dict:
    """What readers use agrees: the manifest names files of its own version, and the tables (one model version) have
    the files of theirs beside them."""
    state = rpc_state(settings)
    manifest = state["manifest"]
    assert_models_match(settings, manifest["model_version"], [manifest["model_files"][o] for o in manifest["objectives"]])
    assert len(state["table_versions"]) == 1, state["table_versions"]
    (table_version,) = state["table_versions"]
    assert_models_match(settings, table_version, [model_file_name(o, table_version) for o in state["objectives"]])
    return state


@pytest.mark.slow
def test_kill_9_in_ads_predict_rpc(ads_warehouse_built, tmp_path):
    """kill -9 at four points inside `ads predict-rpc`'s writes (files, then tables), each after a finished run."""
    settings = copy_warehouse(ads_warehouse_built, tmp_path, "w")
    command = ["ads", "predict-rpc", "--trees"]
    # A model file under the unversioned name of earlier releases: a finished run must remove it with the old version.
    legacy = settings.onnx_dir / "ads_rpc_revenue.txt"
    legacy.write_text((settings.onnx_dir / rpc_state(settings)["manifest"]["model_files"]["revenue"]).read_text())
    assert_succeeds(settings, *command, "20")  # the published state to lose
    published = assert_rpc_consistent(settings)
    assert published["files"] == sorted(published["manifest"]["model_files"].values()), published["files"]
    assert published["objectives"] == ["revenue", "margin"] == published["manifest"]["objectives"]

    for name, trees, point, sections in RPC_KILLS:
        before, models_before = rpc_state(settings), folder_state(settings.onnx_dir)
        (old_version,) = before["table_versions"]

        def after_kill(killed: Killed) -> None:
            state = assert_rpc_consistent(settings)
            assert state["table_versions"] == {old_version}, f"{name}: {state['table_versions']}"
            new_files = sorted(set(state["files"]) - set(before["files"]))
            if sections is None:  # (a): nothing switched; the one new model file lies beside the published ones
                assert state["manifest"] == before["manifest"], name
                assert len(new_files) == 1 and new_files[0].startswith("ads_rpc_revenue."), f"{name}: {new_files}"
            else:  # the manifest switched to the new files; the old ones, which the tables name, are untouched
                assert state["manifest"]["model_version"] != old_version, name
                assert sorted(state["manifest"]["model_files"].values()) == new_files, f"{name}: {new_files}"
                now = folder_state(settings.onnx_dir)
                assert {f: now.get(f) for f in models_before if f != "ads_rpc.json"} == \
                       {f: h for f, h in models_before.items() if f != "ads_rpc.json"}, name
            expected_staged = ["ad_rpc_evaluation__new", "ad_rpc_predictions__new"] if point.get("before_sql") else []
            assert state["staged"] == expected_staged, f"{name}: {state['staged']}"  # (d): the rename rolled back

        kill_point = {"inside": point} if sections is None else {"inside": point, "compare": sections}
        killed = kill_and_rerun(settings, [*command, trees], kill_point, after_kill=after_kill)
        assert killed.point.startswith(("after os.replace", "before SQL")), killed.point
        rerun = assert_rpc_consistent(settings)
        assert rerun["table_versions"] == {rerun["manifest"]["model_version"]} != {old_version}, name
        # Only the published version's files left: the previous one's, and the killed run's orphan (a), removed.
        assert rerun["files"] == sorted(rerun["manifest"]["model_files"].values()), f"{name}: {rerun['files']}"


TRAINING = "training.duckdb"  # export-training-data's file, beside the warehouse (where stray_files looks)


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
