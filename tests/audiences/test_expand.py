"""Expansion strategies on planted clusters (known answers) and every bad input of issue 5."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest
from click.testing import CliRunner

from lookalike_cli.index import faiss_index as index_module
from lookalike_cli.audiences.catalog import create_audience
from lookalike_cli import api
from lookalike_cli.errors import LookalikeError, ParameterError
from lookalike_cli.audiences.expand import STRATEGIES, expand, parse_size
from lookalike_cli.index.faiss_index import INDEX_FILE, build_index
from lookalike_cli.settings import Settings
from tests.helpers import build_planted_warehouse, cli_error

SEGMENT = 3
SEED_SQL = f"select customer_id from customer_features where segment_id = {SEGMENT} order by customer_id limit 200"


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("expand")
    db = root / "warehouse.duckdb"
    data = build_planted_warehouse(db, customers=6000)
    build_index(db, root / "flat", progress=quiet)
    # An approximate index too, so strategies are checked on the IVF path (auto threshold lowered).
    original = index_module.AUTO_EXACT_MAX_ROWS
    index_module.AUTO_EXACT_MAX_ROWS = 1000
    try:
        build_index(db, root / "ivf", progress=quiet)
    finally:
        index_module.AUTO_EXACT_MAX_ROWS = original
    # And the compressed ones auto picks above the memory budget (exact re-ranking from disk): 6,000 x 32
    # float32 = 768 kB; 8-bit codes ~259 kB fit 300 kB; product-quantised ~148 kB fit 160 kB (below).
    build_index(db, root / "ivf_sq8", memory_budget="300kB", progress=quiet)
    return {"root": root, "db": db, **data}


@pytest.fixture(scope="module")
def world_with_pq(world):
    """The product-quantised index too (training its codebooks takes the seconds: the tests that use it are slow)."""
    build_index(world["db"], world["root"] / "ivf_pq", memory_budget="160kB", progress=quiet)
    return world


def segment_of(world, ids) -> np.ndarray:
    return world["segment"][np.asarray(ids) // 10 - 1]


@pytest.mark.parametrize("index_name", ["flat", "ivf", "ivf_sq8", pytest.param("ivf_pq", marks=pytest.mark.slow)])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_known_answer_200_seeds_of_one_segment(request, world, strategy, index_name):
    """Base rate of the segment is ~1/SEGMENTS (8%); the audience must be mostly that segment."""
    if index_name == "ivf_pq":
        request.getfixturevalue("world_with_pq")
    result = expand(world["db"], world["root"] / index_name, seed_sql=SEED_SQL, size=300, strategy=strategy, progress=quiet)
    members = result.members.to_pydict()
    base_rate = (world["segment"] == SEGMENT).mean()
    precision = (segment_of(world, members["customer_id"]) == SEGMENT).mean()
    assert base_rate < 0.1 and precision >= 0.85, (strategy, precision)
    assert members["rank"] == list(range(1, len(members["rank"]) + 1))
    assert all(a >= b for a, b in zip(members["score"], members["score"][1:]))
    seeds = set(duckdb.connect(str(world["db"]), read_only=True).sql(SEED_SQL).fetchnumpy()["customer_id"].tolist())
    assert not seeds & set(members["customer_id"]), "seeds are never members"
    assert not set(world["opt_outs"].tolist()) & set(members["customer_id"]), "opted-out customers are excluded"
    assert set(members["nearest_seed_id"]) <= seeds
    assert result.audience["seed_found"] == 200 and result.audience["index_type"] == index_name


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["centroid", "classifier"])
def test_compressed_index_members_get_their_exact_nearest_seed_in_slices(world_with_pq, monkeypatch, strategy):
    """ivf_pq's codes are coarse; member vectors come from its exact vectors, a few at a time."""
    from lookalike_cli.audiences import expand as expand_module

    world = world_with_pq

    monkeypatch.setattr(expand_module, "VECTOR_SLICE", 37)
    result = expand(world["db"], world["root"] / "ivf_pq", seed_sql=SEED_SQL, size=300, strategy=strategy, progress=quiet)
    members = result.members.to_pydict()
    vectors = index_module.normalise(world["vectors"])
    seeds = duckdb.connect(str(world["db"]), read_only=True).sql(SEED_SQL).fetchnumpy()["customer_id"]
    similarities = vectors[np.asarray(members["customer_id"]) // 10 - 1] @ vectors[seeds // 10 - 1].T
    best = similarities.max(axis=1)
    chosen = similarities[np.arange(len(best)), np.searchsorted(seeds, members["nearest_seed_id"])]
    np.testing.assert_allclose(chosen, best, atol=1e-6)  # the nearest seed, or one exactly as near


@pytest.mark.slow
def test_multi_centroid_finds_both_halves_of_a_mixed_seed(world):
    sql = "select customer_id from customer_features where segment_id in (2, 7) order by customer_id limit 400"
    result = expand(world["db"], world["root"] / "flat", seed_sql=sql, size=400, strategy="multi-centroid", progress=quiet)
    assert result.audience["parameters"]["clusters"] == 2
    found = segment_of(world, result.members.column("customer_id").to_pylist())
    assert (found == 2).mean() > 0.3 and (found == 7).mean() > 0.3


def test_knn_vote_widens_by_the_observed_shortfall_and_stops_at_its_cap(world, monkeypatch):
    from lookalike_cli.audiences import expand as expand_module

    searched_k = []
    original = expand_module.search_union

    def counting(index, queries, k):
        searched_k.append(k)
        return original(index, queries, k)

    monkeypatch.setattr(expand_module, "search_union", counting)
    # 200 seeds of one ~500-customer segment: 2,000 members need neighbours far outside it, i.e. k > 500.
    # Doubling k from 24 would take six searches of all seeds; growing by the shortfall takes three.
    result = expand(world["db"], world["root"] / "flat", seed_sql=SEED_SQL, size=2000, strategy="knn-vote", progress=quiet)
    assert result.members.num_rows == 2000 and len(searched_k) <= 3, searched_k
    searched_k.clear()
    monkeypatch.setattr(expand_module, "MAX_VOTES", 200 * 30)
    capped = expand(world["db"], world["root"] / "flat", seed_sql=SEED_SQL, size=2000, strategy="knn-vote", progress=quiet)
    assert max(searched_k) == 30 and capped.members.num_rows < 2000
    assert any("knn-vote stopped at its cap of 6,000 neighbours" in w for w in capped.warnings)


def test_min_similarity_percent_size_and_exclude_sql(world):
    by_similarity = expand(world["db"], world["root"] / "flat", seed_sql=SEED_SQL, min_similarity=0.8, progress=quiet)
    similarities = by_similarity.members.column("similarity").to_pylist()
    assert similarities and min(similarities) >= 0.8
    by_share = expand(world["db"], world["root"] / "flat", seed_sql=SEED_SQL, size="5%", progress=quiet)
    assert by_share.members.num_rows == 300  # 5% of 6000
    top = by_share.members.column("customer_id").to_pylist()[:20]
    excluded = expand(world["db"], world["root"] / "flat", seed_sql=SEED_SQL, size="5%", progress=quiet,
                      exclude_sql=f"select unnest({top}) as customer_id")
    assert not set(top) & set(excluded.members.column("customer_id").to_pylist())
    assert excluded.audience["excluded_count"] == 20 + len(world["opt_outs"])


@pytest.mark.parametrize("strategy", ["centroid", "blend"])
def test_size_100_percent_is_every_candidate(world, strategy):
    """100% of the population less the seeds and the exclusions (opt-outs and exclude_sql): every candidate,
    once each. It used to fail because the percentage counted the seeds, who are never members."""
    excluded_sql = "select customer_id from customer_features where segment_id = 7"
    everyone = expand(world["db"], world["root"] / "flat", seed_sql=SEED_SQL, size="100%", strategy=strategy,
                      exclude_sql=excluded_sql, progress=quiet)
    members = set(everyone.members.column("customer_id").to_pylist())
    with duckdb.connect(str(world["db"]), read_only=True) as con:
        seeds = {r[0] for r in con.execute(SEED_SQL).fetchall()}
        segment_7 = {r[0] for r in con.execute(excluded_sql).fetchall()}
    blocked = seeds | segment_7 | {int(i) for i in world["opt_outs"]}
    assert members == set(int(i) for i in world["ids"]) - blocked
    assert everyone.members.num_rows == len(members)
    assert not [w for w in everyone.warnings if w.startswith("Only ")], everyone.warnings
    assert everyone.audience["population_size"] == 6000


def test_seed_table_and_seed_file(world, tmp_path):
    ids = world["ids"][world["segment"] == SEGMENT][:150]
    seed_file = tmp_path / "ids.csv"
    seed_file.write_text("customer_id\n" + "\n".join(map(str, ids)) + "\n999999999\n")
    from_file = expand(world["db"], world["root"] / "flat", seed_file=seed_file, size=100, progress=quiet)
    assert (from_file.audience["seed_found"], from_file.audience["seed_missing"]) == (150, 1)
    assert any("1 of 151 seed ids are not in the population" in w for w in from_file.warnings)
    from_table = expand(world["db"], world["root"] / "flat", seed_table="raw.opt_outs", size=10, progress=quiet)
    assert from_table.audience["seed_found"] == len(world["opt_outs"])


@pytest.mark.parametrize("kwargs, message", [
    ({"seed_sql": "select customer_id from customer_features where false"}, "is empty"),
    ({"seed_sql": "select customer_id + 1 as customer_id from customer_features limit 50"}, "None of the 50 seed ids"),
    ({"seed_sql": SEED_SQL, "size": 100_000}, "population has only"),
    ({"seed_sql": SEED_SQL, "size": "150%"}, "percentage"),
    ({"seed_sql": SEED_SQL, "size": "lots"}, "positive count"),
    ({"seed_sql": SEED_SQL, "size": None}, "Give size .*, min_similarity .* or min_expected_lift"),
    ({"seed_sql": SEED_SQL, "size": 10, "strategy": "magic"}, "Unknown strategy"),
    ({"seed_sql": "select nope from customer_features", "size": 10}, "failed"),
    ({"seed_sql": SEED_SQL, "seed_table": "x", "size": 10}, "exactly one seed source"),
])
def test_bad_input_is_a_clear_error(world, kwargs, message):
    kwargs = {"size": 100, **kwargs}
    with pytest.raises(LookalikeError, match=message):
        expand(world["db"], world["root"] / "flat", progress=quiet, **kwargs)


@pytest.mark.parametrize("options, python_message, cli_message", [
    ({"size": "150%"}, "size 150%: a percentage must be in (0, 100].", "--size 150%: a percentage must be in (0, 100]."),
    ({}, "Give size (20000 or 5%), min_similarity (e.g. 0.8) or min_expected_lift (e.g. 2).",
     "Give --size (20000 or 5%), --min-similarity (e.g. 0.8) or --min-expected-lift (e.g. 2)."),
    ({"size": "10", "exclude_sql": "select nope from customer_features"}, "exclude_sql failed: ", "--exclude-sql failed: "),
])
def test_bad_parameters_are_named_as_the_caller_spells_them(world, tmp_path, options, python_message, cli_message):
    """A notebook user reads the keyword argument, a CLI user the flag (issue 17): the same input both ways."""
    settings = Settings.resolve(db=world["db"], serving_db=tmp_path / "serving.duckdb", index_dir=world["root"] / "flat")
    with pytest.raises(ParameterError) as raised:
        api.expand(settings, seed_sql=SEED_SQL, progress=quiet, **options)
    assert str(raised.value).startswith(python_message)
    flags = [arg for key, value in options.items() for arg in ("--" + key.replace("_", "-"), value)]
    message = cli_error(settings, "expand", "--name", "named", "--seed-sql", SEED_SQL, *flags)
    assert message.startswith(cli_message)
    assert message.removeprefix(cli_message) == str(raised.value).removeprefix(python_message)  # the same error otherwise
    assert not settings.serving_db_path.exists()


def test_audiences_file_errors_name_the_files_keys(world, tmp_path):
    # The file's keys are expand's parameter names: an error found while computing says which audience, with no flag.
    path = tmp_path / "audiences.yml"
    path.write_text(f"audiences:\n  - name: close\n    seed_sql: {SEED_SQL}\n    min_similarity: 3\n")
    settings = Settings.resolve(db=world["db"], serving_db=tmp_path / "serving.duckdb", index_dir=world["root"] / "flat")
    assert cli_error(settings, "audiences", "apply", str(path)) == (
        f"{path}: audience 'close': min_similarity 3 must be a cosine similarity in [-1, 1].")


def test_small_seed_warns_like_ad_platforms(world):
    result = expand(world["db"], world["root"] / "flat", seed_sql=SEED_SQL.replace("200", "40"), size=50, progress=quiet)
    assert any("at least 100" in w for w in result.warnings)


def test_parse_size():
    assert parse_size("5%", 1000) == 50 and parse_size("20000", 10) == 20000 and parse_size(None, 5) is None


def test_stale_or_corrupt_index_fails_and_publishes_nothing(world, tmp_path):
    db = tmp_path / "warehouse.duckdb"
    build_planted_warehouse(db, customers=500)
    build_index(db, tmp_path / "idx", progress=quiet)
    serving = tmp_path / "serving.duckdb"
    con = duckdb.connect(str(db))
    con.execute("update customer_embeddings set model_version = 'retrained'")
    con.close()
    with pytest.raises(LookalikeError, match="model version"):
        create_audience(db, serving, tmp_path / "idx", "stale", seed_sql=SEED_SQL, size=10, progress=quiet)
    build_index(db, tmp_path / "idx", progress=quiet)
    (tmp_path / "idx" / INDEX_FILE).write_bytes(b"\0" * 100)
    with pytest.raises(LookalikeError, match="corrupt"):
        create_audience(db, serving, tmp_path / "idx", "broken", seed_sql=SEED_SQL, size=10, progress=quiet)
    assert not serving.exists()


def test_cli_expand_show_diff_drop(world, tmp_path):
    from lookalike_cli.cli.main import main

    base = ["--db", str(world["db"]), "--serving-db", str(tmp_path / "serving.duckdb"), "--index-dir", str(world["root"] / "flat")]
    runner = CliRunner()
    first = runner.invoke(main, base + ["expand", "--name", "seg3", "--seed-sql", SEED_SQL, "--size", "200"])
    assert first.exit_code == 0, first.output
    second = runner.invoke(main, base + ["expand", "--name", "seg3", "--seed-sql", SEED_SQL, "--size", "250",
                                         "--strategy", "knn-vote", "--export-parquet", str(tmp_path / "parquet")])
    assert second.exit_code == 0 and "seg3 v2" in second.output, second.output
    shown = runner.invoke(main, base + ["audiences", "show", "seg3", "--limit", "5"])
    assert shown.exit_code == 0 and "size: 250" in shown.output and "nearest_seed_id" in shown.output
    members, curve = shown.output.split("\nreach curve (")
    assert len([line for line in members.splitlines() if line[:1].isdigit()]) == 5
    assert curve.startswith(str(tmp_path / "serving_reach_curves" / "seg3_v2.png")) and "expected_lift" in curve
    assert f"reach curve: {tmp_path / 'serving_reach_curves' / 'seg3_v2.png'}" in second.output
    listed = runner.invoke(main, base + ["audiences", "list"])
    assert listed.output.count("seg3") == 2
    diff = runner.invoke(main, base + ["audiences", "diff", "seg3"])
    assert diff.exit_code == 0 and "v1 -> v2" in diff.output and "entered" in diff.output
    assert (tmp_path / "parquet" / "members" / "seg3" / "v2.parquet").exists()
    empty = runner.invoke(main, base + ["expand", "--name", "x", "--seed-sql", "select 1 as customer_id where false", "--size", "10"])
    assert empty.exit_code == 1 and "Error: " in empty.output and "empty" in empty.output
    dropped = runner.invoke(main, base + ["audiences", "drop", "seg3", "--version", "1"])
    assert dropped.exit_code == 0 and "Dropped 1" in dropped.output
    missing = runner.invoke(main, base + ["audiences", "show", "seg3", "--version", "1"])
    assert missing.exit_code == 1 and "No version 1" in missing.output
