"""Publishing to the serving file: versions, BI views, atomic swap under a live reader, SQLAlchemy."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap

import duckdb
import pytest

from lookalike_cli.audiences import publish as publish_module
from lookalike_cli.audiences.catalog import create_audience, diff_audience
from lookalike_cli.errors import LookalikeError
from lookalike_cli.index.faiss_index import build_index
from tests.helpers import build_planted_warehouse

SEED_SQL = "select customer_id from customer_features where segment_id = 5 order by customer_id limit 150"


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("publish")
    db = root / "warehouse.duckdb"
    build_planted_warehouse(db, customers=3000)
    build_index(db, root / "index", progress=quiet)
    return {"db": db, "index": root / "index"}


def publish(world, serving, name="seg5", size=100, **kwargs):
    return create_audience(world["db"], serving, world["index"], name, seed_sql=SEED_SQL, size=size,
                           progress=quiet, on_warning=quiet, **kwargs)


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_versions_tables_and_bi_views(world, tmp_path):
    serving = tmp_path / "serving.duckdb"
    first = publish(world, serving)
    second = publish(world, serving, size=120, strategy="knn-vote")
    assert (first["version"], second["version"]) == (1, 2)
    con = duckdb.connect(str(serving), read_only=True)
    try:
        audiences = con.sql("select name, version, size, seed_found, model_version, index_version from audiences order by version").fetchall()
        assert [(a[0], a[1], a[2], a[3]) for a in audiences] == [("seg5", 1, 100, 150), ("seg5", 2, 120, 150)]
        assert all(a[4] and a[5] for a in audiences)
        latest = con.sql("select audience_version, count(*), min(rank), max(rank) from latest_audience_members group by 1").fetchall()
        assert latest == [(2, 120, 1, 120)]
        enriched = con.sql("select * from audience_members_enriched limit 1")
        assert {"gender", "total_spend", "segment_id", "score", "nearest_seed_id"} <= set(enriched.columns)
        assert "category_ids" not in enriched.columns  # list columns stay in the warehouse
        parameters = json.loads(con.sql("select parameters from audiences where version = 2").fetchall()[0][0])
        assert parameters["seed_source"].startswith("sql:")
    finally:
        con.close()
    diff = diff_audience(serving, "seg5")
    assert diff.stayed + diff.entered.num_rows == 120 and diff.stayed + diff.left.num_rows == 100


def test_failed_publish_leaves_the_serving_file_untouched(world, tmp_path, monkeypatch):
    serving = tmp_path / "serving.duckdb"
    publish(world, serving)
    before = digest(serving)
    files_before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "serving_parquet").rglob("*"))

    def explode(*_args, **_kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(publish_module, "refresh_attributes", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        publish(world, serving)
    assert digest(serving) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["serving.duckdb", "serving.duckdb.lock", "serving_parquet",
                                                          "serving_reach_curves"]
    # The failed version's members file was written before the failure and removed with it.
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "serving_parquet").rglob("*")) == files_before
    assert [p.name for p in (tmp_path / "serving_reach_curves").iterdir()] == ["seg5_v1.png"]  # no picture of the failed one
    with pytest.raises(LookalikeError, match="No audience named"):
        publish_module.drop_audience(serving, "nope")
    assert digest(serving) == before


READER = textwrap.dedent("""
    import json, sys, duckdb
    path = sys.argv[1]
    held = duckdb.connect(path, read_only=True)  # a BI tool's connection, held all day
    print(json.dumps(held.sql("select max(version) from audiences").fetchall()[0][0]), flush=True)
    sys.stdin.readline()  # the parent publishes meanwhile
    old = held.sql("select max(audience_version), count(*) from latest_audience_members").fetchall()[0]
    held.close()
    fresh = duckdb.connect(path, read_only=True)
    new = fresh.sql("select max(audience_version), count(*) from latest_audience_members").fetchall()[0]
    print(json.dumps({"held": list(old), "next_connection": list(new)}), flush=True)
""")


def test_expand_succeeds_while_another_process_holds_a_read_only_connection(world, tmp_path):
    serving = tmp_path / "serving.duckdb"
    publish(world, serving, size=100)
    reader = subprocess.Popen([sys.executable, "-c", READER, str(serving)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert json.loads(reader.stdout.readline()) == 1
        # DuckDB would refuse a writer on the file the reader holds; the swap publishes anyway.
        publish(world, serving, size=130)
        out, _ = reader.communicate("go\n", timeout=60)
    finally:
        reader.kill()
    seen = json.loads(out)
    assert seen["held"] == [1, 100], "the open connection keeps its snapshot"
    assert seen["next_connection"] == [2, 130], "the next connection sees the new version"


SQLALCHEMY_READER = textwrap.dedent("""
    import json, sys
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool
    engine = create_engine(f"duckdb:///{sys.argv[1]}", connect_args={"read_only": True}, poolclass=NullPool)
    def latest():
        with engine.connect() as con:
            return list(con.execute(text(
                "select audience_version, count(*) from latest_audience_members group by 1")).one())
    print(json.dumps(latest()), flush=True)
    sys.stdin.readline()
    print(json.dumps(latest()), flush=True)
""")


@pytest.mark.slow
def test_sqlalchemy_duckdb_engine_reader_sees_new_versions(world, tmp_path):
    pytest.importorskip("duckdb_engine")
    serving = tmp_path / "serving.duckdb"
    publish(world, serving, size=100)
    reader = subprocess.Popen([sys.executable, "-c", SQLALCHEMY_READER, str(serving)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert json.loads(reader.stdout.readline()) == [1, 100]
        publish(world, serving, size=110)
        out, _ = reader.communicate("go\n", timeout=60)
    finally:
        reader.kill()
    assert json.loads(out) == [2, 110]


def test_serving_file_is_written_for_duckdb_1_4_readers(world, tmp_path):
    serving = tmp_path / "serving.duckdb"
    publish(world, serving)
    publish(world, serving)
    con = duckdb.connect(str(serving), read_only=True)
    try:
        # The storage version recorded in the file is what a DuckDB 1.x driver checks.
        version = con.sql("select tags['storage_version'] from duckdb_databases() where database_name = 'serving'").fetchall()
    finally:
        con.close()
    assert version[0][0].startswith("v1.4.0")
