"""The serving layout: a small catalog file swapped atomically, members and attributes as immutable
Parquet files beside it. Real DuckDB files, real reader processes, a real killed publisher."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from lookalike_cli.audiences import publish as publish_module
from lookalike_cli.audiences.publish import drop_audience, parquet_dir, publish_audience, relink_views, serving_files
from lookalike_cli.errors import LookalikeError
from tests.helpers import make_settings, run_cli

ROOT = Path(__file__).resolve().parents[2]


def audience_row(size: int) -> dict:
    return {"strategy": "centroid", "parameters": {"seed_source": "test"}, "seed_requested": 10, "seed_found": 10,
            "seed_missing": 0, "excluded_count": 0, "population_size": 10_000, "size": size, "score_min": 0.0,
            "score_max": 1.0, "score_mean": 0.5, "score_median": 0.5, "similarity_min": 0.0, "model_version": "m1",
            "index_version": "i1", "index_type": "flat", "compute_seconds": 0.1}


def members(size: int, offset: int = 0) -> pa.Table:
    ids = np.arange(offset, offset + size, dtype=np.int64)
    scores = np.linspace(1.0, 0.0, size)
    return pa.table({"customer_id": ids, "rank": np.arange(1, size + 1, dtype=np.int32), "score": scores,
                     "similarity": scores, "nearest_seed_id": np.zeros(size, np.int64)})


def attributes(rows: int = 2_000, spend_offset: float = 0.0) -> pa.Table:
    ids = np.arange(rows, dtype=np.int64)
    return pa.table({"customer_id": ids, "total_spend": ids * 1.5 + spend_offset,
                     "gender": pa.array(["f", "m"] * (rows // 2))})


def publish(serving: Path, name: str = "vip", size: int = 100, attrs: pa.Table | None = None, offset: int = 0) -> dict:
    return publish_audience(serving, name, audience_row(size), members(size, offset), attributes=attrs, progress=lambda _: None)


def files(serving: Path, kind: str) -> list[str]:
    return sorted(p.name for p in (parquet_dir(serving) / kind).glob("*.parquet"))


def test_catalog_stays_small_and_views_read_the_files(tmp_path):
    serving = tmp_path / "serving.duckdb"
    publish(serving, size=300, attrs=attributes())
    publish(serving, size=200, attrs=attributes())
    publish(serving, name="churn", size=50, attrs=attributes())
    assert len(files(serving, "members")) == 3
    with duckdb.connect(str(serving), read_only=True) as con:
        tables = dict(con.execute("select table_name, table_type from information_schema.tables").fetchall())
        assert tables["audience_members"] == tables["customer_attributes"] == "VIEW"
        assert con.execute("select audience_id, count(*), max(rank) from audience_members group by 1 order by 1").fetchall() == [
            (1, 300, 300), (2, 200, 200), (3, 50, 50)]
        assert con.execute("select audience_name, audience_version, count(*) from latest_audience_members "
                           "group by all order by 1").fetchall() == [("churn", 1, 50), ("vip", 2, 200)]
        assert con.execute("select count(*), sum(total_spend) from audience_members_enriched where audience_name = 'vip'"
                           ).fetchall() == [(200, sum(i * 1.5 for i in range(200)))]
        assert con.execute("select count(*) from latest_audience_activation").fetchall() == [(250,)]
        assert [r[0] for r in con.execute("describe audience_members").fetchall()] == list(publish_module.MEMBER_COLUMNS)


def test_attributes_are_written_only_when_their_content_changes(tmp_path):
    serving = tmp_path / "serving.duckdb"
    publish(serving, attrs=attributes())
    [first] = files(serving, "attributes")
    written = (parquet_dir(serving) / "attributes" / first).stat()
    publish(serving, attrs=attributes())  # same content, a new Arrow table
    publish(serving, attrs=None)          # none given: kept
    assert files(serving, "attributes") == [first]
    again = (parquet_dir(serving) / "attributes" / first).stat()
    assert (again.st_ino, again.st_mtime_ns) == (written.st_ino, written.st_mtime_ns), "not rewritten"

    publish(serving, attrs=attributes(spend_offset=1.0))  # one column changed
    changed = files(serving, "attributes")
    assert len(changed) == 2 and first in changed, "the superseded snapshot stays one publish for open readers"
    with duckdb.connect(str(serving), read_only=True) as con:
        assert con.execute("select total_spend from customer_attributes where customer_id = 2").fetchall() == [(4.0,)]
    publish(serving, attrs=attributes(spend_offset=1.0))
    assert files(serving, "attributes") == [f for f in changed if f != first]


def test_dropped_versions_files_are_removed(tmp_path):
    serving = tmp_path / "serving.duckdb"
    for size in (10, 20, 30):
        publish(serving, size=size)
    publish(serving, name="other", size=5)
    by_id = {p.name.split("_")[1]: p.name for p in (parquet_dir(serving) / "members").glob("*.parquet")}
    assert sorted(by_id) == ["1", "2", "3", "4"]
    assert drop_audience(serving, "vip", version=2) == 1
    assert files(serving, "members") == sorted([by_id["1"], by_id["3"], by_id["4"]])
    assert drop_audience(serving, "vip") == 2
    assert files(serving, "members") == [by_id["4"]]
    assert serving_files(serving) == [f"members/{by_id['4']}"]
    with duckdb.connect(str(serving), read_only=True) as con:
        assert con.execute("select audience_id, count(*) from audience_members group by 1").fetchall() == [(4, 5)]


def test_a_single_file_serving_file_is_migrated(tmp_path):
    """A serving file of the previous layout (members and attributes as tables) keeps its versions."""
    serving = tmp_path / "serving.duckdb"
    with publish_module.connect_for_write(serving) as con:
        con.execute(publish_module.SCHEMA.split("-- The Parquet")[0])
        con.execute("create table audience_members (audience_id bigint, customer_id bigint, rank integer, score double, "
                    "similarity double, nearest_seed_id bigint, ring varchar, is_holdout boolean default false)")
        con.execute("insert into audiences (audience_id, name, version, created_at, strategy, size) "
                    "values (1, 'old', 1, now()::timestamp, 'centroid', 3)")
        con.execute("insert into audience_members select 1, range, range + 1, 0.5, 0.5, 0, null, false from range(3)")
        con.execute("create table customer_attributes as select range as customer_id, range * 2 as spend from range(5)")
    publish(serving, size=4)
    with duckdb.connect(str(serving), read_only=True) as con:
        assert con.execute("select audience_id, count(*) from audience_members group by 1 order by 1").fetchall() == [(1, 3), (2, 4)]
        assert con.execute("select sum(spend) from customer_attributes").fetchall() == [(20,)]
    assert len(files(serving, "members")) == 2 and len(files(serving, "attributes")) == 1


def test_moving_the_serving_file_and_folder_then_relinking(tmp_path):
    serving = tmp_path / "a" / "serving.duckdb"
    publish(serving, size=7, attrs=attributes())
    moved = tmp_path / "b" / "serving.duckdb"
    moved.parent.mkdir()
    os.replace(serving, moved)
    os.replace(parquet_dir(serving), parquet_dir(moved))
    with duckdb.connect(str(moved), read_only=True) as con, pytest.raises(duckdb.IOException):
        con.execute("select count(*) from audience_members").fetchall()  # absolute paths: the old folder
    settings = make_settings(tmp_path / "b")
    relinked = run_cli(replace(settings, serving_db_path=moved), "audiences", "relink")
    assert str(parquet_dir(moved)) in relinked.output
    with duckdb.connect(str(moved), read_only=True) as con:
        assert con.execute("select count(*) from audience_members_enriched").fetchall() == [(7,)]
    os.replace(parquet_dir(moved), tmp_path / "elsewhere")
    with pytest.raises(LookalikeError, match="not in"):
        relink_views(moved)


# A BI reader polling with fresh connections while publishes run: never blocked, and every
# snapshot it sees is whole (each version's members count equals its audiences.size).
POLLER = textwrap.dedent("""
    import json, sys, time, duckdb
    path, seconds = sys.argv[1], float(sys.argv[2])
    seen, errors, reads, slowest = set(), [], 0, 0.0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            with duckdb.connect(path, read_only=True) as con:
                rows = con.execute(
                    "select a.audience_id, a.size, (select count(*) from audience_members m where m.audience_id = a.audience_id), "
                    "(select count(*) from latest_audience_members l where l.audience_id = a.audience_id) "
                    "from audiences a order by 1").fetchall()
                latest = con.execute("select max(audience_id) from latest_audiences").fetchall()[0][0]
        except Exception as exc:
            errors.append(str(exc).splitlines()[0])
            continue
        slowest = max(slowest, time.monotonic() - started)
        reads += 1
        for audience_id, size, count, latest_count in rows:
            if count != size or (audience_id == latest and latest_count != size):
                errors.append(f"partial: audience {audience_id} size {size} has {count} members ({latest_count} latest)")
        seen.add(latest)
    print(json.dumps({"reads": reads, "errors": errors[:5], "seen": sorted(s for s in seen if s), "slowest": slowest}))
