"""Incremental refresh on a real scored warehouse: only customers whose model inputs changed are re-scored,
their embeddings equal a full score's, and the index is updated in place and finds them; the dbt build merges
appended order lines into the held aggregates (equal to a full build's), and train builds the training side
refresh left behind."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import duckdb
import numpy as np
import pytest

from lookalike_cli.audiences.refresh import (AGGREGATES_STATE, ensure_training_current, fingerprint, plan_aggregates,
                                             raw_tables, read_state, write_state)
from lookalike_cli.index.faiss_index import build_index, load_index, read_manifest, update_index
from lookalike_cli.model.manifest import find_manifest
from lookalike_cli.model.rescoring import INPUTS_TABLE, rescore_changed
from lookalike_cli.model.scoring import score_relation
from lookalike_cli.vectors import ids_and_vectors, normalise
from lookalike_cli.warehouse.dbt_runner import run_dbt
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
    record_current_build(settings)
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
    assert re.search(r"order aggregates incremental \(\d+ order lines after", again), again
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


# --- the dbt build: serving models only, order aggregates merged -----------------------------------

def record_current_build(settings) -> None:
    """The fixture's `lookalike build` is current for its raw tables: record it as refresh's own build would."""
    with duckdb.connect(str(settings.db_path), read_only=True) as con:
        raw = fingerprint(con, raw_tables(con))
    write_state(settings, "build", raw)
    _, why, after = plan_aggregates(settings, {})
    assert after is not None and "no aggregates recorded" in why, why
    write_state(settings, AGGREGATES_STATE, json.dumps(after))


def append_next_day_orders(settings, every: int = 40) -> int:
    """Every `every`-th order copied as a new order of its customer, at noon the day after the last line."""
    with duckdb.connect(str(settings.db_path)) as con:
        con.execute(f"""insert into raw.order_lines by name
                        select * replace (order_id + 100000000 as order_id,
                                          cast(cast((select max(ordered_at) from raw.order_lines) as date) + 1 as timestamp)
                                          + interval 12 hour as ordered_at)
                        from raw.order_lines where order_id % {every} = 0""")
        return con.execute("select count(*) from raw.order_lines where order_id > 100000000").fetchall()[0][0]


def differing_columns(a, b, table: str) -> dict[str, int]:
    with duckdb.connect() as con:
        con.execute(f"attach '{a.db_path}' as a (read_only)")
        con.execute(f"attach '{b.db_path}' as b (read_only)")
        keys = [k for (k,) in con.execute(f"select column_name from (describe a.{table})").fetchall()
                if k in ("point_in_time", "customer_id", "customer_id_a", "customer_id_b", "category_id",
                         "first_ordered_day", "last_ordered_day")]
        differs = {}
        for column, kind in con.execute(f"select column_name, column_type from (describe a.{table})").fetchall():
            same = (f"abs(x.{column} - y.{column}) <= 1e-9 * greatest(1, abs(x.{column}))" if kind == "DOUBLE"
                    else f"x.{column} is not distinct from y.{column}")
            count = con.execute(f"select count(*) from a.{table} x full join b.{table} y using ({', '.join(keys)}) "
                                f"where not coalesce({same}, false)").fetchall()[0][0]
            if count:
                differs[column] = count
        return differs


def test_refresh_merges_new_lines_into_the_aggregates_and_equals_a_full_build(generated_warehouse, tmp_path):
    settings = copy_warehouse(generated_warehouse, tmp_path / "refreshed")
    record_current_build(settings)
    added = append_next_day_orders(settings)
    assert added > 500

    out = run_cli(settings, "refresh").output
    assert re.search(rf"order aggregates incremental \({added:,} order lines after 2025-12-31 [\d:.]+ aggregated", out), out
    assert "the training side is left to `lookalike train`" in out, out

    rebuilt = copy_warehouse(settings, tmp_path / "rebuilt")
    # The serving models in full (tables, no merge) on the same raw rows, beside the training-side checks
    # below (another file, another dbt process); dbt's tests ran in the refresh.
    with ThreadPoolExecutor(1) as pool:
        reference = pool.submit(run_dbt, rebuilt, ["run", "--select", "+customer_features", "+customer_profiles_text"],
                                echo=lambda _: None)

        def training_cutoffs() -> tuple:
            with duckdb.connect(str(settings.db_path), read_only=True) as con:
                return con.execute("select (select max(features_as_of) from training_features), "
                                   "(select feature_end_at from int_time_windows), (select max(features_as_of) from customer_features)"
                                   ).fetchall()[0]

        # The new day moved every cutoff; refresh left the training side as it was: train must not learn from it as is.
        trained_as_of, feature_end_at, serving_as_of = training_cutoffs()
        assert serving_as_of.isoformat() == "2026-01-02T00:00:00" and trained_as_of < feature_end_at
        built = ensure_training_current(settings)
        assert built and "training side" in built, built
        assert training_cutoffs()[0] == feature_end_at
        assert ensure_training_current(settings) is None  # current now
        reference.result()
    # Date-relative features (recency, tenure, the 90-day recent_*) moved by the day, from the merged totals.
    # int_customer_orders_aggregated and what reads it merged every customer (the cutoff moved), as a full build.
    for table in ("int_customer_orders_aggregated", "customer_features", "categories", "customer_profiles_text"):
        assert differing_columns(settings, rebuilt, table) == {}, table


def append_same_day_orders(settings, every: int = 40, offset: int = 100000000) -> int:
    """Every `every`-th order copied as a new order of its customer a millisecond after the last line (an intraday
    load: the serving cutoff stays), every tenth of them returned in full (negative amounts)."""
    with duckdb.connect(str(settings.db_path)) as con:
        con.execute(f"""insert into raw.order_lines by name
                        select * replace (order_id + {offset} as order_id,
                                          (select max(ordered_at) from raw.order_lines) + interval 1 millisecond as ordered_at,
                                          case when order_id % {every * 10} = 0 then -abs(amount) else amount end as amount)
                        from raw.order_lines where order_id % {every} = 0""")
        return con.execute(f"select count(*) from raw.order_lines where order_id > {offset}").fetchall()[0][0]


def serving_differences(refreshed, rebuilt) -> dict[str, dict[str, int]]:
    """Every serving model a merge updates in part, refreshed vs built in full (tables, no merge) on the same rows."""
    run_dbt(rebuilt, ["run", "--select", "+customer_features", "+customer_profiles_text"], echo=lambda _: None)
    tables = ("int_customer_order_days", "int_customer_orders_aggregated", "categories", "customer_features", "customer_profiles_text")
    return {table: differs for table in tables if (differs := differing_columns(refreshed, rebuilt, table))}


def test_same_day_lines_update_only_the_changed_customers_and_equal_a_full_build(generated_warehouse, tmp_path):
    settings = copy_warehouse(generated_warehouse, tmp_path / "refreshed")
    record_current_build(settings)
    with duckdb.connect(str(settings.db_path), read_only=True) as con:
        before = dict(con.execute("select customer_id, profile_text from customer_profiles_text").fetchall())
        as_of = con.execute("select max(features_as_of) from customer_features").fetchall()[0][0]
    added = append_same_day_orders(settings)
    assert added > 500

    out = run_cli(settings, "refresh").output
    assert re.search(rf"order aggregates incremental \({added:,} order lines after 2025-12-31 [\d:.]+ aggregated", out), out
    assert "categories changed" not in out, out
    assert serving_differences(settings, copy_warehouse(settings, tmp_path / "rebuilt")) == {}
    with duckdb.connect(str(settings.db_path), read_only=True) as con:
        assert con.execute("select max(features_as_of) from customer_features").fetchall()[0][0] == as_of  # same day
        after = dict(con.execute("select customer_id, profile_text from customer_profiles_text").fetchall())
        touched = {c for (c,) in con.execute("select distinct customer_id from raw.order_lines where order_id > 100000000").fetchall()}
    changed = {c for c in after if after[c] != before.get(c)}
    # The text changed for customers with new lines and for a few whose spend band moved with the others' spend.
    assert changed and changed - touched and len(changed - touched) < len(touched), (len(changed), len(touched))

    # A second intraday load bringing a category the data never had: its id shifts others', so every customer's
    # features and profile are computed again, and still equal a full build's.
    with duckdb.connect(str(settings.db_path)) as con:
        con.execute("""insert into raw.order_lines by name
                       select * replace (order_id + 200000000 as order_id, 'Aardvark Supplies' as category,
                                         (select max(ordered_at) from raw.order_lines) + interval 1 millisecond as ordered_at)
                       from raw.order_lines where order_id = (select min(order_id) from raw.order_lines where amount > 0)""")
    out = run_cli(settings, "refresh").output
    assert "order aggregates incremental" in out and "the categories changed" in out, out
    assert serving_differences(settings, copy_warehouse(settings, tmp_path / "rebuilt-2")) == {}


def test_earlier_lines_changed_or_orders_reopened_mean_a_full_rebuild(generated_warehouse, tmp_path):
    settings = copy_warehouse(generated_warehouse, tmp_path)
    record_current_build(settings)
    with duckdb.connect(str(settings.db_path)) as con:
        last = con.execute("select max(ordered_at) from raw.order_lines").fetchall()[0][0]
        con.execute("create table kept as select * from raw.order_lines")
    state = read_state(settings)
    assert plan_aggregates(settings, state)[0] == str(last)  # nothing new: merging nothing is sound

    cases = [
        # A line of an order already aggregated, landing after the last line: the order would count twice.
        ("orders got lines after", "insert into raw.order_lines by name select * replace (ordered_at + interval 1 hour as ordered_at) "
                                   "from raw.order_lines where ordered_at = (select max(ordered_at) from raw.order_lines) limit 1"),
        # A back-dated line, an edit, a delete: the held totals no longer describe the lines they cover.
        ("changed (added, edited or deleted)", "insert into raw.order_lines by name select * replace (order_id + 100000000 as order_id, "
                                               "timestamp '2025-03-01 10:00' as ordered_at) from raw.order_lines limit 1"),
        ("changed (added, edited or deleted)", "update raw.order_lines set amount = amount + 1 "
                                               "where order_id = (select min(order_id) from raw.order_lines)"),
        ("changed (added, edited or deleted)", "delete from raw.order_lines where order_id = (select min(order_id) from raw.order_lines)"),
    ]
    for expected, change in cases:
        with duckdb.connect(str(settings.db_path)) as con:
            con.execute("delete from raw.order_lines; insert into raw.order_lines select * from kept")
            con.execute(change)
        after, why, _ = plan_aggregates(settings, state)
        assert after is None and expected in why, (expected, why)

    # customer_features merges only customers with new order lines: any other raw table changed means a rebuild.
    with duckdb.connect(str(settings.db_path)) as con:
        con.execute("delete from raw.order_lines; insert into raw.order_lines select * from kept")
        con.execute("update raw.customers set city = 'Elsewhere' where customer_id = (select min(customer_id) from raw.customers)")
    after, why, _ = plan_aggregates(settings, state)
    assert after is None and "other than order_lines changed" in why, why


def test_a_merge_checks_uniqueness_on_the_rows_it_wrote(generated_warehouse, tmp_path):
    from lookalike_cli.audiences.refresh import MERGE_SCOPE_TABLE
    from lookalike_cli.errors import LookalikeError

    settings = copy_warehouse(generated_warehouse, tmp_path)
    record_current_build(settings)
    with duckdb.connect(str(settings.db_path), read_only=True) as con:
        through = con.execute("select max(ordered_at) from raw.order_lines").fetchall()[0][0]
    append_same_day_orders(settings)
    out = run_cli(settings, "refresh").output
    assert "order aggregates incremental" in out, out
    with duckdb.connect(str(settings.db_path)) as con:
        assert con.execute("select count(*) from information_schema.tables where table_name = ?",
                           [MERGE_SCOPE_TABLE]).fetchall()[0][0] == 0  # only for the length of the merging build
        merged = con.execute("select count(*) from int_customer_category_counts_serving where last_ordered_at > ?",
                             [through]).fetchall()[0][0]
        assert merged > 0
    # The refresh's own uniqueness test of the merged aggregate read only the rows after the merge's start.
    results = [json.loads(p.read_text()) for p in settings.db_path.parent.glob(".dbt/*/target/run_results.json")]
    compiled = [r["compiled_code"] for run in results for r in run["results"]
                if r["unique_id"].startswith("test.lookalike.unique_combination_int_customer_category_counts_serving")]
    assert compiled and all("merged_after" in sql for sql in compiled), compiled
    with duckdb.connect(str(settings.db_path)) as con:
        # A duplicate among the rows the merge wrote, seen by the scoped test as a refresh runs it.
        con.execute("insert into int_customer_category_counts_serving select * from int_customer_category_counts_serving "
                    "where last_ordered_at > ? limit 1", [through])
        con.execute(f"create table {MERGE_SCOPE_TABLE} as select cast(? as timestamp) as merged_after", [through])
    merge_test = ["test", "--select", "int_customer_category_counts_serving", "--vars", '{"incremental_aggregates": true}']
    with pytest.raises(LookalikeError, match="unique_combination_int_customer_category_counts_serving"):
        run_dbt(settings, merge_test, echo=lambda _: None)
    with duckdb.connect(str(settings.db_path)) as con:
        con.execute("delete from int_customer_category_counts_serving where last_ordered_at > ?", [through])
        # A duplicate among the held rows: outside the merge's scope, found by any other build's test.
        con.execute("insert into int_customer_category_counts_serving select * from int_customer_category_counts_serving "
                    "where last_ordered_at <= ? limit 1", [through])
    run_dbt(settings, merge_test, echo=lambda _: None)
    with pytest.raises(LookalikeError, match="unique_combination_int_customer_category_counts_serving"):
        run_dbt(settings, ["test", "--select", "int_customer_category_counts_serving"], echo=lambda _: None)
