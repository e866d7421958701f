-- One row per product category purchased before as_of_date, with a dense category_id
-- (0..n-1, by department then category) that indexes category_ids in both customer_features
-- and training_features (serving sees every category training sees, and newer ones).
with category_counts as (
    select * from {{ ref('int_customer_category_counts_serving') }}
),

by_department as (
    select category, department, sum(order_line_count) as order_line_count
    from category_counts
    group by category, department
),

ranked as (
    -- A category belongs to its most frequent department ('unknown' when the source has none).
    select
        category,
        department,
        row_number() over (partition by category order by order_line_count desc, department) as department_rank,
        sum(order_line_count) over (partition by category) as category_line_count
    from by_department
),

final as (
    select
        cast(row_number() over (order by department, category) - 1 as integer) as category_id,
        category,
        department,
        cast(category_line_count as bigint) as order_line_count
    from ranked
    where department_rank = 1
)

select * from final