""")


def test_readers_are_never_blocked_and_see_all_or_nothing(tmp_path):
    serving = tmp_path / "serving.duckdb"
    publish(serving, size=1_000, attrs=attributes())
    reader = subprocess.Popen([sys.executable, "-c", POLLER, str(serving), "8"], stdout=subprocess.PIPE, text=True)
    try:
        for i in range(6):
            publish(serving, size=2_000 + 500 * i, attrs=attributes(spend_offset=i % 2), offset=i)
        out, _ = reader.communicate(timeout=120)
    finally:
        reader.kill()
    result = json.loads(out)
    assert result["errors"] == []
    assert result["reads"] > 20
    assert len(result["seen"]) >= 2, "the reader saw new versions while they were published"


# A publisher killed after writing its members file, before the catalog swap.
KILLED_PUBLISHER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from tests.audiences.test_publish_layout import audience_row, members, attributes
    from lookalike_cli.audiences.publish import publish_audience
    def hang(con, audience_id):
        print("members written", flush=True)
        time.sleep(600)
    publish_audience(Path(sys.argv[1]), "vip", audience_row(500), members(500), attributes=attributes(spend_offset=7),
                     progress=lambda _: None, extra=hang)
""")


def test_a_publish_killed_mid_way_leaves_the_previous_version_readable(tmp_path):
    serving = tmp_path / "serving.duckdb"
    publish(serving, size=100, attrs=attributes())
    before = sorted(p.name for p in parquet_dir(serving).rglob("*.parquet"))
    killed = subprocess.Popen([sys.executable, "-c", KILLED_PUBLISHER, str(serving), str(ROOT)],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert killed.stdout.readline().strip() == "members written"
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(timeout=30)
    finally:
        killed.kill()
    left = sorted(p.name for p in parquet_dir(serving).rglob("*.parquet"))
    assert len(left) == len(before) + 1, "its members file was written, never referenced"
    with duckdb.connect(str(serving), read_only=True) as con:
        assert con.execute("select max(audience_version), count(*) from latest_audience_members").fetchall() == [(1, 100)]
        assert con.execute("select count(*) from audience_members_enriched where total_spend is not null").fetchall() == [(100,)]
    assert any(p.name.endswith(".tmp") for p in tmp_path.iterdir()), "the killed publisher's temp catalog"

    publish(serving, size=30)  # the lock died with the process; this publish cleans up after it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["serving.duckdb", "serving.duckdb.lock", "serving_parquet"]
    assert len(files(serving, "members")) == 2, "the orphan members file is gone"
    assert files(serving, "attributes") == [f for f in before if not f.startswith("audience_")]
    assert sorted(serving_files(serving)) == sorted(
        f"{kind}/{name}" for kind in ("members", "attributes") for name in files(serving, kind))


def test_warehouse_attributes_are_fingerprinted_in_duckdb_and_read_only_when_changed(tmp_path):
    """expand's publish hands the warehouse's customer_features to the serving file as WarehouseAttributes:
    fingerprinted inside DuckDB (no rows read when unchanged), read and written when a value changed."""
    import duckdb

    from lookalike_cli.audiences.publish import WarehouseAttributes

    warehouse, serving = tmp_path / "w.duckdb", tmp_path / "serving.duckdb"
    with duckdb.connect(str(warehouse)) as con:
        con.execute("create table customer_features as select range as customer_id, range * 2.0 as total_spend, "
                    "'F' as gender from range(1, 2001)")

    def snapshot_publish(size: int) -> tuple[list[str], int]:
        with duckdb.connect(str(warehouse), read_only=True) as con:
            columns = [(r[0], r[1]) for r in con.execute("describe customer_features").fetchall()]
            snapshot = WarehouseAttributes(con, "customer_features", columns)
            reads = []
            table = snapshot.table
            snapshot.table = lambda: reads.append(1) or table()
            publish_audience(serving, "vip", audience_row(size), members(size), attributes=snapshot, progress=lambda _: None)
        return files(serving, "attributes"), len(reads)

    first, reads = snapshot_publish(300)
    assert len(first) == 1 and reads == 1
    assert snapshot_publish(200) == (first, 0)  # unchanged: the rows never left the warehouse
    with duckdb.connect(str(warehouse)) as con:
        con.execute("update customer_features set total_spend = total_spend + 1 where customer_id = 2")
    changed, reads = snapshot_publish(100)
    assert changed != first and reads == 1
    with duckdb.connect(str(serving), read_only=True) as con:
        assert con.execute("select total_spend from customer_attributes where customer_id = 2").fetchall() == [(5.0,)]
