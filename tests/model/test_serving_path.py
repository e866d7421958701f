"""The scoring path's fast parts without dbt: the exported ServingTower against the trained tower,
int8 keeping the first layer fp32, the scoring stream's prefetch, and the in-process table write."""

from __future__ import annotations

import threading

import duckdb
import numpy as np
import onnx
import pyarrow as pa
import pytest
import torch

from benchmarks.bench_scoring import synthetic_inputs
from lookalike_cli.errors import LookalikeError
from lookalike_cli.model.config import TrainOptions
from lookalike_cli.model.export import export_model, load_tower, quantize_int8
from lookalike_cli.model.features import CATEGORICAL_COLUMNS, DENSE_COLUMNS, FeatureSpec
from lookalike_cli.model.scoring import Encoder, prefetched, write_embeddings
from lookalike_cli.model.tower import ServingTower
from lookalike_cli.model.train import TrainResult, build_tower


def spec_for(location: str) -> FeatureSpec:
    vocab = {c: [f"v{i}" for i in range(3 + i)] for i, c in enumerate(CATEGORICAL_COLUMNS)}
    return FeatureSpec(list(DENSE_COLUMNS), list(CATEGORICAL_COLUMNS), vocab, n_categories=40, location=location,
                       dense_mean=list(np.linspace(0.5, 3.0, len(DENSE_COLUMNS))), dense_std=list(np.linspace(0.8, 2.0, len(DENSE_COLUMNS))))


def trained_like(location: str, layers: int, scale_shares: bool) -> tuple[FeatureSpec, TrainOptions, torch.nn.Module]:
    spec = spec_for(location)
    options = TrainOptions(layers=layers, location=location, seed=0, scale_shares=scale_shares)
    torch.manual_seed(layers)
    shares = torch.from_numpy(synthetic_inputs(spec, 500, seed=1)["shares"])
    tower = build_tower(spec, options, shares).eval()
    # Random biases, so folding the z-scores into them is really tested (nn.Linear starts them small).
    with torch.no_grad():
        for module in tower.mlp:
            if isinstance(module, torch.nn.Linear):
                module.bias.uniform_(-0.5, 0.5)
    return spec, options, tower


def inputs_with_extremes(spec: FeatureSpec, rows: int) -> dict[str, np.ndarray]:
    inputs = synthetic_inputs(spec, rows, seed=2)
    # Shares far outside the training range and negative values: both clip bounds of the z-score bind.
    inputs["shares"][: rows // 4] *= 40.0
    inputs["shares"][rows // 4 : rows // 2] = -inputs["shares"][rows // 4 : rows // 2] * 40.0
    inputs["dense"][:10] = -3.0  # clamped at 0 before log1p
    return inputs


@pytest.mark.parametrize("location", ["none", "word", "sentence"])
@pytest.mark.parametrize("layers,scale_shares", [(1, False), (3, True), (2, True)])
def test_serving_tower_computes_the_trained_tower(location, layers, scale_shares):
    spec, _, tower = trained_like(location, layers, scale_shares)
    inputs = {k: torch.from_numpy(v) for k, v in inputs_with_extremes(spec, 400).items()}
    with torch.no_grad():
        expected, served = tower(**inputs), ServingTower(tower).eval()(**inputs)
    assert tower.scale_shares == scale_shares
    np.testing.assert_allclose(served.numpy(), expected.numpy(), atol=2e-6)


def test_exported_graph_and_int8_twin(tmp_path):
    spec, options, tower = trained_like("word", 3, True)
    manifest = export_model(TrainResult(tower=tower, spec=spec, options=options, metrics={}, fingerprint="test"), tmp_path, "t")
    inputs = inputs_with_extremes(spec, 3000)  # more than one 2,048-row slice: the threaded path
    with torch.no_grad():
        eager = load_tower(manifest)(**{k: torch.from_numpy(v) for k, v in inputs.items()}).numpy()
    fp32 = Encoder(manifest, threads=2).run(inputs)
    assert np.abs(fp32 - eager).max() < 1e-5
    int8_path = quantize_int8(manifest)
    graph = onnx.load(str(int8_path)).graph
    relu_outputs = {o for n in graph.node if n.op_type == "Relu" for o in n.output}
    producers = {o: n for n in graph.node for o in n.output}
    quantized_inputs = [producers[n.input[0]].input[0] for n in graph.node if n.op_type == "MatMulInteger"]
    # Every int8 MatMul is a hidden layer (fed by a ReLU through its dynamic quantiser); layer 1's three stay fp32.
    assert len(quantized_inputs) == 2 and set(quantized_inputs) <= relu_outputs
    assert sum(n.op_type == "MatMul" for n in graph.node) == 3
    int8 = Encoder(manifest, quantize="int8").run(inputs)
    assert (int8 * fp32).sum(axis=1).min() > 0.99


def test_prefetched_keeps_order_and_reraises_errors():
    assert list(prefetched(iter(range(50)), depth=2)) == list(range(50))

    def failing():
        yield 1
        raise LookalikeError("bad batch")

    got = []
    with pytest.raises(LookalikeError, match="bad batch"):
        for item in prefetched(failing(), depth=2):
            got.append(item)
    assert got == [1]


def test_prefetched_stops_its_producer_when_the_consumer_stops():
    produced, closed = [], threading.Event()

    def endless():
        try:
            for i in range(10**9):
                produced.append(i)
                yield i
        finally:
            closed.set()

    stream = prefetched(endless(), depth=2)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()
    assert closed.wait(5) and len(produced) <= 3 + 2 + 1


def embeddings_batch(ids: list[int], version: str) -> pa.RecordBatch:
    vectors = np.ones((len(ids), 4), np.float32) / 2
    return pa.RecordBatch.from_arrays([pa.array(ids, pa.int64()), pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 4),
                                       pa.array([version] * len(ids))], names=["customer_id", "embedding", "model_version"])


def test_write_embeddings_replaces_the_table_or_keeps_it(tmp_path):
    schema = embeddings_batch([1], "v").schema
    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        first = pa.RecordBatchReader.from_batches(schema, iter([embeddings_batch([1, 2], "v1"), embeddings_batch([3], "v1")]))
        assert write_embeddings(con, first) == 3

        def failing():
            yield embeddings_batch([7, 8, 9, 10], "v2")
            raise LookalikeError("customer_features.category_ids holds category_id 999")

        with pytest.raises(LookalikeError, match="category_id 999"):
            write_embeddings(con, pa.RecordBatchReader.from_batches(schema, failing()))
        assert con.execute("select count(*), min(model_version), any_value(typeof(embedding)) from customer_embeddings").fetchall() == [(3, "v1", "FLOAT[4]")]
