-- Both windows must hold order lines: features come from the first, labels from the second.
-- A row here names the empty window and its bounds (set the vars feature_end_date /
-- label_end_date inside your order history).
with windows as (
    select * from {{ ref('int_time_windows') }}
),

counts as (
    select
        sum(case when window_name = 'feature' then 1 else 0 end) as feature_lines,
        sum(case when window_name = 'label' then 1 else 0 end) as label_lines
    from {{ ref('int_order_lines_windowed') }}
)

select 'feature window has no order lines' as problem, windows.data_start_at as window_start, windows.feature_end_at as window_end
from windows cross join counts
where coalesce(counts.feature_lines, 0) = 0

union all

select 'label window has no order lines' as problem, windows.feature_end_at as window_start, windows.label_end_at as window_end
from windows cross join counts
where coalesce(counts.label_lines, 0) = 0
