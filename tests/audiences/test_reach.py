"""Reach curves, sizing by expected lift and exclude_features, on a small hand-built shop (no dbt, no model).

The shop has the raw features the blend reads (numerics, demographics, category shares) and
planted segments: a segment prefers a few categories, its customers' embeddings sit near its
centre, and segment 1 is mostly women, so `gender` carries signal that exclude_features must remove.
Every table is read back with SQL from the serving file.
"""

from __future__ import annotations

import json
import shutil

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from lookalike_cli.audiences import expand as expand_module
from lookalike_cli.audiences.catalog import create_audience, show_audience
from lookalike_cli.audiences.expand import expand
from lookalike_cli.audiences.reach import BacktestCurve, Validation, derived_curve, expected, reach_curve
from lookalike_cli.errors import LookalikeError, ParameterError
from lookalike_cli.index.faiss_index import build_index
from lookalike_cli.settings import Settings
from lookalike_cli.trust.backtest import BACKTESTS_DDL
from tests.helpers import cli_error, embeddings_table, run_cli

SEGMENTS, CATEGORIES, CUSTOMERS, DIM = 6, 24, 3000, 16
SEED_SQL = "select customer_id from customer_features where segment_id = 1 order by hash(customer_id) limit 300"


def quiet(_: str) -> None:
    pass


