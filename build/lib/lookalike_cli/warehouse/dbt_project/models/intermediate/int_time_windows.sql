-- One row: the dates every point-in-time model reads.
--   training: features as of feature_end_at, similarity labels from [feature_end_at, label_end_at)
--   serving:  features as of as_of_at (default: the day after the last order line, so every line counts)
-- All bounds are exclusive timestamps at midnight; the *_date vars are inclusive dates.
-- data_start_at <= feature_end_at < label_end_at <= as_of_at <= the day after the data ends, or the
-- build stops here with an error naming the var, its value and the data's first and last order dates
-- (no downstream model runs, so every table built before stays as it was).
with order_lines as (
    select * from {{ ref('stg_order_lines') }}
),

bounds as (
    select
        min(ordered_at) as data_start_at,
        max(ordered_at) as data_end_at
    from order_lines
),

as_of as (
    select
        data_start_at,
        data_end_at,
        cast({{ dbt.dateadd('day', 1, 'cast(data_end_at as date)') }} as timestamp) as data_after_end_at,
        {% if var('as_of_date', none) %}
        cast({{ dbt.dateadd('day', 1, "cast('" ~ var('as_of_date') ~ "' as date)") }} as timestamp) as as_of_at
        {% else %}
        cast({{ dbt.dateadd('day', 1, 'cast(data_end_at as date)') }} as timestamp) as as_of_at
        {% endif %}
    from bounds
),

history as (
    -- The history the training windows split: everything before as_of_at.
    select
        *,
        {{ dbt.datediff('data_start_at', 'as_of_at', 'day') }} as history_days
    from as_of
),

windows as (
    select
        data_start_at,
        data_end_at,
        data_after_end_at,
        as_of_at,
        {% if var('feature_end_date', none) %}
        cast('{{ var("feature_end_date") }}' as timestamp) as feature_end_at,
        {% else %}
        cast({{ dbt.dateadd('day', '-cast(floor(history_days * ' ~ var('label_window_fraction') ~ ') as integer)', 'as_of_at') }} as timestamp) as feature_end_at,
        {% endif %}
        {% if var('label_end_date', none) %}
        cast({{ dbt.dateadd('day', 1, "cast('" ~ var('label_end_date') ~ "' as date)") }} as timestamp) as label_end_at
        {% else %}
        as_of_at as label_end_at
        {% endif %}
    from history
),

{%- set data_dates = "' (the data''s order lines run from ' || cast(cast(data_start_at as date) as string) || ' to ' || cast(cast(data_end_at as date) as string) || ')'" %}

checked as (
    select
        windows.*,
        case
            when as_of_at <= data_start_at or as_of_at > data_after_end_at then {{ raise_error(
                "'var as_of_date = " ~ var('as_of_date', none) ~ " is outside the data" ~ "' || " ~ data_dates) }}
            when feature_end_at <= data_start_at then {{ raise_error(
                "'var feature_end_date = ' || cast(cast(feature_end_at as date) as string) || ' leaves the training feature window with no orders" ~ "' || " ~ data_dates) }}
            when label_end_at <= feature_end_at then {{ raise_error(
                "'var label_end_date = ' || cast(cast(label_end_at as date) - 1 as string) || ' must come after feature_end_date ' || cast(cast(feature_end_at as date) as string) || '" ~ "' || " ~ data_dates) }}
            when label_end_at > as_of_at then {{ raise_error(
                "'var label_end_date = ' || cast(cast(label_end_at as date) - 1 as string) || ' ends after as_of_date ' || cast(cast(as_of_at as date) - 1 as string) || ' (labels may only use data known at as_of_date)" ~ "' || " ~ data_dates) }}
            else true
        end as windows_are_valid
    from windows
)

select
    data_start_at,
    data_end_at,
    feature_end_at,
    label_end_at,
    as_of_at,
    {{ dbt.datediff('data_start_at', 'feature_end_at', 'day') }} as feature_window_days,
    {{ dbt.datediff('feature_end_at', 'label_end_at', 'day') }} as label_window_days,
    {{ dbt.datediff('data_start_at', 'as_of_at', 'day') }} as serving_window_days
from checked
where windows_are_valid
