{{ config(
    materialized=('incremental' if incremental_aggregates_enabled() else 'table'),
    unique_key=['customer_id', 'category'],
    incremental_strategy='delete+insert',
) }}
-- Both branches' inputs, declared for dbt (a ref inside `if is_incremental()` is not seen at parse time):
-- depends_on: {{ ref('stg_order_lines') }}, {{ ref('int_order_lines_point_in_time') }}
-- One row per customer and category: purchased lines before the SERVING cutoff (as_of_date; returns
-- and lines without a category excluded), with the category's department. Feeds category shares
-- (customer_features) and the categories mart. Split from the training cutoff's counts
-- (int_customer_category_counts_training) so `lookalike refresh`, which does not retrain, builds only
-- this one, and so it can merge appended lines in (incremental_aggregates: as_of_date unset, the serving
-- cutoff is the end of data, every line counts): the new lines' counts add to the customer's.
with order_lines as (
    {% if is_incremental() %}
    select *, quantity < 0 or amount < 0 as is_return
    from {{ ref('stg_order_lines') }}
    where {{ new_order_lines_filter() }}
    {% else %}
    select * from {{ ref('int_order_lines_point_in_time') }}
    where point_in_time = 'serving'
    {% endif %}
),

counted as (
    select
        customer_id,
        category,
        min(coalesce(department, 'unknown')) as department,
        count(*) as order_line_count,
        -- The last line counted: refresh checks that no merge ran after its own (a merge it did not record).
        max(ordered_at) as last_ordered_at
    from order_lines
    where not is_return
      and category is not null
    group by customer_id, category
)

{% if is_incremental() %}
, merged as (
    select customer_id, category, min(department) as department, sum(order_line_count) as order_line_count,
        max(last_ordered_at) as last_ordered_at
    from (
        select * from counted
        union all
        select held.customer_id, held.category, held.department, held.order_line_count, held.last_ordered_at
        from {{ this }} as held
        semi join counted as touched on touched.customer_id = held.customer_id and touched.category = held.category
    ) as both_sides
    group by customer_id, category
)

select * from merged
{% else %}
select * from counted
{% endif %}
