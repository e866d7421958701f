"""In-place index update (what `lookalike refresh` does after re-scoring a few customers), on planted vectors.

No dbt: the warehouse holds customer_embeddings and the customer_embedding_inputs rows refresh writes."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest

from lookalike_cli.index.faiss_index import build_index, load_index, read_manifest, update_index
from lookalike_cli.model.rescoring import INPUTS_TABLE
from tests.helpers import embeddings_table, planted_vectors

CUSTOMERS = 6000
QUIET = lambda _: None  # noqa: E731


@pytest.fixture
def indexed(tmp_path):
    """An IVF index over planted vectors, built at scored_generation 1 of every customer."""
    db, index_dir = tmp_path / "w.duckdb", tmp_path / "indexes"
    _, vectors = planted_vectors(CUSTOMERS, seed=4)
    ids = np.arange(1, CUSTOMERS + 1, dtype=np.int64) * 10
    with duckdb.connect(str(db)) as con:
        con.register("embeddings", embeddings_table(ids, vectors))
        con.execute(f"create table customer_embeddings as select customer_id, embedding::float[{vectors.shape[1]}] as embedding, "
                    "model_version from embeddings")
        con.execute(f"create table {INPUTS_TABLE} as select customer_id, hash(customer_id) as feature_hash, "
                    "1::bigint as scored_generation from customer_embeddings")
    build_index(db, index_dir, index_type="ivf", nlist=16, progress=QUIET, embeddings_generation=1)
    return db, index_dir, ids, vectors


def rescore(db, ids: np.ndarray, vectors: np.ndarray, generation: int) -> None:
    """What rescore_changed writes for these customers: new vectors (new customers appended), a later generation."""
    with duckdb.connect(str(db)) as con:
        con.register("changed", embeddings_table(ids, vectors))
        con.execute("delete from customer_embeddings where customer_id in (select customer_id from changed)")
        con.execute(f"delete from {INPUTS_TABLE} where customer_id in (select customer_id from changed)")
        con.execute("insert into customer_embeddings select * from changed")
        con.execute(f"insert into {INPUTS_TABLE} select customer_id, 0, {generation} from changed")


def test_ivf_update_replaces_moved_vectors_and_adds_new_customers(indexed):
    db, index_dir, ids, vectors = indexed
    rng = np.random.default_rng(1)
    moved = np.sort(rng.choice(ids, 120, replace=False))
    # Each moved customer takes another customer's vector (another planted cluster, most often).
    donors = rng.choice(CUSTOMERS, len(moved), replace=False)
    new_ids = np.array([999_990, 999_991], dtype=np.int64)
    changed_ids = np.concatenate([moved, new_ids])
    changed_vectors = np.concatenate([vectors[donors], vectors[:2]])
    rescore(db, changed_ids, changed_vectors, generation=2)

    manifest, why = update_index(db, index_dir, progress=QUIET)
    assert manifest is not None and "updated in place" in why, why
    assert manifest.row_count == CUSTOMERS + 2 and manifest.embeddings_generation == 2
    assert manifest.self_check["updated_rows_found"] >= 0.95
    loaded = load_index(index_dir)
    # Stored vectors by id are the new ones, and every other customer's is untouched.
    assert np.allclose(loaded.vectors(changed_ids), changed_vectors, atol=1e-6)
    kept = np.setdiff1d(ids, moved)[:200]
    assert np.allclose(loaded.vectors(kept), vectors[np.searchsorted(ids, kept)], atol=1e-6)
    # A moved customer is found at its new place, not its old one.
    sims, found = loaded.search(vectors[donors[:20]], 3)
    assert all(moved[i] in found[i] for i in range(20))
    old_places = vectors[np.searchsorted(ids, moved[:20])]
    _, found_old = loaded.search(old_places, 1)
    assert not np.any(found_old[:, 0] == moved[:20])

    # Nothing re-scored since: the same index stays valid (an update with nothing to do).
    again, _ = update_index(db, index_dir, progress=QUIET)
    assert again is not None and again.row_count == manifest.row_count


def test_large_changes_removals_and_outside_builds_mean_a_rebuild(indexed):
    db, index_dir, ids, vectors = indexed
    rescore(db, ids[: CUSTOMERS // 4], vectors[: CUSTOMERS // 4][::-1].copy(), generation=2)
    before = read_manifest(index_dir)
    updated, why = update_index(db, index_dir, progress=QUIET)
    assert updated is None and "> 20%" in why, why
    assert read_manifest(index_dir) == before  # nothing written

    with duckdb.connect(str(db)) as con:
        con.execute(f"update {INPUTS_TABLE} set scored_generation = 1")
        con.execute(f"delete from {INPUTS_TABLE} where customer_id = 10")
        con.execute("delete from customer_embeddings where customer_id = 10")
    updated, why = update_index(db, index_dir, progress=QUIET)
    assert updated is None and "left customer_embeddings" in why, why

    build_index(db, index_dir, index_type="ivf", nlist=16, progress=QUIET)  # outside refresh: no generation
    updated, why = update_index(db, index_dir, progress=QUIET)
    assert updated is None and "outside refresh" in why, why
