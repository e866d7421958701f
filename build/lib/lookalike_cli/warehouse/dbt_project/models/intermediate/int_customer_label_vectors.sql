-- Sparse per-category vectors from the LABEL window [feature_end_at, label_end_at), one row per
-- customer, signal and category: orders (distinct orders), visits and engagements (counts).
-- Similarity labels are cosines of these vectors: behaviour after the training features' cutoff.
with windows as (
    select * from {{ ref('int_time_windows') }}
),

order_lines as (
    select order_lines.*
    from {{ ref('stg_order_lines') }} as order_lines
    cross join windows
    where order_lines.ordered_at >= windows.feature_end_at
      and order_lines.ordered_at < windows.label_end_at
      and not (order_lines.quantity < 0 or order_lines.amount < 0)
      and order_lines.category is not null
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
