-- The shop's own model on top of a lookalike mart: the top decile of customers by spend,
-- a typical seed for `lookalike expand`.
with features as (
    select * from {{ ref('lookalike', 'customer_features') }}
),

ranked as (
    select
        customer_id,
        total_spend,
        order_count,
        recency_days,
        location_area,
        ntile(10) over (order by total_spend desc, customer_id) as spend_decile
    from features
    where order_count > 0
)

select customer_id, total_spend, order_count, recency_days, location_area
from ranked
where spend_decile = 1
