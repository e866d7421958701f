-- One row per customer with feature-window order lines: activity aggregates.
-- Returns count against spend (net) but not against orders, lines or quantity.
with order_lines as (
    select * from {{ ref('int_order_lines_windowed') }}
    where window_name = 'feature'
),

final as (
    select
        customer_id,
        count(distinct case when not is_return then order_id end) as order_count,
        sum(case when not is_return then 1 else 0 end) as order_line_count,
        sum(case when not is_return then quantity else 0 end) as total_quantity,
        sum(amount) as total_spend,
        sum(case when is_return then 1 else 0 end) as return_line_count,
        count(distinct case when not is_return then category end) as distinct_categories,
        count(distinct {{ dbt.date_trunc('month', 'ordered_at') }}) as active_months,
        min(ordered_at) as first_ordered_at,
        max(ordered_at) as last_ordered_at
    from order_lines
    group by customer_id
)

select * from final
