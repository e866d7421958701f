"""The seed recall probe: nprobe / efSearch raised on the queries about to be searched, for that search only.

Seeds from the densest cluster of a warehouse, an index whose manifest was given a small nprobe (as if
the self-check on random customers had stopped there): recall@10 against an exact search done here,
before and after the probe."""

from __future__ import annotations

import json
from dataclasses import replace

import faiss
import numpy as np
import pytest

from lookalike_cli.index.faiss_index import MANIFEST_FILE, build_index, load_index, recall_at_k
from lookalike_cli.index.recall_probe import PROBE_QUERIES, probe_recall
from tests.helpers import build_dense_seed_warehouse

SEEDS = 200
# Below the probe's target on the dense cluster's queries (recall@10 ~0.4-0.7 there), as a self-check on
# random customers can leave it.
SMALL = {"ivf": ("nprobe", 4), "ivf_sq8": ("nprobe", 2), "hnsw": ("ef_search", 10)}


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    root = tmp_path_factory.mktemp("recall-probe")
    data = build_dense_seed_warehouse(root / "warehouse.duckdb")
    return {"root": root, "db": root / "warehouse.duckdb", **data}


def with_search_param(dense, index_type: str) -> tuple:
    """The index of `index_type` over the warehouse, its manifest file rewritten to the small SMALL value."""
    folder = dense["root"] / index_type
    if not (folder / MANIFEST_FILE).exists():
        build_index(dense["db"], folder, index_type=index_type, nlist=100 if index_type != "hnsw" else None, m=4,
                    progress=quiet)
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        key, value = SMALL[index_type]
        manifest["params"][key] = value
        (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    return folder, SMALL[index_type]


def exact_ids(dense, queries: np.ndarray, k: int = 10) -> np.ndarray:
    exact = faiss.IndexFlatIP(dense["vectors"].shape[1])
    exact.add(dense["vectors"])
    return dense["ids"][exact.search(queries, k)[1]]


@pytest.mark.parametrize("index_type", ["ivf", "ivf_sq8", "hnsw"])
def test_probe_raises_the_search_parameter_until_seed_recall_reaches_the_target(dense, index_type):
    folder, (key, small) = with_search_param(dense, index_type)
    seeds = dense["vectors"][dense["cluster"] == 0][:SEEDS]
    truth = exact_ids(dense, seeds)
    loaded = load_index(folder)
    before = recall_at_k(truth, loaded.search(seeds, 10)[1])
    assert before < 0.95  # the data does what this test is about: the manifest's value falls short on the seeds

    probed, probe = probe_recall(loaded, seeds, seed=0)

    after = recall_at_k(truth, probed.search(seeds, 10)[1])
    assert after >= 0.95, (before, after, probe)
    assert (probe.knob, probe.self_checked) == (key, small) and probe.chosen > small
    assert probe.passed and probe.judged >= 0.95 and probe.recall_self_checked < 0.95
    # A sample of the 200 seeds, so judged by the lower confidence bound.
    assert (probe.queries, probe.of_queries, probe.criterion) == (PROBE_QUERIES, SEEDS, "lower_bound")
    assert probe.judged <= probe.recall
    # For this search only: neither the loaded manifest nor the file changes.
    assert loaded.manifest.params[key] == small
    assert json.loads((folder / MANIFEST_FILE).read_text())["params"][key] == small
    assert recall_at_k(truth, loaded.search(seeds, 10)[1]) == before


def test_probe_keeps_a_value_that_already_meets_the_target(dense):
    folder, (key, small) = with_search_param(dense, "ivf")
    loaded = load_index(folder)
    # Probing every list (nprobe = nlist) is exhaustive: nothing to raise.
    generous = replace(loaded, manifest=replace(loaded.manifest, params={**loaded.manifest.params, key: 100}))
    probed, probe = probe_recall(generous, dense["vectors"][dense["cluster"] == 0][:5])
    assert probe.chosen == probe.self_checked == 100 and probe.recall == 1.0
    assert probe.criterion == "mean" and probe.queries == 5  # every query probed: the mean is their recall
    assert probed.manifest.params == generous.manifest.params


def test_flat_index_skips_the_probe(dense, tmp_path):
    build_index(dense["db"], tmp_path, index_type="flat", progress=quiet)
    loaded = load_index(tmp_path)
    probed, probe = probe_recall(loaded, dense["vectors"][:50])
    assert probed is loaded
    assert probe.knob is None and probe.queries == 0 and probe.recall == 1.0 and probe.passed
    assert "skipped" in probe.summary()


@pytest.mark.slow  # trains product-quantisation codebooks
def test_short_of_the_target_at_the_ceiling_the_best_value_tried_is_kept(dense):
    """ivf_pq with 4 dimensions a code byte cannot tell the dense cluster's neighbours apart: probing every list
    lets more codes compete for the same rerank_factor*k candidates and recall drops, so nlist is not chosen."""
    folder = dense["root"] / "ivf_pq"
    manifest = build_index(dense["db"], folder, index_type="ivf_pq", nlist=100, progress=quiet)
    loaded = load_index(folder)
    probed, probe = probe_recall(loaded, dense["vectors"][dense["cluster"] == 0][:SEEDS])
    assert not probe.passed and probe.judged < 0.95
    assert probe.self_checked == manifest.params["nprobe"] < 100  # the ceiling was tried (the loop ends there) ...
    assert probe.chosen < 100 and probed.manifest.params["nprobe"] == probe.chosen  # ... and measured worse
    assert probe.recall >= probe.recall_self_checked
