-- Sparse per-category vectors from the LABEL window, one row per customer, signal and
-- category: orders (distinct orders), visits and engagements (counts). Similarity labels
-- are cosines of these vectors.
with order_lines as (
    select * from {{ ref('int_order_lines_windowed') }}
    where window_name = 'label'
      and not is_return
      and category is not null
),

windows as (
    select * from {{ ref('int_time_windows') }}
),

visits as (
    select visits.customer_id, visits.category
    from {{ ref('stg_visits') }} as visits
    cross join windows
    where visits.visited_at >= windows.feature_end_at
      and visits.visited_at < windows.label_end_at
      and visits.category is not null
),

engagements as (
    select engagements.customer_id, engagements.category
    from {{ ref('stg_engagements') }} as engagements
    cross join windows
    where engagements.engaged_at >= windows.feature_end_at
      and engagements.engaged_at < windows.label_end_at
      and engagements.category is not null
),

final as (
    -- The paper's O_A: number of orders with the category (distinct orders, not lines).
    select customer_id, 'orders' as signal, category, cast(count(distinct order_id) as double) as weight
    from order_lines
    group by customer_id, category

    union all

    select customer_id, 'visits' as signal, category, cast(count(*) as double) as weight
    from visits
    group by customer_id, category

    union all

    select customer_id, 'engagements' as signal, category, cast(count(*) as double) as weight
    from engagements
    group by customer_id, category
)

select * from final
