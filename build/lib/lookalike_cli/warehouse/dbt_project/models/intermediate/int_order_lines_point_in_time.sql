{{ config(materialized='view') }}

-- Each order line once per point in time that knows it: lines in [data_start_at, cutoff_at).
-- A line before the training cutoff appears twice (training and serving), a later one once.
with order_lines as (
    select * from {{ ref('stg_order_lines') }}
),

cutoffs as (
    select * from {{ ref('int_feature_cutoffs') }}
),

final as (
    select
        cutoffs.point_in_time,
        cutoffs.cutoff_at,
        order_lines.*,
        order_lines.quantity < 0 or order_lines.amount < 0 as is_return
    from order_lines
    inner join cutoffs
        on order_lines.ordered_at >= cutoffs.data_start_at
        and order_lines.ordered_at < cutoffs.cutoff_at
)

select * from final
