"""kill -9 of `lookalike refresh` while it re-scores: the published audience stays readable and unchanged,
customer_embeddings and its input hashes are both the old or both the new, and the next refresh completes
with embeddings equal to a full score's and an index that matches them."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest

from lookalike_cli.audiences.refresh import fingerprint, raw_tables, write_state
from lookalike_cli.index.faiss_index import load_index
from lookalike_cli.model.rescoring import INPUTS_TABLE
from tests.audiences.test_refresh_incremental import assert_equals_full_score, stored_embeddings
from tests.reliability.faults import assert_succeeds, changed, kill_at, published_state, stray_files, stray_relations, wait_gone
from tests.reliability.test_kill import AUDIENCES_YAML


@pytest.mark.slow
def test_kill_9_while_rescoring_then_refresh_completes(private_copy):
    settings = private_copy
    (settings.db_path.parent / "audiences.yml").write_text(AUDIENCES_YAML)
    # The fixture's dbt build is current: recorded, so the refresh goes straight to scoring (no dbt here).
    with duckdb.connect(str(settings.db_path), read_only=True) as con:
        raw = fingerprint(con, raw_tables(con))
    write_state(settings, "build", raw)
    before = published_state(settings)

    killed = kill_at(settings, "refresh", "--audiences", "audiences.yml", line=r"^re-scoring all ")
    assert wait_gone(killed.children) == []
    now = published_state(settings)
    assert changed({"serving": before["serving"]}, {"serving": now["serving"]}) == [], killed.point
    with duckdb.connect(str(settings.db_path), read_only=True) as con:
        versions = con.execute("select count(distinct model_version), count(*) from customer_embeddings").fetchall()[0]
        hashed = con.execute(f"select count(*) from {INPUTS_TABLE}").fetchall()[0][0] \
            if INPUTS_TABLE in {t for (t,) in con.execute("select table_name from duckdb_tables()").fetchall()} else None
    assert versions[0] == 1 and hashed in (None, versions[1])  # the old table without hashes, or both new

    assert_succeeds(settings, "refresh", "--audiences", "audiences.yml")
    assert stray_files(settings) == [] and stray_relations(settings) == []
    assert_equals_full_score(settings)
    ids, vectors = stored_embeddings(settings)
    loaded = load_index(settings.index_dir)
    assert loaded.manifest.row_count == len(ids)
    assert np.allclose(loaded.vectors(ids[:50]), vectors[:50] / np.linalg.norm(vectors[:50], axis=1, keepdims=True), atol=1e-5)
    with duckdb.connect(str(settings.serving_db_path), read_only=True) as con:
        assert con.execute("select count(*) from latest_audience_members where audience_name = 'vip'").fetchall()[0][0] > 0


@pytest.mark.slow
def test_kill_9_while_merging_customer_features_then_refresh_completes(private_copy, tmp_path):
    """The kill strikes inside dbt's merge of customer_features (its runtime SQL written: the changed customers
    are computed, delete+insert not yet committed). customer_features and the profiles stay whole (the old rows
    or the new, never some of each), the audience is unchanged, and the next refresh, finding the aggregates
    merged beyond what it recorded, rebuilds them and equals a full build."""
    from tests.audiences.test_refresh_incremental import append_same_day_orders, record_current_build, serving_differences
    from tests.helpers import copy_warehouse

    settings = private_copy
    (settings.db_path.parent / "audiences.yml").write_text(AUDIENCES_YAML)
    record_current_build(settings)
    append_same_day_orders(settings)
    before = published_state(settings)

    killed = kill_at(settings, "refresh", "--audiences", "audiences.yml",
                     file_glob=".dbt/*/target/run/lookalike/models/marts/customer_features.sql")
    assert wait_gone(killed.children) == []
    now = published_state(settings)
    assert changed({"serving": before["serving"]}, {"serving": now["serving"]}) == [], killed.point
    with duckdb.connect(str(settings.db_path), read_only=True) as con:
        customers = con.execute("select count(*) from stg_customers").fetchall()[0][0]
        for table in ("customer_features", "customer_profiles_text"):
            assert con.execute(f"select count(*), count(distinct customer_id) from {table}").fetchall()[0] == (customers, customers)

    rerun = assert_succeeds(settings, "refresh", "--audiences", "audiences.yml")
    assert "order aggregates rebuilt in full (the order aggregates changed since refresh built them" in rerun.output, rerun.output
    assert stray_files(settings) == [] and stray_relations(settings) == []
    assert serving_differences(settings, copy_warehouse(settings, tmp_path / "rebuilt")) == {}
