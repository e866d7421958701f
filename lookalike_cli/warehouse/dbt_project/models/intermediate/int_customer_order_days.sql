{{ config(
    materialized=('incremental' if incremental_aggregates_enabled() else 'table'),
    unique_key=['customer_id', 'first_ordered_day', 'last_ordered_day'],
    incremental_strategy='delete+insert',
) }}
-- One row per customer and order day (the days of an order's first and last line): the orders'
-- activity sums over EVERY order line, whatever the cutoff. int_customer_orders_aggregated evaluates
-- each point in time from these rows (cutoffs are at midnight, so a day is wholly before or after one,
-- and the 90-day recent window and active months are day- and month-exact). Cutoff-free, so
-- `lookalike refresh` can merge appended lines in (var incremental_aggregates): only the new orders are
-- aggregated, and their sums add to the day's (min / max for the first / last timestamps).
-- Returns count against spend (net) but not against orders, lines or quantity.
with order_lines as (
    select
        customer_id,
        order_id,
        ordered_at,
        quantity,
        amount,
        quantity < 0 or amount < 0 as is_return
    from {{ ref('stg_order_lines') }}
    where {{ new_order_lines_filter() }}
),

orders as (
    select
        customer_id,
        order_id,
        sum(case when not is_return then 1 else 0 end) as purchased_line_count,
        sum(case when not is_return then quantity else 0 end) as purchased_quantity,
        -- Exact (decimal) sums: a double sum's last bits depend on the order rows are added in, which a
        -- merge changes; a changed bit would re-score a customer whose orders did not change.
        sum(cast(amount as decimal(38, 9))) as net_amount,
        sum(case when is_return then 1 else 0 end) as return_line_count,
        min(ordered_at) as first_ordered_at,
        max(ordered_at) as last_ordered_at
    from order_lines
    group by customer_id, order_id
),

order_days as (
    select
        customer_id,
        cast(first_ordered_at as date) as first_ordered_day,
        cast(last_ordered_at as date) as last_ordered_day,
        -- An order counts as an order only with a purchased line (a return-only order does not).
        sum(case when purchased_line_count > 0 then 1 else 0 end) as order_count,
        sum(purchased_line_count) as order_line_count,
        sum(purchased_quantity) as total_quantity,
        sum(net_amount) as net_amount,
        sum(return_line_count) as return_line_count,
        min(first_ordered_at) as first_ordered_at,
        max(last_ordered_at) as last_ordered_at
    from orders
    group by 1, 2, 3
)

{% if is_incremental() %}
, merged as (
    -- The new orders' days plus what the table holds for those days, summed again.
    select
        customer_id, first_ordered_day, last_ordered_day,
        sum(order_count) as order_count,
        sum(order_line_count) as order_line_count,
        sum(total_quantity) as total_quantity,
        sum(net_amount) as net_amount,
        sum(return_line_count) as return_line_count,
        min(first_ordered_at) as first_ordered_at,
        max(last_ordered_at) as last_ordered_at
    from (
        select * from order_days
        union all
        select held.customer_id, held.first_ordered_day, held.last_ordered_day, held.order_count, held.order_line_count,
            held.total_quantity, held.net_amount, held.return_line_count, held.first_ordered_at, held.last_ordered_at
        from {{ this }} as held
        semi join order_days as touched
            on touched.customer_id = held.customer_id
            and touched.first_ordered_day = held.first_ordered_day
            and touched.last_ordered_day = held.last_ordered_day
    ) as both_sides
    group by 1, 2, 3
)

select * from merged
{% else %}
select * from order_days
{% endif %}
