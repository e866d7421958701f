{%- set recent_days = var('recent_days') | int -%}
-- One row per point in time and customer with order lines before the cutoff: activity aggregates,
-- over the whole history before the cutoff and over its last `recent_days` days.
-- Returns count against spend (net) but not against orders, lines or quantity.
-- Aggregated per order first (an order falls wholly before or after a cutoff), then each order is
-- given to every point in time whose cutoff comes after it: the line-level scan happens once.
with order_lines as (
    select
        *,
        quantity < 0 or amount < 0 as is_return
    from {{ ref('stg_order_lines') }}
),

cutoffs as (
    select * from {{ ref('int_feature_cutoffs') }}
),

orders as (
    select
        customer_id,
        order_id,
        sum(case when not is_return then 1 else 0 end) as purchased_line_count,
        sum(case when not is_return then quantity else 0 end) as purchased_quantity,
        sum(amount) as net_amount,
        sum(case when is_return then 1 else 0 end) as return_line_count,
        min(ordered_at) as first_ordered_at,
        max(ordered_at) as last_ordered_at
    from order_lines
    group by customer_id, order_id
),

orders_point_in_time as (
    select
        cutoffs.point_in_time,
        cutoffs.cutoff_at,
        orders.*,
        orders.first_ordered_at >= {{ dbt.dateadd('day', -recent_days, 'cutoffs.cutoff_at') }} as is_recent
    from orders
    inner join cutoffs
        on orders.first_ordered_at >= cutoffs.data_start_at
        and orders.last_ordered_at < cutoffs.cutoff_at
),

customer_categories as (
    select point_in_time, customer_id, count(*) as distinct_categories
    from {{ ref('int_customer_category_counts') }}
    group by point_in_time, customer_id
),

customer_orders as (
    select
        point_in_time,
        customer_id,
        sum(case when purchased_line_count > 0 then 1 else 0 end) as order_count,
        sum(purchased_line_count) as order_line_count,
        sum(purchased_quantity) as total_quantity,
        sum(net_amount) as total_spend,
        sum(return_line_count) as return_line_count,
        count(distinct {{ dbt.date_trunc('month', 'first_ordered_at') }}) as active_months,
        sum(case when is_recent and purchased_line_count > 0 then 1 else 0 end) as recent_order_count,
        sum(case when is_recent then net_amount else 0 end) as recent_spend,
        min(first_ordered_at) as first_ordered_at,
        max(last_ordered_at) as last_ordered_at
    from orders_point_in_time
    group by point_in_time, customer_id
),

final as (
    select
        customer_orders.point_in_time,
        customer_orders.customer_id,
        customer_orders.order_count,
        customer_orders.order_line_count,
        customer_orders.total_quantity,
        customer_orders.total_spend,
        customer_orders.return_line_count,
        coalesce(customer_categories.distinct_categories, 0) as distinct_categories,
        customer_orders.active_months,
        customer_orders.recent_order_count,
        customer_orders.recent_spend,
        customer_orders.first_ordered_at,
        customer_orders.last_ordered_at
    from customer_orders
    left join customer_categories
        on customer_categories.point_in_time = customer_orders.point_in_time
        and customer_categories.customer_id = customer_orders.customer_id
)

select * from final
