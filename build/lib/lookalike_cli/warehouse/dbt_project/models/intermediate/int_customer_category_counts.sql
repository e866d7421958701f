-- One row per point in time, customer and category: purchased lines before the cutoff
-- (returns and lines without a category excluded), with the category's department. Feeds
-- category shares, top categories (pair sampling reads the training rows) and the categories
-- mart. (Label-window vectors are counted in int_customer_label_vectors.)
with order_lines as (
    select * from {{ ref('int_order_lines_point_in_time') }}
    where not is_return
      and category is not null
),

final as (
    select
        point_in_time,
        customer_id,
        category,
        min(coalesce(department, 'unknown')) as department,
        count(*) as order_line_count
    from order_lines
    group by point_in_time, customer_id, category
)

select * from final
