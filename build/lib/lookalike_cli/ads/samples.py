"""The Complete Journey ads proxy (`lookalike load-sample completejourney --ads`).

An ad = a product bought in at least `min_baskets` baskets (default 50: 6,356 products with a tail
of ads that have little history for clusters to pool, while every ad is still observed; 200 gives
1,044 popular products, all with plenty of history); its text = product category, product type,
brand and package size; taxonomy = department -> product_category -> product_type. A click = a basket containing the product,
revenue = its sales value, and the basket is the "query": two products co-clicked = bought in
the same basket. Complete Journey has no ad cost, so cost = clicks x NOMINAL_COST_PER_CLICK (as if
every ad had had the same bid); there is no margin column.
"""

from __future__ import annotations

import time
from pathlib import Path

from lookalike_cli.warehouse.samples import completejourney_dir
from lookalike_cli.warehouse.connection import connection, transaction

NOMINAL_COST_PER_CLICK = 0.5


def load_completejourney_ads(db_path: Path, min_baskets: int = 50) -> dict[str, int]:
    """Replace raw.ads, raw.ad_daily_stats and raw.ad_query_clicks in one transaction; return row counts."""
    started = time.perf_counter()
    transactions = "'" + str(completejourney_dir() / "transactions.parquet").replace("'", "''") + "'"
    products = "'" + str(completejourney_dir() / "products.parquet").replace("'", "''") + "'"
    statements = {
        "ads": f"""
            create or replace table raw.ads as
            with popular as (
                select product_id from {transactions} group by product_id having count(distinct basket_id) >= {int(min_baskets)}
            )
            select
                products.product_id as ad_id,
                lower(concat_ws(' ', products.product_category, products.product_type, products.brand, products.package_size)) as ad_text,
                products.department,
                products.product_category as category,
                products.product_type
            from {products} as products
            inner join popular using (product_id)
            order by ad_id
        """,
        "ad_query_clicks": f"""
            create or replace table raw.ad_query_clicks as
            select
                transactions.product_id as ad_id,
                cast(transactions.basket_id as varchar) as query_id,
                cast(min(transactions.transaction_timestamp) as date) as stat_date,
                1 as clicks
            from {transactions} as transactions
            inner join raw.ads on raw.ads.ad_id = transactions.product_id
            group by 1, 2
        """,
        "ad_daily_stats": f"""
            create or replace table raw.ad_daily_stats as
            with lines as (
                select transactions.product_id as ad_id, cast(transactions.transaction_timestamp as date) as stat_date,
                       transactions.basket_id, transactions.sales_value
                from {transactions} as transactions
                inner join raw.ads on raw.ads.ad_id = transactions.product_id
            )
            select
                ad_id,
                stat_date,
                count(distinct basket_id) as clicks,
                round(count(distinct basket_id) * {NOMINAL_COST_PER_CLICK}, 2) as cost,
                round(sum(sales_value), 2) as revenue
            from lines
            group by 1, 2
        """,
    }
    counts: dict[str, int] = {}
    with connection(Path(db_path)) as con, transaction(con):
        con.execute("create schema if not exists raw")
        for name, sql in statements.items():
            con.execute(sql)
            counts[name] = con.execute(f"select count(*) from raw.{name}").fetchone()[0]
    counts["seconds"] = round(time.perf_counter() - started, 2)
    return counts
