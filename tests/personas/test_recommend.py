"""`lookalike recommend` (issue 19): LightGCN on the customer-persona-item graph, trained through the CLI
on a copy of the shared generated warehouse (3,000 customers), plus the ranking metrics and the bad
inputs that must leave the published recommendations as they were."""

from __future__ import annotations

import dataclasses
import hashlib

import duckdb
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from lookalike_cli.errors import ParameterError
from lookalike_cli.personas.recommend import (
    Fitted, Interactions, RecommendOptions, evaluate, fit, normalised_adjacency, sample_negatives, top_k,
)
from tests.helpers import cli_error, copy_warehouse, query, run_cli, serving_connection

EPOCHS = "20"


def serving_rows(settings, sql: str) -> list[tuple]:
    with serving_connection(settings) as con:
        return con.execute(sql).fetchall()


def joined_rows(settings, sql: str) -> list[tuple]:
    """Rows of a query on the warehouse with the serving file attached as `serving`."""
    with duckdb.connect(str(settings.db_path), read_only=True) as con:
        con.execute(f"attach '{settings.serving_db_path}' as serving (read_only)")
        return con.execute(sql).fetchall()


def digest(settings) -> str:
    rows = serving_rows(settings, "select * from customer_recommendations order by customer_id, rank")
    return hashlib.sha256(repr(rows).encode()).hexdigest()


@pytest.fixture(scope="module")
def warehouse(generated_warehouse, tmp_path_factory) -> dict:
    """The generated warehouse with personas (5% zero-shot, propagated) and one published recommendation run;
    also a copy without personas that publishes to the same serving file."""
    folder = tmp_path_factory.mktemp("recommend")
    settings = copy_warehouse(generated_warehouse, folder, "recommend")
    no_personas = dataclasses.replace(copy_warehouse(generated_warehouse, folder, "no_personas"),
                                      serving_db_path=settings.serving_db_path)
    run_cli(settings, "personas", "label", "--fraction", "0.05", "--seed", "1")
    run_cli(settings, "personas", "propagate")
    result = run_cli(settings, "recommend", "--k", "5", "--epochs", EPOCHS, "--seed", "1", "--threads", "1")
    return {"settings": settings, "no_personas": no_personas, "output": result.output}


@pytest.mark.slow
def test_recommend_publishes_top_k_new_items_for_every_customer(warehouse):
    settings = warehouse["settings"]
    assert "NDCG@10" in warehouse["output"] and "persona-lightgcn" in warehouse["output"]
    columns = [r[0] for r in serving_rows(settings, "describe customer_recommendations")]
    assert columns == ["customer_id", "rank", "item", "score", "model_version"]
    per_customer = serving_rows(settings, """
        select count(*), min(rank), max(rank), count(distinct item), bool_and(score is not null)
        from customer_recommendations group by customer_id""")
    assert all(n == 5 and lo == 1 and hi == 5 and distinct == 5 and scored for n, lo, hi, distinct, scored in per_customer)
    # Ranks follow scores.
    assert serving_rows(settings, """
        select count(*) from (select score < lead(score) over (partition by customer_id order by rank) as wrong
                              from customer_recommendations) where wrong""")[0][0] == 0
    # Published from the serving window (--refit, the default): evaluated on the feature window, trained
    # again on every purchase before as_of_at. Nothing bought before it is recommended (the default).
    assert "again on the serving window" in warehouse["output"]
    assert joined_rows(settings, """
        select count(*) from serving.customer_recommendations r
        join raw.order_lines o on o.customer_id = r.customer_id and o.category = r.item
        where o.ordered_at < (select as_of_at from int_time_windows) and o.quantity > 0 and o.amount >= 0
    """)[0][0] == 0
    # Every customer is covered: those with a purchase by the model, the others (no orders before
    # as_of_at) by the serving window's most popular items, in that order.
    trained_sql = """
        select distinct customer_id from raw.order_lines
        where ordered_at < (select as_of_at from int_time_windows) and category is not null and quantity >= 0 and amount >= 0"""
    trained = query(settings, f"select count(*) from ({trained_sql})")[0][0]
    customers = query(settings, "select count(*) from customer_features")[0][0]
    assert len(per_customer) == customers >= trained
    popular = [r[0] for r in query(settings, """
        select category from raw.order_lines
        where ordered_at < (select as_of_at from int_time_windows) and category is not null and quantity >= 0 and amount >= 0
        group by category order by count(distinct customer_id) desc, category limit 5""")]
    cold = joined_rows(settings, f"""
        select customer_id, list(item order by rank) from serving.customer_recommendations
        where customer_id not in ({trained_sql}) group by customer_id""")
    assert len(cold) == customers - trained and all(items == popular for _, items in cold), (popular, cold[:3])
    version = serving_rows(settings, "select distinct model_version from customer_recommendations")
    runs = serving_rows(settings, "select model_version, model, k, customers, cold_start_customers, window_kind from recommendation_runs")
    assert len(version) == 1
    assert runs == [(version[0][0], "persona-lightgcn", 5, trained, customers - trained, "feature, published from serving")]


