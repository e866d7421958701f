{% macro customer_features_as_of(point_in_time, customers=none) %}
{#- The one definition of a customer's features, as of a point in time of int_feature_cutoffs
    ('training' = feature_end_at, 'serving' = as_of_at). Every count, share and date difference
    uses only data before that cutoff; customer_features and training_features both call this,
    so the encoder is trained and applied on identically computed inputs. `customers`: a condition on
    query of customer ids to compute (a refresh merge computes only the changed ones), evaluated once. -#}
{%- set only = 'where customer_id in (select customer_id from changed_customers)' if customers else '' %}
{%- set also = 'and customer_id in (select customer_id from changed_customers)' if customers else '' %}
with {% if customers %}changed_customers as materialized (
    {{ customers }}
),

{% endif %}customers as (
    select * from {{ ref('stg_customers') }}
    {{ only }}
),

cutoffs as (
    select point_in_time, data_start_at, cutoff_at,
        {{ dbt.datediff('data_start_at', 'cutoff_at', 'day') }} as window_days
    from {{ ref('int_feature_cutoffs') }}
    where point_in_time = '{{ point_in_time }}'
),

orders as (
    select * from {{ ref('int_customer_orders_aggregated') }}
    where point_in_time = '{{ point_in_time }}' {{ also }}
),

categories as (
    select * from {{ ref('categories') }}
),

category_counts as (
    -- One model per cutoff (refresh builds the serving one only): int_customer_category_counts_<point in time>.
    select * from {{ ref('int_customer_category_counts_' ~ point_in_time) }}
    {{ only }}
),

visits as (
    select visits.customer_id, count(*) as visit_count
    from {{ ref('stg_visits') }} as visits
    cross join cutoffs
    where visits.visited_at >= cutoffs.data_start_at and visits.visited_at < cutoffs.cutoff_at {{ also }}
    group by visits.customer_id
),

engagements as (
    select engagements.customer_id, count(*) as engagement_count
    from {{ ref('stg_engagements') }} as engagements
    cross join cutoffs
    where engagements.engaged_at >= cutoffs.data_start_at and engagements.engaged_at < cutoffs.cutoff_at {{ also }}
    group by engagements.customer_id
),

category_shares as (
    select
        category_counts.customer_id,
        {{ ordered_array_agg('categories.category_id', 'categories.category_id') }} as category_ids,
        {{ ordered_array_agg('cast(category_counts.order_line_count as double) / customer_totals.order_line_count', 'categories.category_id') }} as category_shares,
        count(*) as distinct_categories
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
        cast(coalesce(category_shares.distinct_categories, 0) as double) as distinct_categories,
        cast(coalesce(orders.active_months, 0) as double) as active_months,
        cast(coalesce(orders.order_count, 0) / greatest(cutoffs.window_days / cast(30.4375 as double), 1.0) as double) as orders_per_month,
        cast(coalesce(orders.recent_order_count, 0) as double) as recent_order_count,
        cast(coalesce(orders.recent_spend, 0) as double) as recent_spend,
        cast(coalesce(
            {{ dbt.datediff('orders.last_ordered_at', 'cutoffs.cutoff_at', 'day') }},
            cutoffs.window_days
        ) as double) as recency_days,
        cast(greatest(coalesce(
            {{ dbt.datediff('coalesce(cast(customers.signup_date as timestamp), orders.first_ordered_at)', 'cutoffs.cutoff_at', 'day') }},
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
        coalesce(category_shares.category_shares, {{ empty_array('double') }}) as category_shares,
        cast(cutoffs.cutoff_at as timestamp) as features_as_of
    from customers
    cross join cutoffs
    left join orders on orders.customer_id = customers.customer_id
    left join visits on visits.customer_id = customers.customer_id
    left join engagements on engagements.customer_id = customers.customer_id
    left join category_shares on category_shares.customer_id = customers.customer_id
)

select * from final
{% endmacro %}
