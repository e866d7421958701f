-- One row per product category seen in either window, with a dense category_id (0..n-1)
-- that indexes customer_features.category_ids. Ordered by department, then category.
with category_counts as (
    select * from {{ ref('int_customer_category_counts') }}
),

order_lines as (
    select category, department
    from {{ ref('int_order_lines_windowed') }}
    where category is not null
),

departments as (
    -- A category belongs to its most frequent department ('unknown' when the source has none).
    select category, department
    from (
        select
            category,
            coalesce(department, 'unknown') as department,
            row_number() over (partition by category order by count(*) desc, coalesce(department, 'unknown')) as department_rank
        from order_lines
        group by category, coalesce(department, 'unknown')
    ) as ranked
    where department_rank = 1
),

line_counts as (
    select
        category,
        sum(order_line_count) as order_line_count
    from category_counts
    group by category
),

final as (
    select
        cast(row_number() over (order by departments.department, departments.category) - 1 as integer) as category_id,
        departments.category,
        departments.department,
        cast(coalesce(line_counts.order_line_count, 0) as bigint) as order_line_count
    from departments
    left join line_counts on line_counts.category = departments.category
)

select * from final
