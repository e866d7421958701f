-- Both training windows must hold order lines: training features come from the first, labels
-- from the second. A row here names the empty window and its bounds (set the vars
-- feature_end_date / label_end_date / as_of_date inside your order history).
with windows as (
    select * from {{ ref('int_time_windows') }}
),

counts as (
    select
        sum(case when order_lines.ordered_at < windows.feature_end_at then 1 else 0 end) as feature_lines,
        sum(case when order_lines.ordered_at >= windows.feature_end_at and order_lines.ordered_at < windows.label_end_at
            then 1 else 0 end) as label_lines
    from {{ ref('stg_order_lines') }} as order_lines
    cross join windows
    where order_lines.ordered_at >= windows.data_start_at
)

select 'training feature window has no order lines' as problem, windows.data_start_at as window_start, windows.feature_end_at as window_end
from windows cross join counts
where coalesce(counts.feature_lines, 0) = 0

union all

select 'label window has no order lines' as problem, windows.feature_end_at as window_start, windows.label_end_at as window_end
from windows cross join counts
where coalesce(counts.label_lines, 0) = 0
