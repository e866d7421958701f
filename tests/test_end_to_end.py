"""The whole pipeline through the CLI on generated data: dbt-built features, a trained
two-tower model exported to ONNX, scoring inside dbt, a FAISS index, an expanded audience
published to the serving file, and the known answer planted by the generator."""

from __future__ import annotations

import duckdb
import pytest

from tests.helpers import copy_warehouse, run_cli

pytestmark = pytest.mark.slow  # the shared scored warehouse: the whole pipeline


@pytest.fixture(scope="module")
def end_to_end(scored_warehouse, tmp_path_factory):
    # The shared fixture ran train (3 layers, word location), score (dbt) and build-index.
    return copy_warehouse(scored_warehouse, tmp_path_factory.mktemp("end_to_end"))


def test_expansion_recovers_a_planted_segment(end_to_end):
    settings = end_to_end
    with duckdb.connect(str(settings.db_path), read_only=True) as con:
        segment, base_rate = con.execute("""
            select segment_id, count(*) / sum(count(*)) over () as share
            from raw.planted_segments group by segment_id order by count(*) desc limit 1 offset 3
        """).fetchone()
    result = run_cli(
        settings, "expand", "--name", "planted",
        "--seed-sql", f"select customer_id from raw.planted_segments where segment_id = {segment} order by customer_id limit 100",
        "--size", "150",
    )
    assert "planted" in result.output
    with duckdb.connect(str(settings.db_path), read_only=True) as con:
        con.execute(f"attach '{settings.serving_db_path}' as serving (read_only)")
        members, precision = con.execute(f"""
            select count(*), avg(case when p.segment_id = {segment} then 1.0 else 0.0 end)
            from serving.latest_audience_members m join raw.planted_segments p using (customer_id)
            where m.audience_name = 'planted'
        """).fetchone()
        model_version = con.execute("select model_version from serving.latest_audiences where name = 'planted'").fetchone()[0]
        scored_version = con.execute("select distinct model_version from customer_embeddings").fetchall()
    assert members == 150
    # Precision far above the segment's base rate (known answer planted by the generator).
    assert precision > 3 * base_rate, (precision, base_rate)
    assert scored_version == [(model_version,)]


def test_every_customer_is_scored(scored_warehouse):
    with duckdb.connect(str(scored_warehouse.db_path), read_only=True) as con:
        features, embeddings, norm_error = con.execute("""
            select (select count(*) from customer_features), count(*),
                   max(abs(list_dot_product(embedding::float[], embedding::float[]) - 1))
            from customer_embeddings
        """).fetchone()
    assert embeddings == features
    assert norm_error < 1e-4
