-- One row per customer and category: purchased lines before the TRAINING cutoff (feature_end_date;
-- returns and lines without a category excluded), with the category's department. Feeds the
-- training features' category shares and top categories (pair sampling). Only `lookalike train`
-- reads it, so refresh leaves it (train builds it when the raw tables changed since).
with order_lines as (
    select * from {{ ref('int_order_lines_point_in_time') }}
    where point_in_time = 'training'
      and not is_return
      and category is not null
),

final as (
    select
        customer_id,
        category,
        min(coalesce(department, 'unknown')) as department,
        count(*) as order_line_count
    from order_lines
    group by customer_id, category
)

select * from final
