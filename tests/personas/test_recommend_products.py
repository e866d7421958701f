"""`lookalike recommend --item-column product_id`: products as items (Complete Journey's raw contract has a
product_id beside the category), on a small hand-made warehouse with a planted answer, so no dbt build
is needed: the recommender reads only raw order lines, int_time_windows and customer_features' ids."""

from __future__ import annotations

from datetime import datetime, timedelta

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from tests.helpers import cli_error, make_settings, run_cli, serving_connection

FEATURE_END = datetime(2025, 7, 1)
LABEL_END = datetime(2025, 10, 1)
AS_OF = datetime(2025, 10, 1)


@pytest.fixture(scope="module")
def product_warehouse(tmp_path_factory):
    """300 customers in 3 groups; each group buys its own 12 products (4 categories of 3 products, shared by
    every group, so the category says nothing). Training window: 4 of the group's products; held out: 2 more.
    40 customers have no order before as_of (cold start)."""
    settings = make_settings(tmp_path_factory.mktemp("recommend_products"))
    rng = np.random.default_rng(3)
    rows = {"customer_id": [], "order_id": [], "ordered_at": [], "category": [], "product_id": [], "quantity": [], "amount": []}
    customers, groups, per_group = 300, 3, 12
    for customer in range(customers - 40):
        products = 1000 + (customer % groups) * per_group + rng.permutation(per_group)
        for n, product in enumerate(products[:6]):
            held_out = n >= 4
            day = rng.integers(0, 80) if held_out else rng.integers(0, 170)
            rows["customer_id"].append(customer)
            rows["order_id"].append(len(rows["order_id"]))
            rows["ordered_at"].append((FEATURE_END if held_out else datetime(2025, 1, 1)) + timedelta(days=int(day)))
            rows["category"].append(f"cat{product % 4}")
            rows["product_id"].append(int(product))
            rows["quantity"].append(1)
            rows["amount"].append(2.5)
    with duckdb.connect(str(settings.db_path)) as con:
        con.execute("create schema raw")
        con.register("lines", pa.table(rows))
        con.execute("create table raw.order_lines as select * from lines")
        con.execute("create table int_time_windows as select $1::timestamp as data_start_at, $2::timestamp as feature_end_at, "
                    "$3::timestamp as label_end_at, $4::timestamp as as_of_at",
                    [datetime(2025, 1, 1), FEATURE_END, LABEL_END, AS_OF])
        con.execute(f"create table customer_features as select range as customer_id from range({customers})")
    return settings


def test_products_as_items_publish_product_ids_and_beat_popularity(product_warehouse):
    settings = product_warehouse
    output = run_cli(settings, "recommend", "--model", "lightgcn", "--item-column", "product_id", "--k", "3",
                     "--epochs", "12", "--dim", "8", "--layers", "2", "--seed", "0", "--threads", "1").output
    assert "x 36 items" in output, output  # products, not the 4 categories
    with serving_connection(settings) as con:
        items = {r[0] for r in con.execute("select distinct item from customer_recommendations").fetchall()}
        metrics = dict(con.execute("select model, ndcg from recommendation_metrics where k = 10").fetchall())
        run = con.execute("select item_column, items, cold_start_customers from recommendation_runs").fetchall()
        per_customer = con.execute("select count(*) from customer_recommendations group by customer_id").fetchall()
        # Every recommendation of a trained customer is a product of its own group it has not bought.
        wrong_group = con.execute("""
            select count(*) from customer_recommendations
            where customer_id < 260 and (cast(item as integer) - 1000) // 12 != customer_id % 3""").fetchall()[0][0]
    assert items <= {str(p) for p in range(1000, 1036)} and len(items) > 3
    assert run == [("product_id", 36, 40)]
    assert len(per_customer) == 300 and {n for (n,) in per_customer} == {3}
    assert wrong_group == 0
    assert metrics["lightgcn"] > metrics["popularity"] + 0.2, metrics


def test_k_above_the_product_count_names_the_item_column(product_warehouse):
    message = cli_error(product_warehouse, "recommend", "--model", "lightgcn", "--item-column", "product_id", "--k", "37")
    assert message == ("--k 37 is larger than the 36 items (product_id) of the training window: choose --k 36 or less.")
