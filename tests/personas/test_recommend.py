"""`lookalike recommend` (issue 19): LightGCN on the customer-persona-item graph, on a small generated
warehouse built here through the CLI (self-contained: no shared fixtures), plus the ranking metrics
and the bad inputs that must leave the published recommendations as they were."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

from lookalike_cli.cli.main import main
from lookalike_cli.personas.recommend import (
    Fitted, Interactions, RecommendOptions, evaluate, fit, normalised_adjacency, sample_negatives, top_k,
)

CUSTOMERS = 1500
EPOCHS = "20"


def cli(db: Path, *args: str, serving: Path | None = None, expect_exit: int = 0):
    serving = serving or db.with_name(db.stem + "_serving.duckdb")
    result = CliRunner().invoke(main, ["--db", str(db), "--serving-db", str(serving), *args], catch_exceptions=False)
    assert result.exit_code == expect_exit, f"exit {result.exit_code}: {result.output}"
    return result


def serving_rows(serving: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(serving), read_only=True) as con:
        return con.execute(sql).fetchall()


def digest(serving: Path) -> str:
    rows = serving_rows(serving, "select * from customer_recommendations order by customer_id, rank")
    return hashlib.sha256(repr(rows).encode()).hexdigest()


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory) -> dict:
    """A generated warehouse with personas (5% zero-shot, propagated) and one published recommendation run;
    also a copy taken before personas existed."""
    folder = tmp_path_factory.mktemp("recommend")
    db = folder / "w.duckdb"
    cli(db, "generate-data", "--customers", str(CUSTOMERS), "--seed", "3")
    cli(db, "build")
    before_personas = folder / "no_personas.duckdb"
    shutil.copyfile(db, before_personas)
    cli(db, "personas", "label", "--fraction", "0.05", "--seed", "1")
    cli(db, "personas", "propagate")
    result = cli(db, "recommend", "--k", "5", "--epochs", EPOCHS, "--seed", "1", "--threads", "1")
    return {"db": db, "serving": folder / "w_serving.duckdb", "no_personas": before_personas, "output": result.output}


@pytest.mark.slow
def test_recommend_publishes_top_k_new_items_per_customer(warehouse):
    serving, db = warehouse["serving"], warehouse["db"]
    assert "NDCG@10" in warehouse["output"] and "persona-lightgcn" in warehouse["output"]
    columns = [r[0] for r in serving_rows(serving, "describe customer_recommendations")]
    assert columns == ["customer_id", "rank", "item", "score", "model_version"]
    per_customer = serving_rows(serving, """
        select count(*), min(rank), max(rank), count(distinct item), bool_and(score is not null)
        from customer_recommendations group by customer_id""")
    assert all(n == 5 and lo == 1 and hi == 5 and distinct == 5 and scored for n, lo, hi, distinct, scored in per_customer)
    # Ranks follow scores.
    assert serving_rows(serving, """
        select count(*) from (select score < lead(score) over (partition by customer_id order by rank) as wrong
                              from customer_recommendations) where wrong""")[0][0] == 0
    # Nothing bought in the training window is recommended (the default), and every trained customer is covered.
    with duckdb.connect(str(db), read_only=True) as con:
        con.execute(f"attach '{serving}' as serving (read_only)")
        bought = con.execute("""
            select count(*) from serving.customer_recommendations r
            join raw.order_lines o on o.customer_id = r.customer_id and o.category = r.item
            where o.ordered_at < (select feature_end_at from int_time_windows) and o.quantity > 0 and o.amount >= 0
        """).fetchall()[0][0]
        trained = con.execute("""
            select count(distinct customer_id) from raw.order_lines
            where ordered_at < (select feature_end_at from int_time_windows) and category is not null and quantity >= 0 and amount >= 0
        """).fetchall()[0][0]
    assert bought == 0
    assert len(per_customer) == trained
    version = serving_rows(serving, "select distinct model_version from customer_recommendations")
    runs = serving_rows(serving, "select model_version, model, k, customers from recommendation_runs")
    assert len(version) == 1 and [(r[0], r[1], r[2], r[3]) for r in runs] == [(version[0][0], "persona-lightgcn", 5, trained)]


@pytest.mark.slow
def test_ours_beats_popularity_on_held_out_ndcg(warehouse):
    metrics = dict(serving_rows(warehouse["serving"], "select model, ndcg from recommendation_metrics where k = 10"))
    assert set(metrics) == {"persona-lightgcn", "popularity"}
    assert metrics["persona-lightgcn"] > metrics["popularity"], metrics


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--item-column", "product_id"], "Item column 'product_id' not found in raw.order_lines"),
    (["--k", "100000"], "--k 100000 is larger than the"),
    (["--k", "0"], "--k must be at least 1"),
])
def test_bad_input_is_one_line_and_keeps_previous_recommendations(warehouse, args, message):
    serving = warehouse["serving"]
    before = digest(serving)
    result = cli(warehouse["db"], "recommend", "--epochs", "1", *args, expect_exit=1)
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert digest(serving) == before


@pytest.mark.slow
def test_no_personas_yet_is_one_line_and_keeps_previous_recommendations(warehouse):
    serving = warehouse["serving"]
    before = digest(serving)
    result = cli(warehouse["no_personas"], "recommend", serving=serving, expect_exit=1)
    assert result.output.strip().splitlines()[-1].startswith("Error: Table customer_personas not found")
    assert "lookalike personas propagate" in result.output
    assert digest(serving) == before
    # The customer-item models need no personas.
    cli(warehouse["no_personas"], "recommend", "--model", "popularity", "--no-publish", serving=serving)
    assert digest(serving) == before


@pytest.mark.slow
def test_serving_window_learns_from_all_data_without_evaluation(warehouse):
    serving = warehouse["serving"]
    before = digest(serving)
    result = cli(warehouse["db"], "recommend", "--model", "popularity", "--window", "serving", "--no-publish")
    assert "Held out" not in result.output and "NDCG" not in result.output
    with duckdb.connect(str(warehouse["db"]), read_only=True) as con:
        as_of_at = con.execute("select cast(as_of_at as date) from int_time_windows").fetchall()[0][0]
    assert f".. {as_of_at})" in result.output  # trained on everything before as_of_at (the day after as_of_date)
    assert digest(serving) == before  # --no-publish writes nothing


# --------------------------------------------------------------------------- units (no warehouse)


def tiny(train_rows, test_rows, n_users=3, n_items=4) -> Interactions:
    def matrix(pairs):
        r, c = zip(*pairs) if pairs else ((), ())
        return sp.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=(n_users, n_items))

    return Interactions(np.arange(n_users, dtype=np.int64) + 100, np.array([f"i{j}" for j in range(n_items)], dtype=object),
                        matrix(train_rows), matrix(test_rows), {}, "t", "item")


def test_ndcg_and_f1_against_hand_computed_values():
    # Scores rank items 3 > 2 > 1 > 0 for every user; item 0 is bought in training by everyone (masked).
    data = tiny([(0, 0), (1, 0), (2, 0)], [(0, 3), (1, 1), (1, 2)])
    fitted = Fitted("toy", np.ones((3, 1), np.float32), np.array([[0.0], [1.0], [2.0], [3.0]], np.float32), 0.0)
    items, _ = top_k(fitted, data.train, 3)
    assert items.tolist() == [[3, 2, 1]] * 3
    at = {m["k"]: m for m in evaluate(fitted, data, ks=(1, 2))}
    # user 0: hit at rank 1 -> NDCG 1; user 1: relevant {1, 2}, ranked 3, 2 -> @1 0, @2 (1/log2 3) / (1 + 1/log2 3).
    assert at[1]["customers_evaluated"] == 2
    assert at[1]["ndcg"] == pytest.approx(0.5)
    assert at[2]["ndcg"] == pytest.approx((1 + (1 / np.log2(3)) / (1 + 1 / np.log2(3))) / 2)
    # F1@2: user 0 P=1/2 R=1 -> 2/3; user 1 P=1/2 R=1/2 -> 1/2.
    assert at[2]["f1"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert at[1]["precision"] == pytest.approx(0.5) and at[2]["recall"] == pytest.approx(0.75)


def test_negatives_avoid_bought_items_and_adjacency_is_symmetric():
    rng = np.random.default_rng(0)
    train = sp.random(50, 20, density=0.3, format="csr", random_state=1)
    train.data[:] = 1
    coo = train.tocoo()
    keys = np.sort(coo.row.astype(np.int64) * 20 + coo.col)
    users = np.repeat(np.arange(50), 40)
    negatives = sample_negatives(users, 20, keys, rng, rounds=10)
    assert np.asarray(train[users, negatives]).ravel().sum() == 0
    personas = sp.csr_matrix(np.eye(50, 3)[:, :3] + 0.5)
    adjacency = normalised_adjacency(train.astype(np.float32), personas)
    assert adjacency.shape == (73, 73)
    assert abs(adjacency - adjacency.T).max() < 1e-6


def test_fit_learns_a_planted_block_structure():
    # Two groups of users buy two disjoint item blocks; held out: the rest of their own block.
    rng = np.random.default_rng(0)
    n_users, n_items = 200, 20
    group = np.arange(n_users) % 2
    train, test = [], []
    for u in range(n_users):
        block = np.arange(10) + 10 * group[u]
        chosen = rng.permutation(block)
        train += [(u, i) for i in chosen[:5]]
        test += [(u, i) for i in chosen[5:7]]
    data = tiny(train, test, n_users, n_items)
    scores = {}
    for model in ("popularity", "mf", "lightgcn"):
        fitted = fit(data, RecommendOptions(model=model, epochs=15, dim=8, layers=2, seed=0))
        scores[model] = {m["k"]: m["ndcg"] for m in evaluate(fitted, data, ks=(5,))}[5]
    assert scores["lightgcn"] > scores["popularity"] + 0.2 and scores["mf"] > scores["popularity"] + 0.2, scores
