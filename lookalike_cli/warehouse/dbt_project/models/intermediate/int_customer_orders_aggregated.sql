{{ config(
    materialized=('incremental' if incremental_aggregates_enabled() else 'table'),
    unique_key=['point_in_time', 'customer_id'],
    incremental_strategy='delete+insert',
) }}
{%- set recent_days = var('recent_days') | int -%}
-- One row per point in time and customer with order lines before the cutoff: activity aggregates,
-- over the whole history before the cutoff and over its last `recent_days` days.
-- Returns count against spend (net) but not against orders, lines or quantity.
-- Evaluated from the customer's order days (int_customer_order_days, every line once): a day is
-- wholly before or after a cutoff (cutoffs are at midnight), so each point in time takes the days
-- before its cutoff, and the date-relative sums (recent_*) are computed here, as of the cutoff,
-- never stored: an order day 91 days before a cutoff is not recent, whenever its row was written.
-- In a refresh merge (incremental_aggregates) only the customers with order days after the last line this
-- table holds are evaluated again, unless the cutoffs moved (a new day): then every customer is.
with order_days as (
    select * from {{ ref('int_customer_order_days') }}
    {% if is_incremental() %}
    where {{ customers_with_new_order_lines('customer_id', this) }}
    {% endif %}
),

cutoffs as (
    select * from {{ ref('int_feature_cutoffs') }}
),

days_point_in_time as (
    select
        cutoffs.point_in_time,
        order_days.*,
        order_days.first_ordered_day >= cast({{ dbt.dateadd('day', -recent_days, 'cutoffs.cutoff_at') }} as date) as is_recent
    from order_days
    inner join cutoffs
        on order_days.first_ordered_at >= cutoffs.data_start_at
        and order_days.last_ordered_day < cast(cutoffs.cutoff_at as date)
),

final as (
    select
        point_in_time,
        customer_id,
        sum(order_count) as order_count,
        sum(order_line_count) as order_line_count,
        sum(total_quantity) as total_quantity,
        -- Exact decimal sums (int_customer_order_days), doubles from here on as before.
        cast(sum(net_amount) as double) as total_spend,
        sum(return_line_count) as return_line_count,
        count(distinct {{ dbt.date_trunc('month', 'first_ordered_day') }}) as active_months,
        sum(case when is_recent then order_count else 0 end) as recent_order_count,
        cast(sum(case when is_recent then net_amount else 0 end) as double) as recent_spend,
        min(first_ordered_at) as first_ordered_at,
        max(last_ordered_at) as last_ordered_at
    from days_point_in_time
    group by point_in_time, customer_id
)

select * from final
