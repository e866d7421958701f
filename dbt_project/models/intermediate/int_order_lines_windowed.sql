{{ config(materialized='view') }}

-- Each order line tagged with the window it falls in; lines outside both windows dropped.
with order_lines as (
    select * from {{ ref('stg_order_lines') }}
),

windows as (
    select * from {{ ref('int_time_windows') }}
),

final as (
    select
        order_lines.*,
        case
            when order_lines.ordered_at < windows.feature_end_at then 'feature'
            else 'label'
        end as window_name,
        order_lines.quantity < 0 or order_lines.amount < 0 as is_return
    from order_lines
    cross join windows
    where order_lines.ordered_at >= windows.data_start_at
      and order_lines.ordered_at < windows.label_end_at
)

select * from final
