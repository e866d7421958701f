-- One row per customer and category: purchased lines in the FEATURE window (returns and
-- lines without a category excluded), with the category's department. Feeds category
-- shares, top categories and the categories mart. (Label-window vectors are counted in
-- int_customer_label_vectors.)
with order_lines as (
    select * from {{ ref('int_order_lines_windowed') }}
    where window_name = 'feature'
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