@pytest.mark.slow
def test_ours_beats_popularity_on_held_out_ndcg(warehouse):
    metrics = dict(serving_rows(warehouse["settings"], "select model, ndcg from recommendation_metrics where k = 10"))
    assert set(metrics) == {"persona-lightgcn", "popularity"}
    assert metrics["persona-lightgcn"] > metrics["popularity"], metrics


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--item-column", "product_id"], "--item-column 'product_id' not found in raw.order_lines (columns: "),
    (["--k", "100000"], "--k 100000 is larger than the 300 items (category) of the training window: choose --k 300 or less."),
    (["--k", "0"], "--k must be at least 1"),
])
def test_bad_input_is_one_line_and_keeps_previous_recommendations(warehouse, args, message):
    settings = warehouse["settings"]
    before = digest(settings)
    assert message in cli_error(settings, "recommend", "--epochs", "1", *args)
    assert digest(settings) == before


@pytest.mark.slow
def test_no_personas_yet_is_one_line_and_keeps_previous_recommendations(warehouse):
    no_personas = warehouse["no_personas"]  # publishes to the same serving file
    before = digest(no_personas)
    message = cli_error(no_personas, "recommend")
    assert message.startswith("Table customer_personas not found: --model 'persona-lightgcn' needs personas.")
    assert "lookalike personas propagate" in message
    assert digest(no_personas) == before
    # The customer-item models need no personas.
    run_cli(no_personas, "recommend", "--model", "popularity", "--no-publish")
    assert digest(no_personas) == before


@pytest.mark.slow
def test_serving_window_learns_from_all_data_without_evaluation(warehouse):
    settings = warehouse["settings"]
    before = digest(settings)
    result = run_cli(settings, "recommend", "--model", "popularity", "--window", "serving", "--no-publish")
    assert "Held out" not in result.output and "NDCG" not in result.output
    as_of_at = query(settings, "select cast(as_of_at as date) from int_time_windows")[0][0]
    assert f".. {as_of_at})" in result.output  # trained on everything before as_of_at (the day after as_of_date)
    assert digest(settings) == before  # --no-publish writes nothing


# --------------------------------------------------------------------------- units (no warehouse)


def tiny(train_rows, test_rows, n_users=3, n_items=4) -> Interactions:
    def matrix(pairs):
        r, c = zip(*pairs) if pairs else ((), ())
        return sp.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=(n_users, n_items))

    return Interactions(np.arange(n_users, dtype=np.int64) + 100, np.array([f"i{j}" for j in range(n_items)], dtype=object),
                        matrix(train_rows), matrix(test_rows), {}, "t", "item")


def test_option_errors_name_the_python_parameter():
    with pytest.raises(ParameterError, match=r"^k must be at least 1, got 0\.$"):
        RecommendOptions(k=0).validate()
    with pytest.raises(ParameterError, match=r"^Unknown model 'gcn'; choose one of persona-lightgcn, lightgcn, mf, popularity\.$"):
        RecommendOptions(model="gcn").validate()


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
    # Against D^-1/2 A D^-1/2 of the full customers | items | personas matrix, formed densely.
    full = np.zeros((73, 73))
    full[:50, 50:70], full[:50, 70:] = train.toarray(), personas.toarray()
    full = full + full.T
    degree = full.sum(axis=1)
    expected = full / np.sqrt(np.outer(np.maximum(degree, 1), np.maximum(degree, 1)))
    assert np.allclose(adjacency.dense(), expected, atol=1e-6)
    x = torch.randn(73, 5, generator=torch.Generator().manual_seed(0))
    assert np.allclose((adjacency @ x).numpy(), expected @ x.numpy(), atol=1e-5)


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
