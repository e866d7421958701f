"""expand's seed recall probe, end to end: raised nprobe recorded in the published audience's parameters.

Seeds from the densest cluster; the IVF index's manifest holds nprobe 4, short of recall@10 0.95 on them."""

from __future__ import annotations

import json

import duckdb
import pytest

from lookalike_cli.audiences.catalog import create_audience
from lookalike_cli.audiences.expand import expand
from lookalike_cli.index.faiss_index import MANIFEST_FILE, build_index
from tests.helpers import build_dense_seed_warehouse

SMALL_NPROBE = 4


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    root = tmp_path_factory.mktemp("expand-recall-probe")
    db = root / "warehouse.duckdb"
    data = build_dense_seed_warehouse(db)
    build_index(db, root / "ivf", index_type="ivf", nlist=100, progress=quiet)
    manifest = json.loads((root / "ivf" / MANIFEST_FILE).read_text())
    manifest["params"]["nprobe"] = SMALL_NPROBE
    (root / "ivf" / MANIFEST_FILE).write_text(json.dumps(manifest))
    build_index(db, root / "flat", index_type="flat", progress=quiet)
    seeds = data["ids"][data["cluster"] == 0][:200].tolist()
    return {"root": root, "db": db, "seed_sql": f"select unnest({seeds}) as customer_id", **data}


@pytest.mark.parametrize("strategy", ["centroid", "knn-vote", "multi-centroid", "classifier"])
def test_expand_records_and_prints_the_raised_nprobe(dense, strategy):
    lines: list[str] = []
    expansion = expand(dense["db"], dense["root"] / "ivf", seed_sql=dense["seed_sql"], size=500, strategy=strategy,
                       progress=lines.append)
    probe = expansion.audience["parameters"]["seed_recall_probe"]
    assert probe["knob"] == "nprobe" and probe["self_checked"] == SMALL_NPROBE and probe["chosen"] > SMALL_NPROBE
    assert probe["passed"] and probe["judged"] >= 0.95
    printed = [line for line in lines if "seed recall probe" in line]
    assert len(printed) == 1 and f"at nprobe {probe['chosen']} (self-checked {SMALL_NPROBE}" in printed[0]
    # knn-vote and the classifier search around every seed: a sample of them; the centroid's are every query.
    sampled = strategy in ("knn-vote", "classifier")
    assert probe["criterion"] == ("lower_bound" if sampled else "mean")
    assert expansion.index.manifest.params["nprobe"] == SMALL_NPROBE  # the loaded index is left as it was


def test_the_published_audience_carries_the_probe(dense, tmp_path):
    row = create_audience(dense["db"], tmp_path / "serving.duckdb", dense["root"] / "ivf", "dense", seed_sql=dense["seed_sql"],
                          size=500, strategy="knn-vote", progress=quiet)
    with duckdb.connect(str(tmp_path / "serving.duckdb"), read_only=True) as con:
        stored = con.execute("select parameters from audiences where audience_id = ?", [row["audience_id"]]).fetchall()
    probe = json.loads(stored[0][0])["seed_recall_probe"]
    assert probe["chosen"] > SMALL_NPROBE and probe["passed"]


def test_expand_over_a_flat_index_skips_the_probe(dense):
    lines: list[str] = []
    expansion = expand(dense["db"], dense["root"] / "flat", seed_sql=dense["seed_sql"], size=500, strategy="knn-vote",
                       progress=lines.append)
    probe = expansion.audience["parameters"]["seed_recall_probe"]
    assert probe["index_type"] == "flat" and "chosen" not in probe and probe["queries"] == 0
    assert any("seed recall probe: skipped" in line for line in lines)


def test_blend_searches_no_index_and_records_no_probe(dense):
    expansion = expand(dense["db"], dense["root"] / "ivf", seed_sql=dense["seed_sql"], size=500, strategy="blend",
                       progress=quiet)
    assert "seed_recall_probe" not in expansion.audience["parameters"]
