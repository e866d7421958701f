-- One row per customer: the encoder's input, all from the FEATURE window.
with customers as (
    select * from {{ ref('stg_customers') }}
),

windows as (
    select * from {{ ref('int_time_windows') }}
),

orders as (
    select * from {{ ref('int_customer_orders_aggregated') }}
),

categories as (
    select * from {{ ref('categories') }}
),

category_counts as (
    select * from {{ ref('int_customer_category_counts') }}
),

visits as (
    select visits.customer_id, count(*) as visit_count
    from {{ ref('stg_visits') }} as visits
    cross join windows
    where visits.visited_at >= windows.data_start_at and visits.visited_at < windows.feature_end_at
    group by visits.customer_id
),

engagements as (
    select engagements.customer_id, count(*) as engagement_count
    from {{ ref('stg_engagements') }} as engagements
    cross join windows
    where engagements.engaged_at >= windows.data_start_at and engagements.engaged_at < windows.feature_end_at
    group by engagements.customer_id
),

category_shares as (
    select
        category_counts.customer_id,
        {{ ordered_array_agg('categories.category_id', 'categories.category_id') }} as category_ids,
        {{ ordered_array_agg('cast(category_counts.order_line_count as double) / customer_totals.order_line_count', 'categories.category_id') }} as category_shares
    from category_counts
    inner join categories on categories.category = category_counts.category
    inner join (
        select customer_id, sum(order_line_count) as order_line_count
        from category_counts
        group by customer_id
    ) as customer_totals on customer_totals.customer_id = category_counts.customer_id
    group by category_counts.customer_id
),

final as (
    select
        customers.customer_id,
        cast(coalesce(orders.order_count, 0) as double) as order_count,
        cast(coalesce(orders.order_line_count, 0) as double) as order_line_count,
        cast(coalesce(orders.total_quantity, 0) as double) as total_quantity,
        cast(coalesce(orders.total_spend, 0) as double) as total_spend,
        cast(coalesce(orders.total_spend / nullif(orders.order_count, 0), 0) as double) as avg_order_value,
        cast(coalesce(orders.order_line_count / nullif(orders.order_count, 0), 0) as double) as avg_lines_per_order,
        cast(coalesce(orders.return_line_count, 0) as double) as return_line_count,
        cast(coalesce(orders.distinct_categories, 0) as double) as distinct_categories,
        cast(coalesce(orders.active_months, 0) as double) as active_months,
        cast(coalesce(orders.order_count, 0) / greatest(windows.feature_window_days / cast(30.4375 as double), 1.0) as double) as orders_per_month,
        cast(coalesce(
            {{ dbt.datediff('orders.last_ordered_at', 'windows.feature_end_at', 'day') }},
            windows.feature_window_days
        ) as double) as recency_days,
        cast(greatest(coalesce(
            {{ dbt.datediff('coalesce(cast(customers.signup_date as timestamp), orders.first_ordered_at)', 'windows.feature_end_at', 'day') }},
            0
        ), 0) as double) as tenure_days,
        cast(coalesce(visits.visit_count, 0) as double) as visit_count,
        cast(coalesce(engagements.engagement_count, 0) as double) as engagement_count,
        coalesce(lower(trim(customers.gender)), 'unknown') as gender,
        coalesce(lower(trim(customers.age_band)), 'unknown') as age_band,
        coalesce(lower(trim(customers.income_band)), 'unknown') as income_band,
        coalesce(lower(trim(customers.education)), 'unknown') as education,
        coalesce(lower(trim(customers.occupation)), 'unknown') as occupation,
        coalesce(concat_ws(', ', customers.street, customers.city, nullif(concat_ws(' ', customers.state, customers.zip), '')), '') as location_text,
        coalesce(concat_ws(', ', customers.city, nullif(concat_ws(' ', customers.state, customers.zip), '')), '') as location_area,
        coalesce(category_shares.category_ids, {{ empty_array('integer') }}) as category_ids,
        coalesce(category_shares.category_shares, {{ empty_array('double') }}) as category_shares
    from customers
    cross join windows
    left join orders on orders.customer_id = customers.customer_id
    left join visits on visits.customer_id = customers.customer_id
    left join engagements on engagements.customer_id = customers.customer_id
    left join category_shares on category_shares.customer_id = customers.customer_id
)

select * from final
