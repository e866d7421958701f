-- One row per customer, window and category: purchased lines and orders (returns and
-- lines without a category excluded). Feeds category shares (feature window) and the
-- order similarity vectors (label window).
with order_lines as (
    select * from {{ ref('int_order_lines_windowed') }}
    where not is_return
      and category is not null
),

final as (
    select
        customer_id,
        window_name,
        category,
        count(*) as order_line_count,
        count(distinct order_id) as order_count
    from order_lines
    group by customer_id, window_name, category
)

select * from final
