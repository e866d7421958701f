"""Incremental refresh on a real scored warehouse: only customers whose model inputs changed are re-scored,
their embeddings equal a full score's, and the index is updated in place and finds them."""

from __future__ import annotations

import re

import duckdb
import numpy as np
import pytest

from lookalike_cli.audiences.refresh import fingerprint, raw_tables, write_state
from lookalike_cli.index.faiss_index import build_index, load_index, read_manifest, update_index
from lookalike_cli.model.manifest import find_manifest
from lookalike_cli.model.rescoring import INPUTS_TABLE, rescore_changed
from lookalike_cli.model.scoring import score_relation
from lookalike_cli.vectors import ids_and_vectors, normalise
from tests.helpers import copy_warehouse, run_cli

pytestmark = pytest.mark.slow


def stored_embeddings(settings) -> tuple[np.ndarray, np.ndarray]:
    with duckdb.connect(str(settings.db_path), read_only=True) as con:
        table = con.sql("select customer_id, embedding from customer_embeddings order by customer_id").to_arrow_table()
    return ids_and_vectors(table.combine_chunks().to_batches()[0])


def full_score(settings) -> tuple[np.ndarray, np.ndarray]:
    """Every customer scored from scratch with the latest model, in memory (the table is left alone)."""
    with duckdb.connect(str(settings.db_path), read_only=True) as con:
        manifest = find_manifest(settings.onnx_dir)
        stream = score_relation(con.sql("select * from customer_features order by customer_id"), con,
                                onnx_dir=settings.onnx_dir, model=str(manifest))
        table = stream.read_all()
    return ids_and_vectors(table.combine_chunks().to_batches()[0])


def assert_equals_full_score(settings) -> None:
    ids, vectors = stored_embeddings(settings)
    full_ids, full_vectors = full_score(settings)
    assert np.array_equal(ids, full_ids)
    cosine = np.einsum("ij,ij->i", normalise(vectors), normalise(full_vectors))
    assert cosine.min() >= 0.9999, cosine.min()


def test_refresh_rescores_only_customers_with_new_order_lines(scored_warehouse, tmp_path):
    settings = copy_warehouse(scored_warehouse, tmp_path)
    # The fixture's `lookalike build` is current for these raw tables: record it as refresh would have, so
    # the test runs dbt once. The embeddings were scored outside refresh: it re-scores everyone, records hashes.
    with duckdb.connect(str(settings.db_path), read_only=True) as con:
        raw = fingerprint(con, raw_tables(con))
    write_state(settings, "build", raw)
    first = run_cli(settings, "refresh").output
    assert "build: skipped" in first, first
    assert re.search(r"score: ran .*all [\d,]+ of [\d,]+ customers re-scored", first), first
    touched = [11, 222, 1333]
    with duckdb.connect(str(settings.db_path)) as con:
        # Same-day lines (a millisecond after the last one): as_of does not move, so only these three change.
        con.execute("""insert into raw.order_lines by name
                       select * replace (order_id + 100000000 as order_id,
                                         (select max(ordered_at) from raw.order_lines) + interval 1 millisecond as ordered_at)
                       from raw.order_lines where customer_id in (11, 222, 1333)
                       qualify row_number() over (partition by customer_id order by order_id) <= 3""")
        before = dict(con.execute("select customer_id, scored_generation from customer_embedding_inputs").fetchall())
    index_before = read_manifest(settings.index_dir)

    again = run_cli(settings, "refresh").output
    assert f"3 of {len(before):,} customers re-scored" in again, again
    assert "index updated in place" in again, again
    with duckdb.connect(str(settings.db_path), read_only=True) as con:
        after = dict(con.execute("select customer_id, scored_generation from customer_embedding_inputs").fetchall())
    assert sorted(c for c in after if after[c] != before[c]) == touched
    assert_equals_full_score(settings)

    manifest = read_manifest(settings.index_dir)
    assert manifest.index_version != index_before.index_version and manifest.row_count == len(after)
    loaded = load_index(settings.index_dir)
    ids, vectors = stored_embeddings(settings)
    queries = normalise(vectors[np.isin(ids, touched)])
    sims, found = loaded.search(queries, 1)
    assert np.allclose(sims[:, 0], 1.0, atol=1e-5), sims  # each finds itself (or an identical vector)
    assert np.allclose(loaded.vectors(np.array(touched)), queries, atol=1e-6)


def test_rescore_deletes_vanished_customers_and_a_model_change_rescores_all(scored_warehouse, tmp_path):
    settings = copy_warehouse(scored_warehouse, tmp_path)
    first = rescore_changed(settings)
    assert first.full and first.scored == first.customers  # no hashes yet
    build_index(settings.db_path, settings.index_dir, progress=lambda _: None, embeddings_generation=first.generation)
    with duckdb.connect(str(settings.db_path)) as con:
        con.execute("update customer_features set total_spend = total_spend + 500 where customer_id in (5, 6, 7, 8)")
        con.execute("delete from customer_features where customer_id = 9")
    outcome = rescore_changed(settings)
    assert (outcome.full, outcome.scored, outcome.removed) == (False, 4, 1)
    assert_equals_full_score(settings)
    # Removed rows: IndexIDMap2 over the index cannot drop them in place, so refresh must rebuild.
    updated, why = update_index(settings.db_path, settings.index_dir, progress=lambda _: None)
    assert updated is None and "left customer_embeddings" in why, why

    assert rescore_changed(settings).scored == 0  # nothing changed since
    with duckdb.connect(str(settings.db_path)) as con:
        con.execute("update customer_embeddings set model_version = 'an-older-model'")
    outcome = rescore_changed(settings)
    assert outcome.full and "model changed" in outcome.reason
    with duckdb.connect(str(settings.db_path), read_only=True) as con:
        assert con.execute(f"select count(distinct scored_generation) from {INPUTS_TABLE}").fetchall()[0][0] == 1
