-- One row: the feature window [data_start_at, feature_end_at) and the later label window
-- [feature_end_at, label_end_at). Features never see label-window data (no leakage).
with order_lines as (
    select * from {{ ref('stg_order_lines') }}
),

bounds as (
    select
        min(ordered_at) as data_start_at,
        max(ordered_at) as data_end_at
    from order_lines
),

history as (
    select
        data_start_at,
        data_end_at,
        cast({{ dbt.dateadd('day', 1, 'cast(data_end_at as date)') }} as timestamp) as history_end_at,
        {{ dbt.datediff('data_start_at', 'data_end_at', 'day') }} + 1 as history_days
    from bounds
),

final as (
    select
        data_start_at,
        data_end_at,
        {% if var('feature_end_date') %}
        cast('{{ var("feature_end_date") }}' as timestamp) as feature_end_at,
        {% else %}
        cast({{ dbt.dateadd('day', '-cast(floor(history_days * ' ~ var('label_window_fraction') ~ ') as integer)', 'history_end_at') }} as timestamp) as feature_end_at,
        {% endif %}
        {% if var('label_end_date') %}
        cast({{ dbt.dateadd('day', 1, "cast('" ~ var('label_end_date') ~ "' as date)") }} as timestamp) as label_end_at
        {% else %}
        history_end_at as label_end_at
        {% endif %}
    from history
)

select
    data_start_at,
    data_end_at,
    feature_end_at,
    label_end_at,
    {{ dbt.datediff('data_start_at', 'feature_end_at', 'day') }} as feature_window_days,
    {{ dbt.datediff('feature_end_at', 'label_end_at', 'day') }} as label_window_days
from final