def build_shop(path, customers: int = CUSTOMERS, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    segment = rng.integers(0, SEGMENTS, customers)
    ids = np.arange(1, customers + 1, dtype=np.int64) * 10
    preference = np.full((SEGMENTS, CATEGORIES), 0.3)
    for s in range(SEGMENTS):
        preference[s, 4 * s : 4 * s + 3] = 0.5
    shares = np.array([rng.dirichlet(preference[s]) for s in segment])
    shares[shares < 0.02] = 0.0
    shares /= shares.sum(axis=1, keepdims=True)
    lines = np.maximum(1, np.round(np.exp(rng.normal(3.0 + 0.4 * (segment == 1), 0.8))))
    orders = np.maximum(1, np.round(lines / rng.uniform(2, 6, customers)))
    spend = lines * np.exp(rng.normal(1.5, 0.4, customers))
    women = np.where(segment == 1, 0.85, 0.45)
    centres = rng.normal(size=(SEGMENTS, DIM))
    vectors = centres[segment] / np.sqrt(DIM) * 0.5 + rng.normal(scale=1.0 / np.sqrt(DIM), size=(customers, DIM))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    features = pa.table({
        "customer_id": pa.array(ids, pa.int64()),
        "segment_id": pa.array(segment, pa.int32()),
        "order_count": pa.array(orders, pa.int64()),
        "order_line_count": pa.array(lines, pa.int64()),
        "total_spend": pa.array(spend),
        "recency_days": pa.array(np.round(rng.exponential(40, customers))),
        "gender": pa.array(np.where(rng.random(customers) < women, "F", "M")),
        "age_band": pa.array(rng.choice(["18-34", "35-54", "55+"], customers)),
        "income_band": pa.array(np.where(spend > np.median(spend), "high", "low")),
        "category_ids": pa.array([np.flatnonzero(row).astype(np.int32).tolist() for row in shares], pa.list_(pa.int32())),
        "category_shares": pa.array([row[row > 0].astype(np.float32).tolist() for row in shares], pa.list_(pa.float32())),
    })
    with duckdb.connect(str(path)) as con:
        con.register("embeddings", embeddings_table(ids, vectors))
        con.execute(f"create table customer_embeddings as select customer_id, embedding::float[{DIM}] as embedding, "
                    "model_version from embeddings")
        con.register("features", features)
        con.execute("create table customer_features as select * from features")
        con.execute(f"create table categories as select i::integer as category_id, 'c' || i as category from range({CATEGORIES}) t(i)")


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    root = tmp_path_factory.mktemp("reach")
    db = root / "shop.duckdb"
    build_shop(db)
    build_index(db, root / "index", progress=quiet)
    return {"root": root, "db": db, "index": root / "index"}


def settings_for(shop, tmp_path) -> Settings:
    return Settings.resolve(db=shop["db"], serving_db=tmp_path / "serving.duckdb", index_dir=shop["index"])


def serving_rows(settings: Settings, sql: str, params=None) -> list[tuple]:
    with duckdb.connect(str(settings.serving_db_path), read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def curve_of(settings: Settings, name: str) -> list[dict]:
    with duckdb.connect(str(settings.serving_db_path), read_only=True) as con:
        cursor = con.execute("select c.* from audience_reach_curve c join latest_audiences a using (audience_id) "
                             "where a.name = ? order by size", [name])
        columns = [d[0] for d in cursor.description]
        return [dict(zip(columns, row)) for row in cursor.fetchall()]


def assert_monotone(curve: list[dict], seeds: int = 300, z: float = 2.5) -> None:
    """Size up: min score down, and expected lift non-increasing up to its noise: r(q) of n held-out seeds
    has a binomial standard error sqrt(r (1 - r) / n), so lift r/q may rise by z of them divided by q."""
    scores = [r["min_score"] for r in curve if r["min_score"] is not None]
    assert all(a >= b for a, b in zip(scores, scores[1:])), scores
    for a, b in zip(curve, curve[1:]):
        noise = z * np.sqrt(b["expected_recall"] * (1 - b["expected_recall"]) / seeds) / b["share_of_population"]
        assert b["expected_lift"] <= a["expected_lift"] + noise, [(r["size"], r["expected_lift"]) for r in curve]


def test_every_audience_gets_a_monotone_reach_curve_read_back_with_sql(shop, tmp_path):
    settings = settings_for(shop, tmp_path)
    out = run_cli(settings, "expand", "--name", "seg1", "--seed-sql", SEED_SQL, "--size", "3%").output
    png = tmp_path / "serving_reach_curves" / "seg1_v1.png"
    assert f"reach curve: {png}" in out and png.stat().st_size > 1000
    curve = curve_of(settings, "seg1")
    published, population = serving_rows(settings, "select size, population_size from audiences")[0]
    sizes = [r["size"] for r in curve]
    assert sizes == sorted({-(-population * p // 1000) for p in (5, 10, 20, 50, 100, 200)} | {published})
    assert all(r["share_of_population"] == pytest.approx(r["size"] / population) for r in curve)
    assert {r["source"] for r in curve} == {"in_seed"} and all(r["expected_precision"] is None for r in curve)
    assert_monotone(curve)
    assert curve[0]["expected_lift"] > 5, curve  # segment 1 is a sixth of the shop, most of it in the seed
    assert all(r["expected_lift"] == pytest.approx(r["expected_recall"] / r["share_of_population"]) for r in curve)
    score_min = serving_rows(settings, "select score_min from audiences")[0][0]
    assert [r["min_score"] for r in curve if r["size"] == published] == [pytest.approx(score_min)]
    shown = run_cli(settings, "audiences", "show", "seg1").output
    assert f"reach curve ({png}):" in shown and "in_seed" in shown


@pytest.mark.parametrize("strategy", ["centroid", "knn-vote", "multi-centroid", "classifier"])
def test_embedding_strategies_validate_inside_the_seed_too(shop, strategy):
    result = expand(shop["db"], shop["index"], seed_sql=SEED_SQL, size=200, strategy=strategy, progress=quiet)
    curve = result.reach.to_pylist()
    assert {r["source"] for r in curve} == {"in_seed"}
    assert curve[0]["expected_lift"] > 2.0, curve
    assert_monotone(curve)


def test_min_expected_lift_picks_the_largest_size_the_curve_allows(shop, tmp_path):
    settings = settings_for(shop, tmp_path)
    row = create_audience(settings.db_path, settings.serving_db_path, settings.index_dir, "lifted", seed_sql=SEED_SQL,
                          min_expected_lift=3, progress=quiet, on_warning=quiet)
    parameters = json.loads(row["parameters"])
    assert parameters["min_expected_lift"] == 3 and parameters["expected_lift"] >= 3 and parameters["size"] is None
    curve = curve_of(settings, "lifted")
    at_size = [r for r in curve if r["size"] == row["size"]]
    assert at_size and at_size[0]["expected_lift"] >= 3
    assert parameters["expected_lift"] == pytest.approx(at_size[0]["expected_lift"], abs=1e-4)
    assert all(r["expected_lift"] < 3 for r in curve if r["size"] > row["size"]), curve
    smaller = expand(shop["db"], shop["index"], seed_sql=SEED_SQL, min_expected_lift=4.5, progress=quiet)
    assert smaller.members.num_rows < row["size"]  # a higher bar, a smaller audience

    with pytest.raises(ParameterError, match=r"No audience size reaches min_expected_lift 500: the best expected lift is \d"):
        expand(shop["db"], shop["index"], seed_sql=SEED_SQL, min_expected_lift=500, progress=quiet)
    message = cli_error(settings, "expand", "--name", "x", "--seed-sql", SEED_SQL, "--min-expected-lift", "2", "--size", "5%")
    assert message == "Give --min-expected-lift alone, without --size or --min-similarity: it chooses the size."
    assert "must be above 1" in cli_error(settings, "expand", "--name", "x", "--seed-sql", SEED_SQL, "--min-expected-lift", "0.5")
    small_seed = SEED_SQL.replace("300", "20")
    with pytest.raises(ParameterError, match="too small to validate"):
        expand(shop["db"], shop["index"], seed_sql=small_seed, min_expected_lift=2, progress=quiet)
    assert serving_rows(settings, "select count(*) from audiences")[0][0] == 1  # nothing published on error


def test_a_backtest_of_the_audience_supplies_the_sizes_it_measured(shop, tmp_path):
    settings = settings_for(shop, tmp_path)
    with duckdb.connect(str(settings.serving_db_path)) as con:
        con.execute(BACKTESTS_DDL)
        for backtest_id, lift_at_1 in ((1, 9.0), (2, 5.0)):  # the latest (2) wins
            for percent, lift in ((1, lift_at_1), (2, 4.0), (5, 3.0), (10, 2.0), (20, 1.5)):
                con.execute("insert into audience_backtests (backtest_id, name, created_at, method, size_percent, "
                            "audience_size, precision_mean, recall_mean, lift_mean, splits, seed_size, hidden_size, "
                            "candidate_count, population_size, converters_sql) values "
                            "(?, 'seg1', now(), 'model:blend', ?, 1, ?, ?, ?, 5, 1, 1, 1, 1, 'x')",
                            [backtest_id, percent, lift / 10, lift * percent / 100, lift])
    create_audience(settings.db_path, settings.serving_db_path, settings.index_dir, "seg1", seed_sql=SEED_SQL,
                    size="3%", progress=quiet, on_warning=quiet)
    curve = {round(100 * r["share_of_population"], 1): r for r in curve_of(settings, "seg1")}
    assert curve[0.5]["source"] == "in_seed" and curve[0.5]["expected_precision"] is None
    assert curve[1.0]["source"] == "backtest:2" and curve[1.0]["expected_lift"] == pytest.approx(5.0)
    assert curve[3.0]["expected_lift"] == pytest.approx(4.0 - 1.0 / 3) and curve[20.0]["expected_precision"] == pytest.approx(0.15)


def test_estimator_known_answers():
    unlabelled = np.linspace(0.0, 0.95, 1000)
    above_everyone = Validation(seeds=np.linspace(0.96, 1.0, 50), unlabelled=unlabelled)
    assert above_everyone.recall(0.001) == 1.0                       # lift 1000: every held-out seed beats the best customer
    like_everyone = Validation(seeds=unlabelled[10::20], unlabelled=unlabelled)
    assert like_everyone.recall(0.1) == pytest.approx(0.1)           # seeds ranked like anyone: lift 1
    tied = Validation(seeds=np.r_[np.ones(10), np.zeros(10)], unlabelled=np.r_[np.ones(100), np.zeros(900)])
    assert tied.recall(0.1) == pytest.approx(0.5)                    # exactly the 100 customers tied at 1
    assert tied.recall(0.2) == pytest.approx(0.5 + 0.5 * 100 / 900)  # a ninth of the zeros: a ninth of the zero seeds
    backtest = BacktestCurve(7, np.array([1.0, 5.0]), np.array([0.2, 0.1]), np.array([0.1, 0.3]), np.array([10.0, 6.0]))
    assert expected(0.03, None, backtest) == {"expected_precision": pytest.approx(0.15), "expected_recall": pytest.approx(0.2),
                                              "expected_lift": pytest.approx(8.0), "source": "backtest:7"}
    assert expected(0.1, None, backtest)["source"] == "unvalidated"
    # Beyond what was ranked, min_score is a sample quantile, never above the last ranked score.
    curve = reach_curve(1000, np.linspace(1.0, 0.5, 30), 30, 990, None, None, lambda: np.linspace(0.0, 0.6, 1000)).to_pylist()
    assert [r["size"] for r in curve] == [5, 10, 20, 30, 50, 100, 200]
    assert [r["min_score"] for r in curve[3:]] == pytest.approx([0.5, 0.5, 0.5, 0.48])


def test_excluded_features_have_no_effect_on_the_ranking(shop, tmp_path):
    """Permuting an excluded column leaves every score unchanged; permuting it when it is not excluded does not."""
    permuted = tmp_path / "permuted.duckdb"
    shutil.copy(shop["db"], permuted)
    with duckdb.connect(str(permuted)) as con:
        con.execute("""create or replace table customer_features as
                       select f.* replace (g.gender as gender) from customer_features f join (
                           select customer_id, lead(gender, 7, 'F') over (order by hash(customer_id)) as gender
                           from customer_features) g using (customer_id)""")
    args = dict(seed_sql=SEED_SQL, size=400, progress=quiet)

    def scores(db, **options):
        result = expand(db, shop["index"], **args, **options)
        return dict(zip(result.members.column("customer_id").to_pylist(), result.members.column("score").to_pylist())), result

    excluded, result = scores(shop["db"], exclude_features="gender")
    assert scores(permuted, exclude_features=["gender"])[0] == excluded
    assert scores(permuted)[0] != scores(shop["db"])[0]
    blend = result.audience["parameters"]["blend"]
    assert result.audience["parameters"]["exclude_features"] == ["gender"]
    assert "embedding" not in blend["weights"] and blend["scored"] == "every customer"

    # Spend, RFM and the share classifiers go with the columns they read.
    weights = expand(shop["db"], shop["index"], **args, exclude_features="total_spend,category_ids").audience["parameters"]["blend"]["weights"]
    assert not {"spend", "rfm", "shares_lr", "shares_gbm", "embedding"} & set(weights) and "activity" in weights


def test_exclusion_scores_every_customer_above_the_exact_limit(shop, monkeypatch):
    """Above BLEND_EXACT_MAX the blend would re-rank an embedding ANN pool; with exclude_features it scans
    every customer's raw features instead, a slice at a time: the same scores as the exact path."""
    args = dict(seed_sql=SEED_SQL, size=300, exclude_features="gender,age_band", progress=quiet)
    exact = expand(shop["db"], shop["index"], **args)
    monkeypatch.setattr(expand_module, "BLEND_EXACT_MAX", 1000)
    scanned = expand(shop["db"], shop["index"], **args)
    assert scanned.members.column("customer_id").to_pylist() == exact.members.column("customer_id").to_pylist()
    np.testing.assert_allclose(scanned.members.column("score").to_numpy(), exact.members.column("score").to_numpy())


def test_exclusion_errors_are_clear_and_publish_nothing(shop, tmp_path):
    settings = settings_for(shop, tmp_path)
    with pytest.raises(ParameterError) as raised:
        expand(shop["db"], shop["index"], seed_sql=SEED_SQL, size=100, exclude_features="gender,shoe_size", progress=quiet)
    assert str(raised.value).startswith("exclude_features shoe_size: not a column of customer_features. Valid columns: "
                                        "segment_id, order_count, order_line_count,")
    message = cli_error(settings, "expand", "--name", "x", "--seed-sql", SEED_SQL, "--size", "100",
                        "--exclude-features", "shoe_size")
    assert message.startswith("--exclude-features shoe_size: not a column of customer_features.") and "gender" in message
    assert cli_error(settings, "expand", "--name", "x", "--seed-sql", SEED_SQL, "--size", "100", "--strategy", "centroid",
                     "--exclude-features", "gender").startswith("--exclude-features needs --strategy blend: centroid ranks")
    with pytest.raises(ParameterError, match="cannot be combined with min_similarity"):
        expand(shop["db"], shop["index"], seed_sql=SEED_SQL, min_similarity=0.5, exclude_features="gender", progress=quiet)
    assert not settings.serving_db_path.exists()


def test_audiences_file_takes_both_options_and_checks_them_first(shop, tmp_path):
    settings = settings_for(shop, tmp_path)
    good = tmp_path / "good.yml"
    good.write_text(f"""
audiences:
  - name: lifted
    seed_sql: {SEED_SQL}
    min_expected_lift: 3
    exclude_features: [gender, age_band]
""")
    out = run_cli(settings, "audiences", "apply", str(good)).output
    assert "lifted v1" in out and "reach curve" in out
    parameters = json.loads(serving_rows(settings, "select parameters from audiences")[0][0])
    assert parameters["exclude_features"] == ["gender", "age_band"] and parameters["min_expected_lift"] == 3
    bad = tmp_path / "bad.yml"
    bad.write_text(f"""
audiences:
  - name: a
    seed_sql: {SEED_SQL}
    min_expected_lift: 3
    size: 5%
  - name: b
    seed_sql: {SEED_SQL}
    size: 5%
    exclude_features: shoe_size
  - name: c
    seed_sql: {SEED_SQL}
    min_expected_lift: 1
    strategy: knn-vote
    exclude_features: gender
""")
    result = run_cli(settings, "audiences", "apply", str(bad), expect_exit=1)
    for fragment in ("'a': give min_expected_lift alone", "'b': exclude_features shoe_size: not a column",
                     "'c': min_expected_lift 1 must be above 1", "'c': exclude_features needs strategy blend",
                     "4 problem(s); nothing was published"):
        assert fragment in result.output, (fragment, result.output)
    assert serving_rows(settings, "select count(*) from audiences")[0][0] == 1


def test_show_reads_a_serving_file_without_curves(shop, tmp_path):
    settings = settings_for(shop, tmp_path)
    create_audience(settings.db_path, settings.serving_db_path, settings.index_dir, "old", seed_sql=SEED_SQL, size=50,
                    progress=quiet, on_warning=quiet)
    with duckdb.connect(str(settings.serving_db_path)) as con:
        con.execute("drop table audience_reach_curve")
    view = show_audience(settings.serving_db_path, "old")
    assert view.reach_curve is None and view.reach_curve_png is not None


def test_unknown_feature_list_type_is_a_parameter_error():
    with pytest.raises(LookalikeError, match="exclude_features 5"):
        expand_module.feature_list(5)


def test_a_disjoint_audience_keeps_its_parents_expectations_with_its_own_min_scores():
    """overlap --disjoint: 1,000 of a 2,000-member parent are left; the curve keeps the parent's lifts at
    its sizes, interpolates the lift at the new size in log share, and reads min scores off the kept ranking."""
    population = 100_000
    parent = pa.table({"size": [500, 1_000, 2_000], "share_of_population": [0.005, 0.01, 0.02],
                       "min_score": [0.9, 0.8, 0.7], "expected_precision": [None, None, None],
                       "expected_recall": [0.02, 0.03, 0.04], "expected_lift": [4.0, 3.0, 2.0],
                       "source": ["in_seed"] * 3})
    kept = np.linspace(0.95, 0.6, 1_400)  # 1,400 kept, ranked best first
    rows = derived_curve(parent, kept, population).to_pylist()
    assert [r["size"] for r in rows] == [500, 1_000, 1_400, 2_000]
    assert [r["expected_lift"] for r in rows if r["size"] != 1_400] == [4.0, 3.0, 2.0]
    at_size = rows[2]
    assert at_size["expected_lift"] == pytest.approx(3.0 - np.log(1.4) / np.log(2))  # linear in log share between 1% and 2%
    assert at_size["expected_precision"] is None and at_size["source"] == "in_seed"
    assert [r["min_score"] for r in rows] == pytest.approx([kept[499], kept[999], kept[-1], 0.7])


@pytest.mark.parametrize("index_type", ["flat", "ivf_sq8"])
def test_population_sample_from_the_index_is_the_tables_sample(shop, tmp_path, index_type):
    """Publishing samples the population's vectors from the index expand searched (reading every embedding
    cost ~1 s at 1M): the same customers and the same vectors as the table's own sample."""
    from lookalike_cli.audiences.seeds import population_vectors
    from lookalike_cli.index.faiss_index import load_index

    folder = tmp_path / index_type
    build_index(shop["db"], folder, index_type=index_type, progress=quiet)
    index = load_index(folder)
    with duckdb.connect(str(shop["db"]), read_only=True) as con:
        ids, vectors = population_vectors(con, 500, 3)
        from_index_ids, from_index = population_vectors(con, 500, 3, index)
    assert len(ids) == 500 and np.array_equal(ids, from_index_ids)
    np.testing.assert_allclose(from_index, vectors, rtol=0, atol=1e-6)
