"""Model layer, export and scoring: the ONNX manifest, torch/ORT parity, int8, scoring through a
real `dbt run`, mismatch errors.

Reads the shared scored warehouse (conftest: a 3-layer word-location model "shared", exported
with its int8 twin, every customer scored by dbt); anything that writes works on a private copy.
"""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pytest
import torch

from lookalike_cli.errors import LookalikeError
from lookalike_cli.model.export import load_tower
from lookalike_cli.model.features import encode
from lookalike_cli.model.scoring import Encoder
from tests.helpers import copy_warehouse, run_cli

pytestmark = pytest.mark.slow  # the shared scored warehouse: dbt build, training, dbt run

MODEL = "shared"


def test_manifest_describes_the_graph(scored_warehouse):
    manifest = json.loads((scored_warehouse.onnx_dir / f"{MODEL}.json").read_text())
    assert [i["name"] for i in manifest["inputs"]] == ["dense", "categorical", "shares", "location"]
    assert manifest["config"]["layers"] == 3 and manifest["output"]["shape"] == ["batch", 128]
    assert manifest["label"] == "similarity_orders" and len(manifest["training"]["data_fingerprint"]) == 16
    assert manifest["features"]["vocabularies"]["gender"] and 0 < manifest["metrics"]["test_mae"] < 1
    assert manifest["model_version"].startswith(f"{MODEL}-") and manifest["quantized"]["int8"] == f"{MODEL}.int8.onnx"
    assert not (scored_warehouse.onnx_dir / "__init__.py").exists()


def test_torch_and_onnx_runtime_agree(scored_warehouse):
    manifest = scored_warehouse.onnx_dir / f"{MODEL}.json"
    encoder = Encoder(manifest)
    with duckdb.connect(str(scored_warehouse.db_path), read_only=True) as con:
        batch = con.sql("select * from customer_features order by customer_id limit 1000").to_arrow_table()
    with torch.no_grad():
        eager = load_tower(manifest)(**{k: torch.from_numpy(v) for k, v in encode(batch, encoder.spec).items()}).numpy()
    onnx_out = encoder.embed(batch)
    assert np.abs(eager - onnx_out).max() < 1e-4
    np.testing.assert_allclose(np.linalg.norm(onnx_out, axis=1), 1.0, atol=1e-5)
    int8 = Encoder(manifest, quantize="int8").embed(batch)
    assert (int8 * onnx_out).sum(axis=1).min() >= 0.999


def test_dbt_run_materialises_customer_embeddings(scored_warehouse):
    with duckdb.connect(str(scored_warehouse.db_path), read_only=True) as con:
        types = dict(con.execute("select column_name, data_type from information_schema.columns "
                                 "where table_name = 'customer_embeddings'").fetchall())
        counts = con.execute("""select (select count(*) from customer_embeddings), (select count(*) from customer_features),
                                       count(distinct model_version), min(model_version) from customer_embeddings""").fetchall()[0]
        sample = con.sql("select customer_id, embedding from customer_embeddings order by customer_id limit 200").to_arrow_table()
        features = con.sql(f"select * from customer_features where customer_id in ({','.join(map(str, sample['customer_id'].to_pylist()))}) "
                           "order by customer_id").to_arrow_table()
    manifest = json.loads((scored_warehouse.onnx_dir / f"{MODEL}.json").read_text())
    assert types == {"customer_id": "BIGINT", "embedding": "FLOAT[128]", "model_version": "VARCHAR"}
    assert counts[0] == counts[1] and counts[2] == 1 and counts[3] == manifest["model_version"]
    stored = sample["embedding"].combine_chunks().flatten().to_numpy().reshape(-1, 128)
    np.testing.assert_allclose(stored, Encoder(scored_warehouse.onnx_dir / f"{MODEL}.json").embed(features), atol=1e-6)


def test_mismatch_fails_clearly_and_keeps_previous_table(scored_warehouse, tmp_path):
    settings = copy_warehouse(scored_warehouse, tmp_path / "mismatch")
    with duckdb.connect(str(settings.db_path), read_only=True) as con:
        before = con.execute("select count(*), min(model_version) from customer_embeddings").fetchall()
    result = run_cli(settings, "score", "--model", MODEL, "--model-version", f"{MODEL}-000000000000", expect_exit=1)
    assert f"but version {MODEL}-000000000000 was requested" in result.output
    # A features table that lost a column the manifest names.
    with duckdb.connect(str(settings.db_path)) as con:
        con.execute("create table customer_features_backup as select * from customer_features")
        con.execute("alter table customer_features drop column location_area")
    with pytest.raises(LookalikeError, match="missing column"):
        encoder = Encoder(settings.onnx_dir / f"{MODEL}.json")
        with duckdb.connect(str(settings.db_path), read_only=True) as con:
            encoder.check(con.table("customer_features").columns, con)
    with duckdb.connect(str(settings.db_path), read_only=True) as con:
        after = con.execute("select count(*), min(model_version) from customer_embeddings").fetchall()
        leftovers = con.execute("select count(*) from information_schema.tables where table_name like 'customer_embeddings%dbt%'").fetchall()
    assert after == before and leftovers == [(0,)]


def test_dbt_model_with_missing_column_keeps_previous_table(scored_warehouse, tmp_path):
    settings = copy_warehouse(scored_warehouse, tmp_path / "dropped")
    with duckdb.connect(str(settings.db_path)) as con:
        before = con.execute("select count(*), min(model_version) from customer_embeddings").fetchall()
        # customer_features is a dbt table: swap in a copy without a column, as a broken upstream would.
        con.execute("create or replace table customer_features as select * exclude (gender) from customer_features")
    result = run_cli(settings, "score", "--model", MODEL, expect_exit=1)
    assert "missing column(s) gender" in result.output
    with duckdb.connect(str(settings.db_path), read_only=True) as con:
        assert con.execute("select count(*), min(model_version) from customer_embeddings").fetchall() == before


def test_unknown_model_is_a_clear_error(scored_warehouse):
    result = run_cli(scored_warehouse, "score", "--model", "nope", expect_exit=1)
    assert "No model manifest" in result.output and "lookalike train" in result.output


def test_dbt_python_model_builds_the_same_table_as_lookalike_score(scored_warehouse, tmp_path):
    # `lookalike score` writes in process; dbt users (`dbt run`, `lookalike build`) get the same rows from the Python model.
    settings = copy_warehouse(scored_warehouse, tmp_path / "dbt_path")
    read = "select customer_id, embedding, model_version from customer_embeddings order by customer_id"
    with duckdb.connect(str(settings.db_path)) as con:
        in_process = con.sql(read).to_arrow_table()
        con.execute("drop table customer_embeddings")
    run_cli(settings, "dbt", "run", "--select", "customer_embeddings",
            "--vars", json.dumps({"score_customers": True, "lookalike_model": MODEL}))
    with duckdb.connect(str(settings.db_path), read_only=True) as con:
        from_dbt = con.sql(read).to_arrow_table()
    assert from_dbt.num_rows == in_process.num_rows > 0
    assert from_dbt["customer_id"].equals(in_process["customer_id"]) and from_dbt["model_version"].equals(in_process["model_version"])
    np.testing.assert_array_equal(from_dbt["embedding"].combine_chunks().flatten().to_numpy(),
                                  in_process["embedding"].combine_chunks().flatten().to_numpy())
